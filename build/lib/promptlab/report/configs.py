"""Run configs: each run's resolved ``config.yaml`` flattened to dotted keys (``method.lr``), the ``group_key``
that makes two runs the same experiment up to the seed, and the config values that tell a method's table rows
apart ("num_virtual_tokens=5").

A run without a readable config (records written before config.yaml, wandb runs without a config) has no
group key: it is grouped by the record's fields alone (``records.GROUP_KEYS``), as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from promptlab.schema import NON_SEMANTIC_KEYS

log = logging.getLogger("promptlab.report")

IGNORED_KEYS = (*NON_SEMANTIC_KEYS, "seed")
# Config keys a table column already shows (Budget, Demos, Template): named in a label only when that
# column does not tell the rows apart.
COLUMN_KEYS = {"data.k_shot": "budget", "data.train_size": "budget", "method.num_demos": "num_demos",
               "data.template": "template_id"}
UNKNOWN = "config unknown"  # the label of a run without a config next to runs with one


def flatten_config(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """``{"method": {"lr": 0.1}}`` -> ``{"method.lr": 0.1}``; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, dict) and value:
            flat |= flatten_config(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def semantic_config(cfg: dict) -> dict[str, Any]:
    """The flattened config minus the seed and the non-semantic sections (paths, logging, ...)."""
    return flatten_config({k: v for k, v in cfg.items() if k not in IGNORED_KEYS})


def read_config(path: Path) -> dict | None:
    """A run's ``config.yaml`` as a dict; None when it is missing, or unreadable (with a warning)."""
    if not path.is_file():
        return None
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        log.warning("ignoring unreadable run config %s (%s): grouped by its record alone", path,
                    type(err).__name__)
        return None
    return cfg if isinstance(cfg, dict) else None


def config_columns(cfg: dict | None, drop: tuple[str, ...] = ()) -> dict[str, str | None]:
    """``config``: the semantic config as sorted JSON, without the keys ``drop`` (a trial's tuned keys);
    ``group_key``: its hash (both None without a config)."""
    if not cfg:
        return {"config": None, "group_key": None}
    flat = {k: v for k, v in semantic_config(cfg).items() if k not in drop}
    text = json.dumps(flat, sort_keys=True, default=str)
    return {"config": text, "group_key": hashlib.sha256(text.encode()).hexdigest()[:16]}


def short_name(key: str, keys: Iterable[str]) -> str:
    """The shortest dotted suffix of ``key`` that no other key ends with: "num_virtual_tokens",
    "method.max_steps" (next to "trainer.max_steps")."""
    others = [k for k in keys if k != key]
    parts = key.split(".")
    for n in range(1, len(parts)):
        suffix = ".".join(parts[-n:])
        if not any(k == suffix or k.endswith(f".{suffix}") for k in others):
            return suffix
    return key


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def search_label(flat: dict[str, Any]) -> str:
    """A prompt search's settings in a few words: "none", "templates", "ape, propose=8", "ensemble of 3 (vote)"."""
    if not any(k.startswith("search.") for k in flat):
        return "none"
    get = lambda key, default=None: flat.get(f"search.{key}", default)  # noqa: E731
    parts = [str(get("name"))]
    if get("templates", "all") not in ("all", None) and get("templates") != []:
        parts.append(f"templates={_text(get('templates'))}")
    if get("templates") == []:
        parts.append("no templates")
    if get("instructions"):
        parts.append(f"{len(get('instructions'))} instructions")
    if get("propose"):
        parts.append(f"propose={get('propose')}")
    if get("proposer.name"):
        parts.append(f"proposer={get('proposer.name')}")
    if (get("ensemble") or 1) > 1:
        parts.append(f"ensemble of {get('ensemble')} ({get('combine')})")
    if get("eval_all"):
        parts.append("every prompt on eval")
    return ", ".join(parts)


def _values(configs: pd.Series) -> pd.DataFrame:
    """One row per config (JSON), one column per key, values as text ("—": the key is absent); a prompt
    search's many keys are one value (``search_label``)."""
    rows = []
    for c in configs:
        flat = json.loads(c)
        row = {k: _text(v) for k, v in flat.items() if not k.startswith("search.")}
        rows.append({**row, "search": search_label(flat)})
    return pd.DataFrame(rows, index=configs.index, dtype=object).fillna("—")


def _told_by_column(key: str, values: pd.Series, groups: pd.DataFrame) -> bool:
    """Whether a shown column (budget, demos, template) varies here and already determines ``key``."""
    col = groups[COLUMN_KEYS[key]].map(str) if key in COLUMN_KEYS else None
    return col is not None and col.nunique() > 1 and bool((values.groupby(col).nunique() <= 1).all())


def _shown(values: pd.DataFrame, groups: pd.DataFrame) -> list[str]:
    """The differing keys a label names: not those a column tells, nor a mirror of a named key (same last
    part, same values: ``trainer.max_steps`` copies ``method.max_steps``)."""
    shown: list[str] = []
    for key in values.columns:
        leaf = key.rsplit(".", 1)[-1]
        mirror = any(k.rsplit(".", 1)[-1] == leaf and values[k].equals(values[key]) for k in shown)
        if not mirror and not _told_by_column(key, values[key], groups):
            shown.append(key)
    return shown


def _describe(groups: pd.DataFrame) -> pd.DataFrame:
    """``config_diff`` and ``config_label`` of one representative run per group of a method's runs."""
    out = pd.DataFrame({"config_diff": "", "config_label": ""}, index=groups.index)
    known = groups["config"].notna()
    if len(groups) > 1 and known.any():
        out.loc[~known, "config_label"] = UNKNOWN
    if known.sum() < 2:
        return out
    every = _values(groups.loc[known, "config"])
    values = every[[k for k in every.columns if every[k].nunique() > 1]]
    names = {k: short_name(k, values.columns) for k in values.columns}
    shown = _shown(values, groups[known])
    for i, row in values.iterrows():
        out.at[i, "config_diff"] = "; ".join(f"{k}={v}" for k, v in row.items())
        out.at[i, "config_label"] = ", ".join(f"{names[k]}={row[k]}" for k in shown)
    return out


def config_variants(runs: pd.DataFrame, scope: list[str], group_keys: list[str]) -> pd.DataFrame:
    """Per run: ``config_diff``, the config values ("method.lr=0.1; data.eval_limit=16") that differ between
    its group and the other groups of its ``scope`` (a method on one dataset, model, split and metric), and
    ``config_label``, the short form that tables and figures append to the method's name."""
    group = runs.groupby(group_keys, dropna=False, sort=False).ngroup()
    out = pd.DataFrame({"config_diff": "", "config_label": ""}, index=runs.index)
    for _, rows in runs.groupby(scope, dropna=False, sort=False):
        firsts = rows[~group[rows.index].duplicated()]
        described = _describe(firsts).set_axis(group[firsts.index])
        out.loc[rows.index] = described.loc[group[rows.index]].to_numpy()
    return out


def natural_key(text: str) -> list:
    """Sort key reading numbers as numbers: "n=5" before "n=20"."""
    parts = re.split(r"(\d+(?:\.\d+)?(?:e[-+]?\d+)?)", text)
    return [float(p) if i % 2 else p for i, p in enumerate(parts)]
