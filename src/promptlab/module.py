"""The LightningModule: the readout's loss for training, its predictions for evaluation; AdamW with linear
warmup and decay over whatever the method left trainable."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import lightning as L
import torch
from transformers import get_linear_schedule_with_warmup


@dataclass
class Optim:
    """A trained method's optimisation knobs (its YAML holds them)."""

    lr: float = 0.0
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_steps: int = 0


class PromptModule(L.LightningModule):
    """Wraps a (possibly PEFT) causal LM and a readout (``promptlab.readout``)."""

    def __init__(self, model: torch.nn.Module, readout, optim: Optim | None = None):
        super().__init__()
        self.model, self.readout, self.optim = model, readout, optim or Optim()
        self.examples_seen = 0
        self.tokens_seen = 0
        self.loss_window = 20
        self._recent: deque[float] = deque(maxlen=self.loss_window)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.readout.loss(self.model, batch)
        n = len(batch["prompt_ids"])
        self.examples_seen += n
        self.tokens_seen += sum(len(p) for p in batch["prompt_ids"]) + sum(len(t) for t in batch.get("target_ids", []))
        self._recent.append(float(loss.detach()))
        self.log("train/loss", loss, batch_size=n)
        # The bar shows the mean over recent steps: one batch's loss is too noisy to read the run by.
        self.log("loss_avg", sum(self._recent) / len(self._recent), prog_bar=True, batch_size=n, logger=False)
        return loss

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        return self.readout.predict(self.model, batch)

    def configure_optimizers(self):
        o = self.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
        schedule = get_linear_schedule_with_warmup(optimizer, int(o.warmup_ratio * o.max_steps), max(o.max_steps, 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
