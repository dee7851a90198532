"""Choosing a prompt on dev, DSPy style: ``compile(program, sources, select, combine, train, dev)`` scores every
candidate the sources give through the run's own method (its demonstrations, readout, calibration) in one
batched dev pass and returns the ``Choice`` (per readout, the selector's pick); it never sees the eval split.
``run_search`` then scores the chosen prompt(s) on eval in one more pass, and the record keeps every candidate,
the choices and what the search cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from promptlab.evaluation import calibration, readouts
from promptlab.evaluation.ensemble import combine as combine_scores
from promptlab.evaluation.evaluate import Evaluation, generation_clock, predict_rows, readout_rows, score_rows
from promptlab.evaluation.metrics import compute_metrics, get_metric
from promptlab.evaluation.readouts import RAW, metric_key
from promptlab.progress import current_label, labelled
from promptlab.prompts import Encoder, template_fields
from promptlab.search.sources import Candidate, Source, sources_of
from promptlab.search.spec import SearchSpec
from promptlab.tasks import Task, TaskSpec

if TYPE_CHECKING:
    import lightning as L

    from promptlab.methods import DemoWork
    from promptlab.module import PromptModule

# What a search costs (``schema.COST_KEYS``); zero for a run that searched nothing.
COST_KEYS = ("search_candidates", "search_examples_scored", "search_tokens_scored", "search_generated_tokens",
             "search_seconds", "search_proposal_seconds", "search_proposer_load_seconds", "sensitivity_eval_seconds")


# ---- scoring -------------------------------------------------------------------------------------------


@dataclass
class Scored:
    rows: list[dict]  # the candidate's predictions on the split, sorted by idx
    free: list[dict]  # its content-free predictions (contextual calibration)


def score_all(module: PromptModule, trainer: L.Trainer, batch_size: int, encoders: dict[str, Encoder],
              rows: list[dict], content_free: bool) -> tuple[dict[str, Scored], dict[str, int]]:
    """Every candidate's predictions on ``rows`` (and on the content-free inputs) from one ``trainer.predict``
    pass over all of them; plus what that cost (examples, prompt tokens, tokens written). Progress lines show
    the caller's label (``progress.labelled``) and the candidate a batch scores ("search on dev: prompt 3/10")."""
    items, back = [], []
    for cid, enc in encoders.items():
        free = calibration.content_free_rows(rows[0], template_fields(enc.task.prompt_template)) if content_free else []
        for kind, group in (("rows", rows), ("free", free)):
            for r in group:
                back.append((cid, kind, r["idx"]))
                items.append(enc.item({**r, "idx": len(items)}, train=False))
    tokens = sum(len(x.get("prompt_ids", ())) for x in items)
    # one candidate after another (its batches share the demonstrations' prefix), longest prompt first in each
    order = {cid: i for i, cid in enumerate(encoders)}
    items.sort(key=lambda x: (order[back[x["idx"]][0]], -len(x["prompt_ids"])))
    out = {cid: Scored([], []) for cid in encoders}
    label = current_label("search")

    def progress(batch: dict) -> str:
        return f"{label}: prompt {order[back[batch['idx'][0]][0]] + 1}/{len(order)}" if len(order) > 1 else label

    with labelled(progress):
        predicted = predict_rows(module, items, trainer, batch_size)
    for row in predicted:
        cid, kind, idx = back[row["idx"]]
        getattr(out[cid], kind).append({**row, "idx": idx})
    generated = 0
    for s in out.values():
        s.rows.sort(key=lambda r: r["idx"])
        generated += sum(r.pop("generated_tokens", 0) for r in s.rows + s.free)  # CoT readouts write first
    return out, {"examples": len(items), "prompt_tokens": tokens, "generated_tokens": generated}


def metrics_of(spec: TaskSpec, scored: Scored, names: tuple[str, ...]) -> dict[str, float]:
    """A candidate's metrics under every readout ``names`` (raw first), filling its rows' answers and scores in
    place."""
    metrics = score_rows(spec, scored.rows)
    for name in names[1:]:
        metrics.update(readout_rows(spec, scored.rows, name, scored.free))
    return metrics


