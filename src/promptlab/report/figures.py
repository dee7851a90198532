"""Paper-style figures (matplotlib, object API: no pyplot state, any backend): the primary metric vs cost
with the Pareto front, the data-budget curve and prompt sensitivity. Each takes the runs frame from
``load_runs``; values are x100, the y axis names the metric, choice tasks get a chance line."""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

from promptlab.report.columns import fmt_count, fmt_seconds
from promptlab.report.configs import natural_key
from promptlab.report.records import latest_completed
from promptlab.report.tables import (
    headline,
    machine_note,
    method_labels,
    metric_name,
    point_labels,
    summarize,
    value_label,
)

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]
MARKERS = ["o", "s", "^", "D", "v", "P"]
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
         "ytick.labelsize": 8, "legend.frameon": False, "svg.fonttype": "none"}


def method_colors(methods: Iterable[str]) -> dict[str, str]:
    """A palette colour per method name: the slot its name hashes to (CRC32), or the next free one on a clash
    (names taken in sorted order), so a method keeps its colour across figures and reports."""
    colors: dict[str, str] = {}
    for name in sorted(set(methods)):
        start = zlib.crc32(name.encode()) % len(PALETTE)
        ring = PALETTE[start:] + PALETTE[:start]
        colors[name] = next((c for c in ring if c not in colors.values()), ring[0])
    return colors


def _axes(ax, size):
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def _style(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.set_axisbelow(True)


def _dataset(summary: pd.DataFrame, dataset: str | None) -> str:
    names = list(dict.fromkeys(summary["dataset"])) if not summary.empty else []
    if dataset is None and len(names) == 1:
        return names[0]
    if dataset not in names:
        raise ValueError(f"runs cover datasets {names}: pass dataset= one of them")
    return dataset


def _title(dataset: str, rows: pd.DataFrame, what: str) -> str:
    models = rows["model"].dropna().unique()
    return f"{dataset}{f' · {models[0]}' if len(models) == 1 else ''}: {what}"


def _legend(ax) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, handlelength=1.6)


def pareto_front(x, y, higher_is_better: bool = True) -> np.ndarray:
    """Mask of the points no other point beats on both cost (lower ``x``) and score (``y``, its direction)."""
    x, y = np.asarray(x, float), np.asarray(y, float) * (1 if higher_is_better else -1)
    mask, best = np.zeros(len(x), bool), -np.inf
    for i in np.lexsort((-y, x)):
        if y[i] > best:
            mask[i], best = True, y[i]
    return mask


def _dodge(x: np.ndarray, step: float = 0.12) -> np.ndarray:
    """Spread points sharing an x position sideways (in log space) so their error bars stay visible."""
    out = x.astype(float).copy()
    for value in np.unique(x):
        same = np.flatnonzero(x == value)
        out[same] = value * 10 ** (step * (np.arange(len(same)) - (len(same) - 1) / 2))
    return out


def comparable(rows: pd.DataFrame) -> pd.DataFrame:
    """Training records only, when there are any: an eval record (a run re-scored on another split) is
    listed in the tables but would put points from another split on the same axes."""
    train = rows[rows["kind"] == "train"]
    return train if not train.empty else rows


def _score_axis(ax, rows: pd.DataFrame) -> None:
    """The y label names the metric; a dotted line marks chance (choice tasks: uniform guessing)."""
    ax.set_ylabel(value_label(rows["metric"]))
    chance = rows["chance"].dropna().unique()
    if len(chance) == 1:
        ax.axhline(100 * chance[0], color="0.45", ls=":", lw=1.2, zorder=1, label="chance")


def _value_labels(ax, x, y, log_x: bool = True) -> None:
    """Each point's mean next to it, to one decimal; a point close to one already labelled (within a quarter
    decade, or unit, of x and 2 points of y) is labelled once if it says the same, else below the other."""
    placed: list[tuple[float, float, str, int]] = []
    for xi, yi in zip(x, y, strict=True):
        if not (np.isfinite(xi) and np.isfinite(yi)):
            continue
        pos, text = (math.log10(xi) if log_x and xi > 0 else xi), f"{yi:.1f}"
        near = [p for p in placed if abs(p[0] - pos) < 0.25 and abs(p[1] - yi) < 2.0]
        if any(p[2] == text for p in near):
            continue
        slot = len(near)
        placed.append((pos, yi, text, slot))
        ax.annotate(text, (xi, yi), xytext=(5, 4 - 10 * slot), textcoords="offset points", fontsize=7,
                    color="0.25")


