"""Predictions -> scores per evaluation set, task and template, and the seen / held-out gap.

Each task family is scored by the metrics its community reports (``mmit.metrics``):

- ``vqa_short``: VQAv2 accuracy against every human answer, and exact match;
- ``vqa_yesno``: yes/no accuracy, VQAv2 accuracy and exact match;
- ``vqa_multiple_choice``: accuracy of the option letter (exact match);
- ``caption_*``: BLEU-4, CIDEr-D and ROUGE-L against all captions of the image;
- anything else (text instructions, conversations): exact match and ROUGE-L.

The first metric of each family is the task's headline ``score``. Training's in-loop
evaluation and ``python -m mmit.eval`` both score through ``score_predictions``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass

from mmit import metrics
from mmit.data.samples import Conversation

HEADLINE = {
    "vqa_short": "vqa_accuracy",
    "vqa_yesno": "yes_no_accuracy",
    "vqa_multiple_choice": "accuracy",
    "audio_caption": "cider_d",
    "audio_qa": "accuracy",
    "audio_transcription": "word_accuracy",
}


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

    @classmethod
    def of(cls, set_name: str, conv: Conversation, prompt: str, reference: str, prediction: str) -> Prediction:
        meta = conv.meta
        tasks, templates = meta.get("tasks") or ["instruction"], meta.get("templates") or [""]
        references = [str(a) for a in meta.get("answers") or []] or [reference]
        return cls(set_name, conv.id, tasks[-1], templates[-1], prompt, reference, references, prediction)

    def to_json(self) -> dict:
        return asdict(self)


def headline_metric(task: str) -> str:
    if task in HEADLINE:
        return HEADLINE[task]
    return "cider_d" if task.startswith("caption") else "rouge_l"


def task_metrics(task: str, preds: list[Prediction]) -> dict[str, float]:
    """The metrics of one task over its predictions (headline first), plus the count ``n``."""
    hyps = [p.prediction for p in preds]
    exact = _mean([metrics.exact_match(p.prediction, p.reference) for p in preds])
    if task.startswith("caption") or task == "audio_caption":
        refs = [p.references for p in preds]
        scores = {
            "cider_d": metrics.cider_d(hyps, refs),
            "bleu_4": metrics.bleu(hyps, refs, 4),
            "rouge_l": metrics.rouge_l_corpus(hyps, refs),
        }
    elif task == "vqa_multiple_choice":
        scores = {"accuracy": exact}
    elif task.startswith("vqa"):
        scores = {
            "vqa_accuracy": _mean([metrics.vqa_accuracy(p.prediction, p.references) for p in preds]),
            "exact_match": exact,
        }
        if task == "vqa_yesno":
            scores = {"yes_no_accuracy": metrics.yes_no_accuracy(hyps, [p.reference for p in preds]), **scores}
    elif task == "audio_qa":  # spoken-content questions with one short answer
        scores = {"accuracy": exact, "rouge_l": _mean([metrics.text_rouge_l(p.prediction, p.reference) for p in preds])}
    elif task == "audio_transcription":  # headline 1 - WER, so that higher is better like the others
        wer = metrics.word_error_rate(hyps, [p.reference for p in preds])
        scores = {"word_accuracy": max(0.0, 1.0 - wer), "wer": wer, "exact_match": exact}
    else:
        scores = {
            "rouge_l": _mean([metrics.text_rouge_l(p.prediction, p.reference) for p in preds]),
            "exact_match": exact,
        }
    return {**scores, "n": len(preds)}


def score_predictions(preds: list[Prediction]) -> dict:
    """Scores by set, by set and task, and by set, task and template.

    ``sets[name]`` has ``n``, ``exact_match`` over all samples, ``vqa_accuracy`` over the
    VQA questions (when any), and ``score``: the mean of the tasks' headline scores.
    """
    by_set: dict[str, list[Prediction]] = defaultdict(list)
    for p in preds:
        by_set[p.set].append(p)
    sets, tasks, templates = {}, {}, {}
    for set_name, set_preds in by_set.items():
        by_task = _group(set_preds, lambda p: p.task)
        tasks[set_name] = {task: task_metrics(task, tp) for task, tp in by_task.items()}
        templates[set_name] = {
            task: {
                template: {**task_metrics(task, tpp), "metric": headline_metric(task)}
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
            sets[set_name]["vqa_accuracy"] = _mean([metrics.vqa_accuracy(p.prediction, p.references) for p in vqa])
    return {"sets": sets, "tasks": tasks, "templates": templates, "gaps": seen_heldout_gaps(tasks)}


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
    return flat


def _group(preds: list[Prediction], key) -> dict[str, list[Prediction]]:
    groups: dict[str, list[Prediction]] = defaultdict(list)
    for p in preds:
        groups[key(p)].append(p)
    return dict(sorted(groups.items()))


def _mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan
