"""Shard folders get the checks and the on_error policy of data files: every bad record names its
shard file and sample key; ``skip`` counts it by reason and keeps every good sample."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from mmit.data.samples import SampleError
from mmit.data.sources import DataFileError, read_conversations


def _png(color: str = "red", size=(16, 12)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def _record(messages, media=("png",), meta=None, conv_id="c") -> bytes:
    conv = {"id": conv_id, "messages": messages, "meta": {} if meta is None else meta}
    return json.dumps({"conversations": [conv], "media": [{"kind": "image", "ext": e} for e in media]}).encode()


GOOD_MESSAGES = [{"role": "user", "content": "<image>\nWhat colour is it?"}, {"role": "assistant", "content": "red"}]


def _good(key: str) -> list[tuple[str, bytes]]:
    return [(f"{key}.json", _record(GOOD_MESSAGES, conv_id=f"{key}-good")), (f"{key}.0.png", _png())]


# kind -> (the members of one bad sample, the reason it is counted under)
BAD = {
    "bad_json": ([("s-bad.json", b"{not json"), ("s-bad.0.png", _png())], "bad_json"),
    "not_utf8": ([("s-bad.json", b'{"a": "\xff"}')], "not_utf8"),
    "not_an_object": ([("s-bad.json", b"[1, 2]")], "not_an_object"),
    "corrupt_image": ([("s-bad.json", _record(GOOD_MESSAGES)), ("s-bad.0.png", _png()[:40])], "undecodable_media"),
    "missing_image": ([("s-bad.json", _record(GOOD_MESSAGES))], "missing_media"),
    "placeholder_mismatch": (
        [
            ("s-bad.json", _record([{"role": "user", "content": "<image><image> two?"}, GOOD_MESSAGES[1]])),
            ("s-bad.0.png", _png()),
        ],
        "media_mismatch",
    ),
    "image_without_placeholder": (
        [
            ("s-bad.json", _record([{"role": "user", "content": "no placeholder"}, GOOD_MESSAGES[1]])),
            ("s-bad.0.png", _png()),
        ],
        "media_mismatch",
    ),
    "unknown_role": (
        [("s-bad.json", _record([GOOD_MESSAGES[0], {"role": "wizard", "content": "red"}])), ("s-bad.0.png", _png())],
        "unknown_role",
    ),
    "empty_answer": (
        [("s-bad.json", _record([GOOD_MESSAGES[0], {"role": "assistant", "content": "  "}])), ("s-bad.0.png", _png())],
        "empty_content",
    ),
    "meta_is_a_string": ([("s-bad.json", _record(GOOD_MESSAGES, meta="x")), ("s-bad.0.png", _png())], "wrong_type"),
    "meta_tasks_is_a_string": (  # scoring would read "vqa" as the turns' tasks "v", "q", "a"
        [("s-bad.json", _record(GOOD_MESSAGES, meta={"tasks": "vqa"})), ("s-bad.0.png", _png())],
        "wrong_type",
    ),
    "meta_answers_hold_a_number": (
        [("s-bad.json", _record(GOOD_MESSAGES, meta={"answers": [2]})), ("s-bad.0.png", _png())],
        "wrong_type",
    ),
    "content_is_a_number": (
        [("s-bad.json", _record([GOOD_MESSAGES[0], {"role": "assistant", "content": 5}])), ("s-bad.0.png", _png())],
        "wrong_type",
    ),
    "unknown_media_kind": (
        [
            (
                "s-bad.json",
                json.dumps(
                    {
                        "conversations": [{"id": "c", "messages": GOOD_MESSAGES}],
                        "media": [{"kind": "exe", "ext": "png"}],
                    }
                ).encode(),
            ),
            ("s-bad.0.png", _png()),
        ],
        "wrong_type",
    ),
    "parent_dir_member": (
        [("../../s-bad.json", _record(GOOD_MESSAGES)), ("../../s-bad.0.png", _png())],
        "bad_member_name",
    ),
    "absolute_member": ([("/tmp/s-bad.json", _record(GOOD_MESSAGES)), ("/tmp/s-bad.0.png", _png())], "bad_member_name"),
    "media_kind_is_a_list": (
        [
            (
                "s-bad.json",
                json.dumps(
                    {
                        "conversations": [{"id": "c", "messages": GOOD_MESSAGES}],
                        "media": [{"kind": ["image"], "ext": "png"}],
                    }
                ).encode(),
            ),
            ("s-bad.0.png", _png()),
        ],
        "wrong_type",
    ),
    # json.loads raises ValueError for an integer of over 4,300 digits, RecursionError for deep nesting
    "number_too_long": ([("s-bad.json", b'{"id": ' + b"9" * 5000 + b"}")], "bad_json"),
    "nested_too_deep": ([("s-bad.json", b"[" * 100_000)], "bad_json"),
    "postscript_named_png": (  # Pillow would open it as EPS (Ghostscript runs on load): not a format mmit reads
        [("s-bad.json", _record(GOOD_MESSAGES)), ("s-bad.0.png", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n")],
        "undecodable_media",
    ),
}


def _shard(folder: Path, members: list[tuple[str, bytes]], name: str = "shard-000000.tar") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with tarfile.open(path, "w") as tar:
        for member, data in members:
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_bad_shard_record_names_shard_and_key_or_is_counted(kind, tmp_path):
    members, reason = BAD[kind]
    shard = _shard(tmp_path / "set", [*_good("s-000"), *members, *_good("s-002")])
    with pytest.raises(DataFileError) as raised:
        read_conversations([tmp_path / "set"], on_error="raise")
    assert str(shard) in str(raised.value) and "s-bad" in str(raised.value), raised.value
    skipped = Counter()
    kept = read_conversations([tmp_path / "set"], on_error="skip", skipped=skipped)
    assert [c.id for c in kept] == ["s-000-good", "s-002-good"]  # no good sample lost
    assert skipped == Counter({reason: 1}), skipped
    assert not list(tmp_path.rglob("tmp")) and not (tmp_path.parent / "s-bad.json").exists()  # nothing extracted


def test_only_raster_formats_are_opened(tmp_path):
    """Pillow picks a decoder by the bytes: PostScript under any name would open as EPS, whose loading
    runs Ghostscript. open_image refuses it before anything decodes; the usual formats open."""
    from mmit.data.media import IMAGE_FORMATS, open_image

    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"
    assert Image.open(io.BytesIO(eps)).format == "EPS"  # what plain Image.open does with it
    with pytest.raises(
        SampleError, match="x.png: image does not decode, or is in none of the formats mmit reads"
    ) as raised:
        with open_image(eps, "x.png"):
            pass
    assert raised.value.reason == "undecodable_media"
    for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"):
        out = io.BytesIO()
        Image.new("RGB", (8, 8), "red").save(out, format=fmt)
        with open_image(out.getvalue(), f"x.{fmt.lower()}") as image:
            assert image.format in IMAGE_FORMATS and image.size == (8, 8)


def test_a_cut_short_shard_keeps_the_samples_before_the_cut(tmp_path):
    shard = _shard(tmp_path / "set", [*_good("s-000"), *_good("s-001"), *_good("s-002")])
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(DataFileError, match=str(shard)):
        read_conversations([tmp_path / "set"], on_error="raise")
    skipped = Counter()
    kept = read_conversations([tmp_path / "set"], on_error="skip", skipped=skipped)
    assert [c.id for c in kept][:1] == ["s-000-good"] and skipped["broken_shard"] == 1


def test_a_sample_whose_members_are_too_large_together_is_refused_unread(tmp_path, monkeypatch):
    """Each member under the per-member limit, the sample over the per-sample one: refused by its
    declared sizes, before the rest is read (a sample is held whole in memory)."""
    import mmit.data.shards as shards

    good = _good("s-000")
    monkeypatch.setattr(shards, "SAMPLE_LIMIT", sum(len(data) for _, data in good))  # the good sample fits
    record = _record(GOOD_MESSAGES, media=("png", "png"))
    big = [("s-bad.json", record), ("s-bad.0.png", _png()), ("s-bad.1.png", _png())]
    _shard(tmp_path / "set", [*good, *big])
    skipped = Counter()
    kept = read_conversations([tmp_path / "set"], on_error="skip", skipped=skipped)
    assert [c.id for c in kept] == ["s-000-good"] and skipped == Counter({"member_too_large": 1})
    with pytest.raises(DataFileError, match="s-bad: its members hold over .* bytes together"):
        read_conversations([tmp_path / "set"], on_error="raise")


def test_duplicate_ids_across_shards_follow_the_policy(tmp_path):
    _shard(tmp_path / "set", _good("s-000"), "shard-000000.tar")
    _shard(tmp_path / "set", _good("s-000"), "shard-000001.tar")
    with pytest.raises(DataFileError, match="shard-000001.tar"):
        read_conversations([tmp_path / "set"], on_error="raise")
    skipped = Counter()
    assert len(read_conversations([tmp_path / "set"], on_error="skip", skipped=skipped)) == 1
    assert skipped == Counter({"duplicate_id": 1})


def test_a_streamed_bad_record_reaches_the_tokenizers_policy(tiny, tmp_path):
    """Streaming (data.stream=true): the stream cannot skip on its own, so a bad record travels as
    an error that the tokenizer's on_error policy raises or counts; using it in any other way raises."""
    from mmit.data.shards import ShardStream
    from mmit.data.tokenize import Tokenizer

    text = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]
    members = [(f"k{i}.json", _record(text, media=(), conv_id=f"k{i}")) for i in range(3)]
    members.insert(1, ("kbad.json", _record([text[0], {"role": "wizard", "content": "hi"}], media=(), conv_id="bad")))
    shard = _shard(tmp_path / "set", members)
    convs = list(ShardStream([str(shard)], shuffle_buffer=0))
    assert len(convs) == 4
    skip = Tokenizer(tiny.tokenizer, 64, on_error="skip")
    assert sum(skip(c) is not None for c in convs) == 3 and skip.skipped == Counter({"unknown_role": 1})
    with pytest.raises(SampleError, match=f"{shard}:kbad"):
        for conv in convs:
            Tokenizer(tiny.tokenizer, 64, on_error="raise")(conv)
    bad = next(c for c in convs if not c.messages)
    with pytest.raises(SampleError):
        bad.as_chat()


