"""Prompt search and meta-prompting: the prompt is chosen on the dev split and reported on eval, as DSPy's
``compile(program, train, dev)`` does for a program's instructions.

Candidates are the task's templates (``search.templates``), instructions the user lists, and with
meta-prompting (APE, Zhou et al. 2022) ``search.propose`` instructions a proposer model writes after reading
a few labelled training examples. An instruction is put before the task's ``input_template``.

Every candidate is scored on dev through the run's own method (its demonstrations, readout, calibration) in
one batched pass. For each readout — the raw scores and each calibration — the ``search.ensemble`` best
candidates on dev are chosen, then scored on eval together in one more pass; several are combined by the mean
of their answer scores or by a vote (prompt ensembling). The record keeps every candidate's text and dev score
and what each readout chose; what the search cost (examples and tokens scored, tokens written, seconds) is a
cost beside the training cost of tuned methods.

Hand-written: PEFT, Lightning and lm-evaluation-harness choose no prompts; DSPy does, but through its own
LM clients and modules, not a Lightning-predicted torch model with rank-scored answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from promptlab.config import is_whole
from promptlab.errors import ConfigError
from promptlab.evaluation import calibration, readouts
from promptlab.evaluation.ensemble import COMBINE, combine
from promptlab.evaluation.evaluate import Evaluation, generation_clock, predict_rows, readout_rows, score_rows
from promptlab.evaluation.metrics import compute_metrics, get_metric
from promptlab.evaluation.readouts import RAW, metric_key
from promptlab.prompts import Encoder, build_messages, encode_prompt, render, template_fields
from promptlab.tasks import Task, TaskSpec, sample_demos

if TYPE_CHECKING:
    import lightning as L

    from promptlab.methods import DemoWork
    from promptlab.module import PromptModule

# What a search costs (``schema.COST_KEYS``); zero for a run that searched nothing.
COST_KEYS = ("search_candidates", "search_examples_scored", "search_tokens_scored", "search_generated_tokens",
             "search_seconds", "search_proposal_seconds", "search_proposer_load_seconds", "sensitivity_eval_seconds")


@dataclass(frozen=True)
class SearchSpec:
    """``search/<name>.yaml``, checked before the model loads."""

    name: str
    templates: list[int]
    instructions: list[str]
    propose: int = 0
    meta_examples: int = 4
    meta_prompt: str = ""
    meta_prefix: str = ""  # the start of the proposer's answer, which it completes (APE: "The instruction was to")
    temperature: float = 0.7
    max_new_tokens: int = 48
    demo_draws: int = 1  # few-shot: this many seeded demonstration sets per prompt, chosen on dev with it
    ensemble: int = 1
    combine: str = "mean"
    eval_all: bool = False
    proposer: dict | None = None  # another model's config (model@search.proposer=...); None: the backbone

    @classmethod
    def from_config(cls, cfg: DictConfig | None, spec: TaskSpec, train_pool: int,
                    draws_demos: bool = False) -> SearchSpec | None:
        """The checked search settings (``draws_demos``: the method shows one seeded random draw of
        demonstrations, so ``demo_draws`` > 1 can vary it); None without a search."""
        if cfg is None:
            return None
        raw = OmegaConf.to_container(cfg, resolve=True)
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"search config has unknown key(s) {unknown}", f"known keys: {', '.join(sorted(known))}")
        n_templates = len(spec.templates)
        ids = list(range(n_templates)) if raw.get("templates", "all") == "all" else raw.get("templates")
        if not isinstance(ids, list) or not all(is_whole(i, 0) and i < n_templates for i in ids):
            raise ConfigError(f"search.templates={raw.get('templates')!r} is not 'all' or a list of {spec.name}'s "
                              f"template ids (0..{n_templates - 1})", "use search.templates=all or e.g. [0,2]")
        raw["templates"] = ids
        s = cls(**raw)
        s._check(spec, train_pool)
        if s.demo_draws != 1 and not (is_whole(s.demo_draws, 1) and draws_demos):
            raise ConfigError(f"search.demo_draws={s.demo_draws!r} needs a whole number >= 1 and a method showing "
                              "randomly drawn demonstrations", "use search.demo_draws=1, or method=few_shot with "
                              "method.demo_selection=random")
        return s

    @property
    def num_candidates(self) -> int:
        """The prompts scored on dev (at most: an empty or repeated proposal is not scored twice)."""
        return (len(self.templates) + len(self.instructions) + self.propose) * self.demo_draws

    def _check(self, spec: TaskSpec, train_pool: int) -> None:
        def bad(key: str, fix: str) -> ConfigError:
            return ConfigError(f"search.{key}={getattr(self, key)!r} is not valid", fix)

        if not isinstance(self.instructions, list) or not all(isinstance(i, str) and i.strip()
                                                              for i in self.instructions):
            raise bad("instructions", "give a list of non-empty instruction strings, or []")
        if not is_whole(self.propose, 0) or (self.name == "ape" and self.propose < 1):
            raise bad("propose", "meta-prompting proposes N >= 1 candidates: use e.g. search.propose=4")
        if self.propose and not is_whole(self.meta_examples, 1):
            raise bad("meta_examples", "use a whole number >= 1, e.g. search.meta_examples=4")
        if self.propose and self.meta_examples > train_pool:
            raise ConfigError(f"search.meta_examples={self.meta_examples} but the training sample has {train_pool} "
                              "examples to show the proposer", f"use search.meta_examples <= {train_pool}")
        if self.propose and (not isinstance(self.meta_prompt, str) or "{examples}" not in self.meta_prompt):
            raise bad("meta_prompt", "the meta-prompt must contain {examples}, where the labelled examples go")
        if not isinstance(self.meta_prefix, str):
            raise bad("meta_prefix", "use a string the proposer's answer starts with, or \"\"")
        if not isinstance(self.temperature, int | float) or isinstance(self.temperature, bool) or self.temperature < 0:
            raise bad("temperature", "use a number >= 0 (0: greedy), e.g. 0.7")
        if not is_whole(self.max_new_tokens, 1):
            raise bad("max_new_tokens", "use a whole number >= 1, e.g. 48")
        n = len(self.templates) + len(self.instructions) + self.propose
        if n < 1:
            raise ConfigError("the prompt search has no candidates (no templates, instructions or proposals)",
                              "use search.templates=all, or give search.instructions / search.propose")
        if not is_whole(self.ensemble, 1):
            raise bad("ensemble", "an ensemble has at least one prompt: use search.ensemble=1 (the best prompt) "
                                  "or K > 1")
        n *= self.demo_draws if is_whole(self.demo_draws, 1) else 1
        if self.ensemble > n:
            raise ConfigError(f"search.ensemble={self.ensemble} but the search has only {n} candidates",
                              f"use search.ensemble <= {n}")
        if self.ensemble > 1 and spec.output_type != "choice":
            raise ConfigError(f"search.ensemble={self.ensemble} combines answer scores, and {spec.name} is a "
                              f"{spec.output_type} task", "use search.ensemble=1 on generation tasks")
        if self.combine not in COMBINE:
            raise bad("combine", f"use one of {', '.join(COMBINE)}")
        if not isinstance(self.eval_all, bool):
            raise bad("eval_all", "use true or false")


@dataclass
class Candidate:
    id: str  # "template 0", "instruction 1", "proposed 2"
    template: str  # what the query is rendered with
    text: str  # what a reader is shown: the template, or the instruction
    demos: int = 0  # which demonstration draw it shows (search.demo_draws)
    dev: dict[str, float] = field(default_factory=dict)
    eval: dict[str, float] | None = None  # eval_all only: never read by the selection


def instruction_template(instruction: str, spec: TaskSpec) -> str:
    """An instruction before the task's inputs (braces in the instruction are text, not placeholders)."""
    return instruction.replace("{", "{{").replace("}", "}}").strip() + "\n\n" + spec.inputs_template


