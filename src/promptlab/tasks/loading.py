"""Reading a task's rows (local JSONL/CSV/TSV/Parquet through ``datasets``, else the Hub; ``data=custom``: the
user's own files, ``tasks.custom``), checking them, and cutting the splits a run uses: ``train`` (the budget is
drawn from it), ``dev`` (for selection) and ``eval``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from promptlab.config import optional_whole_number
from promptlab.errors import ConfigError
from promptlab.prompts import template_fields
from promptlab.tasks.spec import TaskSpec
from promptlab.vision import check_images, resolve_paths

EVAL_SUBSET_SEED = 0  # eval_limit takes the same examples for every run, so runs stay comparable
DEV_SPLIT_SEED = 1234  # the dev carve-out is drawn with [DEV_SPLIT_SEED, seed]: fixed per task and seed
MIN_DEV_ROWS = 8  # every run chooses on dev (a readout at least); on fewer rows a choice is a coin toss
# File extension -> the `datasets` builder that reads it (and its extra arguments).
BUILDERS = {".jsonl": ("json", {}), ".json": ("json", {}), ".csv": ("csv", {}),
            ".tsv": ("csv", {"delimiter": "\t"}), ".parquet": ("parquet", {})}


@dataclass
class Task:
    """A task spec with its rows: ``train`` (what the budget is drawn from), ``dev`` (selection) and ``eval``."""

    spec: TaskSpec
    train: list[dict] = field(default_factory=list)
    dev: list[dict] = field(default_factory=list)
    eval: list[dict] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # split -> "<file> sha256:<hash>" or "hub:<path>"
    # how each split was made (for the run record): rows, where dev came from, rows dropped as overlaps
    splits: dict[str, dict] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name


def load_task(spec: TaskSpec, data_root: str | None, seed: int = 0) -> Task:
    """Load and check the three splits every run of the task uses, whatever its method (all before any model
    loads):

    - ``eval``: the reported split (``eval_split``; ``eval_limit`` takes a fixed subset, the same for every seed);
    - ``dev``: where everything a run chooses is chosen: the data's own ``dev_split``, else ``dev_size`` rows
      carved out of train with the seed;
    - ``train``: the rest of the training split, which the budget is drawn from.

    Nothing chosen on or trained on is an eval example: train and dev rows whose input text (``input_text``) is
    also an eval row's are dropped, and train rows with a dev row's text too.
    """
    custom = spec.custom
    if custom is not None:  # data=custom: the user's file(s); eval carved out of data.path unless eval_path
        train, full_eval, own_dev = custom.read(spec)
    else:
        train = _checked(spec, spec.train_split, data_root)
        full_eval = _checked(spec, spec.eval_split, data_root)
        own_dev = _checked(spec, spec.dev_split, data_root) if spec.dev_split else None
    eval_texts = {input_text(spec, r) for r in full_eval}
    kept = [r for r in train if input_text(spec, r) not in eval_texts]
    dropped = {"train_in_eval": len(train) - len(kept), "dev_in_eval": 0}
    train = kept
    if own_dev is not None:
        kept = [r for r in own_dev if input_text(spec, r) not in eval_texts]
        dropped["dev_in_eval"] = len(own_dev) - len(kept)
        dev, dev_from = kept, custom.dev_path.name if custom else f"{spec.dev_split} split"
        if not dev:
            raise ConfigError(f"every row of {spec.name}/{dev_from} is also an {spec.eval_split} row",
                              "use other dev rows, or data.dev_path=null to carve dev out of data.path" if custom
                              else f"use another {spec.key('dev_split')}, or {spec.key('dev_split')}=null to carve "
                              "dev out of train")
    else:  # a seeded carve-out of train, disjoint from what the budget may draw
        dev_size = custom.dev_rows(spec, len(train), dropped["train_in_eval"]) if custom else spec.dev_size
        where = f"{spec.name}/{spec.train_split} has {len(train)} rows (after dropping those that are also eval rows)"
        if len(train) <= MIN_DEV_ROWS:
            raise ConfigError(f"{where}: too few to carve out a dev of {MIN_DEV_ROWS} rows and leave a training budget",
                              "add rows to the training split, or give the task a dev split of its own "
                              f"({spec.key('dev_split')}=<split>)")
        if not (isinstance(dev_size, int) and MIN_DEV_ROWS <= dev_size < len(train)):
            raise ConfigError(f"data.dev_size={dev_size!r} but {where}, and a choice made on fewer than "
                              f"{MIN_DEV_ROWS} dev rows is noise",
                              f"use {MIN_DEV_ROWS} <= {spec.key('dev_size')} < {len(train)}")
        order = np.random.default_rng([DEV_SPLIT_SEED, seed]).permutation(len(train))
        dev = [train[i] for i in sorted(order[:dev_size])]
        train = [train[i] for i in sorted(order[dev_size:])]
        dev_from = f"{dev_size} rows carved out of {custom.path.name if custom else spec.train_split} with the seed"
    if len(dev) < MIN_DEV_ROWS:
        fix = (f"put at least {MIN_DEV_ROWS} rows in {custom.dev_path.name}, or data.dev_path=null to carve dev out "
               "of data.path") if custom else (
            f"give dev at least {MIN_DEV_ROWS} rows: {spec.key('dev_size')}={MIN_DEV_ROWS} or more"
            + (f", or {spec.key('dev_split')}=null to carve it out of train" if spec.dev_split else ""))
        raise ConfigError(f"{spec.name}'s dev has {len(dev)} rows ({dev_from}; {dropped['dev_in_eval']} dropped as "
                          f"eval rows): every run chooses its readout (and a search its prompt, a sweep its trial) "
                          f"on dev, and {len(dev)} rows cannot tell choices apart", fix)
    dev_texts = {input_text(spec, r) for r in dev}
    kept = [r for r in train if input_text(spec, r) not in dev_texts]
    dropped["train_in_dev"] = len(train) - len(kept)
    train = kept
    ev = full_eval
    if optional_whole_number(spec.eval_limit, "data.eval_limit", 100) is not None:
        order = np.random.default_rng(EVAL_SUBSET_SEED).permutation(len(ev))[: spec.eval_limit]
        ev = [ev[i] for i in sorted(order)]
    used = sorted({spec.train_split, spec.eval_split, *([spec.dev_split] if spec.dev_split else [])})
    splits = {"train": {"split": spec.train_split, "rows": len(train)},
              "dev": {"rows": len(dev), "from": dev_from},
              "eval": {"split": spec.eval_split, "rows": len(ev), "of": len(full_eval)},
              "dropped_overlaps": dropped}
    if custom is not None:
        carved = custom.carved(len(train), len(dev) if own_dev is None else None, seed)
        if carved:
            splits["carved"] = carved  # e.g. "carved from reviews.csv (60 rows) ...": the record says so
        return Task(spec, train, dev, ev, custom.sources(), splits)
    return Task(spec, train, dev, ev, {split: data_source(spec, split, data_root) for split in used}, splits)


def input_text(spec: TaskSpec, row: dict) -> tuple[str, ...]:
    """What the model reads of a row (every column a template or an answer list shows), for overlap checks."""
    columns = sorted(spec.input_columns() - {spec.label_column} - template_fields(spec.target or ""))
    return tuple(str(row[c]).strip() for c in columns)


def data_source(spec: TaskSpec, split: str, data_root: str | None) -> str:
    """Where a split's rows came from, for the run record: the local file and its content hash, or the Hub."""
    path = _local_file(spec, split, data_root)
    if path is None:
        return f"hub:{spec.hub.get('path')}/{spec.hub.get('name')}:{split}"
    return file_source(path)


