"""Runs on an instruction-tuning mixture (``tasks.mixture``): training on the interleaved stream of every seen
task as text-to-text, then zero-shot evaluation of each listed task with its own readout, seen and held out.
``promptlab-train mixture=<name>`` uses these in place of the single-task training data and evaluation."""

from __future__ import annotations

import lightning as L

from promptlab.data import eval_items
from promptlab.evaluation.evaluate import Evaluation, evaluate
from promptlab.methods import Method
from promptlab.module import PromptModule
from promptlab.prompts import Encoder
from promptlab.readout.model import takes_task_ids
from promptlab.tasks.mixture import HELDOUT_MEAN, SEEN_MEAN, Mixture


def train_items(mixture: Mixture, budgets: dict[str, list[dict]], method: Method, tokenizer, seed: int) -> list[dict]:
    """Exactly the examples ``max_steps`` batches take, drawn by weight (see ``Mixture.stream``)."""
    c = method.cfg
    return mixture.train_items(tokenizer, budgets, int(c.max_steps) * int(c.batch_size), seed)


def evaluate_mixture(mixture: Mixture, method: Method, module: PromptModule, tokenizer, trainer: L.Trainer,
                     batch_size: int) -> Evaluation:
    """Every task of the mixture, zero-shot with its default template and its own readout: metrics as
    ``<task>/<metric>`` plus the mean primary metric over seen and held-out tasks; rows name their task. The
    seen tasks are scored on their dev rows too (``dev_metrics``, with ``seen_mean``: what a sweep optimises).
    A model that needs each row's task id (multitask prompt tuning) has no prompt for a held-out task: those
    are skipped (``not_evaluated``)."""
    metrics, dev_metrics, rows, dev_rows = {}, {}, [], []
    seconds, dev_seconds, tokens, gen_seconds, prompt_tokens = 0.0, 0.0, 0, 0.0, 0
    groups: dict[str, list[float]] = {SEEN_MEAN: [], HELDOUT_MEAN: []}
    needs_ids = takes_task_ids(module.model)
    for name, spec in mixture.specs.items():
        seen = name in mixture.weights
        if needs_ids and not seen:
            continue
        module.readout = method.readout(tokenizer, spec)
        task_id = mixture.train_tasks.index(name) if seen else 0
        encoder = Encoder(tokenizer, spec, (), method.assistant_prefix, task_id=task_id)
        if seen:
            dev = evaluate(module, spec, eval_items(encoder, mixture.tasks[name].dev), trainer, batch_size)
            dev_metrics.update({f"{name}/{k}": v for k, v in dev.metrics.items()})
            dev_rows += [{"task": name, **r} for r in dev.rows]
            dev_seconds += dev.seconds
        ev = evaluate(module, spec, eval_items(encoder, mixture.tasks[name].eval), trainer, batch_size)
        metrics.update({f"{name}/{k}": v for k, v in ev.metrics.items()})
        groups[SEEN_MEAN if seen else HELDOUT_MEAN].append(ev.metrics[spec.primary_metric])
        rows += [{"task": name, **r} for r in ev.rows]
        seconds, tokens, gen_seconds = seconds + ev.seconds, tokens + ev.generated_tokens, gen_seconds + ev.generation_seconds
        prompt_tokens += ev.prompt_tokens or 0
    for key, values in groups.items():
        if values:
            metrics[key] = sum(values) / len(values)
    seen_dev = [dev_metrics[f"{t}/{mixture.specs[t].primary_metric}"] for t in mixture.train_tasks]
    dev_metrics[SEEN_MEAN] = sum(seen_dev) / len(seen_dev)
    return Evaluation(metrics, rows, seconds, tokens, gen_seconds, dev_metrics=dev_metrics, dev_rows=dev_rows,
                      extra_costs={"dev_eval_seconds": round(dev_seconds, 3)}, prompt_tokens=prompt_tokens)


def not_evaluated(mixture: Mixture, metrics: dict[str, float]) -> list[str]:
    """The tasks a run's metrics have no primary metric for (held-out tasks of a task-id model)."""
    return [t for t, spec in mixture.specs.items() if f"{t}/{spec.primary_metric}" not in metrics]


def sources(mixture: Mixture) -> dict[str, str]:
    """Every task's data files, for the run record's provenance."""
    return {f"{t}/{split}": src for t, task in mixture.tasks.items() for split, src in task.sources.items()}

