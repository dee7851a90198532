"""ChoiceReadout (rank scoring) equals the textbook full-vocabulary computation, batched and padded or not,
for shared answer words (one or several tokens) and for per-example answers (COPA-style, ragged)."""

from __future__ import annotations

import copy
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

from promptlab.prompts import build_messages, encode_answer, encode_prompt, render
from promptlab.readout import ChoiceReadout, brute_force_scores

TEMPLATE = "Review: {sentence}\nIs the sentiment of this review positive or negative?"
SINGLE = ["yes", "positive"]  # one token each with the tiny BPE (no leading space on the chat path)
MULTI = ["wonderfully", "dreadfully"]  # split into several tokens
MIXED = ["negative", "positive"]  # sst2's verbalizer: "negative" splits, "positive" does not
# Per-example answers, as COPA's choice1/choice2 (and one example with three): one sequence per pair
PER_EXAMPLE = [["the film was great", "the film was bad"], ["yes", "no", "maybe"], ["good", "terrible boring"]]
ATOL = 1e-4


def brute_force(model, prompts, choices, skip_positions: int = 0) -> torch.Tensor:
    """Full logits at every position of each unpadded prompt+answer sequence, log_softmax over the vocabulary,
    answer-token log-probs summed (each answer's log-likelihood); -inf pads shorter lists. ``skip_positions``
    drops leading outputs (PEFT's virtual tokens)."""
    width = max(len(cs) for cs in choices)
    out = torch.full((len(prompts), width), -torch.inf, dtype=torch.float64)
    with torch.no_grad():
        for i, (p, cs) in enumerate(zip(prompts, choices, strict=True)):
            per_choice = []
            for lab in cs:
                ids = torch.tensor([list(p) + list(lab)])
                logits = model(input_ids=ids).logits[0, skip_positions:]
                assert logits.shape[0] == ids.shape[1]
                logp = torch.log_softmax(logits.double(), dim=-1)
                per_choice.append(sum(logp[len(p) - 1 + j, t] for j, t in enumerate(lab)))
            out[i, : len(cs)] = torch.stack(per_choice)
    return out.float()


def make_prompts(tok) -> list[list[int]]:
    """Three prompts of clearly different lengths (so the batch is padded)."""
    demos = [(render(TEMPLATE, {"sentence": "great fun movie"}), MIXED[1]),
             (render(TEMPLATE, {"sentence": "a terrible boring film"}), MIXED[0])]
    prompts = [
        encode_prompt(tok, build_messages(render(TEMPLATE, {"sentence": "good"}))),
        encode_prompt(tok, build_messages(render(TEMPLATE, {"sentence": "a boring film"}), demos)),
        encode_prompt(tok, build_messages(render(TEMPLATE, {"sentence": "love this movie, it was great fun"}),
                                          demos[:1])),
    ]
    assert len({len(p) for p in prompts}) == 3
    return prompts


def shared(tok, words, n=3) -> list[list[list[int]]]:
    """The same answer words for each of n examples (a fixed-choice task such as sst2)."""
    ids = [encode_answer(tok, w) for w in words]
    return [ids] * n


def scores_and_path(readout, model, prompts, choices) -> tuple[torch.Tensor, bool]:
    """The readout's scores, and whether it took the single-token fast path."""
    with mock.patch.object(readout, "_single_token", wraps=readout._single_token) as fast:
        scores = readout.scores(model, prompts, choices)
    return scores, fast.called


