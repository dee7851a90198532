"""The LightningModule: cross-entropy over label scores, one optimiser per method, eval predictions."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from transformers import get_linear_schedule_with_warmup

from promptlab.scoring import LabelScorer


class PromptClassifier(L.LightningModule):
    """Wraps a (possibly PEFT) causal LM; trains whatever the method left trainable."""

    def __init__(self, model: torch.nn.Module, scorer: LabelScorer, lr: float = 0.0, weight_decay: float = 0.0,
                 warmup_ratio: float = 0.0, max_steps: int = 0):
        super().__init__()
        self.model, self.scorer = model, scorer
        self.lr, self.weight_decay, self.warmup_ratio, self.max_steps = lr, weight_decay, warmup_ratio, max_steps
        self.examples_seen = 0
        self.tokens_seen = 0

    def forward(self, prompt_ids: list[list[int]]) -> torch.Tensor:
        return self.scorer(self.model, prompt_ids)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logp = self(batch["prompt_ids"])
        loss = F.nll_loss(logp, batch["labels"])
        acc = (logp.argmax(-1) == batch["labels"]).float().mean()
        self.examples_seen += len(batch["labels"])
        self.tokens_seen += sum(len(p) for p in batch["prompt_ids"])
        self.log_dict({"train/loss": loss, "train/acc": acc}, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        logp = self(batch["prompt_ids"])
        return {"idx": batch["idx"], "labels": batch["labels"], "scores": logp.float().cpu()}

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        warmup = int(self.warmup_ratio * self.max_steps)
        schedule = get_linear_schedule_with_warmup(optimizer, warmup, max(self.max_steps, 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
