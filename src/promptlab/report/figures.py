"""Paper-style figures (matplotlib, object API: no pyplot state, any backend): accuracy vs cost with the
Pareto front, the data-budget curve and prompt sensitivity. Each takes the runs frame from ``load_runs``."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from promptlab.report.records import latest_completed
from promptlab.report.tables import METHOD_ORDER, fmt_count, headline, point_labels, summarize

COLORS = dict(zip(METHOD_ORDER, ["#7f7f7f", "#ff7f0e", "#1f77b4", "#d62728"], strict=True))
EXTRA_COLORS = ["#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]
MARKERS = ["o", "s", "^", "D", "v", "P"]
PROMPT_METHODS = {"zero_shot", "few_shot"}
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
         "ytick.labelsize": 8, "legend.frameon": False, "svg.fonttype": "none"}


def method_color(method: str) -> str:
    if method in COLORS:
        return COLORS[method]
    return EXTRA_COLORS[sum(map(ord, method)) % len(EXTRA_COLORS)]


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


def pareto_front(x, y) -> np.ndarray:
    """Mask of the points no other point beats on both cost (lower ``x``) and accuracy (higher ``y``)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
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


def _cost_plot(df, dataset, ax, xcol, xlabel, zero_label, tick_label, what):
    summary = summarize(df)
    dataset = _dataset(summary, dataset)
    rows = headline(summary[summary["dataset"] == dataset])
    rows = rows[(rows["n_seeds"] > 0) & rows[xcol].notna()]
    if rows.empty:
        raise ValueError(f"no completed run on {dataset} to plot")
    labels = point_labels(rows)
    x = rows[xcol].to_numpy(float)
    y = rows["accuracy_pct_mean"].to_numpy(float)
    err = np.nan_to_num(rows["accuracy_pct_std"].to_numpy(float))
    pos = x[x > 0]
    lo = math.floor(math.log10(pos.min())) if pos.size else 0
    hi = math.floor(math.log10(pos.max())) if pos.size else 0
    x0 = 10.0 ** (lo - 1)  # where zero-cost methods sit, one decade left of the cheapest trained one
    xp = np.where(x > 0, x, x0)
    xd = _dodge(xp)
    with mpl.rc_context(STYLE):
        fig, ax = _axes(ax, (5.6, 3.4))
        models = list(dict.fromkeys(rows["model"]))
        for i, (_, r) in enumerate(rows.iterrows()):
            ax.errorbar(xd[i], y[i], yerr=err[i], fmt=MARKERS[models.index(r["model"]) % len(MARKERS)],
                        color=method_color(r["method"]), ms=7, mec="white", mew=0.8, capsize=3, elinewidth=1.2,
                        label=labels.iloc[i], zorder=3)
        front = pareto_front(xp, y)
        order = np.argsort(xd[front])
        ax.step(xd[front][order], y[front][order], where="post", ls="--", lw=1, color="0.3", zorder=2,
                label="Pareto front")
        ax.scatter(xd[front], y[front], s=170, facecolors="none", edgecolors="0.2", linewidths=0.9, zorder=2)
        ax.set_xscale("log")
        steps = (1, 2, 5) if hi - lo < 2 else (1,)  # a short axis gets 1-2-5 ticks, a long one decades
        right = 2.5 * (pos.max() if pos.size else x0)
        ticks = [x0] + [m * 10.0**d for d in range(lo, hi + 1) for m in steps if pos.size and m * 10.0**d <= right]
        ax.set_xticks(ticks, [zero_label] + [tick_label(t) for t in ticks[1:]])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(x0 / 2.5, right)
        if pos.size and (x == 0).any():  # the gap between "0" and the log axis proper
            ax.axvline(x0 * 10**0.5, color="0.6", lw=0.8, ls=":", zorder=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("Accuracy (%)")
        ax.set_title(_title(dataset, rows, what))
        _style(ax)
        _legend(ax)
    return fig


def plot_accuracy_vs_params(df: pd.DataFrame, dataset: str | None = None, ax=None) -> Figure:
    """Accuracy (mean ± std over seeds) vs trainable parameters (log x; frozen methods at "0")."""
    return _cost_plot(df, dataset, ax, "trainable_params", "Trainable parameters (log scale)", "0",
                      fmt_count, "accuracy vs trainable parameters")


def plot_accuracy_vs_time(df: pd.DataFrame, dataset: str | None = None, ax=None) -> Figure:
    """Accuracy (mean ± std over seeds) vs training time (log x; untrained methods at "0")."""
    return _cost_plot(df, dataset, ax, "train_seconds_mean", "Training time (log scale)", "0",
                      lambda t: f"{t:g} s", "accuracy vs training time")


def _one_template(rows: pd.DataFrame, spread: str) -> pd.DataFrame:
    """Per (model, method, demos): only the prompt template with the most distinct ``spread`` values
    (budgets, or seeds), the lowest id on ties. Template spread is the prompt-sensitivity figure's job."""
    if rows.empty:
        return rows
    keys = ["model", "method", "num_demos", "template_id"]
    n = rows.groupby(keys, dropna=False)[spread].transform("nunique")
    ranked = rows.assign(_n=-n, _t=rows["template_id"].astype(float)).sort_values(["_n", "_t"])
    best = ranked.drop_duplicates(keys[:-1])[keys]
    as_tuples = lambda f: f[keys].astype(str).apply(tuple, axis=1)  # noqa: E731  (NA-safe matching)
    return rows[as_tuples(rows).isin(set(as_tuples(best)))]


def plot_budget_curve(df: pd.DataFrame, dataset: str | None = None, ax=None) -> Figure | None:
    """Accuracy vs training examples per class (mean ± std band); None unless ≥2 budgets were run."""
    summary = summarize(df)
    dataset = _dataset(summary, dataset)
    s = summary[(summary["dataset"] == dataset) & (summary["n_seeds"] > 0)]
    kind = next((k for k in ("k_shot", "train_size")
                 if s.loc[s["budget_kind"] == k, "budget_value"].nunique() >= 2), None)
    if kind is None:
        return None
    curves = _one_template(s[s["budget_kind"] == kind], "budget_value")
    flat = _one_template(s[s["budget_kind"].isna()], "n_seeds")
    with mpl.rc_context(STYLE):
        fig, ax = _axes(ax, (5.6, 3.4))
        labels = point_labels(curves.assign(budget="", template_id=0))
        for _, rows in curves.groupby(["model", "method", "num_demos", "template_id"], dropna=False, sort=False):
            rows = rows.sort_values("budget_value")
            x, m = rows["budget_value"].to_numpy(float), rows["accuracy_pct_mean"].to_numpy(float)
            sd = np.nan_to_num(rows["accuracy_pct_std"].to_numpy(float))
            color = method_color(rows["method"].iloc[0])
            ax.plot(x, m, marker="o", ms=5, lw=1.6, color=color, label=labels[rows.index[0]])
            ax.fill_between(x, m - sd, m + sd, color=color, alpha=0.18, lw=0)
        for i, r in flat.iterrows():
            color, sd = method_color(r["method"]), np.nan_to_num(r["accuracy_pct_std"])
            ax.axhline(r["accuracy_pct_mean"], color=color, ls="--", lw=1.2,
                       label=f"{point_labels(flat.assign(template_id=0)).loc[i]} (no training data)")
            ax.axhspan(r["accuracy_pct_mean"] - sd, r["accuracy_pct_mean"] + sd, color=color, alpha=0.1, lw=0)
        budgets = sorted(curves["budget_value"].unique())
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [f"{b:g}" for b in budgets])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("Training examples per class (k)" if kind == "k_shot" else "Training examples")
        ax.set_ylabel("Accuracy (%)")
        ax.set_title(_title(dataset, s, "data budget (mean ± std)"))
        _style(ax)
        _legend(ax)
    return fig


