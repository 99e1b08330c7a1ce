"""Readers on small fixtures in the official layouts; shard building and streaming."""

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from omegaconf import OmegaConf
from PIL import Image

from mmit.build import BuildError, build, compose_recipe
from mmit.data.annotations import (
    read_alpaca,
    read_caption_shards,
    read_coco_captions,
    read_jsonl,
    read_llava,
    read_vqav2,
)
from mmit.data.samples import SampleError
from mmit.data.shards import ShardStream, TarWriter, check_image, read_shards, shard_urls
from mmit.data.templates import load_templates
from mmit.paths import RECIPES_DIR

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]


def _png(color: str, size=(32, 24)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def make_sources(root: Path, n_images: int = 24) -> dict:
    """COCO captions + VQAv2 files and images for ``n_images`` one-colour pictures."""
    images = root / "train2014"
    images.mkdir(parents=True)
    coco = {"images": [], "annotations": []}
    questions = {"data_subtype": "train2014", "questions": []}
    vqa = {"annotations": []}
    for image_id in range(1, n_images + 1):
        color = COLORS[image_id % len(COLORS)]
        name = f"COCO_train2014_{image_id:012d}.png"
        (images / name).write_bytes(_png(color))
        coco["images"].append({"id": image_id, "file_name": name, "width": 32, "height": 24})
        for k, caption in enumerate([f"A {color} picture.", f"Everything is {color}."]):
            coco["annotations"].append({"id": image_id * 10 + k, "image_id": image_id, "caption": caption})
        for k, (q, a, t) in enumerate(
            [
                ("What color is the image?", color, "other"),
                ("Is the image red?", "yes" if color == "red" else "no", "yes/no"),
                ("How many colors are there?", "1", "number"),
            ]
        ):
            qid = image_id * 100 + k
            questions["questions"].append({"image_id": image_id, "question": q, "question_id": qid})
            answers = [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i in range(10)]
            vqa["annotations"].append(
                {
                    "question_id": qid,
                    "image_id": image_id,
                    "answer_type": t,
                    "question_type": "what",
                    "multiple_choice_answer": a,
                    "answers": answers,
                }
            )
    files = {
        "captions": root / "captions_train2014.json",
        "questions": root / "questions.json",
        "vqa": root / "annotations.json",
        "images": images,
    }
    files["captions"].write_text(json.dumps(coco))
    files["questions"].write_text(json.dumps(questions))
    files["vqa"].write_text(json.dumps(vqa))
    return files


def recipe(files: dict, out: Path, **overrides):
    cfg = {
        "name": "fixture",
        "seed": 0,
        "out_dir": str(out),
        "templates": str(RECIPES_DIR / "templates" / "vision.yaml"),
        "eval_fraction": 0.25,
        "shard_size": 10,
        "num_workers": 1,
        "on_error": "raise",
        "resize_max": None,
        "shaping": {
            "captions_per_image": 1,
            "qa_per_conversation": 2,
            "multiple_choice_fraction": 0.3,
            "held_out_tasks": ["vqa_multiple_choice"],
        },
        "sources": [
            {
                "_target_": "mmit.data.annotations.read_coco_captions",
                "annotations_file": str(files["captions"]),
                "images_dir": str(files["images"]),
            },
            {
                "_target_": "mmit.data.annotations.read_vqav2",
                "questions_file": str(files["questions"]),
                "annotations_file": str(files["vqa"]),
                "images_dir": str(files["images"]),
                "image_pattern": "COCO_{data_subtype}_{image_id:012d}.png",
            },
        ],
    }
    cfg.update(overrides)
    return OmegaConf.create(cfg)


@pytest.fixture
def sources(tmp_path):
    return make_sources(tmp_path / "src")


# --- readers -----------------------------------------------------------------------------


def test_coco_and_vqav2_readers(sources):
    caps = [a for _, a in read_coco_captions(str(sources["captions"]), str(sources["images"]))]
    assert len(caps) == 24 and caps[0].captions == ["A green picture.", "Everything is green."]
    assert caps[0].media[0].read() == (sources["images"] / "COCO_train2014_000000000001.png").read_bytes()
    vqas = [
        a
        for _, a in read_vqav2(
            str(sources["questions"]),
            str(sources["vqa"]),
            str(sources["images"]),
            "COCO_{data_subtype}_{image_id:012d}.png",
        )
    ]
    assert len(vqas) == 24 and [qa.answer for qa in vqas[0].qas] == ["green", "no", "1"]
    assert len(vqas[0].qas[0].answers) == 10 and vqas[0].group == caps[0].group  # same image, same group


def test_llava_jsonl_alpaca_and_caption_shard_readers(tmp_path, monkeypatch):
    (tmp_path / "a.png").write_bytes(_png("red"))
    llava = tmp_path / "llava.json"
    llava.write_text(
        json.dumps(
            [
                {
                    "id": "1",
                    "image": "a.png",
                    "conversations": [
                        {"from": "human", "value": "<image>\nWhat is it?"},
                        {"from": "gpt", "value": "Red."},
                    ],
                },
                {"id": "2", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
            ]
        )
    )
    items = [a for _, a in read_llava(str(llava), str(tmp_path))]
    assert [len(a.media) for a in items] == [1, 0] and items[0].messages[1].content == "Red."
    # Without images_dir, image paths are relative to the JSON's folder, wherever the command runs
    # (they were relative to the working directory, which could hold another a.png).
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "a.png").write_bytes(_png("blue"))
    monkeypatch.chdir(elsewhere)
    (first, _) = [a for _, a in read_llava(str(llava))]
    assert first.media[0].path == str(tmp_path / "a.png")

    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text(
        json.dumps(
            {
                "id": "x",
                "image": "a.png",
                "messages": [{"role": "user", "content": "Describe."}, {"role": "assistant", "content": "Red square."}],
            }
        )
        + "\n"
        + json.dumps({"instruction": "Say hi", "output": "hi"})
        + "\n"
    )
    items = [a for _, a in read_jsonl(str(jsonl))]
    assert [a.id for a in items] == ["x", f"{jsonl}:2"] and len(items[0].media) == 1

    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Add", "input": "1 2", "output": "3"}]))
    (item,) = [a for _, a in read_alpaca(str(alpaca))]
    assert item.messages[0].content == "Add\n\n1 2" and not item.media

    shard = tmp_path / "00000.tar"  # img2dataset layout
    with tarfile.open(shard, "w") as tar:
        for key, files in {
            "000000000": {"jpg": _png("blue"), "txt": b"a blue square", "json": b"{}"},
            "000000001": {"txt": b"no image here"},
        }.items():
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    items = list(read_caption_shards([str(shard)]))
    assert items[0][1].captions == ["a blue square"] and items[0][1].media[0].data == _png("blue")
    assert isinstance(items[1][1], SampleError) and items[1][1].reason == "missing_media"


# --- building ----------------------------------------------------------------------------


def test_build_writes_shards_and_manifest(sources, tmp_path):
    manifest = build(recipe(sources, tmp_path / "out"))
    sets = manifest["sets"]
    assert set(sets) == {"train", "val_seen", "val_heldout_templates", "val_heldout_tasks"}
    # Every caption image gives one training caption; VQA pairs are grouped two per conversation.
    train = list(read_shards(shard_urls(tmp_path / "out" / "train")))
    assert sets["train"]["samples"] == len(train)
    assert all(c.messages[0].content.startswith("<image>\n") for c in train)
    assert all(len(c.media) == 1 and c.media[0].data[:4] == b"\x89PNG" for c in train)
    assert any(len(c.messages) == 4 for c in train)  # multi-turn
    assert set(manifest["sources"]) == {str(sources["captions"]), str(sources["questions"]), str(sources["vqa"])}
    # Shards open with plain webdataset and tar.
    urls = shard_urls(tmp_path / "out" / "train")
    first = next(iter(wds.WebDataset(urls, shardshuffle=False, empty_check=False)))
    assert {"json", "0.png"} <= set(first)
    with tarfile.open(urls[0]) as tar:
        assert all(name.startswith("shard-000000-") for name in tar.getnames())


def _member_names(folder: Path) -> list[str]:
    names = []
    for url in shard_urls(folder):
        with tarfile.open(url) as tar:
            names += tar.getnames()
    return names


@pytest.mark.parametrize("share_media", [True, False])
def test_each_image_is_stored_once_per_set_with_all_its_conversations(sources, tmp_path, share_media):
    manifest = build(recipe(sources, tmp_path / "out", share_media=share_media))
    for name, summary in manifest["sets"].items():
        convs = list(read_shards(shard_urls(tmp_path / "out" / name)))
        images = [n for n in _member_names(tmp_path / "out" / name) if n.endswith(".png")]
        assert summary["samples"] == len(convs)
        assert (
            summary["records"] == len(images) == (len({c.meta["group"] for c in convs}) if share_media else len(convs))
        )
    train = manifest["sets"]["train"]
    assert (train["records"] < train["samples"]) == share_media  # a caption and QA conversations per image
    if share_media:  # the conversations of one shard sample share its image bytes
        first = next(iter(wds.WebDataset(shard_urls(tmp_path / "out" / "train"), shardshuffle=False)))
        record = json.loads(first["json"])
        assert len(record["conversations"]) > 1 and record["media"] == [{"kind": "image", "ext": "png"}]
        convs = list(read_shards(shard_urls(tmp_path / "out" / "train")))[: len(record["conversations"])]
        assert [c.id for c in convs] == [c["id"] for c in record["conversations"]]
        assert all(c.media[0].data is convs[0].media[0].data for c in convs)


def test_a_bad_image_skips_every_conversation_that_uses_it(sources, tmp_path):
    good = build(recipe(sources, tmp_path / "good"))
    bad_image = "COCO_train2014_000000000002.png"
    expected = {}
    for name in good["sets"]:
        n = sum(c.meta["group"] == bad_image for c in read_shards(shard_urls(tmp_path / "good" / name)))
        if n:
            expected[name] = n
    assert max(expected.values()) > 1  # several conversations share the image's shard sample
    (sources["images"] / bad_image).write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    bad = build(recipe(sources, tmp_path / "bad", on_error="skip"))
    skipped = {name: s["skipped"]["undecodable_media"] for name, s in bad["sets"].items() if s["skipped"]}
    assert skipped == expected
    for name, summary in bad["sets"].items():
        assert summary["samples"] == good["sets"][name]["samples"] - expected.get(name, 0)


def _decodes_fully(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception:
        return False
    return True


def _passes_check(data: bytes) -> bool:
    try:
        check_image(data, "photo.jpg")
    except SampleError as err:
        assert err.reason == "undecodable_media" and "photo.jpg" in str(err)
        return False
    return True


@pytest.mark.parametrize("mode, progressive", [("RGB", False), ("RGB", True), ("L", False), ("CMYK", False)])
def test_jpeg_check_at_one_eighth_scale_fails_exactly_where_a_full_decode_fails(mode, progressive):
    """The build checks JPEGs at 1/8 scale. Over cuts at 60 points and 100 random corruptions,
    the check fails exactly where a full decode fails."""
    rng = np.random.default_rng(0)
    out = io.BytesIO()
    noise = Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).convert(mode)
    noise.save(out, format="JPEG", quality=90, progressive=progressive)
    data = out.getvalue()
    variants = [data[:n] for n in range(0, len(data), len(data) // 60)]
    for at in rng.integers(0, len(data) - 16, 100):
        corrupt = bytearray(data)
        corrupt[at : at + 16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
        variants.append(bytes(corrupt))
    full = [_decodes_fully(v) for v in variants]
    assert [_passes_check(v) for v in variants] == full
    assert _passes_check(data) and 50 < full.count(False) < len(variants) - 50  # both verdicts are common


def test_shards_of_one_conversation_per_sample_still_read(tmp_path):
    """mmit 0.1.0 wrote each conversation as its own sample, with no ``conversations`` list."""
    record = {
        "id": "old-1",
        "messages": [{"role": "user", "content": "<image>\nColour?"}, {"role": "assistant", "content": "red"}],
        "meta": {"group": "a.png"},
        "media": [{"kind": "image", "ext": "png"}],
    }
    shard = tmp_path / "shard-000000.tar"
    with TarWriter(shard) as tar:
        tar.add("k-000000.json", json.dumps(record).encode())
        tar.add("k-000000.0.png", _png("red"))
    (conv,) = read_shards([str(shard)])
    assert conv.id == "old-1" and conv.messages[1].content == "red" and conv.media[0].data == _png("red")


def test_held_out_templates_and_tasks_never_in_training(sources, tmp_path):
    build(recipe(sources, tmp_path / "out"))
    held_out_ids = {
        t.id for ts in load_templates(RECIPES_DIR / "templates" / "vision.yaml").values() for t in ts if t.held_out
    }
    train = list(read_shards(shard_urls(tmp_path / "out" / "train")))
    used = {t for c in train for t in c.meta["templates"]}
    assert used and not used & held_out_ids
    assert not {t for c in train for t in c.meta["tasks"]} & {"vqa_multiple_choice"}
    heldout = list(read_shards(shard_urls(tmp_path / "out" / "val_heldout_templates")))
    assert {t for c in heldout for t in c.meta["templates"]} <= held_out_ids
    tasks = list(read_shards(shard_urls(tmp_path / "out" / "val_heldout_tasks")))
    assert tasks and all(c.meta["tasks"] == ["vqa_multiple_choice"] for c in tasks)
    assert all(c.messages[-1].content in "ABCD" for c in tasks)


def test_no_image_in_two_splits(sources, tmp_path):
    build(recipe(sources, tmp_path / "out"))
    groups = {
        name: {c.meta["group"] for c in read_shards(shard_urls(tmp_path / "out" / name))}
        for name in ("train", "val_seen", "val_heldout_templates")
    }
    assert groups["train"] and groups["val_seen"]
    assert not groups["train"] & (groups["val_seen"] | groups["val_heldout_templates"])


def test_rebuild_is_byte_identical(sources, tmp_path):
    build(recipe(sources, tmp_path / "a"))
    build(recipe(sources, tmp_path / "b"))
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("shard-*"))
    assert files_a == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("shard-*"))
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    other_seed = tmp_path / "c"
    build(recipe(sources, other_seed, seed=1))
    assert (other_seed / "train" / "shard-000000.tar").read_bytes() != (
        tmp_path / "a" / "train" / "shard-000000.tar"
    ).read_bytes()


@pytest.mark.parametrize("workers", [1, 2])
def test_interrupted_build_finishes_without_redoing_shards(sources, tmp_path, workers):
    out = tmp_path / "out"
    cfg = recipe(sources, out, num_workers=workers)
    build(cfg)
    shards = sorted((out / "train").glob("shard-*.tar"))
    assert len(shards) >= 2
    reference = {p: p.read_bytes() for p in shards}
    # A kill mid-build: the last shard and its stats are missing, a partial temp file is left.
    shards[-1].unlink()
    shards[-1].with_suffix(".json").unlink()
    (out / "train" / f".{shards[-1].name}.tmp-999").write_bytes(b"partial")
    mtimes = {p: p.stat().st_mtime_ns for p in shards[:-1]}
    build(cfg)
    assert {p: p.read_bytes() for p in shards} == reference
    assert {p: p.stat().st_mtime_ns for p in shards[:-1]} == mtimes
    assert not list((out / "train").glob(".*tmp*"))
    with pytest.raises(BuildError, match="different recipe"):
        build(recipe(sources, out, seed=5))


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            {"_target_": "mmit.data.annotations.format_seconds", "value": 1},
            "format_seconds is not an annotation reader: it returned str",
        ),
        (
            {"_target_": "mmit.data.sources.jsonl_records", "path": "{tmp}/a.jsonl"},
            r"jsonl_records is not an annotation reader: it gave \(str, dict\), not \(place, annotation\) pairs",
        ),
    ],
)
def test_a_source_that_is_not_a_reader_is_named(sources, tmp_path, source, message):
    # Was "not enough values to unpack (expected 2, got 1)", naming nothing
    (tmp_path / "a.jsonl").write_text('{"caption": "x"}\n')
    source = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in source.items()}
    cfg = recipe(sources, tmp_path / "out")
    cfg.sources = [source]
    with pytest.raises(BuildError, match=message):
        build(cfg)


