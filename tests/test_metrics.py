import math

import pytest

from mmit.metrics import (
    bleu,
    cider_d,
    cider_d_scores,
    exact_match,
    normalize_vqa_answer,
    roc_auc,
    rouge_l,
    rouge_l_corpus,
    text_rouge_l,
    tokenize_caption,
    vqa_accuracy,
    word_error_rate,
    yes_no_accuracy,
    yes_no_auc,
)

# --- VQAv2 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Two", "2"),  # number words become digits
        ("none", "0"),  # the official map has "none" -> "0" too
        ("ten.", "10"),
        ("the dog", "dog"),  # articles dropped
        ("dont", "don't"),  # contractions restored
        ("whats", "what's"),
        ("oclock", "o'clock"),
        ("yes.", "yes"),  # a period not followed by a digit goes
        ("2.5", "2.5"),  # ... one followed by a digit stays
        ("a.m.", "am"),
        ("3,000", "3000"),  # digit,digit anywhere: every punctuation mark is deleted
        ("3,000 (approx)", "3000 approx"),
        ("red(ish)", "red ish"),  # otherwise a mark that touches no space becomes a space
        ("a, b", "b"),  # ", " touches a space: deleted; then "a" is an article
        ("black-and-white", "black and white"),
        ("Hello, world!", "hello world"),  # "," touches a space (deleted), "!" does not (spaced)
        ("It's a cat!", "it's cat"),  # the apostrophe is not in the official list
        ("  Yes\n", "yes"),
    ],
)
def test_normalize_vqa_answer(text, expected):
    assert normalize_vqa_answer(text) == expected


def _answers(matching: int, answer: str = "2", other: str = "3") -> list[str]:
    return [answer] * matching + [other] * (10 - matching)


@pytest.mark.parametrize(
    "matching, expected",
    [
        # Leaving out each of the 10 answers: min(1, matches among the other 9 / 3), averaged.
        (0, 0.0),
        # 9 subsets keep the match (1/3), 1 loses it (0): 9 * 1/3 / 10 = 0.3
        (1, 0.3),
        # 8 subsets keep both (2/3), 2 keep one (1/3): (16/3 + 2/3) / 10 = 0.6
        (2, 0.6),
        # 7 subsets keep all three (1), 3 keep two (2/3): (7 + 3 * 2/3) / 10 = 0.9
        (3, 0.9),
        # every subset keeps at least 3 matches
        (4, 1.0),
        (10, 1.0),
    ],
)
def test_vqa_accuracy_leave_one_out(matching, expected):
    assert vqa_accuracy("2", _answers(matching)) == pytest.approx(expected)
    assert vqa_accuracy("2", list(reversed(_answers(matching)))) == pytest.approx(expected)


def test_vqa_accuracy_normalises_when_the_answers_differ():
    # Differing answers: prediction and answers both normalised ("Two." -> "2", "two" -> "2").
    assert vqa_accuracy("Two.", _answers(3)) == pytest.approx(0.9)
    assert vqa_accuracy("two", ["2"] * 2 + ["two"] * 8) == 1.0
    assert vqa_accuracy("Yes", ["Yes"] * 5 + ["no"] * 5) == 1.0


def test_vqa_accuracy_compares_unanimous_answers_as_written():
    # The official script normalises nothing when all answers agree (tests/test_vqa_official.py)...
    assert vqa_accuracy("The dog", ["dog"] * 10) == 0.0
    assert vqa_accuracy("yes.", ["yes."] * 10) == 1.0
    # ... lmms-eval's VQAv2 task always normalises.
    assert vqa_accuracy("The dog", ["dog"] * 10, "lmms_eval") == 1.0


def test_vqa_accuracy_other_answer_counts():
    assert vqa_accuracy("Two", ["2"]) == 1.0  # one answer: exact match after normalisation
    assert vqa_accuracy("3", ["2"]) == 0.0
    # 3 answers, 2 matching: leave out a match -> 1/3 (twice), leave out the other -> 2/3
    assert vqa_accuracy("2", ["2", "2", "3"]) == pytest.approx((1 / 3 + 1 / 3 + 2 / 3) / 3)
    with pytest.raises(ValueError):
        vqa_accuracy("2", [])


