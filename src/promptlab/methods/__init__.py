"""Methods: a method is a YAML (``conf/method/``) naming a registered implementation (``type``) plus its
knobs, display name and what it modifies. An implementation declares its keys (``Config``, a typed schema:
types, ranges, no unknown key), says whether it trains, how it wraps the backbone, what it stores per task,
how demonstrations and the answer prefix look, and which readout reads the answer. Adding a method of an
existing type is one YAML; a new type is one class (with its ``Config``) + @register.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from omegaconf import DictConfig
from pydantic import Field

from promptlab.config import Schema, check_typed
from promptlab.errors import ConfigError
from promptlab.evaluation.filters import ListFilter, build_filters, build_list_filters
from promptlab.module import Optim
from promptlab.prompts import Content, Encoder, render_content
from promptlab.readout import ChoiceReadout, GenerateReadout, Readout
from promptlab.readout.generate import Sampling
from promptlab.readout.model import base_model
from promptlab.schema import MethodInfo
from promptlab.tasks import TaskSpec
from promptlab.vision import ImageBlocks

REGISTRY: dict[str, type[Method]] = {}


def register(type_name: str):
    def deco(cls: type[Method]) -> type[Method]:
        cls.type = type_name
        REGISTRY[type_name] = cls
        return cls

    return deco


@dataclass
class DemoWork:
    """What writing and choosing a run's demonstrations cost, and what it keeps between a search's candidates:
    the method adds to it (``Method.demos``), the run records ``costs()``."""

    generated_tokens: int = 0  # reasoning a model wrote for its demonstrations (Auto-CoT)
    generation_seconds: float = 0.0
    selection_seconds: float = 0.0  # nearest-neighbour demonstrations: embedding the pool and the queries
    embeddings: dict = field(default_factory=dict)  # text -> its embedding, computed once per run

    def costs(self) -> dict[str, float]:
        return {"demo_generated_tokens": self.generated_tokens,
                "demo_generation_seconds": round(self.generation_seconds, 3),
                "demo_selection_seconds": round(self.selection_seconds, 3)}


class SamplingConfig(Schema):
    """``method.sampling``: several generations per example (self-consistency)."""

    samples: int = Field(1, ge=1, examples=[8])  # generations per example
    temperature: float = Field(0.0, ge=0, examples=[0.7])  # 0: greedy


class MethodConfig(Schema):
    """The keys every method's YAML may set (``conf/method/*.yaml``)."""

    name: str
    type: str
    display_name: str | None = None
    modifies: str | None = None
    shots: Literal["zero", "few"] | None = None  # zero: demonstrations refused; few: at least one
    num_demos: int = Field(0, ge=0, examples=[4])
    sampling: SamplingConfig | None = None
    filters: list[dict[str, Any]] | None = None  # list filters over each example's sampled answers
    # A sweep over method families sets one training budget for all of them (experiment/demo.yaml); a method that
    # does not train leaves these alone.
    max_steps: int | None = Field(None, ge=1, examples=[100])
    dev_every_n_steps: int | None = Field(None, ge=1, examples=[20])
    batch_size: int | None = Field(None, ge=1, examples=[8])


class TrainedConfig(MethodConfig):
    """A trained method's schedule (``method/_trained.yaml``) and tuning space."""

    lr: float = Field(gt=0, examples=[0.03])
    weight_decay: float = Field(0.0, ge=0, examples=[0.01])
    warmup_ratio: float = Field(0.1, ge=0, lt=1, examples=[0.1])
    max_steps: int = Field(ge=1, examples=[100])
    batch_size: int = Field(8, ge=1, examples=[8])
    gradient_checkpointing: bool = False
    space: dict[str, list[Any]] | None = None  # checked by promptlab.tuning


