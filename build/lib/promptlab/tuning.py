"""Tuning on dev, with a counted budget: every choice a row makes is made on dev, and each method family gets the
same number of dev evaluations.

- ``method.space``: a method's tuning space, a mapping of config keys to the values to try (their product is
  the grid). A key without a dot, or whose first part is not a config section, is the method's own
  (``lr``, ``peft.r``); ``data.template`` or ``search.propose`` name another section.
- ``trial=k`` (top level): the run trains point ``k`` of that grid. An experiment sweeps ``trial=0,...,n-1``
  with Hydra (the basic sweeper in one process, joblib, SLURM): each point is a run with its own record, and
  the report keeps, per method and seed, the run best on dev (``report.selection``). A ``trial`` past a
  method's last point is skipped, so arms with spaces of different sizes share one sweep.
- ``method.dev_every_n_steps``: dev is scored during training (Lightning's validation loop) every that many
  steps; the weights of the check best on dev are the run's, so the number of steps is chosen on dev too.
- ``tune_keys`` (top level): the keys a sweeper varies to tune one row without a grid (Optuna's trials); the
  report treats the runs that differ only in them as that row's trials, like ``trial`` runs.
- ``budget`` (top level): the dev evaluations every method family gets in an experiment: a run's count is its
  points × (prompts a search scores, or dev checks during training). A run whose count differs is refused
  before the model loads, so every arm of the experiment is held to the same number. Readouts (raw,
  normalised, calibrated) are chosen on dev for every method alike and are not counted.

Hand-written where no library does it: Hydra sweeps the index and Lightning runs the validation loop; the
grid's order, the index and the in-memory copy of the best weights are these few functions.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from promptlab.config import has_key, is_whole
from promptlab.errors import ConfigError

log = logging.getLogger("promptlab")
SECTIONS = ("data", "method", "model", "search", "trainer", "mixture")


def absolute_key(key: str) -> str:
    """``lr`` -> ``method.lr``; ``peft.r`` -> ``method.peft.r``; ``data.template`` stays."""
    return key if key.split(".", 1)[0] in SECTIONS and "." in key else f"method.{key}"


def points(cfg: DictConfig) -> list[dict[str, Any]]:
    """The grid of ``method.space`` in a fixed order (the product of its lists, keys as written): each point maps
    absolute keys to values; one empty point when the method has no space."""
    space = cfg.method.get("space") if cfg.get("method") is not None else None
    if space is None:
        return [{}]
    if not isinstance(space, DictConfig) or not space:
        raise ConfigError(f"method.space={OmegaConf.to_container(space) if isinstance(space, DictConfig) else space!r} "
                          "is not a mapping of keys to lists of values", "write e.g. method.space={lr: [1e-4, 3e-4]}")
    keys, values = [], []
    for key, options in space.items():
        options = OmegaConf.to_container(options) if OmegaConf.is_config(options) else options
        if not isinstance(options, list) or not options:
            raise ConfigError(f"method.space.{key}={options!r} has no values to try",
                              f"give a list of at least one value, e.g. method.space.{key}=[...]")
        if not has_key(cfg, absolute_key(str(key))):
            raise ConfigError(f"method.space.{key}: the config has no key {absolute_key(str(key))} to tune",
                              "name a key the config has (a method's own, e.g. lr, or data.template)")
        keys.append(absolute_key(str(key)))
        values.append(options)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


class OutsideSpace(Exception):
    """``trial`` is past the method's last point: nothing to run (a sweep over arms of different sizes)."""


def apply_trial(cfg: DictConfig) -> DictConfig:
    """``cfg`` with point ``trial`` of its method's space applied (before the record is written, so config.yaml
    and the config hash hold the values the run trains with); ``OutsideSpace`` past the last point."""
    trial = cfg.get("trial")
    if trial is None:
        return cfg
    if not is_whole(trial, 0):
        raise ConfigError(f"trial={trial!r} is not a whole number >= 0", "use trial=0,1,... (a point of method.space)")
    grid = points(cfg)
    if trial >= len(grid):
        raise OutsideSpace(f"trial={trial} but {cfg.method.get('name')}'s tuning space has {len(grid)} point(s)")
    cfg = cfg.copy()
    with open_dict(cfg):
        for key, value in grid[trial].items():
            OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def tune_keys(cfg: DictConfig) -> list[str]:
    """``tune_keys``: config keys a sweep varies to tune one row (a sweeper's trials, e.g. Optuna's ``method.lr``);
    each must be a key of the config."""
    keys = cfg.get("tune_keys") or []
    if not OmegaConf.is_list(keys) and not isinstance(keys, list):
        raise ConfigError(f"tune_keys={keys!r} is not a list of config keys", "use e.g. tune_keys=[method.lr]")
    for key in keys:
        if not isinstance(key, str) or not has_key(cfg, key):
            raise ConfigError(f"tune_keys names {key!r}, which is not a key of the config",
                              "name the keys the sweep varies, e.g. tune_keys=[method.lr]")
    return list(keys)


