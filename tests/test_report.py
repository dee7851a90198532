"""promptlab-report on synthetic run records: numbers checked by hand, non-completed runs, corrupt files,
outputs, paired statistics, and the HTML dashboard rendered in headless Chromium."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from promptlab.report import (
    load_runs,
    main,
    paired_bootstrap,
    pareto_front,
    plot_accuracy_vs_params,
    significance,
    summarize,
    write_report,
)
from promptlab.report import records as records_mod

N_EVAL = 100
COSTS = {
    "zero_shot": {"trainable_params": 0, "train_seconds": 0.0, "checkpoint_bytes": 0},
    "few_shot": {"trainable_params": 0, "train_seconds": 0.0, "checkpoint_bytes": 0},
    "prompt_tuning": {"trainable_params": 640, "train_seconds": 1.5, "checkpoint_bytes": 8404},
    "full_finetune": {"trainable_params": 34080, "train_seconds": 4.0, "checkpoint_bytes": 140_000},
}


def write_run(root: Path, rel: str, method: str, seed: int, acc: float | None = None, *, status: str = "completed",
              dataset: str = "sst2", k_shot: int = 16, template: int = 0, correct=None, shuffle: bool = False,
              error: str | None = None) -> Path:
    """A run directory like promptlab-train writes: result.json and (completed) predictions.jsonl.

    ``acc`` makes the first round(acc * N_EVAL) examples correct; ``correct`` gives the 0/1 vector itself.
    """
    run_dir = root / rel
    run_dir.mkdir(parents=True)
    rec = {"run_id": f"{rel.replace('/', '-')}", "status": status, "method": method, "model": "tiny_random",
           "dataset": dataset, "seed": seed, "k_shot": k_shot, "train_size": None, "template_id": template,
           "num_demos": 4 if method == "few_shot" else 0, "config_hash": "0" * 16, "git_commit": None,
           "versions": {"promptlab": "0.1.0"}, "started_at": "2026-11-23T21:00:00", "metrics": {}, "costs": {}}
    if status == "completed":
        if correct is None:
            correct = np.arange(N_EVAL) < round(acc * N_EVAL)
        correct = np.asarray(correct, bool)
        trained = COSTS[method]["trainable_params"] > 0
        rec["metrics"] = {"accuracy": float(correct.mean()), "macro_f1": float(correct.mean()) - 0.05}
        rec["costs"] = {**COSTS[method], "total_params": 34080,
                        "trainable_fraction": COSTS[method]["trainable_params"] / 34080,
                        "train_examples_per_second": 28.5 if trained else None, "eval_seconds": 0.5,
                        "eval_examples": N_EVAL, "peak_rss_mb": 650.0, "peak_rss_reset_per_run": True,
                        "peak_gpu_mb": None}
        rec.update(num_train_examples=2 * k_shot if trained else 0, eval_split="validation",
                   finished_at="2026-11-23T21:01:00")
        labels = np.arange(N_EVAL) % 2
        rows = [{"idx": i, "label": int(y), "pred": int(y if c else 1 - y), "pred_name": "x", "log_probs": [-0.1, -2.3]}
                for i, (y, c) in enumerate(zip(labels, correct, strict=True))]
        if shuffle:
            rows = rows[::-1]
        (run_dir / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif status == "failed":
        rec.update(error=error or "RuntimeError: boom", traceback="Traceback ...", finished_at="2026-11-23T21:01:00")
    (run_dir / "result.json").write_text(json.dumps(rec, indent=2))
    return run_dir


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """Four methods x three seeds, at mixed depths, one failed and one crashed run."""
    root = tmp_path / "runs"
    accs = {"zero_shot": [0.5, 0.5, 0.5], "few_shot": [0.55, 0.6, 0.65], "prompt_tuning": [0.5, 0.6, 0.7],
            "full_finetune": [0.9, 0.92, 0.94]}
    for method, values in accs.items():
        for seed, acc in enumerate(values):
            rel = (f"sweeps/2026-11-23_21-16-03_ab12cd/{seed}_{method}_sst2_s{seed}" if seed
                   else f"2026-11-23/21-16-03_{method}_sst2_s{seed}_abc123")
            write_run(root, rel, method, seed, acc)
    write_run(root, "sweeps/x/9_full_finetune_sst2_s3", "full_finetune", 3, status="failed",
              error="OutOfMemoryError: CUDA out of memory.\nTried to allocate 2 GiB")
    write_run(root, "sweeps/x/10_prompt_tuning_sst2_s3", "prompt_tuning", 3, status="running")
    return root


def row(summary, method):
    rows = summary[summary["method"] == method]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_load_runs_flattens_records_at_any_depth(runs):
    df = load_runs(runs)
    assert len(df) == 14
    assert {"accuracy", "macro_f1", "trainable_params", "train_seconds", "peak_rss_mb", "run_dir"} <= set(df.columns)
    assert set(df["status"]) == {"completed", "failed", "running"}
    zero = df[df["method"] == "zero_shot"]
    assert (zero["budget"] == "—").all()  # zero-shot reads no training data: no budget
    assert (df.loc[df["method"] == "prompt_tuning", "budget"] == "k=16").all()


def test_means_and_sample_stds_match_hand_computation(runs, tmp_path):
    summary = summarize(load_runs(runs))
    pt = row(summary, "prompt_tuning")  # accuracies 0.5, 0.6, 0.7
    assert pt["n_seeds"] == 3
    assert pt["accuracy_pct_mean"] == pytest.approx(60.0)
    assert pt["accuracy_pct_std"] == pytest.approx(10.0)  # sample std, ddof=1
    assert pt["macro_f1_pct_mean"] == pytest.approx(55.0)
    fs = row(summary, "few_shot")
    assert fs["accuracy_pct_mean"] == pytest.approx(60.0)
    assert fs["accuracy_pct_std"] == pytest.approx(5.0)
    assert row(summary, "zero_shot")["accuracy_pct_std"] == pytest.approx(0.0)

    report = write_report(runs, tmp_path / "out")
    md = (tmp_path / "out" / "table.md").read_text()
    assert "60.0 ± 10.0" in md and "60.0 ± 5.0" in md
    assert "sample standard deviation (ddof=1)" in md
    csv = (tmp_path / "out" / "table.csv").read_text().splitlines()
    pt_line = next(line for line in csv if ",prompt_tuning," in line)
    assert ",60.0,10.0," in pt_line.replace("60.00000000000001", "60.0").replace("9.999999999999998", "10.0")
    assert "640" in report.stdout and "8.21 KB" in report.stdout  # trainable params, checkpoint size


def test_failed_and_running_runs_are_counted_and_listed(runs, tmp_path):
    write_run(runs, "only_failed/rte_s0", "prompt_tuning", 0, status="failed", dataset="rte", error="ValueError: x")
    summary = summarize(load_runs(runs))
    ff, pt = row(summary[summary["dataset"] == "sst2"], "full_finetune"), row(summary[summary["dataset"] == "sst2"],
                                                                               "prompt_tuning")
    assert (ff["n_seeds"], ff["n_failed"], ff["n_running"]) == (3, 1, 0)
    assert (pt["n_seeds"], pt["n_failed"], pt["n_running"]) == (3, 0, 1)
    rte = row(summary[summary["dataset"] == "rte"], "prompt_tuning")  # a group with no completed run is kept
    assert (rte["n_seeds"], rte["n_failed"]) == (0, 1)

    report = write_report(runs, tmp_path / "out")
    md = (tmp_path / "out" / "table.md").read_text()
    assert "1 failed" in md and "1 running/crashed" in md
    assert "## Runs not completed" in md
    assert "sweeps/x/9_full_finetune_sst2_s3" in md and "OutOfMemoryError: CUDA out of memory." in md
    assert "sweeps/x/10_prompt_tuning_sst2_s3" in md and "only_failed/rte_s0" in md
    assert "3 runs not completed" in report.stdout
    html = (tmp_path / "out" / "index.html").read_text()
    assert "Runs not completed" in html and "9_full_finetune_sst2_s3" in html


def test_corrupt_record_warns_and_report_completes(runs, tmp_path, caplog, capsys):
    bad = runs / "sweeps" / "broken" / "result.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"run_id": "x", "status": "compl')  # truncated
    odd = runs / "odd" / "result.json"
    odd.parent.mkdir()
    odd.write_text("[1, 2]")
    with caplog.at_level(logging.WARNING, logger="promptlab.report"):
        report = write_report(runs, tmp_path / "out")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(bad) in m for m in warned) and any(str(odd) in m for m in warned)
    assert len(report.runs) == 14
    md = (tmp_path / "out" / "table.md").read_text()
    assert "Unreadable run records" in md and str(bad) in md

    assert main([str(runs), "--out", str(tmp_path / "cli")]) == 0  # the CLI: a warning on stderr, exit 0
    err = capsys.readouterr().err
    assert f"WARNING: skipping unreadable run record {bad}" in err


def test_all_output_files_exist(runs, tmp_path):
    for seed in range(2):  # a zero-shot template sweep: the prompt-sensitivity figure appears
        write_run(runs, f"templates/t1_s{seed}", "zero_shot", seed, 0.45 + 0.05 * seed, template=1)
    out = tmp_path / "out"
    report = write_report(runs, out)
    expected = ["table.md", "table.tex", "table.csv", "qualitative.md", "qualitative.tex", "qualitative.csv",
                "significance.md", "significance.csv", "runs.csv", "index.html"]
    expected += [f"figures/sst2_{name}.{ext}" for name in ("acc_vs_params", "acc_vs_time", "prompt_sensitivity")
                 for ext in ("png", "svg")]
    for name in expected:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
        assert out / name in report.files
    assert not (out / "figures" / "sst2_budget.png").exists()  # a single data budget: no budget curve
    tex = (out / "table.tex").read_text()
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in tex
    assert r"Accuracy (\%)" in tex and r"$\pm$" in tex and "tiny\\_random" in tex
    qual = (out / "qualitative.md").read_text()
    assert "virtual token embeddings (backbone frozen)" in qual and "all weights" in qual
    assert "nothing (manual prompt)" in qual and "nothing (k demonstrations in context)" in qual


def test_budget_curve_appears_with_two_budgets(runs, tmp_path):
    for seed in range(2):
        write_run(runs, f"k32/pt_s{seed}", "prompt_tuning", seed, 0.8, k_shot=32)
    write_report(runs, tmp_path / "out")
    assert (tmp_path / "out" / "figures" / "sst2_budget.png").is_file()
    md = (tmp_path / "out" / "table.md").read_text()
    assert "k=32" in md and "k=16" in md  # the budget column appears when a method ran several


def test_rerun_of_a_seed_replaces_the_earlier_run(tmp_path):
    write_run(tmp_path, "a", "prompt_tuning", 0, 0.5)
    rerun = write_run(tmp_path, "b", "prompt_tuning", 0, 0.7)
    rec = json.loads((rerun / "result.json").read_text())
    (rerun / "result.json").write_text(json.dumps({**rec, "finished_at": "2026-11-24T09:00:00"}))
    pt = row(summarize(load_runs(tmp_path)), "prompt_tuning")
    assert (pt["n_seeds"], pt["n_runs"]) == (1, 2)
    assert pt["accuracy_pct_mean"] == pytest.approx(70.0)


def test_paired_bootstrap():
    a = np.r_[np.ones(80), np.zeros(20)]
    assert paired_bootstrap(a, a) == (0.0, 0.0, 0.0)
    diff, lo, hi = paired_bootstrap(a, np.r_[np.ones(40), np.zeros(60)], n_resamples=1000, seed=0)
    assert diff == pytest.approx(0.4) and 0 < lo < diff < hi
    assert paired_bootstrap(a, a[::-1], seed=3) == paired_bootstrap(a, a[::-1], seed=3)  # fixed RNG seed


def test_significance_pairs_matched_by_seed_and_index(tmp_path):
    rng = np.random.default_rng(0)
    for seed in range(3):
        correct = rng.random(N_EVAL) < 0.6
        write_run(tmp_path, f"zs{seed}", "zero_shot", seed, correct=correct)
        # few-shot: the very same predictions, written in another order: identical once matched by idx
        write_run(tmp_path, f"fs{seed}", "few_shot", seed, correct=correct, shuffle=True)
        write_run(tmp_path, f"ft{seed}", "full_finetune", seed, correct=rng.random(N_EVAL) < 0.95)
    sig = significance(load_runs(tmp_path)).set_index(["method_a", "method_b"])
    same = sig.loc[("Zero-shot", "Few-shot")]
    assert (same["diff_pct"], same["ci_low_pct"], same["ci_high_pct"]) == (0.0, 0.0, 0.0)
    assert same["n_pairs"] == 3 * N_EVAL and same["n_seeds"] == 3
    better = sig.loc[("Zero-shot", "Full fine-tuning")]  # A worse than B: the whole CI is below 0
    assert better["ci_high_pct"] < 0 and better["ci_excludes_0"]
    assert better["p_value"] < 0.05 and better["t"] < 0


def test_ttest_skipped_with_note_without_scipy(tmp_path, monkeypatch):
    for seed in range(2):
        write_run(tmp_path, f"zs{seed}", "zero_shot", seed, 0.5 + 0.01 * seed)
        write_run(tmp_path, f"ft{seed}", "full_finetune", seed, 0.9 - 0.02 * seed)
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # import fails
    sig = significance(load_runs(tmp_path))
    assert np.isnan(sig["p_value"].iloc[0]) and "scipy not installed" in sig["note"].iloc[0]
    assert sig["ci_high_pct"].iloc[0] < 0  # the bootstrap still runs


def test_pareto_front_and_zero_params_placement(runs):
    assert pareto_front([0, 0, 10, 1e8], [60, 65, 80, 78]).tolist() == [False, True, True, False]
    fig = plot_accuracy_vs_params(load_runs(runs))
    ax = fig.axes[0]
    fig.canvas.draw()
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[0] == "0" and ax.get_xscale() == "log"
    assert ax.get_xticks()[0] < 640  # frozen methods sit left of the smallest trained one
    assert "Pareto front" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_cli_prints_compact_table_and_writes_default_out(runs, capsys):
    assert main([str(runs)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| Method"))
    for col in ("Accuracy (%)", "Trainable params", "Train time", "Peak memory", "Checkpoint"):
        assert col in header
    assert "Macro-F1" not in out  # the compact table
    assert (runs / "report" / "index.html").is_file()


def test_cli_missing_dir_is_a_clean_error(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith("promptlab-report: error: no such runs directory")


def test_cli_wandb_unreachable_is_one_line_error(runs, capsys, monkeypatch):
    import wandb

    def unreachable(*args, **kwargs):
        raise ConnectionError("Failed to connect to api.wandb.ai: [Errno 101] Network is unreachable\nmore")

    monkeypatch.setattr(wandb, "Api", unreachable)
    assert main([str(runs), "--wandb", "team/promptlab"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["promptlab-report: error: cannot read wandb project 'team/promptlab': ConnectionError: "
                   "Failed to connect to api.wandb.ai: [Errno 101] Network is unreachable"]


def test_wandb_runs_become_rows(runs, monkeypatch):
    import wandb

    class Run:
        def __init__(self, run_id, seed, acc):
            self.id, self.state, self.url = run_id, "finished", f"https://wandb.ai/team/p/runs/{run_id}"
            self.config = {"method": {"name": "prompt_tuning", "num_demos": 0}, "model": {"name": "tiny_random"},
                           "data": {"name": "sst2", "k_shot": 16, "train_size": None, "template": 0}, "seed": seed}
            self.summary = {"eval/accuracy": acc, "eval/macro_f1": acc, "cost/trainable_params": 640,
                            "cost/train_seconds": 1.5, "status": "completed"}

    class Api:
        def __init__(self, timeout=None):
            pass

        def runs(self, path):
            assert path == "team/p"
            return [Run("remote-s7", 7, 0.8), Run(load_runs(runs)["run_id"].iloc[0], 0, 0.1)]  # 2nd: a local id

    monkeypatch.setattr(wandb, "Api", Api)
    df = records_mod.load_runs(runs, wandb_project="team/p")
    assert len(df) == 15
    remote = df[df["run_id"] == "remote-s7"].iloc[0]
    assert remote["source"] == "wandb" and remote["accuracy"] == 0.8 and remote["seed"] == 7


def test_dashboard_is_self_contained(runs, tmp_path):
    write_report(runs, tmp_path / "out")
    html = (tmp_path / "out" / "index.html").read_text()
    assert "<table>" in html and html.count('<img src="data:image/png;base64,') >= 2
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", html)
    assert "<link" not in html and "<script" not in html


CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not on PATH (CI: apt-get install -y chromium)")
def test_dashboard_renders_in_headless_chromium(runs, tmp_path):
    from matplotlib.image import imread

    out = tmp_path / "out"
    write_report(runs, out)
    # A copy of the page with a probe: after load, each image records the size the browser decoded.
    probe = """<script>window.addEventListener("load", () => document.querySelectorAll("img").forEach(
      i => i.setAttribute("data-rendered", i.naturalWidth + "x" + i.naturalHeight + "/" + i.width)));</script>"""
    (out / "probe.html").write_text((out / "index.html").read_text().replace("</body>", probe + "</body>"))

    def chromium(*args):
        profile = tmp_path / f"profile{len(list(tmp_path.iterdir()))}"
        cmd = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)

    dom = chromium("--virtual-time-budget=5000", "--dump-dom", (out / "probe.html").as_uri()).stdout
    assert dom.count("<table") >= 3  # results, qualitative, significance (+ not completed)
    assert "Prompt tuning" in dom and "60.0 ± 10.0" in dom
    sizes = re.findall(r'<img src="data:image/png;base64,[^"]+"[^>]*data-rendered="(\d+)x(\d+)/(\d+)"', dom)
    assert len(sizes) >= 2 and all(int(w) > 0 and int(h) > 0 and int(shown) > 0 for w, h, shown in sizes)

    shot = tmp_path / "shot.png"
    chromium("--window-size=1280,1600", f"--screenshot={shot}", (out / "index.html").as_uri())
    pixels = imread(shot)[..., :3]
    assert pixels.std() > 0.05  # not blank
    saturated = pixels.max(axis=-1) - pixels.min(axis=-1) > 0.3
    assert saturated.sum() > 200  # coloured pixels: the figures' markers and lines were painted