def file_source(path: Path) -> str:
    """``<file name> sha256:<first 16 hex digits>`` of a data file (an image folder: its files and their names)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        digest.update(str(file.relative_to(path) if path.is_dir() else "").encode())  # an imagefolder: names too
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return f"{path.name} sha256:{digest.hexdigest()[:16]}"


def _checked(spec: TaskSpec, split: str, data_root: str | None) -> list[dict]:
    rows = read_split(spec, split, data_root)
    validate_rows(rows, spec, f"{spec.name}/{split}")
    return prepare_rows(rows, spec)


def _local_file(spec: TaskSpec, split: str, data_root: str | None) -> Path | None:
    """The local file for a split, or None when the task should come from the Hub."""
    folder = Path(data_root).expanduser() / (spec.local_dir or spec.name) if data_root else None
    if spec.source == "hub" or (spec.source == "auto" and (folder is None or not folder.is_dir())):
        return None
    if folder is None:
        raise ConfigError(f"{spec.key('source')}=local for {spec.name} but no data root is set",
                          "set PROMPTLAB_DATA=/path/to/data or paths.data_root=...")
    found = [folder / f"{split}{ext}" for ext in BUILDERS if (folder / f"{split}{ext}").is_file()]
    if spec.image_column and (folder / split).is_dir():  # an imagefolder: <split>/<class name>/<image>
        found.append(folder / split)
    if not found:
        raise ConfigError(f"missing data file {folder / split}.{{{','.join(e[1:] for e in BUILDERS)}}}",
                          f"put the {split} split under {folder}, or fix PROMPTLAB_DATA / paths.data_root")
    return found[0]


def read_split(spec: TaskSpec, split: str, data_root: str | None) -> list[dict]:
    import datasets

    datasets.disable_progress_bars()
    path = _local_file(spec, split, data_root)
    if path is not None:
        if path.is_dir():
            return _imagefolder(path, spec.image_column)
        rows = read_file(path, split)
        if spec.image_column:
            resolve_paths(rows, spec.image_column, path.parent)
        return rows
    from promptlab.models import hub_reachable

    if not spec.hub.get("path"):
        raise ConfigError(f"no local copy of {spec.name} (data root: {data_root or 'unset'}) and no hub.path",
                          "set PROMPTLAB_DATA to the folder holding the task's files")
    if not hub_reachable():
        raise ConfigError(f"no local copy of {spec.name} (data root: {data_root or 'unset'}) and the Hub cannot be "
                          f"reached to fetch '{spec.hub['path']}'",
                          f"set PROMPTLAB_DATA to a folder holding {spec.local_dir or spec.name}/, or run with network")
    data = datasets.load_dataset(spec.hub["path"], spec.hub.get("name"), split=split)
    if spec.image_column in data.features:  # keep images as bytes until a processor reads them
        data = data.cast_column(spec.image_column, datasets.Image(decode=False))
    return data.to_list()


def read_file(path: Path, split: str = "train") -> list[dict]:
    """A data file's rows, read by the ``datasets`` builder its extension names (``BUILDERS``); a ConfigError
    of one line for a file it cannot read."""
    import datasets

    datasets.disable_progress_bars()
    builder, kwargs = BUILDERS[path.suffix]
    try:  # to_list() too: text that is not UTF-8 may only fail when it is decoded
        return datasets.load_dataset(builder, data_files={split: str(path)}, split=split, **kwargs).to_list()
    except Exception as err:  # the builders raise many types for a malformed file
        raise _unreadable(path, err) from None


def _imagefolder(path: Path, image_column: str) -> list[dict]:
    """A split stored as ``<split>/<class name>/<image file>``, read by ``datasets``' imagefolder builder: an
    ``image`` column (kept as file paths until a processor reads them) and a ``label`` column, the class folders'
    ids in sorted name order (the task's ``choices`` must list them in that order)."""
    import datasets

    try:
        data = datasets.load_dataset("imagefolder", data_dir=str(path), split="train")
    except Exception as err:  # e.g. a folder without images; the builder raises many types
        raise _unreadable(path, err) from None
    data = data.cast_column("image", datasets.Image(decode=False))
    if image_column != "image":
        data = data.rename_column("image", image_column)
    return data.to_list()


def _unreadable(path: Path, err: Exception) -> ConfigError:
    """One line for a file the builder could not read; the fix depends on whether the encoding is the cause."""
    chain, cause = [], err
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    if any(isinstance(e, UnicodeDecodeError) or "utf-8" in str(e).lower() or "utf8" in str(e).lower()
           for e in chain):
        return ConfigError(f"cannot read {path}: it is not UTF-8 text ({reason})",
                           f"re-save it as UTF-8, e.g. iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}")
    if path.is_dir():
        return ConfigError(f"cannot read the image folder {path}: {reason}",
                           "put the split's images in one folder per class: <split>/<class name>/<image>.png")
    found = _diagnose(path)
    if found:
        return ConfigError(f"cannot read {path}: {found[0]}", found[1])
    return ConfigError(f"cannot read {path}: {reason}",
                       f"make it valid {path.suffix[1:].upper()} with a header/keys per column")


def _diagnose(path: Path) -> tuple[str, str] | None:
    """(problem, fix) for the text-file faults whose ``datasets`` message names no line (an empty file says
    ``StopIteration``, a bad JSON line "an error occurred while generating the dataset"); None otherwise.
    Run only after the builder failed, so a good file is read once."""
    if path.suffix not in (".jsonl", ".json", ".csv", ".tsv"):
        return None
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    filled = [(i, line) for i, line in enumerate(lines, 1) if line.strip()]
    if not filled:
        return "the file is empty", f"put the split's rows in it, one per line (or remove it){_json_hint(path)}"
    if path.suffix in (".csv", ".tsv"):
        if len(filled) == 1:
            return (f"it has a header ({filled[0][1][:120]}) but no rows",
                    "add the split's rows under the header, one per line")
        return None
    if path.suffix == ".jsonl":
        for number, line in filled:
            try:
                json.loads(line)
            except json.JSONDecodeError as err:
                return (f"line {number} is not valid JSON ({err.msg}, column {err.colno}): {line[:80]}",
                        f"fix or delete line {number}: each line holds one JSON object{_json_hint(path)}")
    return None


def _json_hint(path: Path) -> str:
    return ', e.g. {"sentence": "...", "label": 0}' if path.suffix in (".jsonl", ".json") else ""


def validate_rows(rows: list[dict], spec: TaskSpec, where: str) -> None:
    """Columns present and non-null, labels integral and in range: one clear error for the first problem."""
    if not rows:
        raise ConfigError(f"{where} has no rows", "check the data file is not empty")
    needed = spec.input_columns()
    missing = sorted(needed - set(rows[0]))
    if missing:
        raise ConfigError(f"{where} lacks column(s) {missing}; it has {sorted(rows[0])}",
                          "fix the data config's templates / columns, or the data file")
    if spec.image_column:
        check_images(rows, spec.image_column, where)
    text_fields = sorted(needed - {spec.label_column})
    for i, row in enumerate(rows):
        empty = [c for c in text_fields if row.get(c) is None]
        if empty:
            raise ConfigError(f"{where} row {i}: no value for column(s) {empty}", "fix or drop the row")
        blank = [c for c in spec.choice_columns or [] if not str(row[c]).strip()]
        if blank:  # an empty answer has no tokens: it would score log-prob 0 and win every comparison
            raise ConfigError(f"{where} row {i}: empty answer in column(s) {blank}", "fix or drop the row")
        if spec.output_type == "choice":
            label, n = row.get(spec.label_column), spec.num_choices
            if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < n:
                raise ConfigError(
                    f"{where} row {i}: label {label!r} is not an integer id in 0..{n - 1} ({', '.join(spec.class_names)})",
                    "fix the row, or the data config's choices / label_names to match the data's label ids")


def _has_own_ids(rows: list[dict]) -> bool:
    """Whether the data's ``idx`` column can identify rows: an integer in every row, no two alike."""
    ids = [r.get("idx") for r in rows]
    return all(isinstance(i, int) and not isinstance(i, bool) for i in ids) and len(set(ids)) == len(ids)


def prepare_rows(rows: list[dict], spec: TaskSpec) -> list[dict]:
    """Give every row an integer ``idx``, its text values without surrounding whitespace (unless the task keeps
    them, ``strip_values: false``: to render a prompt exactly as another tool does) and, for generation, its
    ``references`` (the reference column, or the target, after the reference filters).

    ``idx`` is the data's own when every row has a distinct integer one, else every row's position: a mix
    (some strings, some repeats) would give two predictions the same idx, and paired comparisons match on it.
    """
    from promptlab.evaluation.filters import build_filters

    clean = build_filters(spec.reference_filters) if spec.output_type == "generate" else None
    own_ids = _has_own_ids(rows)
    texts = spec.input_columns() - {spec.label_column, spec.image_column} if spec.strip_values else set()
    out = []
    for i, row in enumerate(rows):
        row = {**row, "idx": row["idx"] if own_ids else i,
               **{c: row[c].strip() for c in texts if isinstance(row.get(c), str)}}
        if clean is not None:
            refs = row.get(spec.reference_column) if spec.reference_column else None
            refs = [spec.target_of(row)] if refs is None else refs if isinstance(refs, list) else [refs]
            row["references"] = [clean(str(r), None) for r in refs]
        out.append(row)
    return out
