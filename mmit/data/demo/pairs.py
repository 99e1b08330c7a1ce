"""The offline multi-image demo: pairs (and some triples) of drawn shape scenes whose questions need
every image, with exact ground truth, written in the layouts of real multi-image data.

Each item tells one story in the scenes of ``mmit.data.demo.scenes`` (drawn by its
``render_scene``): the second image is the first with one change (a shape changes colour, is added,
is removed or moves: ``change``), two unrelated scenes (``different``), or three images of which
one differs from the other two (``odd_one_out``). The questions: which image has more shapes
(never equal), what changed (a sentence), which image holds the <colour> <shape>, which image is
the odd one out, and statements "Both images contain a <colour> shape." (one true and one false
per pair). Answers are dealt from balanced decks. Questions are written as LLaVA-Interleave
conversations, text and images interleaved in one message (``read_llava``), worded with the
training wordings of ``compare_qa`` in ``data_recipes/templates/vision_compare.yaml``; statements as
NLVR2 records (``read_nlvr2``), which the build words with the ``compare_statement`` templates,
held-out wordings included. ``pairs.json`` holds every image's objects (the ground truth).
``HELDOUT_COMBOS`` (the video demo's colour and shape pairs) appear only in the held-out items.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from mmit.data.demo.motion import COLOURS, capitalised, combos, deck, with_article
from mmit.data.demo.scenes import (
    BACKGROUNDS,
    COLUMNS,
    EXTENTS,
    RADIUS,
    ROWS,
    Scene,
    SceneObject,
    render_scene,
)
from mmit.data.templates import Template, load_templates
from mmit.paths import RECIPES_DIR, atomic_write_text

log = logging.getLogger(__name__)

SPLITS = ("seen", "heldout_combos")
STORY_SHARES = ("change", "different", "change", "different", "odd_one_out")  # a fifth are triples
CHANGES = ("colour", "added", "removed", "moved")
ORDINALS = ("first", "second", "third")
QUESTION_KINDS = ("more_shapes", "what_changed", "which_image", "odd_one_out")
STATEMENT_KIND = "both_contain"
TEMPLATES_FILE = RECIPES_DIR / "templates" / "vision_compare.yaml"
QUESTION_TASK = "compare_qa"  # the templates that word the conversations' questions
MAX_TRIES = 1000  # draws of an item's scenes until they fit its answers (a few suffice)


@dataclass(frozen=True)
class Change:
    """One shape's change from one image to the next: ``before`` / ``after`` (None: not there)."""

    kind: str  # one of CHANGES
    before: SceneObject | None
    after: SceneObject | None
    sentence: str


@dataclass(frozen=True)
class PairQuestion:
    kind: str  # one of QUESTION_KINDS
    question: str
    answer: str


@dataclass(frozen=True)
class Statement:
    """An NLVR2 statement about both images of a pair."""

    sentence: str
    colour: str
    label: bool


@dataclass(frozen=True)
class PairItem:
    name: str  # image files are <name>-img<k>.png
    story: str  # change | different | odd_one_out
    backgrounds: tuple[str, ...]
    scenes: tuple[tuple[SceneObject, ...], ...]  # each image's objects, left to right, then top to bottom
    change: Change | None  # change: image 1 -> 2; odd_one_out: the others -> the odd image
    odd: int | None  # odd_one_out: the index of the image that differs
    questions: tuple[PairQuestion, ...]
    statements: tuple[Statement, ...]

    def image_names(self) -> list[str]:
        return [image_name(self.name, k) for k in range(len(self.scenes))]


@dataclass
class DemoPairSources:
    """Where write_demo_pairs put its files; ``annotations(split)`` is the folder of one split."""

    root: Path
    images_dir: Path
    n_items: dict[str, int]
    n_images: dict[str, int]
    n_questions: dict[str, int]  # conversations (one question each) per split
    n_statements: dict[str, int]
    answers: dict[str, dict[str, dict[str, int]]]  # per split and kind: how often each answer is right

    def annotations(self, split: str) -> Path:
        return self.root / "annotations" / split


def image_name(item: str, k: int) -> str:
    """NLVR2's naming: the pair's name, then img0, img1 (and img2 for a triple)."""
    return f"{item}-img{k}.png"


def _place(obj: SceneObject) -> str:
    return f"the {obj.row} {obj.column}"


def _cell(obj: SceneObject) -> int:
    return COLUMNS.index(obj.column) + 3 * ROWS.index(obj.row)


