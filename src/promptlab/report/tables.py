"""Summary tables: numbers per (dataset, model, method, budget, ...) group, in human units, to Markdown,
LaTeX (booktabs) and HTML."""

from __future__ import annotations

import html
import math
import re

import numpy as np
import pandas as pd

from promptlab.report.records import GROUP_KEYS, latest_completed

METHOD_ORDER = ["zero_shot", "few_shot", "prompt_tuning", "full_finetune"]
METHOD_NAMES = {"zero_shot": "Zero-shot", "few_shot": "Few-shot", "prompt_tuning": "Prompt tuning",
                "full_finetune": "Full fine-tuning"}
WHAT_IS_MODIFIED = {
    "zero_shot": "nothing (manual prompt)",
    "few_shot": "nothing (k demonstrations in context)",
    "prompt_tuning": "virtual token embeddings (backbone frozen)",
    "full_finetune": "all weights",
}
STD_NOTE = ("mean ± sample standard deviation (ddof=1) over seeds; no ± with a single seed")
# Table columns that are shown only when they vary within a dataset, with their headers.
VARIANTS = {"model": "Model", "budget": "Budget", "num_demos": "Demos", "template_id": "Template"}


def method_name(method: str) -> str:
    return METHOD_NAMES.get(method, str(method).replace("_", " ").capitalize())


def _method_rank(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per group (``GROUP_KEYS``) with raw numbers: seeds and non-completed runs counted, accuracy
    and macro-F1 in % (mean and ddof=1 std over seeds), costs averaged over completed runs (peak memory: max)."""
    done = latest_completed(df)
    rows = []
    for key, runs in df.groupby(GROUP_KEYS, dropna=False, sort=False):
        ok = done[same_group(done, runs.iloc[0])]
        acc, f1 = ok["accuracy"] * 100, ok["macro_f1"] * 100
        status = runs["status"].value_counts()
        rows.append({
            **dict(zip(GROUP_KEYS, key, strict=True)),
            "budget_kind": runs["budget_kind"].iloc[0], "budget_value": runs["budget_value"].iloc[0],
            "n_seeds": len(ok), "seeds": " ".join(str(s) for s in sorted(ok["seed"].dropna())),
            "n_runs": len(runs), "n_failed": int(status.get("failed", 0)),
            "n_running": int(status.get("running", 0)),
            "n_other": int(len(runs) - status.get("completed", 0) - status.get("failed", 0)
                           - status.get("running", 0)),
            "accuracy_pct_mean": acc.mean(), "accuracy_pct_std": acc.std(ddof=1),
            "macro_f1_pct_mean": f1.mean(), "macro_f1_pct_std": f1.std(ddof=1),
            "trainable_params": ok["trainable_params"].median(), "total_params": ok["total_params"].median(),
            "trainable_fraction": ok["trainable_fraction"].median(),
            "train_seconds_mean": ok["train_seconds"].mean(),
            "train_examples_per_second_mean": ok["train_examples_per_second"].mean(),
            "peak_rss_mb_max": ok["peak_rss_mb"].max(), "peak_gpu_mb_max": ok["peak_gpu_mb"].max(),
            "checkpoint_bytes_mean": ok["checkpoint_bytes"].mean(),
            "eval_examples": ok["eval_examples"].median(),
            "peak_rss_upper_bound": bool((ok["peak_rss_reset_per_run"] == False).any()),  # noqa: E712
        })
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    order = out.apply(lambda r: (r["dataset"], str(r["model"]), _method_rank(r["method"]),
                                 _num(r["budget_value"], -1.0), _num(r["num_demos"], -1), _num(r["template_id"], -1)),
                      axis=1)
    return out.loc[order.sort_values().index].reset_index(drop=True)


def same_group(done: pd.DataFrame, ref: pd.Series) -> pd.Series:
    """Row mask of ``done`` equal to ``ref`` on GROUP_KEYS, treating missing == missing."""
    mask = pd.Series(True, index=done.index)
    for k in GROUP_KEYS:
        col = done[k]
        mask &= col.isna() if pd.isna(ref[k]) else (col == ref[k]).fillna(False)
    return mask


def _num(value, default):
    return default if value is None or pd.isna(value) else value


def headline(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, model, method): the largest budget, then most seeds, lowest template id."""
    if summary.empty:
        return summary
    s = summary.assign(_b=summary["budget_value"].fillna(-1), _t=summary["template_id"].astype(float).fillna(-1))
    s = s.sort_values(["_b", "n_seeds", "_t", "num_demos"], ascending=[False, False, True, False], kind="stable")
    s = s.drop_duplicates(["dataset", "model", "method"]).drop(columns=["_b", "_t"])
    return s.loc[sorted(s.index)]


def point_labels(summary: pd.DataFrame) -> pd.Series:
    """A label per row: the method name plus whatever varies within its dataset (model, budget, ...)."""
    labels = summary["method"].map(method_name)
    for _, rows in summary.groupby("dataset", sort=False):
        for col in _varying(rows):
            fmt = {"num_demos": "{} demos", "template_id": "t{}"}.get(col, "{}")
            labels.loc[rows.index] += ", " + rows[col].map(lambda v, f=fmt: f.format("—" if pd.isna(v) else v))
    return labels


def _varying(rows: pd.DataFrame) -> list[str]:
    """The variant columns needed to tell a method's rows apart (e.g. budget, when a method ran several)."""
    by_method = rows.astype({c: str for c in VARIANTS}).groupby("method")
    return [c for c in VARIANTS if (by_method[c].nunique() > 1).any()]


# --- human units ------------------------------------------------------------------------------------------

def _missing(x) -> bool:
    return x is None or (isinstance(x, float | np.floating) and math.isnan(x))


def fmt_count(n) -> str:
    if _missing(n):
        return "—"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}" if n / div < 100 else f"{n / div:.0f}{unit}"
    return f"{n:.0f}"


