"""``search/<name>.yaml`` as a typed schema, and the rules that relate it to the task, checked before the model
loads."""

from __future__ import annotations

from typing import Any, Literal

from omegaconf import DictConfig
from pydantic import Field

from promptlab.config import Schema, check_typed
from promptlab.errors import ConfigError
from promptlab.tasks import TaskSpec


class SearchSpec(Schema):
    """A prompt search's settings (``conf/search/``)."""

    name: str
    templates: Literal["all"] | list[int] = "all"  # the task's template ids to try
    instructions: list[str] = []  # your own instructions, each put before the task's input_template
    propose: int = Field(0, ge=0, examples=[4])  # meta-prompting (APE): instructions a proposer model writes
    meta_examples: int = Field(4, ge=1, examples=[4])  # labelled training examples the proposer reads per proposal
    meta_prompt: str = ""  # must hold {examples} when propose > 0
    meta_prefix: str = ""  # the start of the proposer's answer, which it completes (APE: "The instruction was to")
    temperature: float = Field(0.7, ge=0, examples=[0.7])  # proposals are sampled (seeded); 0: greedy
    max_new_tokens: int = Field(48, ge=1, examples=[48])
    demo_draws: int = Field(1, ge=1, examples=[1])  # few-shot: demonstration sets per prompt, chosen on dev with it
    ensemble: int = Field(1, ge=1, examples=[1])  # the best K prompts on dev, combined on eval
    combine: Literal["mean", "vote"] = "mean"  # how an ensemble's answer scores combine (evaluation/ensemble.py)
    eval_all: bool = False  # every candidate also on eval, for the sensitivity table only
    proposer: dict[str, Any] | None = None  # another model's config (model@search.proposer=...); None: the backbone

    @classmethod
    def from_config(cls, cfg: DictConfig | None, spec: TaskSpec, train_pool: int,
                    draws_demos: bool = False) -> SearchSpec | None:
        """The checked search settings, ``templates`` as ids (``draws_demos``: the method shows one seeded random
        draw of demonstrations, so ``demo_draws`` > 1 can vary it); None without a search."""
        if cfg is None:
            return None
        s = check_typed(cls, cfg, "search", f"search={cfg.get('name')}")
        n_templates = len(spec.templates)
        ids = list(range(n_templates)) if s.templates == "all" else s.templates
        if not all(0 <= i < n_templates for i in ids):
            raise ConfigError(f"search.templates={s.templates!r} is not 'all' or a list of {spec.name}'s "
                              f"template ids (0..{n_templates - 1})", "use search.templates=all or e.g. [0,2]")
        s = s.model_copy(update={"templates": ids})
        s._check(spec, train_pool)
        if s.demo_draws != 1 and not draws_demos:
            raise ConfigError(f"search.demo_draws={s.demo_draws!r} needs a method showing randomly drawn "
                              "demonstrations", "use search.demo_draws=1, or method=few_shot with "
                              "method.demo_selection=random")
        return s

    @property
    def num_candidates(self) -> int:
        """The prompts scored on dev (at most: an empty or repeated proposal is not scored twice)."""
        return (len(self.templates) + len(self.instructions) + self.propose) * self.demo_draws

    def _check(self, spec: TaskSpec, train_pool: int) -> None:
        if not all(i.strip() for i in self.instructions):
            raise ConfigError(f"search.instructions={self.instructions!r} holds an empty instruction",
                              "give a list of non-empty instruction strings, or []")
        if self.name == "ape" and self.propose < 1:
            raise ConfigError("search.propose=0 with search=ape: meta-prompting proposes N >= 1 candidates",
                              "use e.g. search.propose=4")
        if self.propose and self.meta_examples > train_pool:
            raise ConfigError(f"search.meta_examples={self.meta_examples} but the training sample has {train_pool} "
                              "examples to show the proposer", f"use search.meta_examples <= {train_pool}")
        if self.propose and "{examples}" not in self.meta_prompt:
            raise ConfigError(f"search.meta_prompt={self.meta_prompt!r} has no {{examples}}",
                              "the meta-prompt must contain {examples}, where the labelled examples go")
        n = len(self.templates) + len(self.instructions) + self.propose
        if n < 1:
            raise ConfigError("the prompt search has no candidates (no templates, instructions or proposals)",
                              "use search.templates=all, or give search.instructions / search.propose")
        n *= self.demo_draws
        if self.ensemble > n:
            raise ConfigError(f"search.ensemble={self.ensemble} but the search has only {n} candidates",
                              f"use search.ensemble <= {n}")
        if self.ensemble > 1 and spec.output_type != "choice":
            raise ConfigError(f"search.ensemble={self.ensemble} combines answer scores, and {spec.name} is a "
                              f"{spec.output_type} task", "use search.ensemble=1 on generation tasks")