# --- exact match --------------------------------------------------------------------------------


def test_exact_match():
    assert exact_match("Yes.", "yes") == 1.0
    assert exact_match("  A  red\ncar ", "a red car.") == 1.0
    assert exact_match("red", "red car") == 0.0
    assert exact_match("2.", "2.5") == 0.0


def test_yes_no_accuracy_counts_only_yes_no_references():
    predictions = ["yes", "No.", "blue", "maybe"]
    references = ["Yes", "no", "red", "no"]
    # yes/no references at 0, 1, 3: right, right, wrong -> 2/3; "red" is left out
    assert yes_no_accuracy(predictions, references) == pytest.approx(2 / 3)
    assert math.isnan(yes_no_accuracy(["blue"], ["red"]))
    with pytest.raises(ValueError):
        yes_no_accuracy(["yes"], ["yes", "no"])


# --- caption tokenizer ------------------------------------------------------------------------


def test_tokenize_caption_follows_the_ptb_tokenizer():
    # What coco-caption's Stanford PTBTokenizer (-lowerCase) plus its punctuation removal give.
    assert tokenize_caption("A man's dog doesn't run.") == ["a", "man", "'s", "dog", "does", "n't", "run"]
    assert tokenize_caption('Black-and-white photo, "3,000" at 10:30 a.m.') == [
        "black-and-white",
        "photo",
        "3,000",
        "at",
        "10:30",
        "a.m.",
    ]
    # Lowercased bracket escapes miss coco-caption's punctuation list, so they stay.
    assert tokenize_caption("A cat (black)") == ["a", "cat", "-lrb-", "black", "-rrb-"]
    assert tokenize_caption("50% off; $5 -- cannot") == ["50", "%", "off", "$", "5", "can", "not"]


# --- BLEU -------------------------------------------------------------------------------------


def test_bleu_identical_caption_is_one():
    # coco-caption's smoothing (+1e-15 / +1e-9 on every ratio) keeps it a hair under 1.
    assert bleu(["A man riding a horse."], [["a man riding a horse"]]) == pytest.approx(1.0, abs=1e-6)


def test_bleu_hand_computed():
    prediction = "a man riding a horse"  # 5 tokens
    references = ["a man is riding a horse", "a man riding a brown horse on the beach"]  # 6 and 9 tokens
    # clipped matches / n-grams of the prediction:
    #   1-grams: a a man riding horse                       -> 5/5
    #   2-grams: a man, man riding, riding a, a horse       -> 4/4
    #   3-grams: a man riding, man riding a, riding a horse -> 3/3
    #   4-grams: "a man riding a" (2nd ref), "man riding a horse" (in neither) -> 1/2
    # closest reference length: 6 -> brevity penalty exp(1 - 6/5) = exp(-0.2)
    # BLEU-4 = (1 * 1 * 1 * 1/2) ** (1/4) * exp(-0.2) = 0.84090 * 0.81873 = 0.68847
    assert bleu([prediction], [references]) == pytest.approx(0.5**0.25 * math.exp(-0.2), rel=1e-6)
    assert bleu([prediction], [references], n=1) == pytest.approx(math.exp(-0.2), rel=1e-6)


def test_bleu_is_pooled_over_the_corpus():
    predictions = ["a man riding a horse", "two dogs play in snow"]
    references = [["a man is riding a horse", "a man riding a brown horse on the beach"], ["two dogs play in snow"]]
    # matches / guesses summed: (5+5)/(5+5), (4+4)/(4+4), (3+3)/(3+3), (1+2)/(2+2)
    # lengths summed: 10 predicted, 6 + 5 = 11 reference -> penalty exp(1 - 11/10)
    expected = 0.75**0.25 * math.exp(1 - 11 / 10)
    assert bleu(predictions, references) == pytest.approx(expected, rel=1e-6)


def test_bleu_reference_length_ties_take_the_shorter():
    # 5 predicted tokens, references of 4 and 6: both 1 away, the shorter (4) is used, so
    # there is no brevity penalty; every unigram matches ("horse" only in the second).
    refs = ["a man riding a", "a man riding a big horse"]
    assert bleu(["a man riding a horse"], [refs], n=1) == pytest.approx(1.0, abs=1e-6)


