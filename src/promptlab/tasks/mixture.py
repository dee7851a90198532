"""Instruction-tuning mixtures (FLAN / T0 style): several tasks, each example rendered with one of its task's
instruction templates, drawn by weight into one training stream; every task the mixture lists but does not
train on is held out and evaluated zero-shot beside the seen ones.

A mixture is a YAML under ``conf/mixture/`` whose defaults pull each task's own data config into ``tasks``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
from omegaconf import DictConfig

from promptlab.config import optional_whole_number, whole_number
from promptlab.errors import ConfigError
from promptlab.prompts import Encoder
from promptlab.tasks.loading import Task, load_task
from promptlab.tasks.sampling import training_subset
from promptlab.tasks.spec import TaskSpec

TEMPLATE_MODES = ("all", "default")
SEEN_MEAN, HELDOUT_MEAN = "seen_mean", "heldout_mean"  # record metrics: mean primary metric over each group


@dataclass
class Mixture:
    """The tasks (train ones first, in the YAML's order), their weights, and how examples are drawn."""

    name: str
    specs: dict[str, TaskSpec]  # every task: trained on (weight > 0) or held out
    weights: dict[str, float]  # training tasks only
    examples_per_task: int
    templates: str = "all"
    tasks: dict[str, Task] = field(default_factory=dict)  # loaded by ``load``

    # what a run record says of its "task": scored (and chosen by a sweeper) on its seen tasks' mean primary
    # metric; the held-out mean is reported beside it, never optimised
    output_type = "mixture"
    primary_metric = SEEN_MEAN
    chance = None

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Mixture:
        tasks, train = cfg.get("tasks") or {}, cfg.get("train") or {}
        if not train:
            raise ConfigError(f"mixture {cfg.get('name')!r} trains on no task", "list tasks under mixture.train")
        unknown = [t for t in train if t not in tasks]
        if unknown:
            raise ConfigError(f"mixture.train names task(s) {unknown} that mixture.tasks does not define",
                              f"use tasks it defines ({', '.join(tasks)}), or add '/data@tasks.<name>: <name>' "
                              "to the mixture's defaults")
        for name, w in train.items():
            if not (isinstance(w, int | float) and not isinstance(w, bool) and w > 0):
                raise ConfigError(f"mixture.train.{name}={w!r} is not a positive weight", "use e.g. 1.0")
        examples = whole_number(cfg.examples_per_task, "mixture.examples_per_task", 1, 32)
        if cfg.get("templates", "all") not in TEMPLATE_MODES:
            raise ConfigError(f"mixture.templates={cfg.templates!r} is unknown", f"use one of {TEMPLATE_MODES}")
        limit = optional_whole_number(cfg.get("eval_limit"), "mixture.eval_limit", 100)
        dev_size = optional_whole_number(cfg.get("dev_size"), "mixture.dev_size", 32)
        order = [*train, *(t for t in tasks if t not in train)]
        specs = {t: TaskSpec.from_config(tasks[t], where=f"mixture.tasks.{t}") for t in order}
        if limit is not None:
            specs = {t: dataclasses.replace(s, eval_limit=limit) for t, s in specs.items()}
        if dev_size is not None:  # tasks whose dev is carved out of train
            specs = {t: dataclasses.replace(s, dev_size=dev_size) for t, s in specs.items()}
        return cls(cfg.name, specs, {t: float(w) for t, w in train.items()}, examples, cfg.get("templates", "all"))

    @property
    def train_tasks(self) -> list[str]:
        return list(self.weights)

    @property
    def heldout_tasks(self) -> list[str]:
        return [t for t in self.specs if t not in self.weights]

    def load(self, data_root: str | None, seed: int) -> None:
        """Load and check every task's rows, with the run's seed (before the model loads)."""
        self.tasks = {t: load_task(s, data_root, seed) for t, s in self.specs.items()}

    def budgets(self, seed: int) -> dict[str, list[dict]]:
        """Each training task's budget: ``examples_per_task`` rows at random (a ConfigError names a task with
        fewer)."""
        budgets = {}
        for t in self.train_tasks:
            spec = dataclasses.replace(self.specs[t], k_shot=None, train_size=self.examples_per_task)
            try:
                budgets[t] = training_subset(Task(spec, self.tasks[t].train), seed)
            except ConfigError as err:
                raise ConfigError(f"mixture task {t}: {err.problem}", "lower mixture.examples_per_task") from None
        return budgets

    def stream(self, budgets: dict[str, list[dict]], n: int, seed: int) -> list[tuple[int, dict, int]]:
        """``n`` training examples as (task index, row, template index): each draw picks a task with probability
        proportional to its weight, then that task's next row (cycling through a seeded shuffle), rendered with
        a seeded template of the task's (``templates=all``) or its default one."""
        rng = np.random.default_rng(seed)
        names = self.train_tasks
        p = np.array([self.weights[t] for t in names]) / sum(self.weights.values())
        orders = {t: rng.permutation(len(budgets[t])).tolist() for t in names}
        taken = dict.fromkeys(names, 0)
        out = []
        for k in rng.choice(len(names), size=n, p=p):
            t = names[k]
            row = budgets[t][orders[t][taken[t] % len(budgets[t])]]
            taken[t] += 1
            spec = self.specs[t]
            template = int(rng.integers(len(spec.templates))) if self.templates == "all" else spec.template
            out.append((int(k), row, template))
        return out

    def train_items(self, tokenizer, budgets: dict[str, list[dict]], n: int, seed: int) -> list[dict]:
        """The training stream encoded: every task as text-to-text (prompt -> its answer text + EOS), so choice
        and generation tasks train with one loss; ``task_id`` is the task's index among the training tasks."""
        encoders: dict[tuple[int, int], Encoder] = {}
        items = []
        for k, row, template in self.stream(budgets, n, seed):
            spec = self.specs[self.train_tasks[k]]
            if (k, template) not in encoders:
                encoders[k, template] = Encoder(tokenizer, dataclasses.replace(spec, template=template), task_id=k)
            enc = encoders[k, template]
            items.append({"idx": len(items), "task_id": k, "prompt_ids": enc.prompt_ids(row),
                          "target_ids": enc.target_ids(row)})
        return items