def ranked(candidates: list[Candidate], key: str, higher_is_better: bool) -> list[Candidate]:
    """Best dev score first; ties (and NaN, last) keep the candidates' order: task templates come first."""
    def order(i: int) -> tuple:
        v = candidates[i].dev.get(key, float("nan"))
        return (np.isnan(v), -v if higher_is_better else v, i)

    return [candidates[i] for i in sorted(range(len(candidates)), key=order)]


@dataclass(frozen=True)
class TopK:
    """The selector: the ``k`` best candidates on dev under a readout's metric (k > 1: a prompt ensemble)."""

    k: int

    def __call__(self, candidates: list[Candidate], key: str, higher_is_better: bool) -> list[Candidate]:
        return ranked(candidates, key, higher_is_better)[: self.k]


# ---- compile: choose on dev ----------------------------------------------------------------------------


@dataclass
class Program:
    """What is compiled: the run's method read through its module, one candidate prompt at a time."""

    spec: TaskSpec
    calibrations: tuple[str, ...]
    batch_size: int
    demo_sets: list[list[dict]]  # the demonstration draws (one, the run's own, unless search.demo_draws > 1)
    encoder_for: Callable[[str, list[dict]], Encoder]  # (template, demonstrations) -> a candidate's encoder
    module: PromptModule
    trainer: L.Trainer

    def score(self, encoders: dict[str, Encoder], rows: list[dict]) -> tuple[dict[str, Scored], dict[str, int]]:
        return score_all(self.module, self.trainer, self.batch_size, encoders, rows, "contextual" in self.calibrations)


@dataclass
class Choice:
    """What compiling chose: every candidate with its dev metrics, each readout's pick, and the dev pass."""

    candidates: list[Candidate]
    encoders: dict[str, Encoder]
    readouts: tuple[str, ...]
    chosen: dict[str, list[Candidate]]  # readout -> the selected candidate(s)
    combine: str  # how several chosen candidates' answer scores combine (evaluation/ensemble.py)
    dev_metrics: dict[str, float]
    dev_rows: list[dict]
    costs: dict  # sources' (proposals) and the dev pass's: examples, prompt tokens, tokens written
    seconds: float


def compile(program: Program, sources: list[Source], select: TopK, combine: str, train: list[dict],
            dev: list[dict]) -> Choice:
    """Every source's candidates (a repeated prompt once), each with every demonstration draw, scored on ``dev`` in
    one pass; per readout (raw, each calibration) the selector's pick. ``train`` is what sources may read (APE's
    labelled examples); the eval split is not an argument."""
    spec = program.spec
    start = time.perf_counter()
    cands: list[Candidate] = []
    costs: dict = {}
    seen: set[str] = set()
    for source in sources:
        got = source(spec, train)
        costs |= got.costs
        for c in got.candidates:  # a repeated prompt (two identical proposals too) is scored once
            if c.template not in seen:
                cands.append(c)
                seen.add(c.template)
    if len(program.demo_sets) > 1:
        cands = [replace(c, id=f"{c.id} · demos {d}", demos=d) for c in cands for d in range(len(program.demo_sets))]
    encoders = {c.id: program.encoder_for(c.template, program.demo_sets[c.demos]) for c in cands}
    with labelled("search on dev"):
        scored, dev_cost = program.score(encoders, dev)
    names = readouts.available(scored[cands[0].id].rows, program.calibrations) if spec.output_type == "choice" \
        else (RAW,)
    for c in cands:
        c.dev = metrics_of(spec, scored[c.id], names)
    higher = get_metric(spec.primary_metric).higher_is_better
    chosen = {r: select(cands, metric_key(spec.primary_metric, r), higher) for r in names}
    dev_metrics, dev_rows = final_metrics(spec, chosen, scored, combine)
    costs |= {"dev_" + k: v for k, v in dev_cost.items()}
    return Choice(cands, encoders, names, chosen, combine, dev_metrics, dev_rows, costs, time.perf_counter() - start)


