"""The line a person reads when a run ends: task, method and seed, the headline metric as the report's tables
show it (x100 in the metric registry's unit: "Accuracy 84.5%", "ROUGE-L 31.2"), dev beside it, what the run's
phases took, and where the run directory is.

    sst2 · lora · seed 0: Accuracy 84.5% (dev 87.0%) · 1.7 min train · 12 s eval · run dir runs/2026-...
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from promptlab.evaluation.metrics import display_metric
from promptlab.evaluation.readouts import RAW, split_key
from promptlab.report.columns import fmt_seconds


def points(metric: str, value: object) -> str:
    """A metric's value as the report's tables show it: x100, one decimal, with its unit ("84.5%", "31.2",
    "12.3 (×100)"); "—" when there is none (or it is not finite)."""
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "—"
    unit = display_metric(metric).unit
    text = f"{100 * value:.1f}"
    return text + "%" if unit == "%" else f"{text} ({unit})" if unit else text


def headline(record: dict) -> str:
    """"Accuracy 84.5% (dev 87.0%)": the row's headline metric on eval and on dev, under the readout it was
    chosen with ("Accuracy@batch ...")."""
    key = (record.get("headline") or {}).get("metric") or record.get("primary_metric") or "accuracy"
    metric, readout = split_key(key)
    name = display_metric(metric).display + ("" if readout == RAW else f"@{readout}")
    dev = (record.get("dev_metrics") or {}).get(key)
    return f"{name} {points(metric, (record.get('metrics') or {}).get(key))}" + (
        f" (dev {points(metric, dev)})" if dev is not None else "")


def timings(record: dict) -> list[str]:
    """What the run's phases took: training (a trained method), the prompt search (a search), evaluation."""
    costs = record.get("costs") or {}
    out = []
    for key, what in (("train_seconds", "train"), ("search_seconds", "search"), ("eval_seconds", "eval")):
        seconds = costs.get(key)
        if isinstance(seconds, int | float) and (seconds > 0 or key == "eval_seconds"):
            out.append(f"{fmt_seconds(seconds)} {what}")  # as the report's tables
    return out


def shown_path(path: Path) -> str:
    """The run directory relative to the working directory when it is inside it, else absolute."""
    absolute = os.path.abspath(path)
    relative = os.path.relpath(absolute)
    return absolute if relative.startswith("..") else relative


def summary_line(record: dict, run_dir: Path) -> str:
    """One line: ``sst2 · lora · seed 0: Accuracy 84.5% (dev 87.0%) · 1.7 min train · 12 s eval · run dir ...``."""
    head = f"{record.get('dataset')} · {record.get('method')} · seed {record.get('seed')}"
    status = record.get("status")
    body = headline(record) if status == "completed" else str(status)
    return " · ".join([f"{head}: {body}", *timings(record), f"run dir {shown_path(run_dir)}"])