FOOTNOTE_AT = 30  # a legend label longer than this moves its config part to a footnote under the figure


def short_labels(labels: pd.Series) -> tuple[pd.Series, list[str]]:
    """Legend labels kept short: "Prompt tuning (num_virtual_tokens=20, lr=0.3)" becomes "Prompt tuning [a]"
    with the footnote "[a] num_virtual_tokens=20, lr=0.3"; short labels stay as they are."""
    short, notes, keys = labels.copy(), [], {}
    for i, label in labels.items():
        head, sep, config = str(label).partition(" (")
        if sep and len(str(label)) > FOOTNOTE_AT:
            config = config.removesuffix(")")
            key = keys.setdefault(config, "abcdefghijklmnopqrstuvwxyz"[len(keys) % 26])
            if len(keys) > len(notes):
                notes.append(f"[{key}] {config}")
            short.loc[i] = f"{head} [{key}]"
    return short, notes


def footnote(fig: Figure, notes: list[str]) -> None:
    """The label footnotes under the figure (``save_figure`` keeps them: bbox_inches="tight")."""
    if notes:
        fig.text(0.01, -0.02, "\n".join(notes), ha="left", va="top", fontsize=7, color="0.3")


def _cost_plot(df, dataset, ax, xcol, xlabel, tick_label, what):
    summary = summarize(df)
    dataset = _dataset(summary, dataset)
    rows = headline(comparable(summary[summary["dataset"] == dataset]))
    rows = rows[(rows["n_seeds"] > 0) & rows[xcol].notna()]
    if rows.empty:  # e.g. only eval records of a task nothing trained on: they have no cost to plot against
        return None
    labels, notes = short_labels(point_labels(rows))
    labels = labels + rows["n_seeds"].map(lambda n: f" (n={n})")
    colors = method_colors(df["method"].dropna())
    x = rows[xcol].to_numpy(float)
    y = rows["score_mean"].to_numpy(float)
    # bars: the 95% interval over seeds and examples (report.intervals), none where it is unknown
    err = np.nan_to_num(np.vstack([y - rows["score_low"].to_numpy(float),
                                   rows["score_high"].to_numpy(float) - y]))
    pos = x[x > 0]
    lo = math.floor(math.log10(pos.min())) if pos.size else 0
    hi = math.floor(math.log10(pos.max())) if pos.size else 0
    x0 = 10.0 ** (lo - 1)  # where zero-cost methods sit, one decade left of the cheapest trained one
    xp = np.where(x > 0, x, x0)
    xd = _dodge(xp)
    with mpl.rc_context(STYLE):
        fig, ax = _axes(ax, (6.4, 3.9))
        models = list(dict.fromkeys(rows["model"]))
        variant = rows.groupby(["model", "method"], sort=False).cumcount().to_numpy()  # other config values
        for i, (_, r) in enumerate(rows.iterrows()):
            marker = MARKERS[(models.index(r["model"]) + variant[i]) % len(MARKERS)]
            ax.errorbar(xd[i], y[i], yerr=err[:, i:i + 1], fmt=marker,
                        color=colors[r["method"]], ms=7, mec="white", mew=0.8, capsize=3, elinewidth=1.2,
                        label=labels.iloc[i], zorder=3)
        _value_labels(ax, xd, y)
        front = pareto_front(xp, y, bool(rows["higher_is_better"].all()))
        order = np.argsort(xd[front])
        ax.step(xd[front][order], y[front][order], where="post", ls="--", lw=1, color="0.3", zorder=2,
                label="Pareto front")
        ax.scatter(xd[front], y[front], s=170, facecolors="none", edgecolors="0.2", linewidths=0.9, zorder=2)
        ax.set_xscale("log")
        steps = (1, 2, 5) if hi - lo < 2 else (1,)  # a short axis gets 1-2-5 ticks, a long one decades
        right = 2.5 * (pos.max() if pos.size else x0)
        ticks = [x0] + [m * 10.0**d for d in range(lo, hi + 1) for m in steps if pos.size and m * 10.0**d <= right]
        ax.set_xticks(ticks, ["0"] + [tick_label(t) for t in ticks[1:]])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(x0 / 2.5, right)
        if pos.size and (x == 0).any():  # the gap between "0" and the log axis proper
            ax.axvline(x0 * 10**0.5, color="0.6", lw=0.8, ls=":", zorder=1)
        ax.set_xlabel(xlabel(rows))
        _score_axis(ax, rows)
        ax.set_title(_title(dataset, rows, f"{metric_name(rows['metric'].iloc[0])} vs {what}"))
        _style(ax)
        _legend(ax)
        footnote(fig, notes)
    return fig


