"""Data-parallel runs (Lightning DDP, 2 CPU processes over gloo): every rank's predictions gathered, metrics
computed once, exactly one record, one wandb run and one checkpoint; the same predictions as 1 process.

These start real processes (Lightning's DDP launcher re-runs the command per rank), ~15 s each."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import read_predictions, read_result, subprocess_env
from test_robustness import cli


def train(tmp_path, data_root, run_dir, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "promptlab.train", "model=tiny_random", "logger=wandb", "logger.wandb.mode=offline",
           "data.k_shot=4", "eval_batch_size=3", f"paths.data_root={data_root}", "data.dev_size=8", f"paths.cache_dir={tmp_path / 'c'}",
           f"hydra.run.dir={run_dir}", *overrides]
    done = subprocess.run(cmd, env=subprocess_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def wandb_runs(run_dir) -> list:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def test_two_processes_predict_what_one_does(tmp_path, data_root):
    one, two = tmp_path / "one", tmp_path / "two"
    train(tmp_path, data_root, one, "method=few_shot")
    train(tmp_path, data_root, two, "method=few_shot", "trainer=ddp_cpu")  # 10 examples over 2 ranks, batch 3
    a, b = read_predictions(one), read_predictions(two)
    assert [r["idx"] for r in b] == [r["idx"] for r in a] and len(a) == 10  # every example once
    assert [r["pred"] for r in b] == [r["pred"] for r in a]
    for r, s in zip(a, b, strict=True):  # other batch-mates, other padding: the batch-size tolerance
        assert s["log_probs"] == pytest.approx(r["log_probs"], abs=1e-5)
    ra, rb = read_result(one), read_result(two)
    assert rb["status"] == "completed" and rb["metrics"] == ra["metrics"]
    assert rb["costs"]["eval_examples"] == 10
    assert len(wandb_runs(two)) == 1 and rb["run_id"] in wandb_runs(two)[0].name


def test_two_process_training_leaves_one_record_and_one_checkpoint(tmp_path, data_root):
    run_dir = tmp_path / "pt"
    train(tmp_path, data_root, run_dir, "method=prompt_tuning", "method.max_steps=3", "method.batch_size=2",
          "trainer=ddp_cpu")
    result = read_result(run_dir)
    assert result["status"] == "completed" and result["pid"] > 0
    assert result["costs"]["train_steps"] == 3
    assert result["costs"]["train_examples_seen"] == 3 * 2 * 2  # steps x batch x ranks
    assert len(read_predictions(run_dir)) == 10
    assert (run_dir / "checkpoint" / "adapter_model.safetensors").is_file()
    assert not (run_dir / "resume").exists()
    assert len(wandb_runs(run_dir)) == 1
    assert sorted(p.name for p in run_dir.glob("*.json")) == ["result.json"]


def test_sweep_refuses_ranks_that_lightning_would_start(monkeypatch, capsys, data_root, tmp_path):
    monkeypatch.setattr("promptlab.run.execute.load_backbone", lambda *a, **k: pytest.fail("the model loaded"))
    code, err = cli(monkeypatch, capsys, "-m", "trainer=ddp_cpu", "seed=1,2", f"paths.data_root={data_root}", "data.dev_size=8",
                    f"hydra.sweep.dir={tmp_path / 's'}")
    assert code == 1
    assert "would re-run the whole sweep" in err and "hydra/launcher=slurm" in err
