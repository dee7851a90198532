"""Every config group option composes, and composes to what the run code reads."""

from __future__ import annotations

import pytest
from conftest import TRAINED_METHODS, compose_config, config_names, data_overrides
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.types import RunMode
from omegaconf import OmegaConf

from promptlab.errors import ConfigError
from promptlab.methods import REGISTRY, TrainedMethod, build_method
from promptlab.tasks import TaskSpec

METHODS = config_names("method")
DATASETS = config_names("data")
# Method x task combinations that are invalid by design; each must fail validation with this message.
# (None today: few-shot CoT on a choice task has the model write its demonstrations' reasoning.)
INVALID: dict[tuple[str, str], str] = {}
# Method types refused on image tasks (data.image_column), with this message: chain-of-thought (every cot YAML).
IMAGE_INVALID = {"cot": "not supported yet"}


def test_globs_find_the_shipped_configs():
    assert {"zero_shot", "few_shot", "zero_shot_cot", "few_shot_cot", *TRAINED_METHODS} <= set(METHODS)
    assert {"sst2", "rte"} <= set(DATASETS)
    assert {method for method, _ in INVALID} <= set(METHODS)  # INVALID does not name a method that is gone


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("method", METHODS)
def test_method_x_dataset_composes(method, dataset, tmp_path):
    cfg = compose_config([f"method={method}", f"data={dataset}", f"paths.data_root={tmp_path}",
                          *data_overrides(dataset, tmp_path)])
    assert cfg.method.name == method
    assert cfg.data.name == dataset
    OmegaConf.to_container(cfg, resolve=True)  # everything resolves
    assert cfg.paths.data_root == str(tmp_path)
    # the trainer's step budget follows the method's
    assert cfg.trainer.max_steps == cfg.method.get("max_steps", 0)

    spec = TaskSpec.from_config(cfg.data)  # validates the task: keys, templates, choices/target, metrics
    assert spec.name == dataset
    assert 0 <= spec.template < len(spec.templates)
    assert spec.primary_metric in spec.metrics
    if spec.output_type == "choice":
        assert spec.num_choices >= 2
        assert len(spec.class_names) == spec.num_choices
        assert spec.chance == (1 / spec.num_choices if spec.primary_metric == "accuracy" else None)
    else:
        assert spec.output_type == "generate" and spec.target and spec.chance is None

    m = build_method(cfg.method)
    assert type(m) is REGISTRY[cfg.method.type]
    assert m.trains == (method in TRAINED_METHODS), "update conftest.TRAINED_METHODS (make_cfg's fast settings)"
    assert m.trains == isinstance(m, TrainedMethod)
    if m.trains:
        assert "num_demos" not in cfg.method and m.num_demos == 0
    info = m.info()
    assert (info.name, info.type, info.trains) == (method, cfg.method.type, m.trains)
    assert info.display_name == cfg.method.display_name and info.display_name.strip()
    assert info.modifies == cfg.method.modifies and info.modifies.strip()

    invalid = INVALID.get((method, spec.output_type)) or (IMAGE_INVALID.get(cfg.method.type) if spec.image_column else None)
    if invalid:
        with pytest.raises(ConfigError, match=invalid):
            m.validate(spec)
    else:
        m.validate(spec)


@pytest.mark.parametrize(("method", "demos"), [("zero_shot", False), ("few_shot", True), ("zero_shot_cot", False),
                                               ("few_shot_cot", True), *((m, False) for m in TRAINED_METHODS)])
def test_which_methods_show_demonstrations(method, demos):
    m = build_method(compose_config([f"method={method}"]).method)
    assert (m.num_demos > 0) == demos


def test_every_registered_type_has_a_method_config():
    types = {compose_config([f"method={m}"]).method.type for m in METHODS}
    assert types == set(REGISTRY)


@pytest.mark.parametrize(("overrides", "match"), [
    # a key another method type reads: the schema of this type does not declare it
    (["method=lora", "+method.trigger=Think."], "method.trigger is not a key of a peft method"),
    (["method=zero_shot_cot", "+method.sampling.top_p=0.9"], "method.sampling.top_p is not a key"),
    (["method=lora", "method.gradient_checkpointing=maybe"], "is not true or false"),  # a bool is a bool
    (["method=lora", "method.max_steps=1.5"], "method.max_steps=1.5 is not a whole number >= 1"),
    (["method=lora", "method.lr=inf"], "method.lr=inf is not a number > 0"),
    (["method=lora", "method.warmup_ratio=1"], r"is not a number in \[0, 1\)"),
    (["method=few_shot", "method.demo_selection=similar"], "is not one of random, knn"),
    (["method=coop", "method.n_ctx=100", "method.context=''"], "is not a whole number in 0..64"),
    (["method=zero_shot_cot", "method.trigger=' '"], "is not non-empty text"),
])
def test_method_schemas_refuse_wrong_types_ranges_and_keys(overrides, match):
    cfg = compose_config(overrides)
    with pytest.raises(ConfigError, match=match) as err:
        build_method(cfg.method).validate(TaskSpec.from_config(cfg.data))
    assert err.value.fix  # and says what to write instead


def test_a_near_miss_key_is_named():
    cfg = compose_config(["method=lora", "+method.warmup=0.1"])
    with pytest.raises(ConfigError, match="did you mean method.warmup_ratio"):
        build_method(cfg.method).validate(TaskSpec.from_config(cfg.data))


@pytest.mark.parametrize("model", config_names("model"))
def test_every_model_config_fits_the_model_schema(model):
    from promptlab.models import ModelConfig

    ModelConfig.model_validate(OmegaConf.to_container(compose_config([f"model={model}"]).model, resolve=True))


