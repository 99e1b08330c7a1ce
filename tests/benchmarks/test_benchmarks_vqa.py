"""VQAv2 val / test-dev, GQA and TextVQA read from their fixtures and scored against hand-computed values."""

from __future__ import annotations

import json

import pytest
from benchmark_fixtures import FIXTURES, fixture_copy

from mmit.benchmarks import BenchmarkError, load_benchmark, vqav2

SHORT = "\nAnswer the question using a single word or phrase."


def test_vqav2_reader():
    bench = load_benchmark("vqav2", FIXTURES / "vqav2")
    assert [s.id for s in bench.samples] == ["42001", "42002", "73000"]
    first = bench.samples[0]
    assert first.as_chat() == [
        {"role": "user", "content": "<image>\nWhat color is the bus?" + SHORT},
        {"role": "assistant", "content": "red"},
    ]
    assert first.media[0].path.endswith("val2014/COCO_val2014_000000000042.jpg")
    assert first.meta["answers"] == ["red"] * 8 + ["dark red"] * 2
    assert first.meta["answer_type"] == "other"
    assert bench.max_new_tokens == 16


def test_vqav2_accuracy_by_hand():
    replies = {"42001": "dark red", "42002": "3", "73000": "Yes"}
    # "dark red" matches 2 of 10 answers: left out itself (2 of 10 times) 1 match -> 1/3, else 2 -> 2/3;
    # (2 * 1/3 + 8 * 2/3) / 10 = 0.6. "3" matches 8 -> 1. Ten unanimous "yes": the official script
    # compares "Yes" as written -> 0; lmms-eval normalises it -> 1.
    official = load_benchmark("vqav2", FIXTURES / "vqav2").score(replies)
    assert official["metrics"]["vqa_accuracy"] == pytest.approx((0.6 + 1 + 0) / 3)
    assert official["tables"]["answer_type"]["other"]["accuracy"] == pytest.approx(0.6)
    assert official["metrics"]["yes/no/vqa_accuracy"] == 0.0
    assert official["metrics"]["number/vqa_accuracy"] == 1.0
    lmms = load_benchmark("vqav2", FIXTURES / "vqav2", normalisation="lmms_eval").score(replies)
    assert lmms["metrics"]["vqa_accuracy"] == pytest.approx((0.6 + 1 + 1) / 3)


def test_vqav2_testdev_submission(tmp_path):
    bench = load_benchmark("vqav2_testdev", FIXTURES / "vqav2")
    assert not bench.has_references
    assert [s.messages[-1].content for s in bench.samples] == ["", ""]
    with pytest.raises(BenchmarkError, match="no reference answers"):
        bench.score({"1000": "a", "1001": "b"})
    rows = vqav2.submission(
        bench, {"1000": "A Racket.", "1001": "Two"}, vqav2.all_test_question_ids(FIXTURES / "vqav2")
    )
    assert rows == [
        {"question_id": 1000, "answer": "racket"},
        {"question_id": 1001, "answer": "2"},
        {"question_id": 2000, "answer": ""},
    ]
    path = vqav2.write_submission(rows, tmp_path / "vqav2_testdev.json")
    assert json.loads(path.read_text()) == rows


def test_vqav2_missing_annotation_names_file_and_record(tmp_path):
    root = fixture_copy("vqav2", tmp_path)
    path = root / "v2_mscoco_val2014_annotations.json"
    data = json.loads(path.read_text())
    del data["annotations"][1]["answers"]
    path.write_text(json.dumps(data))
    with pytest.raises(BenchmarkError, match=r"v2_mscoco_val2014_annotations.json annotations\[1\]: no 'answers'"):
        load_benchmark("vqav2", root)


def test_vqav2_missing_image_names_question(tmp_path):
    root = fixture_copy("vqav2", tmp_path)
    (root / "val2014" / "COCO_val2014_000000000073.jpg").unlink()
    with pytest.raises(BenchmarkError, match=r"questions\[2\].*COCO_val2014_000000000073.jpg does not exist"):
        load_benchmark("vqav2", root)


def test_gqa_reader_and_exact_match():
    bench = load_benchmark("gqa", FIXTURES / "gqa")
    assert [s.id for s in bench.samples] == ["20968379", "20968380", "201307251"]
    assert bench.samples[1].messages[0].content == "<image>\nWhat piece of furniture is white?" + SHORT
    assert bench.samples[2].media[0].path.endswith("images/n235859.jpg")
    scores = bench.score({"20968379": " No.", "20968380": "Table", "201307251": "right"})
    assert scores["metrics"]["accuracy"] == pytest.approx(2 / 3)
    # eval.py: only "query" questions are open; verify and choose are binary.
    assert scores["metrics"]["open/accuracy"] == 1.0
    assert scores["metrics"]["binary/accuracy"] == 0.5
    assert scores["tables"]["semantic"]["rel"] == {"accuracy": 0.5, "n": 2}


