"""Run records: every ``result.json`` under a directory (at any depth), read through ``promptlab.schema``, one
pandas row per run.

Unreadable records are never fatal: each is logged as a warning naming the file and kept in
``df.attrs["unreadable"]`` so the report can list it. Schema-1 records (accuracy only, no ``method_info``,
``machine`` or ``kind``) stay readable: their primary metric is accuracy and they count as training runs.

Each run's resolved ``config.yaml`` (next to result.json; for wandb runs, the run's config) gives its
``group_key`` (see ``promptlab.report.configs``): runs that differ in any config value but the seed are never
merged. A run without a readable config is grouped by its record's fields alone.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pandas as pd

from promptlab.evaluation.readouts import ORDER as READOUTS
from promptlab.evaluation.readouts import metric_key
from promptlab.report.columns import COST_KEYS
from promptlab.report.configs import config_columns, config_variants, read_config
from promptlab.schema import primary_metric, record_problem

log = logging.getLogger("promptlab.report")

# One method's runs on one dataset, model, split and metric: their groups are told apart (in labels) by
# budget, template or config. ``kind`` keeps an eval record (a run re-scored) apart from its training record.
METHOD_KEYS = ["dataset", "model", "method", "kind", "eval_split", "metric"]
# The keys that make two runs the same experiment, up to the seed: one table row per group. ``group_key``
# (the config's hash) is missing for runs without a config: those are grouped by the record's fields alone.
GROUP_KEYS = [*METHOD_KEYS, "budget", "num_demos", "template_id", "group_key"]


def score_column(readout: str) -> str:
    """The runs frame's column of the primary metric under a readout: ``score_raw``, ``score_batch``. ``score``
    itself is the run's headline: the primary metric under the readout it chose on dev."""
    return f"score_{readout}"


READOUT_COLUMNS = [score_column(name) for name in READOUTS]  # the primary metric under every readout computed
# A tuned row's trials (promptlab.tuning): the runs that differ only in their point of the method's space.
TUNING = ["trial", "tuning_point", "n_points", "dev_evaluations", "dev_budget", "chosen_step"]
TRIAL = ["trial", "tuning_point"]  # what tells a row's trials apart (its repeats share both)
COLUMNS = [
    "run_id", "status", "kind", "method", "display_name", "modifies", "trains", "model", "dataset",
    "eval_split", "seed", "k_shot", "train_size", "template_id", "num_demos", "budget", "budget_kind",
    "budget_value", "metric", "score", "dev_score", "readout", *READOUT_COLUMNS, "higher_is_better", "chance",
    "accuracy", "macro_f1", *TUNING, "objective", "quantization", "precision", "diverged_at_step",
    "dev_eval_seconds", "dev_check_seconds", *COST_KEYS,  # the declared cost columns (report/columns.py)
    "total_params", "search_seconds", "search_tokens_scored", "search_generated_tokens",
    "eval_seconds", "eval_examples", "eval_prompt_tokens", "query_seconds", "query_prompt_tokens",
    "demo_generation_seconds", "peak_rss_mb", "peak_rss_reset_per_run", "num_train_examples", "machine",
    "load_start", "load_end", "error", "started_at", "finished_at", "run_dir", "source", "group_key",
    "config_label", "config_diff", "config", "selection",
]
NUMERIC = ["score", "dev_score", *READOUT_COLUMNS, "trial", "n_points", "dev_evaluations", "dev_budget",
           "chosen_step", "diverged_at_step", "dev_eval_seconds", "dev_check_seconds", "chance", "accuracy", "macro_f1",
           *COST_KEYS, "total_params", "search_seconds", "search_tokens_scored", "search_generated_tokens",
           "eval_seconds", "eval_examples", "eval_prompt_tokens", "query_seconds", "query_prompt_tokens",
           "demo_generation_seconds", "peak_rss_mb", "k_shot",
           "train_size", "budget_value",
           "num_train_examples", "load_start", "load_end"]
NESTED = ("metrics", "costs", "versions", "traceback", "method_info", "machine", "selection", "dev_metrics",
          "headline", "tuning", "provenance", "train_idx", "splits", "resumes")


