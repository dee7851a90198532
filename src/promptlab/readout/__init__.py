"""Readouts: how a model's output becomes a prediction (and a training loss). The task's ``output_type``
picks one: ``choice`` (rank scoring over answers) or ``generate`` (decoding); chain-of-thought on a choice task
generates first, then rank-scores the choices after its reasoning. Each is a ``Readout``."""

from typing import Protocol

import torch

from promptlab.readout.choice import ChoiceReadout, brute_force_scores
from promptlab.readout.cot import CoTChoiceReadout
from promptlab.readout.generate import GenerateReadout, generate_readout_of
from promptlab.readout.model import final_hidden_states


class Readout(Protocol):
    """What ``PromptModule`` needs of a readout: one prediction row per example of a batch, and a fresh start for
    each evaluation pass (nothing cached from weights that changed)."""

    def new_pass(self) -> None: ...

    def predict(self, model: torch.nn.Module, batch: dict) -> list[dict]: ...


class TrainingReadout(Readout, Protocol):
    """A readout a method trains through (choice and generate; chain-of-thought only evaluates): its loss."""

    def loss(self, model: torch.nn.Module, batch: dict) -> torch.Tensor: ...


__all__ = ["ChoiceReadout", "CoTChoiceReadout", "GenerateReadout", "Readout", "TrainingReadout",
           "brute_force_scores", "final_hidden_states", "generate_readout_of"]
