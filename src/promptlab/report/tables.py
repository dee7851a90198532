"""Summary tables: numbers per run group (``GROUP_KEYS``) in human units, rendered to Markdown (tabulate),
booktabs LaTeX (pandas Styler) and HTML. Metric values are fractions in the records and x100 here."""

from __future__ import annotations

import hashlib
import html
import math
import re
from collections.abc import Iterable

import numpy as np
import pandas as pd

from promptlab.evaluation.metrics import display_metric
from promptlab.report.columns import (
    cost_columns,
    cost_summary,
    fmt_bytes,
    fmt_ci,
    fmt_count,
    fmt_fraction,
    fmt_megabytes,
    fmt_pct,
    fmt_seconds,
    generates,
)
from promptlab.report.columns import missing as _missing
from promptlab.report.configs import natural_key
from promptlab.report.intervals import hierarchical_interval, seed_table
from promptlab.report.records import (
    GROUP_KEYS,
    METHOD_KEYS,
    READOUT_COLUMNS,
    READOUTS,
    TRIAL,
    latest_completed,
)

CI_NOTE = ("mean over seeds [95% interval: a two-level bootstrap over seeds and evaluation examples with a "
           "Student-t quantile, report/intervals.py]; with one seed the interval is over examples only")
STD_NOTE = "mean ± sample standard deviation (ddof=1) over seeds; no ± with a single seed"
# Table columns that are shown only when they vary within a method, with their headers.
VARIANTS = {"model": "Model", "kind": "Kind", "eval_split": "Split", "budget": "Budget", "num_demos": "Demos",
            "template_id": "Template"}
# One headline row per these keys: runs on another split or with another metric are not comparable, and
# runs with other config values (other than budget, demos or template) are other experiments.
HEADLINE_KEYS = [*METHOD_KEYS, "config_label"]
REPEATS_NOTE = ("Runs: completed runs, counting exact repeats (same config and seed); the mean takes the "
                "latest run of each seed.")


def metric_name(metric: str) -> str:
    """"ROUGE-L" for rougeL; the id for ``evaluate:<id>``."""
    return display_metric(metric).display


def metric_label(metric: str) -> str:
    """Header / axis label of a metric shown x100: "Accuracy (%)", "ROUGE-L", "sacrebleu (×100)"."""
    return display_metric(metric).label


def is_corpus(metric: str) -> bool:
    """Whether the metric's aggregate is a corpus score (chrF, BLEU), not the mean of its per-example scores."""
    return display_metric(metric).corpus


def value_label(metrics: Iterable) -> str:
    """The label of the value column/axis: the metric's, or "Score (×100)" when rows mix metrics."""
    names = list(dict.fromkeys(m for m in metrics if isinstance(m, str)))
    return metric_label(names[0]) if len(names) == 1 else "Score (×100)"


def _points(values: pd.Series, name: str) -> dict[str, float]:
    pts = values * 100
    return {f"{name}_mean": pts.mean(), f"{name}_std": pts.std(ddof=1)}


def _interval(ok: pd.DataFrame, name: str, readout: str | None) -> dict[str, float]:
    """``<name>_low``/``_high`` (x100): the 95% interval of the row's mean over its seeds' runs and the examples
    they all scored, under ``readout`` (None: each run's own headline readout); ``<name>_examples``: how many
    examples that is, ``<name>_partial``: whether some run scored examples the others did not. A corpus metric
    (chrF, BLEU) takes its interval's width from the sentence-level scores, centred on the runs' mean."""
    runs = [(d, readout or r) for d, r in zip(ok["run_dir"], ok["readout"].fillna("raw"), strict=True)]
    table, shared, each = seed_table(runs) if runs else (None, 0, [])
    if not shared:
        return {f"{name}_low": np.nan, f"{name}_high": np.nan, f"{name}_examples": 0, f"{name}_partial": False}
    ci = hierarchical_interval(table, bounds=(0.0, 1.0))
    column = "score" if readout is None else f"score_{readout}"
    centre = ok[column].mean() if is_corpus(ok["metric"].iloc[0]) else ci.mean
    return {f"{name}_low": 100 * (centre - ci.mean + ci.low), f"{name}_high": 100 * (centre - ci.mean + ci.high),
            f"{name}_examples": shared, f"{name}_partial": any(n != shared for n in each)}


