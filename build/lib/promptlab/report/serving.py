"""The multi-task serving figure (``scripts/bench_multitask.py``): storage, memory, throughput and load time of
N tasks served as adapters on one backbone vs as N fully fine-tuned models, in the look of ``report.figures``."""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

from promptlab.report.figures import STYLE, _style, method_colors

FULL = "full_finetune"  # the colour of the N-full-models lines: full fine-tuning's in every report


class PlainLog(LogFormatter):
    """Log-axis labels as plain numbers (0.4, 300) rather than 4x10^-1."""

    def _num_to_string(self, x, vmin, vmax) -> str:
        return f"{x:g}"


def _n_axis(ax, n: list[int], ylabel: str, title: str, log: bool = False) -> None:
    ax.set_xticks(n)
    ax.set_xlabel("Tasks served (N)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(PlainLog())
        ax.yaxis.set_minor_formatter(PlainLog(labelOnlyBase=False, minor_thresholds=(1, 0.4)))  # short axes only
    _style(ax)
    ax.legend(loc="best")


def serving_figure(bench: dict, path: str | Path) -> Figure:
    """A 2x2 figure of ``bench`` (the benchmark's JSON) written to ``path`` (PNG): storage, memory, prefill
    throughput (one mixed batch vs one-task sub-batches) and adapter load / switch time, each against N."""
    methods = bench["methods"]
    colors = method_colors([*methods, FULL])
    full = bench["full"]
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(10.5, 7.4), layout="constrained")
        (storage, memory), (speed, load) = fig.subplots(2, 2)
        for name, m in methods.items():
            n, c = m["n"], colors[name]
            storage.plot(n, [b / 1e6 for b in m["storage_bytes"]["adapters"]], "o-", color=c,
                         label=f"backbone + N {name} adapters")
            memory.plot(n, m["memory_mb"]["served"], "o-", color=c, label=f"backbone + N {name} adapters")
            speed.plot(n, m["throughput"]["mixed"], "o-", color=c, label=f"{name}: mixed batch (one forward)")
            speed.plot(n, m["throughput"]["split"], "s--", color=c, mfc="white",
                       label=f"{name}: one-task sub-batches + set_adapter")
            load.plot(n, m["load_seconds"]["add_adapter"], "o-", color=c, label=f"load the N-th {name} adapter")
            load.axhline(m["load_seconds"]["set_adapter"], color=c, ls=":", lw=1.2, label=f"{name}: set_adapter")
        longest = max((m["n"] for m in methods.values()), key=len)
        storage.plot(longest, [k * full["bytes"] / 1e6 for k in longest], "D-", color=colors[FULL],
                     label="N full fine-tuned models")
        fn = full["n"]
        if fn:
            memory.plot(fn, full["memory_mb"], "D-", color=colors[FULL], label="N full fine-tuned models")
            load.plot(fn, full["load_seconds"], "D-", color=colors[FULL], label="from_pretrained a full model")
        _n_axis(storage, longest, "Disk (MB, log scale)", "Storage", log=True)
        _n_axis(memory, longest, "RSS growth (MB, log scale)", "Memory to serve N tasks at once", log=True)
        _n_axis(speed, longest, "Prompt prefill (examples/s)", f"Throughput (batch {bench['batch_size']})")
        speed.set_ylim(bottom=0)
        _n_axis(load, longest, "Seconds (log scale)", "Load / switch time", log=True)
        machine = bench["machine"]
        fig.suptitle(f"Serving N tasks from one backbone · {bench['model']} · {machine['cpu']}, "
                     f"{machine['torch_threads']} torch thread(s), 1-min load "
                     f"{machine['load_start'][0]}–{machine['load_end'][0]}", fontsize=10)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=200, bbox_inches="tight", facecolor="white")
    return fig
