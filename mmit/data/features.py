"""Frozen-encoder feature cache: each media item encoded once, stored in safetensors shards.

A cache belongs to one encoder and one preprocessing. Its manifest records the encoder's
fingerprint (its config, a hash of its weights, and a hash of what its preprocessing makes of a
fixed probe input); a cache made by anything else is refused. Items are keyed by the SHA-256 of
their encoded bytes, so an image used by several samples, splits or shard builds is encoded once.
The collator hands cached features to the model in place of decoded media (mmit.data.collate).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save
from torch import nn
from tqdm.auto import tqdm

from mmit.data.media import IMAGE_DECODING
from mmit.data.samples import BAD_JSON, MediaRef
from mmit.data.video import VIDEO_DECODING
from mmit.paths import atomic_write_bytes, atomic_write_text, is_plain_file_name

log = logging.getLogger(__name__)

FORMAT = 1
DTYPE = torch.bfloat16  # half the bytes of fp32; the projector reads them at its own precision
DECODING = {
    "image": IMAGE_DECODING,
    "video": VIDEO_DECODING,
}  # how the media became pixels: part of what the features depend on


class FeatureCacheMismatch(ValueError):
    """The cache was computed by a different encoder, preprocessing or media decoding than the model's."""


def probe_input(kind: str):
    """A fixed, non-square input that exercises resizing, cropping, resampling and normalising."""
    if kind == "image":
        y, x = np.mgrid[0:61, 0:97]
        pixels = np.stack([x * 255 // 96, y * 255 // 60, (x + y) % 256], axis=-1).astype(np.uint8)
        return Image.fromarray(pixels, "RGB")
    if kind == "audio":
        from mmit.data.audio import Waveform

        t = np.arange(int(22_050 * 1.3)) / 22_050
        return Waveform((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 22_050)
    raise ValueError(f"no probe input for {kind} media")


def _sha256_tensor(hasher, tensor: torch.Tensor) -> None:
    hasher.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def fingerprint(kind: str, encoder: nn.Module, config: dict) -> dict:
    """What identifies an encoder's features: config, weights and preprocessing, as hashes."""
    weights = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        weights.update(name.encode())
        _sha256_tensor(weights, tensor)
    preprocessed = hashlib.sha256()
    probe = encoder.probe_input() if hasattr(encoder, "probe_input") else probe_input(kind)  # video: its own clip
    _sha256_tensor(preprocessed, encoder.preprocess([probe]).float())
    return {
        "modality": kind,
        "decoding": DECODING.get(kind, ""),
        "encoder": config,
        "weights_sha256": weights.hexdigest(),
        "preprocess_sha256": preprocessed.hexdigest(),
        "tokens": int(encoder.num_tokens),
        "dim": int(encoder.output_dim),
    }


def fingerprint_id(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def _read_manifest(path: Path) -> dict:
    """A cache's manifest.json, checked: its format, fingerprint and shard files (plain names in the
    cache's folder); ValueError naming the file otherwise."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except BAD_JSON as err:
        raise ValueError(f"{path}: not a feature cache manifest ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else manifest
        raise ValueError(f"{path}: feature cache format {found!r}, expected {FORMAT}")
    shards = manifest.get("shards")
    if not isinstance(shards, dict) or not isinstance(manifest.get("fingerprint"), dict):
        raise ValueError(f"{path}: a feature cache manifest has 'shards' and 'fingerprint' objects")
    odd = [s for s in shards if not is_plain_file_name(s)]
    if odd:
        raise ValueError(f"{path}: shards must be files in the cache's folder, not {odd[0]!r}")
    return manifest


class FeatureStore:
    """A cache directory opened for reading: ``features(refs)`` -> (N, tokens, dim) in ref order."""

    def __init__(self, root: Path):
        self.root = Path(root)
        manifest_path = self.root / "manifest.json"
        if not manifest_path.exists():
            raise FileNotFoundError(f"{self.root}: no feature cache here (manifest.json missing)")
        self.manifest = _read_manifest(manifest_path)
        self._files = {name: safe_open(str(self.root / name), "pt") for name in self.manifest["shards"]}
        self._where = {key: name for name, f in self._files.items() for key in f.keys()}
        self.encoded_now = 0  # items this process added (build_feature_cache); the rest were reused

    def describe(self) -> dict:
        """What the run summary says of the cache: where, how many items, how many encoded just now."""
        return {"dir": str(self.root), "items": len(self), "encoded_now": self.encoded_now}

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, ref: MediaRef) -> bool:
        return ref.sha256 in self._where

    def check(self, expected: dict) -> None:
        """Refuse a cache made by another encoder, preprocessing or decoding, naming what differs."""
        found = self.manifest["fingerprint"]
        differ = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))
        if differ:
            details = "; ".join(f"{k}: cache {found.get(k)!r} vs model {expected.get(k)!r}" for k in differ)
            raise FeatureCacheMismatch(
                f"{self.root}: this feature cache was computed with a different encoder, preprocessing or decoding "
                f"({details}). Point feature_cache at another directory, or use feature_cache=auto."
            )

    def features(self, refs: list[MediaRef]) -> torch.Tensor:
        return torch.stack([self._files[self._where[r.sha256]].get_tensor(r.sha256) for r in refs])


def build_feature_cache(
    root: Path,
    kind: str,
    encoder: nn.Module,
    config: dict,
    refs: Iterable[MediaRef],
    decode: Callable,
    batch_size: int = 32,
    shard_items: int = 4096,
    device: torch.device | str = "cpu",
    expected: dict | None = None,
) -> FeatureStore:
    """Encode every item of ``refs`` not yet in the cache at ``root``; returns the store.
    ``expected``: the encoder's :func:`fingerprint`, where the caller has it already.

    Each shard is written whole (temporary name, then rename) and then added to the manifest,
    so an interrupted build keeps its finished shards and the next one encodes only the rest.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    expected = expected or fingerprint(kind, encoder, config)
    manifest_path = root / "manifest.json"
    if manifest_path.exists():
        store = FeatureStore(root)
        store.check(expected)
        manifest, have = store.manifest, set(store._where)
    else:
        manifest, have = {"format": FORMAT, "fingerprint": expected, "dtype": "bfloat16", "shards": {}}, set()
    todo: dict[str, MediaRef] = {}
    for ref in refs:
        if ref.kind == kind and ref.sha256 not in have:
            todo.setdefault(ref.sha256, ref)
    if todo:
        log.info("feature cache %s: encoding %d new %s items (%d cached)", root, len(todo), kind, len(have))
        encoder = encoder.to(device).eval()
        pending: dict[str, torch.Tensor] = {}

        def flush() -> None:
            name = f"features-{len(manifest['shards']):05d}.safetensors"
            atomic_write_bytes(root / name, save(pending, metadata={"modality": kind}))
            manifest["shards"][name] = len(pending)
            atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
            pending.clear()

        items = list(todo.items())
        with torch.no_grad(), tqdm(total=len(items), desc=f"encode {kind}", unit="item") as bar:
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                out = encoder(encoder.preprocess([decode(ref) for _, ref in chunk]).to(device))
                for (key, _), row in zip(chunk, out.to(DTYPE).cpu(), strict=True):
                    pending[key] = row.clone()
                if len(pending) >= shard_items:
                    flush()
                bar.update(len(chunk))
        if pending:
            flush()
    elif not manifest_path.exists():
        atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
    store = FeatureStore(root)
    store.encoded_now = len(todo)
    log.info(
        "feature cache %s: %d %s items (%d encoded now, %d reused), %d shards",
        root,
        len(store),
        kind,
        len(todo),
        len(store) - len(todo),
        len(store.manifest["shards"]),
    )
    return store
