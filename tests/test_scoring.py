"""LabelScorer equals the textbook full-vocabulary computation, batched and padded or not."""

from __future__ import annotations

import pytest
import torch
from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

from promptlab.prompts import build_messages, encode_prompt, encode_verbalizer
from promptlab.scoring import LabelScorer

TEMPLATE = "Review: {sentence}\nIs the sentiment of this review positive or negative?"
SINGLE = ["yes", "positive"]  # one token each with the tiny BPE (no leading space on the chat path)
MULTI = ["wonderfully", "dreadfully"]  # split into several tokens
MIXED = ["negative", "positive"]  # sst2's verbalizer: "negative" splits, "positive" does not
ATOL = 1e-4


def brute_force(model, prompts, label_ids, skip_positions: int = 0) -> torch.Tensor:
    """Full logits at every position of each unpadded prompt+label sequence, log_softmax over the vocabulary,
    label-token log-probs summed, then log_softmax over the classes. ``skip_positions`` drops leading
    outputs (PEFT's virtual tokens)."""
    out = []
    with torch.no_grad():
        for p in prompts:
            per_class = []
            for lab in label_ids:
                ids = torch.tensor([list(p) + list(lab)])
                logits = model(input_ids=ids).logits[0, skip_positions:]
                assert logits.shape[0] == ids.shape[1]
                logp = torch.log_softmax(logits.double(), dim=-1)
                per_class.append(sum(logp[len(p) - 1 + j, t] for j, t in enumerate(lab)))
            out.append(torch.log_softmax(torch.stack(per_class), dim=-1))
    return torch.stack(out).float()


def make_prompts(tok) -> list[list[int]]:
    """Three prompts of clearly different lengths (so the batch is padded)."""
    demos = [{"sentence": "great fun movie", "label": 1}, {"sentence": "a terrible boring film", "label": 0}]
    prompts = [
        encode_prompt(tok, build_messages(TEMPLATE, {"sentence": "good"})),
        encode_prompt(tok, build_messages(TEMPLATE, {"sentence": "a boring film"}, demos, MIXED)),
        encode_prompt(tok, build_messages(TEMPLATE, {"sentence": "love this movie, it was great fun"}, demos[:1], MIXED)),
    ]
    assert len({len(p) for p in prompts}) == 3
    return prompts


@pytest.mark.parametrize(("words", "single"), [(SINGLE, True), (MULTI, False), (MIXED, False)])
def test_scorer_matches_brute_force(tiny_backbone, words, single):
    model, tok = tiny_backbone.model.eval(), tiny_backbone.tokenizer
    label_ids = encode_verbalizer(tok, words)
    if single:
        assert all(len(t) == 1 for t in label_ids)
    else:
        assert any(len(t) > 1 for t in label_ids)
    scorer = LabelScorer(label_ids, tok.pad_token_id)
    assert scorer.single_token is single

    prompts = make_prompts(tok)
    with torch.no_grad():
        batched = scorer(model, prompts)
        one_by_one = torch.cat([scorer(model, [p]) for p in prompts])
    expected = brute_force(model, prompts, label_ids)
    assert batched.shape == (3, 2)
    torch.testing.assert_close(batched, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(one_by_one, expected, atol=ATOL, rtol=0)  # padding changes nothing
    torch.testing.assert_close(batched.exp().sum(-1), torch.ones(3), atol=1e-5, rtol=0)
    # a random model still prefers different labels for different prompts, more or less: scores not constant
    assert not torch.allclose(batched[0], batched[1])


def test_scorer_is_differentiable(tiny_backbone):
    model, tok = tiny_backbone.model, tiny_backbone.tokenizer
    for words in (SINGLE, MULTI):
        model.zero_grad()
        scorer = LabelScorer(encode_verbalizer(tok, words), tok.pad_token_id)
        loss = -scorer(model, make_prompts(tok))[:, 0].sum()
        loss.backward()
        grad = model.get_input_embeddings().weight.grad
        assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("words", [SINGLE, MULTI])
def test_scorer_through_prompt_tuning(tiny_backbone, words):
    n_virtual = 5
    torch.manual_seed(123)
    config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n_virtual,
                                prompt_tuning_init=PromptTuningInit.RANDOM)
    peft_model = get_peft_model(tiny_backbone.model, config).eval()
    with torch.no_grad():  # a soft prompt far from the (tiny, std 0.02) word embeddings, so it matters
        peft_model.prompt_encoder["default"].embedding.weight.normal_(0.0, 1.0)
    tok = tiny_backbone.tokenizer
    label_ids = encode_verbalizer(tok, words)
    scorer = LabelScorer(label_ids, tok.pad_token_id)
    prompts = make_prompts(tok)
    with torch.no_grad():
        batched = scorer(peft_model, prompts)
        plain = scorer(peft_model.get_base_model(), prompts)
    expected = brute_force(peft_model, prompts, label_ids, skip_positions=n_virtual)
    torch.testing.assert_close(batched, expected, atol=ATOL, rtol=0)
    # the soft prompt matters: without it the scores differ
    assert (batched - plain).abs().max() > 1e-3  # float noise is ~1e-6
