"""Batches in a seeded order that changes every epoch, with a position that can be saved.

With ``group_by_length`` the epoch's shuffled order is cut into windows of that many batches,
each window is sorted by length and split into batches, and the batches are shuffled again:
samples of similar length share a batch, so little compute goes to padding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import Dataset

from mmit.data.collate import Batch, Collator


def split_batches(items: list, size: int, length: Callable | None = None) -> list[list]:
    """Consecutive batches of ``size``; longest first when ``length`` is given (stable for ties)."""
    if length is not None:
        items = sorted(items, key=lambda item: -length(item))
    return [items[k : k + size] for k in range(0, len(items), size)]


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
        rank: int = 0,
        world_size: int = 1,
    ):
        # Every process computes the same global batches of batch_size x world_size samples and
        # takes every world_size-th sample of each: together they see each sample once per epoch.
        self.dataset, self.batch_size, self.collate = dataset, batch_size * world_size, collate
        self.seed, self.shuffle, self.group_by_length = seed, shuffle, group_by_length
        self.rank, self.world_size = rank, world_size
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
                    batches += split_batches(
                        order[start : start + window], size, length=lambda i: len(self.dataset[i].input_ids)
                    )
                shuffled = torch.randperm(len(batches), generator=generator).tolist()
                batches = [batches[i] for i in shuffled]
            else:
                batches = split_batches(order, size)
            self._cached = (self.epoch, batches)
        return self._cached[1]

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Batch:
        if self.index >= len(self._batches()):
            self.epoch, self.index = self.epoch + 1, 0
        chosen = self._batches()[self.index][self.rank :: self.world_size]
        self.index += 1
        return self.collate([self.dataset[i] for i in chosen])

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


class StreamingBatches:
    """Batches tokenized on the fly from shards, for data too large to hold in memory.

    Each epoch streams the shards through :class:`ShardStream` (seeded shuffle buffer, split by
    rank), tokenizes, and groups windows of ``group_by_length`` batches by length. The
    position is (epoch, batches taken); restoring it replays the epoch's deterministic stream
    up to that batch, so no sample is repeated or skipped.
    """

    def __init__(
        self,
        urls: list[str],
        tokenize: Callable,
        batch_size: int,
        collate: Collator,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        group_by_length: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.urls, self.tokenize, self.batch_size, self.collate = urls, tokenize, batch_size, collate
        self.seed, self.shuffle_buffer, self.group_by_length = seed, shuffle_buffer, group_by_length
        self.rank, self.world_size = rank, world_size
        self.epoch, self.index = 0, 0
        self._batches: Iterator[list] | None = None

    def _epoch(self, epoch: int) -> Iterator[list]:
        from mmit.data.shards import ShardStream

        stream = ShardStream(self.urls, self.shuffle_buffer, self.seed, self.rank, self.world_size)
        stream.set_epoch(epoch)
        window_size = self.batch_size * max(self.group_by_length, 1)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        window: list = []
        for conv in stream:
            sample = self.tokenize(conv)  # None when the policy skips it
            if sample is not None:
                window.append(sample)
            if len(window) == window_size:
                yield from self._split(window, generator)
                window = []
        if window:
            yield from self._split(window, generator)

    def _split(self, window: list, generator: torch.Generator) -> Iterator[list]:
        length = (lambda s: len(s.input_ids)) if self.group_by_length else None
        batches = split_batches(window, self.batch_size, length)
        for i in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[i]

    def __iter__(self) -> StreamingBatches:
        return self

    def __next__(self) -> Batch:
        if self._batches is None:
            self._batches = self._epoch(self.epoch)
            for _ in range(self.index):  # replay up to the restored position
                next(self._batches)
        batch = next(self._batches, None)
        if batch is None:
            self.epoch, self.index = self.epoch + 1, 0
            self._batches = self._epoch(self.epoch)
            batch = next(self._batches)
        self.index += 1
        return self.collate(batch)

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._batches = None
