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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from transformers import PreTrainedTokenizerBase

from promptlab.errors import ConfigError

if TYPE_CHECKING:
    from promptlab.tasks.spec import TaskSpec
    from promptlab.vision import ImageBlocks


def field_names(template: str) -> list[str]:
    """The column names a template refers to, e.g. ``{sentence}``, in order of first appearance."""
    return list(dict.fromkeys(name for _, name, _, _ in string.Formatter().parse(template) if name))


def template_fields(template: str) -> set[str]:
    """The column names a template refers to, as a set."""
    return set(field_names(template))


def render(template: str, example: Mapping) -> str:
    """Fill a template with an example's columns (as loaded: ``tasks.loading`` strips the text of each value
    unless the task keeps it, ``data.strip_values=false``)."""
    return template.format(**{k: str(v) for k, v in example.items()})


Content = str | list[dict]  # a message's text, or (multimodal) its parts: {"type": "text"|"image", ...}


def render_content(template: str, example: Mapping, image_column: str | None = None) -> Content:
    """``render``, except that where the template names the image column (``"{image}What colour is it?"``) the
    result is a list of parts, the image where the template puts it."""
    if not image_column or image_column not in template_fields(template):
        return render(template, example)
    parts: list[dict] = []
    for i, piece in enumerate(template.split("{" + image_column + "}")):
        if i:
            parts.append({"type": "image", "image": example[image_column]})
        if piece:
            parts.append({"type": "text", "text": render(piece, example)})
    return parts


