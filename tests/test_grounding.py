"""Swapped media and the blind prior: the derangement, the prior's counts, and the dependence of a
model that ignores its media."""

import copy
import io
import math
from collections import Counter

import pytest
import torch
from PIL import Image

from mmit.data.samples import Conversation, MediaRef, Message
from mmit.grounding import AnswerPrior, derangement, grounding_line, grounding_table, swap_plan, verdict
from mmit.plots import plot_grounding
from mmit.scoring import Prediction, flat_metrics, grounding_scores, mean_interval, score_predictions


def _png(color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _conv(
    i: int, color: str, question: str = "What colour is it?", answer: str = "", kind: str = "image"
) -> Conversation:
    media = [MediaRef(kind, "png", data=_png(color))]
    messages = [Message("user", f"<{kind}>\n{question}"), Message("assistant", answer or color)]
    return Conversation(f"s{i}", messages, {"tasks": ["vqa_short"], "answers": [answer or color]}, media)


@pytest.mark.parametrize("sizes", [[1] * 7, [3, 3, 2], [4, 1, 1, 1, 1], [2, 2], [5, 5, 5, 1]])
def test_derangement_is_a_permutation_that_never_keeps_a_key(sizes):
    keys = [k for k, size in enumerate(sizes) for _ in range(size)]
    donor = derangement(keys, seed=3)
    assert sorted(donor) == list(range(len(keys)))  # every item handed out exactly once
    assert all(keys[d] != keys[i] for i, d in enumerate(donor))  # never the sample's own media
    assert derangement(keys, seed=3) == donor  # seeded
    assert any(derangement(keys, seed=s) != donor for s in range(4, 10))


def test_derangement_with_a_dominant_key_swaps_what_it_can():
    keys = ["a"] * 5 + ["b", "c"]
    donor = derangement(keys, seed=0)
    swapped = [i for i, d in enumerate(donor) if d is not None]
    assert len(swapped) == 4  # two "a" samples trade with "b" and "c"; three "a" have no partner
    assert all(keys[donor[i]] != keys[i] and donor[donor[i]] == i for i in swapped)
    assert derangement(["x"], 0) == [None] and derangement([], 0) == []


def test_swap_plan_follows_media_bytes_and_kinds():
    # Two questions about each red image share its bytes: a swap must not hand one the other's.
    convs = [_conv(0, "red"), _conv(1, "red"), _conv(2, "blue"), _conv(3, "green"), _conv(4, "red", kind="audio")]
    convs.append(Conversation("text", [Message("user", "hi"), Message("assistant", "hello")]))
    donor = swap_plan(convs, seed=0)
    for i in range(4):
        assert convs[donor[i]].media[0].sha256 != convs[i].media[0].sha256
        assert convs[donor[i]].media[0].kind == "image"
    assert donor[4] is None and donor[5] is None  # the only audio sample, and the text-only one


def test_blind_prior_equals_a_hand_count():
    convs = []
    for i, (answers, qtypes) in enumerate(
        [
            (["yes", "2"], ["is there a", "how many"]),
            (["no", "2"], ["is the", "how many"]),
            (["no", "3"], ["is the", "how many"]),
        ]
    ):
        messages = []
        for a in answers:
            messages += [Message("user", "q"), Message("assistant", a)]
        convs.append(Conversation(f"c{i}", messages, {"tasks": ["vqa_yesno", "vqa_short"], "question_types": qtypes}))
    convs.append(
        Conversation("cap", [Message("user", "<image>"), Message("assistant", "A cat.")], {"tasks": ["caption_brief"]})
    )
    prior = AnswerPrior.from_conversations(convs)
    assert prior.by_task["vqa_yesno"] == {"no": 2, "yes": 1} and prior.by_task["vqa_short"] == {"2": 2, "3": 1}
    assert prior.answer("vqa_yesno") == "no" and prior.answer("vqa_yesno", "is there a") == "yes"
    assert prior.answer("vqa_yesno", "never seen") == "no" and prior.answer("unknown") is None
    assert AnswerPrior.from_json(prior.to_json()).answer("vqa_yesno", "is there a") == "yes"
    # Multiple-choice answers count as the letter they name, whatever the option's text
    choices = [
        Conversation(f"m{i}", [Message("user", "q"), Message("assistant", a)], {"tasks": ["vqa_multiple_choice"]})
        for i, a in enumerate(["red (B)", "2 (B)", "blue (A)", "C"])
    ]
    choices.append(
        Conversation(
            "m9", [Message("user", "q"), Message("assistant", "A dog (B)")], {"tasks": ["vqa_multiple_choice"]}
        )
    )
    letters = AnswerPrior.from_conversations(choices)
    assert letters.by_task["vqa_multiple_choice"] == {"B": 3, "A": 1, "C": 1}
    # Scored by letter: "B" against references in the option-then-letter form, own and swapped
    prompt = "What colour?\nA. red\nB. blue\nC. green"
    refs, replies = ["blue (B)", "red (A)", "blue (B)", "green (C)"], ["blue (B)", "blue (B)", "B", "green (C)"]
    preds = [
        Prediction("val", f"q{i}", "vqa_multiple_choice", "t", prompt, ref, [ref], reply, has_media=True)
        for i, (ref, reply) in enumerate(zip(refs, replies))
    ]
    g = grounding_scores(preds, prior=letters)["val"]["vqa_multiple_choice"]
    assert g["score"] == 0.75 and g["prior"] == 0.5 and g["prior_answer"] == "B"

    # Evaluated: 4 yes/no questions, answers yes, yes, no, no; question types is there a, is the x 3.
    refs = [("yes", "is there a"), ("yes", "is the"), ("no", "is the"), ("no", "is the")]
    preds = [
        Prediction("val", f"p{i}", "vqa_yesno", "t", "q", ref, [ref], "yes", qtype, has_media=True)
        for i, (ref, qtype) in enumerate(refs)
    ]
    g = grounding_scores(preds, prior=prior)["val"]["vqa_yesno"]
    assert g["prior"] == 0.5  # "no" for all: right on the two "no" questions
    assert g["prior_question_type"] == 0.75  # "yes" for "is there a", "no" for "is the": 1 + 2 of 4
    assert g["prior_answer"] == "no" and g["score"] == 0.5 and g["n"] == 4


def test_mean_interval_is_the_normal_interval():
    mean, low, high = mean_interval([1.0, 0.0, 1.0, 1.0])
    sd = math.sqrt(((0.25**2) * 3 + 0.75**2) / 3)
    assert mean == 0.75 and low == pytest.approx(0.75 - 1.96 * sd / 2) and high == pytest.approx(0.75 + 1.96 * sd / 2)
    assert mean_interval([2.0, math.nan], [1.0, 1.0])[0] == 2.0
    # Weighted (transcription's word accuracy): the weighted mean.
    assert mean_interval([1.0, 0.0], [3.0, 1.0])[0] == 0.75


def test_dependence_and_loss_gap_from_paired_predictions():
    own = [Prediction("val", f"p{i}", "vqa_short", "t", "q", "red", ["red"], "red", has_media=True) for i in range(4)]
    swapped = [
        Prediction("val", f"p{i}", "vqa_short", "t", "q", "red", ["red"], a, has_media=True)
        for i, a in enumerate(["blue", "red", "green", "blue"])
    ]
    for p, q in zip(own, swapped, strict=True):
        p.loss, p.label_tokens, q.loss, q.label_tokens = 1.0, 2, 3.0, 2
    scores = score_predictions(own, swapped)
    g = scores["grounding"]["val"]["vqa_short"]
    assert g["score"] == 1.0 and g["swapped_media"] == 0.25 and g["dependence"] == 0.75
    assert g["loss"] == 0.5 and g["loss_swapped_media"] == 1.5 and g["loss_dependence"] == 1.0
    assert scores["sets"]["val"]["media_dependence"] == 0.75
    assert g["dependence_ci95"][0] < 0.75 < g["dependence_ci95"][1]


def test_yes_no_ranking_tells_a_biased_checker_from_a_guesser(tmp_path):
    """All answers "no" (accuracy at the prior), but the margin ranks every yes-question above every
    no-question with own media and at chance with swapped media: the reading says it checks."""
    refs = ["yes", "no", "yes", "no", "yes", "no"]

    def preds(margins):
        out = [
            Prediction("val", f"p{i}", "vqa_yesno", "t", "q", r, [r], "no", has_media=True) for i, r in enumerate(refs)
        ]
        for p, m in zip(out, margins, strict=True):
            p.yes_no_margin = m
        return out

    own, swapped = preds([-1.0, -5.0, -2.0, -6.0, -1.5, -7.0]), preds([-3.0, -3.0, -2.0, -2.0, -1.0, -1.0])
    scores = score_predictions(own, swapped, AnswerPrior({"vqa_yesno": Counter({"no": 3})}))
    g = scores["grounding"]["val"]["vqa_yesno"]
    assert g["score"] == 0.5 and g["dependence"] == 0.0 and g["prior"] == 0.5
    assert g["ranking_auc"] == 1.0 and g["ranking_auc_swapped_media"] == 0.5
    assert scores["tasks"]["val"]["vqa_yesno"]["yes_no_auc"] == 1.0
    assert verdict(g) == "ranks yes / no by its media, answers biased"
    assert "yes/no ranking AUC 1.000 (0.500 swapped)" in grounding_line(g)
    assert "| 1.000 [1.000, 1.000] / 0.500 |" in grounding_table(scores["grounding"])[2]
    assert flat_metrics(scores)["eval/val/vqa_yesno/ranking_auc"] == 1.0
    assert plot_grounding(scores["grounding"], tmp_path / "grounding.png").stat().st_size > 0
    # Ranking as well with another image: not a sign of looking.
    g = score_predictions(own, own, AnswerPrior({"vqa_yesno": Counter({"no": 3})}))["grounding"]["val"]["vqa_yesno"]
    assert verdict(g) == "not looking: at the blind prior"
    # No margins (answers read from a file written before them): no ranking figures, no error.
    g = score_predictions(preds([None] * 6))["grounding"]["val"]["vqa_yesno"]
    assert (
        "ranking_auc" not in g and "yes_no_auc" not in score_predictions(preds([None] * 6))["tasks"]["val"]["vqa_yesno"]
    )


def test_yes_no_margin_from_the_prefill_equals_a_padded_forward(compose):
    """Each yes/no answer's margin is log p(yes) - log p(no) of its first token, as a padded forward
    over prompt and answer gives it; other tasks carry none."""
    from mmit.data.collate import Collator
    from mmit.data.samples import IGNORE_INDEX
    from mmit.factory import build_model
    from mmit.generation import yes_no_tokens

    torch.manual_seed(0)
    built = build_model(compose(["+recipe=vqa_tiny", "trainer.precision=fp32"]))
    model, tokenizer = built.model.eval(), built.tokenizer
    convs = [_conv(i, c, "Is it red?", "yes" if c == "red" else "no") for i, c in enumerate(["red", "blue", "green"])]
    for conv in convs:
        conv.meta["tasks"] = ["vqa_yesno"]
    convs.append(_conv(3, "red"))  # a short answer
    result, samples = _evaluate(model, tokenizer, convs, 2, batch_size=2)
    yes, no = yes_no_tokens(tokenizer)
    batch = Collator(tokenizer.pad_token_id, preprocess={"image": model.encoders["image"].preprocess})(samples)
    with torch.no_grad():
        hidden = model(batch)
    for row, p in enumerate(result.predictions[:3]):
        first = int((batch.labels[row] != IGNORE_INDEX).nonzero()[0])  # the answer's first token
        logp = model.output_head(hidden[row, first - 1]).float().log_softmax(-1)
        assert p.yes_no_margin == pytest.approx(float(logp[yes].logsumexp(-1) - logp[no].logsumexp(-1)), abs=1e-4)
    assert result.predictions[3].yes_no_margin is None
    assert all(q.yes_no_margin is not None for q in result.swapped[:3])


def _evaluate(model, tokenizer, convs, max_new_tokens, **kwargs):
    """evaluate_set on ``convs`` with the model's own tokenizer and image preprocessing; (result, samples)."""
    from mmit.data.tokenize import Tokenizer
    from mmit.evaluation import evaluate_set
    from mmit.generation import GenerationOptions

    tokenize = Tokenizer(tokenizer, 256, "truncate", "raise", [model.slots["image"]])
    samples = [tokenize(c) for c in convs]
    preprocess = {"image": model.encoders["image"].preprocess}
    result = evaluate_set(
        model,
        tokenizer,
        "val",
        convs,
        GenerationOptions(max_new_tokens),
        samples=samples,
        preprocess=preprocess,
        **kwargs,
    )
    return result, samples


def test_a_model_that_ignores_its_media_has_dependence_zero(compose):
    from mmit.factory import build_model

    built = build_model(compose(["+recipe=vqa_tiny", "trainer.precision=fp32"]))
    model, tokenizer = built.model.eval(), built.tokenizer
    with torch.no_grad():
        for p in model.projectors["image"].parameters():  # every image becomes the same (zero) embeddings
            p.zero_()
    convs = [_conv(i, color) for i, color in enumerate(["red", "blue", "green", "yellow", "red", "blue"])]
    result, _ = _evaluate(model, tokenizer, convs, 4)
    assert len(result.swapped) == len(convs)
    g = score_predictions(result.predictions, result.swapped)["grounding"]["val"]["vqa_short"]
    assert g["dependence"] == 0.0 and g["n_swapped"] == len(convs)
    assert g["loss"] == pytest.approx(g["loss_swapped_media"], rel=1e-6)


def test_answer_losses_from_the_prefill_equal_a_padded_forward(compose):
    """evaluate_set scores each answer from its generation's own prefill: the same loss as
    training's padded forward over prompt and answer."""
    from mmit.data.collate import Collator
    from mmit.evaluation import sample_losses
    from mmit.factory import build_model

    torch.manual_seed(0)
    built = build_model(compose(["+recipe=vqa_tiny"]))
    model, tokenizer = built.model.eval(), built.tokenizer
    encoder = model.encoders["image"]
    convs = [_conv(i, c, answer=a) for i, (c, a) in enumerate([("red", "red"), ("blue", "a blue one"), ("green", "x")])]
    result, samples = _evaluate(model, tokenizer, convs, 3, batch_size=2)
    padded = sample_losses(model, samples, Collator(tokenizer.pad_token_id, preprocess={"image": encoder.preprocess}))
    for p, (loss, tokens) in zip(result.predictions, padded, strict=True):
        assert p.label_tokens == tokens > 1
        assert p.loss == pytest.approx(loss, rel=1e-4)


def test_answers_read_the_feature_cache_that_training_reads(compose, tmp_path):
    """With a feature cache, evaluation answers from the cached features, as training's batches do,
    not from the encoder run again: a cache written by another encoder changes the answers' losses
    to exactly what training's collator gives with that cache."""
    from mmit.data.collate import Collator, decode_image
    from mmit.data.features import build_feature_cache
    from mmit.evaluation import sample_losses
    from mmit.factory import build_model

    torch.manual_seed(0)
    built = build_model(compose(["+recipe=vqa_tiny", "trainer.precision=fp32"]))
    model, tokenizer = built.model.eval(), built.tokenizer
    encoder = model.encoders["image"]
    convs = [_conv(i, c) for i, c in enumerate(["red", "blue", "green", "yellow"])]
    other = copy.deepcopy(encoder)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.5 * torch.randn_like(p))
    refs = [m for c in convs for m in c.media]
    store = build_feature_cache(tmp_path, "image", other, {"encoder": "perturbed"}, refs, decode_image)

    live, samples = _evaluate(model, tokenizer, convs, 2, swap_media=False)
    cached, _ = _evaluate(model, tokenizer, convs, 2, swap_media=False, features={"image": store})
    preprocess = {"image": encoder.preprocess}
    training = sample_losses(
        model, samples, Collator(tokenizer.pad_token_id, preprocess=preprocess, features={"image": store})
    )
    for p, (loss, _) in zip(cached.predictions, training, strict=True):
        assert p.loss == pytest.approx(loss, rel=1e-4)
    assert max(abs(a.loss - b.loss) for a, b in zip(live.predictions, cached.predictions, strict=True)) > 1e-3


