"""A task, as one ``conf/data/<name>.yaml``: where its rows are, how to prompt, what the answer is, how to score.

The ``output_type`` picks the readout, as in lm-evaluation-harness:
- ``choice``: rank scoring. The answer texts are either fixed words in label-id order (``choices``,
  e.g. ``[negative, positive]``) or per-example columns (``choice_columns``, e.g. COPA's ``choice1``,
  ``choice2``); ``label_column`` holds the correct index.
- ``generate``: greedy decoding. ``target`` (a template over the row, cleaned by ``target_replace``) is
  what trained methods learn to write and what few-shot demonstrations show; the metric compares the
  model's text, after ``filters``, with the references (``reference_column`` or the target, after
  ``reference_filters``).
An image task names its ``image_column`` (paths, relative to the data file, or image bytes) and shows the image
where a template names that column: ``"{image}What colour is the shape?"``. A vision-language model reads it
through its processor; a CLIP model scores the image against ``clip_templates`` filled with each answer word.
Every check here raises ``ConfigError`` and runs before any model loads; a fix that names a key the config lacks
says ``+data.<key>=...``, the form Hydra accepts for it (``TaskSpec.key``).

A config with a ``path`` key is ``data=custom`` (one file of your own and a column mapping): ``tasks.custom`` turns
it into a TaskSpec, filling every key it leaves out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from promptlab.errors import ConfigError
from promptlab.prompts import field_names, render, template_fields

if TYPE_CHECKING:
    from promptlab.tasks.custom import CustomFiles

OUTPUT_TYPES = ("choice", "generate")
REQUIRED = {  # keys without a default, and what to write for each
    "name": "name: my_task  (what runs, records and reports call the task)",
    "output_type": "output_type: choice  (or generate)",
    "templates": 'templates: ["{text}\\nAnswer with one of: negative, positive."]  (the prompt; {column} is a column)',
}
INTERNAL = {"custom", "given", "where"}  # fields set by code, never by a YAML


@dataclass
class Generation:
    """Decoding settings of a ``generate`` task (greedy; EOS always stops a sequence)."""

    max_new_tokens: int = 128
    until: list[str] = field(default_factory=list)  # stop strings: the text is cut before the first one


@dataclass
class TaskSpec:
    name: str
    output_type: str
    templates: list[str]
    template: int = 0
    system_prompt: str | None = None
    # The inputs alone, without an instruction: an instruction candidate (prompt search, meta-prompting) is put
    # before it. null: the columns of template 0, one per line ("{sentence}"; "Premise: {premise}" for several).
    input_template: str | None = None
    prompt_init_text: str = ""  # soft prompt initialisation text (prompt tuning, init=text)
    strip_values: bool = True  # strip each text value's surrounding whitespace when rows load
    image_column: str | None = None  # image tasks: the column holding each row's image
    # CLIP's hand-written prompts over each answer word, averaged (Radford et al. 2021 ensemble prompts this way)
    clip_templates: list[str] = field(default_factory=lambda: ["a photo of a {label}."])
    # where the rows are: local files under data_root/local_dir ({split}.jsonl|.json|.csv|.tsv|.parquet), else Hub
    source: str = "auto"
    local_dir: str | None = None
    hub: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    eval_split: str = "validation"
    dev_split: str | None = None  # a split of the data used for selection; null: carved out of train
    # choice tasks
    label_column: str | None = None
    choices: list[str] | None = None
    choice_columns: list[str] | None = None
    label_names: list[str] | None = None
    # the readout heading a row when nothing is chosen on dev (select_readout=false), and the tie-break when
    # readouts score alike on dev: raw (summed log-likelihood), per_token, per_char, per_byte, contextual, batch
    readout: str = "raw"
    # generate tasks
    target: str | None = None
    target_replace: list[list[str]] = field(default_factory=list)  # [[regex, replacement], ...]
    reference_column: str | None = None
    reference_filters: list[dict] = field(default_factory=list)
    generation: Generation = field(default_factory=Generation)
    # scoring
    filters: list[dict] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    primary_metric: str = ""
    # budgets
    k_shot: int | None = None
    train_size: int | None = None
    eval_limit: int | None = None
    dev_size: int = 200
    max_prompt_tokens: int = 1024
    max_target_tokens: int = 256
    # data=custom: the user's own file(s) (tasks.custom), read instead of data_root/local_dir or the Hub
    custom: CustomFiles | None = field(default=None, compare=False, repr=False)
    # the keys the config had (dotted), and where it sits: how a fix names a key (``key``); None: not known
    given: frozenset[str] | None = field(default=None, compare=False, repr=False)
    where: str = field(default="data", compare=False, repr=False)

    @classmethod
    def from_config(cls, cfg: DictConfig | dict, where: str = "data") -> TaskSpec:
        """The validated task of a data config (``where``: its place in the run's config, for messages)."""
        raw = _container(cfg, where)
        if "path" in raw:  # data=custom: your own file and a column mapping
            from promptlab.tasks.custom import custom_spec

            return custom_spec(raw, where)
        known = {f.name for f in fields(cls)} - INTERNAL
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"data config {raw.get('name')!r} has unknown key(s) {unknown}",
                              f"remove them; known keys: {', '.join(sorted(known))}")
        for key, example in REQUIRED.items():
            if raw.get(key) is None or (key == "templates" and raw[key] == []):
                raise ConfigError(f"{_which(raw, where)} has no {key}",
                                  f"add it to the YAML, e.g. {example}; or use data=custom for your own file")
        given = dotted_keys(raw)
        if isinstance(raw["templates"], str):  # one template: a list of one
            raw["templates"] = [raw["templates"]]
        raw["generation"] = generation(raw.get("generation"), where)
        spec = cls(**raw)
        spec.note_config(given, where)
        spec.validate()
        return spec

    def note_config(self, given: frozenset[str] | None, where: str = "data") -> None:
        """Remember the keys the config had and where it sits, for ``key``."""
        self.given, self.where = given, where

    def key(self, name: str) -> str:
        """Key ``name`` as a fix should tell the user to type it: ``data.dev_split`` when the task's config has it,
        ``+data.dev_split`` when it does not (Hydra refuses ``data.dev_split=...`` for a key the config lacks)."""
        return f"{'+' if self.given is not None and name not in self.given else ''}{self.where}.{name}"

    # ---- derived ------------------------------------------------------------------------------------

    @property
    def prompt_template(self) -> str:
        return self.templates[self.template]

    @property
    def num_choices(self) -> int | None:
        if self.choices is not None:
            return len(self.choices)
        return len(self.choice_columns) if self.choice_columns else None

    @property
    def class_names(self) -> list[str] | None:
        """Display name per label id (choice tasks)."""
        return self.label_names or self.choices or (
            [f"choice {i + 1}" for i in range(self.num_choices)] if self.num_choices else None)

    @property
    def chance(self) -> float | None:
        """Accuracy of uniform guessing; None for generation or non-accuracy primary metrics."""
        return 1 / self.num_choices if self.output_type == "choice" and self.primary_metric == "accuracy" else None

    @property
    def inputs_template(self) -> str:
        """``input_template``, or one derived from template 0's columns."""
        if self.input_template:
            return self.input_template
        names = field_names(self.templates[0])
        return f"{{{names[0]}}}" if len(names) == 1 else "\n".join(
            f"{n.replace('_', ' ').capitalize()}: {{{n}}}" for n in names)

    def input_columns(self) -> set[str]:
        """Columns every row must have (every template, choices, label or target)."""
        cols = set().union(*(template_fields(t) for t in self.templates), template_fields(self.inputs_template))
        if self.output_type == "choice":
            cols |= {self.label_column, *(self.choice_columns or [])}
        else:
            cols |= template_fields(self.target)
        return cols

    def choices_of(self, row: dict) -> list[str]:
        return list(self.choices) if self.choices is not None else [str(row[c]).strip() for c in self.choice_columns]

    def target_of(self, row: dict) -> str:
        """The text a trained model should write for ``row`` (and a demonstration's answer)."""
        if self.output_type == "choice":
            return self.choices_of(row)[row[self.label_column]]
        text = render(self.target, row)
        for pattern, repl in self.target_replace:
            text = re.sub(pattern, repl, text)
        return text.strip()

    # ---- validation ---------------------------------------------------------------------------------

    def validate(self) -> None:
        from promptlab.evaluation import filters as filters_mod
        from promptlab.evaluation import metrics as metrics_mod

        n = self.name
        if self.output_type not in OUTPUT_TYPES:
            raise ConfigError(f"{n}: output_type {self.output_type!r} is unknown",
                              f"use {self.key('output_type')}= one of {', '.join(OUTPUT_TYPES)}")
        if not self.templates:
            raise ConfigError(f"{n}: no prompt templates", f"give {self.key('templates')} a list of at least one template")
        t = self.template
        if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < len(self.templates):
            raise ConfigError(f"data.template={t!r} but {n} has {len(self.templates)} templates "
                              f"(ids 0..{len(self.templates) - 1})",
                              f"pick {self.key('template')} between 0 and {len(self.templates) - 1}")
        for i, text in enumerate(self.templates):  # prompt search may use any of them
            if not isinstance(text, str) or not template_fields(text):
                raise ConfigError(f"{n}: template {i} has no {{column}} placeholder, so every prompt is identical",
                                  "put the input column(s) in the template, e.g. {sentence}")
        self._validate_splits()
        if not isinstance(self.strip_values, bool):
            raise ConfigError(f"{n}: data.strip_values={self.strip_values!r} is not true or false",
                              f"use {self.key('strip_values')}=true (the default) or false")
        if self.image_column is not None:
            self._validate_images()
        if self.input_template is not None and not template_fields(str(self.input_template)):
            raise ConfigError(f"{n}: input_template {self.input_template!r} has no {{column}} placeholder",
                              "write the inputs as a template, e.g. '{sentence}', or use input_template: null")
        (self._validate_choice if self.output_type == "choice" else self._validate_generate)()
        if not self.metrics:
            raise ConfigError(f"{n}: no metrics", f"set {self.key('metrics')}, e.g. [accuracy] or [rougeL]")
        for name in self.metrics:
            metrics_mod.check_metric(name, self.output_type)
        if self.primary_metric not in self.metrics:
            raise ConfigError(f"{n}: primary_metric {self.primary_metric!r} is not in metrics {self.metrics}",
                              f"set {self.key('primary_metric')} to one of data.metrics")
        filters_mod.build_filters(self.filters, where="data.filters")
        filters_mod.build_filters(self.reference_filters, where="data.reference_filters")
        if self.output_type == "generate" and any(f.get("type") == "map_choice" for f in self.filters):
            raise ConfigError(f"{n}: the map_choice filter needs answer choices, and a generate task has none",
                              "drop it, or make the task output_type: choice")

    def _validate_splits(self) -> None:
        n = self.name
        if self.eval_split == "dev":
            raise ConfigError(f"{n}: data.eval_split=dev would report on the examples every choice is made on (dev "
                              "is always scored beside eval, and a sweep optimises it)",
                              f"report on a held-out split, e.g. {self.key('eval_split')}={TaskSpec.eval_split}")
        if self.dev_split in (self.train_split, self.eval_split):
            raise ConfigError(f"{n}: data.dev_split={self.dev_split} is also the "
                              f"{'training' if self.dev_split == self.train_split else 'evaluation'} split: choices "
                              "made on it would be made on examples the run trains on or reports",
                              f"use {self.key('dev_split')}=null (carve dev out of train) or a split of its own, e.g. dev32")
        if self.train_split == self.eval_split:
            raise ConfigError(f"{n}: data.train_split and data.eval_split are both {self.eval_split}",
                              "train and report on different splits")

    def _validate_images(self) -> None:
        n, col = self.name, self.image_column
        if not isinstance(col, str) or not col:
            raise ConfigError(f"{n}: data.image_column={col!r} is not a column name", "name the image column, e.g. image")
        for i, text in enumerate(self.templates):
            if col not in template_fields(text):
                raise ConfigError(f"{n}: template {i} does not show the image (no {{{col}}} in it)",
                                  f"put {{{col}}} where the image goes, e.g. '{{{col}}}What is shown?'")
        t = self.clip_templates
        if not isinstance(t, list) or not t or any(not isinstance(x, str) or field_names(x) != ["label"] for x in t):
            raise ConfigError(f"{n}: data.clip_templates={t!r} must be a list of texts with {{label}} as their only "
                              "placeholder", f"write them like {self.key('clip_templates')}=['a photo of a {{label}}.']")

    def _validate_choice(self) -> None:
        n = self.name
        if not self.label_column:
            raise ConfigError(f"{n}: a choice task needs label_column", f"set {self.key('label_column')}=<column>")
        if (self.choices is None) == (self.choice_columns is None):
            raise ConfigError(f"{n}: a choice task needs exactly one of choices (fixed answer words) or "
                              "choice_columns (per-example answers)", "set one of them, not both")
        if self.num_choices < 2:
            raise ConfigError(f"{n}: {self.num_choices} choice(s)", "give at least two answer choices")
        if self.choices is not None and any(not str(c).strip() for c in self.choices):
            raise ConfigError(f"{n}: an empty answer word in choices {self.choices}", "use non-empty words")
        from promptlab.evaluation.readouts import ORDER

        if self.readout not in ORDER:
            raise ConfigError(f"{n}: data.readout={self.readout!r} is unknown", f"use {self.key('readout')}= one of {', '.join(ORDER)}")
        if self.label_names is not None and len(self.label_names) != self.num_choices:
            raise ConfigError(f"{n}: {len(self.label_names)} label_names but {self.num_choices} choices",
                              "give one label name per choice, in label-id order")

    def _validate_generate(self) -> None:
        n, g = self.name, self.generation
        if not self.target:
            raise ConfigError(f"{n}: a generate task needs a target template, e.g. '{{summary}}'", f"set {self.key('target')}")
        if not isinstance(g.max_new_tokens, int) or isinstance(g.max_new_tokens, bool) or g.max_new_tokens < 1:
            raise ConfigError(f"data.generation.max_new_tokens={g.max_new_tokens!r} is not a positive integer",
                              f"use e.g. {self.key('generation.max_new_tokens')}=128")
        if any(not isinstance(s, str) or not s for s in g.until):
            raise ConfigError(f"data.generation.until={g.until!r} has an empty or non-string stop string",
                              "give non-empty strings")
        for pair in self.target_replace:
            if len(pair) != 2:
                raise ConfigError(f"{n}: target_replace entry {pair!r} is not [regex, replacement]",
                                  "write each entry as [pattern, replacement]")
            try:
                re.compile(pair[0])
            except re.error as err:
                raise ConfigError(f"{n}: target_replace pattern {pair[0]!r} does not compile: {err}",
                                  "fix the regular expression") from None
        if self.k_shot is not None:
            raise ConfigError(f"data.k_shot={self.k_shot} but {n} is a generate task: it has no classes",
                              f"use data.k_shot=null {self.key('train_size')}=N")


