"""Rendering examples and demonstrations into prompts, on both the chat-template and the plain path."""

from __future__ import annotations

import copy

import pytest

from promptlab.errors import ConfigError
from promptlab.prompts import build_messages, encode_prompt, encode_verbalizer, render, template_fields

SST2_TEMPLATE = "Review: {sentence}\nIs the sentiment of this review positive or negative?"
RTE_TEMPLATE = "{sentence1}\nQuestion: does this imply that \"{sentence2}\"? Answer yes or no."
VERBALIZER = ["negative", "positive"]
QUERY = {"idx": 9, "sentence": "  a boring film \n", "label": 0}
DEMOS = [
    {"idx": 1, "sentence": "great fun", "label": 1},
    {"idx": 2, "sentence": "terrible movie", "label": 0},
    {"idx": 3, "sentence": "love this film", "label": 1},
]


@pytest.fixture
def plain_tok(tiny_tok):
    tok = copy.deepcopy(tiny_tok)
    tok.chat_template = None
    return tok


def test_template_fields():
    assert template_fields(SST2_TEMPLATE) == {"sentence"}
    assert template_fields(RTE_TEMPLATE) == {"sentence1", "sentence2"}


def test_render_strips_values_and_ignores_extra_columns():
    assert render(SST2_TEMPLATE, QUERY) == "Review: a boring film\nIs the sentiment of this review positive or negative?"
    text = render(RTE_TEMPLATE, {"sentence1": "It rains. ", "sentence2": " It is wet.", "label": 0, "idx": 4})
    assert text == 'It rains.\nQuestion: does this imply that "It is wet."? Answer yes or no.'


def test_build_messages_zero_shot():
    assert build_messages(SST2_TEMPLATE, QUERY) == [{"role": "user", "content": render(SST2_TEMPLATE, QUERY)}]


def test_build_messages_demos_in_order_then_query():
    messages = build_messages(SST2_TEMPLATE, QUERY, DEMOS, VERBALIZER, "label", system_prompt="Be brief.")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user",
                                             "assistant", "user"]
    assert messages[0]["content"] == "Be brief."
    for i, demo in enumerate(DEMOS):
        assert messages[1 + 2 * i]["content"] == render(SST2_TEMPLATE, demo)
        assert messages[2 + 2 * i]["content"] == VERBALIZER[demo["label"]]
    assert messages[-1]["content"] == render(SST2_TEMPLATE, QUERY)


def test_chat_prompt_has_demos_as_earlier_turns(tiny_tok):
    assert tiny_tok.chat_template  # the tiny tokenizer exercises the chat path
    messages = build_messages(SST2_TEMPLATE, QUERY, DEMOS, VERBALIZER, "label")
    ids = encode_prompt(tiny_tok, messages)
    text = tiny_tok.decode(ids)
    expected = "".join(
        f"<|im_start|>user\n{render(SST2_TEMPLATE, d)}<|im_end|>\n<|im_start|>assistant\n{VERBALIZER[d['label']]}<|im_end|>\n"
        for d in DEMOS
    ) + f"<|im_start|>user\n{render(SST2_TEMPLATE, QUERY)}<|im_end|>\n<|im_start|>assistant\n"
    assert text == expected
    assert text.endswith("<|im_start|>assistant\n")  # the generation prompt: the answer comes next
    positions = [text.index(render(SST2_TEMPLATE, d)) for d in DEMOS]
    assert positions == sorted(positions) and positions[-1] < text.rindex(render(SST2_TEMPLATE, QUERY))
    # the ids are exactly the tokenised text, no BOS/EOS added
    assert ids == tiny_tok(text, add_special_tokens=False)["input_ids"]
    assert ids[-1] != tiny_tok.eos_token_id


def test_chat_prompt_zero_shot(tiny_tok):
    ids = encode_prompt(tiny_tok, build_messages(SST2_TEMPLATE, QUERY))
    assert tiny_tok.decode(ids) == f"<|im_start|>user\n{render(SST2_TEMPLATE, QUERY)}<|im_end|>\n<|im_start|>assistant\n"


def test_plain_prompt_ends_with_answer(plain_tok):
    zero = plain_tok.decode(encode_prompt(plain_tok, build_messages(SST2_TEMPLATE, QUERY)))
    assert zero == render(SST2_TEMPLATE, QUERY) + "\nAnswer:"
    few = plain_tok.decode(encode_prompt(plain_tok, build_messages(SST2_TEMPLATE, QUERY, DEMOS, VERBALIZER)))
    assert few.endswith(render(SST2_TEMPLATE, QUERY) + "\nAnswer:")
    assert "<|im_start|>" not in few
    for d in DEMOS:
        assert f"{render(SST2_TEMPLATE, d)}\nAnswer: {VERBALIZER[d['label']]}\n\n" in few
    positions = [few.index(render(SST2_TEMPLATE, d)) for d in DEMOS]
    assert positions == sorted(positions)


def test_verbalizer_prefix_matches_prompt_style(tiny_tok, plain_tok):
    # chat: the answer starts a fresh line, no space; plain: it follows "Answer:", so a space
    assert encode_verbalizer(tiny_tok, ["yes", "no"]) == [
        tiny_tok("yes", add_special_tokens=False)["input_ids"], tiny_tok("no", add_special_tokens=False)["input_ids"]
    ]
    assert encode_verbalizer(plain_tok, ["yes", "no"]) == [
        plain_tok(" yes", add_special_tokens=False)["input_ids"], plain_tok(" no", add_special_tokens=False)["input_ids"]
    ]


@pytest.mark.parametrize("words", [["good", "good"], ["yes", "no", "yes"]])
def test_verbalizer_rejects_duplicates(tiny_tok, words):
    with pytest.raises(ConfigError, match="tokenise identically"):
        encode_verbalizer(tiny_tok, words)


def test_verbalizer_rejects_empty(tiny_tok):
    with pytest.raises(ConfigError, match="nothing"):
        encode_verbalizer(tiny_tok, ["", "no"])