def _object(rng: random.Random, cell: int, colour: str, shape: str, image_size: int, size: str = "") -> SceneObject:
    """A shape inside one cell of the scenes' 3 x 2 grid, kept off the lines between cells as
    ``scenes`` keeps it, so shapes never overlap and position words stay exact."""
    scale = image_size / 224
    cell_w, cell_h, margin = image_size / 3, image_size / 2, 2 * scale
    col, row = cell % 3, cell // 3
    size = size or rng.choice(("small", "large"))
    radius = round(rng.uniform(*RADIUS[size]) * scale)
    side, up, down = (e * radius for e in EXTENTS[shape])
    x = rng.uniform(col * cell_w + side + margin, (col + 1) * cell_w - side - margin)
    y = rng.uniform(row * cell_h + up + margin, (row + 1) * cell_h - down - margin)
    return SceneObject(shape, colour, size, (round(x), round(y)), radius, COLUMNS[col], ROWS[row])


def _sorted(objects) -> tuple[SceneObject, ...]:
    return tuple(sorted(objects, key=lambda o: (COLUMNS.index(o.column), ROWS.index(o.row))))


def _fill(
    rng: random.Random, objects: list[SceneObject], n: int, others: list[tuple[str, str]], image_size: int
) -> list[SceneObject]:
    """``objects`` topped up to ``n`` with shapes of ``others`` in free cells."""
    free = [c for c in range(6) if c not in {_cell(o) for o in objects}]
    added = [_object(rng, cell, *rng.choice(others), image_size) for cell in rng.sample(free, n - len(objects))]
    return [*objects, *added]


def _changed(
    rng: random.Random, kind: str, main: list[tuple[str, str]], others: list[tuple[str, str]], image_size: int
) -> tuple[list[SceneObject], list[SceneObject], Change]:
    """A scene, the same scene with one change to a shape of ``main``, and the change. The changed
    shape (before and after) is the only one of its colour and kind in both scenes."""
    colour, shape = rng.choice(main)
    new_colour = rng.choice([c for c, s in others if s == shape and c != colour]) if kind == "colour" else colour
    rest = [(c, s) for c, s in others if s != shape or c not in (colour, new_colour)]
    low, high = {"added": (1, 3), "removed": (2, 4)}.get(kind, (1, 4))  # shapes before the change
    n = rng.randint(low, high)
    subject = _object(rng, rng.randrange(6), colour, shape, image_size)
    if kind == "added":
        before = _fill(rng, [subject], n + 1, rest, image_size)[1:]  # the subject's cell stays free
        after = [*before, subject]
        sentence = f"{capitalised(with_article(f'{colour} {shape}'))} was added in {_place(subject)}."
        return before, after, Change(kind, None, subject, sentence)
    before = _fill(rng, [subject], n, rest, image_size)
    if kind == "removed":
        after = [o for o in before if o is not subject]
        return before, after, Change(kind, subject, None, f"The {colour} {shape} was removed from {_place(subject)}.")
    if kind == "colour":
        now = SceneObject(shape, new_colour, subject.size, subject.center, subject.radius, subject.column, subject.row)
        sentence = f"The {colour} {shape} turned {new_colour}."
    else:
        free = [c for c in range(6) if c not in {_cell(o) for o in before}]
        now = _object(rng, rng.choice(free), colour, shape, image_size, subject.size)
        sentence = f"The {colour} {shape} moved from {_place(subject)} to {_place(now)}."
    after = [now if o is subject else o for o in before]
    return before, after, Change(kind, subject, now, sentence)


def _statements(rng: random.Random, first, second) -> tuple[Statement, ...]:
    """One true and one false "Both images contain a <colour> shape.", in a random order; none where
    no colour is in both. The false one names a colour in one image only where there is one."""
    in_both = sorted({o.color for o in first} & {o.color for o in second})
    in_one = sorted({o.color for o in first} ^ {o.color for o in second})
    in_none = sorted(set(COLOURS) - {o.color for o in (*first, *second)})
    if not in_both:
        return ()
    true, false = rng.choice(in_both), rng.choice(in_one or in_none)
    made = [Statement(f"Both images contain {with_article(c)} shape.", c, c == true) for c in (true, false)]
    rng.shuffle(made)
    return tuple(made)


def _which(obj: SceneObject, k: int) -> PairQuestion:
    return PairQuestion("which_image", f"Which image contains the {obj.color} {obj.shape}?", f"The {ORDINALS[k]}")


def _more(k: int) -> PairQuestion:
    return PairQuestion("more_shapes", "Which image has more shapes?", f"The {ORDINALS[k]}")


def change_item(
    name: str,
    rng: random.Random,
    main: list[tuple[str, str]],
    others: list[tuple[str, str]],
    kind: str,
    ask_before: bool,
    image_size: int,
) -> PairItem:
    """Two images of one scene, the second with one change; where the change tells, which image has
    more shapes and which holds the changed shape (``ask_before``: the colour it had before)."""
    before, after, change = _changed(rng, kind, main, others, image_size)
    questions = [PairQuestion("what_changed", "What changed between the two images?", change.sentence)]
    if kind == "added":
        questions += [_more(1), _which(change.after, 1)]
    elif kind == "removed":
        questions += [_more(0), _which(change.before, 0)]
    elif kind == "colour":
        questions.append(_which(change.before, 0) if ask_before else _which(change.after, 1))
    background = rng.choice(sorted(BACKGROUNDS))
    scenes = (_sorted(before), _sorted(after))
    return PairItem(
        name, "change", (background,) * 2, scenes, change, None, tuple(questions), _statements(rng, before, after)
    )


