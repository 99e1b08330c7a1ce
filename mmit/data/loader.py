"""Batches in a seeded order that changes every epoch, with a position that can be saved.

With ``group_by_length`` the epoch's shuffled order is cut into windows of that many batches,
each window is sorted by length and split into batches, and the batches are shuffled again:
samples of similar length share a batch, so little compute goes to padding.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from mmit.data.collate import Batch, Collator


class BatchStream:
    """An endless iterator of batches; ``state()`` / ``load_state()`` make resume exact."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        collate: Collator,
        seed: int = 0,
        shuffle: bool = True,
        group_by_length: int = 0,
    ):
        self.dataset, self.batch_size, self.collate = dataset, batch_size, collate
        self.seed, self.shuffle, self.group_by_length = seed, shuffle, group_by_length
        self.epoch, self.index = 0, 0
        self._cached: tuple[int, list[list[int]]] | None = None

    def _batches(self) -> list[list[int]]:
        if self._cached is None or self._cached[0] != self.epoch:
            n, size = len(self.dataset), self.batch_size
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=generator).tolist() if self.shuffle else list(range(n))
            if self.group_by_length and self.shuffle:
                window = size * self.group_by_length
                batches = []
                for start in range(0, n, window):
                    chunk = sorted(order[start : start + window], key=lambda i: -len(self.dataset[i].input_ids))
                    batches += [chunk[k : k + size] for k in range(0, len(chunk), size)]
                shuffled = torch.randperm(len(batches), generator=generator).tolist()
                batches = [batches[i] for i in shuffled]
            else:
                batches = [order[k : k + size] for k in range(0, n, size)]
            self._cached = (self.epoch, batches)
        return self._cached[1]

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Batch:
        if self.index >= len(self._batches()):
            self.epoch, self.index = self.epoch + 1, 0
        chosen = self._batches()[self.index]
        self.index += 1
        return self.collate([self.dataset[i] for i in chosen])

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
