"""End to end through promptlab.run.run on the tiny model: what each method trains, saves and costs."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config, read_predictions, read_result
from safetensors.torch import load_file

import promptlab.run
import promptlab.run.execute
import promptlab.train
from promptlab.data import eval_items, eval_loader
from promptlab.errors import ConfigError
from promptlab.methods import build_method
from promptlab.methods.peft_adapter import PeftMethod
from promptlab.models import load_backbone
from promptlab.prompts import Encoder
from promptlab.readout import ChoiceReadout
from promptlab.schema import prompt_hash
from promptlab.tasks import TaskSpec, load_task


@pytest.fixture
def captured(monkeypatch):
    """Wrap load_backbone inside run(): keep the Backbone and a copy of its weights as loaded."""
    seen = {}
    real = promptlab.run.execute.load_backbone

    def spy(cfg, cache_dir):
        backbone = real(cfg, cache_dir)
        seen["backbone"] = backbone
        seen["initial"] = {k: v.detach().clone() for k, v in backbone.model.state_dict().items()}
        return backbone

    monkeypatch.setattr(promptlab.run.execute, "load_backbone", spy)
    return seen


def cfg_display(method: str) -> str:
    return compose_config([f"method={method}"]).method.display_name


def predictions_from_checkpoint(cfg, model, backbone) -> list[dict]:
    """Re-score the eval split as run() batches it (same prompts, same batches) with a reloaded model, computing
    every predictions.jsonl field here: a trained method has no demonstrations, sst2's choices are fixed; each
    length-normalised readout divides the summed answer log-likelihood by the answer's tokens, characters, bytes."""
    spec = TaskSpec.from_config(cfg.data)
    task = load_task(spec, cfg.paths.data_root, cfg.seed)
    tok = backbone.tokenizer
    readout = ChoiceReadout(tok.pad_token_id)
    rows, items = [], eval_items(Encoder(tok, spec), task.eval)
    # the prompt the model read, as prompts.jsonl keys it: the SHA-256 of the decoded prompt tokens
    hashes = {x["idx"]: prompt_hash(tok.decode(x["prompt_ids"], skip_special_tokens=False,
                                               clean_up_tokenization_spaces=False)) for x in items}
    with torch.no_grad():
        for batch in eval_loader(items, cfg.eval_batch_size):
            sums = readout.scores(model.eval(), batch["prompt_ids"], batch["choice_ids"]).float().cpu()
            for i, y, s, ids in zip(batch["idx"], batch["labels"], sums, batch["choice_ids"], strict=True):
                pred, correct = int(s.argmax()), float(int(s.argmax()) == int(y))
                logp = [round(float(v), 5) for v in s]
                lengths = {"answer_tokens": [len(c) for c in ids], "answer_chars": [len(c) for c in spec.choices],
                           "answer_bytes": [len(c.encode()) for c in spec.choices]}
                norms = {f"pred@{name}": max(range(len(logp)), key=lambda c, k=key: logp[c] / lengths[k][c])
                         for name, key in (("per_token", "answer_tokens"), ("per_char", "answer_chars"),
                                           ("per_byte", "answer_bytes"))}
                rows.append({"idx": int(i), "label": int(y), "pred": pred,
                             "log_probs": [round(float(v), 5) for v in s.log_softmax(-1)], "answer_logprobs": logp,
                             **lengths, "pred_name": spec.class_names[pred],
                             "scores": {"accuracy": correct, "macro_f1": correct}, "score": correct, **norms,
                             "prompt_hash": hashes[int(i)]})
    return sorted(rows, key=lambda r: r["idx"])


def test_prompt_tuning_trains_only_the_soft_prompt(make_cfg, run_dir, captured, monkeypatch):
    prompts = {}
    real_prepare = PeftMethod.prepare

    def prepare(self, backbone, task):
        model = real_prepare(self, backbone, task)
        prompts["initial"] = model.prompt_encoder["default"].embedding.weight.detach().clone()
        return model

    monkeypatch.setattr(PeftMethod, "prepare", prepare)
    cfg = make_cfg(method="prompt_tuning")
    result = promptlab.run.run(cfg, run_dir)
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
    assert soft.shape == (cfg.method.peft.num_virtual_tokens, cfg.model.hidden_size)
    assert not torch.equal(soft, prompts["initial"]), "the soft prompt did not train"


def test_full_finetune_changes_the_backbone(make_cfg, run_dir, captured):
    cfg = make_cfg(method="full_finetune")
    result = promptlab.run.run(cfg, run_dir)
    assert result["status"] == "completed"
    after = captured["backbone"].model.state_dict()
    changed = [k for k, v in captured["initial"].items() if not torch.equal(after[k], v)]
    assert len(changed) == len(captured["initial"]), f"unchanged: {set(captured['initial']) - set(changed)}"
    # the saved model is the trained one
    reloaded = build_method(cfg.method).load(load_backbone(cfg.model, cfg.paths.cache_dir), run_dir / "checkpoint")
    for k, v in reloaded.state_dict().items():
        assert torch.equal(v, after[k]), k
    assert predictions_from_checkpoint(cfg, reloaded, captured["backbone"]) == read_predictions(run_dir)


