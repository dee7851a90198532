"""Chain-of-thought prompting (Wei et al. 2022; Kojima et al. 2022): the answer starts with a reasoning
trigger ("Let's think step by step."), so the model writes its reasoning first. Zero-shot CoT has no
demonstrations; few-shot CoT shows worked solutions (the task's target, e.g. GSM8K's) after the trigger.
Choice tasks have labels but no worked solutions: there the model writes each demonstration's reasoning
itself with zero-shot CoT and the gold answer follows the cue (Auto-CoT, Zhang et al. 2022); that
generation is recorded as the demonstrations' cost.

On a generate task the task's filters extract the final answer from the text. On a choice task the
reasoning is followed by an answer cue and the choices are rank-scored there (``CoTChoiceReadout``).
"""

from __future__ import annotations

from pydantic import Field

from promptlab.errors import ConfigError
from promptlab.methods import Method, MethodConfig, register
from promptlab.prompts import Encoder, render
from promptlab.readout import ChoiceReadout, CoTChoiceReadout, GenerateReadout


class CoTConfig(MethodConfig):
    trigger: str = Field(pattern=r"\S", examples=["Let's think step by step."])  # what the answer starts with
    answer_cue: str = "Therefore, the answer is"  # choice tasks: the choices are scored after it
    max_new_tokens: int = Field(128, ge=1, examples=[128])  # choice tasks: reasoning length
    until: list[str] = []  # choice tasks: extra stop strings for the reasoning


@register("cot")
class ChainOfThought(Method):
    generates_on_choice = True
    Config = CoTConfig

    @property
    def assistant_prefix(self) -> str:
        return self.cfg.trigger

    def validate(self, task) -> None:
        super().validate(task)
        c = self.cfg
        if task.image_column:
            raise ConfigError(f"{c.name} on an image task ({task.name}) is not supported yet",
                              "use zero_shot or few_shot for image tasks")

    def demo(self, task, row: dict) -> tuple[str, str]:
        return render(task.prompt_template, row), f"{self.cfg.trigger} {task.target_of(row)}"

    def demos(self, model, tokenizer, task, rows, readout, work) -> list[tuple[str, str]]:
        if task.output_type == "generate" or not rows:
            return super().demos(model, tokenizer, task, rows, readout, work)
        c = self.cfg
        encoder = Encoder(tokenizer, task, (), self.assistant_prefix)  # the zero-shot CoT prompt of each demo
        writer = GenerateReadout(tokenizer, c.max_new_tokens, list(c.until))  # greedy, even when answers sample
        written = writer.generate(model, [encoder.prompt_ids(r) for r in rows])
        work.generated_tokens += writer.generated_tokens
        work.generation_seconds += writer.generation_seconds
        return [(render(task.prompt_template, r), f"{c.trigger} {g.text} {c.answer_cue} {task.target_of(r)}.")
                for r, g in zip(rows, written, strict=True)]

    def readout(self, tokenizer, task, seed: int = 0):
        if task.output_type == "generate":
            return super().readout(tokenizer, task, seed)
        gen = GenerateReadout(tokenizer, self.cfg.max_new_tokens, list(self.cfg.until), self.sampling(seed),
                              self.combine())
        return CoTChoiceReadout(gen, ChoiceReadout(tokenizer.pad_token_id), self.cfg.answer_cue)
