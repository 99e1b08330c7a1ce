"""The build's media checks: each media file is read and fully checked once, images decode
within the pixel limit (``check_image``); audio decodes, is complete and not silent, and long clips
follow the recipe's ``audio.long_clips`` policy (``mmit.data.audio``); videos decode to the end
they declare, within the pixel limit (``check_video``). With a worker pool, images are checked in
small batches while the annotations are still being read (:class:`ImageChecks`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from mmit.data.annotations import Annotation
from mmit.data.audio import AudioPolicy, CheckedAudio, prepare_audio
from mmit.data.media import DEFAULT_MAX_PIXELS, check_image
from mmit.data.samples import MediaRef, SampleError
from mmit.data.video import check_video

Checked = bytes | CheckedAudio | tuple[str, str]  # image bytes, audio to store, or (reason, message) if unusable


def read_media_file(
    path: str, kind: str = "image", audio: AudioPolicy | None = None, max_pixels: int | None = None
) -> Checked | None:
    """A media file read and fully decoded once: image bytes, audio after the long-clip policy,
    None for a good video (too large to hold: its bytes are read again when written), or
    (reason, message) if unusable (an image or video over ``max_pixels`` is refused from its header)."""
    try:
        data = Path(path).read_bytes()
        if kind == "audio":
            return prepare_audio(data, Path(path).suffix.lstrip(".").lower(), path, audio or AudioPolicy())
        if kind == "video":
            check_video(data, path, max_pixels or DEFAULT_MAX_PIXELS)
            return None
        check_image(data, path, max_pixels or DEFAULT_MAX_PIXELS)
    except OSError as err:
        return "missing_media", f"cannot read {path} ({err})"
    except SampleError as err:
        return err.reason, str(err)
    return data


def check_media_file(
    path: str, kind: str = "image", audio: AudioPolicy | None = None, max_pixels: int | None = None
) -> Checked | None:
    """What a full check of a media file found: None for a good image or video (its bytes are read
    again when written, rather than held), audio to store, or (reason, message)."""
    checked = read_media_file(path, kind, audio, max_pixels)
    return None if isinstance(checked, bytes) else checked


def check_images(paths: list[str], max_pixels: int | None = None) -> list[tuple[str, str] | None]:
    """Check each image (in a worker); None for a good one, else (reason, message)."""
    return [check_media_file(path, max_pixels=max_pixels) for path in paths]


def image_paths(annotations: Iterable[Annotation]) -> list[str]:
    """The image files the annotations name, sorted, each once."""
    return sorted({m.path for a in annotations for m in a.media if m.path and m.kind == "image"})


def with_audio_windows(ann: Annotation, media: dict[str, Checked | None]) -> Annotation:
    """An annotation whose long clips the policy split: one audio item per window, in order."""
    if not any(isinstance(media.get(m.path), CheckedAudio) and len(media[m.path].items) > 1 for m in ann.media):
        return ann
    refs = []
    for ref in ann.media:
        checked = media.get(ref.path)
        if isinstance(checked, CheckedAudio) and len(checked.items) > 1:
            # The windows keep the clip's path (for the split and the counts) and carry their checked bytes.
            refs += [MediaRef("audio", ext, path=ref.path, data=data) for ext, data in checked.items]
        else:
            refs.append(ref)
    return dataclasses.replace(ann, media=refs)


class ImageChecks:
    """Images checked by the worker pool in batches of ``batch_size``, queued as soon as an
    annotation names them, so the workers check them while the main process still reads the
    annotations. Chunks then re-read the good images' bytes instead of decoding them again. The
    small batches also keep every worker busy to the end, which whole chunks (``shard_size``
    annotations each) do not: 8 chunks on 2 workers left one idle for a tenth of the build."""

    def __init__(self, pool: ProcessPoolExecutor, batch_size: int = 16, max_pixels: int | None = None):
        self.pool, self.batch_size, self.max_pixels = pool, batch_size, max_pixels
        self.queued: set[str] = set()
        self.batch: list[str] = []
        self.futures: list[tuple[list[str], Future]] = []

    def add(self, paths: Iterable[str]) -> None:
        for path in paths:
            if path not in self.queued:
                self.queued.add(path)
                self.batch.append(path)
                if len(self.batch) == self.batch_size:
                    self.flush()

    def add_annotation(self, ann: Annotation) -> None:
        self.add(image_paths([ann]))

    def flush(self) -> None:
        if self.batch:
            self.futures.append((self.batch, self.pool.submit(check_images, self.batch, self.max_pixels)))
            self.batch = []

    def results(self) -> dict[str, tuple[str, str] | None]:
        """Every queued image's result, with a progress bar while they finish."""
        self.flush()
        results = {}
        bar = tqdm(total=len(self.queued), desc="check images", unit="image", leave=False)
        for paths, future in self.futures:
            results.update(zip(paths, future.result()))
            bar.update(len(paths))
        bar.close()
        return results
