"""``promptlab-report``: every run record under a directory -> tables, figures, significance, dashboard.

    promptlab-report runs/                      # writes runs/report/, prints the comparison table
    promptlab-report runs/sweeps/2026-11-23_21-16-03_ab12cd --out results/demo
    promptlab-report runs/ --wandb my-team/promptlab   # also the runs logged to wandb (online)
"""

from __future__ import annotations

import argparse
import html
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd

from promptlab.config import check_writable
from promptlab.errors import ConfigError
from promptlab.report import dashboard as dash
from promptlab.report import figures as figs
from promptlab.report.ensembles import NOTE as ENSEMBLE_NOTE
from promptlab.report.ensembles import display_ensembles, seed_ensembles
from promptlab.report.mixtures import NOTE as MIXTURE_NOTE
from promptlab.report.mixtures import is_mixture, mixture_table
from promptlab.report.records import WandbUnavailable, load_runs
from promptlab.report.sensitivity import NOTE as SENSITIVITY_NOTE
from promptlab.report.sensitivity import display_sensitivity, sensitivity
from promptlab.report.stats import display_significance, significance, significance_note
from promptlab.report.tables import (
    READOUT_NOTE,
    caption,
    display_table,
    headline,
    metric_name,
    point_labels,
    qualitative_caption,
    qualitative_table,
    readout_table,
    summarize,
    timing_note,
    to_html,
    to_latex,
    to_markdown,
)
from promptlab.report.verdict import NOTE as VERDICT_NOTE
from promptlab.report.verdict import break_even_table, verdict

log = logging.getLogger("promptlab.report")


def figure_specs(s: pd.DataFrame) -> list[tuple[str, Callable, str]]:
    """(file suffix, plot function, caption) of each figure of one dataset's summary rows."""
    name = metric_name(s["metric"].iloc[0]) if s["metric"].nunique() == 1 else "Score"
    timing = timing_note(headline(figs.comparable(s[s["n_seeds"] > 0])))
    spread = ("mean over seeds, bars: 95% interval over seeds and examples; ringed points and dashed line: "
              "Pareto front")
    return [
        ("score_vs_params", figs.plot_score_vs_params, f"{name} vs trainable parameters ({spread})."),
        ("score_vs_time", figs.plot_score_vs_time, f"{name} vs training time ({spread}). {timing}".rstrip()),
        ("budget", figs.plot_budget_curve, f"{name} vs training examples (band: ± std over seeds)."),
        ("prompt_sensitivity", figs.plot_prompt_sensitivity,
         f"{name} of the methods that train nothing across prompt templates and seeds "
         "(box: quartiles; points: runs)."),
        ("loss", figs.plot_loss_curves, "Training loss of each trained row's chosen trial (one line per seed), "
         "from the runs' CSV logs."),
    ]


@dataclass
class Report:
    out: Path
    runs: pd.DataFrame
    summary: pd.DataFrame
    significance: pd.DataFrame
    stdout: str
    files: list[Path] = field(default_factory=list)


def _not_completed(df: pd.DataFrame, root: Path) -> pd.DataFrame:
    bad = df[df["status"] != "completed"]

    def rel(p):
        try:
            return str(Path(p).relative_to(root))
        except ValueError:
            return str(p)

    return pd.DataFrame({
        "Status": bad["status"].replace("running", "running/crashed"), "Dataset": bad["dataset"],
        "Method": bad["method"] + bad["config_label"].map(lambda c: f" ({c})" if c else ""),
        "Seed": bad["seed"].astype(str), "Run": bad["run_dir"].map(rel),
        "Error": bad["error"].fillna("—").astype(str).str.slice(0, 160),
    })


def _counts(df: pd.DataFrame, unreadable: list) -> str:
    status = df["status"].value_counts()
    parts = [f"{n} {s.replace('running', 'running/crashed')}" for s, n in status.items()]
    return f"{len(df)} run records ({', '.join(parts) or 'none'}); {len(unreadable)} unreadable"


