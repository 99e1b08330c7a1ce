"""Annotations -> conversations: templates applied to captions, question-answer pairs and transcripts.

Training conversations may chain several QA pairs of one image or clip (as LLaVA does);
evaluation samples are single-turn so each answer is scored on its own. Audio annotations
become the tasks ``audio_caption``, ``audio_qa`` and ``audio_transcription``, with one
``<audio>`` placeholder per clip (per window, when the build split a long clip). Video annotations
become ``video_caption``, ``video_qa``, ``video_yesno``, ``video_order`` (which happens first) and,
from timestamped events, ``video_dense_caption`` and ``video_temporal`` (what happens between two
times), with one ``<video>`` placeholder per clip. Questions about a clip's frames and its sound
track together (an annotation with one video and its audio, e.g. ``read_video_qa(with_audio=True)``)
become ``av_qa`` and ``av_yesno``, with a ``<video>`` and an ``<audio>`` placeholder, in the
annotation's order. Questions about several images at once (an
annotation with more than one image, e.g. NLVR2's pairs) become ``compare_statement`` (is the
statement true of the images: yes / no) or ``compare_qa``, each image numbered where it is placed
("Image 1: <image>", LLaVA-Interleave's layout). Every choice (template,
caption, distractors, grouping) comes from a generator seeded by the sample, so a rebuild is
identical whatever the order or number of workers.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from dataclasses import dataclass, field

from mmit.data.annotations import QA, Annotation
from mmit.data.samples import Conversation, MediaRef, Message
from mmit.data.templates import Template, TemplateError, choose_template, load_templates, sample_rng
from mmit.paths import RECIPES_DIR

IMAGE_TOKEN = "<image>"
AUDIO_TOKEN = "<audio>"
VIDEO_TOKEN = "<video>"
LETTERS = "ABCDEFGH"

# Every task this module words, and the fields its templates are rendered with (a template file is
# checked against these when it is read: mmit.data.templates.load_templates).
CAPTION_TASKS = (
    "caption_brief",
    "caption_detailed",
    "audio_caption",
    "audio_transcription",
    "video_caption",
    "video_dense_caption",
)
QUESTION_TASKS = (
    "vqa_short",
    "vqa_yesno",
    "audio_qa",
    "video_qa",
    "video_yesno",
    "video_order",
    "video_temporal",
    "compare_qa",
    "av_qa",
    "av_yesno",
)
TEMPLATE_FIELDS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(CAPTION_TASKS, ()),
    **dict.fromkeys(QUESTION_TASKS, ("question",)),
    "vqa_multiple_choice": ("question", "options"),
    "compare_statement": ("statement",),
}


def missing_templates(task: str, templates: dict[str, list[Template]]) -> TemplateError:
    """The error for data that needs a task the recipe's template files do not word, naming the
    shipped file that does."""
    shipped = [p.name for p in sorted((RECIPES_DIR / "templates").glob("*.yaml")) if task in load_templates(p)]
    add = (
        f"; the shipped {shipped[0]} words it: add ${{recipes_dir:}}/templates/{shipped[0]} to the recipe's "
        "templates (a list of files)"
        if shipped
        else ""
    )
    return TemplateError(
        f"the data needs templates for task {task!r}, and the recipe's template files word only "
        f"{', '.join(sorted(templates)) or 'nothing'}{add}"
    )


@dataclass
class ShapingConfig:
    seed: int = 0
    captions_per_image: int = 1  # training samples per captioned image (0 = one per caption)
    qa_per_conversation: int = 3  # QA pairs of one image chained into one training conversation
    short_answer_hint: str | None = "Answer the question using a single word or phrase."
    # LLaVA-1.5's format hint for lettered options (ScienceQA, MMBench); None: the template's wording alone
    multiple_choice_hint: str | None = None
    multiple_choice_fraction: float = 0.2  # non-yes/no questions asked as multiple choice
    num_choices: int = 4
    # A multiple-choice answer: the option's "letter" ("B"), or "option_letter": its text, then its
    # letter in brackets ("red (B)"), so that the letter is looked up from a word already written; a
    # wording that asks for the letter alone (letter_only: true) is then never drawn
    choice_answer: str = "letter"
    held_out_tasks: list[str] = field(default_factory=list)  # never in training; own eval set
    # Where templated prompts put the placeholders: "before" the instruction (LLaVA's layout) or
    # "after" it, so that under causal attention the media tokens are read knowing the question.
    media_position: str = "before"
    # False: the answer-format hints go on a conversation's first question only (fewer tokens per
    # training sample; evaluation samples are single questions and always carry them)
    hint_every_turn: bool = True

    def __post_init__(self):
        if self.media_position not in ("before", "after"):
            raise ValueError(f"shaping.media_position must be before or after, not {self.media_position!r}")
        if self.choice_answer not in ("letter", "option_letter"):
            raise ValueError(f"shaping.choice_answer must be letter or option_letter, not {self.choice_answer!r}")
        if not 2 <= self.num_choices <= len(LETTERS):  # options are lettered A to H
            raise ValueError(f"shaping.num_choices must be between 2 and {len(LETTERS)}, not {self.num_choices!r}")


def _without(answers: list[str], answer: str) -> tuple[int, int]:
    """(how many of the sorted, distinct ``answers`` are not ``answer``, the index of ``answer`` or len)."""
    i = bisect_left(answers, answer)
    found = i < len(answers) and answers[i] == answer
    return len(answers) - found, i if found else len(answers)


def distractors(answers: list[str], answer: str, k: int, rng: random.Random) -> list[str]:
    """``rng.sample`` of the sorted, distinct ``answers`` other than ``answer``: the same picks as
    sampling that list, without building it (VQAv2 has ~100k distinct answers per type)."""
    count, skip = _without(answers, answer)
    return [answers[j + (j >= skip)] for j in rng.sample(range(count), k)]


def _kind(qa: QA) -> str:
    return f"{qa.answer_type}|{qa.question_type}"


def choice_options(pool: dict[str, list[str]], qa: QA, k: int, rng: random.Random) -> list[str]:
    """``k`` wrong options for ``qa``: answers to the same question type first (colours for a
    colour question), topped up from its answer type where that type has too few."""
    same = pool.get(_kind(qa), []) if qa.question_type else []
    picked = distractors(same, qa.answer, min(k, _without(same, qa.answer)[0]), rng)
    if len(picked) < k:
        # k + len(picked) distinct draws keep at least k after dropping those already picked; a
        # type with fewer answers gives them all (qa_task asks for multiple choice only with >= k)
        draws = min(k + len(picked), _without(pool[qa.answer_type], qa.answer)[0])
        extra = distractors(pool[qa.answer_type], qa.answer, draws, rng)
        picked += [a for a in extra if a not in picked][: k - len(picked)]
    return picked


def qa_task(qa: QA, rng: random.Random, cfg: ShapingConfig, pool: dict[str, list[str]]) -> str:
    if qa.answer_type == "yes/no" or qa.answer.lower() in ("yes", "no"):
        return "vqa_yesno"
    count, _ = _without(pool.get(qa.answer_type, []), qa.answer)
    if count >= cfg.num_choices - 1 and rng.random() < cfg.multiple_choice_fraction:
        return "vqa_multiple_choice"
    return "vqa_short"


def _qa_turn(
    qa: QA,
    task: str,
    template: Template,
    rng: random.Random,
    cfg: ShapingConfig,
    pool: dict[str, list[str]],
    hint: bool = True,
) -> tuple[str, str]:
    if task == "vqa_multiple_choice":
        options = choice_options(pool, qa, cfg.num_choices - 1, rng) + [qa.answer]
        rng.shuffle(options)
        listing = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
        prompt = template.render({"question": qa.question, "options": listing})
        if cfg.multiple_choice_hint and hint:
            prompt = f"{prompt}\n{cfg.multiple_choice_hint}"
        letter = LETTERS[options.index(qa.answer)]
        return prompt, letter if cfg.choice_answer == "letter" else f"{qa.answer} ({letter})"
    prompt = template.render({"statement" if task == "compare_statement" else "question": qa.question})
    if task in ("vqa_short", "audio_qa", "video_qa", "compare_qa", "av_qa") and cfg.short_answer_hint and hint:
        prompt = f"{prompt}\n{cfg.short_answer_hint}"
    return prompt, qa.answer


def usable_templates(templates: dict[str, list[Template]], task: str, cfg: ShapingConfig) -> list[Template]:
    """The wordings of ``task`` whose instruction the answer form obeys: with option-then-letter answers
    ("red (B)"), not those that ask for the letter alone (``letter_only``)."""
    if task == "vqa_multiple_choice" and cfg.choice_answer == "option_letter":
        return [t for t in templates[task] if not t.letter_only]
    return templates[task]


def _with_media(prompt: str, media: list[MediaRef], position: str = "before") -> str:
    """One placeholder per media item (``<image>``, ``<audio>``), each on its own line, before the
    prompt (or after it)."""
    placeholders = [f"<{m.kind}>" for m in media]
    return "\n".join([*placeholders, prompt] if position == "before" else [prompt, *placeholders])


def numbered_images(prompt: str, media: list[MediaRef], position: str = "before") -> str:
    """Each image after its number on its own line ("Image 1: <image>"), before the prompt (or after
    it): LLaVA-Interleave's layout, so a question can name the images it compares."""
    numbered = [f"Image {k}: <image>" for k in range(1, len(media) + 1)]
    return "\n".join([*numbered, prompt] if position == "before" else [prompt, *numbered])