def test_what_mmit_build_writes_passes_the_checks(tmp_path):
    """The checks accept every shard the builder writes (text, one image, two images)."""
    from mmit.data.samples import Conversation, MediaRef, Message
    from mmit.data.shards import TarWriter, encode_sample

    two = [MediaRef("image", "png", data=_png("red")), MediaRef("image", "png", data=_png("blue"))]
    convs = [
        Conversation("a", [Message("user", "<image>\n<image>\nSame?"), Message("assistant", "no")], {"x": 1}, two),
        Conversation("b", [Message("system", "Be brief."), Message("user", "hi"), Message("assistant", "hi")], {}, []),
    ]
    files = encode_sample("shard-000000-000000", convs[:1], two) + encode_sample("shard-000000-000001", convs[1:], [])
    (tmp_path / "set").mkdir()
    with TarWriter(tmp_path / "set" / "shard-000000.tar") as tar:
        for name, data in files:
            tar.add(name, data)
    kept = read_conversations([tmp_path / "set"], on_error="raise")
    assert [c.id for c in kept] == ["a", "b"] and [len(c.media) for c in kept] == [2, 0]
    assert kept[0].media[1].read() == _png("blue") and kept[0].meta == {"x": 1}


def test_the_build_writes_only_records_the_readers_accept(tmp_path):
    """A conversation with more <image> placeholders than images is refused (or counted) by the build,
    naming file and line, so that no shard it writes fails the readers' checks."""
    from omegaconf import OmegaConf

    from mmit.build import BuildError, build
    from mmit.paths import RECIPES_DIR

    (tmp_path / "red.png").write_bytes(_png())
    turns = [{"role": "user", "content": "<image>\n<image>\nTwo?"}, {"role": "assistant", "content": "red"}]
    records = [{"id": f"g{i}", "messages": GOOD_MESSAGES, "image": "red.png"} for i in range(2)]
    records.insert(1, {"id": "bad", "messages": turns, "image": "red.png"})
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))

    def cfg(on_error):
        return OmegaConf.create(
            {
                "name": "placeholders",
                "seed": 0,
                "out_dir": str(tmp_path / on_error),
                "templates": str(RECIPES_DIR / "templates" / "vision.yaml"),
                "eval_fraction": 0.0,
                "shard_size": 10,
                "num_workers": 1,
                "on_error": on_error,
                "shaping": {},
                "sources": [{"_target_": "mmit.data.annotations.read_jsonl", "path": str(path)}],
            }
        )

    with pytest.raises(BuildError, match=f"{path}:2: .*2 <image> placeholder"):
        build(cfg("raise"))
    manifest = build(cfg("skip"))
    assert manifest["skipped_annotations"] == {"media_mismatch": 1}
    assert [c.id for c in read_conversations([tmp_path / "skip" / "train"])] == ["g0", "g1"]


def test_a_sample_without_its_json_member_names_the_members_it_has():
    from mmit.data.shards import decode_record

    [(where, error)] = decode_record("s.tar:k1", {"pyc": b"\x00", "0.png": b"\x89PNG"})
    assert where == "s.tar:k1" and error.reason == "missing_field"
    assert str(error) == "s.tar:k1: no .json member for this sample (its members: .0.png, .pyc)"