class Method:
    """Base: a frozen backbone read with the task's own readout; nothing stored per task."""

    type: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig  # the keys its YAML may set, typed
    trains: ClassVar[bool] = False
    model_kinds: ClassVar[tuple[str, ...]] = ("lm", "vlm")  # the ``model.kind``s it works with
    generates_on_choice: ClassVar[bool] = False  # whether it generates text on choice tasks too (reasoning)

    def __init__(self, cfg: DictConfig, num_tasks: int = 1):
        self.cfg = cfg
        self.num_tasks = num_tasks  # the tasks one trained state serves (a mixture's seen tasks)

    @property
    def num_demos(self) -> int:
        return self.cfg.get("num_demos", 0)

    @property
    def assistant_prefix(self) -> str:
        """Text the answer starts with (a chain-of-thought trigger); empty for most methods."""
        return ""

    def info(self) -> MethodInfo:
        c = self.cfg
        return MethodInfo(c.name, self.type, c.get("display_name") or c.name, c.get("modifies") or "—", self.trains)

    def validate(self, task: TaskSpec) -> None:
        """Knobs that do not fit (alone or with the task): ConfigError, before any model loads. Types, ranges and
        unknown keys are the ``Config`` schema's; the rules here relate keys to each other and to the task."""
        check_typed(self.Config, self.cfg, "method", f"a {self.type} method ({self.cfg.get('name')})")
        shots = self.cfg.get("shots")
        if shots == "zero" and self.num_demos:
            raise ConfigError(f"{self.cfg.name} is zero-shot (method.shots=zero) and method.num_demos="
                              f"{self.num_demos}", "drop method.num_demos, or use the few-shot method (few_shot, "
                              "few_shot_cot) for demonstrations")
        if shots == "few" and self.num_demos < 1:
            raise ConfigError(f"{self.cfg.name} is few-shot (method.shots=few) and method.num_demos="
                              f"{self.num_demos}", "set method.num_demos=4, or use the zero-shot method")
        self.check_sampling(task)

    def check_sampling(self, task: TaskSpec) -> None:
        """``method.sampling`` ({samples, temperature}) and ``method.filters`` (how the samples' answers combine)."""
        spec = self.cfg.get("sampling") or {}
        n, t = spec.get("samples", 1), spec.get("temperature", 0.0)
        if n > 1 and t == 0:
            raise ConfigError(f"method.sampling.samples={n} at temperature 0: greedy samples are all the same",
                              "set method.sampling.temperature=0.7, or samples=1")
        filters = self.cfg.get("filters")
        build_list_filters(filters, "method.filters")
        if n > 1 and not filters:
            raise ConfigError(f"method.sampling.samples={n} and no method.filters to combine the samples' answers",
                              "add filters: [{type: majority_vote}] (self-consistency) or [{type: take_first}]")
        if spec and task.output_type == "choice" and not self.generates_on_choice:
            raise ConfigError(f"method.sampling on a choice task: {self.cfg.name} rank-scores the answers, it "
                              "generates nothing", "drop method.sampling, or use a chain-of-thought method")

    def sampling(self, seed: int) -> Sampling:
        spec = self.cfg.get("sampling") or {}
        return Sampling(int(spec.get("samples", 1)), float(spec.get("temperature", 0.0)), seed)

    def combine(self) -> ListFilter | None:
        """The method's list filters over each example's sampled answers (None: one answer per example)."""
        return build_list_filters(self.cfg.filters, "method.filters") if self.cfg.get("filters") else None

    def check_model(self, kind: str, task: TaskSpec) -> None:
        """The model's kind fits this method and the task: ConfigError otherwise (before the model loads)."""
        n = self.cfg.name
        if kind not in self.model_kinds:
            fix = ("use method=clip_zero_shot, coop or linear_probe with a CLIP model, or a vision-language model "
                   "(model=tiny_random_vlm, smolvlm_256m)" if kind == "clip" else
                   f"use a {' or '.join(self.model_kinds)} model (model.kind), e.g. model=tiny_random_clip")
            raise ConfigError(f"method {n} does not work with a model.kind={kind} model", fix)
        if task.image_column and kind == "lm":
            raise ConfigError(f"task {task.name} shows images (data.image_column={task.image_column}) and the model "
                              "is text-only (model.kind=lm)", "use a vision-language model (model=tiny_random_vlm, "
                              "smolvlm_256m) or a CLIP model with method=clip_zero_shot, coop or linear_probe")

    def demo(self, task: TaskSpec, row: dict) -> tuple[Content, str]:
        """A demonstration as a (question, answer) chat turn pair (the question with its image, for image tasks)."""
        return render_content(task.prompt_template, row, task.image_column), task.target_of(row)

    @property
    def draws_demos(self) -> bool:
        """Whether its demonstrations are one seeded random draw (so a search can try other draws)."""
        return self.num_demos > 0

    def draw_demos(self, pool: list[dict], task, seed: int) -> list[dict]:
        """The training examples the demonstrations come from (``tasks.sample_demos``: class-balanced, seeded)."""
        from promptlab.tasks import sample_demos

        return sample_demos(pool, task, self.num_demos, seed)

    def demos(self, model: torch.nn.Module, tokenizer, task: TaskSpec, rows: list[dict], readout,
              work: DemoWork) -> list[tuple[Content, str]]:
        """All demonstrations, once the model is loaded (a method may have the model write part of them, or pick
        them per query; what that costs goes to ``work``)."""
        return [self.demo(task, r) for r in rows]

    def encoder(self, backbone, task: TaskSpec, demos) -> Encoder:
        """What turns the task's rows into model inputs; a vision-language model's prompts (with images or not) go
        through its processor's chat template."""
        images = ImageBlocks(backbone.processor) if backbone.kind == "vlm" else None
        return Encoder(backbone.tokenizer, task, demos, self.assistant_prefix, images=images)

    def readout(self, tokenizer, task: TaskSpec, seed: int = 0) -> Readout:
        """How answers are read; ``seed``: the run's, for sampled generations."""
        if task.output_type == "choice":
            return ChoiceReadout(tokenizer.pad_token_id)
        return GenerateReadout(tokenizer, task.generation.max_new_tokens, task.generation.until, self.sampling(seed),
                               self.combine(), build_filters(task.filters, "data.filters"))

    def optim(self) -> Optim:
        return Optim()

    def prepare(self, backbone, task: TaskSpec) -> torch.nn.Module:
        """The model to train and evaluate (here: the frozen backbone)."""
        return backbone.model.requires_grad_(False).eval()

    def save(self, model: torch.nn.Module, directory: Path) -> None:
        """Store exactly the per-task state (nothing for a prompting method: its prompt is in the config)."""

    def load(self, backbone, directory: Path) -> torch.nn.Module:
        return self.prepare(backbone, None)


