"""``data=custom``: a task made of one file of your own and a column mapping; every other key has a default.

    promptlab-train data=custom data.path=reviews.csv data.text=review data.label=sentiment

- ``path``: the rows: csv, tsv, jsonl, json or parquet (read by the ``datasets`` builders ``loading.BUILDERS``
  names), relative to the directory you run in. Without ``eval_path`` the file is split: **eval** is a fifth of
  its rows (at least 8), drawn with ``split_seed`` (0), the same rows for every run seed so runs compare;
  without ``dev_path``, **dev** is another fifth (at least 8, at most ``dev_size``), drawn with the run's seed as
  every task's dev carve-out is; **train** is the rest (at least 8 rows). The run record's ``splits.carved`` says
  how. ``eval_path`` / ``dev_path`` name files of their own instead.
- ``text``: the input column, or a list of them (null: a column named ``text``, else the one text column that is
  not the label). ``label``: the label column, for a choice task (null: a column named ``label``); ``target``: the
  column (or a template over columns, ``"{answer}"``) a generate task writes.
- ``output_type``: null is ``choice`` when there is a label, ``generate`` when ``target`` is given.
- Labels: strings are matched to the answer words: the train file's distinct labels, sorted, unless ``choices``
  lists them. Integer labels are ids into ``choices``, which must then be given (in id order).
- Defaults: ``name`` the file's stem (its folder's name when the stem is a split name such as ``train``); two
  templates for a choice task ("{text}\\n\\nAnswer with one of: a, b.", "Classify the following text as one of:
  a, b.\\n\\n{text}"), "{text}" for generation; ``prompt_init_text`` template 0's instruction; metrics
  ``[accuracy, macro_f1]`` (choice) or ``[chrf, exact_match]`` (generate, chrF primary: it gives partial credit
  to near answers, where exact match gives none); the whole training part as the budget (``k_shot`` and
  ``train_size`` null).

Everything here raises ``ConfigError`` (one line and a fix) and runs before any model loads.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from promptlab.errors import ConfigError
from promptlab.prompts import field_names
from promptlab.tasks.loading import (
    BUILDERS,
    MIN_DEV_ROWS,
    file_source,
    prepare_rows,
    read_file,
    validate_rows,
)
from promptlab.tasks.spec import INTERNAL, OUTPUT_TYPES, TaskSpec, dotted_keys, generation

DEFAULT_NAME = "custom"
# keys data=custom has beside TaskSpec's (conf/data/custom.yaml sets every one)
CUSTOM_KEYS = ("path", "eval_path", "dev_path", "text", "label", "split_seed")
# TaskSpec keys that mean nothing here, and what to use instead
NOT_HERE = {
    "source": "data.path names the file", "local_dir": "data.path names the file",
    "hub": "data.path names a local file; for a Hub dataset write a data YAML of your own (see data/sst2.yaml)",
    "train_split": "data.path is the training file", "dev_split": "use data.dev_path=<file>",
    "label_column": "use data.label=<column>", "choice_columns": "write a data YAML of your own (see data/copa.yaml)",
    "image_column": "write a data YAML of your own (see data/colours.yaml)",
    "clip_templates": "write a data YAML of your own (see data/colours.yaml)",
}
SPLIT_NAMES = {"train", "training", "dev", "valid", "validation", "val", "test", "eval", "data", "dataset", "all"}
SHARE = 0.2  # eval and dev each take a fifth of the file: 60/20/20
MIN_TRAIN_ROWS = 8  # what a carve-out must leave to train on (and to draw demonstrations from)
MAX_INFERRED_CHOICES = 50  # more distinct labels than this: likely not the label column
CARVE_SEED = 4321  # the eval carve-out is drawn with [CARVE_SEED, split_seed]
METRICS = {"choice": ["accuracy", "macro_f1"], "generate": ["chrf", "exact_match"]}


def task_name(path: Any) -> str:
    """``name`` of a ``data=custom`` task (the ``${custom_name:...}`` resolver of conf/data/custom.yaml): the
    file's stem, or its folder's name when the stem is a split name (``reviews/train.csv`` -> reviews)."""
    if not path:
        return DEFAULT_NAME
    file = Path(str(path)).expanduser()
    stem = file.stem
    if stem.lower() in SPLIT_NAMES:
        stem = file.absolute().parent.name or stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or DEFAULT_NAME


# Registered here (promptlab.tasks imports this module; every CLI does): name: ${custom_name:${.path}}
OmegaConf.register_new_resolver("custom_name", task_name, replace=True)


# ------------------------------------------------------------------------------------------------ files


@dataclass
class CustomFiles:
    """Where a custom task's rows are, and how its labels become ids."""

    path: Path
    eval_path: Path | None = None
    dev_path: Path | None = None
    split_seed: int = 0
    label: str | None = None  # the label column of a choice task
    choices: list[str] = field(default_factory=list)
    inferred: bool = True  # the choices are the train file's labels (else data.choices gave them)
    _rows: dict[Path, list[dict]] = field(default_factory=dict, repr=False)
    _carve: dict[str, int] = field(default_factory=dict, repr=False)

    @classmethod
    def from_config(cls, raw: dict) -> CustomFiles:
        seed = raw.get("split_seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"data.split_seed={seed!r} is not a whole number >= 0", "use data.split_seed=0")
        return cls(_file(raw.get("path"), "path"), _file(raw.get("eval_path"), "eval_path"),
                   _file(raw.get("dev_path"), "dev_path"), seed)

    def raw_rows(self, path: Path) -> list[dict]:
        """The file's rows as read (once per spec), copied: callers may change them."""
        if path not in self._rows:
            rows = read_file(path)
            if not rows:
                raise ConfigError(f"{path} has no rows", "put the task's rows in it, one per line")
            self._rows[path] = rows
        return [dict(r) for r in self._rows[path]]

    def rows(self, spec: TaskSpec, path: Path) -> list[dict]:
        """A file's rows, labels as ids, checked and prepared as every task's rows are."""
        rows = self.raw_rows(path)
        if spec.output_type == "choice":
            if self.label not in rows[0]:  # every file needs it, not only data.path
                raise ConfigError(f"{path.name} has no column {self.label!r} (data.label); its columns: "
                                  f"{', '.join(rows[0])}", f"give it the columns of {self.path.name}")
            for i, row in enumerate(rows):
                row[self.label] = self.label_id(row.get(self.label), f"{path.name} row {i}")
        validate_rows(rows, spec, path.name)
        return prepare_rows(rows, spec)

    def label_id(self, value: Any, where: str) -> int:
        """A label as an id into ``choices``: an answer word (its position), or an integer id given with choices."""
        if _missing(value):
            raise ConfigError(f"{where}: no label in column {self.label!r}", "label every row, or drop the row")
        if _is_id(value):
            if self.inferred:
                raise ConfigError(f"{where}: label {value!r} is an integer id, but the training file's labels are "
                                  f"words ({', '.join(self.choices)})", "use the same kind of label in every file")
            if not 0 <= int(value) < len(self.choices):
                raise ConfigError(f"{where}: label {int(value)} is not an id in 0..{len(self.choices) - 1} "
                                  f"({', '.join(self.choices)})", "fix the row, or list every answer in data.choices")
            return int(value)
        text = _label_text(value)
        if text in self.choices:
            return self.choices.index(text)
        fix = (f"label it with one of them, or list every label: data.choices=[{','.join([*self.choices, text])}]"
               if self.inferred else f"fix the row, or add {text!r} to data.choices")
        known = "the training file's labels" if self.inferred else "data.choices"
        raise ConfigError(f"{where}: label {text!r} is not one of {known} ({', '.join(self.choices)})", fix)

    def read(self, spec: TaskSpec) -> tuple[list[dict], list[dict], list[dict] | None]:
        """(train rows, eval rows, dev rows or None to carve dev out of train): eval is ``eval_path``'s rows, else
        a fifth of ``path``'s drawn with ``split_seed`` (the same for every run seed)."""
        rows = self.rows(spec, self.path)
        dev = self.rows(spec, self.dev_path) if self.dev_path else None
        n = len(rows)
        self._carve = {"file_rows": n, "dev": 0 if dev is not None else self.dev_share(spec, n)}
        if self.eval_path:
            return rows, self.rows(spec, self.eval_path), dev
        self._carve["eval"] = max(MIN_DEV_ROWS, round(SHARE * n))
        need = self._carve["eval"] + self._carve["dev"] + MIN_TRAIN_ROWS
        if n < need:
            parts = f"an eval split ({self._carve['eval']} rows)" + (
                f", a dev split ({self._carve['dev']})" if dev is None else "")
            raise ConfigError(f"{self.path.name} has {n} rows: too few to carve out {parts} and leave "
                              f"{MIN_TRAIN_ROWS} to train on",
                              f"add rows ({need} at least), or give eval rows in a file of their own: "
                              "data.eval_path=<file>" + (" (and data.dev_path=<file>)" if dev is None else ""))
        order = np.random.default_rng([CARVE_SEED, self.split_seed]).permutation(n)
        picked = set(order[: self._carve["eval"]].tolist())
        return [r for i, r in enumerate(rows) if i not in picked], [r for i, r in enumerate(rows) if i in picked], dev

    def dev_share(self, spec: TaskSpec, n: int) -> int:
        """Dev rows carved out of a file of ``n`` rows: a fifth, at least 8, at most ``data.dev_size``."""
        cap = spec.dev_size
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < MIN_DEV_ROWS:
            raise ConfigError(f"data.dev_size={cap!r}: a dev carved out of {self.path.name} takes a fifth of its rows, "
                              f"at most data.dev_size, and a choice made on fewer than {MIN_DEV_ROWS} rows is noise",
                              f"use data.dev_size={MIN_DEV_ROWS} or more (200 by default)")
        return min(cap, max(MIN_DEV_ROWS, round(SHARE * n)))

    def dev_rows(self, spec: TaskSpec, left: int, duplicates: int) -> int:
        """The dev rows to carve out of the ``left`` training rows (after ``duplicates`` rows whose text is also an
        eval row's were dropped); a ConfigError when too few would be left to train on."""
        size = self._carve.get("dev") or self.dev_share(spec, left)
        if left - size < MIN_TRAIN_ROWS:
            how = (f" after {self._carve['eval']} eval rows were carved out" if self._carve.get("eval") else "") + (
                f" and {duplicates} rows were dropped as copies of eval rows" if duplicates else "")
            raise ConfigError(f"{self.path.name} leaves {left} training rows{how}: too few for a dev of {size} rows "
                              f"and {MIN_TRAIN_ROWS} to train on",
                              "add rows" + (", remove the duplicate texts" if duplicates else "")
                              + ", or give dev rows in a file of their own: data.dev_path=<file>")
        return size

    def carved(self, train: int, dev: int | None, seed: int) -> str | None:
        """What the run record's ``splits.carved`` says: which splits were carved out of which file, and how."""
        parts = []
        if self._carve.get("eval"):
            parts.append(f"eval {self._carve['eval']} rows drawn with data.split_seed={self.split_seed} (the same "
                         "for every run seed)")
        if dev is not None:
            parts.append(f"dev {dev} rows drawn with seed {seed}")
        if not parts:
            return None
        return (f"carved from {self.path.name} ({self._carve['file_rows']} rows): {', '.join(parts)}, train the "
                f"other {train}" + (f"; eval is {self.eval_path.name}" if self.eval_path else "")
                + (f"; dev is {self.dev_path.name}" if self.dev_path else ""))

    def sources(self) -> dict[str, str]:
        """The record's data provenance: each split's file and its content hash."""
        out = {"train": file_source(self.path), "eval": file_source(self.eval_path or self.path)}
        if self.dev_path:
            out["dev"] = file_source(self.dev_path)
        return out


# ------------------------------------------------------------------------------------------------- spec


def custom_spec(raw: dict, where: str = "data") -> TaskSpec:
    """The TaskSpec of a ``data=custom`` config: the file read (once) to check the columns and find the
    answer words; every key left null filled with its default."""
    given = dotted_keys(raw)
    taskspec_keys = {f.name for f in fields(TaskSpec)} - INTERNAL
    for key in raw:
        if key in NOT_HERE and raw[key] not in (None, [], {}):
            raise ConfigError(f"{where}.{key} is not a key of data=custom", NOT_HERE[key])
    unknown = sorted(set(raw) - taskspec_keys - set(CUSTOM_KEYS))
    if unknown:
        keys = sorted((taskspec_keys - set(NOT_HERE)) | set(CUSTOM_KEYS))
        near = {k: difflib.get_close_matches(k, keys, n=1) for k in unknown}
        hint = "; ".join(f"{k}: did you mean {v[0]}?" for k, v in near.items() if v)
        raise ConfigError(f"data=custom has no key(s) {unknown}", (hint + "; " if hint else "") +
                          f"its keys: {', '.join(keys)}")
    files = CustomFiles.from_config(raw)
    rows = files.raw_rows(files.path)
    columns = list(rows[0])
    output_type, label, target = _task_kind(raw, columns, files.path)
    text = _text_columns(raw.get("text"), columns, files.path, {label, *field_names(target or "")}, rows)
    choices = None
    if output_type == "choice":
        choices, files.inferred = _choices(raw.get("choices"), [r.get(label) for r in rows], label, files.path)
        files.label, files.choices = label, choices
    templates = raw.get("templates") or default_templates(output_type, text, choices)
    if isinstance(templates, str):
        templates = [templates]
    metrics = raw.get("metrics") or METRICS[output_type]
    spec_raw = {k: v for k, v in raw.items() if k in taskspec_keys and v is not None and k not in NOT_HERE}
    spec_raw.update(
        name=raw.get("name") or task_name(files.path), output_type=output_type, templates=templates, source="local",
        train_split="train", eval_split=raw.get("eval_split") or "eval", dev_split="dev" if files.dev_path else None,
        label_column=label, choices=choices, target=target, metrics=metrics,
        primary_metric=raw.get("primary_metric") or (metrics[0] if isinstance(metrics, list) and metrics else ""),
        prompt_init_text=raw.get("prompt_init_text") or instruction(templates, output_type, choices),
        generation=generation(raw.get("generation"), where), custom=files, given=given, where=where)
    spec = TaskSpec(**spec_raw)
    spec.validate()
    return spec


def default_templates(output_type: str, text: list[str], choices: list[str] | None) -> list[str]:
    """The prompts of a task that names none: the input(s), and for a choice task the answer words."""
    shown = f"{{{text[0]}}}" if len(text) == 1 else "\n".join(
        f"{c.replace('_', ' ').capitalize()}: {{{c}}}" for c in text)
    if output_type != "choice":
        return [shown]
    words = ", ".join(c.replace("{", "{{").replace("}", "}}") for c in choices)
    return [f"{shown}\n\nAnswer with one of: {words}.", f"Classify the following text as one of: {words}.\n\n{shown}"]


def instruction(templates: list[str], output_type: str, choices: list[str] | None) -> str:
    """A soft prompt's initial text: template 0 without its inputs ("Answer with one of: a, b.")."""
    text = templates[0] if templates and isinstance(templates[0], str) else ""
    lines = [re.sub(r"\{[^{}]*\}", " ", line).replace("{{", "{").replace("}}", "}").strip()
             for line in text.splitlines()]
    lines = [line for line in lines if line and not re.fullmatch(r"[\w ]{0,40}:", line)]  # "Title:" of an input
    found = " ".join(" ".join(lines).split())
    if found:
        return found
    return f"Answer with one of: {', '.join(choices)}." if output_type == "choice" and choices else \
        "Read the input and write the answer."


# ---------------------------------------------------------------------------------------------- helpers


def _file(value: Any, key: str) -> Path | None:
    if value is None or value == "":
        if key == "path":
            raise ConfigError("data=custom needs your data file",
                              "add data.path=<file>, e.g. data.path=reviews.csv (csv, tsv, jsonl, json or parquet)")
        return None
    path = Path(str(value)).expanduser()
    shown = f"data.{key}={value}"
    if not path.exists():
        raise ConfigError(f"{shown}: no such file (looked in {path.absolute().parent})",
                          f"check the name, or give its full path: data.{key}=/path/to/{path.name}")
    if path.is_dir():
        raise ConfigError(f"{shown} is a folder, not a file", f"name one file in it: data.{key}={path}/<file>")
    if path.suffix not in BUILDERS:
        raise ConfigError(f"{shown}: cannot read {path.suffix or 'files without an extension'}",
                          f"use one of {', '.join(BUILDERS)} (save a spreadsheet as .csv)")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{shown}: the file is not readable", f"check its permissions: chmod u+r {path}")
    return path.absolute()


def _task_kind(raw: dict, columns: list[str], path: Path) -> tuple[str, str | None, str | None]:
    """(output type, label column, target template) from data.output_type / data.label / data.target."""
    label, target, kind = raw.get("label"), raw.get("target"), raw.get("output_type")
    if kind is not None and kind not in OUTPUT_TYPES:
        raise ConfigError(f"data.output_type={kind!r} is unknown",
                          f"use one of {', '.join(OUTPUT_TYPES)}, or null (choice when data.label is given)")
    if kind is None:
        if label is not None and target is not None:
            raise ConfigError(f"both data.label={label} and data.target={target} are given",
                              "give data.label for a choice task, or data.target for a generation task")
        kind = "generate" if target is not None else "choice"
    if kind == "choice":
        if target is not None:
            raise ConfigError(f"data.target={target} is for generation, and this task is a choice task",
                              "drop data.target, or set data.output_type=generate")
        if label is None:
            if "label" not in columns:
                raise ConfigError(f"say what to predict: {path.name} has no column named label (its columns: "
                                  f"{', '.join(columns)})", "set data.label=<column> (classification) or "
                                  "data.target=<column> (generation)")
            label = "label"
        _column(label, columns, path, "label")
        return kind, label, None
    if label is not None:
        raise ConfigError(f"data.label={label} is for choice tasks, and data.output_type=generate",
                          "use data.target=<column> for the text to write")
    if target is None:
        raise ConfigError(f"a generation task needs data.target: the column to write (its columns: "
                          f"{', '.join(columns)})", "set data.target=<column>")
    if not isinstance(target, str) or not target.strip():
        raise ConfigError(f"data.target={target!r} is not a column name", "set data.target=<column>")
    template = target if "{" in target else f"{{{target}}}"
    for name in field_names(template):
        _column(name, columns, path, "target")
    return kind, None, template


def _text_columns(value: Any, columns: list[str], path: Path, taken: set, rows: list[dict]) -> list[str]:
    """data.text as a list of columns: one name, a list, or null (``text``, else the one text column left)."""
    if value is None:
        if "text" in columns:
            return ["text"]
        texts = [c for c in columns if c not in taken and c != "idx" and isinstance(rows[0].get(c), str)]
        if len(texts) == 1:
            return texts
        raise ConfigError(f"which column is the input? {path.name} has columns {', '.join(columns)}",
                          "set data.text=<column>, or a list: data.text=[title,body]")
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"data.text={value!r} is not a column name or a list of them",
                          "use data.text=review, or data.text=[title,body]")
    for name in names:
        _column(name, columns, path, "text")
    return list(dict.fromkeys(names))


