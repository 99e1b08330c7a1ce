"""Batches in a seeded order that changes every epoch, with a position that can be saved.

A batch is planned as a list of sample indices, one padded row each. With ``group_by_length``
the epoch's shuffled order is cut into windows of that many batches, each window is sorted by
length and split into batches, and the batches are shuffled again: samples of similar length
share a batch, so little compute goes to padding. (Packing repacks these same batches:
``mmit.training.packing``.)

``batch_stream`` is the entry point: a dataset (``mmit.data.datasets``) and a collator in, this
process's endless stream of batches out.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset

from mmit.data.collate import Batch, Collator
from mmit.data.samples import IGNORE_INDEX

if TYPE_CHECKING:
    from mmit.data.datasets import StreamedDataset, TokenizedDataset


def split_batches(items: list, size: int, length: Callable | None = None) -> list[list]:
    """Consecutive batches of ``size``; longest first when ``length`` is given (stable for ties)."""
    if length is not None:
        items = sorted(items, key=lambda item: -length(item))
    return [items[k : k + size] for k in range(0, len(items), size)]


def shuffled(items: list, generator: torch.Generator) -> list:
    return [items[i] for i in torch.randperm(len(items), generator=generator).tolist()]


def without_loss(batch: Batch) -> Batch:
    """A stand-in for a process that a short global batch leaves without rows: it runs forward
    and backward with the others, so their collective calls stay in step, but every label is
    ignored, so it adds nothing to the loss, the gradients or the label count of the step."""
    return dataclasses.replace(batch, labels=torch.full_like(batch.labels, IGNORE_INDEX), ids=[])


# ours: exact (epoch, index) resume of length-grouped, rank-strided batches; torchdata is not installed, not measured
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
        # takes every world_size-th of each: together they see each sample once per epoch.
        self.dataset, self.batch_size, self.collate = dataset, batch_size * world_size, collate
        self.seed, self.shuffle, self.group_by_length = seed, shuffle, group_by_length
        self.rank, self.world_size = rank, world_size
        self.epoch, self.index = 0, 0
        self._cached: tuple[int, list[list[int]]] | None = None

    def _length(self, i: int) -> int:
        return len(self.dataset[i].input_ids)

    def _batches(self) -> list[list[int]]:
        """This epoch's global batches, each a list of sample indices."""
        if self._cached is None or self._cached[0] != self.epoch:
            n, size = len(self.dataset), self.batch_size
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=generator).tolist() if self.shuffle else list(range(n))
            if self.group_by_length and self.shuffle:
                window = size * self.group_by_length
                batches = []
                for start in range(0, n, window):
                    batches += split_batches(order[start : start + window], size, length=self._length)
                batches = shuffled(batches, generator)
            else:
                batches = split_batches(order, size)
            self._cached = (self.epoch, batches)
        return self._cached[1]

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Batch:
        if self.index >= len(self._batches()):
            self.epoch, self.index = self.epoch + 1, 0
        global_batch = self._batches()[self.index]
        mine = global_batch[self.rank :: self.world_size]
        self.index += 1
        if not mine:  # a short last batch has no sample for this process: it steps on a stand-in
            return without_loss(self.collate([self.dataset[global_batch[0]]]))
        return self.collate([self.dataset[i] for i in mine])

    def state(self) -> dict:
        state = {"epoch": self.epoch, "index": self.index}
        fingerprint = getattr(self.dataset, "fingerprint", None)  # a TokenizedDataset's (mmit.data.datasets)
        return state if fingerprint is None else {**state, "samples": len(self.dataset), "data": fingerprint}

    def load_state(self, state: dict) -> None:
        """The position of ``state``, on the data it was taken on: other data would resume at a
        position of another order (a checkpoint from before this check has no fingerprint to compare)."""
        now = (len(self.dataset), getattr(self.dataset, "fingerprint", None))
        if "data" in state and now[1] is not None and (state["samples"], state["data"]) != now:
            raise DataChangedError(
                f"the training data differ from those the checkpoint was trained on ({state['samples']} samples "
                f"then, {now[0]} now{', other contents' if state['samples'] == now[0] else ''})"
            )
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


class DataChangedError(ValueError):
    """A run resumed on training data other than those its checkpoint was trained on."""


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
        yield from shuffled(split_batches(window, self.batch_size, length), generator)

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


def batch_stream(
    dataset: TokenizedDataset | StreamedDataset,
    collate: Collator,
    batch_size: int,
    seed: int = 0,
    group_by_length: int = 0,
    shuffle: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> BatchStream | StreamingBatches:
    """This process's endless stream of ``dataset``'s batches.

    A dataset held in memory is batched by :class:`BatchStream`; one that names shard ``urls``
    (``StreamedDataset``) is read and tokenized on the fly by :class:`StreamingBatches`, always
    shuffled (by its shuffle buffer). :class:`Prefetch` prepares them ahead in a thread.
    """
    if hasattr(dataset, "urls"):
        if not shuffle:
            raise ValueError(f"{dataset.name}: a streamed dataset is always shuffled")
        # Each process streams its own shards (split by rank and loader worker).
        return StreamingBatches(
            dataset.urls,
            dataset.tokenize,
            batch_size,
            collate,
            seed,
            dataset.shuffle_buffer,
            group_by_length,
            rank,
            world_size,
        )
    return BatchStream(dataset, batch_size, collate, seed, shuffle, group_by_length, rank, world_size)


# ours: one thread, position of the last batch handed out; torchdata's StatefulDataLoader is not installed, not measured
class Prefetch:
    """Prepares the next ``depth`` batches in a background thread while the model trains.

    Decoding images and audio mostly releases the GIL, so it overlaps the step; with decode workers
    (``Collator.pool``) up to ``depth`` batches' media are decoded at once in other processes. Batches
    are handed out in order, media ready. ``state()`` is the position after the last batch handed
    out, not the last one prepared, so resume is exact.
    """

    _DONE = object()

    def __init__(self, stream: BatchStream | StreamingBatches, depth: int = 2):
        self.stream, self.depth = stream, depth
        self._state = stream.state()
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _fill(self) -> None:
        try:
            while not self._stop.is_set():
                item = (next(self.stream), self.stream.state())
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as error:  # handed to the consumer, raised there
            self._queue.put((self._DONE, error))

    def __iter__(self) -> Prefetch:
        return self

    def __next__(self) -> Batch:
        if self._thread is None:
            self._thread = threading.Thread(target=self._fill, name="mmit-prefetch", daemon=True)
            self._thread.start()
        batch, state = self._queue.get()
        if batch is self._DONE:
            raise state
        self._state = state
        return batch.ready() if isinstance(batch, Batch) else batch

    def state(self) -> dict:
        return self._state

    def load_state(self, state: dict) -> None:
        if self._thread is not None:
            raise RuntimeError("load the data position before the first batch")
        self.stream.load_state(state)
        self._state = self.stream.state()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
