"""Rendering examples (and demonstrations) into chat messages and token ids: the one place a prompt is made.

A prompt is a chat: an optional system turn, one user/assistant pair per demonstration, the query as a
user turn, and an optional assistant prefix (a chain-of-thought trigger). It is encoded through the
model's chat template, so it ends exactly where the assistant's answer starts; an answer (a choice, a
target text) is encoded as the continuation of that point.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from transformers import PreTrainedTokenizerBase

from promptlab.errors import ConfigError

if TYPE_CHECKING:
    from promptlab.tasks.spec import TaskSpec


def field_names(template: str) -> list[str]:
    """The column names a template refers to, e.g. ``{sentence}``, in order of first appearance."""
    return list(dict.fromkeys(name for _, name, _, _ in string.Formatter().parse(template) if name))


def template_fields(template: str) -> set[str]:
    """The column names a template refers to, as a set."""
    return set(field_names(template))


def render(template: str, example: Mapping) -> str:
    """Fill a template with an example's columns (surrounding whitespace of each value stripped)."""
    return template.format(**{k: str(v).strip() for k, v in example.items()})


def build_messages(
    query: str, demos: Sequence[tuple[str, str]] = (), system_prompt: str | None = None,
) -> list[dict[str, str]]:
    """A chat: optional system turn, one user/assistant pair per ``(question, answer)`` demo, the query."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for question, answer in demos:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages + [{"role": "user", "content": query}]


# Stand-ins for message contents while the chat template renders: private-use characters never occur in
# real text, and the template copies them through unchanged.
_MARK = re.compile("\ue000(\\d+)\ue001")


def plain_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of data text, with special-token strings in it (e.g. "<|im_end|>") kept as plain text."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] if text else []


def encode_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]],
                  assistant_prefix: str = "") -> list[int]:
    """Token ids of the prompt, ending where the answer starts (after ``assistant_prefix``, if any).

    Chat models get their own chat template; a model without one gets plain ``Answer:`` turns. The
    template's control tokens are special tokens, but message contents are data and are tokenised as
    plain text: a review containing "<|im_end|><|im_start|>assistant" must not open an assistant turn.
    """
    if not tokenizer.chat_template:
        parts = []
        for m in messages:
            if m["role"] == "assistant":
                parts[-1] += f"\nAnswer: {m['content']}\n\n"
            elif m["role"] == "user":
                parts.append(m["content"])
            else:
                parts.append(m["content"] + "\n\n")
        return plain_ids(tokenizer, "".join(parts) + "\nAnswer:" + (f" {assistant_prefix}" if assistant_prefix else ""))
    marked = [{**m, "content": f"\ue000{i}\ue001"} for i, m in enumerate(messages)]
    text = tokenizer.apply_chat_template(marked, tokenize=False, add_generation_prompt=True)
    ids: list[int] = []
    for i, piece in enumerate(_MARK.split(text)):  # odd pieces are message indices, even ones template text
        ids += plain_ids(tokenizer, messages[int(piece)]["content"]) if i % 2 else (
            tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else [])
    return ids + plain_ids(tokenizer, assistant_prefix)


def encode_answer(tokenizer: PreTrainedTokenizerBase, text: str, after_space: bool = False) -> list[int]:
    """Token ids of an answer written right after the prompt (plain text, like every data string).

    A chat prompt ends on a newline (or after a prefix that ``after_space`` says needs a space); a plain
    prompt ends on "Answer:", so a space comes first.
    """
    space = after_space or not tokenizer.chat_template
    return plain_ids(tokenizer, (" " if space else "") + text)


def check_answers(tokenizer: PreTrainedTokenizerBase, answers: Sequence[str]) -> None:
    """Rank scoring needs each answer to have tokens and to differ from the others once tokenised."""
    ids = [tuple(encode_answer(tokenizer, a)) for a in answers]
    if not all(ids):
        raise ConfigError(f"an answer tokenises to nothing: {list(answers)}", "use non-empty answer words")
    if len(set(ids)) < len(ids):
        raise ConfigError(f"two answers tokenise identically: {list(answers)}", "use distinct answer words")


@dataclass
class Encoder:
    """Turns task rows into model inputs: prompt ids, plus choice ids (choice) or target ids (generate)."""

    tokenizer: PreTrainedTokenizerBase
    task: TaskSpec
    # (rendered question, answer text) pairs; or a function of the row giving them (per-query demonstrations)
    demos: Sequence[tuple[str, str]] | Callable[[Mapping], Sequence[tuple[str, str]]] = ()
    assistant_prefix: str = ""
    truncated: int = 0  # prompts cut to fit max_prompt_tokens
    task_id: int = 0  # the task's index in a run that serves several (a mixture, multi-task serving)

    def __post_init__(self) -> None:
        if self.task.choices is not None:  # fixed answer words: every example shares them, so check once
            check_answers(self.tokenizer, self.task.choices)

    def prompt_ids(self, row: Mapping) -> list[int]:
        demos = self.demos(row) if callable(self.demos) else self.demos
        ids = self._encode(row, demos)
        if len(ids) > self.task.max_prompt_tokens:
            self.truncated += 1
            ids = self._shortened(row, demos, len(ids))
        return ids

    def _encode(self, row: Mapping, demos: Sequence[tuple[str, str]]) -> list[int]:
        messages = build_messages(render(self.task.prompt_template, row), demos, self.task.system_prompt)
        return encode_prompt(self.tokenizer, messages, self.assistant_prefix)

    def _shortened(self, row: Mapping, demos: Sequence[tuple[str, str]], length: int) -> list[int]:
        """The prompt with the example's longest text field cut from its end until it fits ``max_prompt_tokens``:
        the system prompt, the instruction, the demonstrations and the answer cue stay whole (cutting the
        prompt's start, as before, dropped the instruction)."""
        t, tok = self.task, self.tokenizer
        fields = field_names(t.prompt_template)
        row = dict(row)
        tokens = {f: plain_ids(tok, str(row[f]).strip()) for f in fields}
        ids = []
        while length > t.max_prompt_tokens:
            longest = max(fields, key=lambda f: len(tokens[f]))
            if not tokens[longest]:
                raise ConfigError(
                    f"{t.name}: the prompt without the example's text is {length} tokens (system prompt, instruction, "
                    f"{len(demos)} demonstrations), over data.max_prompt_tokens={t.max_prompt_tokens}",
                    f"raise data.max_prompt_tokens to at least {length + 64}, or use fewer or shorter demonstrations")
            # each pass strictly shortens a field; re-encoding decides whether the whole prompt fits yet
            tokens[longest] = tokens[longest][: max(0, len(tokens[longest]) - (length - t.max_prompt_tokens))]
            row[longest] = tok.decode(tokens[longest])
            ids = self._encode(row, demos)
            length = len(ids)
        return ids

    def target_ids(self, row: Mapping) -> list[int]:
        """The answer a trained model should write (a choice task's answer word, a generation target), then EOS."""
        target = encode_answer(self.tokenizer, self.task.target_of(row))[: self.task.max_target_tokens]
        return target + [self.tokenizer.eos_token_id]  # learn to stop

    def item(self, row: Mapping, train: bool) -> dict:
        """One encoded example; ``train`` adds what the loss needs (generate: the target's tokens)."""
        t = self.task
        item = {"idx": row["idx"], "task_id": self.task_id, "prompt_ids": self.prompt_ids(row)}
        if t.output_type == "choice":
            item["choices"] = t.choices_of(row)
            item["choice_ids"] = [encode_answer(self.tokenizer, c) for c in item["choices"]]
            item["label"] = row[t.label_column]
        elif train:
            item["target_ids"] = self.target_ids(row)
        else:
            item["references"] = row["references"]
        return item