class WandbUnavailable(RuntimeError):
    """The wandb API could not be reached or read (no network, no credentials, no such project)."""


def read_record(path: str | Path) -> tuple[dict | None, str | None]:
    """``(record, None)``, or ``(None, reason)`` when the file cannot be used."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return None, f"{type(err).__name__}: {err}"
    problem = record_problem(rec)
    return (None, problem) if problem else (rec, None)


def _trains(rec: dict) -> bool | None:
    """``method_info.trains``; for schema-1 records, whether any parameter was trained (None: unknown)."""
    trains = (rec.get("method_info") or {}).get("trains")
    if isinstance(trains, bool):
        return trains
    params = (rec.get("costs") or {}).get("trainable_params")
    return None if pd.isna(params) else bool(params > 0)


def _budget(row: pd.Series) -> tuple[str, str | None, float | None]:
    """The training-data budget: ``("16/class", "k_shot", 16)`` (training examples per class); ``("—", None, None)`` for a method that trains
    nothing and shows no demonstrations (it reads no training example)."""
    trains, demos = row["trains"], row["num_demos"]
    if not pd.isna(trains) and not trains and (pd.isna(demos) or not demos):
        return "—", None, None
    if not pd.isna(row["k_shot"]):  # "k" would read as demonstrations (k-shot prompting): say what it counts
        return f"{int(row['k_shot'])}/class", "k_shot", float(row["k_shot"])
    if not pd.isna(row["train_size"]):
        return f"{int(row['train_size'])} total", "train_size", float(row["train_size"])
    return "all", "all", math.inf


def _machine(rec: dict) -> dict:
    """``machine`` as "CPU (N cores)" and the 1-minute load average at the start and end of the run."""
    m = rec.get("machine") if isinstance(rec.get("machine"), dict) else {}
    load = lambda key: m[key][0] if isinstance(m.get(key), list) and m[key] else None  # noqa: E731
    name = f"{m['cpu']} ({m['cores']} cores)" if m.get("cpu") and m.get("cores") else m.get("cpu")
    return {"machine": name, "load_start": load("load_start"), "load_end": load("load_end")}


def flatten(rec: dict, run_dir: str, source: str = "local", config: dict | None = None) -> dict:
    """One flat row: top-level fields, method_info and machine, then metrics and costs by name (prefixed only
    on a name clash), ``metric``/``score``: the primary metric's name and value (a fraction), and the run's
    ``config`` (flattened, as JSON) with its ``group_key``."""
    info = rec.get("method_info") if isinstance(rec.get("method_info"), dict) else {}
    row = {k: v for k, v in rec.items() if k not in NESTED}
    row.update(display_name=info.get("display_name") or str(rec["method"]).replace("_", " ").capitalize(),
               modifies=info.get("modifies") or "—", trains=_trains(rec), **_machine(rec))
    for section in ("metrics", "costs"):
        for key, value in (rec.get(section) or {}).items():
            row[f"{section}.{key}" if key in row else key] = value
    for key, value in (rec.get("versions") or {}).items():
        row[f"versions.{key}"] = value
    if isinstance(row.get("error"), str):
        row["error"] = row["error"].strip().splitlines()[0] if row["error"].strip() else ""
    metric, metrics = primary_metric(rec), rec.get("metrics") or {}
    head = _part(rec, "headline")  # records before schema 3: the raw primary metric, no dev
    headline = head.get("metric") or metric
    tuning = _part(rec, "tuning")
    model = _part(_part(rec, "provenance"), "model")
    row.update(run_dir=run_dir, source=source, status=row.get("status") or "unknown", metric=metric,
               score=metrics.get(headline), dev_score=(rec.get("dev_metrics") or {}).get(headline),
               readout=head.get("readout") or "raw", kind=rec.get("kind") or "train",
               # the primary metric under every readout (evaluation.readouts), shown beside the headline
               **{score_column(name): metrics.get(metric_key(metric, name)) for name in READOUTS},
               higher_is_better=rec.get("higher_is_better") is not False,
               trial=tuning.get("trial"), n_points=tuning.get("points"),
               tuning_point=json.dumps(tuning["point"], sort_keys=True, default=str) if tuning.get("keys") else None,
               dev_evaluations=tuning.get("dev_evaluations"),
               dev_budget=tuning.get("budget"), chosen_step=_part(tuning, "dev_checks").get("chosen_step"),
               objective=rec.get("objective") or "dev", quantization=model.get("quantization"),
               precision=_part(rec, "provenance").get("precision"),
               # a prompt search's candidates and choices (report.sensitivity), as JSON
               selection=json.dumps(rec["selection"]) if isinstance(rec.get("selection"), dict) else None)
    row.setdefault("model", "?")
    # a trial's point is not what tells its row apart: its row is the method, tuned (report.selection)
    row.update(config_columns(config, drop=("trial", *tuning.get("keys", ())) if tuning.get("keys") else ()))
    return row


def _part(rec: dict, key: str) -> dict:
    """A nested section of a record as a dict (empty when absent or not a mapping)."""
    value = rec.get(key)
    return value if isinstance(value, dict) else {}


def _trains_from_method(df: pd.DataFrame) -> list:
    """Schema-1 records have no ``method_info``: one without costs (running, failed) takes whether its method
    trains from the method's other runs."""
    known = df.dropna(subset=["trains"]).drop_duplicates("method").set_index("method")["trains"]
    return [known.get(m) if pd.isna(t) else t for t, m in zip(df["trains"], df["method"], strict=True)]


