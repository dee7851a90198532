"""promptlab-report on synthetic run records (schema 2, and schema 1 still read): numbers checked by hand,
primary metrics other than accuracy, non-completed runs, corrupt files, grouping by config (config.yaml),
outputs, paired statistics, the HTML dashboard rendered in headless Chromium, and a real tiny-model sweep."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from conftest import compose_config, subprocess_env
from omegaconf import OmegaConf
from scipy import stats

from promptlab.report import (
    configs,
    hierarchical_interval,
    load_runs,
    main,
    method_colors,
    pareto_front,
    plot_prompt_sensitivity,
    plot_score_vs_params,
    plot_score_vs_time,
    significance,
    summarize,
    to_latex,
    to_markdown,
    write_report,
)
from promptlab.report import records as records_mod
from promptlab.report.tables import REPEATS_NOTE, caption, display_table
from promptlab.schema import Machine, MethodInfo, RunResult

N_EVAL = 100
CPU = "Intel Xeon Platinum 8375C"
METHODS = {  # method_info, then costs of a completed run
    "zero_shot": (MethodInfo("zero_shot", "prompting", "Zero-shot", "nothing (manual prompt)", False),
                  {"trainable_params": 0, "train_seconds": 0.0, "checkpoint_bytes": 0}),
    "few_shot": (MethodInfo("few_shot", "prompting", "Few-shot", "nothing (k demonstrations in context)",
                            False),
                 {"trainable_params": 0, "train_seconds": 0.0, "checkpoint_bytes": 0}),
    "prompt_tuning": (MethodInfo("prompt_tuning", "prompt_tuning", "Prompt tuning",
                                 "virtual token embeddings (backbone frozen)", True),
                      {"trainable_params": 640, "train_seconds": 1.5, "checkpoint_bytes": 8404}),
    "full_finetune": (MethodInfo("full_finetune", "full_finetune", "Full fine-tuning", "all weights", True),
                      {"trainable_params": 34080, "train_seconds": 4.0, "checkpoint_bytes": 140_000}),
}
CHOICE_METRICS = {"accuracy", "macro_f1"}


def make_record(rel: str, method: str, seed: int, *, status: str = "completed", dataset: str = "sst2",
                metric: str = "accuracy", k_shot: int | None = 16, train_size: int | None = None,
                template: int = 0, kind: str = "train", eval_split: str = "validation",
                load: tuple[float, float] = (0.5, 0.7), info: MethodInfo | None = None) -> dict:
    """A schema-2 result.json (no metrics or costs yet), built with the contract's own dataclasses."""
    choice = metric in CHOICE_METRICS
    return RunResult(
        run_id=rel.replace("/", "-"), status=status, kind=kind, method=method,
        method_info=info or METHODS[method][0], model="tiny_random", dataset=dataset,
        output_type="choice" if choice else "generate", primary_metric=metric, higher_is_better=True,
        chance=0.5 if metric == "accuracy" else None, seed=seed, k_shot=k_shot, train_size=train_size,
        template_id=template, num_demos=4 if method == "few_shot" else 0, eval_split=eval_split,
        config_hash="0" * 16, git_commit=None, versions={"promptlab": "0.2.0"},
        machine=Machine("node1", CPU, 2, 2, None, [load[0], 0.4, 0.3], [load[1], 0.5, 0.3]),
        started_at="2026-11-23T21:00:00", source_run="../train_run" if kind == "eval" else None,
    ).to_dict()


def _predictions(metric: str, values: np.ndarray) -> list[dict]:
    if metric in CHOICE_METRICS:
        labels = np.arange(len(values)) % 2
        return [{"idx": i, "label": int(y), "pred": int(y if c else 1 - y), "pred_name": "x",
                 "log_probs": [-0.1, -2.3], "score": float(c)}
                for i, (y, c) in enumerate(zip(labels, values, strict=True))]
    return [{"idx": i, "generation": "text", "answer": "text", "references": ["ref"],
             "scores": {metric: float(v)}, "score": float(v)} for i, v in enumerate(values)]


def _scores(value: float, metric: str) -> np.ndarray:
    """Choice: the first round(value * N_EVAL) examples right; generation: scores spread around value."""
    if metric in CHOICE_METRICS:
        return (np.arange(N_EVAL) < round(value * N_EVAL)).astype(float)
    return value + np.linspace(-0.1, 0.1, N_EVAL)


