"""Video bytes -> a fixed number of RGB frames, with checks that say what is wrong.

A video slot has a fixed token count, so every clip gives exactly ``VideoSampling.frames``
frames: at the centres of equal segments (uniform), or one every ``1 / fps`` seconds from the
start, thinned or repeated to that count. Each sample time takes the frame on screen at that
time. The dataset build runs ``check_video`` once per file: files that are no video, have no
video stream, no frames, frames over the pixel limit, or stop short of the length they declare
become ``SampleError`` (reasons ``bad_video``, ``no_video_stream``, ``no_frames``,
``too_many_pixels``, ``truncated_video``), which the build's ``on_error`` policy raises or counts.

Frames come upright: a clip's display rotation (phones record portrait video as landscape frames
with a rotation to show them by) is applied to every frame kept.

Decoding is PyAV's: it is well kept and its wheels bundle FFmpeg (H.264, VP9, MPEG-4, AAC), so
no system FFmpeg is needed; torchvision's video API is deprecated and torchcodec needs a system
FFmpeg.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mmit.data.media import pixel_limit
from mmit.data.samples import MediaRef, SampleError
from mmit.paths import umask

if TYPE_CHECKING:
    import av
    from PIL import Image

VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "avi", "mov")


@dataclass(frozen=True)
class VideoSampling:
    """Which frames a clip gives (a recipe's or an encoder's ``video:`` block)."""

    frames: int = 8  # frames per clip, always exactly this many (the token count per clip is fixed)
    fps: float | None = None  # None: uniform over the clip; else one frame every 1/fps s from the start

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"video frames must be >= 1, not {self.frames}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"video fps must be > 0 or None, not {self.fps}")


@dataclass
class Clip:
    """The frames a clip gives for one video slot."""

    frames: list[Image.Image]  # RGB, exactly sampling.frames
    timestamps: list[float]  # seconds from the clip's start, the presentation time of each frame
    indices: list[int]  # index of each frame among the decoded frames (0-based)
    duration: float  # seconds


@dataclass(frozen=True)
class VideoInfo:
    """What a full check of a video found."""

    frames: int  # decoded
    duration: float  # seconds
    width: int
    height: int
    fps: float
    has_audio: bool


def _targets(duration: Fraction, sampling: VideoSampling) -> list[Fraction]:
    """The sample times, exact: frame times are rationals (pts x time base), so a sample time that
    falls on a frame's start picks that frame, not the one before by a rounding error."""
    count = sampling.frames
    if sampling.fps is None:  # the centres of `count` equal segments
        return [duration * Fraction(2 * i + 1, 2 * count) for i in range(count)]
    step = 1 / Fraction(sampling.fps)
    available = max(1, math.ceil(duration / step))  # the times i * step before the end
    if available > count:  # thinned evenly, keeping the first and the last
        steps = [0] if count == 1 else [round(Fraction(i * (available - 1), count - 1)) for i in range(count)]
    else:  # the last repeated
        steps = list(range(available)) + [available - 1] * (count - available)
    return [i * step for i in steps]


def sample_times(duration: float, sampling: VideoSampling) -> list[float]:
    """The times (seconds from the start) at which a clip of ``duration`` seconds is sampled."""
    return [float(t) for t in _targets(Fraction(duration), sampling)]


@dataclass
class _Decoded:
    """A clip decoded through :func:`_decode`: what the file says, what decoded, and the frames
    chosen at the sample times (``(index, seconds from the start)`` per time, images by index)."""

    frames: int
    duration: Fraction  # declared, else measured
    width: int
    height: int
    fps: float
    has_audio: bool
    picks: list[tuple[int, Fraction]]
    images: dict[int, Image.Image]


