"""The LightningDataModule: rows encoded once into prompts; batches are lists of token ids plus labels."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import RandomSampler

from promptlab.prompts import Encoder


def collate(items: list[dict]) -> dict:
    """Keys of the items as lists (token id lists stay ragged: readouts pad them); labels as a tensor."""
    batch = {k: [x[k] for x in items] for k in items[0]}
    if "label" in batch:
        batch["labels"] = torch.tensor(batch.pop("label"))
    return batch


def item_length(item: dict) -> int:
    """Tokens an item puts through the model (the longest answer for choices scored as sequences)."""
    answers = item.get("target_ids") or max(item.get("choice_ids") or [[]], key=len)
    return len(item.get("prompt_ids", ())) + len(answers)  # a CLIP item has pixels only: all alike


class LengthBuckets(Sampler[list[int]]):
    """Seeded, length-bucketed training batches: each epoch is a fresh permutation cut into groups of
    ``group`` batches; a group is sorted by length and cut into batches, and the batches are shuffled. Each
    example is in exactly one batch per epoch, batches hold similar lengths (little padding), and the order
    stays random. The same idea as transformers' ``LengthGroupedSampler``, which yields indices rather than
    batches and keeps no state; this one is resumable: an epoch's batches are a function of (seed, epoch),
    and ``state_dict`` records the epoch and how many of its batches were taken."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, group: int = 16):
        self.lengths, self.batch_size, self.seed, self.group = list(lengths), batch_size, seed, group
        self.epoch, self.taken = 0, 0

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        size = self.batch_size * self.group
        batches = []
        for start in range(0, len(order), size):
            chunk = sorted(order[start:start + size], key=lambda i: -self.lengths[i])
            batches += [chunk[j:j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches(self.epoch)
        while self.taken < len(batches):
            self.taken += 1
            yield batches[self.taken - 1]
        self.epoch, self.taken = self.epoch + 1, 0

    def __len__(self) -> int:
        size = self.batch_size * self.group
        full, rest = divmod(len(self.lengths), size)
        return full * self.group + math.ceil(rest / self.batch_size)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "taken": self.taken}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.taken = state["epoch"], state["taken"]


class PromptDataModule(L.LightningDataModule):
    """Training batches (shuffled with the seed, length-bucketed unless ``bucket`` is off) and evaluation
    batches (longest first)."""

    def __init__(self, encoder: Encoder, train_rows: list[dict], eval_rows: list[dict],
                 batch_size: int, eval_batch_size: int, seed: int, train_items: list[dict] | None = None,
                 bucket: bool = True):
        """``train_items``: already encoded training examples (a mixture's), used instead of ``train_rows``."""
        super().__init__()
        self.encoder, self.train_rows, self.eval_rows = encoder, train_rows, eval_rows
        self.batch_size, self.eval_batch_size, self.seed, self.bucket = batch_size, eval_batch_size, seed, bucket
        self.train_items: list[dict] = train_items or []
        self.eval_items: list[dict] = []

    def setup(self, stage: str | None = None) -> None:
        if not self.train_items:
            self.train_items = [self.encoder.item(r, train=True) for r in self.train_rows]
        if not self.eval_items:
            self.eval_items = eval_items(self.encoder, self.eval_rows)

    def train_dataloader(self) -> StatefulDataLoader:
        """Resumable: Lightning stores its position (order and batches taken) in every checkpoint, so a resumed
        run sees the batches an uninterrupted one would. The sampler has a generator of its own: a loader's
        generator also gives each epoch a base seed, and torchdata restores only the sampler's."""
        # Data-parallel ranks keep the sampler Lightning shards (DistributedSampler) for them.
        if self.bucket and not (self.trainer and self.trainer.world_size > 1):
            buckets = LengthBuckets([item_length(x) for x in self.train_items], self.batch_size, self.seed)
            return StatefulDataLoader(self.train_items, batch_sampler=buckets, collate_fn=collate)
        sampler = RandomSampler(self.train_items, generator=torch.Generator().manual_seed(self.seed))
        return StatefulDataLoader(self.train_items, batch_size=self.batch_size, sampler=sampler,
                                  generator=torch.Generator().manual_seed(self.seed), collate_fn=collate)

    def predict_dataloader(self) -> DataLoader:
        return eval_loader(self.eval_items, self.eval_batch_size)

    def val_dataloader(self) -> DataLoader:
        """Dev checks during training (``tuning.BestOnDev``): the same rows and batches as a prediction pass."""
        return eval_loader(self.eval_items, self.eval_batch_size)


def eval_items(encoder: Encoder, rows: list[dict]) -> list[dict]:
    # Longest first: padding waste is smallest and an out-of-memory shows up on the first batch.
    return sorted((encoder.item(r, train=False) for r in rows), key=lambda x: -len(x.get("prompt_ids", ())))


def eval_loader(items: list[dict], batch_size: int) -> DataLoader:
    return DataLoader(items, batch_size=batch_size, shuffle=False, collate_fn=collate)