def generation(value: Any, where: str = "data") -> Generation:
    """``generation:`` as a ``Generation``; a ConfigError for anything but a mapping of its keys."""
    known = [f.name for f in fields(Generation)]
    if not isinstance(value or {}, dict) or set(value or {}) - set(known):
        raise ConfigError(f"{where}.generation={value!r} is not a mapping of {', '.join(known)}",
                          f"set its keys, e.g. {where}.generation.max_new_tokens=128")
    return Generation(**(value or {}))


def _container(cfg: DictConfig | dict, where: str) -> dict:
    """A data config as a plain dict (interpolations resolved); a ConfigError when it is not a mapping."""
    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} is {raw!r}, not a task's keys", f"choose a task: {where}=<name of a data YAML>")
    return dict(raw)


def dotted_keys(raw: dict, prefix: str = "") -> frozenset[str]:
    """Every key of a config, nested ones dotted (``generation.max_new_tokens``)."""
    keys: set[str] = set()
    for k, v in raw.items():
        keys.add(f"{prefix}{k}")
        if isinstance(v, dict):
            keys |= dotted_keys(v, f"{prefix}{k}.")
    return frozenset(keys)


def _which(raw: dict, where: str) -> str:
    """The data config a message is about: its YAML (``data=my_task``) when Hydra composed it, else its name."""
    from hydra.core.hydra_config import HydraConfig

    if where == "data" and HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("data")
        if choice:
            return f"the data config data={choice}"
    what = "the data config" if where == "data" else f"the config {where}"
    return f"{what} {raw['name']!r}" if raw.get("name") else what
