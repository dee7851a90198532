"""Resuming: a trained run saves a Lightning checkpoint every n minutes (or steps) and when SIGINT/SIGTERM stops it; the
same run started again in the same directory continues from it to the predictions an uninterrupted run
gives (the trainable weights, optimiser, scheduler, step, data position and random states are all in it).

    <run_dir>/resume/last.ckpt   the latest only (a full fine-tuning one is 3x the model); removed once the
                                 run completes (the trained weights are then in <run_dir>/checkpoint/)

What a checkpoint holds beyond Lightning's own is ``PromptModule.on_save_checkpoint``'s business.

Hand-written rather than Lightning's ``ModelCheckpoint``: its step and time triggers are mutually exclusive
(``every_n_train_steps`` / ``train_time_interval``), while a run here may save on both (every 10 minutes by
default, and every N steps when asked), and a SIGINT/SIGTERM must save at the end of the step it arrived in and
then stop the run, which ``ModelCheckpoint`` does not do. The save itself is Lightning's
(``trainer.save_checkpoint``).
"""

from __future__ import annotations

import logging
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from promptlab import signals
from promptlab.schema import FINAL
from promptlab.tracking import config_hash, read_record

log = logging.getLogger("promptlab")
RESUME_DIR = "resume"


def checkpoint_path(run_dir: Path) -> Path:
    return run_dir / RESUME_DIR / "last.ckpt"


@dataclass(frozen=True)
class ResumePoint:
    """A run to continue: its record's run id (the wandb run goes on under it), its newest checkpoint, and the
    record's earlier restarts (the new record keeps them)."""

    run_id: str
    checkpoint: Path
    previous_status: str
    resumes: list[dict]


def find_resume_point(run_dir: Path, cfg: DictConfig) -> ResumePoint | None:
    """The checkpoint to continue from: an unfinished run of this same config (hash) left one here.

    Lightning's SLURM requeue saves ``hpc_ckpt_<n>.ckpt`` in the run directory; the newest file wins.
    """
    if cfg.get("resume", True) is not True:  # false, or a bad value that config.Settings reports
        return None
    record = read_record(run_dir)
    if not record or record.get("status") in FINAL or record.get("config_hash") != config_hash(cfg):
        return None
    candidates = [p for p in [checkpoint_path(run_dir), *run_dir.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
    if not candidates or not record.get("run_id"):
        return None
    newest = max(candidates, key=lambda p: p.stat().st_mtime)
    return ResumePoint(record["run_id"], newest, record.get("status", "unknown"), record.get("resumes") or [])


def discard(run_dir: Path) -> None:
    """Remove resume checkpoints (a fresh start, or a completed run): a later run must not load them."""
    shutil.rmtree(run_dir / RESUME_DIR, ignore_errors=True)
    for stale in run_dir.glob("hpc_ckpt_*.ckpt"):
        stale.unlink(missing_ok=True)


class ResumeCheckpoint(L.Callback):
    """Saves ``resume/last.ckpt`` every ``every_n_steps`` optimiser steps and every ``every_minutes`` of training
    (None: not on that schedule), and at the end of the step in which SIGINT/SIGTERM arrived, then stops the run
    (``signals.Interrupted``).

    ``fit`` runs inside ``signals.deferred()``, so a signal waits for the step to end: a checkpoint is never
    taken of half-updated weights. A second signal stops at once. ``on_start`` is told the step training
    starts at (a resumed run's). Not a dataclass: Hydra would turn it into a config when passed to the Trainer.
    """

    def __init__(self, path: Path, every_n_steps: int | None, every_minutes: float | None = None,
                 on_start: Callable[[int], None] | None = None):
        self.path, self.every_n_steps, self.on_start = path, every_n_steps, on_start
        self.every_seconds = every_minutes * 60 if every_minutes else None
        self.saves, self.save_seconds, self.bytes = 0, 0.0, 0
        self._last_step, self._last_save_at = -1, time.monotonic()

    def on_train_start(self, trainer: L.Trainer, *args) -> None:
        self._last_save_at = time.monotonic()
        if self.on_start:
            self.on_start(trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        signum = signals.take_pending()
        step, stop = trainer.global_step, signum is not None
        due = step < trainer.max_steps and bool(
            (self.every_n_steps and step % self.every_n_steps == 0)
            or (self.every_seconds and time.monotonic() - self._last_save_at >= self.every_seconds))
        if trainer.world_size > 1:  # a save is collective (a barrier): every rank saves, and stops, together
            due = trainer.strategy.reduce_boolean_decision(due, all=False)
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if due or stop:
            self.save(trainer)
        if stop:
            raise signals.Interrupted(signum if signum is not None else signal.SIGTERM)

    def on_train_end(self, trainer: L.Trainer, *args) -> None:
        signum = signals.take_pending()  # arrived after the last step
        if signum is not None:
            self.save(trainer)
            raise signals.Interrupted(signum)

    def save(self, trainer: L.Trainer) -> None:
        if trainer.global_step == self._last_step:
            return
        start = time.perf_counter()
        trainer.save_checkpoint(self.path, weights_only=False)  # all of it; written atomically (a transaction)
        self.save_seconds += time.perf_counter() - start
        self.saves += 1
        self._last_step, self._last_save_at = trainer.global_step, time.monotonic()
        if trainer.is_global_zero:
            self.bytes = self.path.stat().st_size
            log.debug("resume checkpoint at step %d: %s", trainer.global_step, self.path)

    def costs(self) -> dict[str, float | int]:
        return {"resume_checkpoints": self.saves, "resume_checkpoint_seconds": round(self.save_seconds, 3),
                "resume_checkpoint_bytes": self.bytes}
