"""Combining several prompts' (or models') answer scores for the same examples: prompt ensembling.

Hand-written: a mean and a vote over a few arrays, which no maintained library packages for this layout.
"""

from __future__ import annotations

import numpy as np

COMBINE = ("mean", "vote")


def combine(scores: list[np.ndarray], how: str) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, mean scores) of an ensemble of (examples, answers) score arrays: argmax of the mean score,
    or the majority vote of the members' argmaxes (a tie goes to the tied answer with the higher mean score).
    One member: its own argmax."""
    mean = np.mean(scores, axis=0)
    if how == "mean":
        return mean.argmax(axis=1), mean
    votes = np.zeros_like(mean)
    for s in scores:
        votes[np.arange(len(s)), s.argmax(axis=1)] += 1
    return np.where(votes == votes.max(axis=1, keepdims=True), mean, -np.inf).argmax(axis=1), mean
