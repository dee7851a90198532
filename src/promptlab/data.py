"""The LightningDataModule: rows encoded once into prompts; batches are lists of token ids plus labels."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import RandomSampler

from promptlab.prompts import Encoder


def collate(items: list[dict]) -> dict:
    """Keys of the items as lists (token id lists stay ragged: readouts pad them); labels as a tensor."""
    batch = {k: [x[k] for x in items] for k in items[0]}
    if "label" in batch:
        batch["labels"] = torch.tensor(batch.pop("label"))
    return batch


class PromptDataModule(L.LightningDataModule):
    """Training batches (shuffled with the seed) and evaluation batches (longest first)."""

    def __init__(self, encoder: Encoder, train_rows: list[dict], eval_rows: list[dict],
                 batch_size: int, eval_batch_size: int, seed: int, train_items: list[dict] | None = None):
        """``train_items``: already encoded training examples (a mixture's), used instead of ``train_rows``."""
        super().__init__()
        self.encoder, self.train_rows, self.eval_rows = encoder, train_rows, eval_rows
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
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
        sampler = RandomSampler(self.train_items, generator=torch.Generator().manual_seed(self.seed))
        return StatefulDataLoader(self.train_items, batch_size=self.batch_size, sampler=sampler,
                                  generator=torch.Generator().manual_seed(self.seed), collate_fn=collate)

    def predict_dataloader(self) -> DataLoader:
        return eval_loader(self.eval_items, self.eval_batch_size)


def eval_items(encoder: Encoder, rows: list[dict]) -> list[dict]:
    # Longest first: padding waste is smallest and an out-of-memory shows up on the first batch.
    return sorted((encoder.item(r, train=False) for r in rows), key=lambda x: -len(x["prompt_ids"]))


def eval_loader(items: list[dict], batch_size: int) -> DataLoader:
    return DataLoader(items, batch_size=batch_size, shuffle=False, collate_fn=collate)
