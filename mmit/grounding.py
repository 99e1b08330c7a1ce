"""Does the model look? Swapped media and the blind prior, to read beside every score.

- *Media dependence*: each evaluation sample is answered twice, once with its own media and once
  with another sample's (a seeded derangement within the set: no sample keeps media with its own
  bytes, and every item is handed out once, so the media seen stay those of the set). A model
  that ignores its media answers the same both times: dependence 0.
- *Blind prior*: every question answered with the training set's most common answer for its task
  (and, where annotations carry one, for its question type, as VQAv2's ``question_type``): the
  score a model reaches by guessing well without looking.
- *Yes/no ranking*: for yes/no tasks, the ROC AUC of the first answer token's log p(yes) -
  log p(no) against the references, with own and with swapped media. A model that checks but
  answers with a bias (all "no") ranks well (AUC near 1) at an accuracy near the prior; one that
  does not check ranks at chance (0.5).

``mmit.scoring`` scores them side by side; training's in-loop evaluation and
``python -m mmit.eval`` both produce them.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from mmit.data.samples import BAD_JSON, Conversation
from mmit.metrics import ANY_LETTER, option_letter
from mmit.tasks import family

T = TypeVar("T")
PRIOR_FILE = "answer_prior.json"  # in a run directory, written by mmit.train


def derangement(keys: Sequence, seed: int = 0) -> list[int | None]:
    """``donor[i]``: the index whose media sample ``i`` gets, never one with an equal key.

    The samples are shuffled (seeded), ordered so that equal keys sit together, and each takes
    the media of the sample ``m`` places further round the circle, ``m`` being the size of the
    largest group: a shift by at least a group's size never lands in the same group, and a shift
    is a permutation, so every item is handed out exactly once. When one key holds more than half
    of the samples no such permutation exists; its surplus samples get ``None`` (no swap) and are
    left out of the comparison.
    """
    n = len(keys)
    if n < 2:
        return [None] * n
    rng = random.Random(seed)
    groups: dict = {}
    for i in rng.sample(range(n), n):
        groups.setdefault(keys[i], []).append(i)
    biggest = max(len(g) for g in groups.values())
    order = [i for g in rng.sample(list(groups.values()), len(groups)) for i in g]
    donor: list[int | None] = [None] * n
    if 2 * biggest <= n:
        for p, i in enumerate(order):
            donor[i] = order[(p + biggest) % n]
        return donor
    # One key dominates: pair as many of its samples as there are others, in both directions.
    big = max(groups.values(), key=len)
    others = [i for i in order if keys[i] != keys[big[0]]]
    for a, b in zip(big, others, strict=False):
        donor[a], donor[b] = b, a
    return donor


def media_key(conv: Conversation) -> tuple:
    """What makes two samples' media the same: their kinds and bytes, in order (a conversation or
    anything else with ``media``, such as a tokenized sample)."""
    return tuple((m.kind, m.sha256) for m in conv.media)


def media_signature(conv: Conversation) -> tuple[str, ...]:
    """The kinds of a sample's media in order: only samples with equal signatures trade media."""
    return tuple(m.kind for m in conv.media)


def swap_plan(convs: Sequence[Conversation], seed: int = 0) -> list[int | None]:
    """For each conversation, whose media it gets when swapped (``None``: no media, or no partner)."""
    donor: list[int | None] = [None] * len(convs)
    by_signature: dict[tuple, list[int]] = {}
    for i, conv in enumerate(convs):
        if conv.media:
            by_signature.setdefault(media_signature(conv), []).append(i)
    for _, members in sorted(by_signature.items()):
        keys = [media_key(convs[i]) for i in members]
        for i, d in zip(members, derangement(keys, seed), strict=True):
            donor[i] = None if d is None else members[d]
    return donor


def swapped(items: Sequence[T], donor: Sequence[int | None]) -> list[tuple[int, T]]:
    """``(index, item with its donor's media)`` for every item that has a donor."""
    return [
        (i, replace(item, media=list(items[d].media))) for i, (item, d) in enumerate(zip(items, donor)) if d is not None
    ]


