"""A field of the wrong type (null, a string, a number, a list, an object where another is
expected) never crashes a reader: it is an error naming the file and line, or a counted skip."""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from mmit.build import BuildError, build
from mmit.data import annotations
from mmit.data.annotations import Annotation
from mmit.data.samples import SampleError
from mmit.data.sources import DataFileError, read_conversations

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}

# Records a user's data=files JSONL may hold. Each is bad in one field's type.
BAD_RECORDS = {
    "meta_string": {**GOOD, "meta": "x"},
    "meta_number": {**GOOD, "meta": 5},
    "meta_list": {**GOOD, "meta": [1]},
    "meta_tasks_string": {**GOOD, "meta": {"tasks": "vqa"}},  # scoring would read tasks "v", "q", "a"
    "meta_answers_numbers": {**GOOD, "meta": {"answers": [1, 2]}},
    "id_object": {**GOOD, "id": {"a": 1}},
    "system_number": {**GOOD, "system": 5},
    "messages_string": {"messages": "hi"},
    "message_not_object": {"messages": ["hi", {"role": "assistant", "content": "x"}]},
    "role_number": {"messages": [{"role": 1, "content": "hi"}, GOOD["messages"][1]]},
    "content_number": {"messages": [GOOD["messages"][0], {"role": "assistant", "content": 5}]},
    "content_list": {"messages": [GOOD["messages"][0], {"role": "assistant", "content": ["a"]}]},
    "llava_value_null": {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": None}]},
    "alpaca_output_null": {"instruction": "Say hi.", "output": None},
    "alpaca_instruction_number": {"instruction": 5, "output": "hi"},
    "alpaca_input_object": {"instruction": "Say hi.", "input": {"x": 1}, "output": "hi"},
    "image_number": {**GOOD, "image": 5},
    "images_object": {**GOOD, "images": {"a": "b"}},
    "images_list_of_numbers": {**GOOD, "images": [1, 2]},
    "audio_number": {**GOOD, "audio": 7},
}


def _jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize("kind", sorted(BAD_RECORDS))
def test_data_files_name_file_and_line_of_a_wrong_type(kind, tmp_path):
    path = _jsonl(tmp_path / "data.jsonl", [GOOD, BAD_RECORDS[kind], {**GOOD, "id": "last"}])
    with pytest.raises(DataFileError, match=f"{path}:2: "):
        read_conversations([path], on_error="raise")
    skipped = Counter()
    kept = read_conversations([path], on_error="skip", skipped=skipped)
    assert [c.id for c in kept] == [f"{path}:1", "last"] and sum(skipped.values()) == 1, skipped


def test_a_null_meta_or_system_is_the_same_as_none(tmp_path):
    path = _jsonl(tmp_path / "data.jsonl", [{**GOOD, "meta": None, "system": None, "id": 3}])
    (conv,) = read_conversations([path])
    assert conv.meta == {} and conv.id == "3" and [m.role for m in conv.messages] == ["user", "assistant"]


def test_a_json_list_file_of_the_wrong_shape_names_the_file(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"not": "a list"}))
    with pytest.raises(DataFileError, match=str(path)):
        read_conversations([path], on_error="skip")
    path.write_text(json.dumps([GOOD, 5, "x", None]))
    skipped = Counter()
    assert len(read_conversations([path], on_error="skip", skipped=skipped)) == 1
    assert skipped == Counter({"not_an_object": 3})


# --- the build's readers ---------------------------------------------------------------------


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(out, format="PNG")
    return out.getvalue()


def _items(reader, *args) -> list:
    """Every (location, item) of a reader; none may raise for a bad record."""
    items = list(reader(*args))
    files = [str(a) for a in args if str(a).endswith((".json", ".jsonl"))]
    for where, item in items:
        assert isinstance(item, Annotation | SampleError), item
        if isinstance(item, SampleError):  # the message names the file and record
            assert any(f in str(item) and where in str(item) for f in files), (where, item)
    return items


def _errors(items) -> Counter:
    return Counter(item.reason for _, item in items if isinstance(item, SampleError))


def test_coco_captions_with_wrong_types(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(_png())
    data = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": 5}, "x", {"id": [3], "file_name": "a.png"}],
        "annotations": [
            {"image_id": 1, "caption": "A red square."},
            {"image_id": 2, "caption": "two"},
            {"image_id": 1, "caption": 5},
            {"image_id": {"a": 1}, "caption": "x"},
            None,
            {"image_id": 9, "caption": "of an image the file does not list"},
            {"image_id": 9, "caption": "the same image again"},
        ],
    }
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(data))
    items = _items(annotations.read_coco_captions, str(path), str(tmp_path / "img"))
    assert [i.captions for _, i in items if isinstance(i, Annotation)] == [["A red square."]]
    assert sum(_errors(items).values()) == 7 and _errors(items)["unknown_image"] == 1
    (lost,) = [i for _, i in items if isinstance(i, SampleError) and i.reason == "unknown_image"]
    assert str(lost) == f"{path}:annotations[5]: image_id 9 (2 caption(s)) is not in 'images'"
    # A file of the wrong shape is no record to skip: the reader stops, naming the file.
    path.write_text(json.dumps({"images": {"a": 1}, "annotations": 5}))
    with pytest.raises(SampleError, match=str(path)):
        list(annotations.read_coco_captions(str(path), str(tmp_path / "img")))


