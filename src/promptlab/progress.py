"""Progress a person can read: in a terminal one tqdm bar over all optimiser steps (not Lightning's
per-epoch "Epoch 12/-2" bar under max_steps) with the running-mean loss; in a log file, where a bar
only renders at the end, a plain line every ``every`` seconds (``PROMPTLAB_PROGRESS_EVERY``, default 30) with
step, mean loss, speed and ETA. Prediction passes say what they are for (``labelled``): "dev", "eval", or a
prompt search's "search on dev: prompt 3/10"."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_only

from promptlab.errors import ConfigError

log = logging.getLogger("promptlab")

Label = str | Callable[[Any], str]  # a prediction pass's label, or a function of its batch giving one
_LABELS: list[Label] = []


@contextmanager
def labelled(label: Label) -> Iterator[None]:
    """Prediction passes inside the block are shown as ``label`` ("dev", "eval") instead of "eval"; a function
    of the batch labels each batch (a prompt search: which candidate prompt the batch scores)."""
    _LABELS.append(label)
    try:
        yield
    finally:
        _LABELS.pop()


def current_label(default: str = "eval") -> str:
    """The innermost fixed label (``default`` outside any): what a pass labelling its own batches builds on."""
    return next((label for label in reversed(_LABELS) if isinstance(label, str)), default)


def batch_label(batch: Any) -> str:
    """What the innermost ``labelled`` block calls this batch ("eval" outside any)."""
    if not _LABELS:
        return "eval"
    label = _LABELS[-1]
    return label if isinstance(label, str) else label(batch)


class StepBar(TQDMProgressBar):
    """One training bar from step 0 to ``max_steps``; shows ``loss_avg``, never ``v_num``."""

    def on_train_start(self, trainer: L.Trainer, *_) -> None:
        self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.reset(total=trainer.max_steps)
        self.train_progress_bar.set_description("train")

    def on_train_epoch_start(self, *_) -> None:
        """Keep the one bar across epochs."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_) -> None:
        bar = self.train_progress_bar
        bar.n = trainer.global_step
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=True)

    def on_train_epoch_end(self, *_) -> None:
        """Nothing: the bar closes when training ends."""

    def on_predict_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int,
                               dataloader_idx: int = 0) -> None:
        super().on_predict_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        label = batch_label(batch)
        if label != getattr(self, "_label", None):  # "search on dev: prompt 3/10", not "Predicting DataLoader 0"
            self._label = label
            self.predict_progress_bar.set_description(label)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_predict_end(trainer, pl_module)
        self._label = None

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


class PlainProgress(L.Callback):
    """Periodic one-line progress for non-terminal output (logs, SLURM files, CI)."""

    def __init__(self, every: float = 30.0):
        self.every = every

    def _due(self, now: float, done: int, total: int) -> bool:
        return done == total or done == 1 or now - self.last >= self.every

    def on_train_start(self, trainer: L.Trainer, *_) -> None:
        self.start = self.last = time.perf_counter()
        self.first_step = trainer.global_step  # > 0 in a resumed run

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_) -> None:
        now, step, total = time.perf_counter(), trainer.global_step, trainer.max_steps
        if self._due(now, step, total):
            self.last = now
            rate = (now - self.start) / max(step - self.first_step, 1)
            loss = trainer.callback_metrics.get("loss_avg")
            log.info("train step %d/%d · loss %s (mean of last %d) · %.2f s/step · ETA %s", step, total,
                     "—" if loss is None else f"{float(loss):.4f}", getattr(pl_module, "loss_window", 1), rate,
                     _duration(rate * (total - step)))

    def on_predict_start(self, trainer: L.Trainer, *_) -> None:
        self.start = self.last = time.perf_counter()

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int, *_) -> None:
        now, done = time.perf_counter(), batch_idx + 1
        total = sum(trainer.num_predict_batches)
        if self._due(now, done, total):
            self.last = now
            rate = (now - self.start) / done
            log.info("%s · batch %d/%d · %.2f s/batch · ETA %s", batch_label(batch), done, total, rate,
                     _duration(rate * (total - done)))


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def progress_every() -> float:
    """Seconds between plain progress lines: ``PROMPTLAB_PROGRESS_EVERY`` (default 30; 0: every step)."""
    text = os.environ.get("PROMPTLAB_PROGRESS_EVERY", "30")
    try:
        every = float(text)
    except ValueError:
        every = -1.0
    if not every >= 0:  # also NaN
        raise ConfigError(f"PROMPTLAB_PROGRESS_EVERY={text!r} is not a number of seconds >= 0",
                          "set it to e.g. 30 (or 0 for a line every step), or unset it")
    return every


def progress_callbacks() -> tuple[list[L.Callback], bool]:
    """(callbacks, enable_progress_bar) for this process's stderr; none in data-parallel ranks other than 0."""
    if rank_zero_only.rank != 0:
        return [], False
    if sys.stderr.isatty():
        return [StepBar()], True
    return [PlainProgress(progress_every())], False
