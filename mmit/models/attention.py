"""``packed_sdpa``: SDPA that runs each sample of a packed row on its own.

transformers turns packed rows (position ids restarting at 0 per sample) into one dense
block-diagonal mask, and SDPA then computes every query against every key of the row and masks
the blocks between samples: attention work grows with the row, not with the samples. Without
flash-attention (CPU, or a GPU without flash-attn installed) this attention takes each sample's
span of the row (where the position restarts at 0) and runs causal SDPA on it alone, so its work
is the sum of the squared sample lengths, as flash-attention's variable-length kernel would do.
``MultimodalLM.forward`` passes the spans of packed rows (``packed_spans``: those ``Collator.pack``
recorded on the batch, so finding them needs no device sync); every other call (padded batches,
generation) is transformers' own SDPA.

Registered under the name ``packed_sdpa`` when this module is imported; ``mmit.models.llm``
loads LLMs with it by default (``llm.attn_implementation``).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "packed_sdpa"
# Implementations that keep the samples of a packed row apart: this one by the spans it is handed,
# the others by the block-diagonal mask (or varlen call) transformers derives from the positions.
PACKING = (NAME, "sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


def sample_spans(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per packed row, the (start, end) of each sample: its positions restart at 0 (as
    ``Collator.pack`` writes them; the padding at the end of a row is a span of its own)."""
    starts = position_ids == 0
    starts[:, 0] = True
    length = position_ids.shape[1]
    spans = []
    for row in starts.cpu():
        first = row.nonzero().flatten().tolist()
        spans.append(list(zip(first, [*first[1:], length])))
    return spans


def packed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    packed_spans: list[list[tuple[int, int]]] | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; (B, H, T, D) in, (B, T, H, D) out.

    ``packed_spans`` (from ``sample_spans``, passed by ``MultimodalLM.forward`` for packed rows)
    says where each sample lies; without it this is transformers' SDPA.
    """
    if packed_spans is None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    rows = []
    # Split, not slice: the backward of a split is one concatenation, while every slice's backward
    # would write its gradient into a zero tensor the size of the whole batch of rows.
    for r, (q, k, v) in enumerate(zip(*(t.split(1) for t in (query, key, value)))):
        sizes = [e - s for s, e in packed_spans[r]]
        # No mask: a span is one whole sample, causal on its own (SDPA's is_causal kernel).
        pieces = [
            sdpa_attention_forward(module, *span, None, **kwargs)[0]
            for span in zip(q.split(sizes, dim=2), k.split(sizes, dim=2), v.split(sizes, dim=2))
        ]
        rows.append(torch.cat(pieces, dim=1))
    return torch.cat(rows, dim=0), None


AttentionInterface.register(NAME, packed_sdpa_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # rows of one sequence still need their mask