@pytest.mark.parametrize(("words", "single"), [(SINGLE, True), (MULTI, False), (MIXED, False)])
def test_readout_matches_brute_force(tiny_backbone, words, single):
    model, tok = tiny_backbone.model.eval(), tiny_backbone.tokenizer
    choices = shared(tok, words)
    if single:
        assert all(len(t) == 1 for t in choices[0])
    else:
        assert any(len(t) > 1 for t in choices[0])
    readout = ChoiceReadout(tok.pad_token_id)

    prompts = make_prompts(tok)
    with torch.no_grad():
        batched, fast = scores_and_path(readout, model, prompts, choices)
        one_by_one = torch.cat([readout.scores(model, [p], [c]) for p, c in zip(prompts, choices, strict=True)])
    assert fast is single  # only shared single-token answers take the fast path
    expected = brute_force(model, prompts, choices)
    assert batched.shape == (3, 2)
    torch.testing.assert_close(batched, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(one_by_one, expected, atol=ATOL, rtol=0)  # padding changes nothing
    assert (batched <= 0).all()  # log-likelihoods of whole answers, not normalised over the answers
    # a random model still prefers different labels for different prompts, more or less: scores not constant
    assert not torch.allclose(batched[0], batched[1])
    # the module's own reference (used by other tests) agrees with this one
    with torch.no_grad():
        torch.testing.assert_close(brute_force_scores(model, prompts, choices), expected, atol=ATOL, rtol=0)


def test_single_token_answers_that_differ_per_example(tiny_backbone):
    """One-token answers, but not the same for every example: each pair is scored, not the shared rows."""
    model, tok = tiny_backbone.model.eval(), tiny_backbone.tokenizer
    choices = [[encode_answer(tok, w) for w in ws] for ws in (["yes", "positive"], ["positive", "yes"], ["yes", "positive"])]
    assert all(len(t) == 1 for cs in choices for t in cs)
    readout = ChoiceReadout(tok.pad_token_id)
    prompts = make_prompts(tok)
    with torch.no_grad():
        batched, fast = scores_and_path(readout, model, prompts, choices)
    assert not fast
    torch.testing.assert_close(batched, brute_force(model, prompts, choices), atol=ATOL, rtol=0)


def test_per_example_answers_are_ragged(tiny_backbone):
    model, tok = tiny_backbone.model.eval(), tiny_backbone.tokenizer
    choices = [[encode_answer(tok, w) for w in ws] for ws in PER_EXAMPLE]
    readout = ChoiceReadout(tok.pad_token_id)
    prompts = make_prompts(tok)
    with torch.no_grad():
        batched = readout.scores(model, prompts, choices)
        one_by_one = [readout.scores(model, [p], [c])[0] for p, c in zip(prompts, choices, strict=True)]
    expected = brute_force(model, prompts, choices)
    assert batched.shape == (3, 3)
    assert torch.isneginf(batched[0, 2]) and torch.isneginf(batched[2, 2])  # padding of the 2-answer examples
    assert torch.isfinite(batched[1]).all()
    torch.testing.assert_close(batched, expected, atol=ATOL, rtol=0)
    for row, alone, cs in zip(batched, one_by_one, choices, strict=True):
        assert alone.shape == (len(cs),)
        torch.testing.assert_close(row[: len(cs)], alone, atol=ATOL, rtol=0)  # batching changes nothing


def test_predict_rows_and_loss(tiny_backbone):
    model, tok = tiny_backbone.model.eval(), tiny_backbone.tokenizer
    choices = [[encode_answer(tok, w) for w in ws] for ws in PER_EXAMPLE]
    prompts = make_prompts(tok)
    batch = {"idx": [7, 3, 5], "prompt_ids": prompts, "choice_ids": choices, "choices": PER_EXAMPLE,
             "labels": torch.tensor([1, 2, 0])}
    readout = ChoiceReadout(tok.pad_token_id)
    with torch.no_grad():
        sums = readout.scores(model, prompts, choices)
        rows = readout.predict(model, batch)
        loss = readout.loss(model, batch)
    normalised = sums.log_softmax(-1)
    assert [(r["idx"], r["label"]) for r in rows] == [(7, 1), (3, 2), (5, 0)]
    assert [r["pred"] for r in rows] == sums.argmax(-1).tolist()
    for r, s, n, cs, texts in zip(rows, sums, normalised, choices, PER_EXAMPLE, strict=True):
        assert r["log_probs"] == [round(float(v), 5) for v in n[: len(cs)]]  # no -inf padding in the record
        assert r["answer_logprobs"] == [round(float(v), 5) for v in s[: len(cs)]]
        assert r["answer_tokens"] == [len(c) for c in cs]
        assert r["answer_chars"] == [len(t) for t in texts] == r["answer_bytes"]  # ASCII
    torch.testing.assert_close(loss, -normalised[[0, 1, 2], [1, 2, 0]].mean())
    torch.testing.assert_close(loss, F.nll_loss(normalised, batch["labels"]))


def test_bytes_and_characters_differ_beyond_ascii(tiny_backbone):
    tok = tiny_backbone.tokenizer
    from promptlab.readout.choice import choice_row

    texts = ["café", "tea"]
    row = choice_row(0, 1, torch.tensor([-4.0, -3.0]), [encode_answer(tok, t) for t in texts], texts)
    assert row["answer_chars"] == [4, 3] and row["answer_bytes"] == [5, 3]


def test_readout_is_differentiable(tiny_backbone):
    model, tok = tiny_backbone.model, tiny_backbone.tokenizer
    readout = ChoiceReadout(tok.pad_token_id)
    per_example = [[encode_answer(tok, w) for w in ws] for ws in PER_EXAMPLE]
    for choices in (shared(tok, SINGLE), shared(tok, MULTI), per_example):
        model.zero_grad()
        loss = -readout.scores(model, make_prompts(tok), choices)[:, 0].sum()
        loss.backward()
        grad = model.get_input_embeddings().weight.grad
        assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("words", [SINGLE, MULTI, None])
def test_readout_through_prompt_tuning(tiny_backbone, words):
    n_virtual = 5
    torch.manual_seed(123)
    config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n_virtual,
                                prompt_tuning_init=PromptTuningInit.RANDOM)
    peft_model = get_peft_model(tiny_backbone.model, config).eval()
    with torch.no_grad():  # a soft prompt far from the (tiny, std 0.02) word embeddings, so it matters
        peft_model.prompt_encoder["default"].embedding.weight.normal_(0.0, 1.0)
    tok = tiny_backbone.tokenizer
    choices = shared(tok, words) if words else [[encode_answer(tok, w) for w in ws] for ws in PER_EXAMPLE]
    readout = ChoiceReadout(tok.pad_token_id)
    prompts = make_prompts(tok)
    with torch.no_grad():
        batched = readout.scores(peft_model, prompts, choices)
        plain = readout.scores(peft_model.get_base_model(), prompts, choices)
    expected = brute_force(peft_model, prompts, choices, skip_positions=n_virtual)
    torch.testing.assert_close(batched, expected, atol=ATOL, rtol=0)
    # the soft prompt matters: without it the scores differ
    finite = torch.isfinite(batched)
    assert (batched[finite] - plain[finite]).abs().max() > 1e-3  # float noise is ~1e-6


