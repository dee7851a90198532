"""The run's own settings (top-level keys, budgets, the wandb mode), typed and range-checked in one place.

Hydra passes overrides through as whatever YAML makes of them (``seed=abc`` is the string "abc"), so every
value a user types is checked here, before data or the model load, and a bad one is a ``ConfigError``
with one cause and one fix. Task and method knobs are checked by ``TaskSpec`` and ``Method.validate``.
"""

from __future__ import annotations

import difflib
import json
import os
import tempfile
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from promptlab.errors import ConfigError

# The configs ship inside the package (a wheel carries them); Hydra reads them as pkg://promptlab.conf.
CONFIG_DIR = Path(__file__).resolve().parent / "conf"
CONFIG_MODULE = "pkg://promptlab.conf"
# ${uid:} in run directory names: unique even when jobs start in the same second.
OmegaConf.register_new_resolver("uid", lambda: uuid.uuid4().hex[:6], use_cache=True, replace=True)
WANDB_ENV_MODES = ("online", "offline", "shared", "disabled", "dryrun", "run")  # wandb's Settings.mode
WANDB_MODES = ("auto", "online", "offline", "disabled")
OBJECTIVES = ("dev", "eval")
MAX_SEED = 2**32 - 1  # Lightning's seed_everything silently replaces larger seeds with a random one


_ABSENT = object()


def has_key(cfg: DictConfig, key: str) -> bool:
    """Whether the dotted ``key`` exists in ``cfg`` (a key set to null exists)."""
    return OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT


def is_whole(value: Any, low: int | None = None) -> bool:
    """An int (not a bool, not a float such as 1.5 that YAML gave us), at least ``low`` when given."""
    return isinstance(value, int) and not isinstance(value, bool) and (low is None or value >= low)


def whole_number(value: Any, key: str, low: int, example: int, high: int | None = None) -> int:
    """``value`` if it is an int in [low, high]; else a ConfigError naming ``key``."""
    if is_whole(value, low) and (high is None or value <= high):
        return value
    bound = f">= {low}" if high is None else f"in {low}..{high}"
    raise ConfigError(f"{key}={value!r} is not a whole number {bound}", f"use e.g. {key}={example}")


def optional_whole_number(value: Any, key: str, example: int) -> int | None:
    """A budget that may be null (= no limit) or a whole number >= 1."""
    if value is None:
        return None
    if is_whole(value, 1):
        return value
    raise ConfigError(f"{key}={value!r} is not a whole number >= 1", f"use {key}={example}, or {key}=null")