def test_vqav2_with_wrong_types(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "COCO_x_000000000001.png").write_bytes(_png())
    questions = {
        "data_subtype": "x",
        "questions": [
            {"image_id": 1, "question": "What colour?", "question_id": 1},
            {"image_id": 1, "question": 5, "question_id": 2},
            {"image_id": "1; rm", "question": "Q?", "question_id": 3},
            {"image_id": 1, "question": "How many?", "question_id": 4},
            7,
        ],
    }
    answers = {
        "annotations": [
            {"question_id": 1, "multiple_choice_answer": "red", "answers": [{"answer": "red"}], "answer_type": "other"},
            {"question_id": 2, "multiple_choice_answer": "red", "answers": "red"},
            {"question_id": 3, "multiple_choice_answer": 5, "answers": [5, None], "answer_type": 3},
            {"question_id": 4, "answers": [{"answer": "2"}, {"answer": 2}]},  # was dropped from the ten unseen
            "junk",
        ]
    }
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(answers))
    items = _items(
        annotations.read_vqav2,
        str(tmp_path / "q.json"),
        str(tmp_path / "a.json"),
        str(tmp_path / "img"),
        "COCO_{data_subtype}_{image_id:012d}.png",
    )
    (good,) = [i for _, i in items if isinstance(i, Annotation)]
    assert [qa.answer for qa in good.qas] == ["red"] and sum(_errors(items).values()) == 5


@pytest.mark.parametrize(
    "reader, record",
    [
        (annotations.read_jsonl, {**GOOD, "image": 5}),
        (annotations.read_jsonl, {**GOOD, "meta": "x"}),
        (annotations.read_jsonl, [1, 2]),
        (annotations.read_caption_jsonl, {"image": 5, "caption": "x"}),
        (annotations.read_caption_jsonl, {"image_id": [1], "caption": "x"}),
        (annotations.read_caption_jsonl, "a string"),
        (annotations.read_audio_qa_jsonl, {"audio": "a.wav", "question": "Q?", "answer": "a", "answers": 5}),
        (annotations.read_audio_qa_jsonl, {"audio": "a.wav", "question": "Q?", "answer": "a", "answer_type": 5}),
        (annotations.read_audio_caption_jsonl, {"audio": ["a.wav"], "caption": "x"}),
        (annotations.read_transcript_jsonl, {"audio": "a.wav", "text": 5}),
    ],
)
def test_jsonl_readers_with_wrong_types(reader, record, tmp_path):
    path = _jsonl(tmp_path / "data.jsonl", [record])
    extra = [str(tmp_path)] if reader is annotations.read_caption_jsonl else []
    items = _items(reader, str(path), *extra)
    assert sum(_errors(items).values()) == 1 and all(f"{path}:1" in str(i) for _, i in items)


def test_llava_json_with_wrong_types(tmp_path):
    (tmp_path / "a.png").write_bytes(_png())
    turns = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "red"}]
    records = [
        {"id": "ok", "image": "a.png", "conversations": turns},
        {"id": "n", "image": 5, "conversations": turns},
        {"id": "m", "image": "a.png", "conversations": turns, "meta": "x"},
        {"id": "c", "image": "a.png", "conversations": {"from": "gpt"}},
        "x",
    ]
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(records))
    items = _items(annotations.read_llava, str(path), str(tmp_path))
    assert [i.id for _, i in items if isinstance(i, Annotation)] == ["llava-ok"] and sum(_errors(items).values()) == 4


def test_build_with_wrong_types_raises_with_the_line_or_skips_and_counts(tmp_path):
    from omegaconf import OmegaConf

    from mmit.paths import RECIPES_DIR

    (tmp_path / "a.png").write_bytes(_png())
    good = {"messages": [{"role": "user", "content": "<image>\nColour?"}, {"role": "assistant", "content": "red"}]}
    records = [{**good, "id": f"g{i}", "image": "a.png"} for i in range(3)]
    text = {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]}
    records += [{**good, "id": "m", "meta": 5}, {**good, "id": "i", "image": 5}, {**text, "id": "s", "meta": None}]
    path = _jsonl(tmp_path / "data.jsonl", records)

    def cfg(on_error):
        return OmegaConf.create(
            {
                "name": "types",
                "seed": 0,
                "out_dir": str(tmp_path / f"out-{on_error}"),
                "templates": str(RECIPES_DIR / "templates" / "vision.yaml"),
                "eval_fraction": 0.0,
                "shard_size": 10,
                "num_workers": 1,
                "on_error": on_error,
                "shaping": {},
                "sources": [{"_target_": "mmit.data.annotations.read_jsonl", "path": str(path)}],
            }
        )

    with pytest.raises(BuildError, match=f"{path}:4"):
        build(cfg("raise"))
    manifest = build(cfg("skip"))
    assert manifest["skipped_annotations"] == {"wrong_type": 2}
    assert manifest["sets"]["train"]["samples"] == 4  # g0..g2 and s: no good sample lost


def test_a_device_or_pipe_is_not_read_as_a_data_file(tmp_path):
    """A config (a crafted run folder's eval sets, say) naming /dev/zero must not read forever."""
    with pytest.raises(DataFileError, match="not a regular file"):
        read_conversations(["/dev/zero"])
    os.mkfifo(tmp_path / "pipe.jsonl")
    with pytest.raises(DataFileError, match="not a regular file"):
        read_conversations([tmp_path / "pipe.jsonl"])
