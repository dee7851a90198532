"""Where a search's candidate prompts come from: the task's templates, the user's instructions, and
instructions a proposer model writes (meta-prompting: APE, Zhou et al. 2022). A source is a callable
``(spec, train) -> Sourced``; adding one is a class here and a line in ``sources_of``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from promptlab.prompts import build_messages, encode_prompt, render
from promptlab.search.spec import SearchSpec
from promptlab.tasks import Task, TaskSpec, sample_demos


@dataclass
class Candidate:
    id: str  # "template 0", "instruction 1", "proposed 2"
    template: str  # what the query is rendered with
    text: str  # what a reader is shown: the template, or the instruction
    demos: int = 0  # which demonstration draw it shows (search.demo_draws)
    dev: dict[str, float] = field(default_factory=dict)
    eval: dict[str, float] | None = None  # eval_all only: never read by the selection


@dataclass
class Sourced:
    """A source's candidates and what writing them cost (meta-prompting: seconds, tokens, the raw proposals)."""

    candidates: list[Candidate]
    costs: dict[str, Any] = field(default_factory=dict)


class Source(Protocol):
    def __call__(self, spec: TaskSpec, train: list[dict]) -> Sourced: ...


def instruction_template(instruction: str, spec: TaskSpec) -> str:
    """An instruction before the task's inputs (braces in the instruction are text, not placeholders)."""
    return instruction.replace("{", "{{").replace("}", "}}").strip() + "\n\n" + spec.inputs_template


@dataclass(frozen=True)
class Templates:
    """The task's own templates (``search.templates``)."""

    ids: list[int]

    def __call__(self, spec: TaskSpec, train: list[dict]) -> Sourced:
        return Sourced([Candidate(f"template {i}", spec.templates[i], spec.templates[i]) for i in self.ids])


@dataclass(frozen=True)
class Instructions:
    """The user's instructions (``search.instructions``), each before the task's inputs."""

    texts: list[str]

    def __call__(self, spec: TaskSpec, train: list[dict]) -> Sourced:
        return Sourced([Candidate(f"instruction {i}", instruction_template(t, spec), t)
                        for i, t in enumerate(self.texts)])


@dataclass(frozen=True)
class Proposed:
    """APE: ``search.propose`` instructions the proposer writes after reading labelled training examples; an empty
    proposal is recorded (``costs["proposals_raw"]``), not scored."""

    proposer: tuple[torch.nn.Module, Any]  # (model, tokenizer)
    task: Task
    s: SearchSpec
    seed: int

    def __call__(self, spec: TaskSpec, train: list[dict]) -> Sourced:
        texts, costs = propose(*self.proposer, self.task, train, self.s, self.seed)
        return Sourced([Candidate(f"proposed {i}", instruction_template(t, spec), t) for i, t in enumerate(texts) if t],
                       costs)


def sources_of(s: SearchSpec, task: Task, proposer, seed: int) -> list[Source]:
    """The sources a search config names, in the order their candidates are listed (and ties broken)."""
    out: list[Source] = [Templates(s.templates), Instructions(s.instructions)]
    if s.propose:
        out.append(Proposed(proposer, task, s, seed))
    return out


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