def _is_compare(ann: Annotation) -> bool:
    """Several images that one question is about."""
    return len(ann.media) > 1 and all(m.kind == "image" for m in ann.media)


def compare_task(qa: QA) -> str:
    """A question about several images: a statement to verify (NLVR2), or any other question."""
    return "compare_statement" if qa.question_type == "statement" else "compare_qa"


def _is_audio(ann: Annotation) -> bool:
    return bool(ann.media) and all(m.kind == "audio" for m in ann.media)


def _is_video(ann: Annotation) -> bool:
    return bool(ann.media) and all(m.kind == "video" for m in ann.media)


def video_qa_task(qa: QA) -> str:
    """A question about a video: yes/no, which happens first (``order``), what happens when
    (``temporal``: answered by a sentence, so no short-answer hint), or a short answer."""
    if qa.answer_type == "yes/no" or qa.answer.lower() in ("yes", "no"):
        return "video_yesno"
    return {"order": "video_order", "temporal": "video_temporal"}.get(qa.question_type, "video_qa")


def _is_audio_visual(ann: Annotation) -> bool:
    """A clip's frames and sound: video and audio items, and nothing else."""
    return {m.kind for m in ann.media} == {"audio", "video"}


def av_qa_task(qa: QA) -> str:
    """A question about a clip's frames and sound together: yes/no, or a short answer."""
    return "av_yesno" if qa.answer_type == "yes/no" or qa.answer.lower() in ("yes", "no") else "av_qa"