def test_bleu_smoothing_as_coco_caption():
    # A 3-token caption has no 4-grams: the 4-gram term is (0 + 1e-15) / (0 + 1e-9) = 1e-6,
    # so even a perfect match scores (1e-6) ** (1/4) = 10 ** -1.5 = 0.0316.
    assert bleu(["a red car"], [["a red car"]]) == pytest.approx(10**-1.5, rel=1e-6)
    # No match at all: tiny, not zero.
    assert 0 < bleu(["w x y z"], [["a b c d"]]) < 1e-14


def test_caption_metrics_reject_malformed_inputs():
    with pytest.raises(ValueError):
        bleu(["a"], [["a"], ["b"]])
    with pytest.raises(ValueError):
        cider_d(["a cat"], ["a cat"])  # references must be lists, not strings
    with pytest.raises(ValueError):
        rouge_l_corpus(["a cat"], [[]])


# --- CIDEr-D ----------------------------------------------------------------------------------

DOGS = "two dogs play outside"


def test_cider_d_identical_captions_score_ten():
    # Two images with no shared words: every reference n-gram has df = 1 of N = 2 images, so all
    # weights are log 2; each of n = 1..4 has cosine 1, no length penalty -> 10 * mean(1,1,1,1).
    scores = cider_d_scores(["a red car parked here", DOGS], [["a red car parked here"], [DOGS]])
    assert scores == pytest.approx([10.0, 10.0])


def test_cider_d_of_a_single_image_is_zero():
    # With one image every reference n-gram is in all (one) images: idf = log(1/1) = 0.
    assert cider_d([DOGS], [[DOGS]]) == 0.0


def test_cider_d_no_shared_ngram_scores_zero():
    scores = cider_d_scores(["purple elephant flying", DOGS], [["a red car parked here"], [DOGS]])
    assert scores[0] == 0.0
    assert scores[1] == pytest.approx(10.0)


def test_cider_d_hand_computed_clipping_and_length_penalty():
    # Image 1: reference "red car", prediction "red car red car"; image 2 identical (score 10).
    # All weights are w = log 2 (df 1 of 2 images; "car red" is in no reference: df taken as 1).
    #   1-grams: prediction red:2w car:2w, reference red:w car:w.
    #            clipped dot = min(2w, w) * w * 2 = 2w^2; norms sqrt(8) w * sqrt(2) w = 4w^2 -> 1/2
    #   2-grams: prediction "red car":2w "car red":w, reference "red car":w.
    #            clipped dot = min(2w, w) * w = w^2; norms sqrt(5) w * w -> 1/sqrt(5)
    #   3-, 4-grams: none in the reference -> 0
    # Length (coco-caption counts bigrams): 3 vs 1 -> penalty exp(-2^2 / (2 * 6^2)) = exp(-1/18)
    # CIDEr-D = 10 * (1/2 + 1/sqrt(5) + 0 + 0) / 4 * exp(-1/18) = 2.2400
    expected = 10 * (0.5 + 1 / math.sqrt(5)) / 4 * math.exp(-1 / 18)
    scores = cider_d_scores(["red car red car", DOGS], [["red car"], [DOGS]])
    assert scores == pytest.approx([expected, 10.0])
    assert cider_d(["red car red car", DOGS], [["red car"], [DOGS]]) == pytest.approx((expected + 10) / 2)


def test_cider_d_length_penalty_lowers_a_padded_caption():
    # Appending words found in no reference adds unmatched weight (lower cosine) and a length
    # penalty; each extra word costs more.
    references = [["a red car parked here"], [DOGS]]
    base, longer, longest = (
        cider_d_scores([caption, DOGS], references)[0]
        for caption in ("a red car parked here", "a red car parked here today", "a red car parked here today again")
    )
    assert base > longer > longest > 0


def test_cider_d_symmetries():
    predictions = ["a red car", "two dogs play", "a cat on a mat"]
    references = [["a red car parked", "a car"], ["dogs playing", "two dogs in the park"], ["a cat sitting on a mat"]]
    scores = cider_d_scores(predictions, references)
    # Reordering the samples reorders the scores; reordering or repeating references changes nothing.
    assert cider_d_scores(predictions[::-1], references[::-1]) == pytest.approx(scores[::-1])
    assert cider_d_scores(predictions, [refs[::-1] for refs in references]) == pytest.approx(scores)
    assert cider_d_scores(predictions, [refs * 2 for refs in references]) == pytest.approx(scores)
    assert cider_d(predictions, references) == pytest.approx(sum(scores) / 3)


