"""Readouts: how a model's output becomes a prediction (and a training loss). The task's ``output_type``
picks one: ``choice`` (rank scoring over answers) or ``generate`` (greedy decoding); chain-of-thought on a
choice task generates first, then rank-scores the choices after its reasoning."""

from promptlab.readout.choice import ChoiceReadout, brute_force_scores
from promptlab.readout.cot import CoTChoiceReadout
from promptlab.readout.generate import GenerateReadout
from promptlab.readout.model import final_hidden_states

__all__ = ["ChoiceReadout", "CoTChoiceReadout", "GenerateReadout", "brute_force_scores", "final_hidden_states"]