@pytest.mark.parametrize("words", [SINGLE, MULTI])
def test_shared_prefix_cache_changes_no_score(tiny_backbone, words):
    """Few-shot prompts share the system turn and the demonstrations: running that prefix once (readout.model.
    PrefixCache) gives the scores of running every whole sequence, batch after batch."""
    model, tok = tiny_backbone.model.eval(), tiny_backbone.tokenizer
    demos = [(render(TEMPLATE, {"sentence": "great fun movie"}), MIXED[1]),
             (render(TEMPLATE, {"sentence": "a terrible boring film"}), MIXED[0])]
    queries = ["good", "a boring film", "love this movie, it was great fun", "bad", "fun film with love"]
    prompts = [encode_prompt(tok, build_messages(render(TEMPLATE, {"sentence": q}), demos)) for q in queries]
    choices = shared(tok, words, len(prompts))
    plain, cached = ChoiceReadout(tok.pad_token_id), ChoiceReadout(tok.pad_token_id)
    plain.prefix.enabled = False  # every whole sequence, one per (prompt, answer)
    cached.prefix.min_tokens = 1
    with torch.no_grad():
        expected = plain.scores(model, prompts, choices)
        first = cached.scores(model, prompts[:3], choices[:3])
        again = cached.scores(model, prompts[3:], choices[3:])  # reuses the first batch's prefix
    assert len(cached.prefix.prefix) > 20  # the demonstrations, at least
    torch.testing.assert_close(torch.cat([first, again]), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(expected, brute_force(model, prompts, choices), atol=ATOL, rtol=0)


def test_shared_prefix_cache_is_not_used_with_gradients_or_wrappers(tiny_backbone):
    model, tok = tiny_backbone.model.eval(), tiny_backbone.tokenizer
    prompts = make_prompts(tok)
    readout = ChoiceReadout(tok.pad_token_id)
    readout.prefix.min_tokens = 1
    assert readout.prefix.applies(model, prompts, 10**6) == 0  # gradients on: training
    with torch.no_grad():
        assert readout.prefix.applies(model, prompts, 10**6) > 0
        peft = get_peft_model(model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=2,
                                                        prompt_tuning_init=PromptTuningInit.RANDOM))
        assert readout.prefix.applies(peft, prompts, 10**6) == 0


