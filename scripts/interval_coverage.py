"""How often a 95% interval of a difference between two methods covers the true difference (0), on simulated
experiments: S seeds x 400 examples, both methods drawn from the same distribution (tests/test_report.py's
generator), seed effects from none to dominant. Three intervals: promptlab's two-level bootstrap with a
Student-t quantile (report/intervals.py), a percentile interval of the same two-level bootstrap, and a
percentile bootstrap that pools every seed's examples as independent pairs (the report's before 2026-12-04).

    python scripts/interval_coverage.py --experiments 400 --out results/interval_coverage.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_report import simulated_null_differences  # noqa: E402  (the tests' own generator)

from promptlab.report.intervals import hierarchical_interval  # noqa: E402

REGIMES = [(0.0, 0.5), (0.3, 0.5), (0.8, 0.3), (1.2, 0.2)]  # (seed sd, example sd) on the logit scale


def percentile(replicates: np.ndarray) -> tuple[float, float]:
    return tuple(np.percentile(replicates, [2.5, 97.5]))


def covered(d: np.ndarray, rng: np.random.Generator, resamples: int) -> dict[str, bool]:
    s, n = d.shape
    ci = hierarchical_interval(d, resamples, int(rng.integers(1 << 30)))
    seeds = rng.multinomial(s, np.full(s, 1 / s), size=resamples)
    examples = rng.multinomial(n, np.full(n, 1 / n), size=resamples)
    two_level = np.einsum("bs,sn,bn->b", seeds, d, examples) / (s * n)
    flat = d.ravel()
    pooled = flat[rng.integers(0, flat.size, size=(resamples, flat.size))].mean(axis=1)
    lo2, hi2 = percentile(two_level)
    lop, hip = percentile(pooled)
    return {"two-level bootstrap, t (promptlab)": ci.low <= 0 <= ci.high,
            "two-level bootstrap, percentile": lo2 <= 0 <= hi2, "pooled examples, percentile": lop <= 0 <= hip}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiments", type=int, default=400)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--out", type=Path, default=Path("results/interval_coverage.json"))
    args = p.parse_args()
    rows = []
    for seeds in (2, 3, 5):
        for seed_sd, example_sd in REGIMES:
            rng = np.random.default_rng(seeds * 100 + int(seed_sd * 10))
            sims = simulated_null_differences(rng, args.experiments, seeds, 400, seed_sd, example_sd)
            hits = [covered(d, rng, args.resamples) for d in sims]
            row = {"seeds": seeds, "seed_sd": seed_sd, "example_sd": example_sd,
                   **{k: float(np.mean([h[k] for h in hits])) for k in hits[0]}}
            rows.append(row)
            print(row, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"experiments": args.experiments, "resamples": args.resamples,
                                    "examples": 400, "coverage": rows}, indent=2))


if __name__ == "__main__":
    main()
