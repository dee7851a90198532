"""End to end through promptlab.train.run on the tiny model: what each method trains, saves and costs."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config, read_predictions, read_result
from safetensors.torch import load_file

import promptlab.methods.prompt_tuning as prompt_tuning_method
import promptlab.train
from promptlab.data import PromptDataModule, load_task
from promptlab.errors import ConfigError
from promptlab.methods import full_finetune, prompt_tuning
from promptlab.models import load_backbone
from promptlab.prompts import encode_verbalizer
from promptlab.scoring import LabelScorer


@pytest.fixture
def captured(monkeypatch):
    """Wrap load_backbone inside run(): keep the Backbone and a copy of its weights as loaded."""
    seen = {}
    real = promptlab.train.load_backbone

    def spy(cfg, cache_dir):
        backbone = real(cfg, cache_dir)
        seen["backbone"] = backbone
        seen["initial"] = {k: v.detach().clone() for k, v in backbone.model.state_dict().items()}
        return backbone

    monkeypatch.setattr(promptlab.train, "load_backbone", spy)
    return seen


def predictions_from_checkpoint(cfg, model, backbone) -> list[dict]:
    """Re-score the eval split the way run() does (same prompts, same batches) with a reloaded model."""
    task = load_task(cfg.data, cfg.paths.data_root)
    tok = backbone.tokenizer
    scorer = LabelScorer(encode_verbalizer(tok, task.verbalizer), tok.pad_token_id)
    dm = PromptDataModule(task, tok, [], [], 8, cfg.eval_batch_size, cfg.seed, cfg.data.max_prompt_tokens)
    dm.setup("predict")
    rows = []
    with torch.no_grad():
        for batch in dm.predict_dataloader():
            scores = scorer(model.eval(), batch["prompt_ids"])
            for i, y, s in zip(batch["idx"], batch["labels"], scores, strict=True):
                rows.append({"idx": int(i), "label": int(y), "pred": int(s.argmax()),
                             "pred_name": task.label_names[int(s.argmax())],
                             "log_probs": [round(float(v), 5) for v in s]})
    return sorted(rows, key=lambda r: r["idx"])


def test_prompt_tuning_trains_only_the_soft_prompt(make_cfg, run_dir, captured, monkeypatch):
    prompts = {}
    real_prepare = prompt_tuning_method.prepare

    def prepare(backbone, cfg, task):
        model = real_prepare(backbone, cfg, task)
        prompts["initial"] = model.prompt_encoder["default"].embedding.weight.detach().clone()
        return model

    monkeypatch.setattr(prompt_tuning_method, "prepare", prepare)
    cfg = make_cfg(method="prompt_tuning")
    result = promptlab.train.run(cfg, run_dir)
    assert result["status"] == "completed"
    assert result["costs"]["train_steps"] == 3

    backbone = captured["backbone"]
    after = backbone.model.state_dict()
    assert set(after) == set(captured["initial"])
    for name, before in captured["initial"].items():
        assert torch.equal(after[name], before), f"backbone weight {name} changed"

    saved = load_file(run_dir / "checkpoint" / "adapter_model.safetensors")
    assert list(saved) == ["prompt_embeddings"]  # only the soft prompt is stored
    soft = saved["prompt_embeddings"]
    assert soft.shape == (cfg.method.num_virtual_tokens, cfg.model.hidden_size)
    assert not torch.equal(soft, prompts["initial"]), "the soft prompt did not train"


def test_full_finetune_changes_the_backbone(make_cfg, run_dir, captured):
    cfg = make_cfg(method="full_finetune")
    result = promptlab.train.run(cfg, run_dir)
    assert result["status"] == "completed"
    after = captured["backbone"].model.state_dict()
    changed = [k for k, v in captured["initial"].items() if not torch.equal(after[k], v)]
    assert len(changed) == len(captured["initial"]), f"unchanged: {set(captured['initial']) - set(changed)}"
    # the saved model is the trained one
    reloaded = full_finetune.load(load_backbone(cfg.model, cfg.paths.cache_dir), run_dir / "checkpoint")
    for k, v in reloaded.state_dict().items():
        assert torch.equal(v, after[k]), k
    assert predictions_from_checkpoint(cfg, reloaded, captured["backbone"]) == read_predictions(run_dir)


def test_soft_prompt_reload_reproduces_predictions(make_cfg, run_dir):
    cfg = make_cfg("method.lr=0.3", method="prompt_tuning")
    promptlab.train.run(cfg, run_dir)
    preds = read_predictions(run_dir)
    assert [r["idx"] for r in preds] == list(range(10))

    backbone = load_backbone(cfg.model, cfg.paths.cache_dir)  # a fresh, untrained backbone
    model = prompt_tuning.load(backbone, run_dir / "checkpoint")
    assert predictions_from_checkpoint(cfg, model, backbone) == preds

    # and the soft prompt matters: the bare backbone scores differently
    bare = predictions_from_checkpoint(cfg, load_backbone(cfg.model, cfg.paths.cache_dir).model, backbone)
    assert [r["log_probs"] for r in bare] != [r["log_probs"] for r in preds]


def test_same_seed_same_run(make_cfg, tmp_path):
    cfg = make_cfg(method="prompt_tuning")
    promptlab.train.run(cfg, tmp_path / "a")
    promptlab.train.run(cfg, tmp_path / "b")
    assert read_predictions(tmp_path / "a") == read_predictions(tmp_path / "b")
    assert read_result(tmp_path / "a")["config_hash"] == read_result(tmp_path / "b")["config_hash"]


@pytest.mark.parametrize("method", ["prompt_tuning", "full_finetune", "zero_shot", "few_shot"])
def test_trainable_parameter_counts(make_cfg, run_dir, method):
    cfg = make_cfg(method=method)
    costs = promptlab.train.run(cfg, run_dir)["costs"]
    assert costs == read_result(run_dir)["costs"]
    backbone_params = sum(p.numel() for p in load_backbone(cfg.model, cfg.paths.cache_dir).model.parameters())
    if method == "prompt_tuning":
        soft = cfg.method.num_virtual_tokens * cfg.model.hidden_size
        assert costs["trainable_params"] == soft == 20 * 32
        assert costs["total_params"] == backbone_params + soft
    elif method == "full_finetune":
        assert costs["trainable_params"] == costs["total_params"] == backbone_params
    else:
        assert costs["trainable_params"] == 0
        assert costs["total_params"] == backbone_params
    assert costs["trainable_fraction"] == pytest.approx(costs["trainable_params"] / costs["total_params"])


@pytest.mark.parametrize("method", ["zero_shot", "few_shot"])
def test_prompting_methods_train_and_store_nothing(make_cfg, run_dir, method):
    result = promptlab.train.run(make_cfg(method=method), run_dir)
    costs = result["costs"]
    assert costs["checkpoint_bytes"] == 0
    assert costs["train_seconds"] == 0
    assert costs["train_steps"] == 0
    assert costs["train_examples_seen"] == 0 and costs["train_tokens_seen"] == 0
    assert result["checkpoint"] is None
    assert not (run_dir / "checkpoint").exists()
    assert result["num_demos"] == (4 if method == "few_shot" else 0)
    assert costs["eval_examples"] == 10


@pytest.mark.parametrize("method", ["prompt_tuning", "full_finetune"])
def test_trained_methods_store_a_checkpoint(make_cfg, run_dir, method):
    result = promptlab.train.run(make_cfg(method=method), run_dir)
    costs = result["costs"]
    assert costs["checkpoint_bytes"] > 0
    assert costs["train_seconds"] > 0
    assert costs["train_steps"] == 3
    assert costs["train_examples_seen"] == 3 * 4  # 3 steps of batch 4 (2-shot x 2 classes)
    assert costs["train_tokens_seen"] > costs["train_examples_seen"]
    assert result["checkpoint"] == "checkpoint"
    assert result["num_train_examples"] == 4


def test_few_shot_differs_from_zero_shot(make_cfg, tmp_path):
    promptlab.train.run(make_cfg(method="zero_shot"), tmp_path / "zero")
    promptlab.train.run(make_cfg(method="few_shot"), tmp_path / "few")
    zero, few = read_predictions(tmp_path / "zero"), read_predictions(tmp_path / "few")
    assert [r["idx"] for r in zero] == [r["idx"] for r in few]
    assert [r["log_probs"] for r in zero] != [r["log_probs"] for r in few]  # the demos reach the model


def test_hub_model_offline_is_a_config_error(tmp_path):
    cfg = compose_config(["model=hub", "model.hub_id=nobody/not-in-any-cache"])
    with pytest.raises(ConfigError, match="nobody/not-in-any-cache"):
        load_backbone(cfg.model, tmp_path / "cache")


@pytest.mark.parametrize("value", ["0", "-1", "abc", "1.5", "100000"])
def test_bad_num_virtual_tokens_fails_before_model_load(make_cfg, run_dir, monkeypatch, value):
    def no_model(*args, **kwargs):
        raise AssertionError("the model must not load for a config error")

    monkeypatch.setattr(promptlab.train, "load_backbone", no_model)
    with pytest.raises(ConfigError, match="num_virtual_tokens"):
        promptlab.train.run(make_cfg(f"method.num_virtual_tokens={value}", method="prompt_tuning"), run_dir)
    result = read_result(run_dir)
    assert result["status"] == "failed"
    assert "num_virtual_tokens" in result["error"]


@pytest.mark.parametrize(
    ("method", "override", "match"),
    [
        ("prompt_tuning", "method.init=bogus", "method.init"),
        ("prompt_tuning", "method.num_demos=2", "num_demos"),
        ("full_finetune", "method.num_demos=2", "num_demos"),
        ("few_shot", "method.num_demos=0", "num_demos"),
        ("zero_shot", "method.num_demos=2", "zero_shot"),
        ("few_shot", "method.num_demos=5", "num_demos=5"),  # the 2-shot pool has 4 examples
        ("prompt_tuning", "data.k_shot=7", "k_shot=7"),  # 6 per class in the data
        ("zero_shot", "data.template=9", "data.template"),
    ],
)
def test_config_errors_fail_before_model_load(make_cfg, run_dir, monkeypatch, method, override, match):
    monkeypatch.setattr(promptlab.train, "load_backbone", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ConfigError, match=match):
        promptlab.train.run(make_cfg(override, method=method), run_dir)
    assert read_result(run_dir)["status"] == "failed"


def test_hub_model_offline_is_a_clear_error(tmp_path):
    from omegaconf import OmegaConf

    from promptlab.errors import ConfigError
    from promptlab.models import load_backbone

    cfg = OmegaConf.create({"name": "x", "source": "hub", "hub_id": "no-such-org/no-such-model", "revision": None})
    with pytest.raises(ConfigError, match="cannot be reached"):
        load_backbone(cfg, tmp_path)
