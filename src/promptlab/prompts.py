"""Rendering examples (and few-shot demonstrations) into token ids, and tokenising the verbalizer."""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence

from transformers import PreTrainedTokenizerBase

from promptlab.errors import ConfigError


def template_fields(template: str) -> set[str]:
    """The column names a template refers to, e.g. ``{sentence}``."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def render(template: str, example: Mapping) -> str:
    """Fill a template with an example's columns (surrounding whitespace of each value stripped)."""
    return template.format(**{k: str(v).strip() for k, v in example.items()})


def build_messages(
    template: str, example: Mapping, demos: Sequence[Mapping] = (), verbalizer: Sequence[str] = (),
    label_column: str = "label", system_prompt: str | None = None,
) -> list[dict[str, str]]:
    """A chat: optional system turn, one user/assistant pair per demonstration, then the query."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for demo in demos:
        messages.append({"role": "user", "content": render(template, demo)})
        messages.append({"role": "assistant", "content": verbalizer[demo[label_column]]})
    messages.append({"role": "user", "content": render(template, example)})
    return messages


def encode_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the prompt, ending where the answer starts.

    Chat models get their own chat template; a model without one gets plain ``Answer:`` turns.
    """
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        parts = []
        for m in messages:
            if m["role"] == "assistant":
                parts[-1] += f"\nAnswer: {m['content']}\n\n"
            else:
                parts.append(m["content"])
        text = "".join(parts) + "\nAnswer:"
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_verbalizer(tokenizer: PreTrainedTokenizerBase, verbalizer: Sequence[str]) -> list[list[int]]:
    """Token ids of each label word, as the model would write it right after the prompt."""
    prefix = "" if tokenizer.chat_template else " "  # plain prompts end with "Answer:", so a space follows
    ids = [tokenizer(prefix + word, add_special_tokens=False)["input_ids"] for word in verbalizer]
    if any(not t for t in ids):
        raise ConfigError(f"a verbalizer word tokenises to nothing: {list(verbalizer)}", "use non-empty label words")
    if len({tuple(t) for t in ids}) < len(ids):
        raise ConfigError(f"two verbalizer words tokenise identically: {list(verbalizer)}", "use distinct label words")
    return ids
