"""Run records: every ``result.json`` under a directory (at any depth), one pandas row per run.

Unreadable records are never fatal: each is logged as a warning naming the file and kept in
``df.attrs["unreadable"]`` so the report can list it.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pandas as pd

log = logging.getLogger("promptlab.report")

# Methods that read no training example at all: they have no data budget (k_shot is irrelevant).
NO_DATA_METHODS = {"zero_shot"}
# The keys that make two runs the same experiment, up to the seed: one table row per group.
GROUP_KEYS = ["dataset", "model", "method", "budget", "num_demos", "template_id"]
COLUMNS = [
    "run_id", "status", "method", "model", "dataset", "seed", "k_shot", "train_size", "template_id",
    "num_demos", "budget", "budget_kind", "budget_value", "accuracy", "macro_f1", "trainable_params",
    "total_params", "trainable_fraction", "train_seconds", "train_examples_per_second", "eval_seconds",
    "eval_examples", "peak_rss_mb", "peak_rss_reset_per_run", "peak_gpu_mb", "checkpoint_bytes",
    "num_train_examples", "error", "started_at", "finished_at", "run_dir", "source",
]


class WandbUnavailable(RuntimeError):
    """The wandb API could not be reached or read (no network, no credentials, no such project)."""


def _problem(rec) -> str | None:
    if not isinstance(rec, dict):
        return f"expected a JSON object, got {type(rec).__name__}"
    missing = [k for k in ("method", "dataset") if not isinstance(rec.get(k), str)]
    if missing:
        return f"missing {', '.join(missing)}"
    for section in ("metrics", "costs"):
        if not isinstance(rec.get(section) or {}, dict):
            return f"{section!r} is not an object"
    return None


def read_record(path: str | Path) -> tuple[dict | None, str | None]:
    """``(record, None)``, or ``(None, reason)`` when the file cannot be used."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return None, f"{type(err).__name__}: {err}"
    problem = _problem(rec)
    return (None, problem) if problem else (rec, None)


