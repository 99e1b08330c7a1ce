"""Tokenized samples -> a padded batch of tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmit.data.tokenize import IGNORE_INDEX, TokenizedSample


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long, 0 on padding
    labels: torch.Tensor  # (B, T) long, IGNORE_INDEX where no loss; not shifted
    ids: list[str]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device), self.ids)

    @property
    def num_label_tokens(self) -> int:
        """Tokens the loss is taken over (labels after the one shift)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())


class Collator:
    """Right-pads to the longest sample (rounded up to ``pad_to_multiple_of``)."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8):
        self.pad_token_id = pad_token_id
        self.multiple = pad_to_multiple_of

    def __call__(self, samples: list[TokenizedSample]) -> Batch:
        longest = max(len(s.input_ids) for s in samples)
        width = -(-longest // self.multiple) * self.multiple
        input_ids = torch.full((len(samples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
        for row, s in enumerate(samples):
            n = len(s.input_ids)
            input_ids[row, :n] = torch.tensor(s.input_ids)
            labels[row, :n] = torch.tensor(s.labels)
            attention_mask[row, :n] = 1
        return Batch(input_ids, attention_mask, labels, [s.id for s in samples])
