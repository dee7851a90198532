"""Zero- and few-shot prompting: the frozen model reads the task's manual template, after ``num_demos``
demonstrations drawn from the run's training sample. Nothing is trained or stored per task.

Demonstrations are chosen by ``demo_selection``:
- ``random``: one class-balanced draw with the seed, shown before every query;
- ``knn`` (KATE, Liu et al. 2022): per query, the ``num_demos`` training examples whose inputs are nearest to
  the query's by cosine similarity of the backbone's own mean-pooled last hidden states, the nearest last
  (closest to the query). The pool is every example of the training sample; its embedding and each query's
  are a forward pass each, counted as ``demo_selection_seconds``.
"""

from __future__ import annotations

import time
from typing import Literal

import torch

from promptlab.errors import ConfigError
from promptlab.methods import DemoWork, Method, MethodConfig, register
from promptlab.prompts import plain_ids, render


class PromptingConfig(MethodConfig):
    demo_selection: Literal["random", "knn"] = "random"  # one seeded draw, or each query's nearest neighbours


@register("prompting")
class Prompting(Method):
    Config = PromptingConfig

    @property
    def selection(self) -> str:
        return self.cfg.get("demo_selection", "random")

    @property
    def draws_demos(self) -> bool:
        return super().draws_demos and self.selection == "random"

    def draw_demos(self, pool: list[dict], task, seed: int) -> list[dict]:
        """kNN picks per query from the whole training sample; random draws once."""
        if self.draws_demos or not self.num_demos:
            return super().draw_demos(pool, task, seed)
        if self.num_demos > len(pool):
            raise ConfigError(f"method.num_demos={self.num_demos} nearest neighbours but the training sample has "
                              f"{len(pool)} examples", "lower method.num_demos or raise data.k_shot / data.train_size")
        return pool

    def demos(self, model, tokenizer, task, rows, readout, work):
        if self.selection != "knn" or not rows:
            return super().demos(model, tokenizer, task, rows, readout, work)
        return NearestDemos(self, model, tokenizer, task, rows, work)


class NearestDemos:
    """row -> its ``num_demos`` nearest training examples as (question, answer) turns (KATE)."""

    def __init__(self, method: Prompting, model, tokenizer, task, pool: list[dict], work: DemoWork):
        self.method, self.model, self.tokenizer, self.task, self.work = method, model, tokenizer, task, work
        self.turns = [method.demo(task, r) for r in pool]  # in this task's template (prompt search varies it)
        self.keys = torch.stack([self.embed(r) for r in pool])

    @torch.no_grad()
    def embed(self, row) -> torch.Tensor:
        """The unit-length mean of the last hidden states over the row's inputs (no template, no chat); kept in the
        run's ``DemoWork``, so a prompt search's candidates do not embed the same text again."""
        from promptlab.readout.model import final_hidden_states, head_of

        text = render(self.task.inputs_template, row)
        cache = self.work.embeddings
        if text not in cache:
            start = time.perf_counter()
            ids = torch.tensor([plain_ids(self.tokenizer, text) or [self.tokenizer.eos_token_id]],
                               device=head_of(self.model).weight.device)
            hidden = final_hidden_states(self.model, ids, torch.ones_like(ids))[0].float().mean(0)
            cache[text] = hidden / hidden.norm().clamp_min(1e-12)
            self.work.selection_seconds += time.perf_counter() - start
        return cache[text]

    def __call__(self, row) -> list[tuple[str, str]]:
        sims = self.keys @ self.embed(row)
        nearest = torch.topk(sims, self.method.num_demos).indices.tolist()  # most similar first
        return [self.turns[i] for i in reversed(nearest)]