# ---- the search: compile on dev, report on eval ----------------------------------------------------------


@dataclass
class Search:
    """What ``run_search`` needs from the run: the plan's pieces and a way to build a candidate's encoder."""

    spec: TaskSpec
    task: Task
    s: SearchSpec
    calibrations: tuple[str, ...]
    seed: int
    batch_size: int
    pool: list[dict]  # the training sample (meta-prompting shows examples from it)
    demo_sets: list[list[dict]]  # the demonstration draws (one, the run's own, unless search.demo_draws > 1)
    encoder_for: Callable[[str, list[dict]], Encoder]  # (template, demonstrations) -> a candidate's encoder
    demo_costs: dict[str, float] = field(default_factory=dict)  # filled by encoder_for


def run_search(search: Search, module: PromptModule, trainer: L.Trainer, proposer) -> Evaluation:
    """Choose on dev (``compile``), report on eval: the Evaluation's metrics are each readout's chosen prompt(s) on
    eval; its ``selection`` holds every candidate and the choices, its ``extra_costs`` what the search cost."""
    spec, s = search.spec, search.s
    program = Program(spec, search.calibrations, search.batch_size, search.demo_sets, search.encoder_for, module,
                      trainer)
    choice = compile(program, sources_of(s, search.task, proposer, search.seed), TopK(s.ensemble), s.combine,
                     train=search.pool, dev=search.task.dev)
    cands, c = choice.candidates, choice.costs

    gen = generation_clock(module)
    start, gen_start = time.perf_counter(), gen()
    members = list({m.id: m for group in choice.chosen.values() for m in group}.values())
    ev, ev_cost, per_prompt = {}, {"prompt_tokens": 0, "generated_tokens": 0}, {}
    for k, m in enumerate(members, 1):  # a pass per chosen prompt, timed: what serving it costs (report.verdict)
        t0 = time.perf_counter()
        with labelled(f"eval of the chosen prompts: prompt {k}/{len(members)}" if len(members) > 1
                      else "eval of the chosen prompt"):
            scored, cost = program.score({m.id: choice.encoders[m.id]}, search.task.eval)
        ev.update(scored)
        per_prompt[m.id] = {"seconds": round(time.perf_counter() - t0, 3), "prompt_tokens": cost["prompt_tokens"]}
        ev_cost = {key: ev_cost[key] + cost[key] for key in ev_cost}
    metrics, rows = final_metrics(spec, choice.chosen, ev, s.combine)
    eval_seconds, gen_seconds = time.perf_counter() - start, gen() - gen_start

    start = time.perf_counter()
    if s.eval_all:  # every candidate on eval, for the sensitivity table only: the choice is already made
        rest = [m for m in cands if m.id not in ev]
        if rest:
            with labelled("eval of the other prompts"):
                others, _ = program.score({m.id: choice.encoders[m.id] for m in rest}, search.task.eval)
            ev.update(others)
        for m in cands:
            m.eval = metrics_of(spec, ev[m.id], choice.readouts)
    costs = {
        "search_candidates": len(cands), "search_examples_scored": c["dev_examples"],
        "search_tokens_scored": c["dev_prompt_tokens"] + c.get("proposal_prompt_tokens", 0),
        "search_generated_tokens": c["dev_generated_tokens"] + c.get("proposal_generated_tokens", 0)
        + search.demo_costs.get("demo_generated_tokens", 0),
        "search_seconds": round(choice.seconds, 3),
        "search_proposal_seconds": c.get("proposal_seconds", 0.0), "search_proposer_load_seconds": 0.0,
        "sensitivity_eval_seconds": round(time.perf_counter() - start, 3) if s.eval_all else 0.0,
    }
    selection = {
        "split": "dev", "dev_examples": len(search.task.dev), "metric": spec.primary_metric, "ensemble": s.ensemble,
        "combine": s.combine, "proposals": c.get("proposals_raw", []),
        "candidates": [{"id": m.id, "text": m.text, "template": m.template, "demos": m.demos, "dev": m.dev,
                        "eval": m.eval} for m in cands],
        "demo_sets": [[r["idx"] for r in rows] for rows in search.demo_sets] if len(search.demo_sets) > 1 else None,
        "chosen": {r: [m.id for m in group] for r, group in choice.chosen.items()},
        "eval_cost": per_prompt,  # per chosen prompt: its eval pass's seconds and prompt tokens
    }
    return Evaluation(metrics, rows, eval_seconds, ev_cost["generated_tokens"], gen_seconds, selection=selection,
                      extra_costs=costs, dev_metrics=choice.dev_metrics, dev_rows=choice.dev_rows,
                      readouts=choice.readouts, prompt_tokens=ev_cost["prompt_tokens"])


