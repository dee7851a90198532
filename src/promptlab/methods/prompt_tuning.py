"""Soft prompt tuning (Lester et al., 2021) with PEFT: the backbone is frozen, virtual tokens train.

Only the soft prompt (num_virtual_tokens x hidden) is stored per task, in PEFT's adapter format.
"""

from __future__ import annotations

from omegaconf import DictConfig

from promptlab.errors import ConfigError

INITS = ("text", "vocab", "random")
MAX_VIRTUAL_TOKENS = 1024


def validate(cfg: DictConfig) -> None:
    n = cfg.num_virtual_tokens
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_VIRTUAL_TOKENS:
        raise ConfigError(
            f"method.num_virtual_tokens={n!r} is not an integer in 1..{MAX_VIRTUAL_TOKENS}",
            "use e.g. method.num_virtual_tokens=20",
        )
    if cfg.init not in INITS:
        raise ConfigError(f"method.init={cfg.init!r} is unknown", f"use one of {', '.join(INITS)}")
    if cfg.num_demos:
        raise ConfigError("prompt_tuning trains without demonstrations", "set method.num_demos=0")


def peft_config(cfg: DictConfig, init_text: str, tokenizer_path: str):
    from peft import PromptTuningConfig, PromptTuningInit, TaskType

    init = {"text": PromptTuningInit.TEXT, "vocab": PromptTuningInit.SAMPLE_VOCAB, "random": PromptTuningInit.RANDOM}
    text = cfg.get("init_text") or init_text
    return PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=cfg.num_virtual_tokens,
        prompt_tuning_init=init[cfg.init],
        prompt_tuning_init_text=text if cfg.init == "text" else None,
        tokenizer_name_or_path=tokenizer_path if cfg.init == "text" else None,
    )


def prepare(backbone, cfg: DictConfig, task):
    from peft import get_peft_model

    model = get_peft_model(backbone.model, peft_config(cfg, task.prompt_init_text, backbone.path))
    return model.train()  # from_pretrained returns eval mode; Lightning keeps submodules' modes


def save(model, directory) -> None:
    model.save_pretrained(directory)


def load(backbone, directory):
    from peft import PeftModel

    return PeftModel.from_pretrained(backbone.model, directory).eval()