@dataclass
class Section:
    """One dataset's part of every output file."""

    md: list[str] = field(default_factory=list)
    tex: list[str] = field(default_factory=list)
    qual_md: list[str] = field(default_factory=list)
    qual_tex: list[str] = field(default_factory=list)
    stdout: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    qual: list[pd.DataFrame] = field(default_factory=list)
    sens_md: list[str] = field(default_factory=list)
    verdict_html: list[str] = field(default_factory=list)  # the dashboard opens with every task's verdict
    files: list[Path] = field(default_factory=list)


def model_note(s: pd.DataFrame) -> str:
    """The model as a table heading says it: "smollm2_135m (GGUF MOSTLY_Q4_1 ..., dequantised to float32; run
    in bf16-mixed)", from what its runs recorded."""
    extra = [q for q in s["quantization"].dropna().unique() if q != "none"]
    if s["precision"].notna().any():
        extra.append("run in " + ", ".join(sorted(s["precision"].dropna().unique())))
    return f"{s['model'].iloc[0]}" + (f" ({'; '.join(extra)})" if extra else "")


def _verdict_section(sec: Section, dataset, heading: str, s: pd.DataFrame, sig: pd.DataFrame, out: Path) -> None:
    """Which row wins on dev, which cheaper rows tie with it, and the break-even table and figure
    (``report.verdict``): first in the Markdown, the printed report and the dashboard."""
    rows = headline(figs.comparable(s[s["n_seeds"] > 0]))
    if rows.empty:
        return
    labels = point_labels(rows)
    sig = sig[sig["dataset"] == dataset] if not sig.empty else sig
    pairs = {frozenset((a, b)): bool(ex) for a, b, ex, lo in
             zip(sig.get("method_a", []), sig.get("method_b", []), sig.get("ci_excludes_0", []), sig.get("ci_low", []),
                 strict=True) if not pd.isna(lo)}
    v = verdict(rows, labels, pairs)
    if not v:
        return
    table = break_even_table(v, labels)
    note = f"{VERDICT_NOTE} {timing_note(rows)}".rstrip()
    sec.md += ["### Verdict", "", v["text"], "", to_markdown(table), "", note, ""]
    sec.stdout += [f"Verdict: {v['text']}", ""]
    parts = [dash.note(v["text"], "verdict"), dash.scroll(to_html(table, note))]
    fig = figs.plot_break_even(v, labels, str(dataset))
    if fig is not None:
        paths = figs.save_figure(fig, out / "figures" / f"{dataset}_break_even")
        sec.files += paths
        parts.append(dash.figure(paths[0], "Score vs total cost at 1K, 100K and 10M queries (bars: 95% interval; "
                                           "n: seeds; ringed: the cheapest row tied with the best). " + timing_note(rows)))
    sec.verdict_html.append(dash.section(heading, *parts, level=3))