def fmt_bytes(b) -> str:
    if _missing(b):
        return "—"
    for div, unit in ((2**30, "GB"), (2**20, "MB"), (2**10, "KB")):
        if b >= div:
            return f"{b / div:.3g} {unit}" if b / div < 100 else f"{b / div:.0f} {unit}"
    return f"{b:.0f} B"


def fmt_seconds(s) -> str:
    if _missing(s):
        return "—"
    if s < 60:
        return f"{s:.2g} s" if s < 10 else f"{s:.0f} s"
    return f"{s / 60:.1f} min" if s < 3600 else f"{s / 3600:.1f} h"


def fmt_pct(mean, std) -> str:
    if _missing(mean):
        return "—"
    return f"{mean:.1f}" if _missing(std) else f"{mean:.1f} ± {std:.1f}"


def fmt_fraction(f) -> str:
    return "—" if _missing(f) else f"{100 * f:.3g}%"


def _not_completed(r) -> str:
    parts = [(r["n_failed"], "failed"), (r["n_running"], "running/crashed"), (r["n_other"], "other")]
    return ", ".join(f"{n} {what}" for n, what in parts if n) or "—"


def display_table(summary: pd.DataFrame, compact: bool = False) -> pd.DataFrame:
    """Summary rows of one dataset as strings with readable headers (compact: the stdout/README columns)."""
    cols: dict[str, pd.Series] = {"Method": summary["method"].map(method_name)}
    for col in _varying(summary):
        cols[VARIANTS[col]] = summary[col].map(lambda v: "—" if pd.isna(v) else str(v))
    rows = summary.to_dict("records")
    cols["Seeds"] = summary["n_seeds"].astype(str)
    cols["Accuracy (%)"] = [fmt_pct(r["accuracy_pct_mean"], r["accuracy_pct_std"]) for r in rows]
    if not compact:
        cols["Macro-F1 (%)"] = [fmt_pct(r["macro_f1_pct_mean"], r["macro_f1_pct_std"]) for r in rows]
    cols["Trainable params"] = summary["trainable_params"].map(fmt_count)
    if not compact:
        cols["Trainable share"] = summary["trainable_fraction"].map(fmt_fraction)
    cols["Train time"] = summary["train_seconds_mean"].map(fmt_seconds)
    if not compact:
        cols["Train ex/s"] = summary["train_examples_per_second_mean"].map(
            lambda v: "—" if _missing(v) else f"{v:.3g}")
    mark = summary["peak_rss_upper_bound"].map(lambda b: "*" if b else "")
    cols["Peak memory" if compact else "Peak RAM"] = summary["peak_rss_mb_max"].map(lambda m: fmt_bytes(m * 2**20)) + mark
    if summary["peak_gpu_mb_max"].notna().any():
        cols["Peak GPU"] = summary["peak_gpu_mb_max"].map(lambda m: fmt_bytes(m * 2**20))
    cols["Checkpoint" if compact else "Checkpoint / task"] = summary["checkpoint_bytes_mean"].map(fmt_bytes)
    not_done = [_not_completed(r) for r in rows]
    if not compact or any(x != "—" for x in not_done):
        cols["Not completed"] = not_done
    return pd.DataFrame(cols).reset_index(drop=True)


