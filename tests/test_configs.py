"""Every config group option composes, and composes to what the run code reads."""

from __future__ import annotations

import pytest
from conftest import compose_config
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.types import RunMode
from omegaconf import OmegaConf

METHODS = ["zero_shot", "few_shot", "prompt_tuning", "full_finetune"]
DATASETS = ["sst2", "rte"]


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("method", METHODS)
def test_method_x_dataset_composes(method, dataset, tmp_path):
    cfg = compose_config([f"method={method}", f"data={dataset}", f"paths.data_root={tmp_path}"])
    assert cfg.method.name == method
    assert cfg.data.name == dataset
    assert cfg.method.trains == (method in ("prompt_tuning", "full_finetune"))
    assert (cfg.method.num_demos > 0) == (method == "few_shot")
    assert len(cfg.data.verbalizer) == len(cfg.data.label_names) == 2
    assert 0 <= cfg.data.template < len(cfg.data.templates)
    # the trainer's step budget follows the method's
    assert cfg.trainer.max_steps == cfg.method.get("max_steps", 0)
    assert cfg.paths.data_root == str(tmp_path)
    OmegaConf.to_container(cfg, resolve=True)  # everything resolves


def test_defaults():
    cfg = compose_config()
    assert cfg.model.name == "smollm2_135m"
    assert cfg.model.source == "bundled_gguf"
    assert cfg.data.name == "sst2"
    assert cfg.method.name == "zero_shot"
    assert cfg.trainer.accelerator == "cpu"
    assert cfg.logger.wandb.project == "promptlab"
    assert cfg.paths.data_root is None  # PROMPTLAB_DATA is unset in tests
    OmegaConf.to_container(cfg, resolve=True)


def test_paths_follow_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMPTLAB_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("PROMPTLAB_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("PROMPTLAB_RUNS", str(tmp_path / "r"))
    cfg = compose_config()
    assert cfg.paths.data_root == str(tmp_path / "d")
    assert cfg.paths.cache_dir == str(tmp_path / "c")
    assert cfg.paths.runs_dir == str(tmp_path / "r")


def test_model_tiny_random():
    cfg = compose_config(["model=tiny_random"])
    assert cfg.model.source == "tiny_random"
    assert cfg.model.hidden_size == 32 and cfg.model.num_layers == 2


def test_model_hub_name_follows_hub_id():
    cfg = compose_config(["model=hub"])
    assert cfg.model.source == "hub"
    assert cfg.model.name == cfg.model.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    cfg = compose_config(["model=hub", "model.hub_id=org/other"])
    assert cfg.model.name == "org/other"


def test_trainer_gpu():
    cfg = compose_config(["trainer=gpu", "method=prompt_tuning"])
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    assert cfg.trainer.accelerator == "gpu"
    assert cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.devices == 1
    assert cfg.trainer.max_steps == cfg.method.max_steps  # inherited from trainer/cpu


def test_trainer_ddp():
    cfg = compose_config(["trainer=ddp", "method=full_finetune"])
    assert cfg.trainer.accelerator == "gpu"
    assert cfg.trainer.strategy == "ddp"
    assert cfg.trainer.devices == "auto"
    assert cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.max_steps == cfg.method.max_steps


@pytest.mark.parametrize(
    ("logger", "wandb", "csv"), [("csv", False, True), ("none", False, False), ("wandb", True, True)]
)
def test_loggers(logger, wandb, csv):
    cfg = compose_config([f"logger={logger}"])
    assert bool(cfg.logger.wandb) is wandb
    assert bool(cfg.logger.csv) is csv
    if wandb:
        assert cfg.logger.wandb.mode == "auto"
        assert cfg.logger.wandb.project == "promptlab"


def test_experiment_demo_sweeps_all_methods():
    cfg = compose_config(["experiment=demo"], return_hydra_config=True)
    assert cfg.hydra.mode == RunMode.MULTIRUN
    swept = {m.strip() for m in str(cfg.hydra.sweeper.params.method).split(",")}
    assert swept == set(METHODS)
    assert cfg.model.name == "smollm2_135m"
    assert cfg.data.name == "sst2"
    assert cfg.data.k_shot >= 1 and cfg.data.eval_limit >= 1  # sized for a quick demo


@pytest.mark.parametrize("override", ["method=nope", "data=nope", "model=nope", "trainer=nope", "logger=nope"])
def test_unknown_group_option_raises(override):
    with pytest.raises(MissingConfigException):
        compose_config([override])


def test_unknown_key_raises():
    with pytest.raises(ConfigCompositionException):
        compose_config(["method.not_a_key=1"])
