"""Tokenized samples -> a batch of tensors, with media decoded (per kind) and preprocessed.

Samples are right-padded, one per row; ``mmit.training.packing`` may then lay a batch's samples
back to back in fewer rows (``Batch.position_ids`` and ``spans`` say where each starts).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field

import torch

from mmit.data.audio import load_audio
from mmit.data.features import FeatureStore
from mmit.data.media import decode_image
from mmit.data.samples import IGNORE_INDEX, MediaRef, TokenizedSample


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long, 0 on padding
    labels: torch.Tensor  # (B, T) long, IGNORE_INDEX where no loss; not shifted
    ids: list[str]
    # modality -> preprocessed items of the whole batch, in placeholder order; absent when none.
    # PendingMedia while a decode worker prepares them (``ready()`` waits for them).
    media: dict[str, torch.Tensor] | PendingMedia = field(default_factory=dict)
    # (B, T) long, per-sample positions of packed rows; None for padded rows (one sample each)
    position_ids: torch.Tensor | None = None
    # modality -> cached encoder outputs (N, tokens, dim), in place of ``media`` (mmit.data.features)
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    # per packed row, the (start, end) of each sample and of the padding: read by packed_sdpa, kept on
    # the host so that no device sync is needed to find them
    spans: list[list[tuple[int, int]]] | None = None

    def ready(self) -> Batch:
        """This batch with its media decoded: waits for a decode worker's result (and raises its error)."""
        if isinstance(self.media, PendingMedia):
            return dataclasses.replace(self, media=self.media.future.result())
        return self

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.labels.to(device),
            self.ids,
            {k: v.to(device) for k, v in self.media.items()},
            None if self.position_ids is None else self.position_ids.to(device),
            {k: v.to(device) for k, v in self.features.items()},
            self.spans,
        )

    @property
    def num_label_tokens(self) -> int:
        """Tokens the loss is taken over (labels after the one shift)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())


def video_ref(ref: MediaRef) -> MediaRef:
    """A clip as it is: the video encoder decodes it itself, with its own frame sampling."""
    return ref


# How each modality's bytes become what its encoder's ``preprocess`` takes. An image is refused from
# its header above the pixel limit (``data.max_pixels``), before any pixel is decoded.
DECODERS: dict[str, Callable] = {"image": decode_image, "audio": load_audio, "video": video_ref}


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


def cached_features(refs: list[MediaRef], features: dict[str, FeatureStore]) -> dict[str, torch.Tensor]:
    """Encoder outputs read from the feature caches, per modality whose items are all cached; a
    modality with any item missing is left out (it is decoded and encoded, every item alike)."""
    out = {}
    for kind, store in features.items():
        items = [r for r in refs if r.kind == kind]
        if items and all(r in store for r in items):
            out[kind] = store.features(items)
    return out


def media_inputs(
    refs: list[MediaRef], preprocess: dict[str, Callable], features: dict[str, FeatureStore]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(decoded and preprocessed media, cached features) of ``refs``, per modality: read from a cache
    where it holds them all, else decoded and preprocessed here."""
    live, cached = _split_media(refs, preprocess, features)
    return preprocess_media(refs, live), cached


def _split_media(
    refs: list[MediaRef], preprocess: dict[str, Callable], features: dict[str, FeatureStore]
) -> tuple[dict[str, Callable], dict[str, torch.Tensor]]:
    """(the preprocessing of each modality to decode, the cached features of the others)."""
    cached = cached_features(refs, features)
    return {kind: fn for kind, fn in preprocess.items() if kind not in cached}, cached


@dataclass(frozen=True)
class PendingMedia:
    """A batch's media being decoded and preprocessed in a worker process (``decode_pool``)."""

    future: Future


_WORKER_PREPROCESS: dict[str, Callable] = {}  # set in each decode worker when it starts


def _start_decode_worker(preprocess: dict[str, Callable]) -> None:
    torch.set_num_threads(1)  # several workers beside the training step: one core each at most
    _WORKER_PREPROCESS.update(preprocess)


def _decode_in_worker(refs: list[MediaRef], kinds: list[str]) -> dict[str, torch.Tensor]:
    return preprocess_media(refs, {kind: _WORKER_PREPROCESS[kind] for kind in kinds})


# ours: concurrent.futures' pool; torch's DataLoader workers would need the batch plan, not only its media, in them
def decode_pool(preprocess: dict[str, Callable], workers: int) -> ProcessPoolExecutor:
    """``workers`` processes that decode and preprocess media. They are forked, so they inherit the
    encoders' ``preprocess`` functions (bound to modules, never pickled) and the pixel limit. All are
    started here, from the calling thread, before any prefetch thread runs."""
    if "fork" not in multiprocessing.get_all_start_methods():  # Windows; the functions above cannot be pickled
        raise ValueError(
            f"trainer.decode_workers={workers} needs processes started by fork, which this platform lacks; "
            "set trainer.decode_workers=0 (media are then decoded in the prefetch thread)"
        )
    context = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_decode_worker, initargs=(preprocess,))
    pool.submit(int).result()  # a forking pool starts every worker at its first task
    return pool


class Collator:
    """Right-pads to the longest sample (rounded up to ``pad_to_multiple_of``).

    With feature caches, a modality whose items are all cached comes as encoder outputs
    (``Batch.features``) and is neither decoded nor encoded.
    """

    def __init__(
        self,
        pad_token_id: int,
        pad_to_multiple_of: int = 8,
        preprocess: dict[str, Callable] | None = None,
        features: dict[str, FeatureStore] | None = None,
        pool: ProcessPoolExecutor | None = None,
    ):
        self.pad_token_id = pad_token_id
        self.multiple = pad_to_multiple_of
        self.preprocess = preprocess or {}
        self.features = features or {}
        self.pool = pool  # decode workers: media come as PendingMedia (Batch.ready() waits for them)

    def with_pool(self, pool: ProcessPoolExecutor) -> Collator:
        """The same collator, decoding in ``pool``'s workers."""
        return Collator(self.pad_token_id, self.multiple, self.preprocess, self.features, pool)

    def media_inputs(self, samples: list[TokenizedSample]) -> tuple[dict, dict]:
        """(decoded and preprocessed media, cached features) of the samples' media, per modality."""
        refs = [m for s in samples for m in s.media]
        live, cached = _split_media(refs, self.preprocess, self.features)
        if self.pool is not None and any(r.kind in live for r in refs):
            return PendingMedia(self.pool.submit(_decode_in_worker, refs, sorted(live))), cached
        return preprocess_media(refs, live), cached

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
        media, features = self.media_inputs(samples)
        return Batch(input_ids, attention_mask, labels, [s.id for s in samples], media, features=features)


def collator_for(model, tokenizer, features: dict | None = None) -> Collator:
    """Samples -> batches for ``model`` (a ``MultimodalLM``): padded with the tokenizer's pad token,
    media preprocessed by each encoder, or read from its feature cache (``features``)."""
    preprocess = {kind: encoder.preprocess for kind, encoder in model.encoders.items()}
    return Collator(tokenizer.pad_token_id, preprocess=preprocess, features=features)
