"""The measured costs a report shows, declared once: each ``CostColumn`` names a record's ``costs`` key, how a
row's completed runs aggregate it, its header and format, and when it is shown. ``records`` reads every declared
key, ``tables.summarize`` aggregates it, ``tables.display_table`` renders it: a new cost column is one entry in
``COST_COLUMNS`` (plus the code that measures the cost).

Human units (``fmt_*``) live here too, so the columns and every table format alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

Shown = Callable[[pd.DataFrame], bool]


def missing(x) -> bool:
    return x is None or (isinstance(x, float | np.floating) and math.isnan(x))


def fmt_count(n) -> str:
    if missing(n):
        return "—"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}" if n / div < 100 else f"{n / div:.0f}{unit}"
    return f"{n:.0f}"


def fmt_bytes(b) -> str:
    if missing(b):
        return "—"
    for div, unit in ((2**30, "GB"), (2**20, "MB"), (2**10, "KB")):
        if b >= div:
            return f"{b / div:.3g} {unit}" if b / div < 100 else f"{b / div:.0f} {unit}"
    return f"{b:.0f} B"


def fmt_megabytes(mb) -> str:
    return fmt_bytes(mb * 2**20)


def fmt_seconds(s) -> str:
    if missing(s):
        return "—"
    if s < 60:
        return f"{s:.2g} s" if s < 10 else f"{s:.0f} s"
    return f"{s / 60:.1f} min" if s < 3600 else f"{s / 3600:.1f} h"


def fmt_ci(mean, low, high) -> str:
    """"82.1 [79.0, 85.2]": a mean and its 95% interval, x100 already."""
    if missing(mean):
        return "—"
    return f"{mean:.1f}" if missing(low) else f"{mean:.1f} [{low:.1f}, {high:.1f}]"


def fmt_pct(mean, std) -> str:
    if missing(mean):
        return "—"
    return f"{mean:.1f}" if missing(std) else f"{mean:.1f} ± {std:.1f}"


def fmt_fraction(f) -> str:
    return "—" if missing(f) else f"{100 * f:.3g}%"


def fmt_rate(r) -> str:
    return "—" if missing(r) else f"{r:.3g}"


def has_values(column: str) -> Shown:
    """Shown when some row has a value (a cost older records do not carry)."""
    return lambda summary: bool(summary[column].notna().any())


def generates(summary: pd.DataFrame) -> bool:
    """Whether any row generated text (choice runs record 0 generation seconds, not a gap)."""
    return bool((summary["generation_seconds_mean"].fillna(0) > 0).any())


@dataclass(frozen=True)
class CostColumn:
    """A record's ``costs.<key>`` as a table column."""

    key: str  # the key in the records' costs
    agg: str  # over a row's completed runs: "mean", "median" or "max"
    header: str  # the full table's header
    fmt: Callable[[object], str]
    compact: str | None = None  # the compact (stdout, README) table's header; None: the full table only
    shown: Shown | None = None  # None: always; else shown when this holds for the summary
    name: str | None = None  # the summary's column (default ``<key>_<agg>``)
    group: str = "training"  # where it sits: "training" (before tuning and search costs) or "inference" (after)

    @property
    def column(self) -> str:
        return self.name or f"{self.key}_{self.agg}"

    def aggregate(self, ok: pd.DataFrame) -> float:
        return getattr(ok[self.key], self.agg)()

    def header_for(self, summary: pd.DataFrame, compact: bool) -> str | None:
        """The header it shows under in this table, or None when it is not shown."""
        if (compact and self.compact is None) or (self.shown is not None and not self.shown(summary)):
            return None
        return self.compact if compact else self.header


COST_COLUMNS = (
    CostColumn("trainable_params", "median", "Trainable params", fmt_count, compact="Trainable params",
               name="trainable_params"),
    CostColumn("trainable_fraction", "median", "Trainable share", fmt_fraction, name="trainable_fraction"),
    # what is kept per task can be far less than what trains (P-tuning)
    CostColumn("stored_params", "median", "Stored params / task", fmt_count, shown=has_values("stored_params"),
               name="stored_params"),
    CostColumn("optimizer_state_bytes", "max", "Optimiser state", fmt_bytes,
               shown=has_values("optimizer_state_bytes_max")),
    CostColumn("train_seconds", "mean", "Train time", fmt_seconds, compact="Train time"),
    CostColumn("train_examples_per_second", "mean", "Train ex/s", fmt_rate),
    CostColumn("generated_tokens_per_second", "mean", "Gen tok/s", fmt_rate, compact="Gen tok/s", shown=generates,
               group="inference"),
    CostColumn("generation_seconds", "mean", "Gen time", fmt_seconds, compact="Gen time", shown=generates,
               group="inference"),
    CostColumn("peak_gpu_mb", "max", "Peak GPU", fmt_megabytes, compact="Peak GPU", shown=has_values("peak_gpu_mb_max"),
               group="memory"),
    CostColumn("checkpoint_bytes", "mean", "Checkpoint / task", fmt_bytes, compact="Checkpoint", group="memory"),
)
COST_KEYS = tuple(c.key for c in COST_COLUMNS)


def cost_summary(ok: pd.DataFrame) -> dict[str, float]:
    """Every declared cost of a row, aggregated over its completed runs."""
    return {c.column: c.aggregate(ok) for c in COST_COLUMNS}


def cost_columns(summary: pd.DataFrame, compact: bool, group: str) -> dict[str, pd.Series]:
    """The declared cost columns of ``group`` this table shows, header -> formatted values."""
    return {h: summary[c.column].map(c.fmt) for c in COST_COLUMNS
            if c.group == group and (h := c.header_for(summary, compact))}