def plot_prompt_sensitivity(df: pd.DataFrame, dataset: str | None = None, ax=None) -> Figure | None:
    """Spread of zero-/few-shot accuracy over prompt templates and seeds; None without ≥2 such runs."""
    summary = summarize(df)
    dataset = _dataset(summary, dataset)
    done = latest_completed(df)
    done = done[(done["dataset"] == dataset)
                & (done["method"].isin(PROMPT_METHODS) | (done["trainable_params"] == 0))]
    keys = ["model", "method", "num_demos", "budget"]
    # Per method, the data budget that was run with the most templates (then the largest one).
    n_templates = done.groupby(keys, dropna=False)["template_id"].transform("nunique")
    ranked = done.assign(_t=-n_templates, _b=-done["budget_value"].fillna(0)).sort_values(["_t", "_b"])
    best = ranked.drop_duplicates(keys[:-1])
    groups = [g for _, g in done.groupby(keys, dropna=False, sort=False)
              if len(g) >= 2 and g.index.isin(best.index).any()]
    if not groups:
        return None
    groups.sort(key=lambda g: (str(g["model"].iloc[0]), METHOD_ORDER.index(g["method"].iloc[0])
                               if g["method"].iloc[0] in METHOD_ORDER else 99))
    firsts = pd.DataFrame([g.iloc[0] for g in groups]).assign(template_id=0, dataset=dataset)
    labels = [lab if b == "—" else f"{lab}, {b}" for lab, b in zip(point_labels(firsts), firsts["budget"],
                                                                     strict=True)]
    templates = sorted(done["template_id"].dropna().unique())
    rng = np.random.default_rng(0)
    with mpl.rc_context(STYLE):
        fig, ax = _axes(ax, (1.6 + 1.3 * len(groups), 3.4))
        data = [g["accuracy"].to_numpy(float) * 100 for g in groups]
        ax.boxplot(data, positions=range(len(groups)), widths=0.5, showfliers=False,
                   medianprops={"color": "black"}, boxprops={"color": "0.4"}, whiskerprops={"color": "0.4"},
                   capprops={"color": "0.4"})
        cmap = mpl.colormaps["tab10"]
        for pos, g in enumerate(groups):
            for t in templates:
                acc = g.loc[g["template_id"] == t, "accuracy"].to_numpy(float) * 100
                ax.scatter(pos + rng.uniform(-0.16, 0.16, len(acc)), acc, s=22, color=cmap(int(t) % 10),
                           edgecolors="white", linewidths=0.5, zorder=3,
                           label=f"template {t}" if len(acc) else None)
            acc = data[pos]
            ax.annotate(f"range {acc.max() - acc.min():.1f}", (pos, acc.max()), xytext=(0, 6),
                        textcoords="offset points", ha="center", fontsize=7, color="0.3")
        ax.set_xticks(range(len(groups)), [f"{lab}\n(n={len(g)})" for lab, g in zip(labels, groups, strict=True)])
        ax.set_ylabel("Accuracy (%)")
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