def test_held_out_tasks_the_templates_do_not_word_are_named_with_those_they_do(sources, tmp_path):
    cfg = recipe(sources, tmp_path / "out")
    cfg.shaping.held_out_tasks = ["conversation"]
    with pytest.raises(
        BuildError, match=r"\['conversation'\], which the recipe's templates do not word; its tasks are caption_brief"
    ):
        build(cfg)


def test_a_folder_of_other_files_is_not_taken_for_a_build(sources, tmp_path):
    # out_dir pointed at the data folder itself: its sets were written among the user's files
    with pytest.raises(
        BuildError,
        match=r"src holds files that are not an mmit build \(annotations.json, captions_train2014.json, questions.json, ...\); choose a new or empty",
    ):
        build(recipe(sources, tmp_path / "src"))
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == sorted(
        ["annotations.json", "captions_train2014.json", "questions.json", "train2014"]
    )


def test_sources_that_give_no_annotations_stop_the_build_naming_why(sources, tmp_path):
    # These built nothing and reported success: VQAv2's two files the other way round, an empty file.
    swapped = recipe(sources, tmp_path / "swapped")
    vqa = swapped.sources[1]
    vqa.questions_file, vqa.annotations_file = vqa.annotations_file, vqa.questions_file
    swapped.sources = [vqa]
    with pytest.raises(
        BuildError,
        match=r"questions.json: no 'annotations' list \(its keys: 'data_subtype', 'questions'\); is it the right",
    ):
        build(swapped)
    (tmp_path / "empty.jsonl").touch()
    empty = recipe(sources, tmp_path / "empty")
    empty.sources = [
        {
            "_target_": "mmit.data.annotations.read_caption_jsonl",
            "path": str(tmp_path / "empty.jsonl"),
            "images_dir": str(tmp_path),
        }
    ]
    with pytest.raises(BuildError, match="recipe 'fixture': its sources gave no annotations; are they the right files"):
        build(empty)
    (tmp_path / "gone.jsonl").write_text('{"image": "gone.png", "caption": "A picture."}\n')
    skipped = recipe(sources, tmp_path / "skipped", on_error="skip")
    skipped.sources = [
        {
            "_target_": "mmit.data.annotations.read_caption_jsonl",
            "path": str(tmp_path / "gone.jsonl"),
            "images_dir": str(tmp_path),
        }
    ]
    with pytest.raises(BuildError, match=r"gave no annotations \(every record was skipped: missing_media 1\)"):
        build(skipped)
    assert not (tmp_path / "skipped" / "manifest.json").exists()