def final_metrics(spec: TaskSpec, chosen: dict[str, list[Candidate]], ev: dict[str, Scored],
                  how: str) -> tuple[dict[str, float], list[dict]]:
    """Each readout's metrics on a split (dev or eval) from its chosen prompt(s); the rows are the raw choice's,
    with each other readout's prediction as ``pred@<name>`` and the prompt(s) read as ``prompt``."""
    top = chosen[RAW]
    rows = [dict(r) for r in ev[top[0].id].rows]
    if spec.output_type != "choice":  # one prompt (ensembles are refused): its own rows and metrics
        metrics = score_rows(spec, rows)
        for r in rows:
            r["prompt"] = top[0].id
        return metrics, rows
    labels = [r["label"] for r in rows]
    metrics: dict[str, float] = {}
    for readout, group in chosen.items():
        preds, mean = combine_scores([readouts.scores(ev[c.id].rows, ev[c.id].free, readout) for c in group], how)
        if readout == RAW:
            for r, p, m in zip(rows, preds.tolist(), mean, strict=True):
                r.update(pred=p, log_probs=[round(float(v), 5) for v in m], prompt=" + ".join(c.id for c in group))
            if len(group) > 1:  # an ensemble's row was read through every member's prompt (prompts.jsonl)
                for r, *each in zip(rows, *(ev[c.id].rows for c in group), strict=True):
                    r["prompt_ids"] = [m.get("prompt_ids") for m in each]
            metrics.update(score_rows(spec, rows))
        else:
            values, _ = compute_metrics(spec.metrics, preds.tolist(), labels, num_classes=spec.num_choices)
            metrics.update({metric_key(k, readout): v for k, v in values.items()})
            for r, p in zip(rows, preds.tolist(), strict=True):
                r[f"pred@{readout}"] = p
                r[f"prompt@{readout}"] = " + ".join(c.id for c in group)
    return metrics, rows


def encoder_factory(spec: TaskSpec, method, module: PromptModule, tokenizer, work: DemoWork,
                    costs: dict[str, float], made: list[Encoder]) -> Callable[[str, list[dict]], Encoder]:
    """(template, demonstration rows) -> the Encoder of a candidate: the method's demonstrations and query in
    that template (the run's ``work`` meters writing and choosing them; the tokens the candidates' demonstrations
    wrote, e.g. few-shot CoT's reasoning, also go to ``costs``, the search's own; every encoder is kept in
    ``made``, whose truncated prompts the run counts)."""
    def encoder_for(template: str, demos: list[dict]) -> Encoder:
        task = replace(spec, templates=[template], template=0)
        before = work.generated_tokens
        shown = method.demos(module.model, tokenizer, task, demos, module.readout, work)
        costs["demo_generated_tokens"] = costs.get("demo_generated_tokens", 0) + work.generated_tokens - before
        made.append(Encoder(tokenizer, task, shown, method.assistant_prefix))
        return made[-1]

    return encoder_for