def qualitative_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Method | What's modified | Trainable params | Train time | Storage per task | Accuracy (headline rows)."""
    rows = headline(summary)
    labels = point_labels(rows)
    return pd.DataFrame({
        "Method": labels.values,
        "What's modified": rows["method"].map(lambda m: WHAT_IS_MODIFIED.get(m, "see method config")).values,
        "Trainable params": [f"{fmt_count(n)} ({fmt_fraction(f)})" if not _missing(n) else "—"
                             for n, f in zip(rows["trainable_params"], rows["trainable_fraction"], strict=True)],
        "Train time": rows["train_seconds_mean"].map(fmt_seconds).values,
        "Storage per task": rows["checkpoint_bytes_mean"].map(fmt_bytes).values,
        "Accuracy (%)": [fmt_pct(m, s) for m, s in zip(rows["accuracy_pct_mean"], rows["accuracy_pct_std"],
                                                       strict=True)],
    })


def caption(summary: pd.DataFrame, compact: bool = False) -> str:
    notes = [f"Accuracy{'' if compact else ' and macro-F1'} in %: {STD_NOTE}."]
    if not compact:
        notes.append("Costs: mean over completed runs (peak memory: maximum); sizes in binary units (1 KB = 1024 B).")
    if summary["peak_rss_upper_bound"].any():
        notes.append("* peak RSS could not be reset per run: an upper bound.")
    return " ".join(notes)


# --- renderers --------------------------------------------------------------------------------------------

def to_markdown(table: pd.DataFrame) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    widths = [max(len(esc(c)), *(len(esc(v)) for v in table[c])) for c in table.columns]
    line = lambda cells: "| " + " | ".join(esc(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    out = [line(table.columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join(out + [line(row) for row in table.itertuples(index=False)])


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "—": "--"}


def tex_escape(text) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def _numeric(values) -> bool:
    """Right-align a column whose cells all look like numbers ("65.5 ± 4.8", "11.5K", "1.5 min", "—")."""
    return all(re.match(r"^[-+]?[\d.]|^—$", str(v)) for v in values)


def to_latex(table: pd.DataFrame, caption_text: str = "", label: str = "") -> str:
    """A booktabs table (needs ``\\usepackage{booktabs}``)."""
    align = "".join("r" if i and _numeric(table[c]) else "l" for i, c in enumerate(table.columns))
    body = [" & ".join(tex_escape(v) for v in row) + r" \\" for row in table.itertuples(index=False)]
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(tex_escape(c) for c in table.columns) + r" \\", r"\midrule", *body, r"\bottomrule",
             r"\end{tabular}"]
    if caption_text:
        lines.append(rf"\caption{{{tex_escape(caption_text)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    return "\n".join(lines + [r"\end{table}"]) + "\n"


def to_html(table: pd.DataFrame, caption_text: str = "") -> str:
    cap = f"<caption>{html.escape(caption_text)}</caption>" if caption_text else ""
    left = [not i or not _numeric(table[c]) for i, c in enumerate(table.columns)]
    cls = lambda i: ' class="l"' if left[i] else ""  # noqa: E731
    head = "".join(f"<th{cls(i)}>{html.escape(str(c))}</th>" for i, c in enumerate(table.columns))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{html.escape(str(v))}</td>" for i, v in enumerate(row)) + "</tr>"
                   for row in table.itertuples(index=False))
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
