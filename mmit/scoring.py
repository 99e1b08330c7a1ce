"""Predictions -> scores per evaluation set, task and template, and the seen / held-out gap.

Each task family is scored by the metrics its community reports (``mmit.metrics``):

- ``vqa_short``: VQAv2 accuracy against every human answer, and exact match;
- ``vqa_yesno``: yes/no accuracy, VQAv2 accuracy and exact match;
- ``vqa_multiple_choice``: accuracy of the option letter (the reply's letter in brackets at its end,
  else at its start: "red (B)", "B", "(B)"; or a reply equal to the reference), and
  ``option_accuracy``: the reply read as an option by its letter or its exact text (MMBench's rule);
- ``caption_*``: BLEU-4, CIDEr-D and ROUGE-L against all captions of the image;
- audio and video tasks as the image task they resemble (``mmit.tasks.FAMILY``): their captions (and
  dense captions, and what happens between two times) as captions, their yes/no questions by
  yes/no accuracy, and questions with one reference answer by exact-match accuracy;
- anything else (text instructions, conversations): exact match and ROUGE-L.

The first metric of each family is the task's headline ``score``. Training's in-loop
evaluation and ``python -m mmit.eval`` both score through ``score_predictions``. VQA accuracy
follows the official VQAv2 script unless ``vqa_normalisation="lmms_eval"`` asks for lmms-eval's
convention (``mmit.metrics.vqa_accuracy``); the scores name the one used.

Beside each score of a task with media, ``grounding`` reads whether the model looked
(``mmit.grounding``): the score with each sample's media swapped for another's, their difference
(*media dependence*) with a 95% interval over the paired samples, the same difference in loss,
and the *blind prior*, the score of always giving the training set's most common answer. Yes/no
tasks add the *ranking AUC*: how well the first answer token's log p(yes) - log p(no) separates
the "yes" questions from the "no" ones, with own and with swapped media. It tells a model that
has learned to check but answers with a bias (AUC near 1, accuracy near the prior) from one that
has not (AUC near 0.5).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, replace

from mmit import metrics
from mmit.data.samples import Conversation
from mmit.grounding import AnswerPrior
from mmit.tasks import YES_NO, family

# Each family's headline metric: the first of its ``task_metrics``
HEADLINES = {
    "choice": "accuracy",
    "vqa_yesno": "yes_no_accuracy",
    "yesno": "yes_no_accuracy",
    "short": "accuracy",
    "caption": "cider_d",
    "transcription": "word_accuracy",
    "vqa": "vqa_accuracy",
    "text": "rouge_l",
}


def last_task(conv: Conversation) -> str:
    """The task of a conversation's last turn, the one evaluation answers."""
    return (conv.meta.get("tasks") or ["instruction"])[-1]


def is_yes_no(conv: Conversation) -> bool:
    return family(last_task(conv)) in YES_NO


@dataclass
class Prediction:
    """One generated answer and everything needed to score and group it."""

    set: str
    id: str
    task: str
    template: str  # "" when the sample came with its instruction (no template)
    prompt: str
    reference: str
    references: list[str]  # every acceptable answer (ten VQA answers, all captions, ...)
    prediction: str
    question_type: str = ""  # VQAv2's question prefix, where the annotations carry one
    has_media: bool = False
    loss: float | None = None  # teacher-forced loss summed over the reference's label tokens
    label_tokens: int = 0
    yes_no_margin: float | None = None  # yes/no tasks: log p(yes) - log p(no) of the answer's first token

    @classmethod
    def of(cls, set_name: str, conv: Conversation, prompt: str, reference: str, prediction: str) -> Prediction:
        meta = conv.meta
        templates = meta.get("templates") or [""]
        references = [str(a) for a in meta.get("answers") or []] or [reference]
        question_type = (meta.get("question_types") or [""])[-1]
        return cls(
            set_name,
            conv.id,
            last_task(conv),
            templates[-1],
            prompt,
            reference,
            references,
            prediction,
            question_type,
            bool(conv.media),
        )

    def to_json(self) -> dict:
        return asdict(self)


def headline_metric(task: str) -> str:
    return HEADLINES[family(task)]