@dataclass
class AnswerPrior:
    """The training set's answers per task and per (task, question type): what a blind guess says.

    Counts come from every assistant turn of every training conversation whose metadata names
    its tasks (one per turn, as the dataset builder writes them); multiple-choice answers count
    as the letter they name.
    """

    by_task: dict[str, Counter] = field(default_factory=dict)
    by_question_type: dict[str, dict[str, Counter]] = field(default_factory=dict)

    @classmethod
    def from_conversations(cls, convs: Sequence[Conversation]) -> AnswerPrior:
        prior = cls()
        for conv in convs:
            answers = [m.content.strip() for m in conv.messages if m.role == "assistant"]
            tasks = conv.meta.get("tasks") or ["instruction"]
            qtypes = conv.meta.get("question_types") or []
            for turn, answer in enumerate(answers):
                task = tasks[turn] if len(tasks) == len(answers) else tasks[-1]
                if family(task) == "choice":  # "red (B)" counts as "B": the blind guess is a letter
                    answer = option_letter(answer, ANY_LETTER, by_text=False) or answer
                prior.by_task.setdefault(task, Counter())[answer] += 1
                qtype = qtypes[turn] if len(qtypes) == len(answers) else ""
                if qtype:
                    prior.by_question_type.setdefault(task, {}).setdefault(qtype, Counter())[answer] += 1
        return prior

    def answer(self, task: str, question_type: str = "") -> str | None:
        """The most common training answer for the task (for its question type, when known and seen)."""
        counts = self.by_question_type.get(task, {}).get(question_type) if question_type else None
        counts = counts or self.by_task.get(task)
        return _most_common(counts) if counts else None

    @property
    def has_question_types(self) -> bool:
        return bool(self.by_question_type)

    def to_json(self, top: int = 20) -> dict:
        """The most common answers and each counter's total (enough to reproduce ``answer``)."""

        def brief(counts: Counter) -> dict:
            return {"n": sum(counts.values()), "top": [[a, c] for a, c in _ranked(counts)[:top]]}

        return {
            "by_task": {t: brief(c) for t, c in sorted(self.by_task.items())},
            "by_question_type": {
                t: {q: brief(c) for q, c in sorted(qs.items())} for t, qs in sorted(self.by_question_type.items())
            },
        }

    @classmethod
    def from_json(cls, data: dict) -> AnswerPrior:
        def counts(entry: dict) -> Counter:
            return Counter({str(a): int(c) for a, c in entry["top"]})

        return cls(
            {t: counts(e) for t, e in data.get("by_task", {}).items()},
            {t: {q: counts(e) for q, e in qs.items()} for t, qs in data.get("by_question_type", {}).items()},
        )

    def save(self, path: Path) -> None:
        from mmit.paths import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_json(), indent=1, ensure_ascii=False))

    @classmethod
    def load(cls, path: Path) -> AnswerPrior:
        """The prior a run wrote; ValueError naming the file when it is not one."""
        try:
            return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
        except (*BAD_JSON, KeyError, TypeError, AttributeError) as err:
            raise ValueError(
                f"{path}: not an answer prior as mmit.train writes it ({type(err).__name__}: {err})"
            ) from err


def _ranked(counts: Counter) -> list[tuple[str, int]]:
    # Ties broken by the answer text, so the prior does not depend on reading order.
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _most_common(counts: Counter) -> str:
    return _ranked(counts)[0][0]


def verdict(entry: dict) -> str:
    """A plain reading of one task's figures: does the score depend on the media?"""
    low = (entry.get("dependence_ci95") or [float("nan")])[0]
    if "dependence" not in entry:
        return "not measured"
    if low > 0:
        return "uses its media"
    if entry.get("ranks_by_media"):
        return "ranks yes / no by its media, answers biased"
    prior = max(entry.get("prior", float("-inf")), entry.get("prior_question_type", float("-inf")))
    if entry["score"] <= prior + 0.02:
        return "not looking: at the blind prior"
    return "no measurable use of media"


def grounding_line(g: dict) -> str:
    """One task's figures on one line: "0.61 (n=300, 95% CI 0.55-0.66), swapped media 0.52, ..."."""
    low, high = g.get("ci95") or (float("nan"), float("nan"))
    parts = [f"{g['score']:.3f} (n={g['n']}, 95% CI {low:.3f}-{high:.3f})"]
    if "dependence" in g:
        parts.append(f"swapped media {g['swapped_media']:.3f}, dependence {g['dependence']:+.3f}")
    if "prior" in g:
        parts.append(f"blind prior {g['prior']:.3f}")
    if "ranking_auc" in g:
        swapped = g.get("ranking_auc_swapped_media")
        parts.append(
            f"yes/no ranking AUC {g['ranking_auc']:.3f}" + (f" ({swapped:.3f} swapped)" if swapped is not None else "")
        )
    return ", ".join(parts) + f": {verdict(g)}"


GROUNDING_NOTE = (
    "Media dependence: the score with each sample's own media minus the score with another sample's "
    "media (a seeded derangement within the set). Blind prior: the score of always giving the training "
    "set's most common answer for the task (or for the question type). A score near the prior with a "
    "dependence near 0 means the model guesses without looking. Yes/no ranking AUC (own / swapped media): "
    "how well log p(yes) - log p(no) of the answer's first token separates the yes questions from the no "
    "ones; 0.5 is chance whatever the bias, so a high AUC beside an accuracy at the prior means the model "
    "checks but answers with a bias."
)


def grounding_table(grounding: dict[str, dict[str, dict]]) -> list[str]:
    """Markdown rows: per set and task, the score beside its swapped-media score and blind prior."""
    if not grounding:
        return []

    def num(value) -> str:
        return "–" if value is None or value != value else f"{value:.3f}"

    def interval(pair) -> str:
        return "" if not pair or pair[0] != pair[0] else f" [{pair[0]:.3f}, {pair[1]:.3f}]"

    lines = [
        "| set | task | metric | samples | score [95% CI] | swapped media | media dependence [95% CI] "
        "| blind prior (task / question type) | loss: own / swapped media | yes/no ranking AUC: own / swapped "
        "| reading |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for set_name, tasks in grounding.items():
        for task, g in tasks.items():
            prior = num(g.get("prior"))
            if "prior_question_type" in g:
                prior += f" / {num(g['prior_question_type'])}"
            if "prior_answer" in g:
                prior += f" ({g['prior_answer'][:24]!r})"
            loss = f"{num(g.get('loss'))} / {num(g.get('loss_swapped_media'))}" if "loss" in g else "–"
            ranking = "–"
            if "ranking_auc" in g:
                ranking = f"{num(g['ranking_auc'])}{interval(g['ranking_auc_ci95'])} / "
                ranking += num(g.get("ranking_auc_swapped_media"))
            lines.append(
                f"| {set_name} | {task} | {g['metric']} | {g['n']} | {num(g['score'])}{interval(g.get('ci95'))} "
                f"| {num(g.get('swapped_media'))} | {num(g.get('dependence'))}{interval(g.get('dependence_ci95'))} "
                f"| {prior} | {loss} | {ranking} | {verdict(g)} |"
            )
    return lines
