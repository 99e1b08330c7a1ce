"""Next-token cross-entropy over labelled positions only.

The single label shift happens here. Only labelled positions go through the output head,
so the (tokens x vocabulary) logits are never built for prompts or padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmit.data.tokenize import IGNORE_INDEX


def next_token_loss_sum(hidden: torch.Tensor, labels: torch.Tensor, output_head: nn.Module) -> torch.Tensor:
    """Summed cross-entropy of predicting ``labels[:, t+1]`` from ``hidden[:, t]``.

    Callers divide by the number of label tokens of the whole optimiser step, so every
    label token weighs the same however the step is split into micro-batches.
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    logits = output_head(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum")


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
