"""Image bombs: a small file that decodes to a huge image is refused from its header, before any
pixel is decoded (``max_pixels``, default 40 MP), in the build and in training; ``resize_max``
shrinks a JPEG while it decodes, so the full-size image is never held."""

from __future__ import annotations

import io
import json
from collections import Counter

import pytest
from omegaconf import OmegaConf
from PIL import Image, ImageFile

from mmit.build import BuildError, build
from mmit.data.samples import MediaRef, SampleError
from mmit.paths import RECIPES_DIR


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A 12000 x 12000 PNG of about 20 KB: 144 MP, under PIL's own limit (179 MP) for an error."""
    out = io.BytesIO()
    Image.new("1", (12000, 12000)).save(out, format="PNG")
    assert len(out.getvalue()) < 200_000
    return out.getvalue()


def _png(color="red", size=(8, 8)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def no_decoding(monkeypatch):
    """Fails the test if any image's pixels are decoded."""

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"decoded a {self.size} image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


def test_the_check_refuses_a_bomb_from_its_header(bomb, no_decoding):
    from mmit.data.media import DEFAULT_MAX_PIXELS, check_image

    assert 30_000_000 <= DEFAULT_MAX_PIXELS <= 50_000_000
    with pytest.raises(SampleError, match="12000 x 12000") as refused:
        check_image(bomb, "bomb.png")
    assert refused.value.reason == "too_many_pixels"


def test_the_limit_is_a_setting(bomb):
    from mmit.data.media import check_image

    check_image(_png(size=(100, 100)), "small.png", max_pixels=10_000)
    with pytest.raises(SampleError, match="too_many_pixels|pixels"):
        check_image(_png(size=(101, 100)), "small.png", max_pixels=10_000)


@pytest.mark.parametrize("size", [(1, 1), (7, 5), (3, 40), (8, 8)])
def test_jpegs_under_8_pixels_a_side_pass_the_check(size):
    """The check decodes a JPEG at 1/8 scale; a side under 8 pixels used to ask for a 0-pixel draft
    (ZeroDivisionError, reported as an image that does not decode)."""
    from mmit.data.media import check_image

    out = io.BytesIO()
    Image.new("RGB", size, "red").save(out, format="JPEG")
    check_image(out.getvalue(), "tiny.jpg")
    with pytest.raises(SampleError, match="tiny.jpg: image does not decode"):
        check_image(out.getvalue()[: len(out.getvalue()) // 2], "tiny.jpg")


def test_training_refuses_a_bomb_before_decoding_it(bomb, no_decoding):
    from mmit.data.collate import decode_image

    with pytest.raises(SampleError, match="pixels"):
        decode_image(MediaRef("image", "png", data=bomb))


def test_a_build_skips_and_counts_a_bomb_and_keeps_the_rest(bomb, tmp_path):
    (tmp_path / "ok.png").write_bytes(_png())
    (tmp_path / "bomb.png").write_bytes(bomb)
    turns = [{"role": "user", "content": "<image>\nColour?"}, {"role": "assistant", "content": "red"}]
    records = [
        {"id": "ok", "messages": turns, "image": "ok.png"},
        {"id": "bomb", "messages": turns, "image": "bomb.png"},
    ]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    def cfg(on_error: str, workers: int):
        return OmegaConf.create(
            {
                "name": "bombs",
                "seed": 0,
                "out_dir": str(tmp_path / f"out-{on_error}-{workers}"),
                "templates": str(RECIPES_DIR / "templates" / "vision.yaml"),
                "eval_fraction": 0.0,
                "shard_size": 10,
                "num_workers": workers,
                "on_error": on_error,
                "shaping": {},
                "sources": [{"_target_": "mmit.data.annotations.read_jsonl", "path": str(tmp_path / "data.jsonl")}],
            }
        )

    with pytest.raises(BuildError, match="bomb.png.*pixels"):
        build(cfg("raise", 1))
    for workers in (1, 2):
        manifest = build(cfg("skip", workers))
        assert manifest["sets"]["train"]["samples"] == 1, workers
        assert manifest["sets"]["train"]["skipped"] == {"too_many_pixels": 1}, workers


def test_data_files_skip_and_count_a_bomb(bomb, tmp_path):
    from mmit.data.sources import DataFileError, read_conversations

    (tmp_path / "ok.png").write_bytes(_png())
    (tmp_path / "bomb.png").write_bytes(bomb)
    turns = [{"role": "user", "content": "<image>\nColour?"}, {"role": "assistant", "content": "red"}]
    records = [
        {"id": "ok", "messages": turns, "image": "ok.png"},
        {"id": "bomb", "messages": turns, "image": "bomb.png"},
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(DataFileError, match=f"{path}:2: .*pixels"):
        read_conversations([path])
    skipped = Counter()
    assert [c.id for c in read_conversations([path], on_error="skip", skipped=skipped)] == ["ok"]
    assert skipped == Counter({"too_many_pixels": 1})


def test_resize_max_shrinks_a_jpeg_while_decoding(monkeypatch):
    from mmit.data.media import resize_image

    out = io.BytesIO()
    Image.new("RGB", (3200, 2400), "green").save(out, format="JPEG", quality=80)
    sizes = []
    real_convert = Image.Image.convert

    def convert(self, *args, **kwargs):
        sizes.append(self.size)
        return real_convert(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "convert", convert)
    data, ext = resize_image(out.getvalue(), 100)
    with Image.open(io.BytesIO(data)) as image:
        assert max(image.size) == 100 and ext == "png"
    assert sizes and max(max(s) for s in sizes) <= 800, sizes  # decoded at 1/4 scale or less, not 3200 x 2400


@pytest.mark.parametrize(("mode", "bits"), [("I;16", "16-bit"), ("I", "32-bit integer"), ("F", "32-bit float")])
def test_an_image_wider_than_8_bits_a_channel_is_refused_not_clipped_to_white(mode, bits):
    import numpy as np

    from mmit.data.media import check_image, decode_image_bytes

    grey = np.linspace(0, 65535, 64 * 64).reshape(64, 64)
    image = Image.fromarray(grey.astype(np.uint16)) if mode == "I;16" else Image.fromarray(grey.astype(np.float32))
    out = io.BytesIO()
    image.convert(mode).save(out, format="TIFF")
    for read in (check_image, decode_image_bytes):
        with pytest.raises(SampleError, match=rf"wide.tif: a {bits} image \(PIL mode {mode}\); mmit reads 8 bits"):
            read(out.getvalue(), "wide.tif")
    assert decode_image_bytes(_png(), "ok.png").mode == "RGB"


def test_a_file_that_is_not_an_image_is_named_without_a_buffers_address():
    from mmit.data.media import decode_image_bytes

    with pytest.raises(SampleError) as caught:
        decode_image_bytes(b"just some text", "fake.png")
    message = str(caught.value)
    assert message.startswith("fake.png: image does not decode") and message.endswith("): not an image file")