def _readouts_chosen(ok: pd.DataFrame) -> str:
    """The readouts the row's seeds chose on dev: "batch", or "raw ×2, batch" when seeds differ."""
    counts = ok["readout"].fillna("raw").value_counts()
    return ", ".join(r if len(counts) == 1 else f"{r} ×{n}" for r, n in counts.items())


def _group_row(key: tuple, runs: pd.DataFrame, ok: pd.DataFrame) -> dict:
    status = runs["status"].value_counts()
    n_known = sum(int(status.get(s, 0)) for s in ("completed", "failed", "running", "diverged"))
    n_completed = int(status.get("completed", 0))
    done = runs[runs["status"] == "completed"]
    trains, loads = runs["trains"].dropna(), ok[["load_start", "load_end"]]
    return {
        **dict(zip(GROUP_KEYS, key, strict=True)),
        "display_name": runs["display_name"].iloc[0], "modifies": runs["modifies"].iloc[0],
        "config_label": runs["config_label"].iloc[0], "config_diff": runs["config_diff"].iloc[0],
        "trains": bool(trains.iloc[0]) if len(trains) else None,
        "higher_is_better": bool(runs["higher_is_better"].iloc[0]), "chance": runs["chance"].median(),
        "budget_kind": runs["budget_kind"].iloc[0], "budget_value": runs["budget_value"].iloc[0],
        "n_seeds": len(ok), "seeds": " ".join(str(s) for s in sorted(ok["seed"].dropna())),
        "n_runs": len(runs), "n_completed": n_completed,
        "n_repeats": n_completed - len(done.drop_duplicates(["seed", *TRIAL])),
        "n_failed": int(status.get("failed", 0)), "n_diverged": int(status.get("diverged", 0)),
        "n_running": int(status.get("running", 0)), "n_other": len(runs) - n_known,
        **_points(ok["score"], "score"), **_interval(ok, "score", None),
        "dev_score_mean": ok["dev_score"].mean() * 100, "readouts_chosen": _readouts_chosen(ok),
        **_points(ok["macro_f1"], "macro_f1"),
        **{k: v for col, name in zip(READOUT_COLUMNS, READOUTS, strict=True)
           for k, v in {**_points(ok[col], col), **(_interval(ok, col, name) if ok[col].notna().any() else {})}.items()},
        "n_trials": ok["n_trials"].max() if "n_trials" in ok else np.nan,
        "tuning_seconds_mean": ok["tuning_seconds"].mean() if "tuning_seconds" in ok else np.nan,
        "dev_evaluations": ok["dev_evaluations"].max(), "dev_budget": ok["dev_budget"].max(),
        "eval_objective": bool((ok["objective"] == "eval").any()),
        "quantization": "; ".join(sorted(ok["quantization"].dropna().unique())) or None,
        "precision": "; ".join(sorted(ok["precision"].dropna().unique())) or None,
        **cost_summary(ok), "total_params": ok["total_params"].median(),
        "search_seconds_mean": ok["search_seconds"].mean(),
        "search_tokens_mean": (ok["search_tokens_scored"] + ok["search_generated_tokens"].fillna(0)).mean(),
        "peak_rss_mb_max": ok["peak_rss_mb"].max(), "eval_examples": ok["eval_examples"].median(),
        # per-query and one-off inference costs (report.verdict)
        "eval_seconds_mean": ok["eval_seconds"].mean(), "eval_prompt_tokens_mean": ok["eval_prompt_tokens"].mean(),
        "query_seconds_mean": ok["query_seconds"].mean(), "query_prompt_tokens_mean": ok["query_prompt_tokens"].mean(),
        "demo_generation_seconds_mean": ok["demo_generation_seconds"].mean(),
        "peak_rss_upper_bound": bool((ok["peak_rss_reset_per_run"] == False).any()),  # noqa: E712
        "machine": "; ".join(sorted(ok["machine"].dropna().unique())) or None,
        "load_min": loads.min().min(), "load_max": loads.max().max(),
    }


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per group (``GROUP_KEYS``: same config up to the seed) with raw numbers: seeds, exact repeats
    (``n_repeats``) and non-completed runs counted, the config values that tell the row from its method's
    other rows (``config_label``, ``config_diff``), the primary metric (``score_*``) and macro-F1 x100 (mean and
    ddof=1 std over seeds), costs averaged over completed runs (peak memory: max), and the machines and load
    range the timings were measured under."""
    done = latest_completed(df)
    rows = [_group_row(key, runs, done[same_group(done, runs.iloc[0])])
            for key, runs in df.groupby(GROUP_KEYS, dropna=False, sort=False)]
    return _ordered(pd.DataFrame(rows))


def _ordered(out: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and model: methods that train nothing first, then by trainable parameters (fewer first)."""
    if out.empty:
        return out
    num = lambda col: pd.to_numeric(out[col], errors="coerce").astype(float).fillna(-1.0)  # noqa: E731
    by_method = [out["dataset"], out["method"]]
    keys = pd.DataFrame({
        "dataset": out["dataset"], "model": out["model"].astype(str),
        "trains": out["trains"].ne(False).groupby(by_method).transform("max"),
        "params": out["trainable_params"].groupby(by_method).transform("median").fillna(math.inf),
        "demos": num("num_demos").groupby(by_method).transform("min"), "method": out["method"],
        "kind": out["kind"].ne("train"), "split": out["eval_split"].astype(str),
        "budget": num("budget_value"), "num_demos": num("num_demos"), "template": num("template_id"),
        "config": out["config_diff"].map(_rank(out["config_diff"])),
    })
    return out.loc[keys.sort_values(list(keys.columns), kind="stable").index].reset_index(drop=True)


