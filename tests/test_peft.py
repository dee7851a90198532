"""Every PEFT YAML on the tiny model: it trains only its own weights, stores what it says, reloads to the same
predictions, reads scores at the right positions past virtual tokens, and generates like a by-hand greedy loop."""

from __future__ import annotations

import pytest
import torch
from conftest import PEFT_METHODS, assert_greedy, assert_only_trainable_changed, read_predictions, read_result
from safetensors.torch import load_file
from test_generation import gen_cfg  # noqa: F401  (fixture)
from test_scoring import brute_force, make_prompts, shared

import promptlab.run
from promptlab.data import eval_items, eval_loader
from promptlab.errors import ConfigError
from promptlab.methods import build_method
from promptlab.methods.peft_adapter import PeftMethod
from promptlab.models import load_backbone
from promptlab.prompts import Encoder
from promptlab.readout import ChoiceReadout, GenerateReadout
from promptlab.readout.decoding import SlotDecoder
from promptlab.readout.model import pad
from promptlab.tasks import TaskSpec, load_task

PROMPT_LEARNING = {"prompt_tuning": 20, "p_tuning": 20, "multitask_prompt_tuning": 20, "prefix_tuning": 0}


@pytest.fixture
def prepared(monkeypatch):
    """Keep the model each run prepares, with a copy of every weight as it was before training."""
    seen = {}
    real = PeftMethod.prepare

    def spy(self, backbone, task):
        model = real(self, backbone, task)
        seen["model"] = model
        seen["before"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return model

    monkeypatch.setattr(PeftMethod, "prepare", spy)
    return seen


def rescore(cfg, model, tok) -> list[dict]:
    """The eval split scored again, batched as run() batches it, with each row's task id."""
    spec = TaskSpec.from_config(cfg.data)
    readout = ChoiceReadout(tok.pad_token_id)
    out = []
    with torch.no_grad():
        for batch in eval_loader(eval_items(Encoder(tok, spec), load_task(spec, cfg.paths.data_root, cfg.seed).eval), 8):
            scores = readout.scores(model.eval(), batch["prompt_ids"], batch["choice_ids"], batch["task_id"])
            out += [(int(i), [round(float(v), 5) for v in s.log_softmax(-1)])
                    for i, s in zip(batch["idx"], scores, strict=True)]
    return sorted(out)


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_peft_method_trains_only_its_own_weights_and_reloads(make_cfg, run_dir, prepared, method):
    cfg = make_cfg("method.max_steps=2", method=method)
    result = promptlab.run.run(cfg, run_dir)
    assert result["status"] == "completed", result.get("error")
    model, before = prepared["model"], prepared["before"]
    trainable = assert_only_trainable_changed(model, before)

    costs = result["costs"]
    saved = load_file(run_dir / "checkpoint" / "adapter_model.safetensors")
    assert costs["stored_params"] == sum(t.numel() for t in saved.values())
    n_trainable = sum(model.get_parameter(n).numel() for n in trainable)
    assert costs["trainable_params"] == n_trainable
    # AdamW keeps two float32 moments per trainable weight (plus a step counter per tensor)
    assert 8 * n_trainable <= costs["optimizer_state_bytes"] <= 8 * n_trainable + 64 * len(trainable)
    if method == "p_tuning":  # the prompt encoder trains; only the prompts it made are stored
        assert costs["stored_params"] < costs["trainable_params"]

    backbone = load_backbone(cfg.model, cfg.paths.cache_dir)  # fresh, untrained
    reloaded = build_method(cfg.method).load(backbone, run_dir / "checkpoint")
    recorded = sorted((r["idx"], r["log_probs"]) for r in read_predictions(run_dir))
    assert rescore(cfg, reloaded, backbone.tokenizer) == recorded
    bare = rescore(cfg, load_backbone(cfg.model, cfg.paths.cache_dir).model, backbone.tokenizer)
    assert bare != recorded, "the adapter changed nothing"


@pytest.mark.parametrize("method", sorted(PROMPT_LEARNING))
def test_scores_are_read_past_the_virtual_tokens(tiny_backbone, method, make_cfg):
    """PEFT #2642/#1607: with virtual tokens prepended, the answer's logits sit num_virtual_tokens further on."""
    cfg = make_cfg(method=method)
    m = build_method(cfg.method)
    model = m.prepare(tiny_backbone, TaskSpec.from_config(cfg.data)).eval()
    tok = tiny_backbone.tokenizer
    prompts = make_prompts(tok)
    kwargs = {"task_ids": torch.zeros(1, dtype=torch.long)} if method == "multitask_prompt_tuning" else {}

    def reference(input_ids):  # brute_force calls model(input_ids=...) one sequence at a time
        return model(input_ids=input_ids, **kwargs)

    for words in (["yes", "positive"], ["wonderfully", "dreadfully"]):  # single-token and multi-token answers
        choices = shared(tok, words)
        got = ChoiceReadout(tok.pad_token_id).scores(model, prompts, choices, [0] * len(prompts))
        want = brute_force(type("M", (), {"__call__": lambda self, input_ids: reference(input_ids)})(), prompts,
                           choices, skip_positions=PROMPT_LEARNING[method])
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning", "multitask_prompt_tuning"])
def test_soft_prompt_rows_decode_as_their_unpadded_sequence(tiny_backbone, method, make_cfg):
    """In the slot decoder a row's first logits are those of its unpadded sequence (soft prompt, then its text, at
    the positions training uses), whatever the other rows' lengths. PEFT's generate drops position ids, which puts
    a left-padded row's text further from its soft prompt: why soft prompts decode in slots."""
    cfg = make_cfg(method=method)
    model = build_method(cfg.method).prepare(tiny_backbone, TaskSpec.from_config(cfg.data)).eval()
    tok = tiny_backbone.tokenizer
    prompts = make_prompts(tok)
    task = {"task_ids": torch.zeros(1, dtype=torch.long)} if method == "multitask_prompt_tuning" else {}
    seen = []

    def greedy(logits):
        seen.append(logits)
        return logits.argmax(-1)

    with torch.no_grad():
        SlotDecoder(model, tok.pad_token_id, len(prompts), greedy, lambda new: True, task_id=0 if task else None
                    ).run(prompts)  # every row ends on its first token: one pass reads all the prompts
        want = torch.stack([model(input_ids=torch.tensor([p]), **task).logits[0, -1] for p in prompts])
    assert len({len(p) for p in prompts}) == len(prompts)
    torch.testing.assert_close(torch.cat(seen), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", sorted(PROMPT_LEARNING))
def test_generation_with_prompt_adapters_is_greedy_and_reloads(gen_cfg, run_dir, method):  # noqa: F811
    """PEFT #1962: generate() with prompt-learning adapters (virtual tokens, prefixes in the cache), batched and
    left-padded as a run batches it, writes each row's greedy tokens (checked against the whole unpadded sequence
    recomputed at every step) and, reloaded, exactly what the run recorded; the readout writes the same."""
    cfg = gen_cfg("method.max_steps=2", "method.lr=0.3", method=method)
    result = promptlab.run.run(cfg, run_dir)
    assert result["status"] == "completed", result.get("error")
    backbone = load_backbone(cfg.model, cfg.paths.cache_dir)
    model = build_method(cfg.method).load(backbone, run_dir / "checkpoint")
    spec = TaskSpec.from_config(cfg.data)
    items = eval_items(Encoder(backbone.tokenizer, spec), load_task(spec, cfg.paths.data_root).eval)
    readout = GenerateReadout(backbone.tokenizer, spec.generation.max_new_tokens)
    kwargs = {"task_ids": torch.zeros(1, dtype=torch.long)} if method == "multitask_prompt_tuning" else {}
    recorded = {r["idx"]: r["generation"] for r in read_predictions(run_dir)}
    for batch in eval_loader(items, cfg.eval_batch_size):  # the run's own batches: the same padding
        prompts = batch["prompt_ids"]
        assert [g.text for g in readout.generate(model, prompts, batch["task_id"])] == [recorded[i] for i in batch["idx"]]
        ids, mask = pad(prompts, backbone.tokenizer.pad_token_id, torch.device("cpu"), left=True)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=readout.config,
                                 **({"task_ids": torch.zeros(len(prompts), dtype=torch.long)} if kwargs else {}))
        rows = out[:, ids.shape[1]:].tolist()
        for prompt, row in zip(prompts, rows, strict=True):
            assert_greedy(model, prompt, row[: readout._decode(row).num_tokens], **kwargs)
        # the readout (slots for a soft prompt: readout.decoding) writes what PEFT's generate writes
        assert [g.text for g in readout.generate(model, prompts, batch["task_id"])] == [
            readout._decode(row).text for row in rows]


@pytest.mark.parametrize(("override", "match"), [
    ("method.peft.target_modules=[attention_query]", r"(?s)attention_query.*match no module.*q_proj"),
])
def test_peft_errors_found_on_the_model_are_one_clear_message(make_cfg, run_dir, override, match):
    with pytest.raises(ConfigError, match=match):
        promptlab.run.run(make_cfg(override, method="lora"), run_dir)
    assert read_result(run_dir)["status"] == "failed"


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning", "lora", "ia3", "full_finetune"])
def test_gradient_checkpointing_gives_the_same_gradients(tmp_path, make_cfg, method):
    """method.gradient_checkpointing recomputes activations in the backward pass; the gradients are unchanged."""
    grads = {}
    for on in (False, True):
        cfg = make_cfg(f"method.gradient_checkpointing={str(on).lower()}", method=method)
        m = build_method(cfg.method)
        backbone = load_backbone(cfg.model, tmp_path / "cache")
        torch.manual_seed(0)  # the same adapter initialisation and dropout masks both times
        model = m.prepare(backbone, TaskSpec.from_config(cfg.data))
        m.checkpoint_activations(model)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        assert base.is_gradient_checkpointing is on
        tok = backbone.tokenizer
        batch = {"prompt_ids": make_prompts(tok), "choice_ids": shared(tok, ["wonderfully", "dreadfully"]),
                 "labels": torch.tensor([0, 1, 0])}
        ChoiceReadout(tok.pad_token_id).loss(model, batch).backward()
        grads[on] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert grads[True].keys() == grads[False].keys() and grads[True]
    for name, g in grads[False].items():
        torch.testing.assert_close(grads[True][name], g, atol=1e-6, rtol=1e-4, msg=name)


def test_gradient_checkpointing_with_prefix_tuning_is_refused_before_the_model_loads(make_cfg):
    cfg = make_cfg("method.gradient_checkpointing=true", method="prefix_tuning")
    with pytest.raises(ConfigError, match="prefix tuning") as err:
        build_method(cfg.method).validate(TaskSpec.from_config(cfg.data))
    assert "gradient_checkpointing=false" in err.value.fix


def test_gradient_checkpointing_must_be_true_or_false(make_cfg):
    cfg = make_cfg("method.gradient_checkpointing=sometimes", method="lora")
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        build_method(cfg.method).validate(TaskSpec.from_config(cfg.data))


@pytest.mark.parametrize(("method", "override", "match"), [
    ("lora", "+method.peft.use_dora=no", r"use_dora='no' is not of type bool .*\n.*use_dora=true or"),
    ("prefix_tuning", "method.peft.prefix_projection=maybe", r"prefix_projection='maybe' is not of type bool"),
    ("lora", "method.peft.lora_alpha=abc", r"lora_alpha='abc' is not of type int"),
    ("lora", "method.peft.target_modules=[1]", r"target_modules=\[1\] is not of type .*list\[str\]"),  # Union order varies
    ("lora", "method.peft.r=0", r"r=0 is not a whole number >= 1(?s:.*)method.peft.r=8"),
    ("p_tuning", "method.peft.encoder_hidden_size=0", r"encoder_hidden_size=0 is not a whole number >= 1"),
    ("multitask_prompt_tuning", "method.peft.num_ranks=0", r"num_ranks=0 is not a whole number >= 1"),
])
def test_peft_fields_of_the_wrong_type_or_a_zero_size_are_refused_before_the_model_loads(make_cfg, method, override,
                                                                                          match):
    """PEFT itself takes any string as a true bool (use_dora=no would train DoRA and record LoRA) and builds an
    all-zero prompt for num_ranks=0."""
    with pytest.raises(ConfigError, match=match):
        promptlab.run.plan(make_cfg(override, method=method))
