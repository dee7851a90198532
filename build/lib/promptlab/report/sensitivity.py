"""Prompt sensitivity: how much the prompt matters, and what choosing it on dev buys.

One row per prompting experiment (a method on a dataset and budget, up to the prompt) and readout (raw scores
and each calibration):

- prompt search runs (a ``selection`` in the record): the spread over the candidates, pooled over seeds — on
  eval when the run scored every candidate there (``search.eval_all``), else on dev — and the eval score and
  text of the prompt chosen on dev;
- runs that differ only in ``data.template`` (a template sweep): the spread over templates and seeds, and the
  task's default template (``data.template=0``) for reference. Nothing was chosen on dev there.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from promptlab.evaluation.readouts import metric_key
from promptlab.report.records import GROUP_KEYS, METHOD_KEYS, READOUTS, latest_completed, score_column

COLUMNS = ["dataset", "model", "method", "display_name", "budget", "num_demos", "readout", "spread_on",
           "n_prompts", "n_seeds", "min", "median", "max", "chosen", "chosen_prompt", "default"]


def _short(text: str, width: int = 90) -> str:
    one_line = " ⏎ ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return one_line if len(one_line) <= width else one_line[: width - 1] + "…"


def _base(first: pd.Series) -> dict:
    label = f"{first['display_name']} ({first['config_label']})" if first["config_label"] else first["display_name"]
    return {**{k: first[k] for k in ("dataset", "model", "method", "budget", "num_demos")}, "display_name": label}


def _search_rows(runs: pd.DataFrame) -> list[dict]:
    """One row per search experiment and readout; readouts with the very same scores and choices (length
    normalisations when every answer has the same length) share a row: "raw = per_token = ..."."""
    out: list[dict] = []
    for number, (_, group) in enumerate(runs.groupby(GROUP_KEYS, dropna=False, sort=False)):
        sels = [json.loads(s) for s in group["selection"]]
        metric = group["metric"].iloc[0]
        on_eval = all(c.get("eval") for sel in sels for c in sel["candidates"])
        for readout in READOUTS:
            key = metric_key(metric, readout)
            values = [c["eval" if on_eval else "dev"].get(key) for sel in sels for c in sel["candidates"]]
            values = [v * 100 for v in values if v is not None]
            if not values:
                continue
            texts = {c["id"]: c["text"] for c in sels[0]["candidates"]}
            chosen = sels[0]["chosen"].get(readout, [])
            same = next((r for r in out if r["_values"] == values and r["_chosen"] == chosen
                         and r["_group"] == number), None)
            if same is not None:  # e.g. length normalisation over answers of one length: the raw scores again
                same["readout"] += f" = {readout}"
                continue
            out.append({**_base(group.iloc[0]), "readout": readout, "spread_on": "eval" if on_eval else "dev",
                        "_values": values, "_chosen": chosen, "_group": number,
                        "n_prompts": len(sels[0]["candidates"]), "n_seeds": len(group),
                        "min": min(values), "median": float(np.median(values)), "max": max(values),
                        "chosen": group[score_column(readout)].mean() * 100,
                        "chosen_prompt": " + ".join(_short(texts.get(c, c), 60 if len(chosen) > 1 else 90)
                                                    for c in chosen),
                        "default": np.nan})
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in out]


def _without_template(config: str | None) -> str | None:
    if not isinstance(config, str):
        return None
    return json.dumps({k: v for k, v in json.loads(config).items() if k != "data.template"}, sort_keys=True)


def _sweep_rows(runs: pd.DataFrame) -> list[dict]:
    out = []
    runs = runs.assign(prompt_free=runs["config"].map(_without_template))
    for _, group in runs.groupby([*METHOD_KEYS, "budget", "num_demos", "prompt_free"], dropna=False, sort=False):
        if group["template_id"].nunique() < 2:
            continue
        for readout in READOUTS:
            values = group[score_column(readout)].dropna() * 100
            if values.empty:
                continue
            default = group.loc[group["template_id"] == 0, score_column(readout)]
            out.append({**_base(group.iloc[0]), "readout": readout, "spread_on": "eval",
                        "n_prompts": group["template_id"].nunique(), "n_seeds": group["seed"].nunique(),
                        "min": values.min(), "median": values.median(), "max": values.max(), "chosen": np.nan,
                        "chosen_prompt": "— (no dev choice)", "default": default.mean() * 100})
    return out


def sensitivity(df: pd.DataFrame) -> pd.DataFrame:
    """The sensitivity rows (``COLUMNS``; scores x100) of every prompting experiment in the runs frame."""
    done = latest_completed(df)
    prompting = done[done["trains"].eq(False)]
    searched = prompting["selection"].notna()
    rows = _search_rows(prompting[searched]) + _sweep_rows(prompting[~searched])
    return pd.DataFrame(rows, columns=COLUMNS)


def display_sensitivity(rows: pd.DataFrame) -> pd.DataFrame:
    """One dataset's sensitivity rows as strings with readable headers."""
    pct = lambda v: "—" if pd.isna(v) else f"{v:.1f}"  # noqa: E731
    return pd.DataFrame({
        "Method": rows["display_name"], "Budget": rows["budget"], "Readout": rows["readout"].str.capitalize(),
        "Spread on": rows["spread_on"], "Prompts": rows["n_prompts"].astype(str), "Seeds": rows["n_seeds"].astype(str),
        "Min": rows["min"].map(pct), "Median": rows["median"].map(pct), "Max": rows["max"].map(pct),
        "Chosen on dev (eval)": rows["chosen"].map(pct), "Template 0 (eval)": rows["default"].map(pct),
        "Chosen prompt": rows["chosen_prompt"],
    }).reset_index(drop=True)


NOTE = ("Prompt sensitivity (primary metric ×100): min / median / max over the prompts tried (pooled over seeds), "
        "on eval when every prompt was scored there (search.eval_all or a template sweep), else on dev. Chosen on "
        "dev: the eval score of the prompt a search chose on dev (mean over seeds), for each readout (raw or "
        "calibrated). Template 0: the task's default template, in a template sweep.")
