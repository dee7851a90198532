"""Paired significance between methods: a percentile bootstrap (``scipy.stats.bootstrap``) over per-example
scores of the primary metric, matched by seed and example index via ``predictions.jsonl``, and a paired
t-test over seeds."""

from __future__ import annotations

import itertools
import json
import logging
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from promptlab.report.records import latest_completed
from promptlab.report.tables import headline, metric_name, point_labels, same_group, summarize, value_label

log = logging.getLogger("promptlab.report")
CORPUS_METRICS = {"chrf", "bleu"}  # computed over the corpus; their per-example scores are sentence-level
# Two headline rows are compared only when they scored the same examples with the same metric.
PAIR_KEYS = ["dataset", "kind", "eval_split", "metric"]


def load_predictions(run_dir: str | Path) -> dict[int, float] | None:
    """``{idx: score}`` (the example's primary-metric value) from a run's predictions.jsonl; rows written
    before ``score`` existed count ``pred == label``. None when missing or unreadable (with a warning)."""
    path = Path(run_dir) / "predictions.jsonl"
    return _score_map(str(path), path.stat().st_mtime_ns) if path.is_file() else None


@lru_cache(maxsize=256)
def _score_map(file: str, mtime_ns: int) -> dict[int, float] | None:
    rows = _rows(file, mtime_ns)
    try:
        return {int(r["idx"]): _score(r) for r in rows} if rows is not None else None
    except (KeyError, TypeError, ValueError) as err:
        log.warning("skipping unreadable predictions %s (%s: %s)", file, type(err).__name__, err)
        return None


def prediction_rows(run_dir: str | Path) -> list[dict] | None:
    """A run's predictions.jsonl rows (read once per file version); None when missing or not JSON lines."""
    path = Path(run_dir) / "predictions.jsonl"
    return _rows(str(path), path.stat().st_mtime_ns) if path.is_file() else None


def _score(row: dict) -> float:
    if row.get("score") is not None:
        return float(row["score"])
    return float(int(row["pred"]) == int(row["label"]))


@lru_cache(maxsize=256)
def _rows(file: str, mtime_ns: int) -> list[dict] | None:
    path = Path(file)
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as err:
        log.warning("skipping unreadable predictions %s (%s: %s)", path, type(err).__name__, err)
        return None


def _mean_diff(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a - b, axis=axis)