def different_item(
    name: str,
    rng: random.Random,
    main: list[tuple[str, str]],
    others: list[tuple[str, str]],
    more: int,
    holder: int,
    image_size: int,
) -> PairItem:
    """Two unrelated scenes with different numbers of shapes (image ``more`` has more), the shape
    asked about (of ``main``) once in image ``holder`` and not in the other."""
    counts = [(a, b) for a in range(1, 5) for b in range(1, 5) if (a > b) == (more == 0) and a != b]
    for _ in range(MAX_TRIES):
        colour, shape = rng.choice(main)
        rest = [(c, s) for c, s in others if (c, s) != (colour, shape)]
        sizes = rng.choice(counts)
        subject = _object(rng, rng.randrange(6), colour, shape, image_size)
        scenes = [_fill(rng, [subject] if k == holder else [], sizes[k], rest, image_size) for k in (0, 1)]
        statements = _statements(rng, *scenes)
        if statements:
            break
    else:
        raise RuntimeError(f"{name}: no scenes fit the answers in {MAX_TRIES} draws")
    backgrounds = tuple(rng.choice(sorted(BACKGROUNDS)) for _ in scenes)
    questions = (_more(more), _which(subject, holder))
    return PairItem(
        name, "different", backgrounds, tuple(_sorted(s) for s in scenes), None, None, questions, statements
    )


def odd_item(
    name: str,
    rng: random.Random,
    main: list[tuple[str, str]],
    others: list[tuple[str, str]],
    kind: str,
    odd: int,
    image_size: int,
) -> PairItem:
    """Three images: the same scene twice and, at ``odd``, the scene with one change."""
    same, changed, change = _changed(rng, kind, main, others, image_size)
    scenes = tuple(_sorted(changed if k == odd else same) for k in range(3))
    question = PairQuestion("odd_one_out", "Which image is different from the other two?", f"The {ORDINALS[odd]}")
    background = rng.choice(sorted(BACKGROUNDS))
    return PairItem(name, "odd_one_out", (background,) * 3, scenes, change, odd, (question,), ())


def plan_items(split: str, n: int, seed: int, image_size: int = 224) -> list[PairItem]:
    """The items of one split: stories, changes and answers dealt from balanced decks."""
    if image_size < 64:
        raise ValueError(f"image_size {image_size} is too small to draw distinguishable shapes (need >= 64)")
    main, others = combos(split)
    deal = random.Random(f"{seed}:{split}:decks")
    stories = deck(STORY_SHARES, n, deal)
    counts = Counter(stories)
    changes = deck(CHANGES, counts["change"], deal)
    ask_before = iter(deck([True, False], changes.count("colour"), deal))
    more = iter(deck([0, 1], counts["different"], deal))
    holders = iter(deck([0, 1], counts["different"], deal))
    odd_changes = iter(deck(CHANGES, counts["odd_one_out"], deal))
    odd = iter(deck([0, 1, 2], counts["odd_one_out"], deal))
    kinds = iter(changes)
    items = []
    for i, story in enumerate(stories, start=1):
        name, rng = f"{split}_{i:05d}", random.Random(f"{seed}:{split}:{i}")
        if story == "change":
            kind = next(kinds)
            before = next(ask_before) if kind == "colour" else False
            items.append(change_item(name, rng, main, others, kind, before, image_size))
        elif story == "different":
            items.append(different_item(name, rng, main, others, next(more), next(holders), image_size))
        else:
            items.append(odd_item(name, rng, main, others, next(odd_changes), next(odd), image_size))
    return items


def render_item(item: PairItem, image_size: int) -> list:
    """The item's images (PIL), drawn exactly as ``scenes`` draws its scenes."""
    return [
        render_scene(Scene(0, image_size, background, list(objects), []))
        for background, objects in zip(item.backgrounds, item.scenes)
    ]


def answer_counts(items: list[PairItem]) -> dict[str, dict[str, int]]:
    """How often each answer is the right one, per question kind; ``what_changed`` by the kind of
    change, ``both_contain`` (the statements) by label as yes / no."""
    counts: dict[str, Counter] = {}
    for item in items:
        for q in item.questions:
            answer = item.change.kind if q.kind == "what_changed" else q.answer
            counts.setdefault(q.kind, Counter())[answer] += 1
        for s in item.statements:
            counts.setdefault(STATEMENT_KIND, Counter())["yes" if s.label else "no"] += 1
    return {kind: dict(sorted(counts[kind].items())) for kind in [*QUESTION_KINDS, STATEMENT_KIND] if kind in counts}


