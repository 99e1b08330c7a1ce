"""Packed training batches: each step's samples laid back to back in rows, not one per padded row.

The loader plans the same batches as for padded training (the same samples in every step, in the
same order), and each is repacked here: packing changes how much padding a step computes, never
what it learns. The loss and its normalisation (label tokens) are the padded batch's, up to float
rounding. The row width is chosen per batch (at most ``pack_length``) to leave the fewest padded
tokens; samples keep their order, so the batch's media (in placeholder order) stay in line.
"""

from __future__ import annotations

import logging

import torch

from mmit.data.collate import Batch
from mmit.data.samples import IGNORE_INDEX
from mmit.models import attention

log = logging.getLogger(__name__)

MULTIPLE = 8  # row widths are rounded up to this, as the collator pads
# With trainer.pack_length unset, a batch is packed only when that removes at least this share of
# its tokens: packed rows attend sample by sample, which on a CPU cost more than the few padded
# tokens of a length-grouped batch save (the main job: 3.28 s a step packed, 2.72 padded, with 7%
# of its batch tokens padding; docs/benchmarks.md).
AUTO_MIN_SAVING = 0.25


def _round_up(n: int) -> int:
    return -(-n // MULTIPLE) * MULTIPLE


def next_fit(lengths: list[int], cap: int) -> list[list[int]]:
    """Sample indices in order, each row filled until the next sample would pass ``cap`` tokens."""
    rows: list[list[int]] = []
    fill = cap + 1
    for i, n in enumerate(lengths):
        if fill + n > cap:
            rows.append([])
            fill = 0
        rows[-1].append(i)
        fill += n
    return rows


def row_layout(lengths: list[int], pack_length: int) -> tuple[list[list[int]], int]:
    """(rows of sample indices, row width) that leaves the fewest padded tokens (then fewest rows), rows at most
    ``pack_length`` tokens (or the longest sample) long; one sample per row is among the choices,
    so a packed batch is never larger than the padded one."""
    longest = max(lengths)
    limit = max(longest, pack_length)
    best = None
    for cap in range(_round_up(longest), _round_up(limit) + 1, MULTIPLE):
        cap = min(cap, limit)
        rows = next_fit(lengths, cap)
        width = _round_up(max(sum(lengths[i] for i in row) for row in rows))
        cost = (len(rows) * width, len(rows))  # fewest tokens, then fewest rows
        if best is None or cost < best[0]:
            best = (cost, rows, width)
    return best[1], best[2]


def pack_batch(batch: Batch, pack_length: int, pad_token_id: int, min_saving: float = 0.0) -> Batch:
    """The right-padded ``batch`` with its samples packed into rows; positions restart at 0 per sample.
    The batch stays as it is where packing would remove less than ``min_saving`` of its tokens."""
    lengths = batch.attention_mask.sum(dim=1).tolist()
    rows, width = row_layout(lengths, pack_length)
    if len(rows) * width > (1.0 - min_saving) * batch.input_ids.numel():
        return batch
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    spans: list[list[tuple[int, int]]] = []
    for r, row in enumerate(rows):
        start, row_spans = 0, []
        for i in row:
            n, end = lengths[i], start + lengths[i]
            input_ids[r, start:end] = batch.input_ids[i, :n]
            labels[r, start:end] = batch.labels[i, :n]
            labels[r, start] = IGNORE_INDEX  # it would be predicted from the previous sample's last token
            attention_mask[r, start:end] = 1
            position_ids[r, start:end] = torch.arange(n)
            row_spans.append((start, end))
            start = end
        if start < width:  # the padding is a span of its own
            position_ids[r, start:] = torch.arange(width - start)
            row_spans.append((start, width))
        spans.append(row_spans)
    return Batch(input_ids, attention_mask, labels, batch.ids, batch.media, position_ids, batch.features, spans)


class PackedBatches:
    """A batch stream (``BatchStream`` or ``StreamingBatches``) with every batch packed; its
    position is the stream's, so resume is unchanged."""

    def __init__(self, stream, pack_length: int, pad_token_id: int, min_saving: float = 0.0):
        self.stream, self.pack_length, self.pad_token_id = stream, pack_length, pad_token_id
        self.min_saving = min_saving

    def __iter__(self) -> PackedBatches:
        return self

    def __next__(self) -> Batch:
        return pack_batch(next(self.stream), self.pack_length, self.pad_token_id, self.min_saving)

    def state(self) -> dict:
        return self.stream.state()

    def load_state(self, state: dict) -> None:
        self.stream.load_state(state)


def why_not_packed(model, compile_model: bool) -> str | None:
    """Why this model cannot train on packed rows, or None when it can."""
    if model.soft_prompt is not None:
        return "prompt tuning prepends its prompt to each row, so a row cannot hold several samples"
    implementation = model.base_llm.get_decoder().config._attn_implementation
    if implementation not in attention.PACKING:
        return f"attention {implementation!r} is not known to keep packed samples apart (packing: {attention.PACKING})"
    if compile_model:
        return "trainer.compile=true: every new layout of samples in rows would be compiled anew"
    return None


def min_saving_for(pack_length: int | None) -> float:
    """The share of a batch's tokens packing must remove before a batch is packed: unset
    (``trainer.pack_length=null``), packing applies where it pays (AUTO_MIN_SAVING); set, to every batch."""
    return AUTO_MIN_SAVING if pack_length is None else 0.0


def resolve_pack_length(pack_length: int | None, max_length: int, model, compile_model: bool) -> int:
    """``trainer.pack_length`` for this run: null packs rows of up to ``data.max_length`` tokens
    where the model can (else padded rows, with one log line saying why), batch by batch where that
    saves ``AUTO_MIN_SAVING`` of the tokens; a number is used as given (0: padded) for every batch;
    a number the model cannot honour is an error."""
    reason = why_not_packed(model, compile_model)
    if pack_length is None:
        if reason:
            log.info("batches padded, not packed: %s", reason)
            return 0
        log.info(
            "batches packed where that removes at least %d%% of their tokens: each step's samples in rows of up "
            "to %d tokens (data.max_length)",
            round(100 * AUTO_MIN_SAVING),
            max_length,
        )
        return max_length
    if pack_length and reason:
        raise ValueError(f"trainer.pack_length={pack_length}: {reason}; set trainer.pack_length=0")
    return pack_length
