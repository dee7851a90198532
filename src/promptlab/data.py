"""Tasks: loading (local JSONL or the Hub), validation, seeded k-shot sampling, and the DataModule."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from promptlab.errors import ConfigError
from promptlab.prompts import build_messages, encode_prompt, template_fields

EVAL_SUBSET_SEED = 0  # eval_limit takes the same examples for every run, so runs stay comparable
DEV_SPLIT_SEED = 1234  # eval_split=dev: the same dev carve-out for every run


@dataclass
class Task:
    """A classification task with its prompt: everything a method needs to know about the data."""

    name: str
    text_columns: list[str]
    label_column: str
    label_names: list[str]
    verbalizer: list[str]
    template: str
    template_id: int
    system_prompt: str | None
    prompt_init_text: str = ""
    train: list[dict] = field(default_factory=list)
    eval: list[dict] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


def load_task(cfg: DictConfig, data_root: str | None) -> Task:
    """Load and validate a ``data/`` config's task; every check here runs before any model loads."""
    templates = list(cfg.templates)
    t = cfg.template
    if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < len(templates):
        raise ConfigError(
            f"data.template={cfg.template} but {cfg.name} has {len(templates)} templates (ids 0..{len(templates) - 1})",
            f"pick data.template between 0 and {len(templates) - 1}",
        )
    if len(cfg.verbalizer) != len(cfg.label_names):
        raise ConfigError(
            f"{cfg.name}: {len(cfg.label_names)} label_names but {len(cfg.verbalizer)} verbalizer words",
            "give one verbalizer word per label, in label-id order",
        )
    splits = {"train": cfg.train_split, "eval": cfg.eval_split}
    rows = {"train": _read_split(cfg, cfg.train_split, data_root)}
    if cfg.eval_split == "dev":  # for tuning: carve a fixed dev set out of train, disjoint from training
        order = np.random.default_rng(DEV_SPLIT_SEED).permutation(len(rows["train"]))
        n_dev = int(cfg.get("dev_size") or 200)
        rows["eval"] = [rows["train"][i] for i in order[:n_dev]]
        rows["train"] = [rows["train"][i] for i in sorted(order[n_dev:])]
    else:
        rows["eval"] = _read_split(cfg, cfg.eval_split, data_root)
    task = Task(
        name=cfg.name, text_columns=list(cfg.text_columns), label_column=cfg.label_column,
        label_names=list(cfg.label_names), verbalizer=list(cfg.verbalizer), template=templates[cfg.template],
        template_id=int(cfg.template), system_prompt=cfg.get("system_prompt"),
        prompt_init_text=cfg.get("prompt_init_text") or "",
    )
    for key, split in splits.items():
        validate_rows(rows[key], task, f"{cfg.name}/{split}")
    task.train, task.eval = rows["train"], rows["eval"]
    if cfg.get("eval_limit"):
        order = np.random.default_rng(EVAL_SUBSET_SEED).permutation(len(task.eval))[: cfg.eval_limit]
        task.eval = [task.eval[i] for i in sorted(order)]
    return task


def _read_split(cfg: DictConfig, split: str, data_root: str | None) -> list[dict]:
    import datasets

    datasets.disable_progress_bars()
    local = Path(data_root).expanduser() / cfg.local_dir if data_root else None
    source = cfg.get("source", "auto")
    if source == "local" or (source == "auto" and local is not None and local.is_dir()):
        if local is None:
            raise ConfigError(
                f"data.source=local for {cfg.name} but no data root is set",
                "set PROMPTLAB_DATA=/path/to/data (folders sst2/, rte/) or paths.data_root=...",
            )
        path = local / f"{split}.jsonl"
        if not path.is_file():
            raise ConfigError(
                f"missing data file {path}",
                f"put {split}.jsonl under {local}, or fix PROMPTLAB_DATA / paths.data_root",
            )
        try:
            ds = datasets.load_dataset("json", data_files={split: str(path)}, split=split)
        except Exception as err:  # the json builder raises many types for a malformed file
            raise ConfigError(f"cannot parse {path}: {err}", "make it JSON Lines: one object per line") from None
    else:
        from promptlab.models import hub_reachable

        if not hub_reachable():
            raise ConfigError(
                f"no local copy of {cfg.name} (data root: {data_root or 'unset'}) and the Hub cannot be reached "
                f"to fetch '{cfg.hub.path}'",
                "set PROMPTLAB_DATA to a folder holding sst2/ and rte/ JSONL files, or run with network",
            )
        ds = datasets.load_dataset(cfg.hub.path, cfg.hub.get("name"), split=split)
    return ds.to_list()


def validate_rows(rows: list[dict], task: Task, where: str) -> None:
    """Columns present, labels integral and in range: one clear error for the first problem found."""
    if not rows:
        raise ConfigError(f"{where} has no rows", "check the data file is not empty")
    needed = set(task.text_columns) | template_fields(task.template) | {task.label_column}
    missing = sorted(needed - set(rows[0]))
    if missing:
        raise ConfigError(
            f"{where} lacks column(s) {missing}; it has {sorted(rows[0])}",
            "fix data.text_columns / data.label_column / the template, or the data file",
        )
    text_fields = sorted((set(task.text_columns) | template_fields(task.template)) - {task.label_column})
    for i, row in enumerate(rows):
        empty = [c for c in text_fields if row.get(c) is None]
        if empty:
            raise ConfigError(f"{where} row {i}: no value for column(s) {empty}", "fix or drop the row")
        label = row.get(task.label_column)
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < task.num_classes:
            raise ConfigError(
                f"{where} row {i}: label {label!r} is not an integer id in 0..{task.num_classes - 1} "
                f"({', '.join(task.label_names)})",
                "fix the row, or data.label_names / data.verbalizer to match the data's label ids",
            )


