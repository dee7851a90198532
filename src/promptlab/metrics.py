"""Evaluation metrics, computed locally with torchmetrics (``evaluate.load`` needs the Hub)."""

from __future__ import annotations

import torch
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score


def classification_metrics(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 (a class never predicted nor present is left out of the macro mean)."""
    return {
        "accuracy": multiclass_accuracy(preds, labels, num_classes, average="micro").item(),
        "macro_f1": multiclass_f1_score(preds, labels, num_classes, average="macro").item(),
    }
