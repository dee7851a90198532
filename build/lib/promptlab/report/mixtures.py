"""Instruction-tuning runs (``mixture=...``): each seen and held-out task's primary metric per method, the two
means, and what training cost — the "does it transfer to tasks it never saw?" table."""

from __future__ import annotations

import pandas as pd

from promptlab.report.columns import fmt_count, fmt_pct, fmt_seconds

NOTE = ("Zero-shot on every task with its default template, after training on the seen tasks' mixture (an "
        "untrained row: the backbone itself). Each task's primary metric ×100, mean ± std over seeds; the means "
        "average the tasks' primary metrics. Held-out tasks were never in the training data; a method that needs "
        "a task id (multitask prompt tuning) has no prompt for them (—).")


def is_mixture(df: pd.DataFrame) -> pd.Series:
    return df["output_type"] == "mixture" if "output_type" in df else pd.Series(False, index=df.index)


def mixture_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per mixture x method config over completed runs; columns: seen tasks, their mean, held-out
    tasks, their mean, trainable parameters, training time."""
    ok = df[is_mixture(df) & (df["status"] == "completed")]
    rows = []
    for _, g in ok.groupby(["dataset", "display_name", "config_label"], sort=False, dropna=False):
        info = g["mixture"].iloc[0]
        row = {"Mixture": g["dataset"].iloc[0], "Method": _label(g)}
        for group, tasks, mean in (("seen", info["seen"], "seen_mean"), ("held out", info["held_out"], "heldout_mean")):
            for t in tasks:
                col = f"{t}/{info['primary_metrics'][t]}"
                row[f"{t} ({group})"] = _cell(g, col)
            row[f"Mean {group}"] = _cell(g, mean)
        row["Trainable params"] = fmt_count(g["trainable_params"].median())
        row["Train time"] = fmt_seconds(g["train_seconds"].mean())
        row["Seeds"] = str(len(g))
        rows.append(row)
    return pd.DataFrame(rows)


def _label(g: pd.DataFrame) -> str:
    label = g["config_label"].iloc[0]
    return f"{g['display_name'].iloc[0]} ({label})" if isinstance(label, str) and label else g["display_name"].iloc[0]


def _cell(g: pd.DataFrame, col: str) -> str:
    if col not in g or g[col].isna().all():
        return "—"
    values = 100 * g[col].dropna().astype(float)  # metrics are fractions; the tables show ×100
    return fmt_pct(values.mean(), values.std() if len(values) > 1 else float("nan"))