def _rank(texts: pd.Series) -> dict[str, int]:
    """Each distinct text's position in natural order (numbers as numbers)."""
    return {t: i for i, t in enumerate(sorted(set(texts), key=natural_key))}


def same_group(done: pd.DataFrame, ref: pd.Series) -> pd.Series:
    """Row mask of ``done`` equal to ``ref`` on GROUP_KEYS, treating missing == missing."""
    mask = pd.Series(True, index=done.index)
    for k in GROUP_KEYS:
        col = done[k]
        mask &= col.isna() if pd.isna(ref[k]) else (col == ref[k]).fillna(False)
    return mask


def headline(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per ``HEADLINE_KEYS`` (a method, and each of its other config values): the largest budget, then
    most seeds, lowest template id."""
    if summary.empty:
        return summary
    s = summary.assign(_b=summary["budget_value"].fillna(-1), _t=pd.to_numeric(summary["template_id"], errors="coerce").fillna(-1))
    s = s.sort_values(["_b", "n_seeds", "_t", "num_demos"], ascending=[False, False, True, False], kind="stable")
    s = s.drop_duplicates(HEADLINE_KEYS).drop(columns=["_b", "_t"])
    return s.loc[sorted(s.index)]


def method_labels(rows: pd.DataFrame) -> pd.Series:
    """The display name plus the config values that tell the row apart: "Prompt tuning (num_virtual_tokens=5)"."""
    config = rows["config_label"].fillna("").astype(str)
    return rows["display_name"].astype(str) + config.map(lambda c: f" ({c})" if c else "")


def point_labels(summary: pd.DataFrame) -> pd.Series:
    """A label per row: ``method_labels`` plus whatever else varies among that method's rows of the dataset
    (budget, split, ...)."""
    labels = method_labels(summary)
    for _, rows in summary.groupby(["dataset", "method"], sort=False):
        for col in _varying(rows):
            fmt = {"num_demos": "{} demos", "template_id": "t{}"}.get(col, "{}")
            labels.loc[rows.index] += ", " + rows[col].map(lambda v, f=fmt: f.format("—" if pd.isna(v) else v))
    return labels


def _varying(rows: pd.DataFrame) -> list[str]:
    """The variant columns needed to tell a method's rows apart (e.g. budget, when a method ran several); the
    model whenever the rows span several (CLIP and a vision-language model on one image task)."""
    rows = rows.astype({c: str for c in VARIANTS})
    by_method = rows.groupby("method")
    return [c for c in VARIANTS if (by_method[c].nunique() > 1).any() or (c == "model" and rows[c].nunique() > 1)]


def machine_note(rows: pd.DataFrame) -> str:
    """Where the timings of these summary rows were measured: "Intel Xeon (2 cores), 1-min load 0.1–1.9"."""
    machines = sorted({m for ms in rows["machine"].dropna() for m in ms.split("; ")})
    if not machines:
        return ""
    lo, hi = rows["load_min"].min(), rows["load_max"].max()
    return "; ".join(machines) + ("" if pd.isna(lo) else f", 1-min load {lo:.1f}–{hi:.1f}")


def timing_note(rows: pd.DataFrame) -> str:
    """``machine_note`` as a sentence for captions ("" without machine information)."""
    note = machine_note(rows)
    return f"Timings measured on {note}." if note else ""


def _not_completed(r) -> str:
    parts = [(r["n_failed"], "failed"), (r["n_diverged"], "diverged"), (r["n_running"], "running/crashed"),
             (r["n_other"], "other")]
    return ", ".join(f"{n} {what}" for n, what in parts if n) or "—"


def _show_f1(summary: pd.DataFrame) -> bool:
    return bool(summary["macro_f1_mean"].notna().any() and (summary["metric"] != "macro_f1").any())


def _repeats(summary: pd.DataFrame) -> bool:
    """Whether any row's mean stands for exact repeats of a run (shown as a "Runs" column)."""
    return bool((summary["n_repeats"] > 0).any())


def _has(summary: pd.DataFrame, col: str) -> bool:
    return bool(summary[col].notna().any())


def _tunes(summary: pd.DataFrame) -> bool:
    """Whether any row chose settings over several trials or dev checks (promptlab.tuning)."""
    return bool((summary["n_trials"].fillna(1) > 1).any() or (summary["tuning_seconds_mean"].fillna(0) >
                                                               summary["train_seconds_mean"].fillna(0) + 1e-9).any())


def _searches(summary: pd.DataFrame) -> bool:
    """Whether any row chose its prompt with a search (promptlab.search)."""
    return bool((summary["search_seconds_mean"].fillna(0) > 0).any())


def display_table(summary: pd.DataFrame, compact: bool = False) -> pd.DataFrame:
    """Summary rows of one dataset as strings with readable headers (compact: the stdout/README columns)."""
    cols: dict[str, pd.Series | list] = {"Method": method_labels(summary)}
    for col in _varying(summary):
        cols[VARIANTS[col]] = summary[col].map(lambda v: "—" if pd.isna(v) else str(v))
    if summary["metric"].nunique() > 1:
        cols["Metric"] = summary["metric"].map(metric_name)
    rows = summary.to_dict("records")
    cols["Seeds"] = summary["n_seeds"].astype(str)
    if _repeats(summary):
        cols["Runs"] = summary["n_completed"].astype(str)
    mark = summary["eval_objective"].map(lambda e: " †" if e else "")
    cols[value_label(summary["metric"])] = [fmt_ci(r["score_mean"], r["score_low"], r["score_high"]) + m
                                            for r, m in zip(rows, mark, strict=True)]
    if not compact:
        cols["± std"] = summary["score_std"].map(lambda v: "—" if _missing(v) else f"{v:.1f}")
    if (summary["readouts_chosen"].fillna("") != "").any():
        cols["Readout (on dev)"] = summary["readouts_chosen"].replace("", "—")
    if _has(summary, "dev_evaluations"):
        cols["Dev evals"] = summary["dev_evaluations"].map(lambda v: "—" if _missing(v) else f"{v:.0f}")
    if not compact and _show_f1(summary):
        cols["Macro-F1 (%)"] = [fmt_pct(r["macro_f1_mean"], r["macro_f1_std"]) for r in rows]
    cols.update(cost_columns(summary, compact, "training"))  # report/columns.py: the declared costs
    if _tunes(summary):  # every trial's training and dev scoring: what choosing the row's settings cost
        cols["Tuning time"] = summary["tuning_seconds_mean"].map(fmt_seconds)
        if not compact:
            cols["Trials"] = summary["n_trials"].map(lambda v: "—" if _missing(v) else f"{v:.0f}")
    if _searches(summary):  # choosing a prompt on dev is a cost, beside training
        cols["Search time"] = summary["search_seconds_mean"].map(fmt_seconds)
        if not compact:
            cols["Search tokens"] = summary["search_tokens_mean"].map(fmt_count)
    cols.update(cost_columns(summary, compact, "inference"))
    mark = summary["peak_rss_upper_bound"].map(lambda b: "*" if b else "")
    cols["Peak memory" if compact else "Peak RAM"] = summary["peak_rss_mb_max"].map(fmt_megabytes) + mark
    cols.update(cost_columns(summary, compact, "memory"))
    not_done = [_not_completed(r) for r in rows]
    if not compact or any(x != "—" for x in not_done):
        cols["Not completed"] = not_done
    return pd.DataFrame(cols).reset_index(drop=True)


def readout_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Each row's primary metric under every readout it computed, each with its 95% interval: sensitivity to
    the readout. The headline column of the comparison table is the readout chosen on dev; these are shown,
    never chosen (a readout a row's seeds chose is marked ✓)."""
    cols: dict[str, list | pd.Series] = {"Method": method_labels(summary)}
    for name, col in zip(READOUTS, READOUT_COLUMNS, strict=True):
        if _has(summary, f"{col}_mean"):
            chosen = summary["readouts_chosen"].fillna("").map(lambda c, n=name: n in [x.split(" ×")[0] for x in
                                                                                   c.split(", ")])
            cols[name] = [fmt_ci(r[f"{col}_mean"], r.get(f"{col}_low"), r.get(f"{col}_high")) + (" ✓" if c else "")
                          for r, c in zip(summary.to_dict("records"), chosen, strict=True)]
    return pd.DataFrame(cols).reset_index(drop=True)


READOUT_NOTE = ("The primary metric under every readout (×100, mean over seeds [95% interval over seeds and "
                "examples]): raw = summed answer log-likelihood (lm-evaluation-harness's acc); per_token, per_char "
                "(the harness's acc_norm), per_byte = divided by the answer's length; contextual, batch = "
                "calibrated. ✓: the readout the row's seeds chose on dev (its headline); the others are "
                "sensitivity, not chosen.")


def qualitative_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Method | What's modified | Trainable params | Train time | Storage per task | metric (headline)."""
    rows = headline(summary)
    return pd.DataFrame({
        "Method": point_labels(rows).values,
        "What's modified": rows["modifies"].values,
        "Trainable params": [f"{fmt_count(n)} ({fmt_fraction(f)})" if not _missing(n) else "—"
                             for n, f in zip(rows["trainable_params"], rows["trainable_fraction"], strict=True)],
        "Train time": rows["train_seconds_mean"].map(fmt_seconds).values,
        "Stored params per task": rows["stored_params"].map(fmt_count).values,
        "Storage per task": rows["checkpoint_bytes_mean"].map(fmt_bytes).values,
        value_label(rows["metric"]): [fmt_pct(m, s) for m, s in zip(rows["score_mean"], rows["score_std"],
                                                                    strict=True)],
    })


def _values_note(summary: pd.DataFrame, with_f1: bool, spread: str = CI_NOTE) -> str:
    metrics = list(dict.fromkeys(summary["metric"].dropna()))
    names = [metric_name(m) for m in metrics] + (["macro-F1"] if with_f1 else [])
    unit = "in %" if all(display_metric(m).unit == "%" for m in metrics) else "×100"
    return f"{' and '.join(names)} {unit}: {spread}."


def selection_note(summary: pd.DataFrame) -> str:
    """What every row chose on dev, and how the example sets of its seeds and of the other rows compare."""
    notes = ["Every choice a row makes is made on dev, never on the reported split: its readout (raw, length-"
             "normalised, calibrated: the one best on dev, per seed; \"Readout (on dev)\"), a search's prompt, a "
             "tuned row's trial and step (of its trials per seed, the one best on dev)."]
    if _has(summary, "dev_evaluations"):
        notes.append("Dev evals: the configurations each row scored on dev (points of its tuning space × prompts "
                     "searched or dev checks during training); readouts are chosen on dev alike for every row and "
                     "not counted.")
    if _tunes(summary):
        notes.append("Tuning time: every trial of a seed, trained and scored on dev (diverged trials too), mean "
                     "over seeds; Train time is the chosen trial's.")
    if summary["eval_objective"].any():
        notes.append("† optimised on eval (objective=eval, allowed on purpose): an optimistic bound, not a result.")
    if summary["score_partial"].fillna(False).any():
        notes.append("Some runs of a row scored examples the others did not: its interval is on the examples all "
                     "its seeds scored.")
    sizes = summary["eval_examples"].dropna().unique()
    if len(sizes) > 1:
        notes.append(f"Rows were evaluated on different numbers of examples ({', '.join(f'{n:.0f}' for n in sorted(sizes))}):"
                     " compare them in the significance table, which restricts each pair to the examples both scored.")
    return " ".join(notes)


def caption(summary: pd.DataFrame, compact: bool = False) -> str:
    """The comparison table's caption: units, spread, what the cost columns mean, where timings were taken."""
    notes = [_values_note(summary, not compact and _show_f1(summary)), selection_note(summary)]
    if not compact:
        notes.append("Costs: mean over completed runs (peak memory: maximum); sizes in binary units (1 KB = 1024 B). "
                     "Stored params / task: the tensors a task's checkpoint holds; optimiser state: AdamW's moments "
                     "at the end of training.")
        if generates(summary):
            notes.append("Gen tok/s, Gen time: generated tokens per second and seconds spent generating "
                         "(evaluation).")
        if _searches(summary):
            notes.append("Search: choosing the prompt on dev (proposing candidates, scoring each on dev): seconds, "
                         "and prompt tokens scored plus tokens generated; a searched row's scores are its chosen "
                         "prompt's on eval (each calibrated column: the prompt chosen under that calibration).")
    if _repeats(summary):
        notes.append(REPEATS_NOTE)
    if summary["peak_rss_upper_bound"].any():
        notes.append("* peak RSS could not be reset per run: an upper bound.")
    notes.append(timing_note(summary))
    return " ".join(n for n in notes if n)


def qualitative_caption(summary: pd.DataFrame) -> str:
    """The qualitative table's caption (same rows as ``headline``)."""
    return " ".join(n for n in [
        "Headline configuration per method and other config values (largest data budget, most seeds, lowest "
        "template id);",
        _values_note(summary, with_f1=False, spread=STD_NOTE), "Storage: checkpoint size per task.",
        timing_note(headline(summary)),
    ] if n)


# --- renderers --------------------------------------------------------------------------------------------

def _numeric(values) -> bool:
    """Right-align a column whose cells all look like numbers ("65.5 ± 4.8", "11.5K", "1.5 min", "—")."""
    return all(re.match(r"^[-+]?[\d.]|^—$", str(v)) for v in values)


def _align(table: pd.DataFrame) -> list[str]:
    return ["right" if i and _numeric(table[c]) else "left" for i, c in enumerate(table.columns)]


def to_markdown(table: pd.DataFrame) -> str:
    """A pipe table (``DataFrame.to_markdown``, via tabulate); cells verbatim, numbers right-aligned."""
    esc = lambda s: str(s).replace("|", r"\|")  # noqa: E731  (a "|" inside a cell would split it)
    cells = table.astype(str).apply(lambda col: col.map(esc)).rename(columns=esc)
    return cells.to_markdown(index=False, disable_numparse=True, colalign=_align(table))


_TEX = str.maketrans({"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                      "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                      "±": r"$\pm$", "×": r"$\times$", "—": "--"})


def tex_text(text: str) -> str:
    """Free text (a caption) escaped for LaTeX: Styler escapes cells and headers, not the caption."""
    return str(text).translate(_TEX)


def _tex_symbols(cell: str) -> str:
    return cell.replace("±", r"$\pm$").replace("—", "--")


def to_latex(table: pd.DataFrame, caption_text: str = "", label: str = "") -> str:
    """A booktabs table (needs ``\\usepackage{booktabs}``) from pandas' Styler, cells and headers escaped."""
    styler = (table.astype(str).style.hide(axis="index")
              .format(escape="latex", formatter=_tex_symbols)  # escaped first, then the symbols
              .format_index(escape="latex", axis=1)
              .set_table_styles([{"selector": "small", "props": ":;"}]))  # Styler's spelling of \small
    return styler.to_latex(hrules=True, environment="table", position="t", position_float="centering",
                           column_format="".join(a[0] for a in _align(table)),
                           caption=tex_text(caption_text) or None, label=label or None)


def to_html(table: pd.DataFrame, caption_text: str = "") -> str:
    """An HTML table from pandas' Styler: cells and headers escaped, text columns left-aligned (class ``l``), the
    caption below it; its id is the table's content hash, so a report is the same file for the same runs."""
    table = table.reset_index(drop=True)
    left = [a == "left" for a in _align(table)]
    classes = pd.DataFrame([["l" if x else "" for x in left]] * len(table), columns=table.columns)
    styler = (table.astype(str).style.hide(axis="index")
              .format(escape="html").format_index(escape="html", axis=1)
              .set_td_classes(classes)
              .set_table_styles([{"selector": f"th.col{i}", "props": "text-align: left;"}
                                 for i, x in enumerate(left) if x]))
    if caption_text:
        styler = styler.set_caption(html.escape(caption_text))
    uid = hashlib.sha1(f"{caption_text}\n{table.to_csv(index=False)}".encode()).hexdigest()[:10]
    return styler.to_html(table_uuid=uid, cell_ids=False)