def paired_bootstrap(a, b, n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``a - b`` over paired per-example scores and its percentile bootstrap CI (resampling pairs);
    NaN bounds with fewer than two pairs."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size < 2:
        return float(_mean_diff(a, b)) if a.size else float("nan"), float("nan"), float("nan")
    res = stats.bootstrap((a, b), _mean_diff, paired=True, vectorized=True, method="percentile",
                          n_resamples=n_resamples, confidence_level=level, rng=np.random.default_rng(seed),
                          batch=max(1, 2_000_000 // a.size))  # bounded memory for large eval sets
    return float(_mean_diff(a, b)), float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_ttest(a, b) -> tuple[float, float, str]:
    """``(t, p, note)`` of a paired t-test; NaNs and a note when it cannot be computed."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2:
        return float("nan"), float("nan"), "t-test needs ≥2 seeds"
    if np.allclose(a - b, (a - b)[0]):
        return float("nan"), float("nan"), "per-seed differences all equal: t undefined"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.ttest_rel(a, b)
    return float(res.statistic), float(res.pvalue), ""


def _pooled_pairs(runs_a: pd.DataFrame, runs_b: pd.DataFrame, seeds: list) -> tuple[list, list, list[str]]:
    """Per-example scores of both runs of each seed on the examples both scored, pooled over seeds."""
    sa, sb, notes = [], [], []
    for s in seeds:
        pa, pb = load_predictions(runs_a.at[s, "run_dir"]), load_predictions(runs_b.at[s, "run_dir"])
        if pa is None or pb is None:
            notes.append(f"seed {s}: no predictions.jsonl")
            continue
        common = sorted(pa.keys() & pb.keys())
        if len(common) < max(len(pa), len(pb)):
            notes.append(f"seed {s}: {len(common)} common eval examples")
        sa += [pa[k] for k in common]
        sb += [pb[k] for k in common]
    return sa, sb, notes


def significance(df: pd.DataFrame, n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Every pair of methods (headline rows) on the same dataset, split and metric, with common seeds.

    Scores and differences are x100 (points): ``score_a``/``score_b`` (mean over the common seeds), ``diff``
    with its CI ``ci_low``/``ci_high`` (bootstrap over examples), ``t``/``p_value`` (paired over seeds).
    """
    summary = summarize(df)
    if summary.empty:
        return pd.DataFrame()
    rows = headline(summary)
    labels = point_labels(rows)
    done = latest_completed(df)
    runs = {i: done[same_group(done, r)].set_index("seed") for i, r in rows.iterrows()}
    out = []
    for (i, ra), (j, rb) in itertools.combinations(rows.iterrows(), 2):
        if any(str(ra[k]) != str(rb[k]) for k in PAIR_KEYS):
            continue
        seeds = sorted(set(runs[i].index.dropna()) & set(runs[j].index.dropna()))
        if not seeds:
            continue
        score_a = runs[i].loc[seeds, "score"].to_numpy(float) * 100
        score_b = runs[j].loc[seeds, "score"].to_numpy(float) * 100
        sa, sb, notes = _pooled_pairs(runs[i], runs[j], seeds)
        diff, lo, hi = paired_bootstrap(sa, sb, n_resamples, seed)
        t, p, note = paired_ttest(score_a, score_b)
        out.append({
            "dataset": ra["dataset"], "eval_split": ra["eval_split"], "metric": ra["metric"],
            "method_a": labels[i], "method_b": labels[j], "seeds": " ".join(map(str, seeds)),
            "n_seeds": len(seeds), "n_pairs": len(sa), "score_a": score_a.mean(), "score_b": score_b.mean(),
            "diff": 100 * diff, "ci_low": 100 * lo, "ci_high": 100 * hi,
            "ci_excludes_0": bool(lo > 0 or hi < 0), "t": t, "p_value": p,
            "note": "; ".join([*notes, note] if note else notes),
        })
    return pd.DataFrame(out)


SIGNIFICANCE_NOTE = (
    "Δ = score(A) − score(B) in points (the primary metric ×100), on the evaluation examples both runs "
    "scored, pooled over the common seeds (matched by seed and example index). 95% CI: percentile bootstrap "
    "over those pairs of per-example scores (scipy.stats.bootstrap, paired; {n} resamples, RNG seed {seed}); "
    "* marks a CI that excludes 0. t-test: paired over seeds on the runs' scores (two-sided; no correction "
    "for multiple comparisons)."
)
CORPUS_NOTE = ("{names} are corpus-level metrics: their Δ and CI are over sentence-level scores, so Δ can "
               "differ from the difference of the corpus scores in A / B.")


def significance_note(n_resamples: int, seed: int, metrics=()) -> str:
    """The significance caption; it says when a corpus-level metric (chrF, BLEU) was compared per sentence."""
    note = SIGNIFICANCE_NOTE.format(n=n_resamples, seed=seed)
    corpus = sorted({metric_name(m) for m in metrics if m in CORPUS_METRICS})
    return f"{note} {CORPUS_NOTE.format(names=' and '.join(corpus))}" if corpus else note


def display_significance(sig: pd.DataFrame) -> pd.DataFrame:
    """Significance rows as strings with readable headers."""
    def num(x, fmt):
        return "—" if pd.isna(x) else format(x, fmt)

    cols = {"A": sig["method_a"], "B": sig["method_b"]}
    if sig["metric"].nunique() > 1:
        cols["Metric"] = sig["metric"].map(metric_name)
    cols |= {
        "Seeds": sig["n_seeds"].astype(str), "Pairs": sig["n_pairs"].astype(str),
        f"{value_label(sig['metric'])}: A / B": [
            f"{a:.1f} / {b:.1f}" for a, b in zip(sig["score_a"], sig["score_b"], strict=True)],
        "Δ (pts)": sig["diff"].map(lambda x: num(x, "+.1f")),
        "95% CI": [("—" if pd.isna(lo) else f"[{lo:+.1f}, {hi:+.1f}]") + (" *" if ex else "")
                   for lo, hi, ex in zip(sig["ci_low"], sig["ci_high"], sig["ci_excludes_0"], strict=True)],
        "t": sig["t"].map(lambda x: num(x, ".2f")), "p": sig["p_value"].map(lambda x: num(x, ".3g")),
        "Note": sig["note"].replace("", "—"),
    }
    return pd.DataFrame(cols)
