"""Chain-of-thought prompting (Wei et al. 2022; Kojima et al. 2022): the answer starts with a reasoning
trigger ("Let's think step by step."), so the model writes its reasoning first. Zero-shot CoT has no
demonstrations; few-shot CoT shows worked solutions (the task's target, e.g. GSM8K's) after the trigger.

On a generate task the task's filters extract the final answer from the text. On a choice task the
reasoning is followed by an answer cue and the choices are rank-scored there (``CoTChoiceReadout``).
"""

from __future__ import annotations

from promptlab.errors import ConfigError
from promptlab.methods import Method, is_int, register
from promptlab.prompts import render
from promptlab.readout import ChoiceReadout, CoTChoiceReadout, GenerateReadout


@register("cot")
class ChainOfThought(Method):
    @property
    def assistant_prefix(self) -> str:
        return self.cfg.trigger

    def validate(self, task) -> None:
        super().validate(task)
        c = self.cfg
        if not isinstance(c.trigger, str) or not c.trigger.strip():
            raise ConfigError(f"method.trigger={c.trigger!r} is empty", "use e.g. \"Let's think step by step.\"")
        if not is_int(c.max_new_tokens, 1):
            raise ConfigError(f"method.max_new_tokens={c.max_new_tokens!r} is not a whole number >= 1",
                              "use e.g. method.max_new_tokens=128 (reasoning length on choice tasks)")
        if task.output_type == "choice" and self.num_demos:
            raise ConfigError(
                f"few-shot chain-of-thought needs worked solutions, and the choice task {task.name} has none "
                "(only labels)", "use method=zero_shot_cot on choice tasks, or a generate task such as gsm8k")

    def demo(self, task, row: dict) -> tuple[str, str]:
        return render(task.prompt_template, row), f"{self.cfg.trigger} {task.target_of(row)}"

    def readout(self, tokenizer, task):
        if task.output_type == "generate":
            return super().readout(tokenizer, task)
        gen = GenerateReadout(tokenizer, self.cfg.max_new_tokens, list(self.cfg.until))
        return CoTChoiceReadout(gen, ChoiceReadout(tokenizer.pad_token_id), self.cfg.answer_cue)
