"""Paired significance between methods: a bootstrap over evaluation examples (matched by seed and example
index via ``predictions.jsonl``) and a paired t-test over seeds."""

from __future__ import annotations

import itertools
import json
import logging
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from promptlab.report.records import latest_completed
from promptlab.report.tables import headline, point_labels, same_group, summarize

log = logging.getLogger("promptlab.report")


def load_predictions(run_dir: str | Path) -> dict[int, bool] | None:
    """``{idx: correct}`` from a run's predictions.jsonl; None when missing or unreadable (with a warning)."""
    path = Path(run_dir) / "predictions.jsonl"
    return _predictions(str(path), path.stat().st_mtime_ns) if path.is_file() else None


@lru_cache(maxsize=256)
def _predictions(file: str, mtime_ns: int) -> dict[int, bool] | None:
    path = Path(file)
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return {int(r["idx"]): int(r["pred"]) == int(r["label"]) for r in rows}
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("skipping unreadable predictions %s (%s: %s)", path, type(err).__name__, err)
        return None


def paired_bootstrap(a, b, n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``a - b`` over paired examples (0/1 correctness) and its percentile bootstrap CI."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // d.size)  # bounded memory for large eval sets
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        means[start:stop] = d[rng.integers(0, d.size, size=(stop - start, d.size))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(d.mean()), float(lo), float(hi)


def paired_ttest(a, b) -> tuple[float, float, str]:
    """``(t, p, note)`` of a paired t-test; NaNs and a note when it cannot be computed."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2:
        return float("nan"), float("nan"), "t-test needs ≥2 seeds"
    try:
        from scipy.stats import ttest_rel
    except ImportError:
        return float("nan"), float("nan"), "scipy not installed: no t-test"
    if np.allclose(a - b, (a - b)[0]):
        return float("nan"), float("nan"), "per-seed differences all equal: t undefined"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = ttest_rel(a, b)
    return float(res.statistic), float(res.pvalue), ""


def significance(df: pd.DataFrame, n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Every pair of methods (headline rows) on the same dataset with common completed seeds."""
    summary = summarize(df)
    if summary.empty:
        return pd.DataFrame()
    rows = headline(summary)
    labels = point_labels(rows)
    done = latest_completed(df)
    runs = {i: done[same_group(done, r)].set_index("seed") for i, r in rows.iterrows()}
    out = []
    for (i, ra), (j, rb) in itertools.combinations(rows.iterrows(), 2):
        if ra["dataset"] != rb["dataset"]:
            continue
        seeds = sorted(set(runs[i].index.dropna()) & set(runs[j].index.dropna()))
        if not seeds:
            continue
        acc_a = runs[i].loc[seeds, "accuracy"].to_numpy(float) * 100
        acc_b = runs[j].loc[seeds, "accuracy"].to_numpy(float) * 100
        ca, cb, notes = [], [], []
        for s in seeds:
            pa, pb = load_predictions(runs[i].at[s, "run_dir"]), load_predictions(runs[j].at[s, "run_dir"])
            if pa is None or pb is None:
                notes.append(f"seed {s}: no predictions.jsonl")
                continue
            common = sorted(pa.keys() & pb.keys())
            if len(common) < max(len(pa), len(pb)):
                notes.append(f"seed {s}: {len(common)} common eval examples")
            ca += [pa[k] for k in common]
            cb += [pb[k] for k in common]
        diff, lo, hi = paired_bootstrap(ca, cb, n_resamples, seed)
        t, p, note = paired_ttest(acc_a, acc_b)
        out.append({
            "dataset": ra["dataset"], "method_a": labels[i], "method_b": labels[j],
            "seeds": " ".join(map(str, seeds)), "n_seeds": len(seeds), "n_pairs": len(ca),
            "accuracy_a_pct": acc_a.mean(), "accuracy_b_pct": acc_b.mean(),
            "diff_pct": 100 * diff, "ci_low_pct": 100 * lo, "ci_high_pct": 100 * hi,
            "ci_excludes_0": bool(lo > 0 or hi < 0), "t": t, "p_value": p,
            "note": "; ".join([*notes, note] if note else notes),
        })
    return pd.DataFrame(out)


SIGNIFICANCE_NOTE = (
    "Δ = accuracy(A) − accuracy(B) in points, on the evaluation examples both runs scored, pooled over the "
    "common seeds (matched by seed and example index). 95% CI: percentile bootstrap over those pairs "
    "({n} resamples, RNG seed {seed}); * marks a CI that excludes 0. t-test: paired over seeds on the runs' "
    "accuracies (two-sided; no correction for multiple comparisons)."
)


def display_significance(sig: pd.DataFrame) -> pd.DataFrame:
    def num(x, fmt):
        return "—" if pd.isna(x) else format(x, fmt)

    return pd.DataFrame({
        "A": sig["method_a"], "B": sig["method_b"], "Seeds": sig["n_seeds"].astype(str),
        "Pairs": sig["n_pairs"].astype(str),
        "Acc. A / B (%)": [f"{a:.1f} / {b:.1f}" for a, b in zip(sig["accuracy_a_pct"], sig["accuracy_b_pct"],
                                                                 strict=True)],
        "Δ (pts)": sig["diff_pct"].map(lambda x: num(x, "+.1f")),
        "95% CI": [("—" if pd.isna(lo) else f"[{lo:+.1f}, {hi:+.1f}]") + (" *" if ex else "")
                   for lo, hi, ex in zip(sig["ci_low_pct"], sig["ci_high_pct"], sig["ci_excludes_0"], strict=True)],
        "t": sig["t"].map(lambda x: num(x, ".2f")), "p": sig["p_value"].map(lambda x: num(x, ".3g")),
        "Note": sig["note"].replace("", "—"),
    })
