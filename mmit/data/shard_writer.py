"""One shard written from a build's conversations: samples grouped by the media they share, each
file's checked bytes stored (optionally resized), bad samples following ``on_error``, and a stats
sidecar that marks the shard finished. The tar format itself is ``mmit.data.shards``."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mmit.data.audio import AudioPolicy, CheckedAudio, prepare_audio
from mmit.data.media import DEFAULT_MAX_PIXELS, check_image, resize_image
from mmit.data.media_checks import Checked
from mmit.data.recipes import BuildError
from mmit.data.samples import Conversation, MediaRef, SampleError, check_placeholders, check_unicode
from mmit.data.shards import TarWriter, encode_sample
from mmit.data.video import check_video
from mmit.paths import atomic_write_text


@dataclass
class Storage:
    """How samples are stored: the bad-input policy, resizing, audio, and media sharing."""

    on_error: str = "raise"
    resize_max: int | None = None  # longest image side, or None for the original bytes
    audio: AudioPolicy = dataclasses.field(default_factory=AudioPolicy)
    share_media: bool = True  # consecutive conversations about the same media files share one shard sample
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are refused from their header, never decoded


def shard_done(path: Path) -> bool:
    """A shard is finished once its stats sidecar exists (written after the tar is renamed in)."""
    return path.exists() and path.with_suffix(".json").exists()


def shard_samples(convs: list[Conversation], share_media: bool = True) -> Iterator[list[Conversation]]:
    """Conversations grouped into shard samples: with ``share_media``, consecutive ones about the same
    media files (a caption, VQA turns, held-out wordings) form one sample, so each file is stored
    once. Conversations without media stay one per sample."""
    group: list[Conversation] = []
    for conv in convs:
        if group and share_media and conv.media and _media_key(conv) == _media_key(group[0]):
            group.append(conv)
            continue
        if group:
            yield group
        group = [conv]
    if group:
        yield group


def _media_key(conv: Conversation) -> tuple:
    return tuple((m.kind, m.ext, m.path, m.data) for m in conv.media)


def stored_media(conv: Conversation, media: dict[str, Checked | None], storage: Storage) -> tuple[list[MediaRef], dict]:
    """The media bytes a sample stores (checked, optionally resized), and the long-clip tag of each
    clip; raises SampleError if a file is unusable. ``media`` holds what the checks found per path."""
    stored, long_clips = [], {}
    for ref in conv.media:
        ext = ref.ext
        if ref.path and ref.data is not None:  # a window of a split clip: checked with its clip
            data, long_clips[ref.path] = ref.data, media[ref.path].long
        else:
            data = media.get(ref.path) if ref.path else ref.data
        if isinstance(data, tuple):  # the check found this file unusable
            raise SampleError(data[0], f"sample {conv.id}: {data[1]}")
        if data is None:  # a good file (checked, its bytes not held) or of a kind not checked: read it now
            try:
                data = ref.read()
            except OSError as err:
                raise SampleError("missing_media", f"sample {conv.id}: cannot read {ref.path} ({err})") from err
        elif ref.kind == "image" and ref.path is None:  # in-memory bytes were not checked yet
            check_image(data, f"sample {conv.id} (in-memory {ref.ext})", storage.max_pixels)
        elif ref.kind == "video" and ref.path is None:  # in-memory video: decoded to its end once
            check_video(data, f"sample {conv.id} (in-memory {ref.ext})", storage.max_pixels)
        elif ref.kind == "audio" and ref.path is None:  # in-memory audio: checked; a long clip is truncated
            where = f"sample {conv.id} (in-memory {ref.ext})"
            policy = storage.audio
            if policy.long_clips == "split":  # too late to add placeholders: keep the first window
                policy = dataclasses.replace(policy, long_clips="truncate")
            data = prepare_audio(data, ref.ext, where, policy)
        if isinstance(data, CheckedAudio):
            long_clips[ref.path or id(ref)] = data.long
            ext, data = data.items[0]
        if ref.kind == "image" and storage.resize_max:
            data, ext = resize_image(data, storage.resize_max, ref.path or f"sample {conv.id}", storage.max_pixels)
        stored.append(type(ref)(ref.kind, ext, data=data))
    return stored, long_clips


def write_shard(path: Path, convs: list[Conversation], media: dict[str, Checked | None], storage: Storage) -> dict:
    """Write one shard and its stats sidecar. Conversations are grouped into shard samples
    (:func:`shard_samples`) and each sample's media stored as it is written, so the shard is never
    built in memory; ``media`` holds what the checks found per path (None: a good file, read now).
    ``samples`` counts conversations, ``records`` the shard samples that hold them."""
    stats = {
        "samples": 0,
        "records": 0,
        "bytes": 0,
        "by_task": Counter(),
        "by_template": Counter(),
        "by_source": Counter(),
        "skipped": Counter(),
        "long_audio": Counter(),
    }
    with TarWriter(path) as tar:
        for group in shard_samples(convs, storage.share_media):
            try:
                stored, long_clips = stored_media(group[0], media, storage)
            except SampleError as err:
                if storage.on_error == "raise":
                    raise BuildError(str(err)) from err
                stats["skipped"][err.reason] += len(group)
                continue
            fitting = []
            for conv in group:  # what readers will check: one placeholder per media file, UTF-8 text
                try:
                    fitting.append(check_placeholders(check_unicode(conv)))
                except SampleError as err:
                    if storage.on_error == "raise":
                        raise BuildError(str(err)) from err
                    stats["skipped"][err.reason] += 1
            if not fitting:
                continue
            group = fitting
            for name, data in encode_sample(f"{path.stem}-{stats['records']:06d}", group, stored):
                tar.add(name, data)
            stats["records"] += 1
            stats["samples"] += len(group)
            for conv in group:
                stats["by_task"].update(conv.meta.get("tasks", []))
                stats["by_template"].update(conv.meta.get("templates", []))
                stats["by_source"][conv.meta.get("source", "")] += 1
                stats["long_audio"].update(tag for tag in long_clips.values() if tag)
    stats["bytes"] = path.stat().st_size
    text = json.dumps(stats, sort_keys=True)
    atomic_write_text(path.with_suffix(".json"), text)
    return json.loads(text)
