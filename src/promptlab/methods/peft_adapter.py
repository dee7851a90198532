"""Every PEFT method through one implementation: the method YAML's ``peft:`` block is a PEFT config (its
``_target_`` class and fields); promptlab fills only what a run knows (task type, the task's init text, the
tokenizer path). Prompt tuning, prefix tuning, P-tuning, LoRA, DoRA, IA3 and multitask prompt tuning ship as
YAMLs under ``conf/method/``; another PEFT method is one more YAML.

The backbone is frozen; what is stored per task is PEFT's adapter file, which can be far smaller than what
trains (P-tuning's prompt encoder trains, only the prompts it produced are saved).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from promptlab.config import is_whole
from promptlab.errors import ConfigError
from promptlab.methods import TrainedConfig, TrainedMethod, register

MAX_VIRTUAL_TOKENS = 1024
TEXT_INIT = "TEXT"  # PromptTuningInit.TEXT, for prompt tuning and multitask prompt tuning
TOKENIZER_PLACEHOLDER = "<the backbone's tokenizer>"  # validate() runs before the model (and its path) is known
# Sizes PEFT takes as ints but would build with silently when 0 (multitask prompt tuning's num_ranks=0 is an
# all-zero prompt) or check only once the model is loaded (LoRA's r)
POSITIVE = ("r", "num_ranks", "encoder_hidden_size", "encoder_num_layers")


def fits(value: Any, annotation: Any) -> bool:
    """Whether a config value has the type a PEFT config field declares. PEFT does not check: it takes any
    string as a true bool (``use_dora=no`` trains DoRA) and fails on a string number only once the model loads.
    Numbers are numbers (an int for a float, a float for an int: PEFT computes with both); ``None`` is left to
    PEFT; a type not named here (an enum, a class) is not checked."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if value is None or annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, a) for a in args if a is not type(None))
    if origin is typing.Literal:
        return value in args
    if annotation is bool:
        return isinstance(value, bool)
    if annotation in (int, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if annotation is list or origin is list:
        return isinstance(value, list) and all(fits(v, args[0]) for v in value) if args else isinstance(value, list)
    if annotation is dict or origin is dict:
        return isinstance(value, dict)
    return True


def type_name(annotation: Any) -> str:
    """``bool``, ``int | None``, ``list[str] | str | None``: how a field's type reads in a message."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(type_name(a) for a in args)}]"
    return "None" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def peft_config_classes() -> list[str]:
    """Names of PEFT's config classes (``peft.LoraConfig`` ...), for error messages."""
    import peft

    return sorted(f"peft.{n}" for n in dir(peft) if n.endswith("Config") and n != "PeftConfig"
                  and isinstance(getattr(peft, n), type) and issubclass(getattr(peft, n), peft.PeftConfig))


def config_class(target: Any) -> type:
    """The PEFT config class a ``_target_`` names, or a ConfigError listing the ones there are."""
    import peft
    from hydra.utils import get_class

    fix = f"use one of {', '.join(peft_config_classes())}"
    if not isinstance(target, str) or not target:
        raise ConfigError(f"method.peft._target_={target!r} does not name a PEFT config class", fix)
    try:
        cls = get_class(target)
    except Exception:
        raise ConfigError(f"method.peft._target_={target} is not a class that can be imported", fix) from None
    if not issubclass(cls, peft.PeftConfig):
        raise ConfigError(f"method.peft._target_={target} is not a PEFT config class", fix)
    return cls


class PeftMethodConfig(TrainedConfig):
    peft: dict[str, Any]  # the PEFT config: _target_ (its class) and that class's fields, checked against them


@register("peft")
class PeftMethod(TrainedMethod):
    """A PEFT adapter on a frozen backbone; ``num_tasks`` is how many tasks one adapter serves (multitask
    prompt tuning trains on a mixture of that many tasks; 1 otherwise)."""

    Config = PeftMethodConfig

    def fields(self) -> dict:
        block = self.cfg.get("peft")
        if not isinstance(block, DictConfig) or "_target_" not in block:
            raise ConfigError(f"method {self.cfg.name} has type peft but no peft: block with a _target_",
                              "add peft: {_target_: peft.LoraConfig, ...} to its YAML (see conf/method/lora.yaml)")
        return OmegaConf.to_container(block, resolve=True)

    def peft_config(self, init_text: str, tokenizer_path: str):
        """The PEFT config with the run's fields filled in; a ConfigError for a field the class does not take or a
        value it refuses."""
        kwargs = self.fields()
        cls = config_class(kwargs.pop("_target_"))
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        known = set(fields)
        for key, value in kwargs.items():
            if key not in known:
                near = difflib.get_close_matches(key, known, n=1)
                raise ConfigError(f"method.peft.{key} is not a field of {cls.__name__}",
                                  f"did you mean method.peft.{near[0]}?" if near else
                                  f"use its fields: {', '.join(sorted(k for k in known if not k.startswith('_')))}")
            annotation = hints.get(key, Any)
            if not fits(value, annotation):
                fix = (f"write method.peft.{key}=true or method.peft.{key}=false" if annotation is bool
                       else f"give {key} a value of type {type_name(annotation)}")
                raise ConfigError(f"method.peft.{key}={value!r} is not of type {type_name(annotation)} "
                                  f"({cls.__name__}.{key})", fix)
            if key in POSITIVE and value is not None and not is_whole(value, 1):
                default = fields[key].default
                raise ConfigError(f"method.peft.{key}={value!r} is not a whole number >= 1",
                                  f"use a positive size, e.g. method.peft.{key}={default if is_whole(default, 1) else 8}")
            default = fields[key].default
            # PEFT compares these fields with its enums and silently falls back for any other string
            if isinstance(default, enum.Enum) and value not in [m.value for m in type(default)]:
                raise ConfigError(f"method.peft.{key}={value!r} is not one of {cls.__name__}'s choices",
                                  f"use one of {', '.join(str(m.value) for m in type(default))}")
        n = kwargs.get("num_virtual_tokens")
        if "num_virtual_tokens" in known and not (is_whole(n, 1) and n <= MAX_VIRTUAL_TOKENS):
            raise ConfigError(f"method.peft.num_virtual_tokens={n!r} is not an integer in 1..{MAX_VIRTUAL_TOKENS}",
                              "use e.g. method.peft.num_virtual_tokens=20")
        for key, value in kwargs.items():  # PEFT would read it only once the model is loaded
            if key.endswith("state_dict_path") and value is not None and not Path(str(value)).is_file():
                raise ConfigError(f"method.peft.{key}={value} is not a file",
                                  "give a source run's checkpoint/adapter_model.safetensors")
        kwargs.setdefault("task_type", "CAUSAL_LM")
        if str(kwargs.get("prompt_tuning_init", "")).upper() == TEXT_INIT:
            kwargs["prompt_tuning_init_text"] = kwargs.get("prompt_tuning_init_text") or init_text
            if not kwargs["prompt_tuning_init_text"]:
                raise ConfigError("method.peft.prompt_tuning_init=TEXT but neither method.peft.prompt_tuning_init_text "
                                  "nor the task's prompt_init_text is set",
                                  "set method.peft.prompt_tuning_init_text=... or method.peft.prompt_tuning_init=RANDOM")
            kwargs.setdefault("tokenizer_name_or_path", tokenizer_path)
        if "num_tasks" in known:
            kwargs["num_tasks"] = self.num_tasks
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{cls.__name__} refuses method.peft: {err}",
                              "fix that field in the method's peft: block (PEFT's own message above)") from None

    def validate(self, task) -> None:
        super().validate(task)
        config = self.peft_config(task.prompt_init_text, TOKENIZER_PLACEHOLDER)
        if self.gradient_checkpointing and config.peft_type == "PREFIX_TUNING":
            # its virtual tokens are a key/value cache handed to every layer, which checkpointed layers cannot
            # take (PEFT's docs say so too)
            raise ConfigError(f"{self.cfg.name}: gradient checkpointing does not work with prefix tuning",
                              "set method.gradient_checkpointing=false (or use prompt tuning or LoRA)")

    def prepare(self, backbone, task):
        from peft import get_peft_model

        config = self.peft_config(task.prompt_init_text, backbone.path)
        try:
            model = get_peft_model(backbone.model, config)
        except ValueError as err:  # what PEFT checks only against the model: a config error all the same
            if "not found in the base model" in str(err):
                targets = config.target_modules
                raise ConfigError(
                    f"method.peft.target_modules={sorted(targets) if isinstance(targets, set) else targets} match no "
                    "module of the model", f"use names of its linear layers: {', '.join(linear_names(backbone.model))}"
                ) from None
            raise ConfigError(f"PEFT refuses method.peft for this model: {err}", "fix that field of method.peft") from None
        return model.train()  # from_pretrained returns eval mode; Lightning keeps submodules' modes

    def save(self, model, directory) -> None:
        model.save_pretrained(directory)

    def load(self, backbone, directory):
        from peft import PeftModel

        return PeftModel.from_pretrained(backbone.model, directory).eval()


def linear_names(model: torch.nn.Module) -> list[str]:
    """The distinct last name segments of a model's linear layers (what ``target_modules`` matches)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
