"""Audio bytes -> a mono waveform, with checks that say what is wrong, and the long-clip policy.

Decoding is soundfile's (WAV, FLAC, OGG / Vorbis / Opus, MP3, ...); stereo is averaged to
mono; any sample rate is resampled (torchaudio) to the rate an encoder asks for. The
dataset build runs ``check_audio`` once per file: empty, undecodable, truncated and silent
files become ``SampleError`` with reasons ``audio_empty``, ``audio_undecodable``,
``audio_truncated`` and ``audio_silent``, which the build's ``on_error`` policy raises or
counts.

Long clips. An audio slot has a fixed token count: the encoder covers the first
``max_seconds`` of a clip, or ``windows`` consecutive windows of ``max_seconds``
(``mmit.models.audio``). A clip longer than ``max_seconds`` follows the recipe's
``audio.long_clips`` policy at build time, counted in the manifest (``long_audio``):

- ``truncate`` (default): the original bytes are stored; the encoder hears only the first
  ``max_seconds``.
- ``split``: the clip is cut into consecutive windows of ``max_seconds`` (at most
  ``max_windows``; the rest is dropped and counted as truncated), each stored as a 16-bit
  WAV at the clip's own rate, and the sample gets one ``<audio>`` placeholder per window,
  in order. The model hears the whole clip, and captions, answers and transcripts still
  refer to all of it. Short clips keep their original bytes.
- ``windows``: the clip stays one item (one ``<audio>`` placeholder) whose encoder reads up to
  ``max_windows`` windows of ``max_seconds`` (``audio_encoder.windows``, set to
  ``max_windows``). A clip up to ``max_windows * max_seconds`` keeps its original bytes
  (counted as ``windows``); a longer one is cut to that length, stored as a 16-bit WAV and
  counted as truncated.
- ``skip``: samples with a long clip are dropped, counted under ``audio_too_long``.
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mmit.data.samples import MediaRef, SampleError

if TYPE_CHECKING:
    import torch

LONG_CLIPS = ("truncate", "split", "windows", "skip")


@dataclass(frozen=True)
class Waveform:
    """Decoded audio: mono float32 samples in [-1, 1] at ``sample_rate``.

    NumPy, not torch: the build checks audio in forked worker processes, where torch's
    OpenMP thread pool (started in the parent) would deadlock.
    """

    samples: np.ndarray  # (T,) float32
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass
class AudioPolicy:
    """The build's audio checks and long-clip handling (a recipe's ``audio:`` block).

    Which policy for clips longer than ``max_seconds``: ``truncate`` when their start says
    enough; ``split`` when the model should hear them as several clips (one item and one
    ``<audio>`` placeholder per window, so each window's tokens stand on their own in the
    prompt and the number of items varies with the length); ``windows`` when each clip should
    stay one item, one placeholder and a fixed number of tokens, read by an encoder with
    ``audio_encoder.windows = max_windows`` (the windows' tokens are concatenated, silent
    windows pad shorter clips, so short clips cost as much as long ones); ``skip`` to drop them.
    """

    max_seconds: float = 30.0  # the audio encoder's window
    long_clips: str = "truncate"  # truncate | split | windows | skip
    max_windows: int = 4  # split / windows: windows kept per clip
    silence_db: float = -60.0  # a clip whose peak stays below this (dBFS) is silent

    def __post_init__(self) -> None:
        if self.long_clips not in LONG_CLIPS:
            raise ValueError(f"audio.long_clips must be one of {LONG_CLIPS}, not {self.long_clips!r}")
        if self.max_seconds <= 0 or self.max_windows < 1:
            raise ValueError("audio.max_seconds must be > 0 and audio.max_windows >= 1")


def _wav_truncated(data: bytes) -> bool:
    """True when a RIFF/WAVE file's data chunk declares more bytes than the file holds."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return False
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if chunk == b"data":
            return size != 0xFFFFFFFF and pos + 8 + size > len(data)  # 0xFFFFFFFF: streamed, size unknown
        pos += 8 + size + (size & 1)
    return False