def tuning_info(cfg: DictConfig, job: int | None = None) -> dict | None:
    """What the record says of a trial: its index, the grid's size, the point's values and the space; for a run
    of a sweep over ``tune_keys``, the Hydra job's number and the keys' values. None for a run that is no trial."""
    keys = tune_keys(cfg)
    if cfg.get("trial") is not None:
        grid, space = points(cfg), cfg.method.get("space")
        point = {**grid[cfg.trial], **{k: OmegaConf.select(cfg, k) for k in keys}}
        return {"trial": cfg.trial, "points": len(grid), "point": point, "keys": sorted({*grid[0], *keys}),
                "space": OmegaConf.to_container(space) if space is not None else {}}
    if not keys:
        return None
    if cfg.get("budget") is not None:
        raise ConfigError("budget= counts the points of method.space, and this sweep tunes tune_keys instead",
                          "use trial=0,...,n-1 over method.space for a counted budget, or budget=null")
    return {"trial": job, "points": None, "point": {k: OmegaConf.select(cfg, k) for k in keys}, "keys": sorted(keys),
            "space": None}


def dev_checks(method_cfg: DictConfig) -> int:
    """How many times dev is scored during a trained run (``method.dev_every_n_steps``; 1: once, at the end)."""
    every = method_cfg.get("dev_every_n_steps")
    return 1 if every is None else math.ceil(int(method_cfg.max_steps) / int(every))


def check_dev_every(method_cfg: DictConfig, trains: bool) -> int | None:
    """``method.dev_every_n_steps``: None, or a whole number in 1..max_steps for a trained method (a method that
    does not train ignores it)."""
    every = method_cfg.get("dev_every_n_steps")
    if every is None or not trains:  # like max_steps, set for a whole experiment: prompting methods ignore it
        return None
    if not (is_whole(every, 1) and is_whole(method_cfg.get("max_steps"), 1) and every <= method_cfg.max_steps):
        raise ConfigError(f"method.dev_every_n_steps={every!r} is not a whole number in 1..method.max_steps "
                          f"({method_cfg.get('max_steps')})", "use e.g. method.dev_every_n_steps=20, or null (dev once, "
                          "at the end)")
    return every


def dev_evaluations(cfg: DictConfig, trains: bool, search_candidates: int) -> int:
    """A run's budget count: the points of its space times what one point scores on dev (a search's prompts,
    or a trained run's dev checks)."""
    per_point = dev_checks(cfg.method) if trains else max(search_candidates, 1)
    grid = points(cfg)  # checked even when no trial is asked: a bad space is an error now, not in a sweep
    return (len(grid) if cfg.get("trial") is not None else 1) * per_point


def check_budget(cfg: DictConfig, count: int) -> None:
    """``budget``: the number of dev evaluations every method family of the experiment gets."""
    budget = cfg.get("budget")
    if budget is None:
        return
    if not is_whole(budget, 1):
        raise ConfigError(f"budget={budget!r} is not a whole number >= 1",
                          "use budget=<dev evaluations per method family>, or budget=null")
    if count != budget:
        raise ConfigError(f"{cfg.method.name} would make {count} dev evaluations (points of method.space × prompts "
                          f"searched or dev checks during training), and the experiment gives every method "
                          f"family budget={budget}", "resize method.space, search.templates/propose/demo_draws or "
                          "method.dev_every_n_steps to match, or set budget=null")


class BestOnDev(L.Callback):
    """After each dev check (Lightning's validation loop over dev, every ``method.dev_every_n_steps``), keep an
    in-memory copy of the trainable weights when the check's score (``score``: the headline on dev, best over
    the readouts) is the best so far; at the end of training, put the best copy back. Ties keep the earlier
    step. ``checks`` lists every check: step, dev metrics, score, seconds."""

    def __init__(self, score, higher_is_better: bool = True):
        self.score, self.higher = score, higher_is_better
        self.checks: list[dict] = []
        self.best: dict[str, torch.Tensor] | None = None
        self.best_step: int | None = None
        self._best_value: float | None = None
        self._started = 0.0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def record(self, trainer: L.Trainer, pl_module: L.LightningModule, metrics: dict[str, float]) -> None:
        """Called by the module with the dev metrics of this check."""
        value = self.score(metrics)
        step = trainer.global_step
        self.checks.append({"step": step, "dev": metrics, "score": value,
                            "seconds": round(time.perf_counter() - self._started, 3)})
        better = self._best_value is None or (value > self._best_value if self.higher else value < self._best_value)
        if better and math.isfinite(value):
            self._best_value, self.best_step = value, step
            self.best = {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}
        log.info("dev check at step %d: %.4f%s", step, value, " (best so far)" if self.best_step == step else "")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.best is None:
            return
        params = dict(pl_module.named_parameters())
        with torch.no_grad():
            for name, value in self.best.items():
                params[name].copy_(value)
        self.best = None  # the copy is not needed any more

    def state_dict(self) -> dict:
        """In resume checkpoints (Lightning stores callbacks' state): a resumed run keeps its checks and best copy."""
        return {"checks": self.checks, "best": self.best, "best_step": self.best_step, "best_value": self._best_value}

    def load_state_dict(self, state: dict) -> None:
        self.checks, self.best, self.best_step = state["checks"], state["best"], state["best_step"]
        self._best_value = state["best_value"]

    def summary(self) -> dict:
        return {"every_n_steps": None, "checks": self.checks, "chosen_step": self.best_step,
                "seconds": round(sum(c["seconds"] for c in self.checks), 3)}
