"""Methods: each module says what is trainable and how the backbone is wrapped.

A method module provides ``validate(cfg)`` (before any model loads), ``prepare(backbone, cfg, task)``
returning the model to score with, ``save(model, directory)`` for exactly the per-task state, and
``load(backbone, directory)`` to get it back.
"""

from __future__ import annotations

from types import ModuleType

from promptlab.errors import ConfigError
from promptlab.methods import full_finetune, prompt_tuning, prompting

METHODS: dict[str, ModuleType] = {
    "zero_shot": prompting,
    "few_shot": prompting,
    "prompt_tuning": prompt_tuning,
    "full_finetune": full_finetune,
}


def get_method(name: str) -> ModuleType:
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}'", f"use method= one of {', '.join(METHODS)}")
    return METHODS[name]


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters, counting tied weights once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total
