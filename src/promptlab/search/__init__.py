"""Prompt search and meta-prompting: the prompt is chosen on the dev split and reported on eval, as DSPy's
``compile(program, train, dev)`` does for a program's instructions.

- ``spec.py``: ``SearchSpec``, the typed ``search/<name>.yaml`` and its rules, checked before the model loads;
- ``sources.py``: where candidates come from — the task's templates, the user's instructions, and meta-prompting
  (APE, Zhou et al. 2022: ``search.propose`` instructions a proposer model writes after reading a few labelled
  training examples); an instruction is put before the task's ``input_template``;
- ``compiler.py``: ``compile`` scores every candidate on dev through the run's own method (its demonstrations,
  readout, calibration) in one batched pass, and a selector (``TopK``: ``search.ensemble`` best) picks per
  readout; ``run_search`` scores the pick on eval in one more pass, several combined by the mean of their answer
  scores or a vote (prompt ensembling). The record keeps every candidate's text and dev score, what each readout
  chose and what the search cost (examples and tokens scored, tokens written, seconds), a cost beside the
  training cost of tuned methods.

Hand-written: PEFT, Lightning and lm-evaluation-harness choose no prompts; DSPy does, but through its own LM
clients and modules, not a Lightning-predicted torch model with rank-scored answers.
"""

from promptlab.search.compiler import (
           COST_KEYS,
           Choice,
           Program,
           Search,
           TopK,
           compile,
           encoder_factory,
           run_search,
)
from promptlab.search.sources import Candidate, clean_instruction, sources_of
from promptlab.search.spec import SearchSpec

__all__ = ["COST_KEYS", "Candidate", "Choice", "Program", "Search", "SearchSpec", "TopK", "clean_instruction",
           "compile", "encoder_factory", "run_search", "sources_of"]
