"""Instruction tuning on a mixture (tiny model, tiny tasks): seeded weighted interleaving, held-out tasks never
trained on, per-task metrics for seen and held-out tasks, and the mixture's config errors before the model loads."""

from __future__ import annotations

import pytest
from conftest import compose_config, data_cfg, read_predictions, read_result, write_jsonl
from omegaconf import OmegaConf, open_dict
from test_generation import GEN_TASK, qa_rows

import promptlab.run
import promptlab.run.execute
from promptlab.errors import ConfigError
from promptlab.models import tiny_tokenizer
from promptlab.tasks.mixture import HELDOUT_MEAN, SEEN_MEAN, Mixture


def mixture_cfg(data_root, **overrides) -> dict:
    """sst2 and a generation task seen, rte held out."""
    rows = qa_rows(22)
    write_jsonl(data_root / "tinyqa" / "train.jsonl", rows[6:])
    write_jsonl(data_root / "tinyqa" / "test.jsonl", rows[:6])
    tasks = {"sst2": OmegaConf.to_container(data_cfg("sst2")), "tinyqa": GEN_TASK,
             "rte": OmegaConf.to_container(data_cfg("rte"))}
    return {"name": "tiny_mix", "tasks": tasks, "train": {"sst2": 1.0, "tinyqa": 1.0}, "examples_per_task": 6,
            "templates": "all", "eval_limit": None, "dev_size": 8, **overrides}


@pytest.fixture
def mix_cfg(make_cfg, data_root):
    def _make(*overrides: str, method: str = "lora", **mixture):
        cfg = make_cfg(*overrides, method=method)
        with open_dict(cfg):
            cfg.mixture = OmegaConf.create(mixture_cfg(data_root, **mixture))
        return cfg

    return _make


def loaded(cfg) -> tuple[Mixture, dict]:
    m = Mixture.from_config(cfg.mixture)
    m.load(cfg.paths.data_root, 0)
    return m, m.budgets(0)


def test_stream_is_seeded_and_follows_the_weights(mix_cfg):
    m, budgets = loaded(mix_cfg(train={"sst2": 3.0, "tinyqa": 1.0}))
    a, b, other = m.stream(budgets, 4000, 0), m.stream(budgets, 4000, 0), m.stream(budgets, 4000, 1)
    assert a == b and a != other
    share = sum(k == 0 for k, _, _ in a) / len(a)
    assert share == pytest.approx(0.75, abs=0.03)
    templates = {(k, t) for k, _, t in a}
    assert templates == {(0, t) for t in range(len(m.specs["sst2"].templates))} | {(1, 0), (1, 1)}  # FLAN style
    default = Mixture.from_config(OmegaConf.create({**OmegaConf.to_container(mix_cfg().mixture), "templates": "default"}))
    assert {t for _, _, t in default.stream(budgets, 200, 0)} == {0}


def test_held_out_tasks_never_reach_the_training_data(mix_cfg):
    m, budgets = loaded(mix_cfg())
    assert m.train_tasks == ["sst2", "tinyqa"] and m.heldout_tasks == ["rte"]
    assert set(budgets) == {"sst2", "tinyqa"} and all(len(b) == 6 for b in budgets.values())
    items = m.train_items(tiny_tokenizer(), budgets, 64, 0)
    assert {x["task_id"] for x in items} == {0, 1}
    tok = tiny_tokenizer()
    rte_texts = {r["sentence1"] for r in m.tasks["rte"].train + m.tasks["rte"].eval}
    decoded = [tok.decode(x["prompt_ids"]) for x in items]
    assert not any(t in d for t in rte_texts for d in decoded)
    assert all(x["target_ids"][-1] == tok.eos_token_id for x in items)  # every task trains text-to-text


@pytest.mark.parametrize("method", ["lora", "full_finetune", "zero_shot"])
def test_mixture_run_reports_seen_and_held_out_tasks(mix_cfg, run_dir, method):
    result = promptlab.run.run(mix_cfg(method=method), run_dir)
    assert result["status"] == "completed", result.get("error")
    metrics = result["metrics"]
    assert {"sst2/accuracy", "rte/accuracy", "tinyqa/exact_match"} <= set(metrics)
    assert metrics[SEEN_MEAN] == pytest.approx((metrics["sst2/accuracy"] + metrics["tinyqa/exact_match"]) / 2)
    assert metrics[HELDOUT_MEAN] == metrics["rte/accuracy"]
    assert result["primary_metric"] == SEEN_MEAN and result["output_type"] == "mixture"
    assert result["dataset"] == "tiny_mix"
    assert result["mixture"]["seen"] == ["sst2", "tinyqa"] and result["mixture"]["held_out"] == ["rte"]
    dev = result["dev_metrics"]  # the seen tasks on their dev rows: what a sweep optimises, never eval
    assert set(dev) >= {"sst2/accuracy", "tinyqa/exact_match", SEEN_MEAN} and "rte/accuracy" not in dev
    assert dev[SEEN_MEAN] == pytest.approx((dev["sst2/accuracy"] + dev["tinyqa/exact_match"]) / 2)
    assert promptlab.run.execute.objective_value(result) == dev[SEEN_MEAN]
    preds = read_predictions(run_dir)
    assert {r["task"] for r in preds} == {"sst2", "tinyqa", "rte"} and len(preds) == 10 + 6 + 10
    if method != "zero_shot":
        assert result["costs"]["train_examples_seen"] == 3 * 4