def _asked_as_vqa(ann: Annotation) -> bool:
    """Whether the annotation's questions take the image (or text) VQA tasks, multiple choice among
    them: not audio, video, a clip with sound, or several images."""
    return not (_is_audio(ann) or _is_audio_visual(ann) or _is_compare(ann) or _is_video(ann))


def _media_task(ann: Annotation, qa: QA, rng: random.Random, cfg: ShapingConfig, pool: dict[str, list[str]]) -> str:
    if _asked_as_vqa(ann):
        return qa_task(qa, rng, cfg, pool)
    if _is_audio(ann):
        return "audio_qa"
    if _is_audio_visual(ann):
        return av_qa_task(qa)
    return compare_task(qa) if _is_compare(ann) else video_qa_task(qa)


def shape_annotation(
    ann: Annotation,
    templates: dict[str, list[Template]],
    cfg: ShapingConfig,
    pool: dict[str, list[str]],
    split: str,
    held_out_templates: bool = False,
) -> dict[str, list[Conversation]]:
    """The conversations of one annotation, keyed by set: ``seen`` or ``heldout_tasks``.

    ``split`` is ``train`` or an evaluation split; held-out tasks never reach ``train``.
    """
    rng = sample_rng(cfg.seed, f"{split}:{held_out_templates}:{ann.id}")
    train = split == "train"
    out: dict[str, list[Conversation]] = {"seen": [], "heldout_tasks": []}
    place_media = numbered_images if _is_compare(ann) else _with_media

    def emit(turns: list[tuple[str, str, str, str]], answers: list[str], question_types: list[str] = ()) -> None:
        """turns: (task, template id, prompt, answer); question_types: per turn, where the data has them."""
        tasks = [t[0] for t in turns]
        key = "heldout_tasks" if any(t in cfg.held_out_tasks for t in tasks) else "seen"
        if train and key == "heldout_tasks":
            return
        messages = []
        for i, (_, _, prompt, answer) in enumerate(turns):
            messages += [
                Message("user", place_media(prompt, ann.media, cfg.media_position) if i == 0 else prompt),
                Message("assistant", answer),
            ]
        n = len(out["seen"]) + len(out["heldout_tasks"])
        meta = {
            "source": ann.source,
            "group": ann.group,
            "split": split,
            "tasks": tasks,
            "templates": [t[1] for t in turns],
            "answers": answers,
        }
        if any(question_types):
            meta["question_types"] = list(question_types)
        out[key].append(Conversation(f"{ann.id}-{n}", messages, meta, list(ann.media)))

    def template_for(task: str) -> Template:
        # Held-out tasks have no "seen" wordings to hold back: their training templates serve.
        wanted = held_out_templates and task not in cfg.held_out_tasks
        if task not in templates:
            raise missing_templates(task, templates)
        return choose_template(usable_templates(templates, task, cfg), rng, held_out=wanted)

    def captions(task: str) -> None:
        if train:
            count = len(ann.captions) if cfg.captions_per_image == 0 else min(cfg.captions_per_image, len(ann.captions))
            chosen = rng.sample(ann.captions, count)
        else:
            chosen = ann.captions[:1]
        for caption in chosen:
            template = template_for(task)
            emit([(task, template.id, template.render({}), caption)], ann.captions)

    def questions() -> None:
        qas = list(ann.qas)
        if train:
            rng.shuffle(qas)
        group = cfg.qa_per_conversation if train else 1
        for start in range(0, len(qas), group):
            turns, answers, question_types = [], [], []
            for qa in qas[start : start + group]:
                task = _media_task(ann, qa, rng, cfg, pool)
                if train and task in cfg.held_out_tasks:
                    continue  # keep the rest of the conversation
                template = template_for(task)
                prompt, answer = _qa_turn(qa, task, template, rng, cfg, pool, cfg.hint_every_turn or not turns)
                turns.append((task, template.id, prompt, answer))
                question_types.append(qa.question_type)
                answers = [answer] if task == "vqa_multiple_choice" else qa.answers
            if turns:
                emit(turns, answers, question_types)

    if ann.kind == "caption":
        if _is_audio(ann):
            captions("audio_caption")
        elif _is_video(ann):
            captions("video_caption")
        else:
            captions("caption_detailed" if ann.detailed else "caption_brief")
    elif ann.kind == "vqa":
        questions()
    elif ann.kind == "events":  # a video's timestamped events: its dense caption, then questions about time
        captions("video_dense_caption")
        questions()
    elif ann.kind == "transcript":
        task = "audio_transcription"
        template = template_for(task)
        emit([(task, template.id, template.render({}), ann.transcript)], [ann.transcript])
    else:  # conversation: already instructions; make sure each image and clip has a placeholder
        messages = list(ann.messages)
        missing = []
        for kind in dict.fromkeys(m.kind for m in ann.media):
            count = sum(m.kind == kind for m in ann.media) - sum(m.content.count(f"<{kind}>") for m in messages)
            missing += [m for m in ann.media if m.kind == kind][: max(0, count)]
        if missing:
            first = next(i for i, m in enumerate(messages) if m.role == "user")
            messages[first] = Message("user", _with_media(messages[first].content, missing))
        last = [m.content for m in messages if m.role == "assistant"][-1]
        out["seen"].append(
            Conversation(
                ann.id,
                messages,
                {
                    "source": ann.source,
                    "group": ann.group,
                    "split": split,
                    "tasks": ["conversation"],
                    "templates": [],
                    "answers": [last],
                },
                list(ann.media),
            )
        )
    return out


def answer_pool(annotations: list[Annotation]) -> dict[str, list[str]]:
    """Distinct answers per answer type and per answer and question type, sorted (``distractors``
    relies on it): the wrong options of multiple choice, from the questions that can be asked as one."""
    pool: dict[str, set[str]] = {}
    for ann in annotations:
        if not _asked_as_vqa(ann):
            continue
        for qa in ann.qas:
            pool.setdefault(qa.answer_type, set()).add(qa.answer)
            if qa.question_type:
                pool.setdefault(_kind(qa), set()).add(qa.answer)
    return {k: sorted(v) for k, v in pool.items()}