# --- ROUGE-L ----------------------------------------------------------------------------------


def test_rouge_l_hand_computed():
    # LCS("a man riding a horse", "a man is riding a horse on the beach") = a man riding a horse = 5
    # P = 5/5 = 1, R = 5/9; F = (1 + 1.2^2) P R / (R + 1.2^2 P) = 2.44 * 5/9 / (5/9 + 1.44)
    #   = 12.2 / 17.96 = 0.67929
    assert rouge_l("A man riding a horse.", ["a man is riding a horse on the beach"]) == pytest.approx(12.2 / 17.96)
    # LCS("the cat sat on the mat", "the cat is on the mat") = the cat on the mat = 5 (not contiguous)
    # P = R = 5/6, and with P = R the F-measure is P whatever beta: 5/6
    assert rouge_l("the cat sat on the mat", ["the cat is on the mat"]) == pytest.approx(5 / 6)
    assert rouge_l("purple elephant", ["a red car"]) == 0.0


def test_rouge_l_maximises_precision_and_recall_separately():
    # best P = 1 (first reference), best R = 2/2 = 1 ("a horse", second): F = 2.44 / 2.44 = 1
    references = ["a man is riding a horse on the beach", "a horse"]
    assert rouge_l("a man riding a horse", references) == pytest.approx(1.0)


def test_rouge_l_corpus_is_the_mean():
    predictions = ["the cat sat on the mat", "purple elephant"]
    references = [["the cat is on the mat"], ["a red car"]]
    assert rouge_l_corpus(predictions, references) == pytest.approx((5 / 6 + 0) / 2)


def test_text_rouge_l():
    # tokens: the answer is 42 / the answer 42 -> LCS 3, P = 3/4, R = 3/3
    # F = 2.44 * 0.75 * 1 / (1 + 1.44 * 0.75) = 1.83 / 2.08 = 0.87981
    assert text_rouge_l("The answer is 42.", "the answer: 42") == pytest.approx(1.83 / 2.08)
    assert text_rouge_l("", "anything") == 0.0


def test_word_error_rate_counts_edits_over_reference_words():
    # "a cat sat on" vs "the cat sat": one substitution (the -> a) and one insertion (on) = 2 / 3.
    assert word_error_rate(["a cat sat on"], ["the cat sat"]) == pytest.approx(2 / 3)
    # Corpus level: (0 + 1 deletion) / (3 + 2) reference words; case and punctuation ignored.
    assert word_error_rate(["The cat, sat.", "two"], ["the cat sat", "one two"]) == pytest.approx(1 / 5)
    assert word_error_rate([""], ["one two"]) == 1.0


def test_audio_tasks_have_their_own_headlines():
    from mmit.scoring import Prediction, task_metrics

    def pred(task, prediction, reference):
        return Prediction("s", "x", task, "t", "prompt", reference, [reference], prediction)

    qa = task_metrics("audio_qa", [pred("audio_qa", "Three.", "three"), pred("audio_qa", "red", "blue")])
    assert list(qa)[0] == "accuracy" and qa["accuracy"] == 0.5
    asr = task_metrics("audio_transcription", [pred("audio_transcription", "the cat sat", "the cat sat down")])
    assert list(asr)[0] == "word_accuracy" and asr["wer"] == pytest.approx(0.25)
    assert asr["word_accuracy"] == pytest.approx(0.75)


