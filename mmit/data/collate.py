"""Tokenized samples -> a padded batch of tensors, with media decoded (per kind) and preprocessed."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from PIL import Image

from mmit.data.audio import load_audio
from mmit.data.samples import MediaRef
from mmit.data.tokenize import IGNORE_INDEX, TokenizedSample


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long, 0 on padding
    labels: torch.Tensor  # (B, T) long, IGNORE_INDEX where no loss; not shifted
    ids: list[str]
    # modality -> preprocessed items of the whole batch, in placeholder order; absent when none
    media: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.labels.to(device),
            self.ids,
            {k: v.to(device) for k, v in self.media.items()},
        )

    @property
    def num_label_tokens(self) -> int:
        """Tokens the loss is taken over (labels after the one shift)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())


def decode_image(ref: MediaRef) -> Image.Image:
    with Image.open(io.BytesIO(ref.read())) as image:
        return image.convert("RGB")


# How each modality's bytes become what its encoder's ``preprocess`` takes.
DECODERS: dict[str, Callable] = {"image": decode_image, "audio": load_audio}


def preprocess_media(refs: list[MediaRef], preprocess: dict[str, Callable]) -> dict[str, torch.Tensor]:
    """Decode and preprocess the media of a batch, grouped by modality in order."""
    out = {}
    for kind, fn in preprocess.items():
        if kind not in DECODERS:
            raise ValueError(f"no decoder for {kind} media (known: {sorted(DECODERS)})")
        items = [DECODERS[kind](r) for r in refs if r.kind == kind]
        if items:
            out[kind] = fn(items)
    return out


class Collator:
    """Right-pads to the longest sample (rounded up to ``pad_to_multiple_of``)."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8, preprocess: dict[str, Callable] | None = None):
        self.pad_token_id = pad_token_id
        self.multiple = pad_to_multiple_of
        self.preprocess = preprocess or {}

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
        media = preprocess_media([m for s in samples for m in s.media], self.preprocess)
        return Batch(input_ids, attention_mask, labels, [s.id for s in samples], media)