def per_example_answers(tok) -> list[list[list[int]]]:
    """COPA-like answers: their own per example, of different counts and token lengths (1 to several)."""
    words = [["yes", "a terrible boring film", "wonderfully"], ["good"], ["dreadfully", "love this movie"]]
    return [[encode_answer(tok, w) for w in ws] for ws in words]


@pytest.mark.parametrize("adapter", [None, "lora"])
@pytest.mark.parametrize("kind", ["shared multi-token", "per example"])
def test_each_prompt_runs_once_for_all_its_answers_with_the_same_scores(tiny_backbone, adapter, kind):
    """Inference with several answers per example: the prompt runs once (its cache kept, its shared prefix too)
    and each answer continues it; the scores are those of one whole sequence per (prompt, answer)."""
    model, tok = tiny_backbone.model.eval(), tiny_backbone.tokenizer
    if adapter:
        torch.manual_seed(0)
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).eval()
    prompts = make_prompts(tok)
    choices = shared(tok, MULTI) if kind == "shared multi-token" else per_example_answers(tok)
    whole, once = ChoiceReadout(tok.pad_token_id), ChoiceReadout(tok.pad_token_id)
    whole.prefix.enabled = False
    once.prefix.min_tokens = 1  # the prompts' shared opening is cached as well
    with torch.no_grad(), mock.patch.object(once, "_prompt_once", wraps=once._prompt_once) as reused:
        got = once.scores(model, prompts, choices)
        want = whole.scores(model, prompts, choices)
    assert reused.called
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    if adapter is None:
        torch.testing.assert_close(got, brute_force(model, prompts, choices), atol=ATOL, rtol=0)


def test_prefix_reuse_serves_weight_adapters_but_not_prompt_learning(tiny_backbone):
    model, tok = tiny_backbone.model.eval(), tiny_backbone.tokenizer
    readout = ChoiceReadout(tok.pad_token_id)
    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules="all-linear")).eval()
    with torch.no_grad():
        assert readout.prefix.reuses(lora)
    prompt = get_peft_model(tiny_backbone.model, PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=2, prompt_tuning_init=PromptTuningInit.RANDOM)).eval()
    with torch.no_grad():
        assert not readout.prefix.reuses(prompt)


def test_the_prefix_cache_belongs_to_its_precision(tiny_backbone):
    """A prefix cached under bf16 autocast is not reused for fp32 scoring (nor the reverse)."""
    model, tok = tiny_backbone.model.eval(), tiny_backbone.tokenizer
    prompts, choices = make_prompts(tok), shared(tok, SINGLE)
    readout = ChoiceReadout(tok.pad_token_id)
    readout.prefix.min_tokens = 1
    with torch.no_grad():
        fp32 = readout.scores(model, prompts, choices)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            readout.scores(model, prompts, choices)
        again = readout.scores(model, prompts, choices)
    torch.testing.assert_close(again, fp32, atol=0, rtol=0)
    readout.new_pass()
    assert readout.prefix.prefix == [] and readout.prefix.cache is None