def test_video_tasks_are_scored_as_the_image_tasks_they_resemble():
    from mmit.scoring import Prediction, task_metrics

    def pred(task, prediction, reference):
        return Prediction("s", "x", task, "t", "prompt", reference, [reference], prediction)

    qa = task_metrics("video_qa", [pred("video_qa", "Left.", "left"), pred("video_qa", "up", "down")])
    assert list(qa)[0] == "accuracy" and qa["accuracy"] == 0.5  # one reference: exact match, not VQA's 3-of-10
    yes_no = task_metrics("video_yesno", [pred("video_yesno", "Yes", "yes"), pred("video_yesno", "no", "yes")])
    assert list(yes_no)[0] == "yes_no_accuracy" and yes_no["yes_no_accuracy"] == 0.5
    order = task_metrics("video_order", [pred("video_order", "A red square appears", "A red square appears.")])
    assert order["accuracy"] == 1.0
    for task in ("video_caption", "video_dense_caption", "video_temporal"):
        assert (
            list(task_metrics(task, [pred(task, "a red square moves left", "A red square moves left.")]))[0]
            == "cider_d"
        )


def test_every_task_family_reports_its_headline_first():
    from mmit.scoring import Prediction, headline_metric, task_metrics

    tasks = ("caption_brief", "vqa_short", "vqa_yesno", "audio_caption", "audio_qa", "audio_transcription", "x")
    video = ("video_caption", "video_dense_caption", "video_temporal", "video_qa", "video_yesno", "video_order")
    video += ("compare_statement", "compare_qa")
    for task in tasks + video:
        scores = task_metrics(task, [Prediction("s", "1", task, "t", "p", "yes", ["yes"], "yes")])
        assert list(scores)[0] == headline_metric(task), task


# --- cross-check with coco-caption (pycocoevalcap) ----------------------------------------------


def test_caption_metrics_equal_pycocoevalcap():
    """BLEU-1..4, CIDEr-D and ROUGE-L equal coco-caption's own scorers on 400 captions.

    Both sides get the same tokens (lowercase words joined by single spaces), so this checks the
    metrics, not the tokenizer (coco-caption's is Stanford's PTBTokenizer, in Java).
    """
    pytest.importorskip("pycocoevalcap", reason="the cross-check needs pycocoevalcap (pip install -e .[dev])")
    from bench.libraries import caption_corpus  # tools/bench: the corpus its speed comparison also uses
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    predictions, references = caption_corpus(400)
    # Empty captions ("" is one token to coco-caption's split(" ")) would differ by construction.
    assert all(p for p in predictions) and all(r for refs in references for r in refs)
    assert all(tokenize_caption(c) == c.split(" ") for c in predictions + [r for refs in references for r in refs])
    res = {i: [p] for i, p in enumerate(predictions)}
    gts = dict(enumerate(references))

    coco_bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(1, 5):
        assert abs(bleu(predictions, references, n) - coco_bleu[n - 1]) <= 1e-9, n

    coco_cider, coco_cider_scores = Cider().compute_score(gts, res)
    ours = cider_d_scores(predictions, references)
    assert max(abs(a - b) for a, b in zip(ours, coco_cider_scores, strict=True)) <= 1e-9
    assert abs(cider_d(predictions, references) - coco_cider) <= 1e-9

    coco_rouge, coco_rouge_scores = Rouge().compute_score(gts, res)
    ours = [rouge_l(p, refs) for p, refs in zip(predictions, references, strict=True)]
    assert max(abs(a - b) for a, b in zip(ours, coco_rouge_scores, strict=True)) <= 1e-9
    assert abs(rouge_l_corpus(predictions, references) - coco_rouge) <= 1e-9
    # The corpus is not degenerate: middling scores at every order.
    assert 0.2 < coco_bleu[3] < 0.9 and 1.0 < coco_cider < 9.0 and 0.3 < coco_rouge < 0.95


