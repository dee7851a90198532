"""The CLI as users run it (a subprocess): wandb offline in a Hydra multirun, never prompting; clean errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import compose_config, subprocess_env

TIMEOUT = 300  # generous: the machine is shared; a wandb login prompt would hang until this


def promptlab_train(args: list[str], cwd, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "promptlab.train", *args],
        cwd=cwd, env=subprocess_env(**env), stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=TIMEOUT,
    )


def common_args(data_root, tmp_path) -> list[str]:
    return ["model=tiny_random", f"paths.data_root={data_root}", "data.dev_size=8", f"paths.cache_dir={tmp_path / 'cache'}",
            "eval_batch_size=8"]


def test_multirun_wandb_offline_one_run_per_job(data_root, tmp_path):
    sweep = tmp_path / "sweep"
    proc = promptlab_train(
        ["-m", "method=zero_shot", "seed=1,2", "logger=wandb", *common_args(data_root, tmp_path),
         f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, WANDB_MODE="offline",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]

    job_dirs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in job_dirs] == ["0_zero_shot_sst2_s1", "1_zero_shot_sst2_s2"]
    run_ids = set()
    for seed, job in zip((1, 2), job_dirs, strict=True):
        result = json.loads((job / "result.json").read_text())
        assert result["status"] == "completed"
        assert result["seed"] == seed
        run_ids.add(result["run_id"])
        offline_runs = list((job / "wandb").glob("offline-run-*"))
        assert len(offline_runs) == 1, offline_runs  # one wandb run per job, inside the job's directory
        assert offline_runs[0].name.endswith(result["run_id"])  # the wandb run id is the promptlab run id
        records = list(offline_runs[0].glob("*.wandb"))
        assert len(records) == 1
        data = records[0].read_bytes()
        assert b"eval/accuracy" in data and b"cost/trainable_params" in data  # summary reached wandb
        assert b"method_info" in data and b"higher_is_better" in data  # the record's description (not in cfg)
    assert len(run_ids) == 2
    # exactly two runs in total, and none escaped to WANDB_DIR or the working directory
    assert len(list(sweep.rglob("offline-run-*"))) == 2
    assert not list(tmp_path.glob("wandb")) and not list(tmp_path.glob("runs"))


def test_cli_config_error_is_clean(data_root, tmp_path):
    run_dir = tmp_path / "run"
    proc = promptlab_train(
        ["method=prompt_tuning", "data.k_shot=100000", "logger=none", *common_args(data_root, tmp_path),
         f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "promptlab: error: k_shot=100000" in proc.stderr
    assert "fix: use data.k_shot <= 6" in proc.stderr
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "failed" and "k_shot=100000" in result["error"]


def test_multirun_goes_on_after_a_config_error(data_root, tmp_path):
    sweep = tmp_path / "sweep"
    proc = promptlab_train(
        ["-m", "method=zero_shot", "data.template=9,0", "logger=none", *common_args(data_root, tmp_path),
         f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]  # a member failed: the sweep goes on, then exits 1
    assert "Traceback" not in proc.stderr
    assert "promptlab: error: data.template=9" in proc.stderr
    statuses = [json.loads((job / "result.json").read_text())["status"]
                for job in sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))]
    assert statuses == ["failed", "completed"]


# ---------------------------------------------------------------------------------- in-process units


def test_wandb_mode_resolution(monkeypatch, tmp_path):
    from promptlab.tracking import wandb_mode

    monkeypatch.setenv("HOME", str(tmp_path))  # netrc is read from ~/.netrc
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode("online") == "offline"  # the environment wins
    monkeypatch.delenv("WANDB_MODE")
    assert wandb_mode("disabled") == "disabled"
    assert wandb_mode("online") == "online"
    assert wandb_mode("auto") == "offline"  # no key, no ~/.netrc: never prompt
    (tmp_path / ".netrc").write_text("machine example.org login a password b\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_mode("auto") == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai login user password secret\n")
    assert wandb_mode("auto") == "online"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai login\n this is not netrc \"\n")
    assert wandb_mode("auto") == "offline"
    (tmp_path / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode("auto") == "online"


@pytest.mark.parametrize(("logger", "wandb_env", "expected"), [
    ("none", "offline", []),
    ("csv", "offline", ["CSVLogger"]),
    ("wandb", "offline", ["CSVLogger", "WandbLogger"]),
    ("wandb", "disabled", ["CSVLogger"]),
])
def test_make_loggers(monkeypatch, tmp_path, logger, wandb_env, expected):
    from promptlab.tracking import make_loggers

    monkeypatch.setenv("WANDB_MODE", wandb_env)
    cfg = compose_config(["model=tiny_random", f"logger={logger}"])
    loggers = make_loggers(cfg, tmp_path, "run-1")
    assert [type(lg).__name__ for lg in loggers] == expected
    assert not list(tmp_path.glob("wandb"))  # nothing starts until something is logged


def test_a_bogus_wandb_mode_in_the_environment_is_refused_before_the_model_loads(make_cfg, monkeypatch):
    """wandb would fail on it only once the run starts, with a pydantic traceback."""
    import promptlab.run
    from promptlab.errors import ConfigError

    monkeypatch.setenv("WANDB_MODE", "bogus")
    with pytest.raises(ConfigError, match="WANDB_MODE='bogus' is not a wandb mode") as err:
        promptlab.run.plan(make_cfg("logger=wandb"))
    assert "offline" in err.value.fix
