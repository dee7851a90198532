"""Reports over run records: comparison tables, figures, paired significance and an HTML dashboard.

Command line: ``promptlab-report runs/`` (see ``promptlab.report.cli``). From Python / a notebook::

    from promptlab.report import load_runs, summarize, plot_accuracy_vs_params
    df = load_runs("runs")                 # one row per run, metrics and costs flattened
    summarize(df)                          # one row per (dataset, model, method, budget, ...) group
    plot_accuracy_vs_params(df)            # a matplotlib Figure (or pass ax=)
"""

from promptlab.report.cli import Report, main, write_report
from promptlab.report.figures import (
    pareto_front,
    plot_accuracy_vs_params,
    plot_accuracy_vs_time,
    plot_budget_curve,
    plot_prompt_sensitivity,
    save_figure,
)
from promptlab.report.records import WandbUnavailable, latest_completed, load_runs
from promptlab.report.stats import (
    SIGNIFICANCE_NOTE,
    display_significance,
    load_predictions,
    paired_bootstrap,
    paired_ttest,
    significance,
)
from promptlab.report.tables import (
    caption,
    display_table,
    headline,
    qualitative_table,
    summarize,
    to_latex,
    to_markdown,
)

__all__ = [
    "SIGNIFICANCE_NOTE", "Report", "WandbUnavailable", "caption", "display_significance", "display_table",
    "headline", "latest_completed", "load_predictions", "load_runs", "main", "paired_bootstrap", "paired_ttest",
    "pareto_front", "plot_accuracy_vs_params", "plot_accuracy_vs_time", "plot_budget_curve",
    "plot_prompt_sensitivity", "qualitative_table", "save_figure", "significance", "summarize", "to_latex",
    "to_markdown", "write_report",
]