def build_messages(
    query: Content, demos: Sequence[tuple[Content, str]] = (), system_prompt: str | None = None,
) -> list[dict]:
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

    Chat models get their own chat template; a model without one (or with ``model.chat_template=none``) gets
    lm-evaluation-harness's plain text: the system prompt and each demonstration ("question answer") followed
    by a blank line, then the question; the answer follows after a space (its ``target_delimiter``), so the
    task's template carries any answer cue ("...\nAnswer:"). The template's control tokens are special tokens,
    but message contents are data and are tokenised as plain text: a review containing
    "<|im_end|><|im_start|>assistant" must not open an assistant turn.
    """
    if not tokenizer.chat_template:
        text = ""
        for m in messages:
            text += f" {m['content']}\n\n" if m["role"] == "assistant" else (
                f"{m['content']}\n\n" if m["role"] == "system" else m["content"])
        return plain_ids(tokenizer, text + (f" {assistant_prefix}" if assistant_prefix else ""))
    marked = [{**m, "content": f"\ue000{i}\ue001"} for i, m in enumerate(messages)]
    text = tokenizer.apply_chat_template(marked, tokenize=False, add_generation_prompt=True)
    ids: list[int] = []
    for piece, index in _pieces(text):
        ids += tokenizer(piece, add_special_tokens=False)["input_ids"] if index is None else plain_ids(
            tokenizer, piece + messages[index]["content"])
    return ids + plain_ids(tokenizer, assistant_prefix)


def _pieces(text: str) -> list[tuple[str, int | None]]:
    """A marked chat text as (template text, None) and (lead, message index) pieces. A space the template writes
    right before a message (SmolVLM's "Assistant: red") goes with the message's text, as the tokenizer would
    join them when reading the whole text: "Ġred", not "Ġ" + "red"."""
    out: list[tuple[str, int | None]] = []
    for i, piece in enumerate(_MARK.split(text)):  # odd pieces are message indices, even ones template text
        if not i % 2:
            out.append((piece, None))
            continue
        template, _ = out[-1]
        lead = " " if template.endswith(" ") else ""
        out[-1] = (template[: len(template) - len(lead)], None)
        out.append((lead, int(piece)))
    return [(p, i) for p, i in out if p or i is not None]


def encode_multimodal(tokenizer: PreTrainedTokenizerBase, blocks: ImageBlocks, messages: list[dict],
                      assistant_prefix: str = "") -> tuple[list[int], list[dict]]:
    """``encode_prompt`` for a vision-language model: (token ids, each image's pixel inputs in prompt order).

    The processor's chat template renders typed parts; each image it writes (its image token) becomes that
    image's token block from the processor, and texts stay plain text as in ``encode_prompt``.
    """
    texts: list[str] = []
    images: list[object] = []

    def marked(content: Content) -> list[dict]:
        out = []
        for part in [{"type": "text", "text": content}] if isinstance(content, str) else content:
            if part["type"] == "image":
                images.append(part["image"])
                out.append({"type": "image"})
            else:
                texts.append(part["text"])
                out.append({"type": "text", "text": f"\ue000{len(texts) - 1}\ue001"})
        return out

    chat = [{"role": m["role"], "content": marked(m["content"])} for m in messages]
    text = blocks.processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    ids: list[int] = []
    pixels: list[dict] = []
    for piece, index in _pieces(text):
        if index is not None:
            ids += plain_ids(tokenizer, piece + texts[index])
            continue
        for j, chunk in enumerate(piece.split(blocks.token)):
            if j:  # the chat template wrote an image here
                block, pixel = blocks.block(images[len(pixels)])
                ids += block
                pixels.append(pixel)
            ids += tokenizer(chunk, add_special_tokens=False)["input_ids"] if chunk else []
    return ids + plain_ids(tokenizer, assistant_prefix), pixels


def answer_needs_space(processor) -> bool:
    """Whether the chat template writes a space between its generation prompt and an answer: SmolVLM's ends on
    "Assistant:" and writes "Assistant: red" (ChatML ends on a newline and writes none). An answer scored or
    learned after the prompt must start the way the template would write it."""
    def chat(messages: list[dict], generation: bool) -> str:
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    user = [{"role": "user", "content": [{"type": "text", "text": "\ue000"}]}]
    prompt = chat(user, True)
    full = chat([*user, {"role": "assistant", "content": [{"type": "text", "text": "\ue001"}]}], False)
    before = full[: full.find("\ue001")]
    return before.startswith(prompt) and before[len(prompt):] == " "


def encode_answer(tokenizer: PreTrainedTokenizerBase, text: str, after_space: bool = False) -> list[int]:
    """Token ids of an answer written right after the prompt (plain text, like every data string).

    A chat prompt ends on a newline (or after a prefix that ``after_space`` says needs a space); in a plain
    prompt the answer follows the question after a space, as lm-evaluation-harness's ``target_delimiter``.
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
    demos: Sequence[tuple[Content, str]] | Callable[[Mapping], Sequence[tuple[Content, str]]] = ()
    assistant_prefix: str = ""
    truncated: int = 0  # prompts cut to fit max_prompt_tokens
    task_id: int = 0  # the task's index in a run that serves several (a mixture, multi-task serving)
    images: ImageBlocks | None = None  # a vision-language model's processor (its chat template, images)
    space: bool = field(default=False, init=False)  # answers start with a space (``answer_needs_space``)

    def __post_init__(self) -> None:
        if self.task.choices is not None:  # fixed answer words: every example shares them, so check once
            check_answers(self.tokenizer, self.task.choices)
        self.space = self.images is not None and answer_needs_space(self.images.processor)

    def answer_ids(self, text: str) -> list[int]:
        """An answer's token ids as the model's chat template would write it after the prompt."""
        return encode_answer(self.tokenizer, text, after_space=self.space)

    def prompt_ids(self, row: Mapping) -> list[int]:
        return self.prompt(row)[0]

    def prompt(self, row: Mapping) -> tuple[list[int], list[dict]]:
        """(the prompt's token ids, the pixel inputs of the images it shows, in order)."""
        demos = self.demos(row) if callable(self.demos) else self.demos
        ids, images = self._encode(row, demos)
        if len(ids) > self.task.max_prompt_tokens:
            self.truncated += 1
            ids, images = self._shortened(row, demos, len(ids))
        return ids, images

    def _encode(self, row: Mapping, demos: Sequence[tuple[Content, str]]) -> tuple[list[int], list[dict]]:
        t = self.task
        query = render_content(t.prompt_template, row, t.image_column if self.images else None)
        messages = build_messages(query, demos, t.system_prompt)
        if self.images is not None:
            return encode_multimodal(self.tokenizer, self.images, messages, self.assistant_prefix)
        return encode_prompt(self.tokenizer, messages, self.assistant_prefix), []

    def _shortened(self, row: Mapping, demos: Sequence[tuple[Content, str]], length: int) -> tuple[list[int], list]:
        """The prompt with the example's longest text field cut from its end until it fits ``max_prompt_tokens``:
        the system prompt, the instruction, the demonstrations and the answer cue stay whole (cutting the
        prompt's start, as before, dropped the instruction)."""
        t, tok = self.task, self.tokenizer
        fields = [f for f in field_names(t.prompt_template) if f != t.image_column]  # an image is not cut
        row = dict(row)
        tokens = {f: plain_ids(tok, str(row[f]).strip()) for f in fields}
        ids: tuple[list[int], list] = ([], [])
        while length > t.max_prompt_tokens:
            longest = max(fields, key=lambda f: len(tokens[f]), default=None)
            if longest is None or not tokens[longest]:
                raise ConfigError(
                    f"{t.name}: the prompt without the example's text is {length} tokens (system prompt, instruction, "
                    f"{len(demos)} demonstrations), over data.max_prompt_tokens={t.max_prompt_tokens}",
                    f"raise {t.key('max_prompt_tokens')} to at least {length + 64}, or use fewer or shorter demonstrations")
            # each pass strictly shortens a field; re-encoding decides whether the whole prompt fits yet
            tokens[longest] = tokens[longest][: max(0, len(tokens[longest]) - (length - t.max_prompt_tokens))]
            row[longest] = tok.decode(tokens[longest])
            ids = self._encode(row, demos)
            length = len(ids[0])
        return ids

    def target_ids(self, row: Mapping) -> list[int]:
        """The answer a trained model should write (a choice task's answer word, a generation target), then EOS."""
        target = self.answer_ids(self.task.target_of(row))[: self.task.max_target_tokens]
        return target + [self.tokenizer.eos_token_id]  # learn to stop

    def item(self, row: Mapping, train: bool) -> dict:
        """One encoded example; ``train`` adds what the loss needs (generate: the target's tokens)."""
        t = self.task
        ids, images = self.prompt(row)
        item = {"idx": row["idx"], "task_id": self.task_id, "prompt_ids": ids}
        if images:
            item["images"] = images
        if t.output_type == "choice":
            item["choices"] = t.choices_of(row)
            item["choice_ids"] = [self.answer_ids(c) for c in item["choices"]]
            item["label"] = row[t.label_column]
        elif train:
            item["target_ids"] = self.target_ids(row)
        else:
            item["references"] = row["references"]
        return item