def _split_from_siblings(df: pd.DataFrame) -> pd.Series:
    """Schema-1 records name their eval split only once completed: a running or failed one takes the split of
    its completed siblings (same group keys otherwise), so it lands in their group."""
    keys = [k for k in GROUP_KEYS if k != "eval_split"]
    known = df.dropna(subset=["eval_split"]).drop_duplicates(keys)[[*keys, "eval_split"]]
    filled = df[keys].merge(known, on=keys, how="left")["eval_split"].to_numpy()
    return df["eval_split"].fillna(pd.Series(filled, index=df.index))


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in df:
            df[col] = None
    df = df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]
    for col in ("seed", "template_id", "num_demos"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    df["trains"] = _trains_from_method(df)
    df[["budget", "budget_kind", "budget_value"]] = [_budget(r) for _, r in df.iterrows()]
    df["eval_split"] = _split_from_siblings(df)
    for col in NUMERIC:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    df[["config_diff", "config_label"]] = config_variants(df, METHOD_KEYS, GROUP_KEYS).to_numpy()
    return df.sort_values(["dataset", "method", "seed", "run_dir"], na_position="last").reset_index(drop=True)


def load_runs(path: str | Path, wandb_project: str | None = None) -> pd.DataFrame:
    """Every run under ``path`` (and, optionally, a wandb ``entity/project``) as one row per run.

    Columns: see ``COLUMNS`` (metrics and costs flattened by name; ``score`` = the primary metric, a fraction
    in [0, 1]; ``config_label``: the config values that tell the run's group from its method's other groups,
    ``config_diff`` the same with full keys). ``df.attrs["unreadable"]`` lists ``(file, reason)`` for each
    skipped record.
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
        rows.append(flatten(rec, str(file.parent), config=read_config(file.parent / "config.yaml")))
    if wandb_project:
        local_ids = {r.get("run_id") for r in rows}
        rows += [r for r in load_wandb_rows(wandb_project, unreadable) if r.get("run_id") not in local_ids]
    df = _frame(rows) if rows else pd.DataFrame(columns=COLUMNS)
    df.attrs.update(root=str(root), unreadable=unreadable)
    return df


def latest_completed(df: pd.DataFrame) -> pd.DataFrame:
    """The run that stands for each (group, seed): among completed runs, an exact repeat (same config, seed and
    trial) stands in for the earlier ones, which ``summarize`` counts; of a tuned row's trials (runs that differ
    only in their point of the method's space, ``promptlab.tuning``), the one best on dev (``dev_score``; ties:
    the lowest trial), never on eval. Each kept run carries ``n_trials`` and ``tuning_seconds``: every trial
    of its seed (diverged ones too) and what they cost (training, dev scoring). Runs with another config are
    another group, never dropped."""
    done = df[df["status"] == "completed"].copy()
    done = done.sort_values("finished_at", na_position="first", key=lambda s: s.astype(str))
    done = done.drop_duplicates([*GROUP_KEYS, "seed", *TRIAL], keep="last")
    sign = done["higher_is_better"].map(lambda h: 1.0 if h is not False else -1.0)
    done = done.assign(_dev=(done["dev_score"] * sign).fillna(-math.inf), _trial=done["trial"].fillna(-1))
    done = done.sort_values(["_dev", "_trial"], ascending=[False, True], kind="stable")
    done = done.drop_duplicates([*GROUP_KEYS, "seed"], keep="first").drop(columns=["_dev", "_trial"]).sort_index()
    return _with_trial_costs(df, done)


def _with_trial_costs(df: pd.DataFrame, done: pd.DataFrame) -> pd.DataFrame:
    """``done`` with, per (group, seed), the trials run (completed or diverged, a repeat counted once) and the
    sum of their training and dev-scoring seconds."""
    keys = [*GROUP_KEYS, "seed"]
    ended = df[df["status"].isin(["completed", "diverged"])]
    ended = ended.sort_values("finished_at", key=lambda s: s.astype(str)).drop_duplicates([*keys, *TRIAL], keep="last")
    seconds = ended[["train_seconds", "dev_eval_seconds", "dev_check_seconds"]].fillna(0).sum(axis=1)
    count: dict[tuple, int] = {}
    total: dict[tuple, float] = {}
    for key, value in zip(_keys(ended, keys), seconds, strict=True):
        count[key], total[key] = count.get(key, 0) + 1, total.get(key, 0.0) + float(value)
    at = _keys(done, keys)
    return done.assign(n_trials=[count.get(k, 1) for k in at], tuning_seconds=[total.get(k, 0.0) for k in at])


def _keys(frame: pd.DataFrame, keys: list[str]) -> list[tuple]:
    """Each row's values of ``keys`` as a hashable tuple, every kind of missing value as None."""
    return [tuple(None if pd.isna(v) else v for v in row) for row in frame[keys].itertuples(index=False)]