def question_wordings(path: str | Path = TEMPLATES_FILE) -> list[Template]:
    """The training wordings the conversations' questions are written with (never a held-out one)."""
    return [t for t in load_templates(path)[QUESTION_TASK] if not t.held_out]


def interleaved(n_images: int, prompt: str) -> str:
    """LLaVA-Interleave's layout: each image after its number, on its own line, then the prompt."""
    return "\n".join([*(f"Image {k + 1}: <image>" for k in range(n_images)), prompt])


def _annotation_files(items: list[PairItem], seed: int, wordings: list[Template]) -> dict[str, str]:
    """The split's annotation files, by name: LLaVA-Interleave conversations (one question each),
    NLVR2 statements (JSON lines, as NLVR2 ships them) and the ground truth."""
    conversations, statements, truth = [], [], []
    for item in items:
        names = item.image_names()
        for q in item.questions:
            record_id = f"{item.name}-{q.kind}"
            wording = random.Random(f"{seed}:{record_id}:wording").choice(wordings)
            prompt = interleaved(len(names), wording.render({"question": q.question}))
            conversations.append(
                {
                    "id": record_id,
                    "image": names,
                    "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": q.answer}],
                }
            )
        for k, s in enumerate(item.statements):
            record = {"identifier": f"{item.name}-{k}", "left": names[0], "right": names[1], "sentence": s.sentence}
            statements.append(json.dumps({**record, "label": str(s.label)}))
        truth.append(
            {
                "id": item.name,
                "story": item.story,
                "images": names,
                "backgrounds": list(item.backgrounds),
                "objects": [[asdict(o) for o in scene] for scene in item.scenes],
                "change": asdict(item.change) if item.change else None,
                "odd": item.odd,
                "questions": [asdict(q) for q in item.questions],
                "statements": [asdict(s) for s in item.statements],
            }
        )
    return {
        "llava_interleave.json": json.dumps(conversations),
        "nlvr2.json": "".join(line + "\n" for line in statements),
        "pairs.json": json.dumps(truth),
    }


def write_demo_pairs(
    out_dir: str | Path, n_pairs: int = 1200, n_heldout_pairs: int = 150, seed: int = 0, image_size: int = 224
) -> DemoPairSources:
    """Draw the items' images and write their annotation files once; return where they are.
    ``n_pairs`` counts items, a fifth of them triples."""
    root = Path(out_dir)
    wordings = question_wordings()
    info = {
        "seed": seed,
        "n_pairs": n_pairs,
        "n_heldout_pairs": n_heldout_pairs,
        "image_size": image_size,
        "version": "1.0",
        # the conversations carry their wording: other wordings make other files
        "wordings": hashlib.sha256(json.dumps([(t.id, t.text) for t in wordings]).encode()).hexdigest(),
    }
    counts = {"seen": n_pairs, "heldout_combos": n_heldout_pairs}
    plans = {split: plan_items(split, counts[split], seed, image_size) for split in SPLITS}
    sources = DemoPairSources(
        root,
        root / "images",
        counts,
        {split: sum(len(item.scenes) for item in plans[split]) for split in SPLITS},
        {split: sum(len(item.questions) for item in plans[split]) for split in SPLITS},
        {split: sum(len(item.statements) for item in plans[split]) for split in SPLITS},
        {split: answer_counts(plans[split]) for split in SPLITS},
    )
    done = root / "info.json"
    if done.exists() and json.loads(done.read_text()) == info:
        return sources
    done.unlink(missing_ok=True)  # a run killed part-way is never taken as finished
    sources.images_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        for item in plans[split]:
            for name, image in zip(item.image_names(), render_item(item, image_size)):
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                (sources.images_dir / name).write_bytes(buffer.getvalue())
        folder = sources.annotations(split)
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in _annotation_files(plans[split], seed, wordings).items():
            atomic_write_text(folder / name, text)
    atomic_write_text(done, json.dumps(info))
    log.info(
        "wrote %d + %d held-out-combination items (%d + %d images of %d px) with %d + %d questions and %d + %d "
        "statements to %s",
        n_pairs,
        n_heldout_pairs,
        sources.n_images["seen"],
        sources.n_images["heldout_combos"],
        image_size,
        sources.n_questions["seen"],
        sources.n_questions["heldout_combos"],
        sources.n_statements["seen"],
        sources.n_statements["heldout_combos"],
        root,
    )
    for kind, count in sources.answers["seen"].items():
        log.info("  %-13s %s", kind, ", ".join(f"{a} {n}" for a, n in count.items()))
    return sources