def _column(name: Any, columns: list[str], path: Path, key: str) -> None:
    if name in columns:
        return
    near = difflib.get_close_matches(str(name), columns, n=1)
    raise ConfigError(f"{path.name} has no column {name!r} (data.{key}); its columns: {', '.join(columns)}",
                      f"did you mean data.{key}={near[0]}?" if near else f"set data.{key}=<one of them>")


def _choices(given: Any, labels: list, column: str, path: Path) -> tuple[list[str], bool]:
    """(answer words, whether they were inferred): data.choices, else the train file's distinct labels, sorted."""
    if given is not None:
        if not isinstance(given, list) or len(given) < 2 or any(_missing(c) or isinstance(c, list | dict)
                                                                for c in given):
            raise ConfigError(f"data.choices={given!r} is not a list of two or more answer words",
                              "use e.g. data.choices=[negative,positive] (in label-id order for integer labels)")
        words = [str(c).strip() for c in given]
        if len(set(words)) != len(words):
            raise ConfigError(f"data.choices={words} names an answer twice", "list each answer once")
        return words, False
    for i, value in enumerate(labels):
        if _missing(value):
            raise ConfigError(f"{path.name} row {i}: no label in column {column!r}", "label every row, or drop the row")
    ids = sorted({int(v) for v in labels if _is_id(v)})
    if ids:
        example = ",".join(f"word{i}" for i in range(max(ids) + 1)) if max(ids) < 10 else "negative,positive,..."
        raise ConfigError(f"the labels in column {column!r} of {path.name} are integer ids "
                          f"({', '.join(map(str, ids[:6]))}{', ...' if len(ids) > 6 else ''}), so their answer words "
                          "are unknown", f"name each id's answer word, in id order: data.choices=[{example}]")
    words = sorted({_label_text(v) for v in labels})
    if len(words) < 2:
        raise ConfigError(f"column {column!r} of {path.name} has one label, {words[0]!r}: a choice task needs two "
                          "or more", "check data.label names the label column, or add rows with the other labels")
    if len(words) > MAX_INFERRED_CHOICES:
        raise ConfigError(f"column {column!r} of {path.name} has {len(words)} distinct values in {len(labels)} rows: "
                          "too many to be labels", "point data.label at the label column, or list the labels: "
                          "data.choices=[...]")
    return words, True


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and not value.strip())


def _is_id(value: Any) -> bool:
    """An integer label (a CSV column with a blank cell reads as floats: 1.0 is the id 1)."""
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and value.is_integer())


def _label_text(value: Any) -> str:
    return str(value).strip()