def optional_positive(value: Any, key: str, example: float) -> float | None:
    """A period that may be null (= never) or a number > 0."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    raise ConfigError(f"{key}={value!r} is not a number > 0", f"use {key}={example}, or {key}=null")


@dataclass(frozen=True)
class Settings:
    """What ``promptlab-train`` reads from the top level of its config (plus the data budgets)."""

    seed: int
    eval_batch_size: int
    num_threads: int | None
    skip_completed: bool
    resume: bool
    checkpoint_every_n_steps: int | None
    checkpoint_every_minutes: float | None
    wandb_mode: str | None  # the requested mode; None when no wandb logger is configured
    max_prompt_tokens: int
    max_target_tokens: int
    dev_size: int
    k_shot: int | None
    train_size: int | None
    eval_limit: int | None
    calibration: tuple[str, ...] = ()
    bucket_by_length: bool = True  # training batches of similar lengths (data.LengthBuckets)
    precision: str = "32-true"  # trainer.precision resolved for this machine (promptlab.models.precision)
    select_readout: bool = True  # the headline readout is the one best on dev (else the task's data.readout)
    objective: str = "dev"  # the split a sweeper optimises (train.objective_value): dev; eval only when allowed
    decode_width: int = 16  # rows decoded at once (readout.decoding's slots)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Settings:
        from promptlab.progress import progress_every  # lightning: not imported until a run starts

        progress_every()  # PROMPTLAB_PROGRESS_EVERY: checked here with the rest, read where progress is set up
        data = cfg.data
        return cls(
            seed=whole_number(cfg.get("seed"), "seed", 0, 0, MAX_SEED),
            eval_batch_size=whole_number(cfg.get("eval_batch_size"), "eval_batch_size", 1, 16),
            num_threads=optional_whole_number(cfg.get("num_threads"), "num_threads", 2),
            skip_completed=skip_completed(cfg),
            resume=flag(cfg, "resume", "continue an interrupted run from its last checkpoint"),
            checkpoint_every_n_steps=optional_whole_number(cfg.get("checkpoint_every_n_steps"),
                                                           "checkpoint_every_n_steps", 20),
            checkpoint_every_minutes=optional_positive(cfg.get("checkpoint_every_minutes"),
                                                       "checkpoint_every_minutes", 10),
            wandb_mode=_wandb_mode(cfg),
            max_prompt_tokens=whole_number(_data(data, "max_prompt_tokens"), "data.max_prompt_tokens", 1, 1024),
            max_target_tokens=whole_number(_data(data, "max_target_tokens"), "data.max_target_tokens", 1, 256),
            dev_size=whole_number(_data(data, "dev_size"), "data.dev_size", 1, 200),
            k_shot=optional_whole_number(_data(data, "k_shot"), "data.k_shot", 16),
            train_size=optional_whole_number(_data(data, "train_size"), "data.train_size", 100),
            eval_limit=optional_whole_number(_data(data, "eval_limit"), "data.eval_limit", 100),
            calibration=_calibration(cfg.get("calibration")),
            bucket_by_length=flag(cfg, "bucket_by_length", "batch training examples of similar lengths together"),
            precision=_precision(cfg.get("trainer")),
            select_readout=flag(cfg, "select_readout", "the headline readout is the one best on dev"),
            objective=_objective(cfg),
            decode_width=whole_number(cfg.get("decode_width", 16), "decode_width", 1, 16),
        )


def _precision(trainer: DictConfig | None) -> str:
    from promptlab.models import precision  # imports torch: not needed by the other checks

    trainer = trainer or {}
    return precision.resolve(trainer.get("precision", precision.AUTO), str(trainer.get("accelerator", "cpu")))


def _calibration(value: Any) -> tuple[str, ...]:
    """``calibration``: a list of evaluation.calibration.METHODS (empty: raw scores only)."""
    from promptlab.evaluation.calibration import METHODS

    if value is None:
        names = []
    elif isinstance(value, str):  # one name without brackets
        names = [value]
    elif isinstance(value, Sequence):
        names = list(value)
    else:  # a number, true/false: not silently "no calibration"
        names = [value]
    bad = [n for n in names if n not in METHODS]
    if bad or len(set(names)) != len(names):
        raise ConfigError(f"calibration={value!r} is not a list of distinct methods from {', '.join(METHODS)}",
                          "use e.g. calibration=[contextual,batch], or calibration=[] for raw scores only")
    return tuple(names)


def _objective(cfg: DictConfig) -> str:
    """``objective``: what a sweeper optimises. dev, always allowed; eval (choosing on the reported split) only
    with ``allow_eval_objective=true``, and the record and the report mark such runs."""
    value = cfg.get("objective", "dev")
    if value not in OBJECTIVES:
        raise ConfigError(f"objective={value!r} is unknown", "use objective=dev (the default)")
    allowed = cfg.get("allow_eval_objective", False)
    if not isinstance(allowed, bool):
        raise ConfigError(f"allow_eval_objective={allowed!r} is not true or false", "use allow_eval_objective=false")
    if value == "eval" and not allowed:
        raise ConfigError("objective=eval makes a sweep choose on the split it reports: its numbers would be "
                          "optimistic, not results", "use objective=dev (the default); for an oracle bound on "
                          "purpose, add allow_eval_objective=true (the record and the report mark such runs)")
    return value


def _data(data: DictConfig, key: str) -> Any:
    """A data key, or TaskSpec's default when the task's YAML leaves it out."""
    from promptlab.tasks.spec import TaskSpec

    return data.get(key, TaskSpec.__dataclass_fields__[key].default)


def skip_completed(cfg: DictConfig) -> bool:
    return flag(cfg, "skip_completed", "finish a sweep, not redo its completed runs")


def flag(cfg: DictConfig, key: str, meaning: str) -> bool:
    """A top-level true/false setting (default true)."""
    value = cfg.get(key, True)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} is not true or false", f"use {key}=true ({meaning}) or {key}=false")
    return value


def _wandb_mode(cfg: DictConfig) -> str | None:
    wb = cfg.get("logger", {}).get("wandb")
    if not wb:
        return None
    mode = wb.get("mode", "auto")
    if mode not in WANDB_MODES:
        raise ConfigError(f"logger.wandb.mode={mode!r} is unknown", f"use one of {', '.join(WANDB_MODES)}")
    env = os.environ.get("WANDB_MODE")
    if env is not None and env not in WANDB_ENV_MODES:  # wandb itself would fail only once the run starts
        raise ConfigError(f"the environment variable WANDB_MODE={env!r} is not a wandb mode",
                          f"unset it, or set it to one of {', '.join(WANDB_ENV_MODES)}")
    return mode


def check_writable(directory: str | Path, what: str = "the run directory",
                   fix: str = "set paths.runs_dir=... (or PROMPTLAB_RUNS) to a folder you can write, "
                              "or fix that folder's permissions") -> Path:
    """Create ``directory`` (and parents) and prove a file can be written there; ConfigError if not.

    Asked first, so a read-only or foreign runs dir is one line, not a traceback after the model loaded.
    """
    path = Path(directory).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ConfigError(f"cannot write {what} {path}: {err.strerror or err}", fix) from None
    return path


# Keys under these prefixes are checked where they are read: a task's YAML by TaskSpec, a PEFT block against its
# PEFT config class, a tuning space by promptlab.tuning
CHECKED_ELSEWHERE = ("data.", "method.peft.", "method.space.", "hydra.")


def config_keys(node: Any, prefix: str = "") -> set[str]:
    """Every dotted key of a loaded YAML (``method.lr``, ``method.peft.r`` ...)."""
    keys: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            keys.add(f"{prefix}{k}")
            keys |= config_keys(v, f"{prefix}{k}.")
    return keys


def group_options(group: str) -> list[str]:
    """The options of a config group (``method`` -> zero_shot, lora, ...); ``_name.yaml`` files are defaults the
    options share (``method/_trained.yaml``), not options."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))


