"""Serving many tasks from one frozen backbone: each task's trained adapter (a soft prompt or a LoRA adapter) is
loaded once, and one batch may mix rows of every task, each row naming its task (``task_ids``).

    model = MultiTaskModel(backbone.model, {"sst2": "runs/pt_sst2/checkpoint", "rte": "runs/pt_rte/checkpoint"})
    ChoiceReadout(pad_id).scores(model, prompts, choices, task_ids=[0, 1, 1, 0])

Soft prompts (PEFT's PROMPT_TUNING and P_TUNING) are stacked into one (tasks, virtual tokens, hidden) table and
prepended by hand; LoRA adapters go through PEFT's own mixed-batch inference (``adapter_names=``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import PreTrainedModel

from promptlab.errors import ConfigError

SOFT_PROMPTS = ("PROMPT_TUNING", "P_TUNING")  # what is stored is the virtual tokens themselves
MIXED_BATCH_ADAPTERS = ("LORA",)  # layer adapters whose PEFT layers take adapter_names= (DoRA's do not)
KINDS = {"soft_prompt": "soft prompt", "lora": "LoRA adapter"}
SUPPORTED = (f"soft prompts ({', '.join(SOFT_PROMPTS)}) or LoRA adapters without DoRA, all of one kind, "
             "e.g. the checkpoint/ of prompt_tuning, p_tuning or lora runs")


def adapter_config(name: str, directory: str | os.PathLike) -> dict:
    """The adapter_config.json a PEFT ``save_pretrained`` wrote in ``directory``; ConfigError if there is none."""
    file = Path(directory) / "adapter_config.json"
    if not file.is_file():
        what = "does not exist" if not Path(directory).exists() else "holds no adapter_config.json"
        raise ConfigError(f"task {name}: the adapter checkpoint {directory} {what}",
                          "pass the checkpoint/ directory of a completed PEFT run (prompt_tuning, p_tuning, lora)")
    return json.loads(file.read_text())


def adapter_kind(name: str, config: dict) -> str:
    """"soft_prompt" or "lora"; a ConfigError for an adapter one mixed batch cannot serve."""
    kind = config.get("peft_type")
    if kind in SOFT_PROMPTS:
        return "soft_prompt"
    if kind in MIXED_BATCH_ADAPTERS and not config.get("use_dora"):
        return "lora"
    what = "a DoRA adapter" if config.get("use_dora") else f"a {kind} adapter"
    raise ConfigError(f"task {name}: {what} cannot be served in a mixed-task batch (PEFT mixes LoRA adapters "
                      "only, and prefix tuning's prefixes live in the KV cache)", f"serve {SUPPORTED}")


class MultiTaskModel(torch.nn.Module):
    """One frozen backbone plus one adapter per task; ``forward``/``generate`` take ``task_ids`` (row -> index into
    the tasks, in the order given). Not a ``PreTrainedModel``: a readout must not continue its caches as a plain
    model's (without task ids, with positions that skip the virtual tokens). ``forward`` does continue a cache it
    made when each row's task is given (``readout.model.PrefixCache``, the rows' shared prefix): a LoRA row runs
    its adapter on its new tokens; a soft prompt is the first positions of the row's cache, not prepended again."""

    takes_task_ids = True  # readout.model.task_inputs passes each row's task
    continues_caches = True  # readout.model.continues_caches

    def __init__(self, backbone: PreTrainedModel, checkpoints: Mapping[str, str | os.PathLike] = ()):
        super().__init__()
        self.backbone = backbone.requires_grad_(False).eval()
        self.tasks: list[str] = []
        self.kind: str | None = None
        self.peft = None  # LoRA: a PeftModel around the backbone holding one adapter per task, named after it
        self.register_buffer("prompts", None)  # soft prompts: (tasks, virtual tokens, hidden)
        for name, directory in dict(checkpoints).items():
            self.add_task(name, directory)
        self.eval()  # serving only (PEFT refuses adapter_names in training mode)

    def add_task(self, name: str, directory: str | os.PathLike) -> int:
        """Load one more task's adapter; returns its task id."""
        if name in self.tasks:
            raise ConfigError(f"task {name} is served already", "give every task its own name")
        config = adapter_config(name, directory)
        kind = adapter_kind(name, config)
        if self.kind not in (None, kind):
            raise ConfigError(f"task {name} has a {KINDS[kind]}; the tasks before it ({', '.join(self.tasks)}) "
                              f"have {KINDS[self.kind]}s",
                              "serve each kind of adapter with a MultiTaskModel of its own")
        if kind == "soft_prompt":
            self._add_prompt(name, directory, config)
        elif self.peft is None:
            from peft import PeftModel

            self.peft = PeftModel.from_pretrained(self.backbone, directory, adapter_name=name).eval()
        else:
            self.peft.load_adapter(directory, adapter_name=name)
            self.peft.eval()
        self.kind = kind
        self.tasks.append(name)
        return len(self.tasks) - 1

    def _add_prompt(self, name: str, directory: str | os.PathLike, config: dict) -> None:
        from safetensors.torch import load_file

        files = sorted(Path(directory).glob("adapter_model.safetensors"))
        if not files:
            raise ConfigError(f"task {name}: {directory} holds no adapter_model.safetensors",
                              "re-save the adapter with save_pretrained (safetensors)")
        prompt = load_file(files[0])["prompt_embeddings"]  # (virtual tokens, hidden): what PEFT saves for both types
        embed = self.backbone.get_input_embeddings()
        if prompt.ndim != 2 or prompt.shape[1] != embed.embedding_dim:
            raise ConfigError(f"task {name}: its soft prompt has shape {tuple(prompt.shape)}, the backbone's "
                              f"embeddings are {embed.embedding_dim} wide", "serve adapters trained on this backbone")
        if self.prompts is not None and prompt.shape[0] != self.prompts.shape[1]:
            raise ConfigError(f"task {name}: its soft prompt has {prompt.shape[0]} virtual tokens, the tasks before "
                              f"it ({', '.join(self.tasks)}) {self.prompts.shape[1]}",
                              "train every task with the same method.peft.num_virtual_tokens (one table holds them)")
        prompt = prompt.to(embed.weight.device, embed.weight.dtype)[None]
        self.prompts = prompt if self.prompts is None else torch.cat([self.prompts, prompt])

    def check(self, task_ids: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        """``task_ids`` as a (batch,) long tensor; a ValueError naming the valid ids unless each row has one."""
        names = ", ".join(f"{i}={t}" for i, t in enumerate(self.tasks)) or "none loaded"
        if task_ids is None:
            raise ValueError(f"every row needs its task: pass task_ids (tasks: {names})")
        task_ids = torch.as_tensor(task_ids, dtype=torch.long).reshape(-1)
        if len(task_ids) != batch_size:
            raise ValueError(f"{len(task_ids)} task_ids for a batch of {batch_size} rows")
        bad = task_ids[(task_ids < 0) | (task_ids >= len(self.tasks))]
        if len(bad):
            raise ValueError(f"task id {int(bad[0])} is out of range: valid ids are 0..{len(self.tasks) - 1} "
                             f"(tasks: {names})")
        return task_ids

    def adapter_names(self, task_ids: torch.Tensor) -> list[str]:
        return [self.tasks[i] for i in task_ids.tolist()]

    def soft_prompt_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                           task_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs_embeds, attention_mask) with each row's own soft prompt in front, unmasked.

        Written by hand because PEFT applies one prompt-learning adapter per forward (the active one; PEFT #759):
        this is its prompt-tuning forward with a per-row lookup in place of the one prompt.
        """
        embeds = self.backbone.get_input_embeddings()(input_ids)
        prompts = self.prompts[task_ids.to(self.prompts.device)].to(embeds.dtype)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        ones = torch.ones(prompts.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device)
        return torch.cat([prompts, embeds], dim=1), torch.cat([ones, attention_mask], dim=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                task_ids: torch.Tensor | None = None, past_key_values=None, **kwargs):
        """The rows' outputs under their tasks' adapters. Given a non-empty ``past_key_values`` (made by this
        forward, rows in the same tasks' order), the rows continue it and ``attention_mask`` covers the cache too."""
        task_ids = self.check(task_ids, len(input_ids))
        if self.kind == "lora":
            return self.peft(input_ids=input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
                             adapter_names=self.adapter_names(task_ids), **kwargs)
        if past_key_values is not None and past_key_values.get_seq_length():  # the soft prompts are in the cache
            return self.backbone(input_ids=input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
                                 **kwargs)
        # like PEFT, no position ids: the model numbers virtual and real tokens 0, 1, ... (right padding is exact)
        embeds, mask = self.soft_prompt_inputs(input_ids, attention_mask, task_ids)
        return self.backbone(inputs_embeds=embeds, attention_mask=mask, past_key_values=past_key_values, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 task_ids: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Prompt + new tokens, (batch, prompt length + new), as ``PeftModel.generate`` returns them."""
        task_ids = self.check(task_ids, len(input_ids))
        if self.kind == "lora":
            return self.peft.generate(input_ids=input_ids, attention_mask=attention_mask,
                                      adapter_names=self.adapter_names(task_ids), **kwargs)
        embeds, mask = self.soft_prompt_inputs(input_ids, attention_mask, task_ids)
        # With inputs_embeds alone, transformers returns only the new tokens and its stopping criteria see only
        # those; given input_ids too, it prefills from the embeddings and continues input_ids, so stop strings and
        # the output cover prompt + new tokens. Positions come from the mask (virtual tokens, then the text after
        # any left padding): a row decodes as it would unpadded, whatever the other tasks' prompt lengths. PEFT
        # drops position ids instead, so its left-padded rows differ slightly from unpadded ones (~5e-4 in
        # the tiny model's logits).
        return self.backbone.generate(input_ids=input_ids, inputs_embeds=embeds, attention_mask=mask, **kwargs)

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.backbone.get_output_embeddings()

    def get_decoder(self) -> torch.nn.Module:
        return self.backbone.get_decoder()

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.backbone.get_input_embeddings()