@pytest.mark.parametrize(("overrides", "match"), [
    (["model=tiny_random", "+model.hiden_size=8"], "did you mean model.hidden_size"),
    (["model=tiny_random", "model.num_layers=0"], "model.num_layers=0 is not a whole number >= 1, or null"),
    (["model.dtype=float33"], "model.dtype='float33' is not one of float32, bfloat16, float16"),
])
def test_model_schema_refuses_bad_keys_before_loading(overrides, match):
    from promptlab.models import check_model

    with pytest.raises(ConfigError, match=match):
        check_model(compose_config(overrides).model)


def test_unregistered_method_type_is_a_config_error():
    cfg = compose_config(["method.type=nope"]).method
    with pytest.raises(ConfigError, match="not registered"):
        build_method(cfg)


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
    assert cfg.trainer.precision == "auto"  # bf16-mixed where the GPU supports it (tests/test_precision.py)
    assert cfg.trainer.devices == 1
    assert cfg.trainer.max_steps == cfg.method.max_steps  # inherited from trainer/cpu


def test_trainer_fsdp_builds_lightnings_strategy_with_a_layer_wrap_policy():
    import hydra
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    cfg = compose_config(["trainer=fsdp", "method=prompt_tuning"])
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.devices == "auto"
    strategy = hydra.utils.instantiate(cfg.trainer.strategy)  # the Trainer itself needs CUDA for FSDP
    assert isinstance(strategy, FSDPStrategy)
    assert isinstance(strategy.kwargs["auto_wrap_policy"], ModuleWrapPolicy)
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {LlamaDecoderLayer}
    assert strategy.kwargs["use_orig_params"] is True


def test_trainer_ddp():
    cfg = compose_config(["trainer=ddp", "method=full_finetune"])
    assert cfg.trainer.accelerator == "gpu"
    assert cfg.trainer.strategy == "ddp"
    assert cfg.trainer.devices == "auto"
    assert cfg.trainer.precision == "auto"
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


@pytest.mark.parametrize("experiment", ["demo", "fair_comparison"])
def test_experiments_give_every_method_family_the_same_dev_budget(experiment, tmp_path):
    """Every arm of the demo and of fair_comparison, at every trial the sweep runs: prompting and tuning arms,
    each either skipped (a trial past its space) or making exactly the experiment's budget of dev evaluations."""
    from promptlab import tuning
    from promptlab.methods import build_method
    from promptlab.search import SearchSpec
    from promptlab.tasks import TaskSpec

    cfg = compose_config([f"experiment={experiment}"], return_hydra_config=True)
    assert cfg.hydra.mode == RunMode.MULTIRUN
    params = cfg.hydra.sweeper.params
    arms = [a.strip() for a in str(params.arm).split(",")]
    trials = [int(t) for t in str(params.trial).split(",")]
    methods, counts, searched = set(), {}, set()
    for arm in arms:
        base = compose_config([f"experiment={experiment}", f"arm={arm}"])
        spec, method = TaskSpec.from_config(base.data), build_method(base.method)
        methods.add((spec.name, method.cfg.name))
        for trial in trials:
            try:
                c = tuning.apply_trial(compose_config([f"experiment={experiment}", f"arm={arm}", f"trial={trial}"]))
            except tuning.OutsideSpace:
                assert not method.trains and trial > 0
                continue
            search = SearchSpec.from_config(c.get("search"), spec, 100, draws_demos=method.draws_demos)
            searched.add(search is not None)
            counts[arm, trial] = tuning.dev_evaluations(c, method.trains, search.num_candidates if search else 1)
            tuning.check_budget(c, counts[arm, trial])
            assert (search is not None) == (not method.trains)  # prompting searches; tuning trains its trials
            assert c.model.name == "smollm2_135m" and c.data.k_shot >= 1 and c.data.eval_limit >= 1
    assert set(counts.values()) == {cfg.budget}
    assert {m for _, m in methods} == {"zero_shot", "few_shot", "prompt_tuning", "lora", "full_finetune"}


@pytest.mark.parametrize("override", ["method=nope", "data=nope", "model=nope", "trainer=nope", "logger=nope"])
def test_unknown_group_option_raises(override):
    with pytest.raises(MissingConfigException):
        compose_config([override])


def test_unknown_key_raises():
    with pytest.raises(ConfigCompositionException):
        compose_config(["method.not_a_key=1"])


@pytest.mark.parametrize(("override", "near"), [
    ("+method.num_virtual_tokens=5", "method.peft.num_virtual_tokens"),  # silently trained 20 tokens before
    ("+evalbatchsize=4", "eval_batch_size"), ("+method.lrr=0.1", "method.lr"), ("+method.foo=1", None),
])
def test_a_key_a_plus_override_adds_that_nothing_reads_is_refused(override, near):
    from promptlab.config import CONFIG_DIR, check_added_keys

    with pytest.raises(ConfigError, match=r"adds a key no promptlab config has") as err:
        check_added_keys([override], CONFIG_DIR)
    assert (f"did you mean {near}=" in err.value.fix) if near else "--cfg job" in err.value.fix


def test_plus_overrides_of_keys_some_config_has_pass():
    """Keys another option of the group sets (num_demos for a method), PEFT fields, task keys: all read."""
    from promptlab.config import CONFIG_DIR, check_added_keys

    check_added_keys(["+method.num_demos=2", "+method.peft.use_dora=true", "+data.dev_split=dev", "+model.chat_template=none",
                      "++anything=1", "method.lr=0.1"], CONFIG_DIR)
