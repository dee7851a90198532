"""Fair by construction (tiny model): every method with a seed sees the same training examples; dev, the budget
and eval never overlap; the headline readout is chosen on dev and never reads eval; length-normalised scores
are what lm-evaluation-harness computes; a run that diverges is a status, not a result; records are strict
JSON; a sweep optimises dev unless told otherwise on purpose."""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import read_predictions, read_result, subprocess_env, write_jsonl

import promptlab.run.execute
import promptlab.train
from promptlab import tuning
from promptlab.errors import ConfigError, Diverged
from promptlab.evaluation import readouts
from promptlab.readout import ChoiceReadout
from promptlab.report import latest_completed, load_runs, summarize
from promptlab.run import plan, run
from promptlab.run.execute import objective_value
from promptlab.tasks.loading import input_text
from promptlab.tracking import write_json_atomic

TRAINED = ("prompt_tuning", "lora", "full_finetune")


def strict_json(path):
    """The file parsed by a reader that refuses NaN and Infinity (as JavaScript's JSON.parse does)."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


# ---- one split policy ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 3])
def test_every_method_with_a_seed_draws_the_same_training_examples(make_cfg, seed):
    """Prompting (few-shot's demonstrations come from it), PEFT and full fine-tuning: one budget per seed."""
    pools = {m: [r["idx"] for r in plan(make_cfg(f"seed={seed}", method=m)).pool] for m in (*TRAINED, "few_shot")}
    assert len({tuple(p) for p in pools.values()}) == 1 and len(pools["lora"]) == 4
    p = plan(make_cfg(f"seed={seed}", method="few_shot"))
    assert {r["idx"] for r in p.demos} <= set(pools["few_shot"])
    other = plan(make_cfg(f"seed={seed + 1}", method="lora"))
    assert [r["idx"] for r in other.pool] != pools["lora"]


def test_records_name_the_training_sample_and_the_splits(make_cfg, tmp_path):
    recs = {m: run(make_cfg("seed=2", method=m), tmp_path / m) for m in ("prompt_tuning", "full_finetune", "few_shot")}
    assert recs["prompt_tuning"]["train_idx"] == recs["full_finetune"]["train_idx"] == recs["few_shot"]["train_idx"]
    assert len(recs["prompt_tuning"]["train_idx"]) == 4 and recs["prompt_tuning"]["num_train_examples"] == 4
    splits = recs["full_finetune"]["splits"]
    assert splits["dev"]["rows"] == 8 and splits["eval"]["rows"] == 10 and splits["train"]["rows"] == 12
    assert run(make_cfg("seed=2"), tmp_path / "zs")["train_idx"] == []  # zero-shot reads no training example


@pytest.mark.parametrize("method", ["zero_shot", "few_shot", "prompt_tuning"])
def test_dev_never_overlaps_the_budget_or_eval(make_cfg, method):
    p = plan(make_cfg(method=method))
    texts = lambda rows: {input_text(p.spec, r) for r in rows}  # noqa: E731
    assert not texts(p.task.dev) & (texts(p.task.train) | texts(p.task.eval))
    assert not texts(p.pool) & (texts(p.task.dev) | texts(p.task.eval))


# ---- readouts: every one computed, the headline chosen on dev ---------------------------------------------


def rte_cfg(make_cfg, *overrides, method="zero_shot"):
    """RTE's answers ("yes", "no") differ in length: the length normalisations differ from the raw sum."""
    return make_cfg("data=rte", "data.k_shot=2", "data.dev_size=8", "calibration=[contextual,batch]", *overrides,
                    method=method)


def test_length_normalised_accuracy_is_a_hand_computation(make_cfg, run_dir):
    rec = run(rte_cfg(make_cfg), run_dir)
    rows = read_predictions(run_dir)
    for name, key in (("per_token", "answer_tokens"), ("per_char", "answer_chars"), ("per_byte", "answer_bytes")):
        preds = [int(np.argmax(np.array(r["answer_logprobs"]) / np.array(r[key]))) for r in rows]
        assert preds == [r[f"pred@{name}"] for r in rows]
        assert rec["metrics"][f"accuracy@{name}"] == pytest.approx(np.mean([p == r["label"] for p, r in
                                                                            zip(preds, rows, strict=True)]))
    # lm-evaluation-harness's acc_norm divides by the answer's characters: "yes" 3, "no" 2
    assert all(r["answer_chars"] == [3, 2] for r in rows)
    raw = [int(np.argmax(r["answer_logprobs"])) for r in rows]
    assert raw == [r["pred"] for r in rows]  # acc: the summed log-likelihood
    for r in rows:  # log_probs: the same sums, normalised over the answers
        assert r["log_probs"] == pytest.approx(torch.tensor(r["answer_logprobs"]).log_softmax(0).tolist(), abs=2e-5)


def test_the_headline_is_the_readout_best_on_dev(make_cfg, run_dir):
    rec = run(rte_cfg(make_cfg), run_dir)
    head = rec["headline"]
    assert head["chosen_on"] == "dev" and head["default"] == "raw"
    assert head["readouts"] == ["raw", "per_token", "per_char", "per_byte", "contextual", "batch"]
    dev = {r: rec["dev_metrics"][readouts.metric_key("accuracy", r)] for r in head["readouts"]}
    best = max(dev.values())
    assert head["readout"] == next(r for r in head["readouts"] if dev[r] == best)  # ties: raw first, then in order
    assert head["metric"] == readouts.metric_key("accuracy", head["readout"])
    assert objective_value(rec) == rec["dev_metrics"][head["metric"]]
    assert (run_dir / "dev_predictions.jsonl").is_file()


def test_without_selection_the_task_default_heads_the_row(make_cfg, run_dir):
    rec = run(rte_cfg(make_cfg, "select_readout=false", "data.readout=per_char"), run_dir)
    assert rec["headline"] == {**rec["headline"], "readout": "per_char", "metric": "accuracy@per_char",
                               "chosen_on": "task default"}


def test_the_readout_choice_never_reads_eval(make_cfg, data_root, tmp_path):
    first = run(rte_cfg(make_cfg), tmp_path / "a")
    path = data_root / "rte" / "validation.jsonl"
    write_jsonl(path, [{**r, "label": 1 - r["label"]} for r in map(json.loads, path.open())])
    second = run(rte_cfg(make_cfg), tmp_path / "b")
    assert second["dev_metrics"] == first["dev_metrics"] and second["headline"] == first["headline"]
    assert second["metrics"]["accuracy"] == pytest.approx(1 - first["metrics"]["accuracy"])


def test_a_calibrated_default_readout_must_be_computed(make_cfg, run_dir, monkeypatch):
    monkeypatch.setattr(promptlab.run.execute, "load_backbone", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ConfigError, match="data.readout=batch is a calibration this run does not compute"):
        run(make_cfg("data.readout=batch"), run_dir)
    with pytest.raises(ConfigError, match="data.readout='bogus' is unknown"):
        run(make_cfg("data.readout=bogus"), run_dir)


# ---- divergence is a status -------------------------------------------------------------------------------


def test_a_diverged_run_is_recorded_as_diverged_not_as_a_result(make_cfg, run_dir):
    with pytest.raises(Diverged, match="training loss nan"):
        run(make_cfg("method.lr=1000", method="full_finetune"), run_dir)
    rec = strict_json(run_dir / "result.json")
    assert rec["status"] == "diverged" and rec["diverged_at_step"] >= 0 and "Diverged" in rec["error"]
    assert rec["metrics"] == {} and not (run_dir / "predictions.jsonl").exists()
    assert math.isnan(objective_value(rec))  # a sweeper sees a failed trial
    assert promptlab.train.previous_run(run_dir, make_cfg("method.lr=1000", method="full_finetune")) == rec


def test_non_finite_answer_scores_end_the_run_as_diverged(make_cfg, run_dir, monkeypatch):
    real = ChoiceReadout.scores
    monkeypatch.setattr(ChoiceReadout, "scores", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(Diverged, match="answer scores are not finite for 8 of 8"):
        run(make_cfg(), run_dir)  # dev is scored first
    assert read_result(run_dir)["status"] == "diverged"


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "0"])
def test_a_learning_rate_that_is_not_a_positive_number_is_refused_before_the_model_loads(make_cfg, run_dir,
                                                                                         monkeypatch, value):
    monkeypatch.setattr(promptlab.run.execute, "load_backbone", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ConfigError, match="method.lr=.* is not a number > 0") as err:
        run(make_cfg(f"method.lr={value}", method="lora"), run_dir)
    assert "method.lr=0.03" in err.value.fix


