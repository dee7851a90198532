"""Full fine-tuning: every backbone weight is trained; the whole model is stored per task."""

from __future__ import annotations

from omegaconf import DictConfig

from promptlab.errors import ConfigError


def validate(cfg: DictConfig) -> None:
    if cfg.num_demos:
        raise ConfigError("full_finetune trains without demonstrations", "set method.num_demos=0")


def prepare(backbone, cfg: DictConfig, task):
    return backbone.model.requires_grad_(True).train()  # from_pretrained returns eval mode


def save(model, directory) -> None:
    model.save_pretrained(directory)


def load(backbone, directory):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=backbone.model.dtype)