def write_config(run_dir: Path, method: str, seed: int, overrides: Iterable[str]) -> None:
    """config.yaml as promptlab-train writes it: the composed Hydra config (tiny model), resolved."""
    cfg = compose_config(["model=tiny_random", f"method={method}", f"seed={seed}", *overrides])
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def write_run(root: Path, rel: str, method: str, seed: int, value: float | None = None, *, scores=None,
              shuffle: bool = False, error: str | None = None, costs: dict | None = None,
              gen_costs: bool = False, config: Iterable[str] | None = None, **record) -> Path:
    """A run directory like promptlab-train writes: result.json (``make_record(**record)``), config.yaml when
    ``config`` (overrides) is given and, once completed, predictions.jsonl with per-example ``scores``
    (default: from ``value``)."""
    run_dir = root / rel
    run_dir.mkdir(parents=True)
    if config is not None:
        write_config(run_dir, method, seed, config)
    rec = make_record(rel, method, seed, **record)
    if rec["status"] == "completed":
        metric = rec["primary_metric"]
        scores = np.asarray(_scores(value, metric) if scores is None else scores, float)
        costs = costs or METHODS[method][1]
        trained = costs["trainable_params"] > 0
        rec["metrics"] = {metric: float(scores.mean())}
        if metric in CHOICE_METRICS:
            rec["metrics"]["macro_f1"] = float(scores.mean()) - 0.05
        share = costs["trainable_params"] / 34080
        rec["costs"] = {**costs, "total_params": 34080, "trainable_fraction": share,
                        "train_examples_per_second": 28.5 if trained else None, "eval_seconds": 0.5,
                        "eval_examples": N_EVAL, "peak_rss_mb": 650.0, "peak_rss_reset_per_run": True,
                        "peak_gpu_mb": None}
        # as promptlab-train writes them: choice runs generate nothing (0, not a gap)
        rec["costs"] |= ({"generated_tokens": 3000, "generation_seconds": 12.0, "generated_tokens_per_second": 250.0}
                         if gen_costs else {"generated_tokens": 0, "generation_seconds": 0.0,
                                            "generated_tokens_per_second": None})
        rec.update(num_train_examples=32 if trained else 0, finished_at="2026-11-23T21:01:00")
        rows = _predictions(metric, scores)[::-1 if shuffle else 1]
        (run_dir / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif rec["status"] == "failed":
        rec.update(error=error or "RuntimeError: boom", traceback="Traceback ...",
                   finished_at="2026-11-23T21:01:00")
    (run_dir / "result.json").write_text(json.dumps(rec, indent=2))
    return run_dir


def write_schema1_run(root: Path, rel: str, status: str = "completed") -> Path:
    """A record as promptlab wrote it before schema 2: accuracy only; no method_info, machine, kind or
    primary_metric; eval_split only once completed; predictions without ``score``."""
    run_dir = root / rel
    run_dir.mkdir(parents=True)
    rec = {"run_id": rel, "status": status, "method": "zero_shot", "model": "tiny_random", "dataset": "rte",
           "seed": 0, "k_shot": 16, "train_size": None, "template_id": 0, "num_demos": 0, "metrics": {},
           "costs": {}}
    if status == "completed":
        rec.update(metrics={"accuracy": 0.75, "macro_f1": 0.7}, eval_split="validation", num_train_examples=0,
                   costs={"trainable_params": 0, "train_seconds": 0.0, "eval_examples": 4})
        preds = [{"idx": i, "label": 1, "pred": int(i < 3), "pred_name": "x", "log_probs": [0, 0]}
                 for i in range(4)]
        (run_dir / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    (run_dir / "result.json").write_text(json.dumps(rec))
    return run_dir


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """Four methods x three seeds, at mixed depths, one failed and one crashed run; loads 0.1 to 1.9."""
    root = tmp_path / "runs"
    accs = {"zero_shot": [0.5, 0.5, 0.5], "few_shot": [0.55, 0.6, 0.65], "prompt_tuning": [0.5, 0.6, 0.7],
            "full_finetune": [0.9, 0.92, 0.94]}
    for method, values in accs.items():
        for seed, acc in enumerate(values):
            rel = (f"sweeps/2026-11-23_21-16-03_ab12cd/{seed}_{method}_sst2_s{seed}" if seed
                   else f"2026-11-23/21-16-03_{method}_sst2_s{seed}_abc123")
            load = (0.1, 1.9) if method == "full_finetune" and seed == 2 else (0.5, 0.7)
            write_run(root, rel, method, seed, acc, load=load)
    write_run(root, "sweeps/x/9_full_finetune_sst2_s3", "full_finetune", 3, status="failed",
              error="OutOfMemoryError: CUDA out of memory.\nTried to allocate 2 GiB")
    write_run(root, "sweeps/x/10_prompt_tuning_sst2_s3", "prompt_tuning", 3, status="running")
    return root


def add_generation_dataset(root: Path) -> None:
    """A generation task (ROUGE-L primary, no chance level) next to the choice one."""
    for method, values in {"zero_shot": [0.2, 0.3], "full_finetune": [0.4, 0.5]}.items():
        for seed, value in enumerate(values):
            write_run(root, f"gen/{method}_s{seed}", method, seed, value, dataset="samsum", metric="rougeL",
                      k_shot=None, train_size=64, gen_costs=True)


def row(summary, method, **where):
    for key, value in where.items():
        summary = summary[summary[key] == value]
    rows = summary[summary["method"] == method]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_load_runs_flattens_records_at_any_depth(runs):
    df = load_runs(runs)
    assert len(df) == 14
    assert {"score", "metric", "accuracy", "macro_f1", "trainable_params", "train_seconds", "peak_rss_mb",
            "run_dir", "display_name", "modifies", "trains", "kind", "eval_split", "machine",
            "load_start"} <= set(df.columns)
    assert set(df["status"]) == {"completed", "failed", "running"}
    assert (df["metric"] == "accuracy").all() and (df["kind"] == "train").all()
    done = df[df["status"] == "completed"]
    assert (done["score"] == done["accuracy"]).all()
    assert (df.loc[df["method"] == "zero_shot", "budget"] == "—").all()  # trains nothing, no demos: no budget
    assert (df.loc[df["method"] == "few_shot", "budget"] == "16/class").all()  # demos drawn from the training sample
    assert (df.loc[df["method"] == "prompt_tuning", "budget"] == "16/class").all()
    assert set(df["machine"]) == {f"{CPU} (2 cores)"}


def test_means_and_sample_stds_match_hand_computation(runs, tmp_path):
    summary = summarize(load_runs(runs))
    pt = row(summary, "prompt_tuning")  # accuracies 0.5, 0.6, 0.7
    assert pt["n_seeds"] == 3 and pt["metric"] == "accuracy"
    assert pt["score_mean"] == pytest.approx(60.0)
    assert pt["score_std"] == pytest.approx(10.0)  # sample std, ddof=1
    assert pt["macro_f1_mean"] == pytest.approx(55.0)
    fs = row(summary, "few_shot")
    assert fs["score_mean"] == pytest.approx(60.0)
    assert fs["score_std"] == pytest.approx(5.0)
    assert row(summary, "zero_shot")["score_std"] == pytest.approx(0.0)

    report = write_report(runs, tmp_path / "out")
    md = (tmp_path / "out" / "table.md").read_text()
    assert re.search(r"60\.0 \[[\d.]+, [\d.]+\] \|\s+10\.0 \|", md) and re.search(r"60\.0 \[[\d.]+, [\d.]+\] \|\s+5\.0 \|", md)
    assert "two-level bootstrap over seeds and evaluation examples" in md
    csv = (tmp_path / "out" / "table.csv").read_text().splitlines()
    pt_line = next(line for line in csv if ",prompt_tuning," in line)
    assert ",60.0,10.0," in pt_line.replace("60.00000000000001", "60.0").replace("9.999999999999998", "10.0")
    assert "640" in report.stdout and "8.21 KB" in report.stdout  # trainable params, checkpoint size


def test_rows_ordered_by_training_then_params_with_names_from_method_info(runs, tmp_path):
    info = MethodInfo("lora", "lora", "LoRA (r=8)", "low-rank adapters on q, v", True)
    for seed in range(2):
        write_run(runs, f"lora/s{seed}", "lora", seed, 0.8, info=info,
                  costs={"trainable_params": 2048, "train_seconds": 2.0, "checkpoint_bytes": 9000})
    summary = summarize(load_runs(runs))
    assert list(summary["method"]) == ["zero_shot", "few_shot", "prompt_tuning", "lora", "full_finetune"]
    assert list(display_table(summary)["Method"]) == ["Zero-shot", "Few-shot", "Prompt tuning", "LoRA (r=8)",
                                                      "Full fine-tuning"]
    write_report(runs, tmp_path / "out")
    qual = (tmp_path / "out" / "qualitative.md").read_text()
    assert "low-rank adapters on q, v" in qual and "virtual token embeddings (backbone frozen)" in qual
    assert "nothing (manual prompt)" in qual and "all weights" in qual


def test_generation_dataset_next_to_a_choice_one(runs, tmp_path):
    add_generation_dataset(runs)
    summary = summarize(load_runs(runs))
    ft = row(summary, "full_finetune", dataset="samsum")  # ROUGE-L 0.4, 0.5
    assert ft["metric"] == "rougeL" and ft["budget"] == "64 total"
    assert (ft["score_mean"], ft["score_std"]) == (pytest.approx(45.0), pytest.approx(7.0710678))
    report = write_report(runs, tmp_path / "out")
    md = (tmp_path / "out" / "table.md").read_text()
    samsum, sst2 = md.split("## samsum")[1].split("## sst2")[0], md.split("## sst2")[1]
    header = next(line for line in samsum.splitlines() if line.startswith("| Method"))
    assert "ROUGE-L" in header and "Gen tok/s" in header and "Gen time" in header and "Macro-F1" not in header
    assert re.search(r"45\.0 \[[\d.]+, [\d.]+\] \|\s+7\.1 \|", samsum) and "250" in samsum and "12 s" in samsum
    sst2_header = next(line for line in sst2.splitlines() if line.startswith("| Method"))
    assert "Accuracy (%)" in sst2_header and "Macro-F1 (%)" in sst2_header and "Gen tok/s" not in sst2_header
    assert "Gen time" not in sst2_header
    assert "ROUGE-L ×100" in samsum and "Accuracy and macro-F1 in %" in sst2
    assert (tmp_path / "out" / "figures" / "samsum_score_vs_params.png") in report.files
    ax = plot_score_vs_params(load_runs(runs), dataset="samsum").axes[0]
    assert ax.get_ylabel() == "ROUGE-L"
    assert "chance" not in [t.get_text() for t in ax.get_legend().get_texts()]  # generation: no chance level


def test_schema1_records_stay_readable(runs, tmp_path):
    write_schema1_run(runs, "old/rte_zs_s0")
    write_schema1_run(runs, "old/rte_zs_s1", status="failed")  # no eval_split: joins its completed sibling
    df = load_runs(runs)
    old = df[df["dataset"] == "rte"]
    assert set(old["metric"]) == {"accuracy"} and set(old["kind"]) == {"train"}
    assert set(old["eval_split"]) == {"validation"} and set(old["budget"]) == {"—"}
    assert set(old["display_name"]) == {"Zero shot"} and set(old["modifies"]) == {"—"}
    zs = row(summarize(df), "zero_shot", dataset="rte")
    assert (zs["score_mean"], zs["n_seeds"], zs["n_failed"]) == (75.0, 1, 1)
    sig = significance(df)
    assert (sig["dataset"] == "rte").sum() == 0  # one method: nothing to pair
    assert records_mod.read_record(runs / "old/rte_zs_s0/result.json")[1] is None
    write_report(runs, tmp_path / "out")
    assert "75.0" in (tmp_path / "out" / "table.md").read_text()


def test_eval_record_is_not_merged_with_its_training_record(runs, tmp_path):
    for seed in range(3):
        write_run(runs, f"evals/pt_test_s{seed}", "prompt_tuning", seed, 0.8, kind="eval", eval_split="test")
    df = load_runs(runs)
    summary = summarize(df)
    train = row(summary, "prompt_tuning", kind="train")
    test = row(summary, "prompt_tuning", kind="eval")
    assert (train["eval_split"], train["score_mean"], train["n_seeds"]) == ("validation", 60, 3)
    assert (test["eval_split"], test["score_mean"], test["n_seeds"]) == ("test", pytest.approx(80.0), 3)
    assert len(records_mod.latest_completed(df)) == 15  # 12 training runs + 3 eval runs
    table = display_table(summary[summary["method"] == "prompt_tuning"])
    assert list(table["Split"]) == ["validation", "test"] and list(table["Kind"]) == ["train", "eval"]
    sig = significance(df)  # the eval row is compared with nothing scored on validation
    assert not sig["method_a"].str.contains("test").any() and not sig["method_b"].str.contains("test").any()


def test_failed_and_running_runs_are_counted_and_listed(runs, tmp_path):
    write_run(runs, "only_failed/rte_s0", "prompt_tuning", 0, status="failed", dataset="rte", error="ValueError: x")
    summary = summarize(load_runs(runs))
    ff, pt = row(summary, "full_finetune", dataset="sst2"), row(summary, "prompt_tuning", dataset="sst2")
    assert (ff["n_seeds"], ff["n_failed"], ff["n_running"]) == (3, 1, 0)
    assert (pt["n_seeds"], pt["n_failed"], pt["n_running"]) == (3, 0, 1)
    rte = row(summary, "prompt_tuning", dataset="rte")  # a group with no completed run is kept
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
    expected += [f"figures/sst2_{name}.{ext}" for ext in ("png", "svg")
                 for name in ("score_vs_params", "score_vs_time", "prompt_sensitivity")]
    for name in expected:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
        assert out / name in report.files
    assert not (out / "figures" / "sst2_budget.png").exists()  # a single data budget: no budget curve
    tex = (out / "table.tex").read_text()
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in tex
    assert r"Accuracy (\%)" in tex and r"$\pm$" in tex and "tiny\\_random" in tex
    assert r"\label{tab:promptlab-sst2}" in tex
    assert r"\caption{sst2 · tiny\_random. Accuracy and macro-F1 in \%" in tex


def test_latex_from_styler_escapes_cells_headers_and_caption():
    import pandas as pd

    table = pd.DataFrame({"Method": ["top_k 5% & more"], "Accuracy (%)": ["60.0 ± 10.0"], "Params": ["—"]})
    tex = to_latex(table, "Costs_in 100% units", "tab:x")
    assert r"\begin{tabular}{lrr}" in tex
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"top\_k 5\% \& more & 60.0 $\pm$ 10.0 & -- \\" in tex
    assert r"Method & Accuracy (\%) & Params \\" in tex
    assert r"\caption{Costs\_in 100\% units}" in tex and r"\label{tab:x}" in tex
    md = to_markdown(table.assign(Note=["a|b"]))
    lines = md.splitlines()
    assert lines[0].startswith("| Method") and "Accuracy (%)" in lines[0] and "Params" in lines[0]
    assert re.fullmatch(r"\|:-+\|-+:\|-+:\|:-+\|", lines[1])  # numbers right-aligned, text left
    assert r"a\|b" in lines[2]


def test_table_caption_and_time_figure_name_the_machine_and_load(runs, tmp_path):
    note = f"{CPU} (2 cores), 1-min load 0.1–1.9"
    write_report(runs, tmp_path / "out")
    assert f"Timings measured on {note}." in (tmp_path / "out" / "table.md").read_text()
    assert note in (tmp_path / "out" / "qualitative.md").read_text()
    assert note in (tmp_path / "out" / "index.html").read_text()
    ax = plot_score_vs_time(load_runs(runs)).axes[0]
    assert note in ax.get_xlabel()


def test_budget_curve_appears_with_two_budgets(runs, tmp_path):
    for seed in range(2):
        write_run(runs, f"k32/pt_s{seed}", "prompt_tuning", seed, 0.8, k_shot=32)
    write_report(runs, tmp_path / "out")
    assert (tmp_path / "out" / "figures" / "sst2_budget.png").is_file()
    md = (tmp_path / "out" / "table.md").read_text()
    assert "32/class" in md and "16/class" in md  # the budget column appears when a method ran several


def test_rerun_of_a_seed_replaces_the_earlier_run(tmp_path):
    write_run(tmp_path, "a", "prompt_tuning", 0, 0.5)
    rerun = write_run(tmp_path, "b", "prompt_tuning", 0, 0.7)
    rec = json.loads((rerun / "result.json").read_text())
    (rerun / "result.json").write_text(json.dumps({**rec, "finished_at": "2026-11-24T09:00:00"}))
    pt = row(summarize(load_runs(tmp_path)), "prompt_tuning")
    assert (pt["n_seeds"], pt["n_runs"]) == (1, 2)
    assert pt["score_mean"] == pytest.approx(70.0)


def test_sweep_of_num_virtual_tokens_gives_a_row_per_value(tmp_path):
    """The README's sweep: one row per num_virtual_tokens, each with its own seeds, labelled with its value."""
    for n, accs in {5: [0.5, 0.6], 20: [0.7, 0.8]}.items():
        for seed, acc in enumerate(accs):
            write_run(tmp_path, f"sweep/{n}_s{seed}", "prompt_tuning", seed, acc,
                      config=[f"method.peft.num_virtual_tokens={n}"])
    df = load_runs(tmp_path)
    assert df["group_key"].nunique() == 2 and len(records_mod.latest_completed(df)) == 4
    summary = summarize(df)
    assert list(summary["config_label"]) == ["num_virtual_tokens=5", "num_virtual_tokens=20"]
    assert list(summary["config_diff"]) == ["method.peft.num_virtual_tokens=5", "method.peft.num_virtual_tokens=20"]
    assert list(summary["seeds"]) == ["0 1", "0 1"]
    assert list(summary["score_mean"]) == [pytest.approx(55.0), pytest.approx(75.0)]
    labels = ["Prompt tuning (num_virtual_tokens=5)", "Prompt tuning (num_virtual_tokens=20)"]
    assert list(display_table(summary)["Method"]) == labels
    sig = significance(df)
    assert [sig["method_a"].iloc[0], sig["method_b"].iloc[0]] == labels and sig["n_seeds"].iloc[0] == 2
    ax = plot_score_vs_params(df).axes[0]
    # long labels: the legend says "Prompt tuning [a] (n=2)", a footnote under the figure maps [a] to its config
    legend = {t.get_text() for t in ax.get_legend().get_texts()}
    assert {"Prompt tuning [a] (n=2)", "Prompt tuning [b] (n=2)"} <= legend
    assert "[a] num_virtual_tokens=5\n[b] num_virtual_tokens=20" in [t.get_text() for t in ax.figure.texts]
    markers = {c.get_label(): c.lines[0].get_marker() for c in ax.containers}  # one colour: a marker each
    assert markers["Prompt tuning [a] (n=2)"] != markers["Prompt tuning [b] (n=2)"]

    report = write_report(tmp_path, tmp_path / "out")
    assert all(label in report.stdout for label in labels)
    import pandas as pd

    assert list(pd.read_csv(tmp_path / "out" / "table.csv")["config_diff"]) == list(summary["config_diff"])


def test_labels_name_only_differing_keys_by_their_shortest_unambiguous_suffix(tmp_path):
    write_run(tmp_path, "a", "prompt_tuning", 0, 0.5, config=["method.max_steps=3"])
    write_run(tmp_path, "b", "prompt_tuning", 0, 0.6, config=["method.max_steps=30", "method.lr=0.1"])
    summary = summarize(load_runs(tmp_path))
    # trainer.max_steps mirrors method.max_steps: in the full diff, not repeated in the label
    assert list(summary["config_label"]) == ["lr=0.03, method.max_steps=3", "lr=0.1, method.max_steps=30"]
    assert summary["config_diff"].iloc[0] == "method.lr=0.03; method.max_steps=3; trainer.max_steps=3"
    assert summary["n_seeds"].tolist() == [1, 1]  # the same seed with another config: another row
    assert configs.short_name("data.eval_limit", ["data.eval_limit", "data.name", "model.name"]) == "eval_limit"
    assert configs.short_name("model.name", ["data.hub.name", "data.name", "model.name"]) == "model.name"


def test_runs_with_another_eval_limit_are_another_row(tmp_path):
    for limit in (16, 32):
        for seed in range(2):
            write_run(tmp_path, f"zs_{limit}_s{seed}", "zero_shot", seed, 0.4 + limit / 100,
                      config=[f"data.eval_limit={limit}"])
    df = load_runs(tmp_path)
    summary = summarize(df)
    assert list(summary["config_label"]) == ["eval_limit=16", "eval_limit=32"]
    assert list(summary["n_seeds"]) == [2, 2]
    assert plot_prompt_sensitivity(df) is None  # one template ran: no prompt sensitivity to draw
    for limit in (16, 32):
        write_run(tmp_path, f"zs_{limit}_t1", "zero_shot", 0, 0.5, template=1, config=[f"data.eval_limit={limit}"])
    df = load_runs(tmp_path)
    ticks = [t.get_text() for t in plot_prompt_sensitivity(df).axes[0].get_xticklabels()]
    assert "eval_limit=16" in ticks[0] and "eval_limit=32" in ticks[1]


def test_identical_configs_with_other_seeds_are_one_row(tmp_path):
    for seed in range(2):
        write_run(tmp_path, f"s{seed}", "prompt_tuning", seed, 0.5 + 0.1 * seed, config=[])
    summary = summarize(load_runs(tmp_path))
    pt = row(summary, "prompt_tuning")
    assert (pt["n_seeds"], pt["n_repeats"], pt["config_label"]) == (2, 0, "")
    assert display_table(summary)["Method"].tolist() == ["Prompt tuning"]


def test_exact_repeat_of_a_run_is_counted_not_lost(tmp_path):
    write_run(tmp_path, "a", "prompt_tuning", 0, 0.5, config=[])
    rerun = write_run(tmp_path, "b", "prompt_tuning", 0, 0.7, config=[])
    rec = json.loads((rerun / "result.json").read_text())
    (rerun / "result.json").write_text(json.dumps({**rec, "finished_at": "2026-11-24T09:00:00"}))
    summary = summarize(load_runs(tmp_path))
    pt = row(summary, "prompt_tuning")
    assert (pt["n_seeds"], pt["n_completed"], pt["n_repeats"]) == (1, 2, 1)
    assert pt["score_mean"] == pytest.approx(70.0)  # the latest run of the seed
    table = display_table(summary, compact=True)
    assert (table["Seeds"].iloc[0], table["Runs"].iloc[0]) == ("1", "2")
    assert REPEATS_NOTE in caption(summary)


def test_runs_without_a_readable_config_still_read(tmp_path, caplog):
    write_run(tmp_path, "new", "prompt_tuning", 0, 0.5, config=[])
    write_run(tmp_path, "old", "prompt_tuning", 1, 0.7)  # written before config.yaml
    broken = write_run(tmp_path, "broken", "prompt_tuning", 2, 0.6)
    (broken / "config.yaml").write_text("method: {name: [unclosed\n")
    with caplog.at_level(logging.WARNING, logger="promptlab.report"):
        df = load_runs(tmp_path)
    assert any("broken/config.yaml" in r.getMessage() for r in caplog.records)
    assert len(df) == 3 and df["group_key"].isna().sum() == 2
    summary = summarize(df)
    assert list(summary["config_label"]) == ["", "config unknown"]
    assert list(summary["n_seeds"]) == [1, 2]  # the two without a config: grouped by their records, as before


def test_cli_on_a_real_tiny_model_sweep(tmp_path, data_root, capsys):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "promptlab.train", "-m", "model=tiny_random", "logger=none", "data.k_shot=2",
           f"paths.data_root={data_root}", "data.dev_size=8", f"paths.cache_dir={tmp_path / 'cache'}", "method=prompt_tuning",
           "method.max_steps=2", "method.batch_size=4", "method.peft.num_virtual_tokens=5,20", f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(cmd, env=subprocess_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "Prompt tuning (num_virtual_tokens=5)" in out and "Prompt tuning (num_virtual_tokens=20)" in out


def simulated_null_differences(rng, experiments: int, seeds: int, examples: int, seed_sd: float,
                               example_sd: float) -> np.ndarray:
    """Per-example correctness differences of two methods with the same distribution (a true difference of 0):
    each (method, seed) has its own skill (``seed_sd``: training randomness), each example a difficulty shared by
    both and an interaction with each method (``example_sd``), and the answer is a coin flip with that chance."""
    out = np.empty((experiments, seeds, examples))
    for k in range(experiments):
        difficulty = rng.normal(0, 1.5, examples)
        correct = []
        for _ in range(2):
            logit = (1 + rng.normal(0, seed_sd, (seeds, 1)) + rng.normal(0, example_sd, (1, examples)) - difficulty
                     + rng.normal(0, example_sd, (seeds, examples)))
            correct.append(rng.random((seeds, examples)) < 1 / (1 + np.exp(-logit)))
        out[k] = correct[0].astype(float) - correct[1]
    return out


@pytest.mark.parametrize(("seed_sd", "example_sd"), [(0.0, 0.5), (0.3, 0.5), (0.8, 0.3)])
def test_the_hierarchical_interval_covers_a_true_null_difference(seed_sd, example_sd):
    """3 seeds x 400 examples, no true difference: the 95% interval covers 0 in at least 90% of simulated
    experiments, whether examples or seeds dominate the noise. Pooling every seed's examples as independent
    pairs (the report's old interval) does not hold when seeds differ."""
    rng = np.random.default_rng(7)
    experiments = simulated_null_differences(rng, 300, 3, 400, seed_sd, example_sd)
    covered = [hierarchical_interval(d, n_resamples=500, seed=k).low <= 0 <= hierarchical_interval(
        d, n_resamples=500, seed=k).high for k, d in enumerate(experiments)]
    assert np.mean(covered) >= 0.90
    if seed_sd >= 0.8:
        pooled = [stats.bootstrap((d.ravel(),), np.mean, n_resamples=500, method="percentile",
                                  rng=np.random.default_rng(k)).confidence_interval for k, d in enumerate(experiments[:100])]
        assert np.mean([ci.low <= 0 <= ci.high for ci in pooled]) < 0.80


def test_the_hierarchical_interval_on_one_seed_and_edge_cases():
    rng = np.random.default_rng(1)
    a, b = rng.random(200) < 0.8, rng.random(200) < 0.4
    ci = hierarchical_interval([a.astype(float) - b], n_resamples=2000, seed=0)
    assert ci.mean == pytest.approx(np.mean(a.astype(float) - b)) and ci.low < ci.mean < ci.high
    assert ci.low < 0.4 < ci.high and (ci.seeds, ci.examples) == (1, 200)  # the generating process's difference
    same = np.r_[np.ones(80), np.zeros(20)]
    zero = hierarchical_interval([same - same])
    assert (zero.mean, zero.low, zero.high) == (0.0, 0.0, 0.0) and not zero.excludes_zero
    assert hierarchical_interval([same], seed=3) == hierarchical_interval([same], seed=3)  # seeded
    assert np.isnan(hierarchical_interval(np.empty((0, 0))).mean)
    assert np.isnan(hierarchical_interval([[1.0]]).low)
    assert hierarchical_interval(np.ones((3, 50)) * 0.5).excludes_zero


def test_significance_pairs_matched_by_seed_and_index(tmp_path):
    rng = np.random.default_rng(0)
    for seed in range(3):
        correct = rng.random(N_EVAL) < 0.6
        write_run(tmp_path, f"zs{seed}", "zero_shot", seed, scores=correct)
        # few-shot: the very same predictions, written in another order: identical once matched by idx
        write_run(tmp_path, f"fs{seed}", "few_shot", seed, scores=correct, shuffle=True)
        write_run(tmp_path, f"ft{seed}", "full_finetune", seed, scores=rng.random(N_EVAL) < 0.95)
    sig = significance(load_runs(tmp_path)).set_index(["method_a", "method_b"])
    same = sig.loc[("Zero-shot", "Few-shot")]
    assert (same["diff"], same["ci_low"], same["ci_high"]) == (0.0, 0.0, 0.0)
    assert same["n_examples"] == N_EVAL and same["n_seeds"] == 3
    better = sig.loc[("Zero-shot", "Full fine-tuning")]  # A worse than B: the whole CI is below 0
    assert better["ci_high"] < 0 and better["ci_excludes_0"]
    assert better["p_value"] < 0.05 and better["t"] < 0


def test_significance_on_sentence_level_scores_of_a_corpus_metric(tmp_path):
    task = {"dataset": "wmt", "metric": "chrf", "k_shot": None, "train_size": 64}
    for seed in range(2):
        write_run(tmp_path, f"zs{seed}", "zero_shot", seed, 0.3 + 0.01 * seed, **task)
        write_run(tmp_path, f"ft{seed}", "full_finetune", seed, 0.5, **task)
    sig = significance(load_runs(tmp_path))
    assert len(sig) == 1 and sig["metric"].iloc[0] == "chrf"
    assert sig["diff"].iloc[0] == pytest.approx(-19.5) and sig["ci_high"].iloc[0] < 0
    write_report(tmp_path, tmp_path / "out")
    text = (tmp_path / "out" / "significance.md").read_text()
    assert "chrF are corpus-level metrics: their Δ and CI are over sentence-level scores" in text
    assert "chrF: A / B" in text


def test_figures_pareto_chance_line_value_labels_and_colours(runs):
    assert pareto_front([0, 0, 10, 1e8], [60, 65, 80, 78]).tolist() == [False, True, True, False]
    assert pareto_front([0, 0, 10], [60, 65, 50], higher_is_better=False).tolist() == [True, False, True]
    fig = plot_score_vs_params(load_runs(runs))
    ax = fig.axes[0]
    fig.canvas.draw()
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[0] == "0" and ax.get_xscale() == "log"
    assert ax.get_xticks()[0] < 640  # frozen methods sit left of the smallest trained one
    assert ax.get_ylabel() == "Accuracy (%)"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "Pareto front" in legend and "chance" in legend
    chance = next(line for line in ax.get_lines() if line.get_label() == "chance")
    assert chance.get_linestyle() == ":" and chance.get_ydata()[0] == pytest.approx(50.0)
    assert {"50.0", "60.0", "92.0"} <= {t.get_text() for t in ax.texts}  # each point's mean, one decimal
    methods = list(METHODS)
    colors = method_colors(methods)
    assert len(set(colors.values())) == 4 and colors == method_colors(reversed(methods))


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

    record = make_record("remote", "prompt_tuning", 7, status="running", dataset="samsum", metric="rougeL",
                         k_shot=None, train_size=64)

    class Run:
        def __init__(self, run_id, seed, value, with_record):
            self.id, self.state, self.url = run_id, "finished", f"https://wandb.ai/team/p/runs/{run_id}"
            self.config = {"method": {"name": "prompt_tuning", "num_demos": 0}, "model": {"name": "tiny_random"},
                           "data": {"name": "sst2", "k_shot": 16, "train_size": None, "template": 0}, "seed": seed}
            if with_record:
                self.config["record"] = record
            self.summary = {"eval/accuracy": value, "eval/rougeL": value, "cost/trainable_params": 640,
                            "cost/train_seconds": 1.5, "status": "completed"}

    class Api:
        def __init__(self, timeout=None):
            pass

        def runs(self, path):
            assert path == "team/p"
            local = load_runs(runs)["run_id"].iloc[0]
            return [Run("remote-s7", 7, 0.8, False), Run(local, 0, 0.1, False), Run("remote", 7, 0.4, True)]

    monkeypatch.setattr(wandb, "Api", Api)
    df = records_mod.load_runs(runs, wandb_project="team/p")
    assert len(df) == 16  # the run that is also local is read once
    old = df[df["run_id"] == "remote-s7"].iloc[0]  # no record in the config: the Hydra config, accuracy
    assert (old["source"], old["score"], old["seed"], old["metric"]) == ("wandb", 0.8, 7, "accuracy")
    new = df[df["run_id"] == "remote"].iloc[0]  # the record's fields win; status from the summary
    assert (new["dataset"], new["metric"], new["score"]) == ("samsum", "rougeL", 0.4)
    assert new["status"] == "completed"
    assert new["display_name"] == "Prompt tuning" and new["machine"] == f"{CPU} (2 cores)"
    assert old["group_key"] == new["group_key"] is not None  # the run's config, minus the logged record


def test_dashboard_is_self_contained(runs, tmp_path):
    write_report(runs, tmp_path / "out")
    html = (tmp_path / "out" / "index.html").read_text()
    assert "<table id=" in html and html.count('<img src="data:image/png;base64,') >= 2
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
    # A copy of the page with a probe: after load, each image records the size the browser decoded and showed.
    probe = """<script>window.addEventListener("load", () => document.querySelectorAll("img").forEach(
      i => i.setAttribute("data-rendered", i.naturalWidth + "x" + i.naturalHeight + "/" + i.width)));</script>"""
    (out / "probe.html").write_text((out / "index.html").read_text().replace("</body>", probe + "</body>"))

    def chromium(*args):
        profile = tmp_path / f"profile{len(list(tmp_path.iterdir()))}"
        cmd = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)

    dom = chromium("--window-size=1280,1600", "--virtual-time-budget=5000", "--dump-dom",
                   (out / "probe.html").as_uri()).stdout
    assert dom.count("<table") >= 3  # results, qualitative, significance (+ not completed)
    assert "Prompt tuning" in dom and "60.0 ± 10.0" in dom
    sizes = re.findall(r'<img src="data:image/png;base64,[^"]+"[^>]*data-rendered="(\d+)x(\d+)/(\d+)"', dom)
    assert len(sizes) >= 2 and all(int(w) > 0 and int(h) > 0 for w, h, _ in sizes)
    assert all(int(shown) >= 720 for _, _, shown in sizes)  # figures at (nearly) full page width

    shot = tmp_path / "shot.png"
    chromium("--window-size=1280,1600", f"--screenshot={shot}", (out / "index.html").as_uri())
    pixels = imread(shot)[..., :3]
    assert pixels.std() > 0.05  # not blank
    saturated = pixels.max(axis=-1) - pixels.min(axis=-1) > 0.3
    assert saturated.sum() > 200  # coloured pixels: the figures' markers and lines were painted


def test_a_cost_column_is_one_declaration(tmp_path, monkeypatch):
    """report/columns.py: an entry in COST_COLUMNS is read from the records, aggregated and shown."""
    from promptlab.report import columns, records, tables

    extra = columns.CostColumn("model_load_seconds", "max", "Load time", columns.fmt_seconds, compact="Load")
    monkeypatch.setattr(columns, "COST_COLUMNS", (*columns.COST_COLUMNS, extra))
    for seed, seconds in ((0, 12.0), (1, 30.0)):
        write_run(tmp_path, f"pt{seed}", "prompt_tuning", seed, 0.7,
                  costs={"trainable_params": 640, "model_load_seconds": seconds})
    summary = tables.summarize(records.load_runs(tmp_path))
    assert summary["model_load_seconds_max"].iloc[0] == 30.0
    assert tables.display_table(summary)["Load time"].iloc[0] == "30 s"
    assert tables.display_table(summary, compact=True)["Load"].iloc[0] == "30 s"


def test_report_opens_with_a_verdict_and_a_break_even_table(runs, tmp_path):
    report = write_report(runs, tmp_path / "out")
    # the fixture's records carry no dev scores: the verdict says it chose on eval
    assert "Verdict: Best on eval: Full fine-tuning, 92.0" in report.stdout
    md = (tmp_path / "out" / "table.md").read_text()
    assert "### Verdict" in md and "Total @10M" in md
    html = (tmp_path / "out" / "index.html").read_text()
    assert html.index("<h2>Verdict</h2>") < html.index("<table id=")  # the dashboard opens with it
    assert (tmp_path / "out" / "figures" / "sst2_break_even.png").exists()


def test_loss_curves_from_the_csv_logs_of_trained_runs(runs, tmp_path):
    from promptlab.report.figures import plot_loss_curves

    assert plot_loss_curves(load_runs(runs)) is None  # no CSV logs: no figure
    for run_dir in runs.rglob("*full_finetune_sst2_s*"):
        if (run_dir / "predictions.jsonl").exists():  # a completed run: Lightning's CSVLogger layout
            (run_dir / "csv").mkdir()
            (run_dir / "csv" / "metrics.csv").write_text("epoch,step,train/loss,lr-AdamW\n,4,,1e-4\n0,4,0.9,\n0,9,0.5,\n")
    fig = plot_loss_curves(load_runs(runs))
    ax = fig.axes[0]
    assert len(ax.lines) == 3 and list(ax.lines[0].get_ydata()) == [0.9, 0.5]  # one line per seed, NaN rows dropped
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Full fine-tuning"]
    report = write_report(runs, tmp_path / "out")
    assert (tmp_path / "out" / "figures" / "sst2_loss.png") in report.files
