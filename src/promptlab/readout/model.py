"""What every readout needs from a (plain or PEFT-wrapped) causal LM: final hidden states, padding."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from typing import NamedTuple

import torch

NO_LOGITS = torch.empty(0, dtype=torch.long)  # logits_to_keep=[] makes the LM head compute nothing


def takes_task_ids(model: torch.nn.Module) -> bool:
    """Whether the model serves several tasks and needs each row's task: PEFT's multitask prompt tuning, or
    ``serving.MultiTaskModel`` (one soft prompt or LoRA adapter per task, mixed in one batch)."""
    if getattr(model, "takes_task_ids", False):
        return True
    config = getattr(model, "active_peft_config", None)
    return config is not None and config.peft_type == "MULTITASK_PROMPT_TUNING"  # a str enum


def task_inputs(model: torch.nn.Module, task_ids: Sequence[int] | None, device: torch.device) -> dict:
    """The forward keyword naming each row's task, for a model that ``takes_task_ids``; else nothing."""
    if not takes_task_ids(model):
        return {}
    if task_ids is None:
        raise ValueError("this model serves several tasks: every batch must say each row's task (task_id)")
    return {"task_ids": torch.as_tensor(list(task_ids), dtype=torch.long, device=device)}


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a PEFT wrapper (the model itself when it is not wrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer stack (its output: the final, post-norm hidden states) of a plain or wrapped model."""
    return base_model(model).get_decoder()


def run_keeping_last_hidden(model: torch.nn.Module, **inputs) -> tuple[object, torch.Tensor]:
    """(the model's output, the decoder's last hidden states). Read with a hook, not ``output_hidden_states``,
    which keeps every layer's hidden states: (layers + 1) x batch x length x hidden floats, 2.3 GB for a
    batch of 16 prompts of 2,048 tokens in the 30-layer 135M model, and under gradient checkpointing the
    very activations it exists to drop."""
    captured: list[torch.Tensor] = []
    handle = decoder_of(model).register_forward_hook(lambda module, args, out: captured.append(out[0]))
    try:
        out = model(**inputs)
    finally:
        handle.remove()
    return out, captured[-1]


def final_hidden_states(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        task_ids: Sequence[int] | None = None, images: dict | None = None) -> torch.Tensor:
    """Last-layer (post-norm) hidden states, shape (batch, len, hidden), for plain and PEFT-wrapped models;
    ``images``: a vision-language model's pixel inputs for these rows (``vision.pixel_inputs``).

    The LM head is skipped: callers project only the positions they need (the vocabulary projection of
    every position is the largest tensor of a forward pass).
    """
    _, hidden = run_keeping_last_hidden(
        model, input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=NO_LOGITS.to(input_ids.device),
        use_cache=False, **task_inputs(model, task_ids, input_ids.device), **(images or {}))
    # Prompt tuning prepends virtual tokens (prefix tuning puts them in the cache instead): keep the positions of
    # the real input, which come last.
    return hidden[:, -input_ids.shape[1]:]


def pad(sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device,
        left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token id lists into (input_ids, attention_mask); right padding unless ``left``."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        span = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, span] = torch.tensor(s, dtype=torch.long)
        mask[i, span] = 1
    return ids.to(device), mask.to(device)


def head_of(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_output_embeddings()


def project(head: torch.nn.Module, hidden: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 logits of ``hidden`` (n, H) over the vocabulary, or over its ``rows`` only, outside any autocast.

    Under bf16 autocast the rest of the model runs in bf16, but a bf16 head rounds logits of this model's scale
    (~20) by ~0.1: on SST-2, where half the answers are decided by under 0.3 nats, a bf16 head changed about 7%
    of the zero-shot predictions and cost ~6 points of accuracy; with it in fp32, 1.75% (400 rows, measured).
    It is a small matmul (only the positions that are read), so this costs nothing measurable.
    """
    weight = head.weight if rows is None else head.weight[rows]
    bias = None if head.bias is None else head.bias if rows is None else head.bias[rows]
    with torch.autocast(hidden.device.type, enabled=False):
        logits = hidden.float() @ weight.float().T
        return logits if bias is None else logits + bias.float()


def plain_forward(model: torch.nn.Module) -> bool:
    """Whether the model's forward is a transformers causal LM's: a plain model, or a PEFT adapter that changes
    weights only (LoRA, IA3, DoRA). Then a key/value cache can be kept and extended; prompt learning prepends
    its virtual tokens on every call and multi-task models route rows, so they always get whole sequences."""
    from peft import PeftModel
    from transformers import PreTrainedModel

    if isinstance(model, PeftModel):
        return not model.active_peft_config.is_prompt_learning
    return isinstance(model, PreTrainedModel)


def continues_caches(model: torch.nn.Module) -> bool:
    """Whether the model's forward continues a key/value cache its own forward made: a plain forward, or a
    multi-task model whose cache rows carry each row's task (``serving.MultiTaskModel``)."""
    return plain_forward(model) or getattr(model, "continues_caches", False)


def whole_images(model: torch.nn.Module, sequences: Sequence[Sequence[int]], shared: int,
                 images: dict) -> tuple[int, int]:
    """(length, images) of the longest start of the ``shared`` prefix that holds whole images, the same in every
    row. Image tokens are alike whatever the pixels, so equal tokens do not mean equal images: the prefix ends
    before the first image that differs between rows, or whose tokens it would split (the model puts an image's
    features on all its tokens at once). ``images``: the rows' pixel inputs (``vision.pixel_inputs``, Idefics3's
    layout); (0, 0) for a model that does not say which token stands for pixels."""
    token = getattr(getattr(base_model(model), "config", None), "image_token_id", None)
    spots = [i for i, t in enumerate(sequences[0][:shared]) if t == token]
    if not spots:
        return (shared, 0) if token is not None else (0, 0)
    pixels = images["pixel_values"]
    real = int(pixels[0].flatten(1).ne(0).any(1).sum())  # all-zero images are padding, as the model reads them
    per_image = sum(t == token for t in sequences[0]) // real if real else 0
    if not per_image:
        return 0, 0  # image tokens and pixels disagree: the model's own forward says how
    count = next((j for j in range(len(spots) // per_image)
                  if any(not torch.equal(v[i, j], v[0, j]) for v in images.values() for i in range(1, len(v)))),
                 len(spots) // per_image)
    return (spots[count * per_image] if count * per_image < len(spots) else shared), count


def image_slots(images: dict, rows: Sequence[int] | slice, slots: slice) -> dict:
    """The pixel inputs of these rows' images in ``slots``; nothing when those are all padding (or there are no
    images): the vision tower then does not run."""
    part = {k: v[rows, slots].contiguous() for k, v in images.items()}  # the model views them flat
    return part if part and part["pixel_values"].any() else {}


def digest(images: dict, count: int) -> str:
    """A digest of the first ``count`` images of the first row (their pixels and pixel masks): what a cached
    prefix's images are known by."""
    h = hashlib.sha1()
    for name, v in sorted(images.items()) if count else ():
        part = v[0, :count].contiguous().cpu()
        h.update(f"{name} {part.dtype} {tuple(part.shape)}".encode())
        h.update(part.view(torch.uint8).numpy())
    return h.hexdigest()


class Pass(NamedTuple):
    """One forward pass of right-padded sequences whose first ``shared`` tokens came from the prefix cache."""

    states: torch.Tensor  # last-layer hidden states of the tokens after the shared prefix
    shared: int
    cache: object = None  # the key/value cache of the whole sequences (when asked for), to continue them
    mask: torch.Tensor | None = None  # its attention mask


class PrefixCache:
    """Runs the token prefix that every sequence of a batch shares (a system turn, few-shot demonstrations, the
    template's opening words) once, keeps its key/value cache, and puts only each sequence's own suffix through
    the model: few-shot scoring then costs about what zero-shot does. Exact up to float rounding.

    Used for inference by models whose forward continues a cache (``continues_caches``); with gradients (training)
    the whole sequences are run. A vision-language model's prefix holds the images inside it, the same in every
    row, and its cache is known by their pixels too. A multi-task model's rows share a prefix task by task (each
    task's adapter gives it other keys and values): one ``PrefixCache`` per task. Written here because
    transformers reuses a shared prefix only inside ``generate`` (and only when asked for one prompt), not for
    batched scoring. ``enabled=False`` turns it off (benchmarks).
    """

    def __init__(self, min_tokens: int = 32, by_task: bool = True):
        self.min_tokens = min_tokens  # a shorter shared prefix is not worth the cache copy
        self.by_task = by_task  # False: the rows are all of one task (a multi-task model's per-task cache)
        self.enabled = True
        self.prefix: list[int] = []
        self.key: tuple = ()
        self.cache = None
        self.tasks: dict[int, PrefixCache] = {}  # a multi-task model's: each task's own

    def clear(self) -> None:
        """Forget the cached prefix (its model's weights are about to change, or have)."""
        self.prefix, self.key, self.cache, self.tasks = [], (), None, {}

    def live(self, model: torch.nn.Module) -> bool:
        """Whether caches may be kept for this model now (enabled, inference)."""
        return self.enabled and not torch.is_grad_enabled() and not model.training

    def reuses(self, model: torch.nn.Module) -> bool:
        """Whether caches may be kept and extended for this model now by its plain forward, given no task ids
        (inference, plain forward, enabled)."""
        return self.live(model) and plain_forward(model)

    def applies(self, model: torch.nn.Module, sequences: Sequence[Sequence[int]], limit: int,
                images: dict | None = None) -> int:
        """The length (at most ``limit``) of the shared prefix to reuse for these sequences (of one task); 0: no
        cache. ``images``: their pixel inputs, whose shared ones the prefix must hold whole (``whole_images``)."""
        return self._split(model, sequences, limit, images)[0]

    def _split(self, model: torch.nn.Module, sequences: Sequence[Sequence[int]], limit: int,
               images: dict | None) -> tuple[int, int]:
        """(``applies``' length, the images in that prefix)."""
        if len(sequences) < 2 or not self.live(model) or not continues_caches(model) \
                or (self.by_task and takes_task_ids(model)):  # a multi-task model's rows: task by task
            return 0, 0
        n = min(limit, min(len(s) for s in sequences) - 1)  # every sequence keeps a token of its own
        if self.prefix and len(self.prefix) <= n and all(list(s[: len(self.prefix)]) == self.prefix for s in sequences):
            shared = len(self.prefix)
        else:
            first = sequences[0]
            shared = next((i for i in range(n) if any(s[i] != first[i] for s in sequences)), n)
        shared, count = whole_images(model, sequences, shared, images) if images else (shared, 0)
        return (shared, count) if shared >= self.min_tokens else (0, 0)

    def hidden_states(self, model: torch.nn.Module, sequences: Sequence[Sequence[int]], pad_id: int,
                      device: torch.device, limit: int, task_ids: Sequence[int] | None = None,
                      keep_cache: bool = False, images: dict | None = None) -> Pass:
        """The last-layer hidden states of the right-padded sequences after their shared prefix (at most ``limit``
        tokens: the first position whose hidden state the caller reads); ``keep_cache``: with their cache;
        ``images``: the rows' pixel inputs (a vision-language model)."""
        if self.by_task and takes_task_ids(model) and not keep_cache and self.live(model) and continues_caches(model):
            return self._task_by_task(model, sequences, pad_id, device, limit, task_ids, images)
        shared, count = self._split(model, sequences, limit, images)
        if not shared:
            ids, mask = pad(sequences, pad_id, device)
            if not keep_cache:
                return Pass(final_hidden_states(model, ids, mask, task_ids, images), 0)
            out, hidden = run_keeping_last_hidden(model, input_ids=ids, attention_mask=mask, use_cache=True,
                                                  logits_to_keep=NO_LOGITS.to(device), **(images or {}))
            return Pass(hidden, 0, out.past_key_values, mask)
        # the cache belongs to these tokens and images, this model and its precision (a bf16 cache must not serve
        # fp32 scoring). Images split cleanly: Idefics3's forward puts the features of the pixel inputs it is given,
        # in order, on the image tokens of the input_ids it is given, whatever the cache holds; so the prefix run
        # takes the prefix's images and the suffix run each row's others.
        key = (id(model), torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type),
               digest(images or {}, count))
        tasks = task_inputs(model, task_ids, device)  # a multi-task model's: all one task
        if list(sequences[0][:shared]) != self.prefix or key != self.key:
            self.prefix, self.key = list(sequences[0][:shared]), key
            ids = torch.tensor([self.prefix], device=device)
            self.cache = model(input_ids=ids, use_cache=True, logits_to_keep=NO_LOGITS.to(device),
                               **{k: v[:1] for k, v in tasks.items()},
                               **image_slots(images or {}, slice(0, 1), slice(0, count))).past_key_values
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(len(sequences))
        ids, mask = pad([s[shared:] for s in sequences], pad_id, device)
        # the cache's own length: a soft prompt's virtual tokens come before the shared tokens
        mask = torch.cat([torch.ones(len(sequences), cache.get_seq_length(), dtype=mask.dtype, device=device), mask],
                         dim=1)
        out, hidden = run_keeping_last_hidden(model, input_ids=ids, attention_mask=mask, past_key_values=cache,
                                              logits_to_keep=NO_LOGITS.to(device), use_cache=True, **tasks,
                                              **image_slots(images or {}, slice(None), slice(count, None)))
        return Pass(hidden[:, -ids.shape[1]:], shared, out.past_key_values if keep_cache else None, mask)

    def _task_by_task(self, model: torch.nn.Module, sequences: Sequence[Sequence[int]], pad_id: int,
                      device: torch.device, limit: int, task_ids: Sequence[int] | None, images: dict | None) -> Pass:
        """``hidden_states`` for a multi-task model: the rows of each task that shares a prefix long enough continue
        that task's cache, one forward per such task; all other rows run whole, together. Each row's states are
        placed from the shortest prefix of all on; those before its own prefix's end (below ``limit``: never read)
        are zeros."""
        tasks = task_inputs(model, task_ids, device)["task_ids"].tolist()
        groups: dict[int, list[int]] = {}
        for row, task in enumerate(tasks):
            groups.setdefault(task, []).append(row)
        parts = []
        for task, rows in groups.items():
            cache = self.tasks.setdefault(task, PrefixCache(self.min_tokens, by_task=False))
            part, pixels = [sequences[r] for r in rows], image_slots(images or {}, rows, slice(None))
            if cache.applies(model, part, limit, pixels):
                parts.append((rows, cache.hidden_states(model, part, pad_id, device, limit, [task] * len(rows),
                                                        images=pixels)))
        if whole := sorted(set(range(len(sequences))).difference(*(rows for rows, _ in parts))):
            ids, mask = pad([sequences[r] for r in whole], pad_id, device)
            run = Pass(final_hidden_states(model, ids, mask, [tasks[r] for r in whole],
                                           image_slots(images or {}, whole, slice(None))), 0)
            if len(whole) == len(sequences):
                return run
            parts.append((whole, run))
        shared = min(run.shared for _, run in parts)
        width = max(run.shared - shared + run.states.shape[1] for _, run in parts)
        first = parts[0][1].states
        states = first.new_zeros(len(sequences), width, first.shape[2])
        for rows, run in parts:
            states[rows, run.shared - shared: run.shared - shared + run.states.shape[1]] = run.states
        return Pass(states, shared)