def known_keys(config_dir: Path) -> set[str]:
    """The keys promptlab's own YAMLs set: the top-level config's, and each group's (``method.*`` from every
    method YAML, ...). A key none of them sets is one no code reads."""
    import yaml

    keys = {k for k in config_keys(yaml.safe_load((config_dir / "train.yaml").read_text())) if k != "defaults"}
    for group in (p for p in config_dir.iterdir() if p.is_dir() and p.name != "hydra"):
        for path in group.rglob("*.yaml"):
            text = path.read_text()
            overlay = "@package _global_" in text  # an experiment or arm: its keys are the whole config's
            keys |= config_keys(yaml.safe_load(text) or {}, "" if overlay else f"{group.name}.")
    return {k for k in keys if not k.startswith("hydra.") and "defaults" not in k.split(".")}


def check_added_keys(overrides: Sequence[str], config_dir: Path) -> None:
    """A ConfigError for a key a ``+key=value`` override adds that no YAML of promptlab sets: it would be ignored
    (``+method.num_virtual_tokens=5`` would train the YAML's 20 tokens, ``+evalbatchsize=4`` change nothing)."""
    added = [o[1:].split("=", 1)[0] for o in overrides if o.startswith("+") and not o.startswith("++")]
    unchecked = [k for k in added if not k.startswith(CHECKED_ELSEWHERE)]
    if not unchecked:
        return
    known = known_keys(config_dir)
    for key in unchecked:
        if key not in known:
            near = nearest_key(key, known)
            raise ConfigError(f"+{key}=... adds a key no promptlab config has, so nothing would read it",
                              f"did you mean {near}=...?" if near else "see `promptlab-train --cfg job` for the keys")


def nearest_key(key: str, known: Iterable[str]) -> str | None:
    """The key a mistyped or misplaced dotted ``key`` most likely meant: one with the same last part under the same
    parent (``method.num_virtual_tokens`` -> ``method.peft.num_virtual_tokens``), else the closest-spelled sibling
    (``evalbatchsize`` -> ``eval_batch_size``); None when nothing is close."""
    parent, _, leaf = key.rpartition(".")
    same_leaf = sorted(k for k in known if k.startswith(parent) and k.rpartition(".")[2] == leaf)
    if same_leaf:
        return same_leaf[0]
    siblings = {k.rpartition(".")[2]: k for k in known if k.rpartition(".")[0] == parent}
    close = difflib.get_close_matches(leaf, list(siblings), n=1)
    return siblings[close[0]] if close else None


# ---- typed config groups ---------------------------------------------------------------------------------
# A group's schema is a pydantic model (``Schema``): strict types (a bool is a bool, "abc" is no number), ranges
# and no key it does not declare. ``check_typed`` turns pydantic's first error into a ConfigError naming the key,
# what it takes and an example, before any model loads.


