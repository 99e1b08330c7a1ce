"""ScienceQA-IMG and MMBench (CircularEval) read from their fixtures and scored by hand; the registry."""

from __future__ import annotations

import pytest
from benchmark_fixtures import FIXTURES, fixture_copy

from mmit.benchmarks import BENCHMARKS, BenchmarkError, load_benchmark, mmbench, scienceqa
from mmit.scoring import Prediction

LETTER = "\nAnswer with the option's letter from the given choices directly."


def test_scienceqa_img_reader():
    bench = load_benchmark("scienceqa_img", FIXTURES / "scienceqa")
    assert [s.id for s in bench.samples] == ["5", "8"]  # test split, with an image only
    assert bench.samples[0].messages[0].content == (
        "<image>\nContext: Figure: Barrow.\nWhich type of ecosystem is shown?\nA. taiga\nB. tundra\nC. desert" + LETTER
    )
    assert bench.samples[1].messages[0].content == "<image>\nWhich state is highlighted?\nA. Ohio\nB. Iowa" + LETTER
    assert bench.samples[0].messages[1].content == "B"
    assert bench.samples[0].media[0].path.endswith("images/test/5/image.png")


@pytest.mark.parametrize(
    ("reply", "right"),
    [("B", True), ("b", True), (" B. tundra", True), ("A. taiga", False), ("(B)", False), ("B) tundra", False)],
)
def test_scienceqa_reply_reading(reply, right):
    assert scienceqa.is_right(reply, "B") is right


def test_scienceqa_accuracy_by_hand():
    scores = load_benchmark("scienceqa_img", FIXTURES / "scienceqa").score({"5": "B. tundra", "8": "(A)"})
    assert scores["metrics"]["accuracy"] == 0.5
    assert scores["tables"]["subject"] == {
        "natural science": {"accuracy": 1.0, "n": 1},
        "social science": {"accuracy": 0.0, "n": 1},
    }
    assert scores["tables"]["grade"]["grade7-12"] == {"accuracy": 0.0, "n": 1}


def test_scienceqa_bad_answer_index(tmp_path):
    root = fixture_copy("scienceqa", tmp_path)
    path = root / "problems.json"
    path.write_text(path.read_text().replace('"answer": 0', '"answer": 5', 1))
    with pytest.raises(BenchmarkError, match=r"problems.json problem '8': 'answer' 5 is not the index"):
        load_benchmark("scienceqa_img", root)


def test_mmbench_reader_generates_missing_shifts():
    bench = load_benchmark("mmbench_dev", FIXTURES / "mmbench")
    by_id = {s.id: s for s in bench.samples}
    # Row 0 has no copies in the file: its two rotations are added; row 1 has its copy in the file.
    assert sorted(by_id) == ["0", "1", "1000000", "1000001", "2000000"]
    assert by_id["0"].meta["options"] == {"A": "a cat", "B": "a dog", "C": "a bird"}
    assert by_id["1000000"].meta["options"] == {"A": "a dog", "B": "a bird", "C": "a cat"}
    assert by_id["1000000"].meta["answers"] == ["A"]
    assert by_id["2000000"].meta["answers"] == ["C"]
    assert by_id["1000001"].meta["answers"] == ["B"]
    assert by_id["1"].messages[0].content == (
        "<image>\nLook at the house. Which color is the roof? There are several options:\nA. red\nB. blue\n" + LETTER
    )
    assert by_id["0"].messages[0].content.startswith("<image>\nWhat is shown? There are several options:\nA. a cat\n")
    # the copy names row 1's image by index; the images are decoded from base64
    assert by_id["1000001"].media[0] is by_id["1"].media[0]
    assert by_id["1"].media[0].ext == "jpg" and by_id["0"].media[0].ext == "png"
    assert bench.max_new_tokens == 1024


@pytest.mark.parametrize(
    ("reply", "letter"),
    [
        ("B", "B"),
        ("B.", "B"),
        ("(B)", "B"),
        ("B: a dog", "B"),
        (" a dog. ", "B"),
        ("D", None),
        ("Both", None),
        ("The answer is B", None),
        ("A cat is shown", "A"),
        ("a dog (B)", "B"),
        ("A cat (B)", "B"),
    ],
)
def test_mmbench_option_letter(reply, letter):
    assert mmbench.option_letter(reply, {"A": "a cat", "B": "a dog", "C": "a bird"}) == letter


