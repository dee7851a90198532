"""Batched decoding in slots (continuous batching) for models with a transformers forward.

The batch is a fixed number of rows, the slots. A row that wrote EOS or a stop string hands its slot to the next
prompt at once, so every decode step runs a full batch until the queue is empty. A prompt is read once for all
its samples (self-consistency, APE proposals), and a prefix that every prompt of the call shares (a system turn,
few-shot demonstrations) is read once for the whole call. Each step writes its keys and values into spare columns
of a preallocated buffer.

Why it is written here: transformers' ``DynamicCache`` concatenates every layer's keys and values at every step,
copying the whole cache (a third of a decode step at batch 16, measured: docs/guides/decoding.md); ``generate`` keeps
finished rows in the batch until the longest ends and reads a prompt once per sample; its continuous batching
(``generate_batch``, paged attention) ran at 0.9x ``generate``'s speed on this CPU with 9x its memory, and a static
cache with ``torch.compile`` at 0.9x, fp32 only (same page). This module reuses transformers' forward, mask and ``Cache`` classes and
replaces only the cache layer's storage and the scheduling.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Sequence

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from promptlab.readout.model import (
    NO_LOGITS,
    base_model,
    head_of,
    pad,
    plain_forward,
    project,
    run_keeping_last_hidden,
)

# PEFT types whose virtual tokens are input embeddings (multitask prompt tuning: one soft prompt per task id)
SOFT_PROMPTS = ("PROMPT_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING")


def soft_prompt(model: torch.nn.Module) -> bool:
    """Whether the model is PEFT prompt tuning, P-tuning or multitask prompt tuning (a soft prompt before every
    input)."""
    config = getattr(model, "active_peft_config", None)
    return config is not None and config.peft_type in SOFT_PROMPTS  # a str enum


def decodable(model: torch.nn.Module) -> bool:
    """Whether ``SlotDecoder`` decodes for this model: a transformers forward (``plain_forward``), or a soft prompt,
    whose virtual tokens it reads once, as a prefix of every prompt, and then decodes with the frozen model.

    Why soft prompts are not left to PEFT's ``generate``: it drops position ids, so a left-padded row's text sits
    as many positions after its soft prompt as it has padding, unlike training; with SmolLM2-135M, prompt tuning on
    DialogSum, 5 of 6 padded rows wrote other text than unpadded (docs/guides/decoding.md)."""
    return plain_forward(model) or soft_prompt(model)


class SlotLayer(DynamicLayer):
    """One layer's keys and values for the slots: (slots, heads, capacity, head_dim) buffers filled up to
    ``length`` columns. Column ``c`` is the same step for every slot; a slot's own tokens are the columns from its
    start (``SlotDecoder`` masks the rest). A step writes its column in place; the buffer doubles when full."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self.k_buf, self.v_buf, self.length = keys, values, keys.shape[-2]
        self._views()

    def _views(self) -> None:
        self.keys, self.values = self.k_buf[:, :, :self.length], self.v_buf[:, :, :self.length]

    def _reserve(self, columns: int) -> None:
        if columns > self.k_buf.shape[-2]:
            grown = max(columns, 2 * self.k_buf.shape[-2])
            for name in ("k_buf", "v_buf"):
                old = getattr(self, name)
                new = old.new_zeros(*old.shape[:2], grown, old.shape[-1])
                new[:, :, :self.length] = old[:, :, :self.length]
                setattr(self, name, new)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        n = key_states.shape[-2]
        self._reserve(self.length + n)
        self.k_buf[:, :, self.length:self.length + n] = key_states
        self.v_buf[:, :, self.length:self.length + n] = value_states
        self.length += n
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def place(self, row: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """A prompt's keys and values (heads, n, head_dim) into slot ``row``, ending at the current column."""
        n = keys.shape[-2]
        self.k_buf[row, :, self.length - n:self.length] = keys
        self.v_buf[row, :, self.length - n:self.length] = values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.k_buf, self.v_buf = self.k_buf[indices], self.v_buf[indices]
        self._views()

    def drop_columns(self, n: int) -> None:
        """Forget the first ``n`` columns (no slot reads them any more): a view, nothing copied."""
        self.k_buf, self.v_buf, self.length = self.k_buf[:, :, n:], self.v_buf[:, :, n:], self.length - n
        self._views()

    def pad_columns(self, n: int) -> None:
        """``n`` empty columns in front (a prompt longer than the columns so far is about to be placed)."""
        self.k_buf, self.v_buf = (torch.cat([b.new_zeros(*b.shape[:2], n, b.shape[-1]), b[:, :, :self.length]], 2)
                                  for b in (self.k_buf, self.v_buf))
        self.length += n
        self._views()


class SlotDecoder:
    """Decodes ``prompts`` (each ``repeats`` times) with ``width`` slots; returns each request's new tokens, the
    samples of a prompt one after another. ``next_token`` maps fp32 logits (rows, vocab) to tokens (greedy or
    sampled); ``finished`` says whether a row's tokens so far end it."""

    def __init__(self, model: torch.nn.Module, pad_id: int, width: int,
                 next_token: Callable[[torch.Tensor], torch.Tensor], finished: Callable[[list[int]], bool],
                 min_shared: int = 32, prefill_rows: int = 8, task_id: int | None = None):
        self.wrapper, self.model = model, base_model(model) if soft_prompt(model) else model
        self.virtual = model.active_peft_config.num_virtual_tokens if soft_prompt(model) else 0
        self.task_id = task_id  # every prompt's task, for multitask prompt tuning (its soft prompt depends on it)
        self.pad_id, self.width = pad_id, width
        self.next_token, self.finished, self.min_shared = next_token, finished, min_shared
        self.prefill_rows = prefill_rows  # prompts read in one pass when slots are filled
        self.head = head_of(model)
        self.device = self.head.weight.device
        self.none = NO_LOGITS.to(self.device)

    # -- prompts in ---------------------------------------------------------------------------------------------
    def shared_prefix(self, prompts: Sequence[Sequence[int]]) -> DynamicCache | None:
        """The cache of the soft prompt's virtual tokens and of the longest prefix every prompt shares (each keeps a
        token of its own; text shorter than ``min_shared`` is not worth the copies), or None."""
        first, n = prompts[0], min(len(p) for p in prompts) - 1
        shared = next((i for i in range(n) if any(p[i] != first[i] for p in prompts)), n)
        self.shared = shared if len(prompts) > 1 and shared >= self.min_shared else 0
        ids = torch.tensor([list(first[:self.shared])], dtype=torch.long, device=self.device)
        if self.virtual:  # as PEFT's forward: the soft prompt's embeddings, then the tokens'
            embeds = self.model.get_input_embeddings()(ids)
            task = {} if self.task_id is None else {"task_ids": torch.tensor([self.task_id], device=self.device)}
            embeds = torch.cat([self.wrapper.get_prompt(batch_size=1, **task).to(embeds.dtype), embeds], dim=1)
            return self.model(inputs_embeds=embeds, use_cache=True, logits_to_keep=self.none).past_key_values
        if not self.shared:
            return None
        return self.model(input_ids=ids, use_cache=True, logits_to_keep=self.none).past_key_values

    def prefill(self, prompts: list[Sequence[int]], prefix: DynamicCache | None
                ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Reads ``prompts`` (after the cached prefix, right-padded) in one pass: the hidden state after each
        prompt's last token (rows, hidden), and the cache of the whole sequences (every layer's keys, values)."""
        rest = [list(p[self.shared:]) for p in prompts]
        ids, mask = pad(rest, self.pad_id, self.device)
        cache = None
        if prefix is not None:  # as PrefixCache does: a copy of the prefix's cache for every prompt
            cache = copy.deepcopy(prefix)
            cache.batch_repeat_interleave(len(rest))
            mask = torch.cat([mask.new_ones(len(rest), prefix.get_seq_length()), mask], dim=1)
        out, hidden = run_keeping_last_hidden(self.model, input_ids=ids, attention_mask=mask, past_key_values=cache,
                                              use_cache=True, logits_to_keep=self.none)
        last = torch.tensor([len(r) - 1 for r in rest], device=self.device)
        hidden = hidden[torch.arange(len(rest), device=self.device), last]
        return hidden, [(layer.keys, layer.values) for layer in out.past_key_values.layers]

    # -- the loop -----------------------------------------------------------------------------------------------
    def run(self, prompts: Sequence[Sequence[int]], repeats: int = 1) -> list[list[int]]:
        prefix = self.shared_prefix(prompts)
        queue = deque((i, r) for i in range(len(prompts)) for r in range(repeats))
        new: list[list[int]] = [[] for _ in range(len(prompts) * repeats)]
        self.cache: Cache | None = None  # made, with the slots' state, when the first prompts are admitted
        free = list(range(min(self.width, len(queue))))
        while True:
            while free and queue:  # fill every free slot; a request may finish on its first token
                free = self.admit(free, queue, prompts, repeats, prefix, new)
            if free:  # nothing left to start: the free slots leave the batch
                keep = [k for k in range(len(self.rows)) if k not in free]
                if not keep:
                    return new
                self.select(keep)
                free = []
            self.compact()
            self.step()
            for k, (row, t) in enumerate(zip(self.rows, self.token.tolist(), strict=True)):
                new[row].append(t)
                if self.finished(new[row]):
                    free.append(k)

    def admit(self, free: list[int], queue: deque, prompts: Sequence[Sequence[int]], repeats: int,
              prefix: DynamicCache | None, new: list[list[int]]) -> list[int]:
        """Starts the next requests in the free slots (each distinct prompt read once, ``prefill_rows`` prompts a
        pass, which bounds the pass's activations); returns the slots freed again by requests that ended on their
        first token."""
        requests = [queue.popleft() for _ in range(min(len(free), len(queue)))]
        slots, free = free[:len(requests)], free[len(requests):]
        longest = max(self.virtual + len(prompts[i]) for i, _ in requests)  # columns (and positions) of a prompt
        distinct = list(dict.fromkeys(i for i, _ in requests))
        for first in range(0, len(distinct), self.prefill_rows):
            chunk = distinct[first:first + self.prefill_rows]
            hidden, kv = self.prefill([prompts[i] for i in chunk], prefix)
            self.make_room(longest, kv, len(slots))
            mine = [(slot, i, r, chunk.index(i)) for slot, (i, r) in zip(slots, requests, strict=True) if i in chunk]
            rows = torch.tensor([j for *_, j in mine], device=self.device)  # each request's row of the pass
            tokens = self.next_token(project(self.head, hidden[rows])).tolist()
            columns = self.cache.layers[0].length
            for (slot, i, r, j), t in zip(mine, tokens, strict=True):
                n = self.virtual + len(prompts[i])
                for layer, (k, v) in zip(self.cache.layers, kv, strict=True):
                    layer.place(slot, k[j, :, :n], v[j, :, :n])
                self.rows[slot], self.start[slot], self.position[slot], self.token[slot] = i * repeats + r, columns - n, n, t
                new[self.rows[slot]].append(t)
                if self.finished(new[self.rows[slot]]):
                    free.append(slot)
        return free

    def make_room(self, longest: int, kv: list[tuple[torch.Tensor, torch.Tensor]], admitted: int) -> None:
        """Creates the slot cache on the first admission (as many slots as requests admitted); later, adds columns
        in front when a prompt is longer than the columns so far."""
        if self.cache is None:
            slots, kind = admitted, self.device.type
            # Under autocast SDPA reads keys and values in its dtype (bf16): stored so, they are cast once when
            # written, not the whole cache at every step (30% of a bf16 step, measured). The numbers are the same.
            dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else kv[0][0].dtype
            layers = [SlotLayer(k.new_zeros(slots, k.shape[1], longest, k.shape[-1], dtype=dtype),
                                v.new_zeros(slots, v.shape[1], longest, v.shape[-1], dtype=dtype)) for k, v in kv]
            self.cache = Cache(layers=layers)
            self.rows = [-1] * slots  # the request each slot decodes
            self.start = torch.zeros(slots, dtype=torch.long)  # each slot's first column
            self.position = torch.zeros(slots, dtype=torch.long)  # each slot's next position id
            self.token = torch.zeros(slots, dtype=torch.long, device=self.device)  # each slot's next input
        elif longest > self.cache.layers[0].length:
            extra = longest - self.cache.layers[0].length
            for layer in self.cache.layers:
                layer.pad_columns(extra)
            self.start += extra

    def select(self, keep: list[int]) -> None:
        index = torch.tensor(keep)
        self.cache.batch_select_indices(index.to(self.device))
        self.rows = [self.rows[k] for k in keep]
        self.start, self.position, self.token = self.start[index], self.position[index], self.token[index.to(self.device)]

    def compact(self) -> None:
        """Drops the columns before every slot's start (views: nothing is copied)."""
        first = int(self.start.min())
        if first > 0:
            for layer in self.cache.layers:
                layer.drop_columns(first)
            self.start -= first

    def step(self) -> None:
        """One token for every slot: the attention mask covers each slot's own columns and the new one."""
        columns = self.cache.layers[0].length
        mask = (torch.arange(columns + 1)[None] >= self.start[:, None]).long().to(self.device)
        _, hidden = run_keeping_last_hidden(self.model, input_ids=self.token[:, None], attention_mask=mask,
                                            position_ids=self.position[:, None].to(self.device),
                                            past_key_values=self.cache, use_cache=True, logits_to_keep=self.none)
        self.token = self.next_token(project(self.head, hidden[:, -1]))
        self.position += 1
