"""Training and evaluation sets of tokenized samples: held in memory, or streamed from shards.

A dataset only tokenizes (through a ``Tokenizer``, which applies the length and error policies and
counts what they skip); ``mmit.data.loader.batch_stream`` turns one into batches.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch.utils.data import Dataset
from tqdm.auto import tqdm

from mmit.data.samples import Conversation, TokenizedSample

if TYPE_CHECKING:
    from mmit.data.tokenize import Tokenizer


class _PolicyCounts:
    """What the tokenization policy skipped and truncated for this data set."""

    name: str

    tokenize: Tokenizer

    @property
    def skipped(self) -> Counter:
        return self.tokenize.skipped

    @property
    def truncated(self) -> int:
        return self.tokenize.truncated


def conversations_fingerprint(conversations: list[Conversation]) -> str:
    """A short hash of the conversations: ids, turns and the media each names."""
    digest = hashlib.sha256()
    for conv in conversations:
        digest.update(f"{conv.id}\0".encode())
        for message in conv.messages:
            digest.update(f"{message.role}\0{message.content}\0".encode("utf-8", "surrogatepass"))
        for media in conv.media:
            digest.update(f"{media.kind}:{media.path or len(media.data or b'')}\0".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:16]


class TokenizedDataset(_PolicyCounts, Dataset):
    """Conversations tokenized once up front and held in memory."""

    def __init__(self, conversations: list[Conversation], tokenize: Tokenizer, name: str = "data"):
        self.name, self.tokenize = name, tokenize
        samples = (tokenize(c) for c in tqdm(conversations, desc=f"tokenize {name}", unit="sample", leave=False))
        self.samples: list[TokenizedSample] = [s for s in samples if s is not None]
        # What the samples were made of, before the chat template (some stamp today's date into it):
        # a resumed run checks that its data are the ones its checkpoint was trained on.
        self.fingerprint = conversations_fingerprint(conversations)
        if not self.samples:
            raise ValueError(f"{name}: no usable samples (skipped: {dict(tokenize.skipped)})")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> TokenizedSample:
        return self.samples[index]

    @property
    def num_label_tokens(self) -> int:
        return sum(s.num_labels for s in self.samples)

    def describe(self) -> str:
        return f"{len(self)} samples ({self.num_label_tokens} label tokens)"


@dataclass
class StreamedDataset(_PolicyCounts):
    """Training data streamed from shard folders and tokenized on the fly (nothing held in memory)."""

    urls: list[str]
    tokenize: Tokenizer
    shuffle_buffer: int = 1000
    name: str = "train"

    def describe(self) -> str:
        return f"streamed from {len(self.urls)} shards"