def test_a_damaged_run_folder_is_named_and_costs_only_its_plot(tmp_path, caplog):
    """answer_prior.json and metrics.jsonl come from a run folder someone may hand you: a damaged one
    is an error naming the file, and mmit.eval's outputs do not wait on the run's own curves."""
    from mmit.eval import write_outputs
    from mmit.training.tracking import read_metrics

    prior = tmp_path / "answer_prior.json"
    for text in ('{"by_task": {"vqa": {"top": [["yes"]]}}}', '{"by_task": []}', '{"by_task": {"vqa": {}}}', "[1"):
        prior.write_text(text)
        with pytest.raises(ValueError, match=f"{prior}: not an answer prior"):
            AnswerPrior.load(prior)
    metrics = tmp_path / "metrics.jsonl"
    for text, line in (('{"step": 1}\n{"lr": 1}\n', 2), ('{"step": 1}\n[2]\n{"step": 3}\n', 2), ("{\n{}\n", 1)):
        metrics.write_text(text)
        with pytest.raises(ValueError, match=f"{metrics}:{line}"):
            read_metrics(metrics)
    metrics.write_bytes(b'{"step": 1, "lr": "\xff"}\n')
    with pytest.raises(ValueError, match=f"{metrics}: not UTF-8"):
        read_metrics(metrics)
    metrics.write_text('{"step": 1, "lr": "x"}\n{"step": 2}\n{"lr": 3}\n')
    with caplog.at_level("WARNING", logger="mmit.eval"):
        own = [Prediction("val", "p", "vqa_yesno", "t", "q", "yes", ["yes"], "no")]
        out = write_outputs(tmp_path / "eval", own, score_predictions(own, []), {"model": "m"}, tmp_path)
    assert (out / "report.md").is_file() and not (out / "training_curves.png").exists()
    assert f"training curves not drawn: {metrics}:3" in caplog.text
