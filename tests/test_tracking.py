"""Run records: result.json's schema, atomic writes, failed runs, the config hash."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from dataclasses import asdict, fields
from pathlib import Path

import pytest
from conftest import compose_config, read_predictions, read_result, subprocess_env

import promptlab.run
import promptlab.run.execute
import promptlab.run.planning
from promptlab.methods import build_method
from promptlab.schema import (
    COST_KEYS,
    PREDICTION_KEYS,
    PROMPTS_FILE,
    SCHEMA_VERSION,
    Machine,
    MethodInfo,
    RunResult,
    prompt_hash,
)
from promptlab.tasks import TaskSpec, load_task
from promptlab.tracking import RunRecord, config_hash, write_json_atomic, write_jsonl_atomic

TOP_LEVEL_KEYS = {"run_id", "status", "method", "model", "dataset", "seed", "k_shot", "template_id", "metrics",
                  "costs", "versions", "git_commit", "config_hash", "started_at", "finished_at"}
# Costs every run reports as a number >= 0
NUMERIC_COSTS = {"trainable_params", "total_params", "trainable_fraction", "train_seconds", "train_examples_seen",
                 "train_tokens_seen", "eval_seconds", "peak_rss_mb", "checkpoint_bytes", "model_load_seconds",
                 "train_steps", "eval_examples", "eval_examples_per_second", "generated_tokens", "generation_seconds",
                 "truncated_prompts"}


def as_run_result(record: dict) -> RunResult:
    """The record read back through the schema: TypeError on an unknown or missing field."""
    return RunResult(**{**record, "method_info": MethodInfo(**record["method_info"]),
                        "machine": Machine(**record["machine"])})


@pytest.mark.parametrize("method", ["zero_shot", "prompt_tuning"])
def test_result_json_schema(make_cfg, run_dir, method):
    cfg = make_cfg("seed=3", "data.template=1", "logger=csv", method=method)
    returned = promptlab.run.run(cfg, run_dir)
    result = read_result(run_dir)
    assert result == json.loads(json.dumps(returned, default=str))
    assert set(result) >= TOP_LEVEL_KEYS
    schema = as_run_result(result).to_dict()  # every required field of promptlab.schema.RunResult, no other key
    assert {k: v for k, v in schema.items() if k in result} == result
    assert set(schema) == set(result)  # the record is built from the dataclass: every field, null when unused
    assert all(result[k] is None for k in ("error", "traceback", "source_run", "diverged_at_step"))  # completed
    assert result["status"] == "completed"
    assert result["schema_version"] == SCHEMA_VERSION == 3 and result["kind"] == "train"
    assert result["method"] == method and result["model"] == "tiny_random" and result["dataset"] == "sst2"
    assert result["seed"] == 3 and result["k_shot"] == 2 and result["template_id"] == 1
    assert result["eval_split"] == "validation"
    assert method in result["run_id"] and "sst2" in result["run_id"]
    assert result["method_info"] == asdict(build_method(cfg.method).info())
    assert result["method_info"]["trains"] is (method == "prompt_tuning")
    assert result["output_type"] == "choice" and result["primary_metric"] == "accuracy"
    assert result["higher_is_better"] is True and result["chance"] == 0.5
    readouts = ("per_token", "per_char", "per_byte")
    assert set(result["metrics"]) == {f"{m}{f'@{r}' if r else ''}" for m in ("accuracy", "macro_f1")
                                      for r in ("", *readouts)} == set(result["dev_metrics"])
    assert result["headline"]["readout"] in ("raw", *readouts) and result["headline"]["chosen_on"] == "dev"
    assert len(result["train_idx"]) == (4 if method == "prompt_tuning" else 0)
    assert result["splits"]["dev"]["rows"] == 8 == result["costs"]["dev_examples"]
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0
    assert 0.0 <= result["metrics"]["macro_f1"] <= 1.0
    assert set(result["costs"]) == set(COST_KEYS)
    for key in NUMERIC_COSTS:
        assert isinstance(result["costs"][key], int | float), key
        assert result["costs"][key] >= 0, key
    assert result["costs"]["peak_rss_mb"] > 0
    assert result["costs"]["eval_seconds"] > 0
    assert result["costs"]["eval_examples"] == 10
    assert result["costs"]["generated_tokens"] == 0  # rank scoring generates nothing
    assert {"torch", "transformers", "peft"} <= set(result["versions"])
    assert all(isinstance(v, str) and v for v in result["versions"].values())
    assert result["git_commit"] is None or len(result["git_commit"]) == 40
    assert result["config_hash"] == config_hash(cfg)
    assert result["error"] is None
    machine = result["machine"]
    assert machine["cores"] >= 1 and machine["torch_threads"] >= 1 and machine["cpu"]
    assert len(machine["load_start"]) == len(machine["load_end"]) == 3
    # the rest of the run directory
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "predictions.jsonl").is_file()
    assert not list(run_dir.glob(".*.tmp"))


def test_predictions_jsonl_rows(make_cfg, run_dir):
    cfg = make_cfg("method.num_demos=2", method="few_shot")
    result = promptlab.run.run(cfg, run_dir)
    rows = read_predictions(run_dir)
    spec = TaskSpec.from_config(cfg.data)
    assert [r["idx"] for r in rows] == list(range(10))  # every eval example once, sorted by idx
    for r in rows:
        assert set(r) == {*PREDICTION_KEYS["choice"], "scores", "pred@per_token", "pred@per_char", "pred@per_byte"}
        assert len(r["log_probs"]) == spec.num_choices
        assert math.isclose(math.log(sum(math.exp(v) for v in r["log_probs"])), 0.0, abs_tol=1e-4)
        assert r["pred"] == max(range(spec.num_choices), key=lambda c: r["log_probs"][c])
        assert r["pred_name"] == spec.class_names[r["pred"]]
        assert r["scores"] == {"accuracy": float(r["pred"] == r["label"]), "macro_f1": float(r["pred"] == r["label"])}
        assert r["score"] == r["scores"][result["primary_metric"]]
    # the aggregate is the mean of the per-example scores (accuracy decomposes over examples)
    assert result["metrics"]["accuracy"] == pytest.approx(sum(r["score"] for r in rows) / len(rows))
    assert sorted(r["label"] for r in rows) == sorted(r["label"] for r in load_task(spec, cfg.paths.data_root).eval)


def test_run_record_lifecycle(tmp_path):
    cfg = compose_config(["model=tiny_random", "method=few_shot", "data=rte"])
    record = RunRecord(tmp_path / "r", cfg, "run-1", kind="eval")
    first = read_result(tmp_path / "r")
    assert first["status"] == "running" and first["kind"] == "eval" and first["run_id"] == "run-1"
    assert first["method_info"] is None and first["higher_is_better"] is None and first["chance"] is None
    assert first["num_demos"] == 4 and first["dataset"] == "rte" and first["output_type"] == "choice"
    info = build_method(cfg.method).info()
    record.describe(info, TaskSpec.from_config(cfg.data), higher_is_better=True)
    described = read_result(tmp_path / "r")
    assert described["status"] == "running"
    assert described["method_info"] == asdict(info) == {"name": "few_shot", "type": "prompting",
                                                        "display_name": "Few-shot",
                                                        "modifies": cfg.method.modifies, "trains": False}
    assert (described["primary_metric"], described["higher_is_better"], described["chance"]) == ("accuracy", True, 0.5)
    record.complete({"accuracy": 0.5}, {"eval_seconds": 1.0}, num_demos=4, checkpoint=None)
    done = read_result(tmp_path / "r")
    assert done["status"] == "completed" and done["finished_at"] and done["metrics"] == {"accuracy": 0.5}
    assert len(done["machine"]["load_end"]) == 3
    assert {f.name for f in fields(RunResult)} == set(first) == set(done)  # built from the dataclass: every field


def test_run_record_refuses_fields_the_schema_does_not_declare(tmp_path):
    record = RunRecord(tmp_path / "r", compose_config(["model=tiny_random"]), "run-1")
    with pytest.raises(TypeError, match=r"not fields of schema.RunResult: \['colour'\]"):
        record.update(colour="blue")
    with pytest.raises(TypeError, match="not fields of schema.RunResult"):
        record.complete({"accuracy": 0.5}, {}, shade=1)
    assert read_result(tmp_path / "r")["status"] == "running" and not record.finished


@pytest.mark.parametrize("method", ["zero_shot", "prompt_tuning"])
def test_csv_logger_writes_eval_metrics(make_cfg, run_dir, method):
    """logger=csv (and logger=wandb, which has csv: true) must leave the eval metrics in csv/metrics.csv."""
    result = promptlab.run.run(make_cfg("logger=csv", method=method), run_dir)
    metrics_csv = run_dir / "csv" / "metrics.csv"
    assert metrics_csv.is_file(), "CSVLogger never flushed: run() logs eval metrics but never calls save()"
    header, *rows = metrics_csv.read_text().splitlines()
    columns = header.split(",")
    assert "eval/accuracy" in columns and "eval/macro_f1" in columns
    last = dict(zip(columns, rows[-1].split(","), strict=True))
    assert float(last["eval/accuracy"]) == pytest.approx(result["metrics"]["accuracy"])


def test_two_runs_get_distinct_ids(make_cfg, tmp_path):
    cfg = make_cfg()
    a = promptlab.run.run(cfg, tmp_path / "a")["run_id"]
    b = promptlab.run.run(cfg, tmp_path / "b")["run_id"]
    assert a != b


def test_write_json_atomic_roundtrip(tmp_path):
    path = tmp_path / "sub" / "result.json"
    write_json_atomic(path, {"a": 1, "b": [1, 2], "p": tmp_path})
    assert json.loads(path.read_text()) == {"a": 1, "b": [1, 2], "p": str(tmp_path)}
    write_jsonl_atomic(tmp_path / "rows.jsonl", [{"i": 0}, {"i": 1}])
    assert (tmp_path / "rows.jsonl").read_text() == '{"i": 0}\n{"i": 1}\n'


def test_write_json_atomic_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "result.json"
    write_json_atomic(path, {"status": "running", "n": 1})
    before = path.read_bytes()
    circular: dict = {"status": "completed"}
    circular["self"] = circular  # json.dumps raises ValueError: Circular reference detected
    with pytest.raises(ValueError, match="[Cc]ircular"):
        write_json_atomic(path, {"payload": [1, 2, 3], "bad": circular})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]  # no temp files left


def test_write_atomic_cleans_up_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    write_json_atomic(path, {"n": 1})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("promptlab.tracking.files.os.replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(path, {"n": 2})
    assert json.loads(path.read_text()) == {"n": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_failing_run_is_recorded_and_reraised(make_cfg, run_dir, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom: the data went away")

    monkeypatch.setattr(promptlab.run.execute, "load_backbone", boom)
    with pytest.raises(RuntimeError, match="boom"):
        promptlab.run.run(make_cfg(method="prompt_tuning"), run_dir)
    result = read_result(run_dir)
    assert result["status"] == "failed"
    assert "RuntimeError" in result["error"] and "boom: the data went away" in result["error"]
    assert "boom" in result["traceback"]
    assert result["finished_at"]
    assert result["costs"]["peak_rss_mb"] > 0
    assert result["method"] == "prompt_tuning"


def test_failure_during_training_is_recorded(make_cfg, run_dir, monkeypatch):
    """A failure after the model loaded keeps the cost figures measured so far."""

    def boom(self, *args, **kwargs):
        raise RuntimeError("training diverged")

    monkeypatch.setattr(promptlab.run.execute.PromptModule, "training_step", boom)
    with pytest.raises(RuntimeError, match="training diverged"):
        promptlab.run.run(make_cfg(method="prompt_tuning"), run_dir)
    result = read_result(run_dir)
    assert result["status"] == "failed"
    assert "training diverged" in result["error"]
    assert result["costs"]["trainable_params"] == 20 * 32
    assert result["method_info"]["name"] == "prompt_tuning"  # described before the failure


def test_running_record_is_written_first(make_cfg, run_dir, monkeypatch):
    seen = {}
    real_load_task, real_load_backbone = promptlab.run.planning.load_task, promptlab.run.execute.load_backbone

    def spy(real, key):
        def wrapper(*args, **kwargs):
            seen[key] = read_result(run_dir)
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(promptlab.run.planning, "load_task", spy(real_load_task, "data"))
    monkeypatch.setattr(promptlab.run.execute, "load_backbone", spy(real_load_backbone, "model"))
    promptlab.run.run(make_cfg(), run_dir)
    assert seen["data"]["status"] == "running"
    assert seen["data"]["run_id"] == read_result(run_dir)["run_id"]
    assert seen["data"]["method_info"] is None  # not validated yet
    # validated and described before the model loads: a record of a run that dies loading says what it was
    assert seen["model"]["status"] == "running"
    assert seen["model"]["method_info"]["name"] == "zero_shot" and seen["model"]["chance"] == 0.5


def test_config_hash_ignores_paths_and_logger(tmp_path):
    base = ["model=tiny_random", "method=prompt_tuning"]
    h = config_hash(compose_config(base))
    assert h == config_hash(compose_config([*base, f"paths.data_root={tmp_path}", f"paths.cache_dir={tmp_path}",
                                            f"paths.runs_dir={tmp_path}"]))
    assert h == config_hash(compose_config([*base, "logger=none"]))
    assert h == config_hash(compose_config([*base, "logger=csv"]))
    assert h != config_hash(compose_config([*base, "seed=1"]))
    assert h != config_hash(compose_config([*base, "method.lr=0.1"]))
    assert h != config_hash(compose_config([*base, "data=rte"]))
    assert h != config_hash(compose_config([*base, "data.k_shot=8"]))
    assert len(h) == 16 and int(h, 16) >= 0


# ---- what a person reads: the rendered prompts beside the predictions, the run's last line, quiet logs -------


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_prompts_jsonl_holds_every_prediction_prompt_once(make_cfg, run_dir):
    """Each prediction row names the prompt the model read by its hash; prompts.jsonl holds each distinct one
    once, as the text of the tokens the model read (chat template, demonstrations and the example)."""
    cfg = make_cfg("method.num_demos=2", method="few_shot")
    promptlab.run.run(cfg, run_dir)
    prompts = read_jsonl(run_dir / PROMPTS_FILE)
    by_hash = {p["prompt_hash"]: p for p in prompts}
    assert len(by_hash) == len(prompts)  # each once
    assert all(prompt_hash(p["text"]) == h and p["tokens"] > 0 for h, p in by_hash.items())
    rows, dev_rows = read_predictions(run_dir), read_jsonl(run_dir / "dev_predictions.jsonl")
    assert len(by_hash) == len({r["prompt_hash"] for r in rows + dev_rows})  # nothing else in it
    spec = TaskSpec.from_config(cfg.data)
    task = load_task(spec, cfg.paths.data_root)
    for split, split_rows in ((task.eval, rows), ([*task.dev, *task.train], dev_rows)):
        text = {r["idx"]: r["sentence"] for r in split}
        for r in split_rows:
            prompt = by_hash[r["prompt_hash"]]["text"]
            assert text[r["idx"]] in prompt and "<|im_start|>assistant" in prompt  # the example, in the chat
            assert prompt.count("<|im_start|>user") == 3  # two demonstrations, then the query
    assert not list(run_dir.glob(".*.tmp"))


def test_summary_line_shows_the_headline_as_the_report_does(tmp_path, monkeypatch):
    from promptlab.evaluation.metrics import display_metric
    from promptlab.run.summary import summary_line

    monkeypatch.chdir(tmp_path)
    record = {"status": "completed", "dataset": "sst2", "method": "lora", "seed": 0,
              "headline": {"metric": "accuracy"}, "metrics": {"accuracy": 0.845}, "dev_metrics": {"accuracy": 0.87},
              "costs": {"train_seconds": 102.0, "search_seconds": 0, "eval_seconds": 12.3}}
    assert display_metric("accuracy").unit == "%"
    assert summary_line(record, tmp_path / "runs" / "a") == (
        f"sst2 · lora · seed 0: Accuracy 84.5% (dev 87.0%) · 1.7 min train · 12 s eval · run dir {Path('runs/a')}")
    # the headline's readout; a metric the report does not show in % has no %; a run dir elsewhere is absolute
    calibrated = {**record, "headline": {"metric": "accuracy@batch"}, "metrics": {"accuracy@batch": 0.5},
                  "dev_metrics": {}}
    assert "Accuracy@batch 50.0% · " in summary_line(calibrated, tmp_path / "r")
    rouge = {**record, "headline": {"metric": "rougeL"}, "metrics": {"rougeL": 0.3125}, "dev_metrics": {}}
    assert display_metric("rougeL").unit == "" and ": ROUGE-L 31.2 · " in summary_line(rouge, Path("/elsewhere/r"))
    assert summary_line(rouge, Path("/elsewhere/r")).endswith("run dir /elsewhere/r")
    diverged = {**record, "status": "diverged"}
    assert summary_line(diverged, tmp_path / "r").startswith("sst2 · lora · seed 0: diverged · ")


def test_a_run_ends_with_its_summary_and_logs_no_third_party_bars(tmp_path, data_root, tiny_backbone):
    """promptlab-train's last line names the run dir and the headline in %; transformers' "Loading weights" bar
    (a model loaded from a folder) and wandb's "anonymous setting" warning stay out of the log."""
    model_dir = tmp_path / "tiny_hub"
    tiny_backbone.model.save_pretrained(model_dir)
    tiny_backbone.tokenizer.save_pretrained(model_dir)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "promptlab.train", "model=hub", f"model.hub_id={model_dir}", "logger=wandb",
           "method=zero_shot", f"paths.data_root={data_root}", "data.dev_size=8", "eval_batch_size=8",
           f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, env=subprocess_env(PROMPTLAB_PROGRESS_EVERY="0"), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    last = [line for line in out.splitlines() if "[promptlab]" in line][-1]
    assert re.search(r"sst2 · zero_shot · seed 0: Accuracy(@\w+)? \d+\.\d% \(dev \d+\.\d%\)", last), last
    assert last.endswith(f"run dir {run_dir}")
    assert "dev · batch 1/1" in out and "eval · batch 1/2" in out  # promptlab's own progress stays
    assert "Loading weights" not in out and "it/s]" not in out
    assert "anonymous setting" not in out
