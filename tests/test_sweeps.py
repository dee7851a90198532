"""Sweep machinery: shipped experiment/launcher configs compose, re-runs skip completed members, a failing
member does not stop the sweep, and all members of a sweep share one directory and one wandb group."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import compose_config, read_result, subprocess_env
from omegaconf import OmegaConf

from promptlab import sweep
from promptlab.errors import ConfigError
from promptlab.tasks import TaskSpec, load_task


@pytest.mark.parametrize("experiment", ["demo", "generation_demo", "instruction_tuning", "compare_methods",
                                        "budget_curve", "tune_prompt_tuning"])
def test_experiment_configs_compose(experiment, tmp_path):
    cfg = compose_config([f"experiment={experiment}", f"paths.data_root={tmp_path}"], return_hydra_config=True)
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.hydra.sweeper.params  # every shipped experiment is a sweep
    OmegaConf.to_container(cfg, resolve=False)


def test_instruction_tuning_plans_every_method_on_the_mixture(tmp_path):
    """Each member of experiment=instruction_tuning passes every check (mixture, method, budgets) on real-shaped
    configs: the methods it sweeps and the held-out tasks it evaluates."""
    cfg = compose_config(["experiment=instruction_tuning"], return_hydra_config=True)
    methods = cfg.hydra.sweeper.params.method.split(",")
    assert methods == ["zero_shot", "lora", "full_finetune", "multitask_prompt_tuning"]
    from promptlab.tasks.mixture import Mixture

    for method in methods:
        c = compose_config(["experiment=instruction_tuning", f"method={method}"])
        m = Mixture.from_config(c.mixture)
        assert {"rte", "cb", "copa", "sst5", "ntrex_en_fr"} == set(m.heldout_tasks)
        assert all(s.eval_limit for s in m.specs.values())  # fixed subsets, the same for every method


def test_compare_methods_grid():
    cfg = compose_config(["experiment=compare_methods"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params.method.split(",") == ["zero_shot", "few_shot", "prompt_tuning", "full_finetune"]
    assert params.data.split(",") == ["sst2", "rte"] and params.seed.split(",") == ["1", "2", "3"]
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.data.k_shot == 16


def test_slurm_launcher_composes():
    cfg = compose_config(["hydra/launcher=slurm"], return_hydra_config=True)
    assert "submitit" in cfg.hydra.launcher._target_.lower()
    assert cfg.hydra.launcher.gpus_per_node == 1


def test_dev_split_is_carved_from_train_and_disjoint(data_root):
    spec = TaskSpec.from_config(compose_config(["data.dev_size=8"]).data)
    task = load_task(spec, str(data_root), seed=0)
    assert len(task.dev) == 8 and len(task.train) == 20 - 8
    assert not {r["idx"] for r in task.dev} & {r["idx"] for r in task.train}
    assert {r["idx"] for r in task.dev} | {r["idx"] for r in task.train} == set(range(20))
    again = load_task(spec, str(data_root), seed=0)
    assert [r["idx"] for r in again.dev] == [r["idx"] for r in task.dev]  # fixed per seed
    assert [r["idx"] for r in load_task(spec, str(data_root), seed=1).dev] != [r["idx"] for r in task.dev]


def test_reporting_on_dev_is_refused():
    with pytest.raises(ConfigError, match="eval_split=dev would report on the examples every choice is made on"):
        TaskSpec.from_config(compose_config(["data.eval_split=dev"]).data)


@pytest.mark.parametrize(("dev_size", "match"), [(0, "use 8 <= data.dev_size < 20"), (4, "fewer than 8 dev rows"),
                                                 (20, "use 8 <= data.dev_size < 20"), (100, "dev_size")])
def test_dev_size_must_leave_training_rows(data_root, dev_size, match):
    cfg = compose_config([f"paths.data_root={data_root}", f"data.dev_size={dev_size}"])
    with pytest.raises(ConfigError, match=match):
        load_task(TaskSpec.from_config(cfg.data), cfg.paths.data_root)


def _multirun(tmp_path, data_root, *overrides, timeout=300):
    cmd = [sys.executable, "-m", "promptlab.train", "-m", "model=tiny_random", "logger=none",
           f"paths.data_root={data_root}", "data.dev_size=8", f"paths.cache_dir={tmp_path / 'cache'}",
           f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides]
    return subprocess.run(cmd, env=subprocess_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)


def test_rerun_skips_completed_members_and_force_redoes(tmp_path, data_root):
    first = _multirun(tmp_path, data_root, "seed=1,2")
    assert first.returncode == 0, first.stderr[-2000:]
    jobs = sorted((tmp_path / "sweep").glob("*_zero_shot_sst2_s*"))
    assert len(jobs) == 2
    ids = [read_result(j)["run_id"] for j in jobs]
    out = first.stdout + first.stderr  # each member says which of how many it is, and ends with its summary
    assert f"sweep member 1 of 2: seed=1 · run dir {jobs[0]}" in out
    assert f"sweep member 2 of 2: seed=2 · run dir {jobs[1]}" in out
    assert all(re.search(rf"sst2 · zero_shot · seed {s}: Accuracy\S* \d+\.\d% .* · run dir {j}", out)
               for s, j in zip((1, 2), jobs, strict=True))

    again = _multirun(tmp_path, data_root, "seed=1,2")
    assert again.returncode == 0, again.stderr[-2000:]
    assert (again.stdout + again.stderr).count("already completed with config hash") == 2
    assert "sweep" in again.stderr and ": 2 skipped" in again.stderr  # the summary
    assert [read_result(j)["run_id"] for j in jobs] == ids  # untouched

    forced = _multirun(tmp_path, data_root, "seed=1,2", "skip_completed=false")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert all(read_result(j)["run_id"] not in ids for j in jobs)


def test_failing_member_is_recorded_and_sweep_continues(tmp_path, data_root):
    # k_shot=100 is more than the 6 examples per class the tiny data has: members fail, the sweep goes on.
    proc = _multirun(tmp_path, data_root, "method=few_shot", "data.k_shot=2,100")
    assert proc.returncode == 1, proc.stderr[-2000:]  # the sweep ran to its end, and says a member failed
    records = {json.loads(p.read_text())["k_shot"]: json.loads(p.read_text())
               for p in (tmp_path / "sweep").glob("*/result.json")}
    assert records[2]["status"] == "completed"
    assert records[100]["status"] == "failed" and "k_shot=100" in records[100]["error"]
    assert "Traceback" not in proc.stderr
    # the summary: one line for the sweep, one per member that did not complete (dir, status, first error line)
    assert f"promptlab: sweep {tmp_path / 'sweep'}: 1 completed, 1 failed" in proc.stderr
    assert f"  failed: {tmp_path / 'sweep' / '1_few_shot_sst2_s0'}: ConfigError: k_shot=100" in proc.stderr


def test_sweep_members_share_dir_and_wandb_group(tmp_path, data_root):
    proc = _multirun(tmp_path, data_root, "seed=1,2", "logger=wandb")
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = sorted((tmp_path / "sweep").glob("*_zero_shot_sst2_s*"))
    assert len(jobs) == 2
    groups = {OmegaConf.load(j / "config.yaml").logger.wandb.group for j in jobs}
    assert groups == {"sweep"}  # the sweep directory's name


def test_a_member_in_a_launchers_worker_counts_the_sweep_from_multirun_yaml(tmp_path, monkeypatch):
    """A joblib or SLURM worker has no sweep state of its own: it counts the members from the multirun.yaml
    Hydra wrote in the sweep directory (an experiment's sweeper params and the command line's sweeps)."""
    monkeypatch.setattr(sweep, "STATE", sweep.SweepState())
    OmegaConf.save(OmegaConf.create({"hydra": {
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                    "params": {"data": "sst2,rte"}},
        "overrides": {"task": ["model=tiny_random", "seed=1,2,3", "logger=none"]}}}), tmp_path / "multirun.yaml")
    member = OmegaConf.create({"job": {"num": 4}, "sweeper": {},
                               "overrides": {"task": ["model=tiny_random", "seed=2", "logger=none", "data=rte"]}})
    line = sweep.member_line(member, tmp_path, tmp_path / "4_zero_shot_rte_s2")
    assert line == f"sweep member 5 of 6: seed=2 data=rte · run dir {tmp_path / '4_zero_shot_rte_s2'}"
    # Optuna decides its trials as it goes: n_trials is the count
    optuna = OmegaConf.create({"job": {"num": 0}, "sweeper": {"n_trials": 20}, "overrides": {"task": ["seed=0"]}})
    assert sweep.member_line(optuna, tmp_path / "elsewhere", tmp_path / "m").startswith("sweep member 1 of 20 · ")
