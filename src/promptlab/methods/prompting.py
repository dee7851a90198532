"""Zero- and few-shot prompting: the frozen model reads the task's manual template, after ``num_demos``
demonstrations drawn from the run's training sample. Nothing is trained or stored per task."""

from __future__ import annotations

from promptlab.errors import ConfigError
from promptlab.methods import Method, register


@register("prompting")
class Prompting(Method):
    def validate(self, task) -> None:
        super().validate(task)
        if self.cfg.name == "few_shot" and self.num_demos < 1:
            raise ConfigError(f"few_shot needs method.num_demos >= 1 (got {self.num_demos})", "set method.num_demos=4")
        if self.cfg.name == "zero_shot" and self.num_demos:
            raise ConfigError("zero_shot takes no demonstrations", "use method=few_shot for method.num_demos > 0")