def test_a_sweep_lists_a_diverged_member_and_goes_on(tmp_path, data_root):
    """lr=1e30 overflows the weights in any precision; lr=1000 stayed finite under bf16-mixed on a CPU with AMX."""
    proc = subprocess.run(
        [sys.executable, "-m", "promptlab.train", "-m", "model=tiny_random", "logger=none", "method=full_finetune",
         "method.lr=1e-4,1e30", "method.max_steps=3", "method.batch_size=4", "data.k_shot=2", "data.dev_size=8",
         f"paths.data_root={data_root}", f"paths.cache_dir={tmp_path / 'cache'}",
         f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        env=subprocess_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]  # a diverged trial is an outcome, not a failure of the sweep
    assert "1 completed, 1 diverged" in proc.stderr and "diverged: " in proc.stderr
    statuses = sorted(strict_json(f)["status"] for f in (tmp_path / "sweep").glob("*/result.json"))
    assert statuses == ["completed", "diverged"]


def test_every_file_written_is_strict_json(tmp_path):
    write_json_atomic(tmp_path / "r.json", {"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}})
    assert strict_json(tmp_path / "r.json") == {"a": None, "b": [None, 1.5], "c": {"d": None}}


# ---- what a sweep optimises -------------------------------------------------------------------------------


def test_a_sweep_optimises_dev_and_optimising_eval_needs_a_flag(make_cfg, tmp_path, monkeypatch):
    rec = run(make_cfg(), tmp_path / "dev")
    assert rec["objective"] == "dev" and objective_value(rec) == rec["dev_metrics"][rec["headline"]["metric"]]
    with pytest.raises(ConfigError, match="objective=eval makes a sweep choose on the split it reports") as err:
        run(make_cfg("objective=eval"), tmp_path / "refused")
    assert "allow_eval_objective=true" in err.value.fix
    rec = run(make_cfg("objective=eval", "allow_eval_objective=true"), tmp_path / "eval")
    assert rec["objective"] == "eval" and objective_value(rec) == rec["metrics"][rec["headline"]["metric"]]


# ---- trials: tuned on dev, chosen by the report on dev -----------------------------------------------------


def test_a_trial_trains_its_point_of_the_space_and_says_so(make_cfg, run_dir):
    rec = run(make_cfg("trial=1", "method.space.lr=[0.001,0.3]", method="prompt_tuning"), run_dir)
    assert rec["tuning"]["point"] == {"method.lr": 0.3} and rec["tuning"]["points"] == 2
    assert rec["tuning"]["dev_evaluations"] == 2  # 2 points x 1 dev evaluation (at the end)
    assert "lr: 0.3" in (run_dir / "config.yaml").read_text()  # the values it trained with


def test_dev_checks_during_training_keep_the_weights_best_on_dev(make_cfg, run_dir):
    rec = run(make_cfg("method.dev_every_n_steps=1", "method.lr=0.3", "calibration=[batch]", method="prompt_tuning"),
              run_dir)
    checks = rec["tuning"]["dev_checks"]
    assert [c["step"] for c in checks["checks"]] == [1, 2, 3] and rec["tuning"]["dev_evaluations"] == 3
    scores = [c["score"] for c in checks["checks"]]
    best = next(c for c in checks["checks"] if c["score"] == max(scores))  # ties: the earlier step
    assert checks["chosen_step"] == best["step"]
    # the run's dev metrics are the chosen check's: its weights were put back before dev and eval were scored
    assert rec["dev_metrics"] == pytest.approx(best["dev"])
    assert rec["costs"]["dev_check_seconds"] == pytest.approx(checks["seconds"])


@pytest.mark.parametrize(("overrides", "match"), [
    (["trial=0", "method.space.lr=[]"], "has no values to try"),
    (["trial=0", "+method.space.bogus=[1,2]"], "no key method.bogus"),
    (["trial=-1"], "trial=-1 is not a whole number"),
    (["method.dev_every_n_steps=0"], "dev_every_n_steps=0 is not a whole number >= 1"),
    (["method.dev_every_n_steps=9"], "dev_every_n_steps=9"),
    (["budget=5"], "would make 1 dev evaluations"),
    (["trial=0", "budget=3", "method.dev_every_n_steps=1"], "would make 6 dev evaluations"),
])
def test_bad_tuning_settings_fail_before_the_model_loads(make_cfg, run_dir, monkeypatch, overrides, match):
    monkeypatch.setattr(promptlab.run.execute, "load_backbone", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ConfigError, match=match):
        run(make_cfg(*overrides, method="prompt_tuning"), run_dir)


def test_a_budget_counts_points_times_dev_checks_and_prompts_searched(make_cfg):
    assert plan(make_cfg("trial=0", "budget=6", "method.dev_every_n_steps=1", method="prompt_tuning")).tuning[
        "dev_evaluations"] == 6  # 2 learning rates x 3 dev checks (3 steps)
    assert plan(make_cfg("search=templates", "budget=5")).tuning["dev_evaluations"] == 5  # sst2's 5 templates
    assert plan(make_cfg("search=templates", "search.templates=[0,1]", "search.demo_draws=2", "budget=4",
                         "method.num_demos=2", method="few_shot")).tuning["dev_evaluations"] == 4


def test_a_prompting_method_is_its_own_single_trial(make_cfg, run_dir):
    rec = run(make_cfg("trial=0", "search=templates"), run_dir)  # its one point: its search (5 prompts on dev)
    assert rec["status"] == "completed"
    assert rec["tuning"] == {**rec["tuning"], "trial": 0, "points": 1, "point": {}, "dev_evaluations": 5}


def test_a_trial_past_the_last_point_is_skipped(make_cfg, tmp_path):
    with pytest.raises(tuning.OutsideSpace, match="trial=1 but zero_shot's tuning space has 1 point"):
        run(make_cfg("trial=1"), tmp_path / "r")
    assert promptlab.train.run_member(make_cfg("trial=1"), tmp_path / "m", tmp_path) != 0  # NaN: nothing ran
    assert not (tmp_path / "m" / "result.json").exists()


def test_the_report_keeps_each_seeds_trial_best_on_dev_and_counts_every_trial(make_cfg, tmp_path):
    root = tmp_path / "runs"
    for seed in (0, 1):
        for trial in (0, 1):
            run(make_cfg(f"seed={seed}", f"trial={trial}", "method.space.lr=[0.001,0.3]", method="prompt_tuning"),
                root / f"pt_s{seed}_t{trial}")
            with contextlib.suppress(Diverged):
                run(make_cfg(f"seed={seed}", f"trial={trial}", "method.space.lr=[1e-4,1000]", method="full_finetune"),
                    root / f"ft_s{seed}_t{trial}")
    df = load_runs(root)
    summary = summarize(df)
    pt = summary[summary["method"] == "prompt_tuning"]
    assert len(pt) == 1 and pt.iloc[0]["config_label"] == ""  # the trials are one row, not one per lr
    row = pt.iloc[0]
    assert (row["n_seeds"], row["n_trials"], row["n_repeats"]) == (2, 2, 0)
    chosen, tuning_cost = [], []
    for seed in (0, 1):
        recs = [read_result(root / f"pt_s{seed}_t{t}") for t in (0, 1)]
        dev = [r["dev_metrics"][r["headline"]["metric"]] for r in recs]
        best = recs[dev.index(max(dev))]  # ties: the lower trial
        chosen.append(best["metrics"][best["headline"]["metric"]] * 100)
        tuning_cost.append(sum(r["costs"]["train_seconds"] + r["costs"]["dev_eval_seconds"] for r in recs))
    assert row["score_mean"] == pytest.approx(np.mean(chosen))
    assert row["tuning_seconds_mean"] == pytest.approx(np.mean(tuning_cost))
    picked = latest_completed(df)
    assert set(picked.loc[picked["method"] == "prompt_tuning", "seed"]) == {0, 1}
    ft = summary[summary["method"] == "full_finetune"].iloc[0]  # lr=1000 diverges: never chosen, still counted
    assert (ft["n_seeds"], ft["n_trials"], ft["n_diverged"]) == (2, 2, 2)
    assert set(picked.loc[picked["method"] == "full_finetune", "trial"]) == {0}
    assert ft["tuning_seconds_mean"] > ft["train_seconds_mean"]  # the diverged trials' training counts too


def test_a_sweepers_trials_over_tune_keys_are_one_row_chosen_on_dev(make_cfg, tmp_path):
    """Optuna-style trials (no grid: the sweeper sets method.lr itself) declared with tune_keys."""
    root = tmp_path / "runs"
    recs = [run(make_cfg(f"method.lr={lr}", "tune_keys=[method.lr]", method="prompt_tuning"), root / f"lr{lr}")
            for lr in (0.001, 0.3)]
    assert recs[1]["tuning"]["point"] == {"method.lr": 0.3} and recs[1]["tuning"]["keys"] == ["method.lr"]
    summary = summarize(load_runs(root))
    assert len(summary) == 1 and summary.iloc[0]["n_trials"] == 2 and summary.iloc[0]["n_repeats"] == 0
    dev = [r["dev_metrics"][r["headline"]["metric"]] for r in recs]
    best = recs[dev.index(max(dev))]
    assert summary.iloc[0]["score_mean"] == pytest.approx(100 * best["metrics"][best["headline"]["metric"]])


@pytest.mark.parametrize(("overrides", "match"), [(["tune_keys=[method.bogus]"], "not a key of the config"),
                                                  (["tune_keys=[method.lr]", "budget=1"], "budget= counts")])
def test_bad_tune_keys_are_refused(make_cfg, run_dir, overrides, match):
    with pytest.raises(ConfigError, match=match):
        plan(make_cfg(*overrides, method="prompt_tuning"))


def test_the_trial_the_report_keeps_is_the_best_on_dev_whatever_eval_says(make_cfg, tmp_path):
    root = tmp_path / "runs"
    for trial in (0, 1):
        run(make_cfg(f"trial={trial}", "method.space.lr=[0.001,0.3]", method="prompt_tuning"), root / f"t{trial}")

    def set_scores(trial: int, dev: float, ev: float) -> None:
        path = root / f"t{trial}" / "result.json"
        rec = json.loads(path.read_text())
        rec["dev_metrics"][rec["headline"]["metric"]], rec["metrics"][rec["headline"]["metric"]] = dev, ev
        path.write_text(json.dumps(rec))

    set_scores(0, dev=0.75, ev=0.10)
    set_scores(1, dev=0.50, ev=0.99)  # far better on eval, worse on dev: not chosen
    assert latest_completed(load_runs(root))["trial"].tolist() == [0]
    set_scores(1, dev=0.80, ev=0.99)  # better on dev: chosen
    assert latest_completed(load_runs(root))["trial"].tolist() == [1]
