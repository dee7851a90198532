"""The training budget and few-shot demonstrations, drawn with the run's seed."""

from __future__ import annotations

import numpy as np

from promptlab.config import optional_whole_number
from promptlab.errors import ConfigError
from promptlab.tasks.loading import DEV_SPLIT_SEED, EVAL_SUBSET_SEED, Task


def sample_k_shot(labels: list[int], k: int, num_classes: int, seed: int, train_size: str = "data.train_size"
                  ) -> list[int]:
    """Indices of exactly k examples per class, drawn with the seed, in a seeded shuffled order (``train_size``:
    the key as a fix names it, ``TaskSpec.key``)."""
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    chosen = []
    for c in range(num_classes):
        pool = np.flatnonzero(labels_arr == c)
        if not len(pool):  # no k fits: "use k_shot <= 0" would be no advice at all
            raise ConfigError(f"k_shot={k} but class {c} has no training examples at all",
                              "check the training split's labels (a filtered or carved-down split?), or use "
                              f"data.k_shot=null {train_size}=N")
        if k > len(pool):
            raise ConfigError(f"k_shot={k} but class {c} has only {len(pool)} training examples",
                              f"use data.k_shot <= {len(pool)}, or data.k_shot=null {train_size}=N")
        chosen.extend(rng.choice(pool, size=k, replace=False).tolist())
    return rng.permutation(chosen).tolist()


def training_subset(task: Task, seed: int) -> list[dict]:
    """The budget: ``k_shot`` per class (choice tasks), else ``train_size`` at random, else everything; drawn
    from ``task.train`` (what dev left) with the seed, so every method run with a seed gets the same rows."""
    spec = task.spec
    try:
        if spec.k_shot is not None:
            k = optional_whole_number(spec.k_shot, "data.k_shot", 16)
            idx = sample_k_shot([r[spec.label_column] for r in task.train], k, spec.num_choices, seed,
                                spec.key("train_size"))
        elif spec.train_size is not None:
            n = optional_whole_number(spec.train_size, "data.train_size", 100)
            if n > len(task.train):
                raise ConfigError(f"train_size={n} but {task.name} has {len(task.train)} training examples",
                                  f"use {spec.key('train_size')} <= {len(task.train)}")
            idx = np.random.default_rng(seed).choice(len(task.train), size=n, replace=False).tolist()
        else:
            idx = range(len(task.train))
    except ConfigError as err:
        if task.dev and not spec.dev_split:  # the budget is drawn from what the dev carve-out left
            source, size = (spec.custom.path.name, f"a fifth of its rows, at most data.dev_size={spec.dev_size}") \
                if spec.custom else (spec.train_split, f"data.dev_size={spec.dev_size}")
            raise ConfigError(f"{err.problem}, after {len(task.dev)} rows were carved out of {source} for dev ({size})",
                              f"{err.fix}, or lower {spec.key('dev_size')}") from None
        raise
    return [task.train[i] for i in idx]


def component_seeds(seed: int) -> dict[str, int]:
    """Every random stream a run draws from, by what it decides (for the run record)."""
    return {"run": seed, "budget": seed, "demos": seed + 1, "train_order": seed,
            "dev_split": [DEV_SPLIT_SEED, seed], "eval_subset": EVAL_SUBSET_SEED}


def sample_demos(pool: list[dict], task: Task, num_demos: int, seed: int) -> list[dict]:
    """Demonstrations from the training pool; for choice tasks as balanced over labels as num_demos allows."""
    if num_demos <= 0:
        return []
    if num_demos > len(pool):
        raise ConfigError(f"method.num_demos={num_demos} but the training pool has {len(pool)} examples",
                          "lower method.num_demos or raise data.k_shot / data.train_size")
    rng = np.random.default_rng(seed + 1)  # not the budget's stream: demos vary independently of it
    spec = task.spec
    if spec.output_type != "choice":
        return [pool[i] for i in rng.choice(len(pool), size=num_demos, replace=False)]
    by_class = [[r for r in pool if r[spec.label_column] == c] for c in range(spec.num_choices)]
    for group in by_class:
        rng.shuffle(group)
    demos, turn = [], 0
    while len(demos) < num_demos:  # round-robin over classes until enough
        c = turn % spec.num_choices
        taken = sum(1 for d in demos if d[spec.label_column] == c)
        if taken < len(by_class[c]):
            demos.append(by_class[c][taken])
        turn += 1
    return [demos[i] for i in rng.permutation(len(demos))]