# --- wandb (online users): the same rows from the runs' config and summary --------------------------------

WANDB_STATE = {"finished": "completed", "failed": "failed", "crashed": "running", "killed": "failed",
               "running": "running"}


def _wandb_config(run) -> dict:
    """The run's Hydra config: its wandb config minus the record's description and wandb's own keys."""
    return {k: v for k, v in dict(run.config).items() if k != "record" and not k.startswith("_")}


def _wandb_record(run) -> dict:
    """A record from the run's config (the record's top-level fields under ``record``, when logged, else the
    Hydra config) and summary (``eval/<metric>``, ``cost/<key>``, ``status``)."""
    cfg = dict(run.config)
    summary = dict(getattr(run.summary, "_json_dict", None) or run.summary)
    part = lambda key: cfg.get(key) if isinstance(cfg.get(key), dict) else {}  # noqa: E731
    rec = {k: v for k, v in part("record").items() if k not in ("status", "metrics", "costs")}
    from_config = {
        "method": part("method").get("name"), "model": part("model").get("name"),
        "dataset": part("data").get("name"), "seed": cfg.get("seed"), "k_shot": part("data").get("k_shot"),
        "train_size": part("data").get("train_size"), "template_id": part("data").get("template"),
        "num_demos": part("method").get("num_demos", 0), "eval_split": part("data").get("eval_split"),
        "primary_metric": part("data").get("primary_metric"), "started_at": getattr(run, "created_at", None),
    }
    for key, value in from_config.items():
        if rec.get(key) is None:
            rec[key] = value
    return {
        **rec, "run_id": run.id, "status": summary.get("status") or WANDB_STATE.get(run.state, run.state),
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
        problem = record_problem(rec)
        if problem:
            log.warning("skipping wandb run %s/%s (%s)", project, run.id, problem)
            if unreadable is not None:
                unreadable.append((f"wandb:{project}/{run.id}", problem))
            continue
        rows.append(flatten(rec, run_dir=getattr(run, "url", f"wandb:{project}/{run.id}"), source="wandb",
                            config=_wandb_config(run)))
    return rows
