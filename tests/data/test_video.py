"""Video data: sampling times, exact frame choice on clips whose frames carry their own index,
the checks on bad files (named, with a reason), the build's checks of video files, and
``write_clip``; all on small clips written here."""

import io
import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile

from mmit.data.media_checks import check_media_file, read_media_file
from mmit.data.samples import Conversation, MediaRef, Message, SampleError
from mmit.data.shard_writer import Storage, stored_media
from mmit.data.video import (
    VideoSampling,
    check_video,
    decode_video,
    load_video,
    sample_times,
    write_clip,
)

SIDE = 64  # pixels; 8 stripes of 8 rows carry a frame's index in binary


def numbered(count: int) -> list[np.ndarray]:
    """Frames whose stripes spell their index: stripe b is white when bit b is set."""
    frames = []
    for k in range(count):
        pixels = np.zeros((SIDE, SIDE, 3), np.uint8)
        for bit in range(8):
            if k >> bit & 1:
                pixels[bit * 8 : bit * 8 + 8] = 255
        frames.append(pixels)
    return frames


def number_of(image) -> int:
    """The index a decoded frame spells (read from the middle row of each stripe)."""
    grey = np.asarray(image.convert("L"), dtype=float)
    return sum(1 << bit for bit in range(8) if grey[bit * 8 + 4].mean() > 128)


