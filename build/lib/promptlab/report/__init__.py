"""Reports over run records: comparison tables, figures, paired significance and an HTML dashboard.

Command line: ``promptlab-report runs/`` (see ``promptlab.report.cli``). From Python / a notebook::

    from promptlab.report import load_runs, summarize, plot_score_vs_params
    df = load_runs("runs")                 # one row per run; "score" = its headline (chosen on dev)
    summarize(df)                          # one row per (dataset, model, method, split, config) group
    plot_score_vs_params(df)               # a matplotlib Figure (or pass ax=)
"""

from promptlab.report.cli import Report, main, write_report
from promptlab.report.figures import (
    method_colors,
    pareto_front,
    plot_budget_curve,
    plot_prompt_sensitivity,
    plot_score_vs_params,
    plot_score_vs_time,
    save_figure,
)
from promptlab.report.intervals import Interval, example_scores, hierarchical_interval
from promptlab.report.records import WandbUnavailable, latest_completed, load_runs
from promptlab.report.stats import display_significance, paired_ttest, significance, significance_note
from promptlab.report.tables import (
    caption,
    display_table,
    headline,
    metric_label,
    qualitative_caption,
    qualitative_table,
    readout_table,
    summarize,
    to_latex,
    to_markdown,
)

__all__ = [
    "Interval", "Report", "WandbUnavailable", "caption", "display_significance", "display_table",
    "example_scores", "headline", "hierarchical_interval", "latest_completed", "load_runs", "main",
    "method_colors", "metric_label", "paired_ttest", "pareto_front", "plot_budget_curve",
    "plot_prompt_sensitivity", "plot_score_vs_params", "plot_score_vs_time", "qualitative_caption",
    "qualitative_table", "readout_table", "save_figure", "significance", "significance_note", "summarize",
    "to_latex", "to_markdown", "write_report",
]