def _decode(data: bytes, where: str, max_pixels: int | None, sampling: VideoSampling | None = None) -> _Decoded:
    """Decode the first video stream fully, in order, keeping the frames on screen at the sample
    times of ``sampling`` (none without it); SampleError for anything wrong. Decoding goes on past
    a broken packet so that a file cut short is told apart (``truncated_video``) from one damaged
    inside (``bad_video``)."""
    import av

    limit = max_pixels or pixel_limit()
    try:
        container = av.open(io.BytesIO(data), metadata_errors="ignore")
    except av.error.FFmpegError as err:
        raise SampleError("bad_video", f"{where}: not a video file, or damaged ({err})") from err
    with container:
        if not container.streams.video:
            kinds = ", ".join(s.type for s in container.streams) or "none"
            raise SampleError("no_video_stream", f"{where}: the file has no video stream (streams: {kinds})")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > limit:
            raise SampleError("too_many_pixels", _too_large(where, width, height, limit))
        stream.thread_type = "AUTO"
        base = stream.time_base or Fraction(1)
        rate = stream.average_rate or stream.guessed_rate
        step = 1 / Fraction(rate) if rate else Fraction(0)  # a frame's duration when the file omits it
        declared, own_length = _declared_length(container, stream)
        # An AVI's header counts its frames, with no edit list to skip any: a cut AVI decodes fewer.
        # (An MP4 trimmed by an edit list decodes fewer than its index holds, by design.)
        declared_frames = stream.frames if container.format.name == "avi" else 0
        duration = declared if declared is not None else _demuxed_length(data, step)
        targets = _targets(duration, sampling) if sampling else []
        picks: list[tuple[int, Fraction]] = []
        images: dict[int, Image.Image] = {}

        def pick(index: int, frame: av.VideoFrame, seconds: Fraction) -> None:
            if index not in images:  # a frame chosen twice is converted once
                images[index] = upright_frame(frame)
            picks.append((index, seconds))

        start, count, end, error, previous = stream.start_time, 0, Fraction(0), None, None
        for frame, err in _frames(container, stream):
            if err is not None:
                error = error or err
                continue
            if frame.width * frame.height > limit:  # the size may change mid-stream
                raise SampleError("too_many_pixels", _too_large(where, frame.width, frame.height, limit))
            if frame.pts is None:  # no timestamp: assume a steady rate
                seconds = count * step
            else:
                start = frame.pts if start is None else start
                seconds = (frame.pts - start) * base
            # Each sample time takes the last frame starting at or before it (the first if none does).
            while len(picks) < len(targets) and seconds > targets[len(picks)]:
                pick(*(previous or (count, frame, seconds)))
            if count == 0 and _quarter_turn(frame):  # shown upright, the picture is as tall as it is stored wide
                width, height = height, width
            previous = (count, frame, seconds)
            end = max(end, seconds + (frame.duration * base if frame.duration else step))
            count += 1
        if count == 0:
            detail = f" ({error})" if error else ""
            raise SampleError("no_frames", f"{where}: no video frame decodes{detail}")
        while len(picks) < len(targets):  # sample times at or after the last frame's start
            pick(*previous)
        has_audio = bool(container.streams.audio)
    if short := _stops_short(data, declared, own_length, end, step, count, declared_frames):
        detail = f"; {error}" if error else ""
        raise SampleError(
            "truncated_video",
            f"{where}: video stops short, truncated or damaged ({short}{detail})",
        )
    if error is not None:
        raise SampleError("bad_video", f"{where}: video frames do not decode ({error})")
    fps = float(rate) if rate else (count / float(end) if end else 0.0)
    return _Decoded(count, duration if declared is not None else end, width, height, fps, has_audio, picks, images)


VIDEO_DECODING = "rgb frames, display rotation applied"  # recorded in feature-cache fingerprints


def _turn(frame: av.VideoFrame) -> int:
    """The frame's display rotation in degrees counter-clockwise, 0-359 (0 where PyAV before 14.1 reads none)."""
    return round(getattr(frame, "rotation", 0) or 0) % 360


def _quarter_turn(frame: av.VideoFrame) -> bool:
    return _turn(frame) in (90, 270)


def upright_frame(frame: av.VideoFrame) -> Image.Image:
    """The frame as a player shows it: turned by the stream's display rotation (PyAV's
    ``rotation``: degrees counter-clockwise, a multiple of 90 from phones and cameras)."""
    from PIL import Image

    image = frame.to_image()
    turn = _turn(frame)
    transposes = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}
    if turn in transposes:
        return image.transpose(transposes[turn])
    return image.rotate(turn, expand=True) if turn else image


def _too_large(where: str, width: int, height: int, limit: int) -> str:
    return (
        f"{where}: video frames of {width} x {height} = {width * height / 1e6:.1f} MP are over max_pixels "
        f"({limit / 1e6:g} MP); refused before decoding"
    )


def _declared_length(container: av.container.InputContainer, stream: av.VideoStream) -> tuple[Fraction | None, bool]:
    """The video's length as the file states it, and whether it is the video's own: the stream's,
    else the container's, which covers every stream (its sound may run on past the picture, so it
    is the video's own only when the video is all there is)."""
    if stream.duration and stream.time_base:
        return stream.duration * stream.time_base, True
    if container.duration:
        return Fraction(container.duration, 1_000_000), len(container.streams) == 1  # AV_TIME_BASE units
    return None, False


