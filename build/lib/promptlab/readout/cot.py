"""Chain-of-thought on a choice task (Kojima et al. 2022's two stages): generate the reasoning after the
trigger, then append an answer cue ("Therefore, the answer is") and rank-score the answers there, so the
final answer is read by the same rule as every other choice method, never parsed from free text."""

from __future__ import annotations

import torch

from promptlab.prompts import encode_answer
from promptlab.readout.choice import ChoiceReadout
from promptlab.readout.generate import GenerateReadout


class CoTChoiceReadout:
    def __init__(self, generate: GenerateReadout, choice: ChoiceReadout, answer_cue: str):
        self.gen, self.choice, self.answer_cue = generate, choice, answer_cue

    def new_pass(self) -> None:
        self.choice.new_pass()

    @torch.no_grad()
    def predict(self, model: torch.nn.Module, batch: dict) -> list[dict]:
        tok = self.gen.tokenizer
        gens = self.gen.generate(model, batch["prompt_ids"], batch.get("task_id"))
        prompts = [list(p) + encode_answer(tok, f"{g.text} {self.answer_cue}".strip(), after_space=True)
                   for p, g in zip(batch["prompt_ids"], gens, strict=True)]
        choices = [[encode_answer(tok, c, after_space=True) for c in cs] for cs in batch["choices"]]
        rows = self.choice.predict(model, {**batch, "prompt_ids": prompts, "choice_ids": choices})
        for row, g in zip(rows, gens, strict=True):
            row.update(generation=g.text, generated_tokens=g.num_tokens)
        return rows
