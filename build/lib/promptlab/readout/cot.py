"""Chain-of-thought on a choice task (Kojima et al. 2022's two stages): generate the reasoning after the
trigger, then append an answer cue ("Therefore, the answer is") and rank-score the answers there, so the
final answer is read by the same rule as every other choice method, never parsed from free text.

With several sampled reasoning paths per example (self-consistency) each path is scored after the cue, the
method's list filters combine the paths' answers (a majority vote under the raw readout), and the row keeps the
scores of the first path giving that answer (so the other readouts re-read that path), every path's text
(``generations``) and answer (``votes``)."""

from __future__ import annotations

import torch

from promptlab.prompts import encode_answer
from promptlab.readout.choice import ChoiceReadout
from promptlab.readout.generate import GenerateReadout, repeat


class CoTChoiceReadout:
    def __init__(self, generate: GenerateReadout, choice: ChoiceReadout, answer_cue: str):
        self.gen, self.choice, self.answer_cue = generate, choice, answer_cue

    def new_pass(self) -> None:
        self.choice.new_pass()
        self.gen.new_pass()

    @torch.no_grad()
    def predict(self, model: torch.nn.Module, batch: dict) -> list[dict]:
        tok, samples = self.gen.tokenizer, self.gen.samples(model, batch)
        n = len(samples[0])
        gens = [g for row in samples for g in row]
        expanded = {k: repeat(v.tolist() if isinstance(v, torch.Tensor) else v, n) for k, v in batch.items()}
        prompts = [list(p) + encode_answer(tok, f"{g.text} {self.answer_cue}".strip(), after_space=True)
                   for p, g in zip(expanded["prompt_ids"], gens, strict=True)]
        choices = [[encode_answer(tok, c, after_space=True) for c in cs] for cs in expanded["choices"]]
        paths = self.choice.predict(model, {**expanded, "labels": torch.tensor(expanded["labels"]),
                                            "prompt_ids": prompts, "choice_ids": choices})
        rows = []
        for i, texts in enumerate(batch["choices"]):
            scored, written = paths[i * n:(i + 1) * n], samples[i]
            votes = [texts[r["pred"]] for r in scored]
            pick = self.gen.chosen(votes)
            row = {**scored[pick], "generation": written[pick].text,
                   "generated_tokens": sum(g.num_tokens for g in written)}
            rows.append(row if n == 1 else {**row, "generations": [g.text for g in written], "votes": votes})
        return rows
