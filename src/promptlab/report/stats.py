"""Paired significance between methods: a two-level (hierarchical) paired bootstrap over seeds and examples
(``report.intervals``) of the difference of per-example scores under each row's headline readout, matched by
seed and example index via ``predictions.jsonl``, and a paired t-test over seeds."""

from __future__ import annotations

import itertools
import logging
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from promptlab.report.intervals import hierarchical_interval, seed_table
from promptlab.report.records import latest_completed
from promptlab.report.tables import (
    headline,
    is_corpus,
    metric_name,
    point_labels,
    same_group,
    summarize,
    value_label,
)

log = logging.getLogger("promptlab.report")
# Two headline rows are compared only when they scored the same task's split with the same metric.
PAIR_KEYS = ["dataset", "kind", "eval_split", "metric"]


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


def _differences(runs_a: pd.DataFrame, runs_b: pd.DataFrame, seeds: list) -> tuple[np.ndarray, list[str]]:
    """(seeds x examples) per-example differences A - B under each run's headline readout, on the examples every
    run of both rows scored (with a note when that is fewer than a row scored)."""
    runs = [(df.at[s, "run_dir"], df.at[s, "readout"] if isinstance(df.at[s, "readout"], str) else "raw")
            for df in (runs_a, runs_b) for s in seeds]
    table, shared, each = seed_table(runs)
    if not shared:
        return np.empty((0, 0)), ["no predictions, or no example both rows scored: not compared" if not each
                                  else "no example both rows scored: not compared"]
    k = len(seeds)
    notes = [] if all(n == shared for n in each) else [
        f"restricted to the {shared} examples both rows scored (A: {max(each[:k])}, B: {max(each[k:])})"]
    return table[:k] - table[k:], notes


def significance(df: pd.DataFrame, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Every pair of methods (headline rows) on the same dataset, split and metric, with common seeds.

    Scores and differences are x100 (points): ``score_a``/``score_b`` (mean over the common seeds of each run's
    headline), ``diff`` with its 95% interval ``ci_low``/``ci_high`` (hierarchical bootstrap over the common
    seeds and the examples both rows scored), ``t``/``p_value`` (paired over seeds). Rows that share no
    evaluation example are listed with a note and no interval, never compared silently.
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
        diffs, notes = _differences(runs[i], runs[j], seeds)
        ci = hierarchical_interval(diffs, n_resamples, seed)
        if is_corpus(ra["metric"]) and diffs.size:  # centred on the corpus scores' difference
            shift = (score_a.mean() - score_b.mean()) / 100 - ci.mean
            ci = type(ci)(ci.mean + shift, ci.low + shift, ci.high + shift, ci.seeds, ci.examples)
        t, p, note = paired_ttest(score_a, score_b)
        out.append({
            "dataset": ra["dataset"], "eval_split": ra["eval_split"], "metric": ra["metric"],
            "method_a": labels[i], "method_b": labels[j], "seeds": " ".join(map(str, seeds)),
            "n_seeds": len(seeds), "n_examples": ci.examples, "score_a": score_a.mean(), "score_b": score_b.mean(),
            "diff": 100 * ci.mean, "ci_low": 100 * ci.low, "ci_high": 100 * ci.high,
            "ci_excludes_0": ci.excludes_zero, "t": t, "p_value": p,
            "note": "; ".join([*notes, note] if note else notes),
        })
    return pd.DataFrame(out)


SIGNIFICANCE_NOTE = (
    "Δ = score(A) − score(B) in points (each row's headline: the primary metric ×100 under the readout it "
    "chose on dev), on the evaluation examples both rows scored, over their common seeds (matched by seed and "
    "example index). 95% interval: two-level paired bootstrap over seeds and examples ({n} resamples, RNG seed "
    "{seed}) with a Student-t quantile (report/intervals.py); * marks an interval that excludes 0. t-test: "
    "paired over seeds on the runs' scores (two-sided; no correction for multiple comparisons)."
)
CORPUS_NOTE = ("{names} are corpus-level metrics: their Δ and CI are over sentence-level scores, so Δ can "
               "differ from the difference of the corpus scores in A / B.")


def significance_note(n_resamples: int, seed: int, metrics=()) -> str:
    """The significance caption; it says when a corpus-level metric (chrF, BLEU) was compared per sentence."""
    note = SIGNIFICANCE_NOTE.format(n=n_resamples, seed=seed)
    corpus = sorted({metric_name(m) for m in metrics if is_corpus(m)})
    return f"{note} {CORPUS_NOTE.format(names=' and '.join(corpus))}" if corpus else note


def display_significance(sig: pd.DataFrame) -> pd.DataFrame:
    """Significance rows as strings with readable headers."""
    def num(x, fmt):
        return "—" if pd.isna(x) else format(x, fmt)

    cols = {"A": sig["method_a"], "B": sig["method_b"]}
    if sig["metric"].nunique() > 1:
        cols["Metric"] = sig["metric"].map(metric_name)
    cols |= {
        "Seeds": sig["n_seeds"].astype(str), "Examples": sig["n_examples"].astype(str),
        f"{value_label(sig['metric'])}: A / B": [
            f"{a:.1f} / {b:.1f}" for a, b in zip(sig["score_a"], sig["score_b"], strict=True)],
        "Δ (pts)": sig["diff"].map(lambda x: num(x, "+.1f")),
        "95% CI": [("—" if pd.isna(lo) else f"[{lo:+.1f}, {hi:+.1f}]") + (" *" if ex else "")
                   for lo, hi, ex in zip(sig["ci_low"], sig["ci_high"], sig["ci_excludes_0"], strict=True)],
        "t": sig["t"].map(lambda x: num(x, ".2f")), "p": sig["p_value"].map(lambda x: num(x, ".3g")),
        "Note": sig["note"].replace("", "—"),
    }
    return pd.DataFrame(cols)
