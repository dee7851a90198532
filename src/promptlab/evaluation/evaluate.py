"""``evaluate()``: a model + readout on encoded examples -> metrics, per-example rows and costs. The one
evaluation path of ``promptlab-train``, ``promptlab-eval`` and the tests."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import lightning as L

from promptlab.data import eval_loader
from promptlab.errors import Diverged
from promptlab.evaluation import readouts
from promptlab.evaluation.filters import build_filters
from promptlab.evaluation.metrics import compute_metrics
from promptlab.module import PromptModule
from promptlab.readout import generate_readout_of
from promptlab.tasks import TaskSpec


@dataclass
class Evaluation:
    metrics: dict[str, float]
    rows: list[dict]  # predictions.jsonl (see promptlab.schema), sorted by idx
    seconds: float
    generated_tokens: int
    generation_seconds: float
    selection: dict | None = None  # a prompt search's candidates and choices (promptlab.search)
    extra_costs: dict = field(default_factory=dict)  # e.g. what the prompt search cost
    dev_metrics: dict[str, float] = field(default_factory=dict)  # the same metrics on dev (what choices use)
    dev_rows: list[dict] = field(default_factory=list)  # dev_predictions.jsonl
    readouts: tuple[str, ...] = ()  # the readouts computed (choice tasks): raw, length-normalised, calibrated
    prompt_tokens: int | None = None  # the eval prompts' tokens (every prompt of an ensemble): per-query cost

    def costs(self) -> dict[str, float | int | None]:
        n, gen = len(self.rows), round(self.generation_seconds, 6)  # the rate is derived from what is recorded
        return {**self.extra_costs,
            "eval_seconds": round(self.seconds, 3), "eval_examples": n, "dev_examples": len(self.dev_rows),
            "eval_prompt_tokens": self.prompt_tokens,
            "eval_examples_per_second": n / self.seconds if self.seconds else None,
            "generated_tokens": self.generated_tokens, "generation_seconds": gen,
            "generated_tokens_per_second": self.generated_tokens / gen if gen else None,
        }


def evaluate(module: PromptModule, spec: TaskSpec, items: list[dict], trainer: L.Trainer,
             batch_size: int, calibrations: tuple[str, ...] = (), content_free: list[dict] | None = None) -> Evaluation:
    """Predict every item (``data.eval_items``) with ``trainer.predict`` and score the predictions; on a choice
    task every other readout (``evaluation.readouts``: length-normalised, and each of ``calibrations``) adds
    ``<metric>@<readout>`` metrics and a ``pred@<readout>`` per row (contextual calibration scores the
    ``content_free`` items too, inside the timed span)."""
    generation = generation_clock(module)
    gen_start, start = generation(), time.perf_counter()
    rows = predict_rows(module, items, trainer, batch_size)
    free = predict_rows(module, content_free, trainer, batch_size) if "contextual" in calibrations else []
    seconds = time.perf_counter() - start
    metrics, names = all_metrics(spec, rows, calibrations, free)
    tokens = sum(r.pop("generated_tokens", 0) for r in rows)
    return Evaluation(metrics, rows, seconds, tokens, generation() - gen_start, readouts=names,
                      prompt_tokens=sum(len(x.get("prompt_ids", ())) for x in items))


def all_metrics(spec: TaskSpec, rows: list[dict], calibrations: tuple[str, ...],
                content_free: list[dict]) -> tuple[dict[str, float], tuple[str, ...]]:
    """The metrics of predicted rows under every readout (choice tasks), filling each row's answers and scores in
    place; and the readouts computed (none for a generate task)."""
    metrics, names = score_rows(spec, rows), ()
    if spec.output_type == "choice":
        names = readouts.available(rows, calibrations)
        for name in names[1:]:
            metrics.update(readout_rows(spec, rows, name, content_free))
    return metrics, names


def generation_clock(module: PromptModule) -> Callable[[], float]:
    """A function giving the seconds the module's readout has spent generating so far (0 if it never does)."""
    gen = generate_readout_of(module.readout)
    return (lambda: gen.generation_seconds) if gen else (lambda: 0.0)


def predict_rows(module: PromptModule, items: list[dict], trainer: L.Trainer, batch_size: int) -> list[dict]:
    """Every item's prediction, sorted by idx, with the ``prompt_ids`` the model read (``run.execute`` writes them
    as ``prompt_hash`` and prompts.jsonl); ``Diverged`` when a model's answer scores are not finite."""
    with module.predicting(trainer):
        batches = trainer.predict(module, dataloaders=eval_loader(items, batch_size))
    rows = sorted(gather_rows([r for b in batches for r in b], trainer), key=lambda r: r["idx"])
    check_finite(rows, trainer.global_step)
    prompts = {x["idx"]: x["prompt_ids"] for x in items if "prompt_ids" in x}  # a CLIP item has pixels only
    for r in rows:
        if r["idx"] in prompts:
            r["prompt_ids"] = prompts[r["idx"]]
    return rows


def check_finite(rows: list[dict], step: int) -> None:
    """``Diverged`` when a model's answer scores are not finite (NaN weights give NaN scores)."""
    bad = sum(not all(math.isfinite(v) for v in (*r.get("log_probs", ()), *r.get("answer_logprobs", ())))
              for r in rows)
    if bad:
        raise Diverged(step, f"the model's answer scores are not finite for {bad} of {len(rows)} examples")


def readout_rows(spec: TaskSpec, rows: list[dict], name: str, content_free: list[dict]) -> dict[str, float]:
    """``<metric>@<name>`` for the predictions under readout ``name`` (``evaluation.readouts``); rows get
    ``pred@<name>``."""
    preds = readouts.predictions(rows, content_free, name)
    for r, p in zip(rows, preds, strict=True):
        r[f"pred@{name}"] = p
    metrics, _ = compute_metrics(spec.metrics, preds, [r["label"] for r in rows], num_classes=spec.num_choices)
    return {readouts.metric_key(k, name): v for k, v in metrics.items()}


def gather_rows(rows: list[dict], trainer: L.Trainer) -> list[dict]:
    """Every rank's predictions on every rank (data-parallel evaluation scores a shard per rank).

    The distributed sampler may repeat examples to give every rank the same number: keep one row per idx.
    """
    if trainer.world_size == 1:
        return rows
    import torch.distributed as dist

    shards: list[list[dict] | None] = [None] * trainer.world_size
    dist.all_gather_object(shards, rows)
    return list({r["idx"]: r for shard in shards for r in shard}.values())


def score_rows(spec: TaskSpec, rows: list[dict]) -> dict[str, float]:
    """Fill each row's answer and per-example scores in place; return the aggregate metrics."""
    if spec.output_type == "choice":
        names = spec.class_names
        for r in rows:
            r["pred_name"] = names[r["pred"]]
        preds, refs, context = [r["pred"] for r in rows], [r["label"] for r in rows], {"num_classes": spec.num_choices}
    else:
        extract = build_filters(spec.filters)
        for r in rows:
            r["answer"] = extract(r["generation"], None)
        preds, refs, context = [r["answer"] for r in rows], [r["references"] for r in rows], {}
    metrics, per_example = compute_metrics(spec.metrics, preds, refs, **context)
    for r, scores in zip(rows, per_example, strict=True):
        r["scores"] = scores
        r["score"] = scores[spec.primary_metric]
    return metrics