class TrainedMethod(Method):
    """A method with an optimiser: its YAML carries lr, weight_decay, warmup_ratio, max_steps, batch_size."""

    trains = True
    Config = TrainedConfig

    def validate(self, task: TaskSpec) -> None:
        super().validate(task)
        if self.num_demos:
            raise ConfigError(f"{self.cfg.name} trains without demonstrations", "set method.num_demos=0")

    @property
    def gradient_checkpointing(self) -> bool:
        return self.cfg.get("gradient_checkpointing", False)

    def checkpoint_activations(self, model: torch.nn.Module) -> None:
        """With ``method.gradient_checkpointing``: keep only each decoder layer's input during the forward pass and
        recompute the rest in the backward pass (transformers' own mechanism; non-reentrant, so a frozen backbone
        needs no input that requires grad). Less memory for long inputs, about a third more compute."""
        if self.gradient_checkpointing:
            base_model(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def optim(self) -> Optim:
        c = self.cfg
        return Optim(float(c.lr), float(c.weight_decay), float(c.warmup_ratio), int(c.max_steps))


def registry() -> dict[str, type[Method]]:
    """Every registered method type (importing the modules registers them)."""
    from promptlab.methods import clip, cot, full_finetune, peft_adapter, prompting  # noqa: F401  (registration)

    return REGISTRY


def build_method(cfg: DictConfig, num_tasks: int = 1) -> Method:
    registry()
    kind = cfg.get("type")
    if kind not in REGISTRY:
        raise ConfigError(f"method {cfg.get('name')!r} has type {kind!r}, which is not registered",
                          f"use method.type= one of {', '.join(sorted(REGISTRY))}")
    return REGISTRY[kind](cfg, num_tasks)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters, counting tied weights once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total