def _dataset_section(sec: Section, df, dataset, s, sig, sens, ens, n_resamples: int, seed: int, out: Path) -> None:
    heading = f"{dataset} · {model_note(s)}" if s["model"].nunique() == 1 else str(dataset)
    full, compact, qual = display_table(s), display_table(s, compact=True), qualitative_table(s)
    cap, qual_cap = caption(s), qualitative_caption(s)
    sec.md += [f"## {heading}", "", to_markdown(full), "", cap, ""]
    sec.stdout += [heading, to_markdown(compact), caption(s, compact=True), ""]
    sec.tex.append(to_latex(full, f"{heading}. {cap}", f"tab:promptlab-{dataset}"))
    sec.qual_md += [f"## {heading}", "", to_markdown(qual), "", qual_cap, ""]
    sec.qual_tex.append(to_latex(qual, f"{heading}. {qual_cap}", f"tab:promptlab-qualitative-{dataset}"))
    sec.qual.append(qual.assign(Dataset=dataset))
    _verdict_section(sec, dataset, heading, s, sig, out)
    pngs = []
    for suffix, plot, fig_caption in figure_specs(s) if s["n_seeds"].sum() else []:  # none completed: none
        fig = plot(df, dataset=dataset)
        if fig is not None:
            paths = figs.save_figure(fig, out / "figures" / f"{dataset}_{suffix}")
            sec.files += paths
            pngs.append(dash.figure(paths[0], fig_caption))
    parts = [dash.scroll(to_html(full, cap)),
             dash.section("Figures", f'<div class="figs">{"".join(pngs)}</div>', level=3),
             dash.section("What each method modifies and costs", dash.scroll(to_html(qual, qual_cap)),
                          level=3)]
    readouts = readout_table(s)
    if len(readouts.columns) > 2:  # more than the raw readout: how much the readout matters
        sec.md += ["### Readouts (sensitivity)", "", to_markdown(readouts), "", READOUT_NOTE, ""]
        parts.append(dash.section("Readouts (sensitivity)", dash.scroll(to_html(readouts, READOUT_NOTE)), level=3))
    sens = sens[sens["dataset"] == dataset]
    if not sens.empty:  # how much the prompt matters, and what choosing it on dev bought
        table = display_sensitivity(sens)
        sec.md += ["### Prompt sensitivity", "", to_markdown(table), "", SENSITIVITY_NOTE, ""]
        sec.sens_md += [f"## {heading}", "", to_markdown(table), ""]
        sec.stdout += ["Prompt sensitivity", to_markdown(table.drop(columns=["Spread on", "Seeds"])), ""]
        parts.append(dash.section("Prompt sensitivity", dash.scroll(to_html(table, SENSITIVITY_NOTE)), level=3))
    ens = ens[ens["dataset"] == dataset]
    if not ens.empty:
        table = display_ensembles(ens)
        sec.md += ["### Seed ensembles", "", to_markdown(table), "", ENSEMBLE_NOTE, ""]
        parts.append(dash.section("Seed ensembles", dash.scroll(to_html(table, ENSEMBLE_NOTE)), level=3))
    sig = sig[sig["dataset"] == dataset] if not sig.empty else sig
    if not sig.empty:
        table = to_html(display_significance(sig), significance_note(n_resamples, seed, sig["metric"]))
        parts.append(dash.section("Paired significance", dash.scroll(table), level=3))
    sec.html.append(dash.section(heading, *parts))


