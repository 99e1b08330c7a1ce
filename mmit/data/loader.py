"""Batches in a seeded order that changes every epoch, with a position that can be saved."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from mmit.data.collate import Batch, Collator


class BatchStream:
    """An endless iterator of batches; ``state()`` / ``load_state()`` make resume exact."""

    def __init__(self, dataset: Dataset, batch_size: int, collate: Collator, seed: int = 0, shuffle: bool = True):
        self.dataset, self.batch_size, self.collate = dataset, batch_size, collate
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.index = 0, 0
        self._cached: tuple[int, list[int]] | None = None

    def _order(self) -> list[int]:
        if self._cached is None or self._cached[0] != self.epoch:
            n = len(self.dataset)
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=generator).tolist() if self.shuffle else list(range(n))
            self._cached = (self.epoch, order)
        return self._cached[1]

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Batch:
        order = self._order()
        if self.index * self.batch_size >= len(order):
            self.epoch, self.index = self.epoch + 1, 0
            order = self._order()
        chosen = order[self.index * self.batch_size : (self.index + 1) * self.batch_size]
        self.index += 1
        return self.collate([self.dataset[i] for i in chosen])

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
