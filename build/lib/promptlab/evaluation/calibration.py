"""Calibration of choice scores, reported beside the raw scores (never instead of them).

A small LM prompted for a label often prefers one answer whatever the input. Both methods divide each
example's answer probabilities (normalised over the task's answers) by an estimate of that prior and take
the argmax:

- ``contextual`` (Zhao et al. 2021): the prior is the mean answer distribution for content-free inputs
  ("N/A", "", "[MASK]") put through the same prompt (template, demonstrations, soft prompt);
- ``batch`` (Zhou et al. 2024): the prior is the mean answer distribution over the evaluation examples.

Hand-written: these are a few lines of array arithmetic that no maintained library packages.
"""

from __future__ import annotations

import numpy as np

METHODS = ("contextual", "batch")
RAW = "raw"  # the readout without calibration
CONTENT_FREE = ("N/A", "", "[MASK]")


def metric_key(metric: str, readout: str) -> str:
    """A metric's name in records under a readout: ``accuracy`` (raw), ``accuracy@batch``."""
    return metric if readout == RAW else f"{metric}@{readout}"


def answer_probs(log_probs: np.ndarray) -> np.ndarray:
    """Each row's answer distribution: softmax of its answer log-probabilities over the answers."""
    z = log_probs - log_probs.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def prior(log_probs: np.ndarray) -> np.ndarray:
    """The mean answer distribution over rows."""
    return answer_probs(np.asarray(log_probs, dtype=np.float64)).mean(axis=0)


def calibrated_scores(log_probs: np.ndarray, prior_probs: np.ndarray) -> np.ndarray:
    """log p(answer | x) (normalised over the answers) minus log prior(answer)."""
    lp = np.asarray(log_probs, dtype=np.float64)
    return np.log(answer_probs(lp)) - np.log(prior_probs)


def content_free_rows(row: dict, text_columns: set[str]) -> list[dict]:
    """Copies of ``row`` with every text the template shows replaced by each content-free input."""
    return [{**row, **dict.fromkeys(text_columns, text), "idx": -(i + 1)} for i, text in enumerate(CONTENT_FREE)]