def task_metrics(task: str, preds: list[Prediction], vqa_normalisation: str = "official") -> dict[str, float]:
    """The metrics of one task over its predictions (headline first), plus the count ``n``."""
    hyps = [p.prediction for p in preds]
    exact = _mean([metrics.exact_match(p.prediction, p.reference) for p in preds])
    kind = family(task)
    if kind == "caption":
        refs = [p.references for p in preds]
        scores = {
            "cider_d": metrics.cider_d(hyps, refs),
            "bleu_4": metrics.bleu(hyps, refs, 4),
            "rouge_l": metrics.rouge_l_corpus(hyps, refs),
        }
    elif kind == "choice":
        scores = {"accuracy": _mean(chose_right(preds)), "option_accuracy": _mean(chose_right(preds, by_text=True))}
    elif kind in ("vqa", "vqa_yesno"):
        scores = {
            "vqa_accuracy": _mean([metrics.vqa_accuracy(p.prediction, p.references, vqa_normalisation) for p in preds]),
            "exact_match": exact,
        }
        if kind == "vqa_yesno":
            scores = {"yes_no_accuracy": metrics.yes_no_accuracy(hyps, [p.reference for p in preds]), **scores}
    elif kind == "yesno":
        scores = {"yes_no_accuracy": metrics.yes_no_accuracy(hyps, [p.reference for p in preds]), "exact_match": exact}
    elif kind == "short":  # one reference answer
        scores = {"accuracy": exact, "rouge_l": _mean([metrics.text_rouge_l(p.prediction, p.reference) for p in preds])}
    elif kind == "transcription":  # headline 1 - WER, so that higher is better like the others
        wer = metrics.word_error_rate(hyps, [p.reference for p in preds])
        scores = {"word_accuracy": max(0.0, 1.0 - wer), "wer": wer, "exact_match": exact}
    else:
        scores = {
            "rouge_l": _mean([metrics.text_rouge_l(p.prediction, p.reference) for p in preds]),
            "exact_match": exact,
        }
    if kind in YES_NO and all(p.yes_no_margin is not None for p in preds):
        scores["yes_no_auc"] = yes_no_ranking(preds)[0]
    return {**scores, "n": len(preds)}


def sample_scores(
    task: str, preds: list[Prediction], vqa_normalisation: str = "official"
) -> tuple[list[float], list[float]]:
    """Each prediction's headline score and weight: the task's headline is their weighted mean.

    NaN marks a sample the headline leaves out (a yes/no question whose answer is neither).
    Transcription's word accuracy is 1 - corpus WER: per-sample word accuracies weighted by
    reference length (the clip at 0 aside).
    """
    hyps, ones = [p.prediction for p in preds], [1.0] * len(preds)
    kind = family(task)
    if kind == "caption":
        return metrics.cider_d_scores(hyps, [p.references for p in preds]), ones
    if kind == "choice":
        return [float(right) for right in chose_right(preds)], ones
    if kind == "short":
        return [metrics.exact_match(p.prediction, p.reference) for p in preds], ones
    if kind in ("vqa_yesno", "yesno"):
        return [metrics.yes_no_accuracy([p.prediction], [p.reference]) for p in preds], ones
    if kind == "vqa":
        return [metrics.vqa_accuracy(p.prediction, p.references, vqa_normalisation) for p in preds], ones
    if kind == "transcription":
        words = [float(max(len(p.reference.split()), 1)) for p in preds]
        return [1.0 - metrics.word_error_rate([p.prediction], [p.reference]) for p in preds], words
    return [metrics.text_rouge_l(p.prediction, p.reference) for p in preds], ones


def chose_right(preds: list[Prediction], by_text: bool = False) -> list[bool]:
    """Whether each multiple-choice reply names the reference's option: by its letter, or with
    ``by_text`` also by its exact text. References are a letter ("B") or an option's text and
    letter ("red (B)"); a prompt that lists no options (its own wording) leaves the letter alone.
    A reply equal to the reference (``exact_match``: "b" for "B") is right, whatever it names."""
    right = []
    for p in preds:
        options = metrics.listed_options(p.prompt) or metrics.ANY_LETTER
        wanted = metrics.option_letter(p.reference, options, by_text=False)
        named = wanted is not None and metrics.option_letter(p.prediction, options, by_text) == wanted
        right.append(named or metrics.exact_match(p.prediction, p.reference) == 1.0)
    return right


def yes_no_ranking(preds: list[Prediction]) -> tuple[float, float]:
    """(ROC AUC, standard error) of the predictions' yes/no margins against their references."""
    return metrics.yes_no_auc([p.yes_no_margin for p in preds], [p.reference for p in preds])


def _ranking_figures(group: list[Prediction], pairs: list[tuple[int, Prediction]]) -> dict:
    """A yes/no task's ranking AUC with its 95% interval, and with swapped media where answered."""
    if family(group[0].task) not in YES_NO or any(p.yes_no_margin is None for p in group):
        return {}
    auc, se = yes_no_ranking(group)
    if math.isnan(auc):
        return {}
    out = {"ranking_auc": auc, "ranking_auc_ci95": [max(auc - 1.96 * se, 0.0), min(auc + 1.96 * se, 1.0)]}
    others = [q for _, q in pairs]
    if others and all(q.yes_no_margin is not None for q in others):
        swapped = yes_no_ranking(others)[0]
        own, own_se = yes_no_ranking([group[i] for i, _ in pairs])  # the same samples as the swapped ones
        if not math.isnan(swapped):
            # It ranks by its media: above chance, and above the swapped ranking by more than its interval.
            out["ranking_auc_swapped_media"] = swapped
            out["ranks_by_media"] = out["ranking_auc_ci95"][0] > 0.5 and own - 1.96 * own_se > swapped
    return out