# ---- meta-prompting ------------------------------------------------------------------------------------


def clean_instruction(text: str) -> str:
    """A proposal's first non-empty line, without a leading "Instruction:" and surrounding quotes, its first
    letter upper-case (a completion of "The instruction was to" starts lower-case)."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "").strip("\"'“”` ")
    if line.lower().startswith("instruction:"):
        line = line[len("instruction:"):].strip("\"'“”` ")
    return line[:1].upper() + line[1:]


def propose(model: torch.nn.Module, tokenizer, task: Task, pool: list[dict], s: SearchSpec,
            seed: int) -> tuple[list[str], dict[str, Any]]:
    """APE's proposal step: the proposer reads ``meta_examples`` labelled examples (a different class-balanced
    draw per proposal) and writes an instruction; sampled with ``temperature`` (seeded), batched in one call."""
    from transformers import GenerationConfig

    from promptlab.readout.model import head_of, pad

    spec = task.spec
    prompts = []
    for i in range(s.propose):
        shown = sample_demos(pool, task, s.meta_examples, seed * 1000 + i)
        examples = "\n\n".join(f"Input: {render(spec.inputs_template, r)}\nOutput: {spec.target_of(r)}" for r in shown)
        messages = build_messages(s.meta_prompt.replace("{examples}", examples))
        prompts.append(encode_prompt(tokenizer, messages, s.meta_prefix))
    config = GenerationConfig(max_new_tokens=s.max_new_tokens, do_sample=s.temperature > 0,
                              temperature=s.temperature or None, top_p=None, top_k=None,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    ids, mask = pad(prompts, tokenizer.pad_token_id, head_of(model).weight.device, left=True)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    new = out[:, ids.shape[1]:]
    lengths = [int((row != tokenizer.pad_token_id).sum()) for row in new]
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    return [clean_instruction(t) for t in texts], {
        "proposal_seconds": round(time.perf_counter() - start, 3), "proposal_prompt_tokens": sum(map(len, prompts)),
        "proposal_generated_tokens": sum(lengths), "proposals_raw": texts}


# ---- scoring -------------------------------------------------------------------------------------------


@dataclass
class Scored:
    rows: list[dict]  # the candidate's predictions on the split, sorted by idx
    free: list[dict]  # its content-free predictions (contextual calibration)


def score_all(module: PromptModule, trainer: L.Trainer, batch_size: int, encoders: dict[str, Encoder],
              rows: list[dict], content_free: bool) -> tuple[dict[str, Scored], dict[str, int]]:
    """Every candidate's predictions on ``rows`` (and on the content-free inputs) from one ``trainer.predict``
    pass over all of them; plus what that cost (examples, prompt tokens, tokens written)."""
    items, back = [], []
    for cid, enc in encoders.items():
        free = calibration.content_free_rows(rows[0], template_fields(enc.task.prompt_template)) if content_free else []
        for kind, group in (("rows", rows), ("free", free)):
            for r in group:
                back.append((cid, kind, r["idx"]))
                items.append(enc.item({**r, "idx": len(items)}, train=False))
    tokens = sum(len(x["prompt_ids"]) for x in items)
    # one candidate after another (its batches share the demonstrations' prefix), longest prompt first in each
    order = {cid: i for i, cid in enumerate(encoders)}
    items.sort(key=lambda x: (order[back[x["idx"]][0]], -len(x["prompt_ids"])))
    out = {cid: Scored([], []) for cid in encoders}
    for row in predict_rows(module, items, trainer, batch_size):
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


# ---- the search ----------------------------------------------------------------------------------------


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


def candidates(search: Search, proposals: list[str]) -> list[Candidate]:
    spec = search.spec
    out = [Candidate(f"template {i}", spec.templates[i], spec.templates[i]) for i in search.s.templates]
    out += [Candidate(f"instruction {i}", instruction_template(t, spec), t) for i, t in enumerate(search.s.instructions)]
    seen = {c.template for c in out}
    for i, text in enumerate(proposals):
        template = instruction_template(text, spec)
        if text and template not in seen:  # an empty or repeated proposal is recorded, not scored twice
            out.append(Candidate(f"proposed {i}", template, text))
            seen.add(template)
    if len(search.demo_sets) == 1:
        return out
    return [replace(c, id=f"{c.id} · demos {d}", demos=d) for c in out for d in range(len(search.demo_sets))]


def run_search(search: Search, module: PromptModule, trainer: L.Trainer, proposer) -> Evaluation:
    """Choose on dev, report on eval: the Evaluation's metrics are each readout's chosen prompt(s) on eval; its
    ``selection`` holds every candidate and the choices, its ``extra_costs`` what the search cost."""
    spec, s = search.spec, search.s
    higher = get_metric(spec.primary_metric).higher_is_better
    contextual = "contextual" in search.calibrations
    start = time.perf_counter()
    proposals, proposal_costs = [], {}
    if s.propose:
        proposals, proposal_costs = propose(*proposer, search.task, search.pool, s, search.seed)
    cands = candidates(search, proposals)
    encoders = {c.id: search.encoder_for(c.template, search.demo_sets[c.demos]) for c in cands}
    dev, dev_cost = score_all(module, trainer, search.batch_size, encoders, search.task.dev, contextual)
    names = readouts.available(dev[cands[0].id].rows, search.calibrations) if spec.output_type == "choice" else (RAW,)
    for c in cands:
        c.dev = metrics_of(spec, dev[c.id], names)
    chosen = {r: ranked(cands, metric_key(spec.primary_metric, r), higher)[: s.ensemble] for r in names}
    dev_metrics, dev_rows = final_metrics(spec, chosen, dev, s.combine)
    search_seconds = time.perf_counter() - start

    gen = generation_clock(module)
    start, gen_start = time.perf_counter(), gen()
    members = list({c.id: c for group in chosen.values() for c in group}.values())
    ev, ev_cost = score_all(module, trainer, search.batch_size, {c.id: encoders[c.id] for c in members},
                            search.task.eval, contextual)
    metrics, rows = final_metrics(spec, chosen, ev, s.combine)
    eval_seconds, gen_seconds = time.perf_counter() - start, gen() - gen_start

    start = time.perf_counter()
    if s.eval_all:  # every candidate on eval, for the sensitivity table only: the choice is already made
        rest = [c for c in cands if c.id not in ev]
        if rest:
            others, _ = score_all(module, trainer, search.batch_size, {c.id: encoders[c.id] for c in rest},
                                  search.task.eval, contextual)
            ev.update(others)
        for c in cands:
            c.eval = metrics_of(spec, ev[c.id], names)
    costs = {
        "search_candidates": len(cands), "search_examples_scored": dev_cost["examples"],
        "search_tokens_scored": dev_cost["prompt_tokens"] + proposal_costs.get("proposal_prompt_tokens", 0),
        "search_generated_tokens": dev_cost["generated_tokens"] + proposal_costs.get("proposal_generated_tokens", 0)
        + search.demo_costs.get("demo_generated_tokens", 0),
        "search_seconds": round(search_seconds, 3),
        "search_proposal_seconds": proposal_costs.get("proposal_seconds", 0.0), "search_proposer_load_seconds": 0.0,
        "sensitivity_eval_seconds": round(time.perf_counter() - start, 3) if s.eval_all else 0.0,
    }
    selection = {
        "split": "dev", "dev_examples": len(search.task.dev), "metric": spec.primary_metric, "ensemble": s.ensemble,
        "combine": s.combine, "proposals": proposal_costs.get("proposals_raw", []),
        "candidates": [{"id": c.id, "text": c.text, "template": c.template, "demos": c.demos, "dev": c.dev,
                        "eval": c.eval} for c in cands],
        "demo_sets": [[r["idx"] for r in rows] for rows in search.demo_sets] if len(search.demo_sets) > 1 else None,
        "chosen": {r: [c.id for c in group] for r, group in chosen.items()},
    }
    return Evaluation(metrics, rows, eval_seconds, ev_cost["generated_tokens"], gen_seconds, selection=selection,
                      extra_costs=costs, dev_metrics=dev_metrics, dev_rows=dev_rows, readouts=names)


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
        preds, mean = combine([readouts.scores(ev[c.id].rows, ev[c.id].free, readout) for c in group], how)
        if readout == RAW:
            for r, p, m in zip(rows, preds.tolist(), mean, strict=True):
                r.update(pred=p, log_probs=[round(float(v), 5) for v in m], prompt=" + ".join(c.id for c in group))
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