def write_report(runs_dir: str | Path, out: str | Path | None = None, wandb_project: str | None = None,
                 n_resamples: int = 2000, seed: int = 0) -> Report:
    """Write the whole report into ``out`` (default ``<runs_dir>/report``) and return what it contains."""
    root = Path(runs_dir)
    out = Path(out) if out else root / "report"
    df = load_runs(root, wandb_project)
    if df.empty:
        raise FileNotFoundError(f"no readable run records (result.json) under {root}")
    unreadable = df.attrs.get("unreadable", [])
    out.mkdir(parents=True, exist_ok=True)
    mixtures = mixture_table(df)  # instruction tuning: per-task columns, not one score per dataset
    single = df[~is_mixture(df)]  # one task per run: the comparison tables, significance, sensitivity
    empty = pd.DataFrame()
    summary = summarize(single) if not single.empty else empty
    sig = significance(single, n_resamples=n_resamples, seed=seed) if not single.empty else empty
    sig_note = significance_note(n_resamples, seed, sig["metric"] if not sig.empty else ())
    sens, ens = (sensitivity(single), seed_ensembles(single)) if not single.empty else (empty, empty)
    sec = Section()
    for dataset, s in summary.groupby("dataset", sort=False) if not summary.empty else []:
        _dataset_section(sec, single, dataset, s, sig, sens, ens, n_resamples, seed, out)

    if not mixtures.empty:
        sec.md += ["## Instruction tuning: seen and held-out tasks", "", to_markdown(mixtures), "", MIXTURE_NOTE, ""]
        sec.stdout += ["Instruction tuning: seen and held-out tasks", to_markdown(mixtures), ""]
        sec.html.append(dash.section("Instruction tuning: seen and held-out tasks",
                                     dash.scroll(to_html(mixtures, MIXTURE_NOTE))))
    not_done = _not_completed(df, root)
    if not not_done.empty:
        sec.md += ["## Runs not completed", "", to_markdown(not_done), ""]
        sec.stdout.append(f"{len(not_done)} runs not completed (failed or crashed): listed in {out / 'table.md'}")
        sec.html.append(dash.section("Runs not completed", dash.scroll(to_html(not_done))))
    if unreadable:
        sec.md += ["## Unreadable run records", "", *[f"- `{f}`: {why}" for f, why in unreadable], ""]
        sec.stdout.append(f"{len(unreadable)} unreadable run records skipped (see the warnings)")
        items = "".join(f"<li><code>{html.escape(f)}</code>: {html.escape(why)}</li>" for f, why in unreadable)
        sec.html.append(dash.section("Unreadable run records", f'<ul class="warn">{items}</ul>'))

    counts = _counts(df, unreadable)
    sig_md = ["# Paired significance", "", sig_note, ""]
    for dataset, s in sig.groupby("dataset", sort=False) if not sig.empty else []:
        sig_md += [f"## {dataset}", "", to_markdown(display_significance(s)), ""]
    texts = {
        "table.md": f"# promptlab report\n\n{root}: {counts}.\n\n" + "\n".join(sec.md),
        "table.tex": "% promptlab report: needs \\usepackage{booktabs}\n" + "\n".join(sec.tex),
        "qualitative.md": "# What each method modifies and costs\n\n" + "\n".join(sec.qual_md),
        "qualitative.tex": "\n".join(sec.qual_tex),
        "significance.md": "\n".join(sig_md if not sig.empty else [*sig_md, "No pairs of methods with common seeds."]),
        "sensitivity.md": "\n".join(["# Prompt sensitivity", "", SENSITIVITY_NOTE, "", *sec.sens_md]
                                    if sec.sens_md else ["# Prompt sensitivity", "", "No prompt searches or template "
                                                         "sweeps among these runs."]),
        "index.html": dash.page("promptlab report", f"{root}: {counts}. Generated {datetime.now():%Y-%m-%d %H:%M}.",
                                ([dash.section("Verdict", *sec.verdict_html)] if sec.verdict_html else []) + sec.html),
    }
    for name, text in texts.items():
        (out / name).write_text(text)
    frames = {"table.csv": summary, "mixtures.csv": mixtures, "qualitative.csv": pd.concat(sec.qual) if sec.qual else empty, "runs.csv": df, "significance.csv": sig,
              "sensitivity.csv": sens, "ensembles.csv": ens}
    for name, frame in frames.items():
        frame.to_csv(out / name, index=False)
    files = [out / n for n in [*texts, *frames]] + sec.files
    return Report(out, df, summary, sig, "\n".join(sec.stdout).rstrip() + "\n", files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="promptlab-report", description=__doc__.splitlines()[0].split(": ", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs_dir", help="directory searched (at any depth) for result.json run records")
    parser.add_argument("--out", help="output folder (default: <runs_dir>/report)")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="also read the runs of this wandb project (online)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap RNG seed (default 0)")
    args = parser.parse_args(argv)
    out = Path(args.out or Path(args.runs_dir) / "report")
    try:  # found in a second, not after every record is read (a missing runs_dir is write_report's message)
        if Path(args.runs_dir).is_dir():
            check_writable(out, "the report to", "pass --out <a folder you can write>")
    except ConfigError as err:
        print(f"promptlab-report: error: {err.problem}\n  fix: {err.fix}", file=sys.stderr)
        return 2
    import matplotlib

    matplotlib.use("Agg")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("promptlab-report: %(levelname)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        report = write_report(args.runs_dir, args.out, args.wandb, args.bootstrap, args.seed)
        log.info("report written to %s (open %s)", report.out, report.out / "index.html")
    except (WandbUnavailable, FileNotFoundError) as err:
        print(f"promptlab-report: error: {err}", file=sys.stderr)
        return 2
    finally:
        log.removeHandler(handler)
    print(report.stdout, end="")
    return 0
