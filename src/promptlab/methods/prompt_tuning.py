"""Soft prompt tuning (Lester et al., 2021) with PEFT: the backbone is frozen, virtual tokens train.

Only the soft prompt (num_virtual_tokens x hidden) is stored per task, in PEFT's adapter format.
"""

from __future__ import annotations

from promptlab.config import is_whole
from promptlab.errors import ConfigError
from promptlab.methods import TrainedMethod, register

INITS = ("text", "vocab", "random")
MAX_VIRTUAL_TOKENS = 1024


@register("prompt_tuning")
class PromptTuning(TrainedMethod):
    def validate(self, task) -> None:
        super().validate(task)
        n = self.cfg.num_virtual_tokens
        if not is_whole(n, 1) or n > MAX_VIRTUAL_TOKENS:
            raise ConfigError(f"method.num_virtual_tokens={n!r} is not an integer in 1..{MAX_VIRTUAL_TOKENS}",
                              "use e.g. method.num_virtual_tokens=20")
        if self.cfg.init not in INITS:
            raise ConfigError(f"method.init={self.cfg.init!r} is unknown", f"use one of {', '.join(INITS)}")
        if self.cfg.init == "text" and not (self.cfg.get("init_text") or task.prompt_init_text):
            raise ConfigError(f"method.init=text but neither method.init_text nor {task.name}'s prompt_init_text is set",
                              "set method.init_text=... or method.init=vocab")

    def peft_config(self, init_text: str, tokenizer_path: str):
        from peft import PromptTuningConfig, PromptTuningInit, TaskType

        c = self.cfg
        init = {"text": PromptTuningInit.TEXT, "vocab": PromptTuningInit.SAMPLE_VOCAB, "random": PromptTuningInit.RANDOM}
        return PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=c.num_virtual_tokens, prompt_tuning_init=init[c.init],
            prompt_tuning_init_text=(c.get("init_text") or init_text) if c.init == "text" else None,
            tokenizer_name_or_path=tokenizer_path if c.init == "text" else None,
        )

    def prepare(self, backbone, task):
        from peft import get_peft_model

        model = get_peft_model(backbone.model, self.peft_config(task.prompt_init_text, backbone.path))
        return model.train()  # from_pretrained returns eval mode; Lightning keeps submodules' modes

    def save(self, model, directory) -> None:
        model.save_pretrained(directory)

    def load(self, backbone, directory):
        from peft import PeftModel

        return PeftModel.from_pretrained(backbone.model, directory).eval()