def mean_interval(values: list[float], weights: list[float] | None = None) -> tuple[float, float, float]:
    """(weighted mean, lower, upper): a 95% normal interval over the samples (NaNs left out)."""
    pairs = [(v, w) for v, w in zip(values, weights or [1.0] * len(values), strict=True) if not math.isnan(v)]
    if not pairs:
        return math.nan, math.nan, math.nan
    total = sum(w for _, w in pairs)
    mean = sum(v * w for v, w in pairs) / total
    if len(pairs) < 2:
        return mean, math.nan, math.nan
    # The ratio estimator's standard error, which is sd / sqrt(n) (with n - 1) for equal weights.
    n = len(pairs)
    spread = sum((w * (v - mean)) ** 2 for v, w in pairs) * n / (n - 1)
    half = 1.96 * math.sqrt(spread) / total
    return mean, mean - half, mean + half


def grounding_scores(
    preds: list[Prediction],
    swapped: list[Prediction] | None = None,
    prior: AnswerPrior | None = None,
    vqa_normalisation: str = "official",
) -> dict[str, dict[str, dict]]:
    """Per set and task with media: the score with its 95% interval, the score with swapped media,
    the dependence (own minus swapped, paired per sample) with its interval, the loss with own and
    with swapped media, and the blind prior (per task, and per question type where known)."""
    others = {(p.set, p.id): p for p in swapped or []}
    out: dict[str, dict[str, dict]] = {}
    for (set_name, task), group in _group(preds, lambda p: (p.set, p.task)).items():
        group = [p for p in group if p.has_media]
        if not group:
            continue
        values, weights = sample_scores(task, group, vqa_normalisation)
        score, low, high = mean_interval(values, weights)
        entry = {"metric": headline_metric(task), "n": len(group), "score": score, "ci95": [low, high]}
        pairs = [(i, others[(p.set, p.id)]) for i, p in enumerate(group) if (p.set, p.id) in others]
        if pairs:
            own = [group[i] for i, _ in pairs]
            sw_values, _ = sample_scores(task, [q for _, q in pairs], vqa_normalisation)
            own_values = [values[i] for i, _ in pairs]
            pair_weights = [weights[i] for i, _ in pairs]
            diffs = [a - b for a, b in zip(own_values, sw_values, strict=True)]
            dependence, d_low, d_high = mean_interval(diffs, pair_weights)
            entry.update(
                n_swapped=len(pairs),
                swapped_media=mean_interval(sw_values, pair_weights)[0],
                dependence=dependence,
                dependence_ci95=[d_low, d_high],
            )
            if all(p.loss is not None for p in own) and all(q.loss is not None for _, q in pairs):
                tokens = max(sum(p.label_tokens for p in own), 1)
                entry.update(
                    loss=sum(p.loss for p in own) / tokens,
                    loss_swapped_media=sum(q.loss for _, q in pairs) / tokens,
                )
                entry["loss_dependence"] = entry["loss_swapped_media"] - entry["loss"]
        entry.update(_ranking_figures(group, pairs))
        if prior is not None:
            entry.update(_prior_scores(task, group, prior, vqa_normalisation))
        out.setdefault(set_name, {})[task] = entry
    return out


def _prior_scores(task: str, group: list[Prediction], prior: AnswerPrior, vqa_normalisation: str) -> dict:
    answer = prior.answer(task)
    if answer is None:
        return {}
    blind = [replace(p, prediction=answer) for p in group]
    out = {"prior": mean_interval(*sample_scores(task, blind, vqa_normalisation))[0], "prior_answer": answer}
    if prior.has_question_types and any(p.question_type for p in group):
        by_type = [replace(p, prediction=prior.answer(task, p.question_type)) for p in group]
        out["prior_question_type"] = mean_interval(*sample_scores(task, by_type, vqa_normalisation))[0]
    return out