def test_gqa_malformed_record(tmp_path):
    root = fixture_copy("gqa", tmp_path)
    path = root / "testdev_balanced_questions.json"
    data = json.loads(path.read_text())
    data["20968380"]["imageId"] = 7
    path.write_text(json.dumps(data))
    with pytest.raises(
        BenchmarkError, match=r"testdev_balanced_questions.json question '20968380': 'imageId' must be str"
    ):
        load_benchmark("gqa", root)


def test_textvqa_reader_and_accuracy():
    bench = load_benchmark("textvqa", FIXTURES / "textvqa")
    # lmms-eval capitalises the question with str.capitalize, which lowercases the rest.
    assert bench.samples[1].messages[0].content == "<image>\nWhat does the sign say?" + SHORT
    assert bench.samples[1].messages[1].content == "stop sign"
    assert bench.samples[0].media[0].path.endswith("train_images/003a8ae2ef43b901.jpg")
    # "dakota" vs ten "Dakota": every answer is normalised -> 1. "Stop." -> "stop" matches 3 of 10:
    # (3 * 2/3 + 7 * 1) / 10 = 0.9.
    scores = bench.score({"34602": "dakota", "34603": "Stop."})
    assert scores["metrics"]["vqa_accuracy"] == pytest.approx((1 + 0.9) / 2)


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_gqa_duplicate_ids_and_wrong_types_are_named_before_answering(tmp_path):
    """A question id twice kept one of the two silently; 'types' of the wrong shape was an
    AttributeError, or (a number or list inside) a TypeError from the scorer after every answer."""
    root = fixture_copy("gqa", tmp_path)
    path = root / "testdev_balanced_questions.json"
    original = path.read_text()
    first = next(iter(json.loads(original)))
    path.write_text(original.replace("{", "{" + json.dumps(first) + ": {}, ", 1))
    with pytest.raises(BenchmarkError, match=rf"testdev_balanced_questions.json: .*key '{first}' appears twice"):
        load_benchmark("gqa", root)
    for types, message in [
        ("verify", r"'types' must be an object"),
        ({"structural": 3}, r"types: 'structural' must be a string, not a number"),
        ({"semantic": ["rel"]}, r"types: 'semantic' must be a string, not a list"),
    ]:
        path.write_text(original)
        _edit_json(path, lambda q, types=types: q[first].update(types=types))
        with pytest.raises(BenchmarkError, match=rf"question '{first}'.*{message}"):
            load_benchmark("gqa", root)
    path.write_text("{}")
    with pytest.raises(BenchmarkError, match=r"testdev_balanced_questions.json: holds no questions"):
        load_benchmark("gqa", root)


def test_vqav2_and_textvqa_duplicates_and_wrong_types(tmp_path):
    """A duplicated question id was answered twice and then refused with 'two predictions' naming no
    file; an answer_type that is not a string failed in the scorer after every answer."""
    root = fixture_copy("vqav2", tmp_path)
    annotations = root / "v2_mscoco_val2014_annotations.json"
    original = annotations.read_text()
    _edit_json(annotations, lambda a: a["annotations"][0].update(answer_type=5))
    with pytest.raises(BenchmarkError, match=r"annotations.json annotations\[0\]: 'answer_type' must be a string"):
        load_benchmark("vqav2", root)
    annotations.write_text(original)
    _edit_json(annotations, lambda a: a["annotations"][1].update(question_id=a["annotations"][0]["question_id"]))
    with pytest.raises(
        BenchmarkError, match=r"annotations\[1\]: question_id 42001 appears twice \(first at .*annotations\[0\]\)"
    ):
        load_benchmark("vqav2", root)
    testdev = root / "v2_OpenEnded_mscoco_test-dev2015_questions.json"
    _edit_json(testdev, lambda q: q["questions"][1].update(question_id=q["questions"][0]["question_id"]))
    with pytest.raises(
        BenchmarkError, match=r"test-dev2015_questions.json questions\[1\]: question_id 1000 appears twice"
    ):
        load_benchmark("vqav2_testdev", root)
    _edit_json(testdev, lambda q: q.update(questions=[]))
    with pytest.raises(BenchmarkError, match=r"test-dev2015_questions.json: holds no questions"):
        load_benchmark("vqav2_testdev", root)

    root = fixture_copy("textvqa", tmp_path)
    path = root / "TextVQA_0.5.1_val.json"
    _edit_json(path, lambda a: a["data"][1].update(question_id=a["data"][0]["question_id"]))
    with pytest.raises(BenchmarkError, match=r"TextVQA_0.5.1_val.json data\[1\]: question_id \d+ appears twice"):
        load_benchmark("textvqa", root)
