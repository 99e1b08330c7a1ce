"""POPE and MME read from their fixtures and scored against hand-computed values."""

from __future__ import annotations

import shutil

import pytest
from benchmark_fixtures import FIXTURES, fixture_copy

from mmit.benchmarks import BenchmarkError, load_benchmark, mme, pope

SHORT = "\nAnswer the question using a single word or phrase."


@pytest.mark.parametrize(
    ("reply", "read"),
    [
        ("Yes", "yes"),
        ("No", "no"),
        ("No.", "no"),
        ("Yes, there is a dog.", "yes"),
        ("There is no cat.", "no"),
        ("I do not think so.", "no"),
        ("Yes. But no cat.", "yes"),  # only the first sentence counts
        ("no, there is none", "no"),  # the comma goes before splitting
        ("NO", "yes"),  # POPE's evaluate.py knows "No" and "no" only
    ],
)
def test_pope_reply_parsing(reply, read):
    assert pope.parse_yes_no(reply) == read


def test_pope_reader():
    bench = load_benchmark("pope", FIXTURES / "pope")
    assert [s.id for s in bench.samples][:5] == ["random/1", "random/2", "random/3", "random/4", "popular/1"]
    assert len(bench.samples) == 8
    first = bench.samples[0]
    assert first.messages[0].content == "<image>\nIs there a snowboard in the image?" + SHORT
    assert first.messages[1].content == "yes"
    assert first.media[0].path.endswith("val2014/COCO_val2014_000000310196.jpg")
    assert bench.max_new_tokens == 128
    only = load_benchmark("pope", FIXTURES / "pope", splits=["popular"], image_root=FIXTURES / "pope" / "val2014")
    assert [s.meta["split"] for s in only.samples] == ["popular", "popular"]