def test_soft_prompt_reload_reproduces_predictions(make_cfg, run_dir):
    cfg = make_cfg("method.lr=0.3", method="prompt_tuning")
    promptlab.run.run(cfg, run_dir)
    preds = read_predictions(run_dir)
    assert [r["idx"] for r in preds] == list(range(10))

    backbone = load_backbone(cfg.model, cfg.paths.cache_dir)  # a fresh, untrained backbone
    model = build_method(cfg.method).load(backbone, run_dir / "checkpoint")
    assert predictions_from_checkpoint(cfg, model, backbone) == preds

    # and the soft prompt matters: the bare backbone scores differently
    bare = predictions_from_checkpoint(cfg, load_backbone(cfg.model, cfg.paths.cache_dir).model, backbone)
    assert [r["log_probs"] for r in bare] != [r["log_probs"] for r in preds]


def test_same_seed_same_run(make_cfg, tmp_path):
    cfg = make_cfg(method="prompt_tuning")
    promptlab.run.run(cfg, tmp_path / "a")
    promptlab.run.run(cfg, tmp_path / "b")
    assert read_predictions(tmp_path / "a") == read_predictions(tmp_path / "b")
    assert read_result(tmp_path / "a")["config_hash"] == read_result(tmp_path / "b")["config_hash"]


@pytest.mark.parametrize("method", ["prompt_tuning", "full_finetune", "zero_shot", "few_shot"])
def test_trainable_parameter_counts(make_cfg, run_dir, method):
    cfg = make_cfg(method=method)
    costs = promptlab.run.run(cfg, run_dir)["costs"]
    assert costs == read_result(run_dir)["costs"]
    backbone_params = sum(p.numel() for p in load_backbone(cfg.model, cfg.paths.cache_dir).model.parameters())
    if method == "prompt_tuning":
        soft = cfg.method.peft.num_virtual_tokens * cfg.model.hidden_size
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
    result = promptlab.run.run(make_cfg(method=method), run_dir)
    costs = result["costs"]
    assert costs["checkpoint_bytes"] == 0
    assert costs["train_seconds"] == 0
    assert costs["train_steps"] == 0
    assert costs["train_examples_seen"] == 0 and costs["train_tokens_seen"] == 0
    assert result["checkpoint"] is None
    assert not (run_dir / "checkpoint").exists()
    assert result["num_demos"] == (4 if method == "few_shot" else 0)
    assert costs["eval_examples"] == 10
    assert result["method_info"] == {"name": method, "type": "prompting", "display_name": cfg_display(method),
                                     "modifies": compose_config([f"method={method}"]).method.modifies,
                                     "trains": False}


@pytest.mark.parametrize("method", ["prompt_tuning", "full_finetune"])
def test_trained_methods_store_a_checkpoint(make_cfg, run_dir, method):
    result = promptlab.run.run(make_cfg(method=method), run_dir)
    costs = result["costs"]
    assert costs["checkpoint_bytes"] > 0
    assert costs["train_seconds"] > 0
    assert costs["train_steps"] == 3
    assert costs["train_examples_seen"] == 3 * 4  # 3 steps of batch 4 (2-shot x 2 classes)
    assert costs["train_tokens_seen"] > costs["train_examples_seen"]
    assert result["checkpoint"] == "checkpoint"
    assert result["num_train_examples"] == 4
    assert result["method_info"]["type"] == {"prompt_tuning": "peft"}.get(method, method)
    assert result["method_info"]["trains"] is True


def test_few_shot_differs_from_zero_shot(make_cfg, tmp_path):
    promptlab.run.run(make_cfg(method="zero_shot"), tmp_path / "zero")
    promptlab.run.run(make_cfg(method="few_shot"), tmp_path / "few")
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

    monkeypatch.setattr(promptlab.run.execute, "load_backbone", no_model)
    with pytest.raises(ConfigError, match="num_virtual_tokens"):
        promptlab.run.run(make_cfg(f"method.peft.num_virtual_tokens={value}", method="prompt_tuning"), run_dir)
    result = read_result(run_dir)
    assert result["status"] == "failed"
    assert "num_virtual_tokens" in result["error"]


