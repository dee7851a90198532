"""Seed ensembles: K runs of one choice-task experiment that differ only in the seed (K soft prompts, K
fine-tuned models, K demonstration draws), combined per example (Lester et al. 2021, §6, prompt ensembling).

Each run's ``predictions.jsonl`` holds its answer log-probabilities for the same evaluation examples, so the
ensemble's prediction is computed from them exactly as scoring the K members together would give it: the
mean of the answer log-probabilities or a majority vote. Its cost is the sum of
its members' (K trainings, K stored checkpoints, K evaluations), all measured by the member runs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from promptlab.evaluation.calibration import answer_probs
from promptlab.evaluation.ensemble import combine
from promptlab.report.intervals import prediction_rows
from promptlab.report.records import GROUP_KEYS, latest_completed
from promptlab.report.tables import method_labels

log = logging.getLogger("promptlab.report")
COLUMNS = ["dataset", "method", "label", "k", "seeds", "member_mean", "member_best", "mean", "vote",
           "train_seconds", "checkpoint_bytes", "eval_seconds"]


def answer_scores(run_dir: str | Path) -> dict[int, tuple[int, list[float]]] | None:
    """``{idx: (label, log_probs)}`` from a choice run's predictions.jsonl; None without answer scores."""
    rows = prediction_rows(run_dir)
    try:
        return {int(r["idx"]): (int(r["label"]), list(r["log_probs"])) for r in rows} if rows is not None else None
    except (KeyError, TypeError, ValueError):
        return None


def _ensemble(group: pd.DataFrame) -> dict | None:
    members = [answer_scores(d) for d in group["run_dir"]]
    if any(m is None for m in members):
        return None
    common = sorted(set.intersection(*(set(m) for m in members)))
    widths = {len(m[i][1]) for m in members for i in common}
    if not common or len(widths) != 1:  # per-example answer lists of different lengths: not combinable here
        return None
    labels = np.array([members[0][i][0] for i in common])
    scores = [np.log(answer_probs(np.array([m[i][1] for i in common]))) for m in members]
    accuracy = lambda preds: float((preds == labels).mean() * 100)  # noqa: E731
    singles = [accuracy(s.argmax(axis=1)) for s in scores]
    return {"member_mean": float(np.mean(singles)), "member_best": max(singles),
            "mean": accuracy(combine(scores, "mean")[0]), "vote": accuracy(combine(scores, "vote")[0]),
            "examples": len(common)}


def seed_ensembles(df: pd.DataFrame) -> pd.DataFrame:
    """One row per choice-task experiment with at least two completed seeds whose primary metric is accuracy:
    accuracy (x100) of the members (mean, best) and of their mean / vote ensemble, and the summed costs."""
    done = latest_completed(df)
    done = done[(done["output_type"] == "choice") & (done["metric"] == "accuracy")] if "output_type" in done else done[:0]
    rows = []
    for _, group in done.groupby(GROUP_KEYS, dropna=False, sort=False):
        varies = group["trains"].eq(True).any() or group["num_demos"].fillna(0).gt(0).any()
        if group["seed"].nunique() < 2 or not varies:  # zero-shot runs of every seed are the same run
            continue
        result = _ensemble(group)
        if result is None:
            log.info("no seed ensemble for %s: predictions without comparable answer scores", group["run_dir"].iloc[0])
            continue
        rows.append({"dataset": group["dataset"].iloc[0], "method": group["method"].iloc[0],
                     "label": method_labels(group.iloc[:1]).iloc[0], "k": len(group),
                     "seeds": " ".join(str(s) for s in sorted(group["seed"])), **result,
                     "train_seconds": group["train_seconds"].sum(), "checkpoint_bytes": group["checkpoint_bytes"].sum(),
                     "eval_seconds": group["eval_seconds"].sum()})
    return pd.DataFrame(rows, columns=[*COLUMNS, "examples"])


def display_ensembles(rows: pd.DataFrame) -> pd.DataFrame:
    from promptlab.report.columns import fmt_bytes, fmt_seconds

    pct = lambda v: f"{v:.1f}"  # noqa: E731
    return pd.DataFrame({
        "Method": rows["label"], "K (seeds)": rows["k"].astype(str) + " (" + rows["seeds"] + ")",
        "Members: mean": rows["member_mean"].map(pct), "Members: best": rows["member_best"].map(pct),
        "Ensemble (mean)": rows["mean"].map(pct), "Ensemble (vote)": rows["vote"].map(pct),
        "Train time (sum)": rows["train_seconds"].map(fmt_seconds),
        "Storage (sum)": rows["checkpoint_bytes"].map(fmt_bytes), "Eval time (sum)": rows["eval_seconds"].map(fmt_seconds),
    }).reset_index(drop=True)


NOTE = ("Seed ensembles: the runs of one experiment that differ only in the seed (K soft prompts, K fine-tuned "
        "models, K demonstration draws), combined per example from their saved answer log-probabilities: mean of "
        "the log-probabilities, or a majority vote (ties: the higher mean). Accuracy in %; members: their own "
        "accuracies. Costs: the sum over the K members, as measured by each.")