def test_mmbench_circular_eval_by_hand():
    bench = load_benchmark("mmbench_dev", FIXTURES / "mmbench")
    replies = {"0": "B", "1000000": "A.", "2000000": "(C) a dog", "1": "A", "1000001": "A"}
    # Question 0: every shift right -> right. Question 1: its copy answered "A" (the answer is B) -> wrong.
    scores = bench.score(replies)
    assert scores["metrics"]["circular_accuracy"] == 0.5
    assert scores["metrics"]["vanilla_accuracy"] == 1.0
    assert scores["tables"]["category"]["attribute_recognition"] == {"accuracy": 0.0, "n": 1}
    assert scores["tables"]["category"]["object_localization"] == {"accuracy": 1.0, "n": 1}
    # One generated shift wrong is enough to lose question 0 as well.
    replies["2000000"] = "A"
    assert bench.score(replies)["metrics"]["circular_accuracy"] == 0.0


def test_mmbench_bad_rows(tmp_path):
    root = fixture_copy("mmbench", tmp_path)
    path = root / "mmbench_dev_20230712.tsv"
    text = path.read_text()
    path.write_text(text.replace("\tB\tobject_localization", "\tD\tobject_localization"))
    with pytest.raises(BenchmarkError, match=r"mmbench_dev_20230712.tsv line 2: 'answer' 'D' is not one of"):
        load_benchmark("mmbench_dev", root)
    path.write_text(text.replace("\t1\tcoco", "\t7\tcoco"))
    with pytest.raises(BenchmarkError, match=r"line 4: 'image' '7' is neither base64 nor the index"):
        load_benchmark("mmbench_dev", path)
    (root / "mmbench_dev_20230712.tsv").unlink()
    with pytest.raises(BenchmarkError, match=r"found 0 dev TSVs"):
        load_benchmark("mmbench_dev", root)


def test_registry_and_predictions():
    assert set(BENCHMARKS) == {
        "vqav2",
        "vqav2_testdev",
        "gqa",
        "textvqa",
        "pope",
        "scienceqa_img",
        "mme",
        "mmbench_dev",
    }
    with pytest.raises(BenchmarkError, match="unknown benchmark 'pop'"):
        load_benchmark("pop", FIXTURES / "pope")
    bench = load_benchmark("scienceqa_img", FIXTURES / "scienceqa")
    # mmit.scoring.Prediction objects work as well as {id: reply}
    preds = [Prediction.of("scienceqa_img", s, "", "", "B") for s in bench.samples]
    assert preds[0].references == ["B"] and preds[0].task == "vqa_multiple_choice"
    assert bench.score(preds)["metrics"]["accuracy"] == 0.5
    with pytest.raises(BenchmarkError, match=r"1 missing \(first: \['8'\]\)"):
        bench.score({"5": "B"})
    with pytest.raises(BenchmarkError, match=r"1 unknown \(first: \['99'\]\)"):
        bench.score({"5": "B", "8": "A", "99": "C"})


def test_scienceqa_fields_scoring_reads_are_checked_when_read(tmp_path):
    """A grade or subject that is not a string failed in the scorer once every problem was answered
    (AttributeError, TypeError); a problem id twice kept one of the two silently."""
    import json

    root = fixture_copy("scienceqa", tmp_path)
    path = root / "problems.json"
    original = json.loads(path.read_text())
    for key, value, kind in [("grade", 4, "a number"), ("subject", ["x"], "a list")]:
        path.write_text(json.dumps({**original, "5": {**original["5"], key: value}}))
        with pytest.raises(BenchmarkError, match=rf"problems.json problem '5': '{key}' must be a string, not {kind}"):
            load_benchmark("scienceqa_img", root)
    path.write_text('{"5": {}, ' + json.dumps(original)[1:])
    with pytest.raises(BenchmarkError, match=r"problems.json: not valid JSON \(key '5' appears twice"):
        load_benchmark("scienceqa_img", root)
    path.write_text("{}")
    with pytest.raises(BenchmarkError, match=r"problems.json: holds no test problems with an image"):
        load_benchmark("scienceqa_img", root)


def test_mmbench_broken_image_or_no_rows_is_named_by_its_line(tmp_path):
    """A base64 image that does not decode failed while answering as 'in-memory png image', naming no
    row; a TSV with only its header gave a benchmark of 0 questions and no score."""
    import base64

    root = fixture_copy("mmbench", tmp_path)
    path = root / "mmbench_dev_20230712.tsv"
    lines = path.read_text().split("\n")
    header = lines[0].split("\t")
    row = lines[1].split("\t")
    row[header.index("image")] = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"0" * 80).decode()
    path.write_text("\n".join([lines[0], "\t".join(row), *lines[2:]]))
    with pytest.raises(BenchmarkError, match=r"mmbench_dev_20230712.tsv line 2: 'image': image does not decode"):
        load_benchmark("mmbench_dev", root)
    path.write_text(lines[0] + "\n")
    with pytest.raises(BenchmarkError, match=r"mmbench_dev_20230712.tsv: holds no questions"):
        load_benchmark("mmbench_dev", root)
