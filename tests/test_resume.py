"""Resume: a trained run stopped by a signal or a crash, started again in its directory, continues from its
last checkpoint to exactly the predictions of a run that was never stopped (CPU, tiny model)."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from conftest import read_predictions, read_result

import promptlab.run
from promptlab import resume, signals
from promptlab.module import PromptModule

# 12 training examples (conftest's sst2), batch 4: 3 steps an epoch, so 7 steps cross two epoch boundaries
STEPS = ("method.max_steps=7", "method.batch_size=4", "data.k_shot=6")


def fail_at(monkeypatch, step: int, exc: BaseException | None = None) -> None:
    """Make training step ``step`` (0-based global step) raise ``exc``, or receive SIGTERM when exc is None."""
    real = PromptModule.training_step

    def step_fn(self, batch, batch_idx):
        if self.trainer.global_step == step:
            if exc is None:
                os.kill(os.getpid(), signal.SIGTERM)  # promptlab's handler is in place inside run()
            else:
                raise exc
        return real(self, batch, batch_idx)

    monkeypatch.setattr(PromptModule, "training_step", step_fn)


def scores(run_dir) -> list:
    return [(r["idx"], r["log_probs"]) for r in read_predictions(run_dir)]


@pytest.mark.parametrize("method", ["prompt_tuning", "full_finetune"])
def test_sigterm_then_rerun_matches_an_uninterrupted_run(make_cfg, tmp_path, monkeypatch, method):
    cfg = make_cfg(*STEPS, method=method)
    promptlab.run.run(cfg, tmp_path / "whole")

    stopped = tmp_path / "stopped"
    with monkeypatch.context() as m:
        fail_at(m, 4)  # the signal arrives during step 5; the step ends, is saved, then the run stops
        with pytest.raises(signals.Interrupted):
            promptlab.run.run(cfg, stopped)
    first = read_result(stopped)
    assert first["status"] == "interrupted"
    assert resume.checkpoint_path(stopped).is_file()

    again = promptlab.run.run(cfg, stopped)
    assert again["status"] == "completed"
    assert again["run_id"] == first["run_id"]  # the same run (and wandb run), continued
    assert [(r["from_step"], r["previous_status"]) for r in again["resumes"]] == [(5, "interrupted")]
    assert scores(stopped) == scores(tmp_path / "whole")  # exactly: same weights, same data order
    whole = read_result(tmp_path / "whole")["costs"]
    for key in ("train_steps", "train_examples_seen", "train_tokens_seen"):
        assert again["costs"][key] == whole[key], key
    assert again["costs"]["train_seconds"] > 0
    assert not (stopped / resume.RESUME_DIR).exists()  # a completed run keeps checkpoint/, not the resume state


def test_crash_resumes_from_the_last_periodic_checkpoint(make_cfg, tmp_path, monkeypatch):
    cfg = make_cfg(*STEPS, "checkpoint_every_n_steps=2", method="prompt_tuning")
    promptlab.run.run(cfg, tmp_path / "whole")

    crashed = tmp_path / "crashed"
    with monkeypatch.context() as m:
        fail_at(m, 5, RuntimeError("node lost"))  # steps 1-5 done; the checkpoint of step 4 is the latest
        with pytest.raises(RuntimeError):
            promptlab.run.run(cfg, crashed)
    assert read_result(crashed)["status"] == "failed"

    again = promptlab.run.run(cfg, crashed)
    assert [r["from_step"] for r in again["resumes"]] == [4]
    assert scores(crashed) == scores(tmp_path / "whole")


def test_time_schedule_saves_after_the_period(make_cfg, tmp_path, monkeypatch):
    cfg = make_cfg(*STEPS, "checkpoint_every_minutes=1e-9", method="prompt_tuning")  # due after every step
    run_dir = tmp_path / "r"
    with monkeypatch.context() as m:
        fail_at(m, 5, RuntimeError("node lost"))
        with pytest.raises(RuntimeError):
            promptlab.run.run(cfg, run_dir)
    assert read_result(run_dir)["costs"]["resume_checkpoints"] == 5
    assert [r["from_step"] for r in promptlab.run.run(cfg, run_dir)["resumes"]] == [5]


def test_checkpoint_holds_only_what_training_changes(make_cfg, tmp_path, monkeypatch):
    cfg = make_cfg(*STEPS, method="prompt_tuning")
    run_dir = tmp_path / "r"
    with monkeypatch.context() as m:
        fail_at(m, 2)
        with pytest.raises(signals.Interrupted):
            promptlab.run.run(cfg, run_dir)
    ckpt = torch.load(resume.checkpoint_path(run_dir), map_location="cpu", weights_only=False)
    assert list(ckpt["state_dict"]) == ["model.prompt_encoder.default.embedding.weight"]  # no frozen backbone
    assert ckpt["global_step"] == 3
    assert ckpt["optimizer_states"] and ckpt["lr_schedulers"]
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]  # the data position
    assert set(ckpt["promptlab"]["rng"]) == {"torch", "python", "numpy", "cuda"}


@pytest.mark.parametrize("change", ["method.lr=0.1", "resume=false"])
def test_other_config_or_resume_false_starts_afresh(make_cfg, tmp_path, monkeypatch, change):
    run_dir = tmp_path / "r"
    with monkeypatch.context() as m:
        fail_at(m, 2)
        with pytest.raises(signals.Interrupted):
            promptlab.run.run(make_cfg(*STEPS, method="prompt_tuning"), run_dir)
    first = read_result(run_dir)["run_id"]
    again = promptlab.run.run(make_cfg(*STEPS, change, method="prompt_tuning"), run_dir)
    assert again["resumes"] == [] and again["run_id"] != first
    assert again["costs"]["train_steps"] == 7


def test_cli_says_how_to_continue(monkeypatch, capsys, data_root, tmp_path):
    from test_robustness import cli

    fail_at(monkeypatch, 1)
    run_dir = tmp_path / "r"
    code, err = cli(monkeypatch, capsys, "method=prompt_tuning", *STEPS, f"paths.data_root={data_root}", "data.dev_size=8",
                    f"hydra.run.dir={run_dir}")
    assert code == 143
    assert f"run the same command again with hydra.run.dir={run_dir}" in err


def test_bad_resume_values_are_config_errors(make_cfg, run_dir):
    from promptlab.errors import ConfigError

    for bad, key in (("resume=maybe", "resume"), ("checkpoint_every_n_steps=0", "checkpoint_every_n_steps"),
                     ("checkpoint_every_minutes=0", "checkpoint_every_minutes"),
                     ("checkpoint_every_minutes=-5", "checkpoint_every_minutes"),
                     ("checkpoint_every_minutes=abc", "checkpoint_every_minutes"),
                     ("checkpoint_every_n_steps=1.5", "checkpoint_every_n_steps"), ("resume=1", "resume")):
        with pytest.raises(ConfigError, match=key):
            promptlab.run.run(make_cfg(bad), run_dir)


def test_resumed_run_continues_its_wandb_run(make_cfg, tmp_path, monkeypatch):
    cfg = make_cfg(*STEPS, "logger=wandb", "logger.wandb.mode=offline", method="prompt_tuning")
    run_dir = tmp_path / "r"
    with monkeypatch.context() as m:
        fail_at(m, 2)
        with pytest.raises(signals.Interrupted):
            promptlab.run.run(cfg, run_dir)
    run_id = promptlab.run.run(cfg, run_dir)["run_id"]
    attempts = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(attempts) == 2 and all(run_id in p.name for p in attempts), attempts  # resumed
