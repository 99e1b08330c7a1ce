"""Video as a modality: each sampled frame through the image encoder, frame tokens marked in time.

A clip becomes ``frames`` pictures (``mmit.data.video``: uniform over the clip, or at a set fps).
:class:`VideoEncoder` runs them through the configured image encoder (the same frozen tower as the
images, shared, not copied) and pools each frame's grid to ``pool_to`` x ``pool_to`` tokens, so a
clip is ``frames * pool_to**2`` tokens in frame order. :class:`TemporalProjector` then says which
frame a token came from, before the image projector (also shared, so what it learns from images
serves the frames): a learned embedding per frame position, a fixed sinusoidal one, or none.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mmit.data.samples import MediaRef
from mmit.data.video import Clip, VideoSampling, load_video

TEMPORAL = ("learned", "sinusoidal", "none")


class VideoEncoder(nn.Module):
    """Frames of a clip -> (tokens = frames x per-frame tokens, dim), through ``image_encoder``."""

    modality = "video"

    def __init__(self, image_encoder: nn.Module, frames: int = 8, fps: float | None = None, pool_to: int | None = 2):
        super().__init__()
        if frames < 1:
            raise ValueError(f"video.frames must be >= 1, not {frames}")
        self.image_encoder = image_encoder
        self.sampling = VideoSampling(frames=frames, fps=fps)
        self.pool_to = pool_to
        self.output_dim = image_encoder.output_dim
        per_frame = image_encoder.num_tokens if not pool_to else pool_to * pool_to
        if pool_to and math.isqrt(image_encoder.num_tokens) ** 2 != image_encoder.num_tokens:
            raise ValueError(
                f"video.pool_to needs a square grid of frame tokens; the image encoder gives {image_encoder.num_tokens}"
            )
        self.tokens_per_frame = per_frame
        self.num_tokens = frames * per_frame

    def probe_input(self) -> Clip:
        """A fixed clip for the feature cache's fingerprint of the preprocessing (no decoding involved)."""
        frames = self.sampling.frames
        pictures = [Image.new("RGB", (97, 61), (40 * i % 256, 255 - 30 * i % 256, 90)) for i in range(frames)]
        return Clip(pictures, [i / 4 for i in range(frames)], list(range(frames)), frames / 4)

    def preprocess(self, clips: list[MediaRef | Clip]) -> torch.Tensor:
        """(N, frames, ...) the image encoder's preprocessing of each sampled frame."""
        clips = [c if isinstance(c, Clip) else load_video(c, self.sampling) for c in clips]
        pictures = [frame for clip in clips for frame in clip.frames]
        pixels = self.image_encoder.preprocess(pictures)
        return pixels.view(len(clips), self.sampling.frames, *pixels.shape[1:])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        n, frames = pixels.shape[:2]
        tokens = self.image_encoder(pixels.flatten(0, 1))  # (n * frames, t, d)
        if self.pool_to and tokens.shape[1] != self.tokens_per_frame:
            side = math.isqrt(tokens.shape[1])
            grid = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)
            tokens = F.adaptive_avg_pool2d(grid, self.pool_to).flatten(2).transpose(1, 2)
        return tokens.reshape(n, frames * tokens.shape[1], tokens.shape[2])


def sinusoidal(positions: int, dim: int) -> torch.Tensor:
    """The Transformer's fixed position code, (positions, dim), each row of unit root-mean-square."""
    position = torch.arange(positions, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10_000.0) / dim))
    code = torch.zeros(positions, dim)
    code[:, 0::2] = torch.sin(position * rate)
    code[:, 1::2] = torch.cos(position * rate[: dim // 2])
    return code * math.sqrt(2.0)


class FrameCode(nn.Module):
    """What tells the LLM which frame a token came from, added to the frame's features.

    ``learned``: one vector per frame position, starting at zero (so training starts from the
    image projector's reading of each frame); ``sinusoidal``: fixed, scaled to the features' own
    size; ``none``: frames told apart only by their order in the sequence.
    """

    def __init__(self, frames: int, dim: int, temporal: str = "learned"):
        super().__init__()
        if temporal not in TEMPORAL:
            raise ValueError(f"video.temporal must be one of {TEMPORAL}, not {temporal!r}")
        self.frames, self.temporal = frames, temporal
        if temporal == "learned":
            self.code = nn.Parameter(torch.zeros(frames, dim))
        else:
            self.register_buffer(
                "code", sinusoidal(frames, dim) if temporal == "sinusoidal" else None, persistent=False
            )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, frames * tokens, dim) features with each frame's code added."""
        if self.code is None:
            return features
        n, tokens, dim = features.shape
        code = self.code.to(features.dtype)
        if self.temporal == "sinusoidal":
            code = code * features.detach().float().pow(2).mean().sqrt().to(features.dtype)
        return (features.view(n, self.frames, tokens // self.frames, dim) + code[None, :, None, :]).view(n, tokens, dim)


class TemporalProjector(nn.Module):
    """A clip's features marked in time (:class:`FrameCode`), then ``projector``, shared with images."""

    def __init__(self, projector: nn.Module, frame_code: FrameCode):
        super().__init__()
        self.projector, self.frame_code = projector, frame_code

    def num_tokens(self, encoder_tokens: int) -> int:
        return self.projector.num_tokens(encoder_tokens)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.projector(self.frame_code(features))