# Decoded float32 values one clip may hold (1 GiB): hours of compressed silence are a few MB on disk,
# tens of GB once decoded. At 16 kHz mono this is 4.6 hours.
MAX_AUDIO_VALUES = 1 << 28
# The largest sample value taken. Audio lies in [-1, 1] (a float file scaled as 16-bit integers
# reaches 32768); 1e19 squares past float32's range, and the encoder's features become NaN.
MAX_PEAK = 1e6


def decode_audio(data: bytes, where: str = "audio") -> Waveform:
    """Mono samples at the file's own rate; SampleError if empty, undecodable or truncated."""
    import soundfile

    if not data:
        raise SampleError("audio_empty", f"{where}: the audio file is empty (0 bytes)")
    try:
        sound = soundfile.SoundFile(io.BytesIO(data))
    except Exception as err:  # libsndfile reports unknown and broken formats alike
        # Not a format libsndfile reads (AAC in MP4 / M4A, a video's sound track): FFmpeg's decoders.
        wave = sound_track(data, where)
        if wave is None:
            raise SampleError("audio_undecodable", f"{where}: audio does not decode ({err})") from err
        return wave
    with sound:
        declared, rate, log = sound.frames, sound.samplerate, sound.extra_info
        if declared * sound.channels > MAX_AUDIO_VALUES:  # before a sample is decoded
            raise SampleError(
                "audio_too_long",
                f"{where}: {declared} frames x {sound.channels} channels decode to over {MAX_AUDIO_VALUES * 4 >> 30} "
                f"GiB ({declared / max(rate, 1) / 3600:.1f} h at {rate} Hz); refused",
            )
        try:
            samples = sound.read(dtype="float32", always_2d=True)
        except Exception as err:
            raise SampleError("audio_truncated", f"{where}: audio stops mid-stream ({err})") from err
    if len(samples) < declared:
        raise SampleError(
            "audio_truncated", f"{where}: audio file is truncated ({len(samples)} of {declared} frames decode)"
        )
    if _wav_truncated(data) or "lacks an end-of-stream" in log:
        raise SampleError(
            "audio_truncated", f"{where}: audio file is truncated (its header promises more data than it holds)"
        )
    if len(samples) == 0:
        raise SampleError("audio_empty", f"{where}: the audio has no samples")
    if rate <= 0:
        raise SampleError("audio_undecodable", f"{where}: sample rate {rate} Hz")
    # Average the channels: stereo (or more) becomes mono at the same level.
    return _checked(Waveform(np.ascontiguousarray(samples.mean(axis=1), dtype=np.float32), rate), where)


def _checked(wave: Waveform, where: str) -> Waveform:
    """The waveform unless its values are not sound: NaN, infinite or far beyond full scale (a float
    file's values are stored as written), which would make the loss of every batch holding it NaN."""
    peak = float(np.abs(wave.samples).max())
    if not math.isfinite(peak):
        raise SampleError("audio_undecodable", f"{where}: the audio holds NaN or infinite values, not sound")
    if peak > MAX_PEAK:
        raise SampleError(
            "audio_undecodable",
            f"{where}: sample values reach {peak:.3g}, over {MAX_PEAK:g} (audio lies in [-1, 1]); not sound",
        )
    return wave


def sound_track(data: bytes, where: str) -> Waveform | None:
    """The first audio stream of a container FFmpeg reads (MP4, M4A, WebM, MKV, ...) through PyAV, mixed
    to mono at its own rate; None when there is no such container; SampleError when it has no sound."""
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            streams = container.streams.audio
            if not streams:
                kinds = sorted({s.type for s in container.streams}) or ["none"]
                raise SampleError(
                    "no_audio_stream", f"{where}: the file has no audio stream (streams: {', '.join(kinds)})"
                )
            stream = streams[0]
            rate = stream.rate
            mono = av.AudioResampler(format="flt", layout="mono", rate=rate)
            # No header to trust here: the decoded values are counted as they come, and decoding
            # stops past the limit.
            chunks, values = [], 0
            for frame in container.decode(stream):
                for out in mono.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    values += chunks[-1].size
                if values > MAX_AUDIO_VALUES:
                    raise SampleError(
                        "audio_too_long",
                        f"{where}: the sound track decodes to over {MAX_AUDIO_VALUES * 4 >> 30} GiB; refused",
                    )
            chunks += [out.to_ndarray().reshape(-1) for out in mono.resample(None)]
    except av.FFmpegError:
        return None
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if len(samples) == 0:
        raise SampleError("audio_empty", f"{where}: the audio has no samples")
    return _checked(Waveform(np.ascontiguousarray(samples, dtype=np.float32), int(rate)), where)