def test_multiple_choice_replies_read_by_letter_or_by_option_text():
    from mmit.metrics import listed_options, option_letter
    from mmit.scoring import Prediction, task_metrics

    prompt = "<image>\nWhat color is the triangle?\nA. red\nB. blue\nC. green\nD. yellow\nAnswer with the letter."
    options = listed_options(prompt)
    assert options == {"A": "red", "B": "blue", "C": "green", "D": "yellow"}
    assert [option_letter(r, options) for r in ("B", "(C)", "D. yellow", "blue", "Blue.", "purple", "Beige")] == [
        "B",
        "C",
        "D",
        "B",
        "B",
        None,
        None,
    ]
    preds = [
        Prediction("s", str(i), "vqa_multiple_choice", "", prompt, "B", ["B"], reply)
        for i, reply in enumerate(["B", "blue", "red", "A"])
    ]
    scores = task_metrics("vqa_multiple_choice", preds)
    assert scores["accuracy"] == 0.25 and scores["option_accuracy"] == 0.5  # "blue" names B by its text
    # An option's text, then its letter in brackets (shaping.choice_answer=option_letter): the letter counts
    assert [option_letter(r, options) for r in ("blue (B)", "blue (B).", "blue (E)", "(B) blue")] == [
        "B",
        "B",
        None,
        "B",
    ]
    assert option_letter("blue", options, by_text=False) is None and option_letter("blue (B)", options, False) == "B"
    replies = ["blue (B)", "B", "blue", "red (A)", "blue (A)"]
    preds = [
        Prediction("s", str(i), "vqa_multiple_choice", "", prompt, "blue (B)", ["blue (B)"], reply)
        for i, reply in enumerate(replies)
    ]
    scores = task_metrics("vqa_multiple_choice", preds)
    assert scores["accuracy"] == 0.4 and scores["option_accuracy"] == 0.6  # the letter decides "blue (A)"
    # The bracketed letter at the end wins over an option text that starts like a letter
    assert option_letter("A dog (B)", {"A": "A cat", "B": "A dog"}) == "B"
    assert option_letter("X-ray (C)", {"C": "X-ray", "X": ""}) == "C"
    # A reference naming no listed letter is scored by exact match; so is a letter in lower case
    odd = [
        Prediction("s", "0", "vqa_multiple_choice", "", prompt, "purple", ["purple"], "Purple"),
        Prediction("s", "1", "vqa_multiple_choice", "", prompt, "purple", ["purple"], "blue"),
        Prediction("s", "2", "vqa_multiple_choice", "", prompt, "B", ["B"], "b"),
    ]
    assert task_metrics("vqa_multiple_choice", odd)["accuracy"] == pytest.approx(2 / 3)


# --- yes/no ranking ---------------------------------------------------------------------------


def test_roc_auc_equals_scikit_learn_with_ties_and_a_hand_count():
    metrics = pytest.importorskip("sklearn.metrics")
    import random

    rng = random.Random(0)
    for n in (2, 7, 50):
        labels = [i % 2 == 0 for i in range(n)]
        rng.shuffle(labels)
        scores = [float(rng.randint(0, 5)) for _ in range(n)]  # many ties
        assert roc_auc(scores, labels)[0] == pytest.approx(metrics.roc_auc_score(labels, scores))
    # by hand: positives 0.9, 0.4; negatives 0.4, 0.1 -> pairs won 1 + 1 + 0.5 (tie) + 1 = 3.5 of 4
    auc, se = roc_auc([0.9, 0.4, 0.4, 0.1], [True, True, False, False])
    assert auc == 0.875 and 0 < se < 0.5
    assert roc_auc([1.0, 2.0], [True, False]) == (0.0, 0.0)  # ranked exactly backwards: no spread
    # Hanley and McNeil with unequal classes (3 positives, 1 negative), by hand: A = 2/3,
    # Q1 = A / (2 - A) = 1/2, Q2 = 2A^2 / (1 + A) = 8/15; SE^2 = (A(1-A) + 2(Q1 - A^2) + 0) / 3 = 1/9
    auc, se = roc_auc([0.9, 0.8, 0.3, 0.5], [True, True, True, False])
    assert auc == pytest.approx(2 / 3) and se == pytest.approx(1 / 3)
    # NaN margins (an overflow) are left out, not ranked
    assert yes_no_auc([1.0, float("nan"), -1.0], ["yes", "yes", "no"])[0] == 1.0
    assert all(math.isnan(v) for v in roc_auc([1.0, 2.0], [True, True]))


def test_yes_no_auc_ranks_only_yes_no_references_and_ignores_the_bias():
    # Every margin is negative (the model would say "no" each time), yet yes-questions rank above no-questions.
    margins = [-0.5, -0.6, -3.0, -4.0, None, 9.0]
    references = ["Yes", "yes.", "no", "No", "yes", "red"]  # no margin, or not a yes/no reference: left out
    assert yes_no_auc(margins, references)[0] == 1.0
    assert yes_no_auc([-3.0, -0.5], ["yes", "no"])[0] == 0.0
