"""What a tuning trial costs beyond its own work, when Hydra's basic launcher runs the trials of a sweep in one
process (imports once; each trial composes its config, reads its data, loads the model, writes its record).

    python scripts/bench/trial_overhead.py --demo runs/demo --out results/trial_overhead.json

A sweep of ``--members`` zero-shot trials on the bundled model with a tiny evaluation (16 eval rows, 8 dev rows),
so that each member's work is small and its overhead stands out, once with ``logger=none`` and once with the
default wandb logger (offline). A member's overhead is the time between the end of the previous member and its
own end, minus its work (training, dev and eval scoring, search); the first member also pays the process start.
The overhead is compared with a demo-sized trial: the median work of the trained members of ``--demo`` (a
completed ``experiment=demo``), or ``--trial-seconds``. Run on an idle machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORK = ("train_seconds", "dev_eval_seconds", "dev_check_seconds", "eval_seconds", "search_seconds")


def work(record: dict) -> float:
    return sum(float(record["costs"].get(k) or 0) for k in WORK)


def sweep(members: int, logger: str, data_root: str, out: Path) -> dict:
    """One multirun of ``members`` trials; per member: its overhead (seconds)."""
    cmd = [sys.executable, "-m", "promptlab.train", "-m", "model=smollm2_135m", "method=zero_shot",
           f"seed={','.join(map(str, range(members)))}", "data.eval_limit=16", "data.dev_size=8",
           f"logger={logger}", f"paths.data_root={data_root}", f"hydra.sweep.dir={out}"]
    start = time.time()
    subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "offline"})
    records = sorted((json.loads(f.read_text()) for f in out.glob("*/result.json")), key=lambda r: r["finished_at"])
    ends = [datetime.datetime.fromisoformat(r["finished_at"]).timestamp() for r in records]
    gaps = [ends[0] - start] + [b - a for a, b in zip(ends, ends[1:], strict=False)]
    overhead = [g - work(r) for g, r in zip(gaps, records, strict=True)]
    return {"logger": logger, "members": len(records), "first_member_overhead_s": round(overhead[0], 2),
            "overhead_per_member_s": [round(o, 2) for o in overhead[1:]],
            "median_overhead_s": round(statistics.median(overhead[1:]), 2),
            "median_work_s": round(statistics.median(work(r) for r in records), 2)}


def demo_trial_seconds(demo: Path) -> float:
    """The median work of a demo's trained trials (training, dev checks, dev and eval scoring)."""
    records = [json.loads(f.read_text()) for f in demo.glob("*/result.json")]
    trained = [work(r) for r in records if r.get("status") == "completed" and r["costs"].get("train_seconds")]
    if not trained:
        raise SystemExit(f"no completed trained trial under {demo}: run `promptlab-train experiment=demo` first")
    return statistics.median(trained)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", type=int, default=6)
    p.add_argument("--demo", type=Path, default=REPO / "runs" / "demo")
    p.add_argument("--trial-seconds", type=float, default=None, help="a demo-sized trial's work, instead of --demo")
    p.add_argument("--data-root", default=os.environ.get("PROMPTLAB_DATA"))
    p.add_argument("--out", type=Path, default=REPO / "results" / "trial_overhead.json")
    args = p.parse_args()
    reference = args.trial_seconds or demo_trial_seconds(args.demo)
    load = os.getloadavg()
    runs = [sweep(args.members, logger, args.data_root, Path(tempfile.mkdtemp(prefix="overhead_")) / "sweep")
            for logger in ("none", "wandb")]
    for r in runs:
        r["median_overhead_share_of_a_demo_trial"] = round(r["median_overhead_s"] / reference, 4)
    out = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "load_average_before": load,
           "load_average_after": os.getloadavg(), "demo_trial_work_s": round(reference, 1), "sweeps": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