def test_multitask_prompt_tuning_on_a_mixture_then_transferred(mix_cfg, make_cfg, tmp_path):
    """MPT trains one prompt per seen task (task ids from the mixture); held-out tasks have no task prompt, so
    they are listed as not evaluated; the source prompts then initialise a held-out task's prompt."""
    source = tmp_path / "source"
    result = promptlab.run.run(mix_cfg(method="multitask_prompt_tuning"), source)
    assert result["status"] == "completed", result.get("error")
    assert result["mixture"]["not_evaluated"] == ["rte"] and "rte/accuracy" not in result["metrics"]
    state = source / "checkpoint" / "adapter_model.safetensors"
    from safetensors.torch import load_file
    assert load_file(state)["prefix_task_cols"].shape[0] == 2  # one factor per seen task
    target = promptlab.run.run(make_cfg("data=rte", "method.peft.prompt_tuning_init=AVERAGE_SOURCE_TASKS",
                                          f"method.peft.prompt_tuning_init_state_dict_path={state}",
                                          method="multitask_prompt_tuning"), tmp_path / "target")
    assert target["status"] == "completed", target.get("error")


@pytest.mark.parametrize(("mixture", "overrides", "match"), [
    ({"train": {"sst2": 1.0, "mnli": 1.0}}, (), "mnli"),
    ({"train": {"sst2": 0}}, (), "positive weight"),
    ({"examples_per_task": 13}, (), "mixture task sst2: train_size=13"),  # sst2 has 12 training rows
    ({"templates": "some"}, (), "mixture.templates"),
    ({"examples_per_task": 0}, (), "mixture.examples_per_task=0"),
    ({"examples_per_task": "many"}, (), "mixture.examples_per_task='many'"),
    ({"eval_limit": -1}, (), "mixture.eval_limit=-1"),
    ({}, ("calibration=[batch]",), "zero-shot"),
])
def test_mixture_errors_come_before_the_model_loads(mix_cfg, run_dir, monkeypatch, mixture, overrides, match):
    monkeypatch.setattr(promptlab.run.execute, "load_backbone", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ConfigError, match=match):
        promptlab.run.run(mix_cfg(*overrides, **mixture), run_dir)
    assert read_result(run_dir)["status"] == "failed"


def test_every_mixture_config_composes():
    cfg = compose_config(["mixture=instruct_small"])
    m = Mixture.from_config(cfg.mixture)
    assert m.train_tasks == ["sst2", "trec", "boolq", "gsm8k", "dialogsum"]
    assert set(m.heldout_tasks) == {"rte", "cb", "copa", "sst5", "ntrex_en_fr"}


def test_report_shows_seen_and_held_out_tasks(mix_cfg, make_cfg, tmp_path):
    from promptlab.report.cli import write_report

    runs = tmp_path / "runs"
    for method in ("zero_shot", "lora"):
        assert promptlab.run.run(mix_cfg(method=method), runs / method)["status"] == "completed"
    assert promptlab.run.run(make_cfg(), runs / "single")["status"] == "completed"  # a one-task run beside them
    report = write_report(runs, tmp_path / "report")
    text = (tmp_path / "report" / "table.md").read_text()
    assert "Instruction tuning: seen and held-out tasks" in text
    for column in ("sst2 (seen)", "tinyqa (seen)", "Mean seen", "rte (held out)", "Mean held out"):
        assert column in text
    assert set(report.summary["dataset"]) == {"sst2"}  # the mixture runs are not a dataset of the main table
    from promptlab.report.mixtures import mixture_table

    table = mixture_table(report.runs)
    lora = read_result(runs / "lora")["metrics"]
    row = table[table["Method"] == "LoRA"].iloc[0]
    assert row["rte (held out)"] == f"{100 * lora['rte/accuracy']:.1f}"
    assert row["Mean seen"] == f"{100 * lora['seen_mean']:.1f}"
    only = tmp_path / "only_mixtures"  # a report of mixture runs alone has no single-task table
    only.mkdir()
    (runs / "lora").rename(only / "lora")
    assert "Instruction tuning" in write_report(only, tmp_path / "report2").stdout


def test_eval_of_a_mixture_run_on_one_task_and_on_the_whole_mixture(mix_cfg, run_dir):
    from promptlab.eval import run_eval

    cfg = mix_cfg()
    promptlab.run.run(cfg, run_dir)  # writes config.yaml beside result.json
    one, _ = run_eval(run_dir, ["data=rte", f"paths.data_root={cfg.paths.data_root}", "data.k_shot=2",
                                "data.dev_size=8"])
    assert one["status"] == "completed" and one["output_type"] == "choice" and "accuracy" in one["metrics"]
    assert one["metrics"]["accuracy"] == read_result(run_dir)["metrics"]["rte/accuracy"]  # same model, same rows
    again, _ = run_eval(run_dir, [])
    trained = read_result(run_dir)
    assert again["output_type"] == "mixture" and again["metrics"] == trained["metrics"]
    # one pipeline: every task's data sources, as training recorded them (eval once kept only the first task's)
    assert again["provenance"]["data"] == trained["provenance"]["data"] and len(trained["provenance"]["data"]) > 1