def score_predictions(
    preds: list[Prediction],
    swapped: list[Prediction] | None = None,
    prior: AnswerPrior | None = None,
    vqa_normalisation: str = "official",
) -> dict:
    """Scores by set, by set and task, and by set, task and template, and the grounding figures.

    ``sets[name]`` has ``n``, ``exact_match`` over all samples, ``vqa_accuracy`` over the
    VQA questions (when any), ``score``: the mean of the tasks' headline scores, and, with
    swapped-media predictions, ``media_dependence``: the mean of its tasks' dependences.
    ``swapped``: the same samples answered with another sample's media (``mmit.grounding``);
    ``prior``: the training set's answers, for the blind prior. ``vqa_normalisation``: official
    (the VQAv2 script) or lmms_eval (``mmit.metrics.vqa_accuracy``), recorded in the scores.
    """
    if vqa_normalisation not in metrics.VQA_NORMALISATIONS:
        raise ValueError(
            f"vqa_normalisation must be one of {', '.join(metrics.VQA_NORMALISATIONS)}, not {vqa_normalisation!r}"
        )
    by_set: dict[str, list[Prediction]] = defaultdict(list)
    for p in preds:
        by_set[p.set].append(p)
    sets, tasks, templates = {}, {}, {}
    for set_name, set_preds in by_set.items():
        by_task = _group(set_preds, lambda p: p.task)
        tasks[set_name] = {task: task_metrics(task, tp, vqa_normalisation) for task, tp in by_task.items()}
        templates[set_name] = {
            task: {
                template: {**task_metrics(task, tpp, vqa_normalisation), "metric": headline_metric(task)}
                for template, tpp in _group(tp, lambda p: p.template).items()
            }
            for task, tp in by_task.items()
        }
        vqa = [p for p in set_preds if p.task in ("vqa_short", "vqa_yesno")]
        sets[set_name] = {
            "n": len(set_preds),
            "score": _mean([tasks[set_name][t][headline_metric(t)] for t in by_task]),
            "exact_match": _mean([metrics.exact_match(p.prediction, p.reference) for p in set_preds]),
        }
        if vqa:
            sets[set_name]["vqa_accuracy"] = _mean(
                [metrics.vqa_accuracy(p.prediction, p.references, vqa_normalisation) for p in vqa]
            )
    grounding = grounding_scores(preds, swapped, prior, vqa_normalisation)
    for set_name, set_tasks in grounding.items():
        dependences = [g["dependence"] for g in set_tasks.values() if "dependence" in g]
        if dependences:
            sets[set_name]["media_dependence"] = _mean(dependences)
    return {
        "vqa_normalisation": vqa_normalisation,
        "sets": sets,
        "tasks": tasks,
        "templates": templates,
        "gaps": seen_heldout_gaps(tasks),
        "grounding": grounding,
    }


def seen_heldout_gaps(tasks: dict[str, dict[str, dict]], seen: str = "seen") -> dict[str, dict[str, dict]]:
    """Per held-out set and task: headline score on seen templates minus on held-out wording.

    A set counts as held-out when its name says so (``heldout_templates``, ``heldout_tasks``,
    as the dataset builder names them). A large positive gap means the model learned the
    training wordings rather than the task. A held-out task has no seen samples: it is compared
    with the seen tasks of its family (``caption_detailed`` with ``caption_brief``) that share
    its headline metric, and left out when there are none.
    """
    if seen not in tasks:
        return {}
    seen_tasks = tasks[seen]
    gaps: dict[str, dict[str, dict]] = {}
    for set_name, set_tasks in tasks.items():
        if set_name == seen or "heldout" not in set_name:
            continue
        for task, m in set_tasks.items():
            metric = headline_metric(task)
            if task in seen_tasks:
                compared, reference = "same task, seen templates", seen_tasks[task][metric]
            else:  # a held-out task: the seen tasks of its family scored by the same metric
                family = [
                    t for t in seen_tasks if t.split("_")[0] == task.split("_")[0] and headline_metric(t) == metric
                ]
                if not family:
                    continue
                compared, reference = f"seen {', '.join(family)}", _mean([seen_tasks[t][metric] for t in family])
            gaps.setdefault(set_name, {})[task] = {
                "metric": metric,
                "seen": reference,
                "heldout": m[metric],
                "gap": reference - m[metric],
                "compared_with": compared,
            }
    return gaps


def flat_metrics(scores: dict, prefix: str = "eval") -> dict[str, float]:
    """``eval/<set>/<metric>`` and ``eval/<set>/<task>/<metric>`` for the training log."""
    flat = {}
    for set_name, values in scores["sets"].items():
        flat.update({f"{prefix}/{set_name}/{k}": float(v) for k, v in values.items() if k != "n"})
        for task, values_t in scores["tasks"][set_name].items():
            metric = headline_metric(task)
            flat[f"{prefix}/{set_name}/{task}/{metric}"] = float(values_t[metric])
    for set_name, set_tasks in scores.get("grounding", {}).items():
        for task, g in set_tasks.items():
            for key in ("dependence", "prior", "loss_dependence", "ranking_auc", "ranking_auc_swapped_media"):
                if key in g:
                    flat[f"{prefix}/{set_name}/{task}/{key}"] = float(g[key])
    return flat


def _group(preds: list[Prediction], key) -> dict[str, list[Prediction]]:
    groups: dict[str, list[Prediction]] = defaultdict(list)
    for p in preds:
        groups[key(p)].append(p)
    return dict(sorted(groups.items()))


def _mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan
