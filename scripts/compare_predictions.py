"""Compare two sweeps' predictions member by member: ``python scripts/compare_predictions.py BEFORE AFTER``.

For each member directory of BEFORE (matched by name without its job number, so a sweep of fewer members
compares too), every row of ``predictions.jsonl`` and
``dev_predictions.jsonl`` must be equal: the same answers, scores and generated text. Prints one line per member
and the keys that differ; exit 1 when any member differs. Used to check that a refactoring changes no
prediction (``make demo`` in fp32 before and after, docs/measurements/fp32_demo_baseline_2026-12-06/).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def compare(before: Path, after: Path) -> int:
    differing = 0
    later = {p.name.split("_", 1)[1]: p for p in after.iterdir() if (p / "predictions.jsonl").exists()}
    for member in sorted(p for p in before.iterdir() if (p / "predictions.jsonl").exists()):
        name = member.name
        if name.split("_", 1)[1] not in later:
            print(f"{name}: not in {after}")
            continue
        for file in ("predictions.jsonl", "dev_predictions.jsonl"):
            old, new = rows(member / file), rows(later[name.split("_", 1)[1]] / file)
            keys = sorted({k for a, b in zip(old, new, strict=False) for k in {*a, *b} if a.get(k) != b.get(k)})
            same = len(old) == len(new) and not keys
            differing += not same
            print(f"{name}/{file}: {len(old)} rows, " + ("identical" if same else
                  f"DIFFERENT ({len(old)} vs {len(new)} rows; keys differing: {', '.join(keys) or '—'})"))
    return 1 if differing else 0  # members AFTER lacks are listed, not counted: compare what ran


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(compare(Path(sys.argv[1]), Path(sys.argv[2])))