def plot_score_vs_params(df: pd.DataFrame, dataset: str | None = None, ax=None) -> Figure | None:
    """The headline metric (mean over seeds, 95% interval) vs trainable parameters (log x; frozen methods at "0")."""
    return _cost_plot(df, dataset, ax, "trainable_params", lambda rows: "Trainable parameters (log scale)",
                      fmt_count, "trainable parameters")


def _time_label(rows: pd.DataFrame) -> str:
    note = machine_note(rows)
    return "Training time (log scale)" + (f"\n{note}" if note else "")


def plot_score_vs_time(df: pd.DataFrame, dataset: str | None = None, ax=None) -> Figure | None:
    """The headline metric (mean over seeds, 95% interval) vs training time (log x; untrained methods at "0");
    the x label names the machine and its load range."""
    return _cost_plot(df, dataset, ax, "train_seconds_mean", _time_label, lambda t: f"{t:g} s",
                      "training time")


# One line (budget curve) or box (prompt sensitivity) per these keys, and template or budget.
CURVE_KEYS = ["model", "method", "num_demos", "config_label"]


def _one_template(rows: pd.DataFrame, spread: str) -> pd.DataFrame:
    """Per ``CURVE_KEYS``: only the prompt template with the most distinct ``spread`` values (budgets, or
    seeds), the lowest id on ties. Template spread is the prompt-sensitivity figure's job."""
    if rows.empty:
        return rows
    keys = [*CURVE_KEYS, "template_id"]
    n = rows.groupby(keys, dropna=False)[spread].transform("nunique")
    ranked = rows.assign(_n=-n, _t=rows["template_id"].astype(float)).sort_values(["_n", "_t"])
    best = ranked.drop_duplicates(keys[:-1])[keys]
    as_tuples = lambda f: f[keys].astype(str).apply(tuple, axis=1)  # noqa: E731  (NA-safe matching)
    return rows[as_tuples(rows).isin(set(as_tuples(best)))]


def plot_budget_curve(df: pd.DataFrame, dataset: str | None = None, ax=None) -> Figure | None:
    """The primary metric vs training examples (per class; mean ± std band); None unless ≥2 budgets ran."""
    summary = summarize(df)
    dataset = _dataset(summary, dataset)
    s = comparable(summary[(summary["dataset"] == dataset) & (summary["n_seeds"] > 0)])
    kind = next((k for k in ("k_shot", "train_size")
                 if s.loc[s["budget_kind"] == k, "budget_value"].nunique() >= 2), None)
    if kind is None:
        return None
    curves = _one_template(s[s["budget_kind"] == kind], "budget_value")
    flat = _one_template(s[s["budget_kind"].isna()], "n_seeds")
    colors = method_colors(df["method"].dropna())
    with mpl.rc_context(STYLE):
        fig, ax = _axes(ax, (6.4, 3.9))
        labels, notes = short_labels(point_labels(curves.assign(budget="", template_id=0)))
        lines: dict[str, int] = {}  # per method: a marker per line (model, config values)
        for _, rows in curves.groupby([*CURVE_KEYS, "template_id"], dropna=False, sort=False):
            rows = rows.sort_values("budget_value")
            x, m = rows["budget_value"].to_numpy(float), rows["score_mean"].to_numpy(float)
            sd = np.nan_to_num(rows["score_std"].to_numpy(float))
            method = rows["method"].iloc[0]
            lines[method] = lines.get(method, -1) + 1
            color, marker = colors[method], MARKERS[lines[method] % len(MARKERS)]
            ax.plot(x, m, marker=marker, ms=5, lw=1.6, color=color, label=labels[rows.index[0]])
            ax.fill_between(x, m - sd, m + sd, color=color, alpha=0.18, lw=0)
            _value_labels(ax, x, m)
        for i, r in flat.iterrows():
            color, sd = colors[r["method"]], np.nan_to_num(r["score_std"])
            ax.axhline(r["score_mean"], color=color, ls="--", lw=1.2,
                       label=f"{point_labels(flat.assign(template_id=0)).loc[i]} (no training data)")
            ax.axhspan(r["score_mean"] - sd, r["score_mean"] + sd, color=color, alpha=0.1, lw=0)
        budgets = sorted(curves["budget_value"].unique())
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [f"{b:g}" for b in budgets])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("Training examples per class" if kind == "k_shot" else "Training examples")
        _score_axis(ax, s)
        ax.set_title(_title(dataset, s, "data budget (mean ± std)"))
        _style(ax)
        _legend(ax)
        footnote(fig, notes)
    return fig


