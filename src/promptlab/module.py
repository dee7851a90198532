"""The LightningModule: the readout's loss for training, its predictions for evaluation; AdamW with linear
warmup and decay over whatever the method left trainable. Its checkpoints (``promptlab.resume``) hold only
what training changes: trainable weights, counters and random-number states."""

from __future__ import annotations

import contextlib
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import lightning as L
import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

from promptlab.errors import Diverged
from promptlab.models.precision import bf16_linear_weights

if TYPE_CHECKING:
    from promptlab.readout import Readout, TrainingReadout


@dataclass
class Optim:
    """A trained method's optimisation knobs (its YAML holds them)."""

    lr: float = 0.0
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_steps: int = 0


class PromptModule(L.LightningModule):
    """Wraps a (possibly PEFT) causal LM and a readout (``promptlab.readout``)."""

    strict_loading = False  # checkpoints leave out the frozen weights; on_load_checkpoint checks the rest

    def __init__(self, model: torch.nn.Module, readout: Readout | TrainingReadout, optim: Optim | None = None):
        super().__init__()
        self.model, self.readout, self.optim = model, readout, optim or Optim()
        self.examples_seen = 0
        self.tokens_seen = 0
        self.optimizer_state_bytes = 0  # measured when training ends (AdamW: two moments per trainable weight)
        self.train_seconds = 0.0  # before this fit: a resumed run counts the time of its earlier attempts
        self._fit_started = time.perf_counter()
        self.loss_window = 20
        self._recent: deque[float] = deque(maxlen=self.loss_window)
        # dev checks during training (tuning.BestOnDev): called with each check's predicted rows
        self.on_dev_rows: Callable[[list[dict]], None] | None = None
        self._dev_rows: list[dict] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.readout.loss(self.model, batch)
        if not torch.isfinite(loss.detach()).all():  # nothing after this step is a result: end the run as diverged
            raise Diverged(self.global_step, f"training loss {float(loss.detach())}")
        n = len(batch["idx"])
        tokens = sum(len(p) for p in batch.get("prompt_ids", [])) + sum(len(t) for t in batch.get("target_ids", []))
        if self.trainer.world_size > 1:  # data-parallel: count what every rank trained on
            n, tokens = (int(x) for x in self.trainer.strategy.reduce(torch.tensor([n, tokens]), reduce_op="sum"))
        self.examples_seen += n
        self.tokens_seen += tokens
        self._recent.append(float(loss.detach()))
        self.log("train/loss", loss, batch_size=n)
        # The bar shows the mean over recent steps: one batch's loss is too noisy to read the run by.
        self.log("loss_avg", sum(self._recent) / len(self._recent), prog_bar=True, batch_size=n, logger=False)
        return loss

    def on_train_start(self) -> None:
        self._fit_started = time.perf_counter()

    def on_train_end(self) -> None:
        self.optimizer_state_bytes = sum(t.numel() * t.element_size() for opt in self.trainer.optimizers
                                         for state in opt.state.values() for t in state.values() if torch.is_tensor(t))

    def elapsed_train_seconds(self) -> float:
        """Training time over every attempt of this run, up to now."""
        return self.train_seconds + time.perf_counter() - self._fit_started

    def trainable_names(self) -> set[str]:
        """State-dict names of the trainable weights. FSDP's wrappers add a segment to parameter names that its
        full state dict does not have; it is taken out so both name a weight alike."""
        return {name.replace("_fsdp_wrapped_module.", "") for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Frozen weights are the backbone's, loaded anyway: a prompt-tuning checkpoint stays kilobytes.
        keep = self.trainable_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["promptlab"] = {
            "examples_seen": self.examples_seen, "tokens_seen": self.tokens_seen,
            "train_seconds": self.elapsed_train_seconds(),
            # Lightning's checkpoint leaves random states out; dropout or sampling after a resume needs them.
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": _numpy_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved, trainable = set(checkpoint["state_dict"]), self.trainable_names()
        if saved != trainable:  # strict_loading is off, so a mismatch must be caught here
            raise RuntimeError(f"the checkpoint holds weights {sorted(saved ^ trainable)[:5]} that this run's "
                               "trainable weights do not match: it belongs to another model or method")
        state = checkpoint["promptlab"]
        self.examples_seen, self.tokens_seen = state["examples_seen"], state["tokens_seen"]
        self.train_seconds = state["train_seconds"]
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        name, keys, pos, has_gauss, gauss = rng["numpy"]
        np.random.set_state((name, keys.numpy(), pos, has_gauss, gauss))
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def predicting(self, trainer: L.Trainer) -> contextlib.AbstractContextManager:
        """Wrap ``trainer.predict`` calls: under bf16-mixed in one process, the linear weights are cast to bf16 once
        for the whole pass rather than by autocast on every forward (``precision.bf16_linear_weights``)."""
        self.readout.new_pass()  # e.g. a prefix cache computed before training: recomputed in this pass
        return self._bf16_weights(trainer, frozen_only=False)

    def fitting(self, trainer: L.Trainer) -> contextlib.AbstractContextManager:
        """Wrap ``trainer.fit``: under bf16-mixed in one process, the frozen linear weights (a PEFT backbone's) are
        cast to bf16 once for the whole fit rather than on every step; trainable ones stay fp32."""
        return self._bf16_weights(trainer, frozen_only=True)

    def _bf16_weights(self, trainer: L.Trainer, frozen_only: bool) -> contextlib.AbstractContextManager:
        if trainer.precision == "bf16-mixed" and trainer.world_size == 1:
            return bf16_linear_weights(self.model, frozen_only)
        return contextlib.nullcontext()

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        return self.readout.predict(self.model, batch)

    def on_validation_epoch_start(self) -> None:
        self.readout.new_pass()  # the weights changed since the last pass: no cached prefix is valid
        self._dev_rows = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._dev_rows += self.readout.predict(self.model, batch)

    def on_validation_epoch_end(self) -> None:
        if self.on_dev_rows is not None:
            self.on_dev_rows(self._dev_rows)
        self._dev_rows = []

    def configure_optimizers(self):
        o = self.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        # fused: one kernel over all weights; the AdamW update of all 135M weights took 0.05-0.07 s fused and
        # 0.42 s unfused on this project's 2-core CPU (measured 2026-11-24, idle)
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
        optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, fused=fused)
        schedule = get_linear_schedule_with_warmup(optimizer, int(o.warmup_ratio * o.max_steps), max(o.max_steps, 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def _numpy_state() -> tuple:
    """numpy's global random state with its key array as a tensor: torch.load(weights_only=True) reads it."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return name, torch.from_numpy(keys.copy()), pos, has_gauss, gauss