def test_bad_inputs_raise_with_location_or_are_counted(sources, tmp_path):
    coco = json.loads(sources["captions"].read_text())
    coco["annotations"].append({"id": 999, "image_id": 2, "caption": "   "})  # empty answer
    coco["annotations"].append({"id": 998, "caption": "no image id"})  # missing field
    coco["images"].append(dict(coco["images"][0]))  # duplicate id
    coco["images"].append({"id": 500, "file_name": "missing.png"})  # missing media
    coco["annotations"].append({"id": 997, "image_id": 500, "caption": "gone"})
    (sources["images"] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")  # undecodable
    coco["images"].append({"id": 501, "file_name": "broken.png"})
    coco["annotations"].append({"id": 996, "image_id": 501, "caption": "broken"})
    coco["images"].append({**coco["images"][0], "id": 502})  # a caption JSON escapes into a lone surrogate
    coco["annotations"].append({"id": 995, "image_id": 502, "caption": "red \ud800"})
    sources["captions"].write_text(json.dumps(coco))
    bad_jsonl = tmp_path / "extra.jsonl"
    bad_jsonl.write_bytes(
        b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
        b"{not json\n"
        b'{"id": "u", "messages": [{"role": "user", "content": "caf\xe9"}, {"role": "assistant", "content": "a"}]}\n'
    )
    extra = {"_target_": "mmit.data.annotations.read_jsonl", "path": str(bad_jsonl)}

    strict = recipe(sources, tmp_path / "strict")
    strict.sources.append(extra)
    with pytest.raises(BuildError, match=r"captions_train2014\.json:annotations\[\d+\]"):
        build(strict)

    # The strict build stopped before writing anything, so its folder is free for the next try
    # (a build that wrote shards stays another recipe's: test_interrupted_build_finishes_without_redoing_shards)
    assert sorted(p.name for p in (tmp_path / "strict").iterdir()) == [".mmit-writer.lock", "build.json"]
    lenient = recipe(sources, tmp_path / "strict", on_error="skip")
    lenient.sources.append(extra)
    manifest = build(lenient)
    (tmp_path / "strict").rename(tmp_path / "lenient")
    assert manifest["skipped_annotations"] == {
        "bad_json": 1,
        "duplicate_id": 1,
        "empty_answer": 1,
        "missing_field": 1,
        "missing_media": 1,
        "not_utf8": 1,
    }
    # The broken image is dropped from every sample that uses it (counted per sample).
    undecodable = sum(s["skipped"].get("undecodable_media", 0) for s in manifest["sets"].values())
    groups = {
        c.meta["group"] for name in manifest["sets"] for c in read_shards(shard_urls(tmp_path / "lenient" / name))
    }
    assert undecodable >= 1 and "broken.png" not in groups
    assert sum(s["skipped"].get("not_utf8", 0) for s in manifest["sets"].values()) == 1
    # No good sample lost: every good image still appears in some set.
    assert {f"COCO_train2014_{i:012d}.png" for i in range(1, 25)} <= groups


def test_demo_recipe_composes_and_builds_small(tmp_path):
    cfg = compose_recipe(
        "demo_vqa",
        [f"out_dir={tmp_path / 'demo'}", "prepare.n_images=40", f"prepare.out_dir={tmp_path / 'src'}", "num_workers=1"],
    )
    manifest = build(cfg)
    assert manifest["sets"]["train"]["samples"] > 40
    assert manifest["sets"]["val_heldout_tasks"]["by_task"] == {
        "caption_detailed": manifest["sets"]["val_heldout_tasks"]["samples"]
    }
    assert not manifest["skipped_annotations"]


# --- streaming ---------------------------------------------------------------------------


@pytest.fixture
def built(sources, tmp_path):
    build(recipe(sources, tmp_path / "out", shard_size=4))
    return shard_urls(tmp_path / "out" / "train")


def test_rank_by_worker_split_covers_every_sample_once(built):
    everything = sorted(c.id for c in read_shards(built))
    assert len(built) >= 4
    for epoch in (0, 1):
        seen = []
        for rank in range(2):
            for worker in range(2):
                stream = ShardStream(built, shuffle_buffer=5, seed=3, rank=rank, world_size=2)
                stream.set_epoch(epoch)
                seen += [c.id for c in stream.iter_worker(worker, 2)]
        assert sorted(seen) == everything and len(set(seen)) == len(seen)


def test_epochs_reshuffle_with_the_seed(built):
    def order(seed, epoch):
        stream = ShardStream(built, shuffle_buffer=8, seed=seed)
        stream.set_epoch(epoch)
        return [c.id for c in stream]

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and sorted(order(0, 0)) == sorted(order(0, 1))
    assert order(0, 0) != order(1, 0)


def test_position_restores_mid_epoch(built):
    full = ShardStream(built, shuffle_buffer=6, seed=1)
    full.set_epoch(2)
    reference = [c.id for c in full]
    first = ShardStream(built, shuffle_buffer=6, seed=1)
    first.set_epoch(2)
    iterator = iter(first)
    head = [next(iterator).id for _ in range(7)]
    state = first.state()
    resumed = ShardStream(built, shuffle_buffer=6, seed=1)
    resumed.load_position(state)
    assert head + [c.id for c in resumed] == reference
    assert Counter(reference) == Counter(c.id for c in read_shards(built))


def test_show_prints_counts_and_draws_a_contact_sheet(sources, tmp_path, capsys):
    from mmit.show import main as show

    build(recipe(sources, tmp_path / "out"))
    show([str(tmp_path / "out"), "--samples", "1", "--sheet", str(tmp_path / "sheet.png")])
    printed = capsys.readouterr().out
    assert "recipe 'fixture'" in printed and "=== train" in printed and "assistant:" in printed
    # A multi-line user turn: the role once, the next line aligned under the text.
    assert "     user: <image>\n           " in printed and printed.count("user:") == printed.count("assistant:")
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.size[0] == 4 * 200 and sheet.size[1] >= 200


def test_the_contact_sheet_shows_distinct_images_each_with_a_question_and_its_answer(sources, tmp_path):
    from mmit.show import contact_sheet, distinct_images, first_exchange

    build(recipe(sources, tmp_path / "out"))
    convs = list(read_shards(shard_urls(tmp_path / "out" / "train")))
    images = distinct_images(convs, 16)
    assert len(images) == min(16, len({c.media[0].read() for c in convs if c.media}))
    assert len({data for data, _, _ in images}) == len(images)  # every cell a different image
    assert any(n > 1 for _, _, n in images)  # several conversations about one image share its cell
    for _, conv, _ in images:
        question, answer = first_exchange(conv)
        assert question and "<image>" not in question and answer
        user = next(m.content for m in conv.messages if m.role == "user")
        assert " ".join(user.replace("<image>", " ").split()) == question
    assert contact_sheet(iter(convs), tmp_path / "sheet.png", count=16) == len(images)
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.size == (4 * 200, -(-len(images) // 4) * (200 + 84))


@pytest.mark.slow
def test_build_command_line(sources, tmp_path):
    import subprocess
    import sys

    recipe_file = tmp_path / "fixture.yaml"
    recipe_file.write_text(OmegaConf.to_yaml(recipe(sources, tmp_path / "cli")))
    run = subprocess.run(
        [sys.executable, "-m", "mmit.build", str(recipe_file), "shard_size=50"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "built fixture into" in run.stdout and "train" in run.stdout
    assert json.loads((tmp_path / "cli" / "manifest.json").read_text())["config"]["shard_size"] == 50
    missing = subprocess.run(
        [sys.executable, "-m", "mmit.build", "coco_vqav2"], capture_output=True, text=True, timeout=300
    )
    assert missing.returncode != 0 and "needs values for ['coco_root', 'out_dir']" in missing.stderr


def test_streaming_batches_cover_each_sample_once_and_resume(built):
    from mmit.data.loader import StreamingBatches

    ids = [c.id for c in read_shards(built)]

    class Tokenized:  # stands in for a TokenizedSample: an id and a length
        def __init__(self, conv):
            self.id, self.input_ids = conv.id, conv.id

    def make():
        # The first sample is skipped, as a tokenization policy would do.
        tokenize = lambda c: None if c.id == ids[0] else Tokenized(c)  # noqa: E731
        return StreamingBatches(
            built, tokenize, 4, lambda b: [s.id for s in b], seed=2, shuffle_buffer=5, group_by_length=2
        )

    stream = make()
    per_epoch = -(-(len(ids) - 1) // 4)
    epoch0 = [i for _ in range(per_epoch) for i in next(stream)]
    assert sorted(epoch0) == sorted(ids[1:]) and stream.state() == {"epoch": 0, "index": per_epoch}
    epoch1 = [i for _ in range(per_epoch) for i in next(stream)]
    assert sorted(epoch1) == sorted(epoch0) and epoch1 != epoch0
    reference = make()
    expected = [next(reference) for _ in range(per_epoch + 3)]
    first = make()
    head = [next(first) for _ in range(3)]
    resumed = make()
    resumed.load_state(first.state())
    assert head + [next(resumed) for _ in range(per_epoch)] == expected


def test_the_tar_writer_gives_the_bytes_tarfile_writes(tmp_path):

    files = [("s-000000.json", b'{"id": 1}'), ("s-000000.0.png", bytes(range(256)) * 5), ("x" * 120 + ".json", b"")]
    files += [("ñandú-é.json", b"x" * 511), ("y" * 99, b"z" * 513), ("y" * 100, b""), ("a.b", b"q" * 70000)]
    with TarWriter(tmp_path / "ours.tar") as ours:
        for name, data in files:
            ours.add(name, data)
    with tarfile.open(tmp_path / "tarfile.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    assert (tmp_path / "ours.tar").read_bytes() == (tmp_path / "tarfile.tar").read_bytes()
    with tarfile.open(tmp_path / "ours.tar") as tar:  # the long name comes back whole
        assert [(m.name, m.size) for m in tar.getmembers()] == [(n, len(d)) for n, d in files]
    assert not list(tmp_path.glob(".*tmp*"))


def test_distractors_pick_what_sampling_the_pool_without_the_answer_picks():
    import random

    from mmit.data.instructions import distractors

    words = sorted({f"w{random.Random(0).randrange(10**6)}-{i}" for i in range(300)})
    for trial in range(200):
        rng = random.Random(trial)
        pool = sorted(rng.sample(words, rng.randrange(3, 60)))
        answer = rng.choice(pool) if trial % 3 else "not in the pool"
        k = rng.randrange(1, 3)
        a, b = random.Random(trial), random.Random(trial)
        assert distractors(pool, answer, k, a) == b.sample(sorted({w for w in pool if w != answer}), k)
        assert a.random() == b.random()  # the generator moved on the same way


def test_template_without_a_needed_field_names_the_template_and_field():
    from mmit.data.templates import Template

    template = Template("vqa-7", "vqa_short", "Q: {question} ({options})")
    assert template.render({"question": "why?", "options": "A"}) == "Q: why? (A)"
    with pytest.raises(KeyError, match=r"'vqa-7' needs field\(s\) \['options'\]"):
        template.render({"question": "why?"})


def test_build_pauses_garbage_collection_and_restores_it(sources, tmp_path):
    import gc

    assert gc.isenabled()
    build(recipe(sources, tmp_path / "a"))
    assert gc.isenabled()
    gc.disable()
    try:
        build(recipe(sources, tmp_path / "b"))
        assert not gc.isenabled()  # a caller's own setting is kept
    finally:
        gc.enable()


def test_two_workers_write_the_shards_one_worker_writes(sources, tmp_path):
    import pickle

    from mmit.data.build_plan import ChunkJob

    manifests = {n: build(recipe(sources, tmp_path / f"w{n}", num_workers=n, shard_size=2)) for n in (1, 2)}
    one, two = tmp_path / "w1", tmp_path / "w2"
    files = sorted(p.relative_to(one) for p in one.rglob("shard-*"))
    assert len(files) > 4 and files == sorted(p.relative_to(two) for p in two.rglob("shard-*"))
    for rel in files:
        assert (one / rel).read_bytes() == (two / rel).read_bytes(), rel
    assert manifests[1]["sets"] == manifests[2]["sets"]
    # The templates and the answer pool reach each worker once (pool initializer), not with every chunk.
    job = ChunkJob(0, "train", [])
    assert b"Template" not in pickle.dumps(job)


def test_a_worker_process_reports_a_bad_image_by_name(sources, tmp_path):
    (sources["images"] / "COCO_train2014_000000000002.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    with pytest.raises(BuildError, match=r"000000000002\.png: image does not decode"):
        build(recipe(sources, tmp_path / "out", num_workers=2, shard_size=2))


def test_a_chunk_trusts_the_pools_image_checks(sources, tmp_path, monkeypatch):
    """With a pool, images are decoded in batches first; a chunk then reads the good ones' bytes
    without decoding them again, and reports the bad ones as the check found them."""
    from mmit.data import media_checks
    from mmit.data.build_plan import BuildPlan, ChunkJob, build_chunk
    from mmit.data.instructions import answer_pool
    from mmit.data.recipes import shaping_config
    from mmit.data.shard_writer import Storage
    from mmit.data.splits import read_annotations

    cfg = recipe(sources, tmp_path / "out")
    annotations = read_annotations(cfg, Counter())
    templates = load_templates(cfg.templates)
    shaping = shaping_config(cfg, templates)
    plan = BuildPlan(tmp_path / "out", templates, shaping, answer_pool(annotations), Storage("skip"))
    (tmp_path / "out" / ".chunks").mkdir(parents=True)
    (tmp_path / "out" / "train").mkdir()
    anns = sorted(annotations, key=lambda a: a.group)[:6]  # two kinds of annotation per image
    job = ChunkJob(0, "train", anns)
    bad = job.images()[0]
    job.checked = {path: None for path in job.images()} | {bad: ("undecodable_media", f"{bad}: does not decode")}
    monkeypatch.setattr(media_checks, "check_image", lambda *args: pytest.fail("decoded again"))
    stats = build_chunk(job, plan)["train"]
    assert stats["skipped"]["undecodable_media"] >= 2  # the bad image's caption and VQA conversations
    convs = list(read_shards([str(tmp_path / "out" / "train" / "shard-000000.tar")]))
    assert {c.meta["group"] for c in convs} == {Path(p).name for p in job.images()[1:]}
    assert all(c.media[0].data == Path(sources["images"] / c.meta["group"]).read_bytes() for c in convs)


def test_a_stale_build_is_built_again_in_the_cache_and_refused_elsewhere(sources, tmp_path, monkeypatch):
    """Training asks for a recipe's shards: a build from another recipe, settings or mmit version
    (another shard format) must not be used as if it were current."""
    import mmit
    from mmit.data.build import recipe_data_files

    monkeypatch.setenv("MMIT_CACHE", str(tmp_path / "cache"))
    cached, mine = tmp_path / "cached.yaml", tmp_path / "mine.yaml"
    OmegaConf.save(recipe(sources, tmp_path / "cache" / "datasets" / "fixture"), cached)
    OmegaConf.save(recipe(sources, tmp_path / "mine"), mine)

    def seed_of(files) -> int:
        return json.loads((Path(files.train[0]).parent / "manifest.json").read_text())["seed"]

    assert seed_of(recipe_data_files(str(cached))) == 0
    assert seed_of(recipe_data_files(str(cached), ["seed=3"])) == 3  # built again, not the seed-0 shards
    monkeypatch.setattr(mmit, "__version__", "99.0")
    stamp = tmp_path / "cache" / "datasets" / "fixture" / "build.json"
    before = stamp.read_text()
    assert seed_of(recipe_data_files(str(cached), ["seed=3"])) == 3 and stamp.read_text() != before
    recipe_data_files(str(mine))
    with pytest.raises(BuildError, match="delete it first"):
        recipe_data_files(str(mine), ["seed=3"])


def test_caption_shards_are_read_sample_by_sample_and_name_what_is_wrong(tmp_path):
    """img2dataset shards go through the reader of mmit's own: one sample in memory at a time, keys
    with their folders (a/1 and b/1 stay apart), a corrupt .tar.gz named rather than a zlib error."""
    import gzip

    shard = tmp_path / "00000.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in (
            ("a/1.png", _png("red")),
            ("a/1.txt", b"red"),
            ("b/1.png", _png("blue")),
            ("b/1.txt", b"blue"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    items = list(read_caption_shards([str(shard)]))
    assert [(where, a.captions) for where, a in items] == [(f"{shard}:a/1", ["red"]), (f"{shard}:b/1", ["blue"])]
    packed = gzip.compress(shard.read_bytes())
    broken = tmp_path / "00001.tar.gz"
    broken.write_bytes(packed[:30] + b"\xff" * 32 + packed[62:])  # deflate data that cannot be
    *_, (where, error) = list(read_caption_shards([str(broken)]))
    assert isinstance(error, SampleError) and error.reason == "broken_shard" and str(broken) in str(error)
