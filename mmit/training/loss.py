"""Next-token cross-entropy over labelled positions only.

The single label shift happens here. Only labelled positions go through the output head,
so the (tokens x vocabulary) logits are never built for prompts or padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmit.data.samples import IGNORE_INDEX


def next_token_loss_sum(
    hidden: torch.Tensor, labels: torch.Tensor, output_head: nn.Module, per_turn: bool = False
) -> torch.Tensor:
    """Summed cross-entropy of predicting ``labels[:, t+1]`` from ``hidden[:, t]``.

    Callers divide by the number of label tokens of the whole optimiser step (``per_turn``: by
    its answer turns, ``answer_turns``), so every label token (or every answer) weighs the same
    however the step is split into micro-batches. ``per_turn``: each token of an answer weighs
    1 / the answer's length, so a one-word answer counts as much as a long caption.
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    logits = output_head(hidden[:, :-1][keep])
    if not per_turn:
        return F.cross_entropy(logits.float(), targets[keep], reduction="sum")
    losses = F.cross_entropy(logits.float(), targets[keep], reduction="none")
    return (losses * turn_weights(keep)).sum()


def _turn_starts(keep: torch.Tensor) -> torch.Tensor:
    """Of the labelled positions (row-major), which begin an answer: a run of labels in a row."""
    before = torch.zeros_like(keep)
    before[:, 1:] = keep[:, :-1]
    return (keep & ~before)[keep]


def answer_turns(labels: torch.Tensor) -> int:
    """Answer turns in a batch: runs of labelled targets (packed samples are separated by their prompts)."""
    return int(_turn_starts(labels[:, 1:] != IGNORE_INDEX).sum())


def turn_weights(keep: torch.Tensor) -> torch.Tensor:
    """Per labelled position: 1 / the length of the answer it belongs to (the weights of an answer sum to 1)."""
    turn = torch.cumsum(_turn_starts(keep).long(), 0) - 1
    return 1.0 / torch.bincount(turn).float()[turn]


def next_token_loss_per_row(
    hidden: torch.Tensor, labels: torch.Tensor, output_head: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of a padded batch: (summed cross-entropy, label tokens), for per-sample scoring."""
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    logits = output_head(hidden[:, :-1][keep])
    losses = F.cross_entropy(logits.float(), targets[keep], reduction="none")
    rows = keep.nonzero()[:, 0]
    sums = torch.zeros(labels.shape[0], dtype=torch.float32, device=losses.device).index_add_(0, rows, losses)
    return sums, keep.sum(dim=1)