def _stops_short(
    data: bytes,
    declared: Fraction | None,
    own_length: bool,
    end: Fraction,
    step: Fraction,
    count: int,
    declared_frames: int,
) -> str:
    """What shows a clip cut short ("" when nothing does): its frames end well before the length it
    declares (its own, or the container's when no stream, sound included, reaches that far), or
    well fewer frames decode than an AVI's header counts (``declared_frames``; a cut AVI has lost its
    index, and ffmpeg then estimates its length from the file's size)."""
    # Two frames' worth of slack (at least 0.1 s): a good file ends within a frame of what it
    # declares, a file cut short far earlier.
    slack = max(2 * step, Fraction(1, 10))
    if declared is not None and end < declared - slack:
        reached = end if own_length else max(end, _demuxed_length(data, step, every_stream=True))
        if reached < declared - slack:
            whose = "it declares" if own_length else "its container declares"
            return f"{count} frames decode, {float(end):.2f} s of the {float(declared):.2f} s {whose}"
    # A few frames may fail to decode at the very end: more than 2, and more than 5%, may not.
    if declared_frames and declared_frames - count > max(2, declared_frames // 20):
        return f"{count} of the {declared_frames} frames its header counts decode"
    return ""


def _demuxed_length(data: bytes, step: Fraction, every_stream: bool = False) -> Fraction:
    """From the first packet's time to the end of the last, of the video stream (its length when
    the file does not state it) or of every stream (how far the container's content reaches):
    packets only, nothing decoded; a broken container ends the count. ``step``: a packet's
    duration where the file omits it."""
    import av

    first, end = None, None
    with av.open(io.BytesIO(data), metadata_errors="ignore") as container:
        streams = list(container.streams) if every_stream else [container.streams.video[0]]
        try:
            for packet in container.demux(streams):
                if packet.pts is not None and packet.time_base:
                    start = packet.pts * packet.time_base
                    last = start + (packet.duration * packet.time_base if packet.duration else step)
                    first = start if first is None else min(first, start)
                    end = last if end is None else max(end, last)
        except av.error.FFmpegError:
            pass
    return Fraction(0) if first is None else end - first


def _frames(
    container: av.container.InputContainer, stream: av.VideoStream
) -> Iterator[tuple[av.VideoFrame | None, Exception | None]]:
    """Every decoded frame in presentation order, with an error in place of a packet that fails."""
    import av

    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.FFmpegError as err:  # the container breaks off: flush what the decoder holds
            yield None, err
            packet = None
        try:
            frames = stream.codec_context.decode(packet)
        except av.error.FFmpegError as err:
            yield None, err
            continue
        for frame in frames:
            yield frame, None
        if packet is None:
            break


def decode_video(data: bytes, where: str, sampling: VideoSampling, max_pixels: int | None = None) -> Clip:
    """``sampling.frames`` RGB frames of a clip: for each sample time, the frame on screen then
    (the last one starting at or before it; the first if it precedes them all). The whole clip is
    decoded in order and only the chosen frames are kept; SampleError for a bad file."""
    decoded = _decode(data, where, max_pixels, sampling)
    return Clip(
        frames=[decoded.images[i] for i, _ in decoded.picks],
        timestamps=[float(t) for _, t in decoded.picks],
        indices=[i for i, _ in decoded.picks],
        duration=float(decoded.duration),
    )


def load_video(ref: MediaRef, sampling: VideoSampling) -> Clip:
    """A media reference's video, sampled (for the collator and inference)."""
    return decode_video(ref.read(), ref.path or f"in-memory {ref.ext} video", sampling)


def check_video(data: bytes, where: str, max_pixels: int | None = None) -> VideoInfo:
    """Decode fully once and check: SampleError if not a video, without a video stream or frames,
    over ``max_pixels`` (from the stream's header, before decoding) or truncated."""
    decoded = _decode(data, where, max_pixels)
    return VideoInfo(
        frames=decoded.frames,
        duration=float(decoded.duration),
        width=decoded.width,
        height=decoded.height,
        fps=decoded.fps,
        has_audio=decoded.has_audio,
    )


def write_clip(
    path: str | Path, frames: list[np.ndarray], fps: float, audio: np.ndarray | None = None, sample_rate: int = 16000
) -> None:
    """Write an MP4 clip: H.264 (yuv420p) from (H, W, 3) uint8 RGB frames, with an optional AAC
    track from mono float32 samples in [-1, 1]. Written to a temporary file in the same folder and
    renamed, so a reader never sees half a file. For demos and tests."""
    import av

    if not frames:
        raise ValueError("a clip needs at least one frame")
    height, width = frames[0].shape[:2]
    if any(f.shape != (height, width, 3) or f.dtype != np.uint8 for f in frames):
        raise ValueError(f"frames must all be ({height}, {width}, 3) uint8 RGB arrays")
    if audio is not None and np.ndim(audio) != 1:
        raise ValueError(f"audio must be mono, a 1-D array of samples, not of shape {np.shape(audio)}")
    if width % 2 or height % 2:
        raise ValueError(f"H.264 in yuv420p needs an even width and height, not {width} x {height}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        # faststart: the index goes before the frames (the muxer rewrites the file, so a real file,
        # not a BytesIO), so a browser plays it while loading and a cut copy still opens.
        with av.open(tmp, "w", format="mp4", options={"movflags": "+faststart"}) as container:
            video = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(10000))
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            # One encoder thread, no look-ahead: the same frames always give the same bytes (the
            # feature cache keys a clip by them); x264's threads otherwise vary its output now and then.
            video.thread_count = 1
            video.options = {"x264-params": "rc-lookahead=0"}
            sound = container.add_stream("aac", rate=sample_rate, layout="mono") if audio is not None else None
            for index, pixels in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                frame.pts = index
                container.mux(video.encode(frame))
            container.mux(video.encode(None))
            if sound is not None:
                chunk = av.AudioFrame.from_ndarray(np.asarray(audio, np.float32)[None], format="flt", layout="mono")
                chunk.sample_rate, chunk.pts = sample_rate, 0
                container.mux(sound.encode(chunk))
                container.mux(sound.encode(None))
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp's file is private (0600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