def sample_k_shot(labels: list[int], k: int, num_classes: int, seed: int) -> list[int]:
    """Indices of exactly k examples per class, drawn with the seed, in a seeded shuffled order."""
    rng = np.random.default_rng(seed)
    if k < 1:
        raise ConfigError(
            f"k_shot={k} is not a positive number of examples per class",
            "use data.k_shot >= 1 (or data.k_shot=null to use data.train_size / everything)",
        )
    labels_arr = np.asarray(labels)
    chosen = []
    for c in range(num_classes):
        pool = np.flatnonzero(labels_arr == c)
        if k > len(pool):
            raise ConfigError(
                f"k_shot={k} but class {c} has only {len(pool)} training examples",
                f"use data.k_shot <= {len(pool)}",
            )
        chosen.extend(rng.choice(pool, size=k, replace=False).tolist())
    return rng.permutation(chosen).tolist()


def training_subset(task: Task, cfg: DictConfig, seed: int) -> list[dict]:
    """The training budget: ``k_shot`` per class, else ``train_size`` at random, else everything."""
    labels = [r[task.label_column] for r in task.train]
    if cfg.get("k_shot"):
        idx = sample_k_shot(labels, int(cfg.k_shot), task.num_classes, seed)
    elif cfg.get("train_size"):
        if cfg.train_size > len(labels):
            raise ConfigError(
                f"train_size={cfg.train_size} but {task.name} has {len(labels)} training examples",
                f"use data.train_size <= {len(labels)}",
            )
        idx = np.random.default_rng(seed).choice(len(labels), size=int(cfg.train_size), replace=False).tolist()
    else:
        idx = range(len(labels))
    return [task.train[i] for i in idx]


def sample_demos(pool: list[dict], task: Task, num_demos: int, seed: int) -> list[dict]:
    """Few-shot demonstrations from the training pool, as balanced over classes as num_demos allows."""
    if num_demos <= 0:
        return []
    if num_demos > len(pool):
        raise ConfigError(
            f"method.num_demos={num_demos} but the training pool has {len(pool)} examples",
            "lower method.num_demos or raise data.k_shot / data.train_size",
        )
    rng = np.random.default_rng(seed + 1)  # not the k-shot stream: demos vary independently of it
    by_class = [[r for r in pool if r[task.label_column] == c] for c in range(task.num_classes)]
    for group in by_class:
        rng.shuffle(group)
    demos, turn = [], 0
    while len(demos) < num_demos:  # round-robin over classes until enough
        group = by_class[turn % task.num_classes]
        taken = sum(1 for d in demos if d[task.label_column] == turn % task.num_classes)
        if taken < len(group):
            demos.append(group[taken])
        turn += 1
    return [demos[i] for i in rng.permutation(len(demos))]


class PromptDataModule(L.LightningDataModule):
    """Encodes train and eval examples into prompts once; batches are lists of token ids plus labels."""

    def __init__(
        self, task: Task, tokenizer, train_rows: list[dict], demos: list[dict],
        batch_size: int, eval_batch_size: int, seed: int, max_prompt_tokens: int = 2048,
    ):
        super().__init__()
        self.task, self.tokenizer, self.demos = task, tokenizer, demos
        self.train_rows = train_rows
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.max_prompt_tokens = max_prompt_tokens
        self.truncated = 0
        self.train_items: list[dict] = []
        self.eval_items: list[dict] = []

    def setup(self, stage: str | None = None) -> None:
        if not self.eval_items:
            self.train_items = [self._encode(r, i) for i, r in enumerate(self.train_rows)]
            self.eval_items = [self._encode(r, i) for i, r in enumerate(self.task.eval)]
            # Longest first: padding waste is smallest and an out-of-memory shows up on the first batch.
            self.eval_items.sort(key=lambda x: -len(x["prompt_ids"]))

    def _encode(self, row: dict, position: int) -> dict:
        t = self.task
        messages = build_messages(t.template, row, self.demos, t.verbalizer, t.label_column, t.system_prompt)
        ids = encode_prompt(self.tokenizer, messages)
        if len(ids) > self.max_prompt_tokens:  # keep the end: the query and the answer position
            ids = ids[-self.max_prompt_tokens :]
            self.truncated += 1
        return {"prompt_ids": ids, "label": row[t.label_column], "idx": row.get("idx", position)}

    @staticmethod
    def collate(items: list[dict]) -> dict:
        return {
            "prompt_ids": [x["prompt_ids"] for x in items],
            "labels": torch.tensor([x["label"] for x in items]),
            "idx": torch.tensor([x["idx"] for x in items]),
        }

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_items, batch_size=self.batch_size, shuffle=True, generator=gen, collate_fn=self.collate)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.eval_items, batch_size=self.eval_batch_size, shuffle=False, collate_fn=self.collate)