def _isnull(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _budget(row: dict) -> tuple[str, str | None, float | None]:
    """The training-data budget: ``("k=16", "k_shot", 16)``; ``("—", None, None)`` when no data is read."""
    used = row.get("num_train_examples")
    uses_data = (row["method"] not in NO_DATA_METHODS if _isnull(used)
                 else used > 0 or (row.get("num_demos") or 0) > 0)
    if not uses_data:
        return "—", None, None
    if not _isnull(row.get("k_shot")):
        return f"k={int(row['k_shot'])}", "k_shot", float(row["k_shot"])
    if not _isnull(row.get("train_size")):
        return f"n={int(row['train_size'])}", "train_size", float(row["train_size"])
    return "all", "all", math.inf


def flatten(rec: dict, run_dir: str, source: str = "local") -> dict:
    """One flat row: top-level fields, then metrics and costs by name (prefixed only on a name clash)."""
    row = {k: v for k, v in rec.items() if k not in ("metrics", "costs", "versions", "traceback")}
    for section in ("metrics", "costs"):
        for key, value in (rec.get(section) or {}).items():
            row[f"{section}.{key}" if key in row else key] = value
    for key, value in (rec.get("versions") or {}).items():
        row[f"versions.{key}"] = value
    if isinstance(row.get("error"), str):
        row["error"] = row["error"].strip().splitlines()[0] if row["error"].strip() else ""
    row.update(run_dir=run_dir, source=source, status=row.get("status") or "unknown")
    row.setdefault("model", "?")
    row["budget"], row["budget_kind"], row["budget_value"] = _budget(row)
    return row


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in df:
            df[col] = None
    df = df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]
    for col in ("accuracy", "macro_f1", "trainable_params", "total_params", "trainable_fraction", "train_seconds",
                "train_examples_per_second", "eval_seconds", "peak_rss_mb", "peak_gpu_mb", "checkpoint_bytes",
                "k_shot", "train_size", "budget_value", "num_train_examples", "eval_examples"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    for col in ("seed", "template_id", "num_demos"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    return df.sort_values(["dataset", "method", "seed", "run_dir"], na_position="last").reset_index(drop=True)


def load_runs(path: str | Path, wandb_project: str | None = None) -> pd.DataFrame:
    """Every run under ``path`` (and, optionally, a wandb ``entity/project``) as one row per run.

    Columns: see ``COLUMNS`` (metrics and costs flattened by name; accuracy as a fraction in [0, 1]).
    ``df.attrs["unreadable"]`` lists ``(file, reason)`` for each skipped record.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"no such runs directory: {root}")
    rows, unreadable = [], []
    for file in sorted(root.rglob("result.json")):
        rec, reason = read_record(file)
        if rec is None:
            log.warning("skipping unreadable run record %s (%s)", file, reason)
            unreadable.append((str(file), reason))
            continue
        rows.append(flatten(rec, str(file.parent)))
    if wandb_project:
        local_ids = {r.get("run_id") for r in rows}
        rows += [r for r in load_wandb_rows(wandb_project, unreadable) if r.get("run_id") not in local_ids]
    df = _frame(rows) if rows else pd.DataFrame(columns=COLUMNS)
    df.attrs.update(root=str(root), unreadable=unreadable)
    return df


def latest_completed(df: pd.DataFrame) -> pd.DataFrame:
    """Completed runs, one per (group, seed): a re-run of the same seed replaces the earlier one."""
    done = df[df["status"] == "completed"].copy()
    done = done.sort_values("finished_at", na_position="first", key=lambda s: s.astype(str))
    return done.drop_duplicates(GROUP_KEYS + ["seed"], keep="last").sort_index()


# --- wandb (online users): the same rows from the runs' config and summary --------------------------------

WANDB_STATE = {"finished": "completed", "failed": "failed", "crashed": "running", "killed": "failed",
               "running": "running"}


def _wandb_record(run) -> dict:
    cfg = dict(run.config)
    summary = dict(getattr(run.summary, "_json_dict", None) or run.summary)
    part = lambda key: cfg.get(key) if isinstance(cfg.get(key), dict) else {}  # noqa: E731
    return {
        "run_id": run.id, "status": summary.get("status") or WANDB_STATE.get(run.state, run.state),
        "method": part("method").get("name"), "model": part("model").get("name"),
        "dataset": part("data").get("name"), "seed": cfg.get("seed"), "k_shot": part("data").get("k_shot"),
        "train_size": part("data").get("train_size"), "template_id": part("data").get("template"),
        "num_demos": part("method").get("num_demos", 0), "started_at": getattr(run, "created_at", None),
        "metrics": {k[5:]: v for k, v in summary.items() if k.startswith("eval/")},
        "costs": {k[5:]: v for k, v in summary.items() if k.startswith("cost/")},
    }


def load_wandb_rows(project: str, unreadable: list | None = None, timeout: int = 20) -> list[dict]:
    """Rows for every run of a wandb ``entity/project``; raises ``WandbUnavailable`` with a one-line reason."""
    try:
        import wandb

        runs = list(wandb.Api(timeout=timeout).runs(project))
    except Exception as err:  # wandb raises many types: no key, auth, network, no such project
        reason = (str(err).strip().splitlines() or [""])[0]
        raise WandbUnavailable(f"cannot read wandb project {project!r}: {type(err).__name__}: {reason}") from None
    rows = []
    for run in runs:
        rec = _wandb_record(run)
        problem = _problem(rec)
        if problem:
            log.warning("skipping wandb run %s/%s (%s)", project, run.id, problem)
            if unreadable is not None:
                unreadable.append((f"wandb:{project}/{run.id}", problem))
            continue
        rows.append(flatten(rec, run_dir=getattr(run, "url", f"wandb:{project}/{run.id}"), source="wandb"))
    return rows
