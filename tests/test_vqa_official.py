"""VQA accuracy against the two references it follows: the official VQAv2 script (vqaEval.py of
GT-Vision-Lab/VQA, a013f00) and lmms-eval's VQAv2 task (vqav2_process_results with its
EvalAIAnswerProcessor, 75571cfe).

The expected values below were obtained by running those scripts unmodified (the official one
under Python 2.7, as it is written) on exactly these cases; they are not derived from mmit.
"""

import math

import pytest

from mmit.metrics import VQA_NORMALISATIONS, normalize_vqa_answer, vqa_accuracy


def _disagree(answer: str, times: int = 4) -> list[str]:
    """Ten answers that differ: ``answer`` ``times`` times, then an unrelated one."""
    return [answer] * times + ["x"] * (10 - times)


# (prediction, answers, official, lmms_eval); comments give what mmit scored before (issue 22)
CASES = [
    # Differing answers: both sides fully normalised, so "two" matches every answer (before: 0.6).
    ("two", ["2"] * 2 + ["two"] * 8, 1.0, 1.0),
    # Leave-one-out: 2, 1 and 3 matching answers of 10.
    ("Two.", ["2"] * 2 + ["3"] * 6 + ["4"] * 2, 0.6, 0.6),
    ("Two", ["2"] + ["3"] * 9, 0.3, 0.3),
    ("Two", ["2"] * 3 + ["3"] * 7, 0.9, 0.9),
    ("2", ["2", "2", "3"], 4 / 9, 4 / 9),  # (1/3 + 1/3 + 2/3) / 3
    # Unanimous answers: the official script compares the texts as written (after strip); lmms-eval
    # normalises anyway. Before, mmit normalised the prediction only: 1, 0, 1, 0 on these four.
    ("Two", ["2"] * 10, 0.0, 1.0),
    ("two", ["two"] * 10, 1.0, 1.0),
    ("yes.", ["yes"] * 10, 0.0, 1.0),
    ("yes.", ["yes."] * 10, 1.0, 1.0),
    ("  yes\t", ["yes"] * 10, 1.0, 1.0),  # tabs, newlines and outer spaces go first, on both sides
    ("no", ["no"] * 9 + ["no\n"], 1.0, 1.0),  # ... before the answers are checked for agreement
    # Answers are normalised like the prediction, lowercasing included (before: 0).
    ("Yes", ["Yes"] * 5 + ["no"] * 5, 1.0, 1.0),
    # processPunctuation and processDigitArticle on the prediction.
    ("The dog.", _disagree("dog"), 1.0, 1.0),
    ("an apple", _disagree("apple"), 1.0, 1.0),
    ("dont", _disagree("don't"), 1.0, 1.0),
    ("Whats up?", _disagree("what's up"), 1.0, 1.0),
    ("none", _disagree("0"), 1.0, 1.0),
    ("3,000", _disagree("3000"), 1.0, 1.0),
    ("3,000 (approx)", _disagree("3000 approx"), 1.0, 1.0),
    ("red(ish)", _disagree("red ish"), 1.0, 1.0),
    ("black-and-white", _disagree("black and white"), 1.0, 1.0),
    ("Hello, world!", _disagree("hello world"), 1.0, 1.0),
    ("2.5", _disagree("2.5"), 1.0, 1.0),
    ("a.m.", _disagree("am"), 1.0, 1.0),
    # At most 32 periods are removed (re.UNICODE passed as sub()'s count, in both scripts).
    ("yes.", _disagree("." * 32 + "yes."), 0.0, 0.0),
    # Where the two conventions part even on differing answers:
    # lmms-eval's comma rule allows several commas between digits...
    ("1,,2", _disagree("12"), 0.0, 1.0),
    ("1,,2", _disagree("1 2"), 1.0, 0.0),
    # ... and its \d is any Unicode digit, the official (Python 2) one [0-9] only;
    ("\u0663,\u0664", _disagree("\u0663\u0664"), 0.0, 1.0),
    ("\u0663,\u0664", _disagree("\u0663 \u0664"), 1.0, 0.0),
    ("\u0663.\u0665", _disagree("\u0663\u0665"), 1.0, 0.0),
    # Python 2 lowercases one character at a time: "İ" -> "i", and no final sigma.
    ("\u0130", _disagree("i"), 1.0, 0.0),
    ("\u0130", _disagree("i\u0307"), 0.0, 1.0),
    ("\u039f\u0394\u039f\u03a3", _disagree("\u03bf\u03b4\u03bf\u03c3"), 1.0, 0.0),
    ("\u039f\u0394\u039f\u03a3", _disagree("\u03bf\u03b4\u03bf\u03c2"), 0.0, 1.0),
]


@pytest.mark.parametrize("prediction, answers, official, lmms_eval", CASES)
def test_vqa_accuracy_equals_the_reference_scripts(prediction, answers, official, lmms_eval):
    # The official script's arithmetic is ours, term for term: equal to the last bit.
    assert vqa_accuracy(prediction, answers) == official
    assert vqa_accuracy(prediction, answers, "official") == official
    # lmms-eval averages with statistics.mean (exactly rounded): the same up to one rounding.
    assert vqa_accuracy(prediction, answers, "lmms_eval") == pytest.approx(lmms_eval, abs=1e-12)


@pytest.mark.parametrize("normalisation", VQA_NORMALISATIONS)
def test_leave_one_out_is_by_position_and_order_free(normalisation):
    answers = ["2"] * 2 + ["3"] * 6 + ["4"] * 2
    for k in range(10):  # the sum runs in the answers' order, as the official one does: equal to rounding
        rotated = answers[k:] + answers[:k]
        assert math.isclose(vqa_accuracy("two", rotated, normalisation), 0.6, abs_tol=1e-15)
    for matching, expected in [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (9, 1.0)]:
        got = vqa_accuracy("2", ["2"] * matching + ["3"] * (10 - matching), normalisation)
        assert math.isclose(got, expected, abs_tol=1e-15)


def test_a_single_answer_is_exact_match_after_normalisation():
    # The official formula gives 0 for any prediction when there is one answer (no other answer
    # can match); mmit scores exact match of the normalised texts instead, documented as such.
    for normalisation in VQA_NORMALISATIONS:
        assert vqa_accuracy("Two.", ["2"], normalisation) == 1.0
        assert vqa_accuracy("Yes", ["yes"], normalisation) == 1.0
        assert vqa_accuracy("3", ["2"], normalisation) == 0.0


def test_normalisation_functions_and_errors():
    assert normalize_vqa_answer("  The Two dogs.\n") == "2 dogs"
    assert normalize_vqa_answer("1,,2") == "1 2" and normalize_vqa_answer("1,,2", "lmms_eval") == "12"
    with pytest.raises(ValueError, match="official, lmms_eval"):
        vqa_accuracy("2", ["2"] * 10, "lmms-eval")
    with pytest.raises(ValueError):
        vqa_accuracy("2", "2")