def noise(count: int) -> list[np.ndarray]:
    """Frames of random pixels: every frame costs about the same bytes, so a cut falls mid-clip."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8) for _ in range(count)]


def mp4(tmp_path: Path, frames: list[np.ndarray], fps: float, **kwargs) -> bytes:
    path = tmp_path / "clip.mp4"
    write_clip(path, frames, fps, **kwargs)
    return path.read_bytes()


def other_container(frames: list[np.ndarray], fps: int, format: str, codec: str) -> bytes:
    """A clip in another container (WebM / Matroska / AVI), written with PyAV directly."""
    out = io.BytesIO()
    with av.open(out, "w", format=format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = SIDE, SIDE, "yuv420p"
        for index, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out.getvalue()


def reason(data: bytes, max_pixels: int | None = None) -> str:
    with pytest.raises(SampleError) as err:
        check_video(data, "clip.mp4", max_pixels)
    assert str(err.value).startswith("clip.mp4: ")  # the message names the file
    return err.value.reason


def expected_uniform(count: int, rate: Fraction, frames: int) -> tuple[list[int], list[float]]:
    """Frame k shows from k / rate on: sample time t takes frame floor(t * rate)."""
    duration = count / rate
    indices = [min(count - 1, math.floor(duration * Fraction(2 * i + 1, 2 * frames) * rate)) for i in range(frames)]
    return indices, [float(k / rate) for k in indices]


# --- sampling times ----------------------------------------------------------------------


def test_uniform_times_are_the_centres_of_equal_segments():
    assert sample_times(4.0, VideoSampling(frames=4)) == [0.5, 1.5, 2.5, 3.5]
    assert sample_times(3.0, VideoSampling(frames=1)) == [1.5]


def test_fps_times_step_from_the_start_thinned_or_repeated():
    assert sample_times(3.0, VideoSampling(frames=6, fps=2)) == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    # Ten times in 5 s at 2 fps, thinned evenly to four keeping the first and the last.
    assert sample_times(5.0, VideoSampling(frames=4, fps=2)) == [0.0, 1.5, 3.0, 4.5]
    # Three times fit in 2.5 s at 1 fps: the last is repeated up to the frame count.
    assert sample_times(2.5, VideoSampling(frames=5, fps=1)) == [0.0, 1.0, 2.0, 2.0, 2.0]
    assert sample_times(5.0, VideoSampling(frames=1, fps=2)) == [0.0]


def test_sampling_refuses_no_frames_and_a_rate_of_zero():
    with pytest.raises(ValueError):
        VideoSampling(frames=0)
    with pytest.raises(ValueError):
        VideoSampling(fps=0)


# --- exact frame choice ------------------------------------------------------------------


@pytest.mark.parametrize("rate", [Fraction(10), Fraction(25), Fraction(30000, 1001)])
def test_uniform_sampling_takes_the_frame_on_screen_at_each_time(tmp_path, rate):
    data = mp4(tmp_path, numbered(40), float(rate))
    clip = decode_video(data, "clip.mp4", VideoSampling(frames=8))
    indices, timestamps = expected_uniform(40, rate, 8)
    assert clip.indices == indices
    assert clip.timestamps == timestamps
    assert clip.duration == float(40 / rate)
    assert [number_of(f) for f in clip.frames] == indices  # the pixels are those frames'
    assert all(f.mode == "RGB" and f.size == (SIDE, SIDE) for f in clip.frames)


def test_fps_sampling_takes_the_frame_starting_at_each_step(tmp_path):
    data = mp4(tmp_path, numbered(60), 30)  # 2 s
    # At 3 fps every sample time is exactly a frame's start (k / 30): that frame, not the one before.
    clip = decode_video(data, "clip.mp4", VideoSampling(frames=6, fps=3))
    assert clip.indices == [0, 10, 20, 30, 40, 50]
    assert clip.timestamps == [0.0, 1 / 3, 2 / 3, 1.0, 4 / 3, 5 / 3]
    assert [number_of(f) for f in clip.frames] == clip.indices
    # Twenty steps at 10 fps thinned to four: steps 0, 6, 13 and 19 (round(i * 19 / 3)).
    assert decode_video(data, "clip.mp4", VideoSampling(frames=4, fps=10)).indices == [0, 18, 39, 57]


def test_fps_sampling_of_a_short_clip_repeats_the_last(tmp_path):
    data = mp4(tmp_path, numbered(30), 10)  # 3 s: six steps at 2 fps, eight frames asked
    clip = decode_video(data, "clip.mp4", VideoSampling(frames=8, fps=2))
    assert clip.indices == [0, 5, 10, 15, 20, 25, 25, 25]
    assert clip.timestamps == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 2.5, 2.5]
    assert clip.frames[5] is clip.frames[7]  # a frame chosen twice is converted once


def test_more_frames_than_the_clip_has_repeat_frames(tmp_path):
    data = mp4(tmp_path, numbered(5), 10)
    clip = decode_video(data, "clip.mp4", VideoSampling(frames=12))
    indices, timestamps = expected_uniform(5, Fraction(10), 12)
    assert clip.indices == indices == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4]
    assert clip.timestamps == timestamps
    assert len(clip.frames) == 12 and [number_of(f) for f in clip.frames] == indices


@pytest.mark.parametrize(
    "format, codec", [("webm", "libvpx-vp9"), ("matroska", "libx264"), ("avi", "mpeg4")], ids=["webm", "mkv", "avi"]
)
def test_other_containers_sample_the_same_frames(format, codec):
    data = other_container(numbered(30), 10, format, codec)
    clip = decode_video(data, f"clip.{format}", VideoSampling(frames=8))
    indices, timestamps = expected_uniform(30, Fraction(10), 8)
    assert (clip.indices, clip.timestamps, clip.duration) == (indices, timestamps, 3.0)
    assert [number_of(f) for f in clip.frames] == indices


def test_load_video_reads_a_file_or_memory(tmp_path):
    data = mp4(tmp_path, numbered(20), 10)
    on_disk = load_video(MediaRef("video", "mp4", path=str(tmp_path / "clip.mp4")), VideoSampling(frames=4))
    in_memory = load_video(MediaRef("video", "mp4", data=data), VideoSampling(frames=4))
    assert on_disk.indices == in_memory.indices == [2, 7, 12, 17]
    with pytest.raises(SampleError, match="in-memory mp4 video"):
        load_video(MediaRef("video", "mp4", data=b"not a video"), VideoSampling())


# --- checks ------------------------------------------------------------------------------


def test_check_reports_what_the_clip_is(tmp_path):
    data = mp4(tmp_path, numbered(30), 10, audio=np.zeros(48000, np.float32) + 0.1)
    info = check_video(data, "clip.mp4")
    assert (info.frames, info.duration, info.width, info.height, info.fps) == (30, 3.0, SIDE, SIDE, 10.0)
    assert info.has_audio
    assert not check_video(mp4(tmp_path, numbered(3), 10), "clip.mp4").has_audio


def test_not_a_video_is_bad_video():
    assert reason(b"") == "bad_video"
    assert reason(b"these bytes are no container" * 50) == "bad_video"


def test_an_audio_file_has_no_video_stream():
    out = io.BytesIO()
    soundfile.write(out, np.full(16000, 0.1), 16000, format="WAV")
    assert reason(out.getvalue()) == "no_video_stream"


def test_an_mp4_cut_in_half_is_truncated(tmp_path):
    """The first half opens (the index comes first) and 27 of its 60 frames decode, short of the
    2 s it declares: truncated, the same every time. The second half has no index: bad_video."""
    data = mp4(tmp_path, noise(60), 30)
    half = data[: len(data) // 2]
    messages = set()
    for _ in range(3):
        with pytest.raises(SampleError) as err:
            check_video(half, "clip.mp4")
        assert err.value.reason == "truncated_video"
        messages.add(str(err.value))
    assert messages == {
        "clip.mp4: video stops short, truncated or damaged (27 frames decode, 0.90 s of the 2.00 s it declares)"
    }
    with pytest.raises(SampleError, match="stops short"):
        decode_video(half, "clip.mp4", VideoSampling())  # training-time decoding refuses it the same way
    assert reason(data[len(data) // 2 :]) == "bad_video"


def test_a_webm_cut_short_is_truncated():
    """WebM states no length per stream: the container's counts when the video is its only stream."""
    data = other_container(noise(60), 30, "webm", "libvpx-vp9")
    assert check_video(data, "clip.webm").frames == 60
    assert reason(data[: len(data) // 2]) == "truncated_video"


def with_sound(frames: list[np.ndarray], fps: int, format: str, codec: str, sound: str) -> bytes:
    """A clip with a silent sound track as long as its picture (WebM / Matroska state no length per stream)."""
    out = io.BytesIO()
    with av.open(out, "w", format=format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = SIDE, SIDE, "yuv420p"
        audio = container.add_stream(sound, rate=16000, layout="mono")
        for index, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        chunk = av.AudioFrame.from_ndarray(np.zeros((1, 16000 * len(frames) // fps), np.float32), format="flt")
        chunk.sample_rate, chunk.pts = 16000, 0
        container.mux(audio.encode(chunk))
        container.mux(audio.encode(None))
    return out.getvalue()


@pytest.mark.parametrize("format, codec, sound", [("webm", "libvpx-vp9", "libopus"), ("matroska", "libx264", "aac")])
def test_a_clip_with_sound_cut_short_is_truncated(format, codec, sound):
    """The container's length covers the sound too; cut, neither the picture nor the sound reaches it."""
    data = with_sound(noise(60), 30, format, codec, sound)
    assert check_video(data, "clip").frames == 60 and check_video(data, "clip").has_audio
    with pytest.raises(SampleError, match=r"29 frames decode, 0\.97 s of the 2\.\d+ s its container declares"):
        check_video(data[: len(data) // 2], "clip")


@pytest.mark.parametrize("cut", [0.8, 0.9])
def test_an_avi_cut_short_is_truncated_by_its_frame_count(cut):
    """A cut AVI loses its index, and ffmpeg estimates its length from the file's size, so the
    length it declares shrinks with the cut (and matches what decodes); the frame count in its
    header does not."""
    data = other_container(noise(60), 30, "avi", "mpeg4")
    assert check_video(data, "clip.avi").frames == 60
    with pytest.raises(SampleError, match=r"\d+ of the 60 frames its header counts decode") as err:
        check_video(data[: int(len(data) * cut)], "clip.avi")
    assert err.value.reason == "truncated_video"


def test_an_mp4_trimmed_by_an_edit_list_is_whole():
    """A copy-trimmed MP4 (``ffmpeg -ss 1 -c copy``) keeps the frames from the key frame before its
    start and skips them by an edit list: half the frames its index holds decode, as intended, and
    it declares the second that plays. Not truncated."""
    full = other_container(noise(60), 30, "mp4", "libx264")
    out = io.BytesIO()
    with av.open(io.BytesIO(full)) as source, av.open(out, "w", format="mp4") as target:
        original = source.streams.video[0]
        stream = target.add_stream_from_template(original)
        shift = int(1 / original.time_base)  # one second earlier: the first 30 frames before the start
        for packet in source.demux(original):
            if packet.dts is not None:
                packet.pts, packet.dts, packet.stream = packet.pts - shift, packet.dts - shift, stream
                target.mux(packet)
    trimmed = out.getvalue()
    with av.open(io.BytesIO(trimmed)) as container:
        assert container.streams.video[0].frames == 60  # the index still holds them all
    info = check_video(trimmed, "trimmed.mp4")
    assert info.frames == 30 and info.duration == pytest.approx(1.0)


def test_a_clip_whose_frames_all_fail_has_no_frames(tmp_path):
    data = mp4(tmp_path, noise(10), 10)
    start = data.index(b"mdat") + 4
    assert reason(data[:start] + bytes(len(data) - start)) == "no_frames"


def test_frames_over_max_pixels_are_refused_before_decoding(tmp_path):
    data = mp4(tmp_path, numbered(3), 10)
    assert reason(data, max_pixels=SIDE * SIDE - 1) == "too_many_pixels"
    assert check_video(data, "clip.mp4", max_pixels=SIDE * SIDE).frames == 3
    with pytest.raises(SampleError, match="64 x 64"):
        decode_video(data, "clip.mp4", VideoSampling(), max_pixels=100)


# --- the build's checks ------------------------------------------------------------------


def test_the_build_check_names_a_bad_video(tmp_path):
    good = tmp_path / "good.mp4"
    write_clip(good, numbered(10), 10)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(good.read_bytes()[len(good.read_bytes()) // 2 :])
    assert read_media_file(str(good), "video") is None  # good: nothing held, its bytes are read when written
    assert check_media_file(str(good), "video") is None
    found = read_media_file(str(bad), "video")
    assert found[0] == "bad_video" and str(bad) in found[1]
    assert check_media_file(str(bad), "video") == found
    assert read_media_file(str(good), "video", max_pixels=100)[0] == "too_many_pixels"
    assert read_media_file(str(tmp_path / "missing.mp4"), "video")[0] == "missing_media"


def test_an_in_memory_video_is_checked_when_stored(tmp_path):
    good = mp4(tmp_path, numbered(10), 10)
    messages = [Message("user", "<video>\nWhat happens?"), Message("assistant", "Stripes.")]
    conv = Conversation("s1", messages, media=[MediaRef("video", "mp4", data=good)])
    stored, _ = stored_media(conv, {}, Storage())
    assert stored[0].data == good
    conv.media = [MediaRef("video", "mp4", data=b"junk" * 100)]
    with pytest.raises(SampleError, match=r"sample s1 \(in-memory mp4\)") as err:
        stored_media(conv, {}, Storage())
    assert err.value.reason == "bad_video"


# --- write_clip --------------------------------------------------------------------------


def test_write_clip_is_atomic_and_refuses_odd_sizes(tmp_path):
    path = tmp_path / "clips" / "a.mp4"
    write_clip(path, numbered(4), 10, audio=np.zeros(8000, np.float32))
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.mp4"]  # no temporary file left
    with pytest.raises(ValueError, match="even width and height"):
        write_clip(tmp_path / "odd.mp4", [np.zeros((63, 64, 3), np.uint8)], 10)
    with pytest.raises(ValueError, match="mono"):
        write_clip(tmp_path / "stereo.mp4", numbered(2), 10, audio=np.zeros((2, 800), np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clips"]
