"""The offline image demo: drawn scenes of coloured shapes with exact captions and VQA answers,
written in the official COCO captions and VQAv2 layouts so the standard readers consume them.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw
from tqdm import tqdm

from mmit.paths import atomic_write_text

log = logging.getLogger(__name__)

PALETTE = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 80, 220),
    "yellow": (240, 200, 0),
    "purple": (140, 50, 180),
    "orange": (250, 130, 0),
}
BACKGROUNDS = {"white": (255, 255, 255), "light gray": (225, 225, 225)}
SHAPES = ("circle", "square", "triangle")
COLUMNS = ("left", "middle", "right")
ROWS = ("top", "bottom")
# Radii at 224 px, scaled with the image; the ranges leave a clear gap between the sizes.
RADIUS = {"small": (16, 21), "large": (28, 35)}
# Half-extents (left/right, up, down) of each shape as multiples of its radius. The triangle's
# circumradius is 1.15 r so its area is closer to the other shapes'.
EXTENTS = {"circle": (1.0, 1.0, 1.0), "square": (0.9, 0.9, 0.9), "triangle": (0.996, 1.15, 0.575)}
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
QUESTION_KINDS = ("count_all", "count_color", "color_of_shape", "shape_of_color", "exists", "position")
# Kinds a recipe may add to QUESTION_KINDS: "where" asks an object's column as a short answer;
# "exists_color" and "exists_shape" check one property ("Is there anything red?", "Is there a
# circle?"), where "exists" binds two.
EXTRA_KINDS = ("where", "exists_color", "exists_shape")
QUESTIONS_PER_IMAGE = 4
ANSWER_TYPES = ("yes/no", "number", "other")


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str  # "small" | "large"
    center: tuple[int, int]  # pixel (x, y); always inside the drawn shape
    radius: int
    column: str  # by the centre's x in thirds
    row: str  # by the centre's y in halves


@dataclass(frozen=True)
class SceneQuestion:
    kind: str
    question: str
    answer: str
    question_type: str  # VQAv2's question prefix, e.g. "how many"
    answer_type: str  # one of ANSWER_TYPES


@dataclass
class Scene:
    image_id: int
    image_size: int
    background: str
    objects: list[SceneObject]  # left to right, then top to bottom
    questions: list[SceneQuestion]


@dataclass
class DemoSources:
    """Where write_demo_scenes put its files: COCO captions and VQAv2 layouts, plus a JSONL."""

    root: Path
    images_dir: Path
    captions_file: Path
    questions_file: Path
    vqa_annotations_file: Path
    detailed_file: Path
    n_images: int
    n_questions: int


def image_file_name(image_id: int) -> str:
    """COCO's naming pattern, so readers that build paths from image ids find the files."""
    return f"COCO_demo_{image_id:012d}.png"


def _place_objects(rng: random.Random, image_size: int) -> list[SceneObject]:
    # One object per cell of a 3 x 2 grid: objects never overlap, and every position word is
    # unambiguous because each shape stays inside its cell, away from the third/half lines.
    scale = image_size / 224
    cell_w, cell_h = image_size / 3, image_size / 2
    margin = 2 * scale
    objects = []
    for cell in rng.sample(range(6), rng.randint(1, 4)):
        col, row = cell % 3, cell // 3
        shape, color, size = rng.choice(SHAPES), rng.choice(sorted(PALETTE)), rng.choice(("small", "large"))
        radius = round(rng.uniform(*RADIUS[size]) * scale)
        side, up, down = (e * radius for e in EXTENTS[shape])
        x = rng.uniform(col * cell_w + side + margin, (col + 1) * cell_w - side - margin)
        y = rng.uniform(row * cell_h + up + margin, (row + 1) * cell_h - down - margin)
        objects.append(SceneObject(shape, color, size, (round(x), round(y)), radius, COLUMNS[col], ROWS[row]))
    return sorted(objects, key=lambda o: (COLUMNS.index(o.column), ROWS.index(o.row)))