class Schema(BaseModel):
    """Base of every typed config group: strict, closed (unknown keys are errors), finite numbers only."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


def describe(info: FieldInfo) -> str:
    """What a field takes, in words: "a whole number >= 1", "a number in [0, 1)", "true or false", "one of a, b"."""
    return _describe(info.annotation, info.metadata)


def _describe(annotation: Any, metadata: Sequence = ()) -> str:
    if get_origin(annotation) in (Union, UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        text = " or ".join(_describe(a, metadata) for a in members)
        return f"{text}, or null" if type(None) in get_args(annotation) else text
    bounds = {type(m).__name__: getattr(m, type(m).__name__.lower()) for m in metadata
              if type(m).__name__ in ("Ge", "Gt", "Le", "Lt")}  # annotated_types' bounds, as Field(ge=...) sets
    if annotation is bool:
        return "true or false"
    if get_origin(annotation) is Literal:
        values = [str(a) for a in get_args(annotation)]
        return values[0] if len(values) == 1 else "one of " + ", ".join(values)
    if annotation in (int, float):
        text = "a whole number" if annotation is int else "a number"
        low = ("[", bounds["Ge"]) if "Ge" in bounds else ("(", bounds["Gt"]) if "Gt" in bounds else None
        high = ("]", bounds["Le"]) if "Le" in bounds else (")", bounds["Lt"]) if "Lt" in bounds else None
        if low and high and annotation is int:
            text += f" in {low[1] + (low[0] == '(')}..{high[1] - (high[0] == ')')}"
        elif low and high:
            text += f" in {low[0]}{low[1]}, {high[1]}{high[0]}"
        elif low:
            text += f" {'>=' if low[0] == '[' else '>'} {low[1]}"
        return text
    if annotation is str:
        return "non-empty text" if metadata else "text"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a mapping with keys " + ", ".join(annotation.model_fields)
    if get_origin(annotation) is list or annotation is list:
        inner = get_args(annotation)
        return {int: "a list of whole numbers", str: "a list of strings"}.get(inner[0] if inner else None, "a list")
    return "a mapping"


def nested_schema(info: FieldInfo) -> type[BaseModel] | None:
    """The schema a field holds (``sampling: SamplingConfig | None`` -> SamplingConfig), or None."""
    return next((a for a in (info.annotation, *get_args(info.annotation))
                 if isinstance(a, type) and issubclass(a, BaseModel)), None)


def _field(schema: type[BaseModel] | None, loc: Sequence) -> FieldInfo | None:
    """The field a pydantic error location points at (through nested schemas)."""
    info = None
    for part in loc:
        fields = schema.model_fields if schema is not None else {}
        if part not in fields:
            return None
        info = fields[part]
        schema = nested_schema(info)
    return info


def _field_path(schema: type[BaseModel], loc: Sequence) -> tuple:
    """The leading parts of a pydantic error location that name fields (a union's member tags, "list[int]", and
    list positions are no keys)."""
    path: list = []
    for part in loc:
        if not isinstance(part, str) or _field(schema, [*path, part]) is None:
            break
        path.append(part)
    return tuple(path)


def _value_at(data: Any, path: Sequence) -> Any:
    for part in path:
        data = data.get(part) if isinstance(data, dict) else None
    return data


def check_typed(schema: type[BaseModel], node: Any, where: str, what: str) -> BaseModel:
    """``node`` (a config group, e.g. ``cfg.method``) as ``schema``; else a ConfigError for its first mistake:
    an unknown key (with the nearest declared one), a missing one, or a value of the wrong type or range (with
    what the key takes and an example). ``where`` is the group's prefix ("method"), ``what`` names it in
    messages ("a peft method")."""
    data = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        if first["type"] != "extra_forbidden":  # an extra key's location is already the keys to it
            first["loc"] = _field_path(schema, first["loc"])
            first["input"] = _value_at(data, first["loc"])
        key = ".".join(str(p) for p in first["loc"])
        parent = _field(schema, first["loc"][:-1]) if len(first["loc"]) > 1 else None
        if first["type"] == "extra_forbidden":
            owner = schema if parent is None else nested_schema(parent)
            prefix = ".".join([where, *map(str, first["loc"][:-1])])
            near = nearest_key(f"{where}.{key}", [f"{prefix}.{k}" for k in owner.model_fields])
            raise ConfigError(f"{where}.{key} is not a key of {what}, so nothing would read it",
                              f"did you mean {near}?" if near else
                              f"{prefix} takes: {', '.join(owner.model_fields)}") from None
        info = _field(schema, first["loc"])
        if first["type"] == "missing":
            raise ConfigError(f"{what} needs {where}.{key}", f"add {where}.{key}: "
                              f"{describe(info) if info else 'a value'} to its YAML") from None
        takes = describe(info) if info else first["msg"].lower()
        example = info.examples[0] if info and info.examples else info.default if info else None
        if info is not None and info.annotation is bool:
            fix = f"use {where}.{key}=true or {where}.{key}=false"
        elif example not in (None, PydanticUndefined):
            fix = f"use e.g. {where}.{key}={json.dumps(example) if isinstance(example, str) else example}"
        else:
            fix = f"give {takes}"
        raise ConfigError(f"{where}.{key}={first['input']!r} is not {takes}", fix) from None