@pytest.mark.parametrize(
    ("method", "overrides", "match"),
    [
        ("prompt_tuning", "method.peft.prompt_tuning_init=bogus", "prompt_tuning_init='bogus'"),
        ("prompt_tuning", ("method.peft.prompt_tuning_init=TEXT", "data.prompt_init_text=''"), "init_text"),
        ("prompt_tuning", "method.peft._target_=peft.NoSuchConfig", "NoSuchConfig is not a class"),
        ("prompt_tuning", "method.peft._target_=collections.OrderedDict", "not a PEFT config class"),
        ("lora", "+method.peft.lora_alpah=4", "did you mean method.peft.lora_alpha"),
        ("lora", "+method.peft.rank=4", "use its fields: .*target_modules"),
        ("p_tuning", "method.peft.encoder_reparameterization_type=GRU", "MLP, LSTM"),
        ("ia3", "method.peft.feedforward_modules=[up_proj]", "IA3Config refuses"),
        ("multitask_prompt_tuning", ("method.peft.prompt_tuning_init=AVERAGE_SOURCE_TASKS",
                                     "method.peft.prompt_tuning_init_state_dict_path=/nonexistent/a.safetensors"),
         "is not a file"),  # not among target_modules
        ("prompt_tuning", "+method.num_demos=2", "num_demos"),  # trained methods have no num_demos key
        ("full_finetune", "+method.num_demos=2", "num_demos"),
        ("prompt_tuning", "method.lr=0", "method.lr"),
        ("prompt_tuning", "method.warmup_ratio=1", "method.warmup_ratio"),
        ("full_finetune", "method.max_steps=0", "method.max_steps"),
        ("full_finetune", "method.batch_size=0", "method.batch_size"),
        ("full_finetune", "method.weight_decay=-0.1", "method.weight_decay"),
        ("few_shot", "method.num_demos=0", "num_demos"),
        ("few_shot", "method.num_demos=-1", "num_demos=-1"),
        ("zero_shot", "method.num_demos=2", "zero_shot"),
        ("few_shot", "method.num_demos=5", "num_demos=5"),  # the 2-shot pool has 4 examples
        ("zero_shot_cot", "method.trigger=''", "method.trigger"),
        ("zero_shot_cot", "method.max_new_tokens=0", "method.max_new_tokens"),
        ("zero_shot", "method.type=nope", "not registered"),
        ("prompt_tuning", "data.k_shot=7", "k_shot=7"),  # 6 per class in the data
        ("few_shot", "data.k_shot=0", "k_shot"),
        ("zero_shot", "data.template=9", "data.template"),
        ("zero_shot", "data.metrics=[accuracy,bogus]", "unknown metric 'bogus'"),
        ("zero_shot", "data.primary_metric=macro_f1", None),  # valid: a metric of the task (control case)
        ("zero_shot", "data.eval_limit=0", "eval_limit"),
        ("zero_shot", ("data.source=local", "paths.data_root=/nonexistent/promptlab"), "missing data file"),
    ],
)
def test_config_errors_fail_before_model_load(make_cfg, run_dir, monkeypatch, method, overrides, match):
    overrides = (overrides,) if isinstance(overrides, str) else overrides
    loaded = []
    monkeypatch.setattr(promptlab.run.execute, "load_backbone", lambda *a, **k: loaded.append(1) or pytest.fail("model loaded"))
    if match is None:  # the control: the same path goes on to load the model
        with pytest.raises(pytest.fail.Exception, match="model loaded"):
            promptlab.run.run(make_cfg(*overrides, method=method), run_dir)
        assert loaded
        return
    with pytest.raises(ConfigError, match=match):
        promptlab.run.run(make_cfg(*overrides, method=method), run_dir)
    assert not loaded
    result = read_result(run_dir)
    assert result["status"] == "failed" and "ConfigError" in result["error"]


def test_hub_model_offline_is_a_clear_error(tmp_path):
    from omegaconf import OmegaConf

    from promptlab.errors import ConfigError
    from promptlab.models import load_backbone

    cfg = OmegaConf.create({"name": "x", "source": "hub", "hub_id": "no-such-org/no-such-model", "revision": None})
    with pytest.raises(ConfigError, match="cannot be reached"):
        load_backbone(cfg, tmp_path)


def test_adamw_is_fused_and_steps_like_the_unfused_one(tiny_backbone):
    """The fused AdamW kernel (one pass over all weights) takes the step the per-tensor one takes."""
    from promptlab.module import Optim, PromptModule

    model = tiny_backbone.model.requires_grad_(True)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    module = PromptModule(model, ChoiceReadout(0), Optim(lr=1e-3, weight_decay=0.01, max_steps=10))
    optimizer = module.configure_optimizers()["optimizer"]
    assert optimizer.defaults["fused"] is True
    for p in model.parameters():
        p.grad = torch.ones_like(p) * 0.1
    optimizer.step()
    fused = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(start[n])
    reference = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, foreach=False)
    reference.step()
    for n, p in model.named_parameters():
        torch.testing.assert_close(fused[n], p.detach(), msg=n)