def _prompting_groups(done: pd.DataFrame) -> list[pd.DataFrame]:
    """Runs of methods that train nothing, per ``CURVE_KEYS`` at the data budget run with the most templates
    (then the largest one); only groups of ≥2 runs."""
    keys = [*CURVE_KEYS, "budget"]
    n_templates = done.groupby(keys, dropna=False)["template_id"].transform("nunique")
    ranked = done.assign(_t=-n_templates, _b=-done["budget_value"].fillna(0)).sort_values(["_t", "_b"])
    best = ranked.drop_duplicates(keys[:-1])
    groups = [g for _, g in done.groupby(keys, dropna=False, sort=False)
              if len(g) >= 2 and g.index.isin(best.index).any()]
    return sorted(groups, key=lambda g: (str(g["model"].iloc[0]), int(g["num_demos"].fillna(0).iloc[0]),
                                         g["method"].iloc[0], natural_key(str(g["config_label"].iloc[0]))))


def plot_prompt_sensitivity(df: pd.DataFrame, dataset: str | None = None, ax=None) -> Figure | None:
    """Spread of the primary metric of methods that train nothing (zero-/few-shot prompting) over prompt
    templates and seeds; None without ≥2 such runs."""
    summary = summarize(df)
    dataset = _dataset(summary, dataset)
    done = latest_completed(df)
    done = comparable(done[(done["dataset"] == dataset) & (done["trains"] == False)])  # noqa: E712
    groups = _prompting_groups(done)
    if not groups:
        return None
    firsts = pd.DataFrame([g.iloc[0] for g in groups]).assign(template_id=0, dataset=dataset)
    labels = [lab if b == "—" else f"{lab}, {b}" for lab, b in zip(point_labels(firsts), firsts["budget"],
                                                                     strict=True)]
    templates = sorted(done["template_id"].dropna().unique())
    if len(templates) < 2:  # one template: no prompt sensitivity to show (the seeds' spread is in the tables)
        return None
    rng = np.random.default_rng(0)
    with mpl.rc_context(STYLE):
        fig, ax = _axes(ax, (2.2 + 1.5 * len(groups), 3.9))
        data = [g["score"].to_numpy(float) * 100 for g in groups]
        ax.boxplot(data, positions=range(len(groups)), widths=0.5, showfliers=False,
                   medianprops={"color": "black"}, boxprops={"color": "0.4"}, whiskerprops={"color": "0.4"},
                   capprops={"color": "0.4"})
        cmap = mpl.colormaps["tab10"]
        for pos, g in enumerate(groups):
            for t in templates:
                score = g.loc[g["template_id"] == t, "score"].to_numpy(float) * 100
                ax.scatter(pos + rng.uniform(-0.16, 0.16, len(score)), score, s=22, color=cmap(int(t) % 10),
                           edgecolors="white", linewidths=0.5, zorder=3,
                           label=f"template {t}" if len(score) else None)
            values = data[pos]
            ax.annotate(f"range {values.max() - values.min():.1f}", (pos, values.max()), xytext=(0, 6),
                        textcoords="offset points", ha="center", fontsize=7, color="0.3")
        ax.set_xticks(range(len(groups)), [f"{lab}\n(n={len(g)})" for lab, g in zip(labels, groups, strict=True)])
        _score_axis(ax, done)
        ax.set_title(_title(dataset, done, "prompt sensitivity"))
        ax.margins(y=0.12)
        _style(ax)
        handles, names = ax.get_legend_handles_labels()
        unique = dict(zip(names, handles, strict=True))
        ax.legend(unique.values(), unique.keys(), loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return fig


def save_figure(fig: Figure, stem: str | Path, dpi: int = 200) -> list[Path]:
    """``stem.png`` and ``stem.svg``."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
    return paths


def plot_break_even(v: dict, labels: pd.Series, dataset: str) -> Figure | None:
    """The verdict's rows: the score (95% interval, n seeds) against total cost (one-off + per-query cost x N,
    log x) in one panel per N of ``verdict.QUERIES``; the cheapest row tied with the best ringed."""
    from promptlab.report.verdict import QUERIES

    rows = v.get("rows")
    if rows is None or rows["query_seconds"].notna().sum() < 2:
        return None
    rows = rows[rows["query_seconds"].notna()]
    colors = method_colors(rows["method"].dropna())
    labels, notes = short_labels(labels.loc[rows.index])
    y = rows["score_mean"].to_numpy(float)
    err = np.nan_to_num(np.vstack([y - rows["score_low"].to_numpy(float), rows["score_high"].to_numpy(float) - y]))
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(9.6, 3.4), layout="constrained")
        axes = fig.subplots(1, len(QUERIES), sharey=True)
        for ax, n in zip(axes, QUERIES, strict=True):
            x = rows[f"total_{n}"].to_numpy(float)
            for i, (idx, r) in enumerate(rows.iterrows()):
                ax.errorbar(x[i], y[i], yerr=err[:, i:i + 1], fmt=MARKERS[i % len(MARKERS)], color=colors[r["method"]],
                            ms=6, mec="white", mew=0.8, capsize=3, elinewidth=1.1, zorder=3,
                            label=f"{labels.loc[idx]} (n={int(r['n_seeds'])})")
            pick = v["cheapest"].get(n)
            if pick is not None:
                ax.scatter([rows.at[pick, f"total_{n}"]], [rows.at[pick, "score_mean"]], s=190, facecolors="none",
                           edgecolors="0.15", linewidths=1.0, zorder=2, label="cheapest tied with best")
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda s, _: fmt_seconds(s)))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.margins(x=0.15)
            ax.set_xlabel(f"Total compute time, {fmt_count(n)} queries")
            ax.set_title(f"N = {fmt_count(n)}")
            _style(ax)
        _score_axis(axes[0], rows)
        handles, names = axes[0].get_legend_handles_labels()
        unique = dict(zip(names, handles, strict=True))
        axes[-1].legend(unique.values(), unique.keys(), loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
        fig.suptitle(_title(dataset, rows, "score vs total cost (one-off + per query x N)"), fontsize=10)
        footnote(fig, notes)
    return fig


def _loss_log(run_dir: str) -> pd.DataFrame | None:
    """``step`` and ``train/loss`` from a run's CSV log (Lightning's CSVLogger: ``csv/metrics.csv``)."""
    for path in sorted(Path(run_dir).glob("csv/**/metrics.csv")):
        try:
            log = pd.read_csv(path)
        except (OSError, ValueError):
            return None
        if {"step", "train/loss"} <= set(log.columns):
            return log[["step", "train/loss"]].dropna()
    return None


def plot_loss_curves(df: pd.DataFrame, dataset: str | None = None, ax=None) -> Figure | None:
    """Training loss vs step of every trained row's chosen run (one line per seed), from the runs' CSV logs;
    None when no run of the dataset logged a loss."""
    summary = summarize(df)
    dataset = _dataset(summary, dataset)
    done = latest_completed(df)
    done = comparable(done[(done["dataset"] == dataset) & (done["trains"] == True)])  # noqa: E712
    curves = [(r, log) for _, r in done.iterrows() if (log := _loss_log(r["run_dir"])) is not None and len(log)]
    if not curves:
        return None
    labels, notes = short_labels(method_labels(pd.DataFrame([r for r, _ in curves])).reset_index(drop=True))
    colors, seen = method_colors(df["method"].dropna()), set()
    with mpl.rc_context(STYLE):
        fig, ax = _axes(ax, (6.4, 3.6))
        for i, (r, log) in enumerate(curves):
            label = labels.iloc[i]
            ax.plot(log["step"], log["train/loss"], color=colors[r["method"]], lw=1.2, alpha=0.85,
                    label=None if label in seen else label)
            seen.add(label)
        ax.set_xlabel("Training step")
        ax.set_ylabel("Training loss")
        ax.set_title(_title(dataset, done, "training loss (chosen trial, one line per seed)"))
        _style(ax)
        _legend(ax)
        footnote(fig, notes)
    return fig