def test_pope_scores_by_hand():
    replies = {
        # random, labels yes no yes no: TP, TN, FN, FP -> every ratio 1/2
        "random/1": "Yes, there is a snowboard.",
        "random/2": "No.",
        "random/3": "There is no person.",
        "random/4": "Yes",
        # popular, labels yes no: both right
        "popular/1": "yes",
        "popular/2": "no",
        # adversarial, labels yes no: FN, TN -> no "yes" at all: precision, recall, F1 0
        "adversarial/1": "I do not think so.",
        "adversarial/2": "no",
    }
    scores = load_benchmark("pope", FIXTURES / "pope").score(replies)
    table = scores["tables"]["split"]
    assert table["random"] == {"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5, "yes_ratio": 0.5, "n": 4}
    assert table["popular"] == {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "yes_ratio": 0.5, "n": 2}
    assert table["adversarial"] == {"accuracy": 0.5, "precision": 0, "recall": 0, "f1": 0, "yes_ratio": 0, "n": 2}
    assert scores["metrics"]["f1"] == pytest.approx(0.5)
    assert scores["metrics"]["accuracy"] == pytest.approx(2 / 3)
    assert scores["metrics"]["popular/yes_ratio"] == 0.5


def test_pope_bad_label_names_line(tmp_path):
    root = fixture_copy("pope", tmp_path)
    path = root / "coco_pope_popular.json"
    path.write_text(path.read_text().replace('"label": "no"', '"label": "maybe"'))
    with pytest.raises(BenchmarkError, match=r"coco_pope_popular.json line 2: 'label' must be yes or no"):
        load_benchmark("pope", root)


def test_pope_missing_split_file(tmp_path):
    root = fixture_copy("pope", tmp_path)
    (root / "coco_pope_adversarial.json").unlink()
    with pytest.raises(BenchmarkError, match=r"coco_pope_adversarial.json does not exist"):
        load_benchmark("pope", root)


@pytest.mark.parametrize(
    ("reply", "read"),
    [("Yes", "yes"), (" no\n", "no"), ("Yes, it is.", "yes"), ("Not at all", "no"), ("Sure", "other"), ("y", "other")],
)
def test_mme_reply_parsing(reply, read):
    assert mme.parse_yes_no(reply) == read


def test_mme_reader_both_layouts():
    bench = load_benchmark("mme", FIXTURES / "mme")
    assert len(bench.samples) == 2 * 16  # 14 subtasks, count and code_reasoning with two images
    by_id = {s.id: s for s in bench.samples}
    artwork = by_id["artwork/0001/0"]  # images/ + questions_answers_YN/ layout
    assert artwork.media[0].path.endswith("artwork/images/0001.jpg")
    # lmms-eval drops " Please answer yes or no." and appends its post prompt.
    assert artwork.messages[0].content == "<image>\nIs this question 0001 of artwork true?" + SHORT
    assert artwork.messages[1].content == "Yes"
    code = by_id["code_reasoning/0002/1"]  # flat layout
    assert code.media[0].path.endswith("code_reasoning/0002.png")
    assert code.meta["category"] == "cognition"
    assert code.meta["answers"] == ["no"]


def test_mme_acc_plus_and_totals_by_hand():
    bench = load_benchmark("mme", FIXTURES / "mme")
    replies = {s.id: s.messages[1].content for s in bench.samples}  # every other subtask: all right
    replies.update(
        {
            # count: image 1 both right, image 2 one right: acc 3/4, acc+ 1/2 -> 125
            "count/0001/0": "Yes",
            "count/0001/1": "No",
            "count/0002/0": "yes",
            "count/0002/1": "Yes, there are two.",
            # artwork: one right, one wrong: acc 1/2, acc+ 0 -> 50
            "artwork/0001/0": "No",
            "artwork/0001/1": "no",
            # code_reasoning: "Sure" is "other" (wrong): acc 3/4, acc+ 1/2 -> 125
            "code_reasoning/0001/0": "Sure",
            "code_reasoning/0001/1": "no",
        }
    )
    scores = bench.score(replies)
    table = scores["tables"]["subtask"]
    assert table["count"]["acc"] == 0.75 and table["count"]["acc_plus"] == 0.5
    assert table["count"]["score"] == pytest.approx(125)
    assert table["artwork"]["score"] == pytest.approx(50)
    assert table["code_reasoning"]["other"] == 1
    assert table["code_reasoning"]["score"] == pytest.approx(125)
    assert table["scene"]["score"] == pytest.approx(200)
    assert scores["metrics"]["perception"] == pytest.approx(8 * 200 + 125 + 50)
    assert scores["metrics"]["cognition"] == pytest.approx(3 * 200 + 125)
    assert scores["metrics"]["total"] == pytest.approx(2500)


def test_mme_bad_question_file(tmp_path):
    root = fixture_copy("mme", tmp_path)
    path = root / "count" / "0002.txt"
    path.write_text("Is there a train? Please answer yes or no.\tMaybe\nIs it red?\tNo\n")
    with pytest.raises(BenchmarkError, match=r"count/0002.txt line 1: expected 'question<TAB>Yes\|No'"):
        load_benchmark("mme", root)
    path.write_text("Is there a train?\tYes\n")
    with pytest.raises(BenchmarkError, match=r"count/0002.txt: expected two question lines, found 1"):
        load_benchmark("mme", root)


def test_mme_missing_image_and_subtask(tmp_path):
    root = fixture_copy("mme", tmp_path)
    (root / "artwork" / "images" / "0001.jpg").unlink()
    with pytest.raises(BenchmarkError, match=r"questions_answers_YN/0001.txt: no image 0001"):
        load_benchmark("mme", root)
    assert len(load_benchmark("mme", root, subtasks=["count"]).samples) == 4
    shutil.rmtree(root / "OCR")
    with pytest.raises(BenchmarkError, match=r"MME subtask OCR: folder .*/OCR does not exist"):
        load_benchmark("mme", root, subtasks=["OCR"])


@pytest.mark.parametrize(
    "text, message",
    [
        (b'{"question_id": 1, "text": "Is \xff it?"}\n', r"coco_pope_random.json line 1: not UTF-8 text"),
        (
            b'{"question_id": ' + b"9" * 5000 + b"}\n",
            r"coco_pope_random.json line 1: not valid JSON \(Exceeds the limit",
        ),
        (
            b"[" * 100_000 + b"]" * 100_000 + b"\n",
            r"coco_pope_random.json line 1: not valid JSON \(nested too deeply\)",
        ),
        (b"\n", r"coco_pope_random.json: holds no questions"),  # the split would drop out of the mean F1
        (
            b'{"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "a?", "label": "yes"}\n' * 2,
            r"coco_pope_random.json line 2: question_id 1 appears twice \(first at .*coco_pope_random.json line 1\)",
        ),
    ],
    ids=["not_utf8", "huge_number", "nested_too_deep", "empty", "duplicate_id"],
)
def test_pope_damaged_split_file_names_file_and_line(tmp_path, text, message):
    """Each was a traceback (UnicodeDecodeError, ValueError, RecursionError), a split silently missing
    from the averaged metrics, or 'two predictions for sample' after every question was answered."""
    root = fixture_copy("pope", tmp_path)
    (root / "coco_pope_random.json").write_bytes(text)
    with pytest.raises(BenchmarkError, match=message):
        load_benchmark("pope", root)
    (root / "coco_pope_random.json").unlink()
    (root / "coco_pope_random.json").mkdir()
    with pytest.raises(BenchmarkError, match=r"coco_pope_random.json: cannot be read"):
        load_benchmark("pope", root)
