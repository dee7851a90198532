"""What every readout needs from a (plain or PEFT-wrapped) causal LM: final hidden states, padding."""

from __future__ import annotations

import copy
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

    Used for inference by models with a plain forward (``plain_forward``); with gradients (training) the whole
    sequences are run. Written here because transformers reuses a shared prefix only inside ``generate`` (and
    only when asked for one prompt), not for batched scoring. ``enabled=False`` turns it off (benchmarks).
    """

    def __init__(self, min_tokens: int = 32):
        self.min_tokens = min_tokens  # a shorter shared prefix is not worth the cache copy
        self.enabled = True
        self.prefix: list[int] = []
        self.key: tuple = ()
        self.cache = None

    def clear(self) -> None:
        """Forget the cached prefix (its model's weights are about to change, or have)."""
        self.prefix, self.key, self.cache = [], (), None

    def reuses(self, model: torch.nn.Module) -> bool:
        """Whether caches may be kept and extended for this model now (inference, plain forward, enabled)."""
        return self.enabled and not torch.is_grad_enabled() and not model.training and plain_forward(model)

    def applies(self, model: torch.nn.Module, sequences: Sequence[Sequence[int]], limit: int,
                images: dict | None = None) -> int:
        """The length (at most ``limit``) of the shared prefix to reuse for these sequences; 0: no cache (also
        with images: their tokens stand for pixels the cache would have to be keyed on)."""
        if len(sequences) < 2 or images or not self.reuses(model):
            return 0
        n = min(limit, min(len(s) for s in sequences) - 1)  # every sequence keeps a token of its own
        if self.prefix and len(self.prefix) <= n and all(list(s[: len(self.prefix)]) == self.prefix for s in sequences):
            return len(self.prefix)
        first = sequences[0]
        shared = next((i for i in range(n) if any(s[i] != first[i] for s in sequences)), n)
        return shared if shared >= self.min_tokens else 0

    def hidden_states(self, model: torch.nn.Module, sequences: Sequence[Sequence[int]], pad_id: int,
                      device: torch.device, limit: int, task_ids: Sequence[int] | None = None,
                      keep_cache: bool = False, images: dict | None = None) -> Pass:
        """The last-layer hidden states of the right-padded sequences after their shared prefix (at most ``limit``
        tokens: the first position whose hidden state the caller reads); ``keep_cache``: with their cache;
        ``images``: the rows' pixel inputs (a vision-language model)."""
        shared = self.applies(model, sequences, limit, images)
        if not shared:
            ids, mask = pad(sequences, pad_id, device)
            if not keep_cache:
                return Pass(final_hidden_states(model, ids, mask, task_ids, images), 0)
            out, hidden = run_keeping_last_hidden(model, input_ids=ids, attention_mask=mask, use_cache=True,
                                                  logits_to_keep=NO_LOGITS.to(device), **(images or {}))
            return Pass(hidden, 0, out.past_key_values, mask)
        # the cache belongs to these tokens, this model and its precision (a bf16 cache must not serve fp32 scoring)
        key = (id(model), torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))
        if list(sequences[0][:shared]) != self.prefix or key != self.key:
            self.prefix, self.key = list(sequences[0][:shared]), key
            ids = torch.tensor([self.prefix], device=device)
            self.cache = model(input_ids=ids, use_cache=True, logits_to_keep=NO_LOGITS.to(device)).past_key_values
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(len(sequences))
        ids, mask = pad([s[shared:] for s in sequences], pad_id, device)
        mask = torch.cat([torch.ones(len(sequences), shared, dtype=mask.dtype, device=device), mask], dim=1)
        out, hidden = run_keeping_last_hidden(model, input_ids=ids, attention_mask=mask, past_key_values=cache,
                                              logits_to_keep=NO_LOGITS.to(device), use_cache=True)
        return Pass(hidden[:, -ids.shape[1]:], shared, out.past_key_values if keep_cache else None, mask)