def load_audio(ref: MediaRef) -> Waveform:
    """A media reference's audio, decoded (for the collator and inference)."""
    return decode_audio(ref.read(), ref.path or f"in-memory {ref.ext} audio")


def resample(wave: Waveform, rate: int) -> torch.Tensor:
    """The samples at ``rate`` Hz as a tensor (8 kHz, 44.1 kHz, 48 kHz, ... -> e.g. 16 kHz)."""
    import torch

    samples = torch.from_numpy(wave.samples)
    if wave.sample_rate == rate:
        return samples
    import torchaudio.functional

    return torchaudio.functional.resample(samples, wave.sample_rate, rate)


def check_audio(data: bytes, where: str, policy: AudioPolicy) -> Waveform:
    """Decode fully and check: SampleError if empty, undecodable, truncated, silent or (``skip``) too long."""
    wave = decode_audio(data, where)
    peak = float(np.abs(wave.samples).max())
    if peak <= 10 ** (policy.silence_db / 20):
        level = "-inf" if peak == 0 else f"{20 * math.log10(peak):.0f}"
        raise SampleError("audio_silent", f"{where}: the audio is silent (peak {level} dBFS <= {policy.silence_db})")
    if policy.long_clips == "skip" and wave.seconds > policy.max_seconds:
        raise SampleError(
            "audio_too_long", f"{where}: {wave.seconds:.1f} s is longer than audio.max_seconds={policy.max_seconds}"
        )
    return wave


def encode_wav(samples: np.ndarray, rate: int) -> bytes:
    """Mono 16-bit PCM WAV bytes (deterministic)."""
    import soundfile

    out = io.BytesIO()
    soundfile.write(out, samples, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def split_windows(wave: Waveform, policy: AudioPolicy) -> tuple[list[bytes], bool]:
    """Consecutive ``max_seconds`` windows as WAV bytes (at most ``max_windows``); the flag says some were dropped."""
    step = round(policy.max_seconds * wave.sample_rate)
    starts = list(range(0, len(wave.samples), step))
    windows = [encode_wav(wave.samples[s : s + step], wave.sample_rate) for s in starts[: policy.max_windows]]
    return windows, len(starts) > policy.max_windows


@dataclass
class CheckedAudio:
    """What the build stores for one audio file: its bytes (or windows) and how long it was."""

    items: list[tuple[str, bytes]]  # (ext, bytes): one item, or one per window when split
    # "" | truncated | split | split_truncated (windows beyond max_windows dropped) | windows (kept whole)
    long: str = ""


def prepare_audio(data: bytes, ext: str, where: str, policy: AudioPolicy) -> CheckedAudio:
    """Check one audio file and apply the long-clip policy; raises SampleError."""
    wave = check_audio(data, where, policy)
    if wave.seconds <= policy.max_seconds:
        return CheckedAudio([(ext, data)])
    if policy.long_clips == "split":
        windows, dropped = split_windows(wave, policy)
        return CheckedAudio([("wav", w) for w in windows], "split_truncated" if dropped else "split")
    if policy.long_clips == "windows":
        # Cut here rather than by the encoder, so the shard holds exactly what its windows read.
        limit = round(policy.max_windows * policy.max_seconds * wave.sample_rate)
        if len(wave.samples) <= limit:
            return CheckedAudio([(ext, data)], "windows")
        return CheckedAudio([("wav", encode_wav(wave.samples[:limit], wave.sample_rate))], "truncated")
    return CheckedAudio([(ext, data)], "truncated")