def _an(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _capitalize(text: str) -> str:
    return text[0].upper() + text[1:]


def _counted(count: int, words: str) -> str:
    return _an(words) if count == 1 else f"{NUMBER_WORDS[count]} {words}s"


def _column_phrase(column: str) -> str:
    return "in the middle" if column == "middle" else f"on the {column}"


def _full_place(obj: SceneObject) -> str:
    return f"in the {obj.row} {obj.column}"


def _short_place(obj: SceneObject, objects: list[SceneObject]) -> str:
    # Top/bottom only when another object shares the column.
    shared = sum(o.column == obj.column for o in objects) > 1
    return _full_place(obj) if shared else _column_phrase(obj.column)


def _grouped(objects: list[SceneObject], with_size: bool) -> str:
    groups = Counter(f"{o.size} {o.color} {o.shape}" if with_size else f"{o.color} {o.shape}" for o in objects)
    return _join([_counted(count, words) for words, count in groups.items()])


def scene_captions(scene: Scene) -> list[str]:
    """Three different brief, exact captions."""
    objects = scene.objects
    n = len(objects)
    listed = _join([f"{_an(f'{o.color} {o.shape}')} {_short_place(o, objects)}" for o in objects])
    lead = "A single shape" if n == 1 else f"{_capitalize(NUMBER_WORDS[n])} shapes"
    return [
        _capitalize(_grouped(objects, with_size=False)) + ".",
        f"{lead}: {listed}.",
        _capitalize(_grouped(objects, with_size=True)) + f" on a {scene.background} background.",
    ]


def detailed_caption(scene: Scene) -> str:
    """One long exact description: the count, then every object with size, colour, shape and place."""
    objects = scene.objects
    n = len(objects)
    noun = "shape" if n == 1 else "shapes"
    listed = _join([f"{_an(f'{o.size} {o.color} {o.shape}')} {_full_place(o)}" for o in objects])
    text = f"The image shows {NUMBER_WORDS[n]} {noun} on a {scene.background} background: {listed}."
    large = sum(o.size == "large" for o in objects)
    small = n - large
    if n == 2 and small * large == 0:
        text += f" Both are {'large' if small == 0 else 'small'}."
    elif n > 2 and small * large == 0:
        text += f" All {NUMBER_WORDS[n]} are {'large' if small == 0 else 'small'}."
    elif n > 1:
        verb = {1: "is"}
        text += (
            f" {_capitalize(NUMBER_WORDS[large])} {verb.get(large, 'are')} large"
            f" and {NUMBER_WORDS[small]} {verb.get(small, 'are')} small."
        )
    return text


def _unique(objects: list[SceneObject], key) -> dict:
    counts = Counter(key(o) for o in objects)
    return {key(o): o for o in objects if counts[key(o)] == 1}


def _ask(rng: random.Random, kind: str, objects: list[SceneObject]) -> SceneQuestion | None:
    """One question of this kind about the scene, or None where it cannot be asked exactly."""
    if kind == "count_all":
        return SceneQuestion(kind, "How many shapes are there?", str(len(objects)), "how many", "number")
    if kind == "count_color":
        present = sorted({o.color for o in objects})
        absent = sorted(set(PALETTE) - set(present))
        # A third of these ask about an absent colour so "0" is a real answer.
        color = rng.choice(absent if rng.random() < 1 / 3 else present)
        count = sum(o.color == color for o in objects)
        return SceneQuestion(kind, f"How many {color} objects are there?", str(count), "how many", "number")
    if kind == "color_of_shape":
        unique = _unique(objects, lambda o: o.shape)
        if not unique:
            return None
        obj = unique[rng.choice(sorted(unique))]
        return SceneQuestion(kind, f"What color is the {obj.shape}?", obj.color, "what color is the", "other")
    if kind == "shape_of_color":
        unique = _unique(objects, lambda o: o.color)
        if not unique:
            return None
        obj = unique[rng.choice(sorted(unique))]
        return SceneQuestion(kind, f"What shape is the {obj.color} object?", obj.shape, "what", "other")
    if kind == "exists":
        present = sorted({(o.color, o.shape) for o in objects})
        absent = sorted({(c, s) for c in PALETTE for s in SHAPES} - set(present))
        answer = rng.choice(("yes", "no"))
        color, shape = rng.choice(present if answer == "yes" else absent)
        return SceneQuestion(kind, f"Is there {_an(f'{color} {shape}')}?", answer, "is there a", "yes/no")
    if kind in ("exists_color", "exists_shape"):
        field, values = ("color", PALETTE) if kind == "exists_color" else ("shape", SHAPES)
        present = sorted({getattr(o, field) for o in objects})
        absent = sorted(set(values) - set(present))
        answer = rng.choice(("yes", "no"))
        if answer == "no" and not absent:
            return None
        value = rng.choice(present if answer == "yes" else absent)
        question = f"Is there anything {value}?" if field == "color" else f"Is there {_an(value)}?"
        return SceneQuestion(kind, question, answer, "is there a", "yes/no")
    if kind == "position":
        unique = _unique(objects, lambda o: (o.color, o.shape))
        if not unique:
            return None
        obj = unique[rng.choice(sorted(unique))]
        answer = rng.choice(("yes", "no"))
        column = obj.column if answer == "yes" else rng.choice([c for c in COLUMNS if c != obj.column])
        question = f"Is the {obj.color} {obj.shape} {_column_phrase(column)}?"
        return SceneQuestion(kind, question, answer, "is the", "yes/no")
    if kind == "where":
        unique = _unique(objects, lambda o: (o.color, o.shape))
        if not unique:
            return None
        obj = unique[rng.choice(sorted(unique))]
        question = f"Where is the {obj.color} {obj.shape}: on the left, in the middle or on the right?"
        return SceneQuestion(kind, question, obj.column, "where is the", "other")
    raise ValueError(f"unknown question kind {kind!r}")


def _question_kinds(kinds: Sequence[str] | None) -> tuple[str, ...]:
    if kinds is None:
        return QUESTION_KINDS
    unknown = sorted(set(kinds) - set(QUESTION_KINDS + EXTRA_KINDS))
    if unknown or not kinds:
        raise ValueError(f"question kinds {unknown or '[]'}: choose from {list(QUESTION_KINDS + EXTRA_KINDS)}")
    return tuple(dict.fromkeys(kinds))


def plan_scene(
    image_id: int,
    seed: int = 0,
    image_size: int = 224,
    questions_per_image: int = QUESTIONS_PER_IMAGE,
    kinds: Sequence[str] | None = None,
) -> Scene:
    """The scene and its questions, decided only by (seed, image_id, kinds): independent of build order.

    Questions come in rounds, each round every kind once in a fresh order, until there are
    ``questions_per_image`` distinct ones (fewer when the scene allows no more). ``kinds`` defaults
    to QUESTION_KINDS; EXTRA_KINDS may be added.
    """
    kinds = _question_kinds(kinds)
    rng = random.Random(f"{seed}:{image_id}")
    background = rng.choice(sorted(BACKGROUNDS))
    objects = _place_objects(rng, image_size)
    questions: list[SceneQuestion] = []
    for _ in range(questions_per_image):
        for kind in rng.sample(kinds, len(kinds)):
            if len(questions) == questions_per_image:
                break
            question = _ask(rng, kind, objects)
            if question is not None and all(q.question != question.question for q in questions):
                questions.append(question)
        if len(questions) == questions_per_image:
            break
    return Scene(image_id, image_size, background, objects, questions)


def render_scene(scene: Scene) -> Image.Image:
    """Flat fills without anti-aliasing, so every object pixel has exactly its palette colour."""
    image = Image.new("RGB", (scene.image_size, scene.image_size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        (x, y), r, fill = obj.center, obj.radius, PALETTE[obj.color]
        if obj.shape == "circle":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        elif obj.shape == "square":
            h = EXTENTS["square"][0] * r
            draw.rectangle((x - h, y - h, x + h, y + h), fill=fill)
        else:
            side, up, down = (e * r for e in EXTENTS["triangle"])
            draw.polygon([(x, y - up), (x + side, y + down), (x - side, y + down)], fill=fill)
    return image


def draw_scene(
    image_id: int,
    seed: int = 0,
    image_size: int = 224,
    questions_per_image: int = QUESTIONS_PER_IMAGE,
    kinds: Sequence[str] | None = None,
) -> tuple[Image.Image, Scene]:
    """The image exactly as write_demo_scenes saves it, with the scene it shows."""
    scene = plan_scene(image_id, seed, image_size, questions_per_image, kinds)
    return render_scene(scene), scene


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sources(root: Path, n_images: int, n_questions: int) -> DemoSources:
    annotations = root / "annotations"
    return DemoSources(
        root=root,
        images_dir=root / "images",
        captions_file=annotations / "captions_demo.json",
        questions_file=annotations / "v2_OpenEnded_demo_questions.json",
        vqa_annotations_file=annotations / "v2_demo_annotations.json",
        detailed_file=annotations / "detailed_demo.jsonl",
        n_images=n_images,
        n_questions=n_questions,
    )


def _existing(sources: DemoSources, info: dict) -> int | None:
    """The question count of a complete earlier build with the same settings, else None."""
    files = [sources.captions_file, sources.vqa_annotations_file, sources.detailed_file, sources.questions_file]
    images = [sources.images_dir / image_file_name(i) for i in range(1, sources.n_images + 1)]
    if not all(p.exists() for p in files + images):
        return None
    questions = json.loads(sources.questions_file.read_text())
    return len(questions["questions"]) if questions.get("info") == info else None


def write_demo_scenes(
    out_dir: str | Path,
    n_images: int = 1200,
    seed: int = 0,
    image_size: int = 224,
    questions_per_image: int = QUESTIONS_PER_IMAGE,
    kinds: Sequence[str] | None = None,
) -> DemoSources:
    """Draw the scenes and write images and annotation files once; return where they are."""
    kinds = _question_kinds(kinds)
    if image_size < 64:
        raise ValueError(f"image_size {image_size} is too small to draw distinguishable shapes (need >= 64)")
    root = Path(out_dir)
    info = {
        "description": "mmit demo scenes: drawn coloured shapes with exact captions and answers",
        "version": "1.0",
        "contributor": "mmit",
        "seed": seed,
        "n_images": n_images,
        "image_size": image_size,
        "questions_per_image": questions_per_image,
        # Written only when it differs from the default, so earlier builds stay valid.
        **({"question_kinds": list(kinds)} if kinds != QUESTION_KINDS else {}),
    }
    sources = _sources(root, n_images, 0)
    n_existing = _existing(sources, info)
    if n_existing is not None:
        return _sources(root, n_images, n_existing)
    # Drop the finished-build mark first, so a run killed part-way is never taken as done.
    sources.questions_file.unlink(missing_ok=True)
    sources.images_dir.mkdir(parents=True, exist_ok=True)
    sources.captions_file.parent.mkdir(parents=True, exist_ok=True)

    images, captions, questions, answers, detailed = [], [], [], [], []
    for image_id in tqdm(range(1, n_images + 1), desc="drawing demo scenes", unit="image"):
        image, scene = draw_scene(image_id, seed, image_size, questions_per_image, kinds)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        _atomic_write_bytes(sources.images_dir / image_file_name(image_id), buffer.getvalue())
        images.append(
            {"id": image_id, "file_name": image_file_name(image_id), "width": image_size, "height": image_size}
        )
        for k, caption in enumerate(scene_captions(scene)):
            captions.append({"id": image_id * 10 + k, "image_id": image_id, "caption": caption})
        for k, q in enumerate(scene.questions):
            question_id = image_id * 1000 + k
            questions.append({"image_id": image_id, "question": q.question, "question_id": question_id})
            answers.append(
                {
                    "question_id": question_id,
                    "image_id": image_id,
                    "question_type": q.question_type,
                    "answer_type": q.answer_type,
                    "multiple_choice_answer": q.answer,
                    # VQAv2 stores ten human answers; the truth here is exact, so all ten agree.
                    "answers": [{"answer": q.answer, "answer_confidence": "yes", "answer_id": i} for i in range(1, 11)],
                }
            )
        detailed.append(json.dumps({"image_id": image_id, "caption": detailed_caption(scene)}))

    # The questions file is written last: _existing reads it as the mark of a finished build.
    atomic_write_text(sources.detailed_file, "\n".join(detailed) + "\n")
    atomic_write_text(
        sources.captions_file, json.dumps({"info": info, "licenses": [], "images": images, "annotations": captions})
    )
    vqa_header = {"info": info, "data_type": "demo", "data_subtype": "demo"}
    atomic_write_text(sources.vqa_annotations_file, json.dumps({**vqa_header, "annotations": answers}))
    atomic_write_text(
        sources.questions_file, json.dumps({**vqa_header, "task_type": "Open-Ended", "questions": questions})
    )
    log.info(
        "wrote %d images, %d captions, %d questions and %d detailed captions to %s",
        n_images,
        len(captions),
        len(questions),
        len(detailed),
        root,
    )
    return _sources(root, n_images, len(questions))
