"""Media paths stay inside their data folder: ``../``, absolute paths and symlinks that leave it are
refused (or skipped and counted) unless the recipe says ``allow_outside_root: true``."""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from mmit.build import BuildError, build
from mmit.data import annotations
from mmit.data.annotations import Annotation
from mmit.data.samples import SampleError
from mmit.data.sources import DataFileError, read_conversations
from mmit.paths import RECIPES_DIR


def _png(color="red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def layout(tmp_path):
    """data/ (the data folder: a JSONL file, images/ with one image and a symlink out) and secret.png outside."""
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "images" / "ok.png").write_bytes(_png())
    (tmp_path / "secret.png").write_bytes(_png("blue"))
    os.symlink(tmp_path / "secret.png", data / "images" / "link.png")
    os.symlink(data / "images" / "ok.png", data / "images" / "inside_link.png")  # stays inside: fine
    return tmp_path


ESCAPES = {
    "parent": "../secret.png",
    "deep_parent": "images/../../secret.png",
    "absolute": "{root}/secret.png",
    "symlink_out": "images/link.png",
}


def _conv(image: str, i: int) -> dict:
    turns = [{"role": "user", "content": "<image>\nColour?"}, {"role": "assistant", "content": "red"}]
    return {"id": f"c{i}", "messages": turns, "image": image}


def _jsonl(layout: Path, names: list[str]) -> Path:
    path = layout / "data" / "data.jsonl"
    records = [_conv(name.format(root=layout), i) for i, name in enumerate(names)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize("kind", sorted(ESCAPES))
def test_the_jsonl_reader_refuses_a_path_that_leaves_the_data_folder(kind, layout):
    path = _jsonl(layout, ["images/ok.png", ESCAPES[kind], "images/inside_link.png"])
    items = list(annotations.read_jsonl(str(path)))
    errors = [item for _, item in items if isinstance(item, SampleError)]
    assert [e.reason for e in errors] == ["outside_root"] and f"{path}:2" in str(errors[0])
    assert sum(isinstance(item, Annotation) for _, item in items) == 2
    allowed = list(annotations.read_jsonl(str(path), allow_outside_root=True))
    assert all(isinstance(item, Annotation) for _, item in allowed)


def test_coco_file_names_stay_in_images_dir(layout):
    images = layout / "data" / "images"
    coco = {
        "images": [{"id": 1, "file_name": "ok.png"}, {"id": 2, "file_name": "../../secret.png"}],
        "annotations": [{"image_id": 1, "caption": "red"}, {"image_id": 2, "caption": "blue"}],
    }
    path = layout / "data" / "captions.json"
    path.write_text(json.dumps(coco))
    items = list(annotations.read_coco_captions(str(path), str(images)))
    assert Counter(getattr(i, "reason", "ok") for _, i in items) == Counter({"ok": 1, "outside_root": 1})


def _recipe(layout: Path, path: Path, on_error: str, **extra):
    return OmegaConf.create(
        {
            "name": "paths",
            "seed": 0,
            "out_dir": str(layout / f"out-{on_error}-{len(extra)}"),
            "templates": str(RECIPES_DIR / "templates" / "vision.yaml"),
            "eval_fraction": 0.0,
            "shard_size": 10,
            "num_workers": 1,
            "on_error": on_error,
            "shaping": {},
            "sources": [{"_target_": "mmit.data.annotations.read_jsonl", "path": str(path)}],
            **extra,
        }
    )


def test_the_build_refuses_or_counts_escaping_paths_and_the_recipe_can_allow_them(layout):
    path = _jsonl(layout, ["images/ok.png", *(ESCAPES[k] for k in sorted(ESCAPES))])
    with pytest.raises(BuildError, match=f"{path}:2: .*outside"):
        build(_recipe(layout, path, "raise"))
    manifest = build(_recipe(layout, path, "skip"))
    assert manifest["skipped_annotations"] == {"outside_root": 4}
    assert manifest["sets"]["train"]["samples"] == 1
    opened = build(_recipe(layout, path, "raise", allow_outside_root=True))
    assert opened["sets"]["train"]["samples"] == 5


def test_data_files_media_stay_in_the_data_folder(layout):
    path = _jsonl(layout, ["images/ok.png", *(ESCAPES[k] for k in sorted(ESCAPES))])
    with pytest.raises(DataFileError, match=f"{path}:2: .*outside"):
        read_conversations([path], on_error="raise")
    skipped = Counter()
    kept = read_conversations([path], on_error="skip", skipped=skipped)
    assert [c.id for c in kept] == ["c0"] and skipped == Counter({"outside_root": 4})
    assert kept[0].media[0].read() == _png()


def test_a_folder_named_as_an_image_is_called_a_folder(layout):
    path = _jsonl(layout, ["images"])
    with pytest.raises(
        DataFileError, match=rf"{path}:1: .*image file {layout / 'data' / 'images'} is a folder, not a file"
    ):
        read_conversations([path])
