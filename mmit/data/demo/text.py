"""The offline text-only demo: drawn tasks with exact answers, rendered through templates.

Each task draws an annotation (fields + answer); the annotation's identity decides its
split, so no annotation is in both training and evaluation. Training conversations use
training templates and are sometimes multi-turn; the evaluation sets are single-turn, one
with training ("seen") templates and one with held-out templates.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable
from pathlib import Path

from mmit.data.samples import Conversation, Message, is_number, is_whole_number
from mmit.data.sources import DataFiles
from mmit.data.templates import Template, choose_template, load_templates, sample_rng
from mmit.paths import RECIPES_DIR, atomic_write_text, cache_dir

log = logging.getLogger(__name__)

WORDS = (
    "apple river green stone quick silver cloud morning garden window yellow music bright "
    "table forest simple paper orange little happy winter summer ocean mountain candle "
    "purple gentle market bridge yesterday coffee planet rabbit violin golden basket "
    "shadow island pencil thunder letter kitchen sunny quiet friendly travel doctor"
).split()
CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Japan": "Tokyo",
    "China": "Beijing",
    "Canada": "Ottawa",
    "Australia": "Canberra",
    "Brazil": "Brasilia",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "India": "New Delhi",
    "Russia": "Moscow",
    "Mexico": "Mexico City",
    "Argentina": "Buenos Aires",
    "Portugal": "Lisbon",
    "Greece": "Athens",
    "Sweden": "Stockholm",
    "Norway": "Oslo",
    "Finland": "Helsinki",
    "Poland": "Warsaw",
    "Austria": "Vienna",
    "Ireland": "Dublin",
    "Peru": "Lima",
    "Chile": "Santiago",
    "Turkey": "Ankara",
    "Thailand": "Bangkok",
    "Vietnam": "Hanoi",
    "Nigeria": "Abuja",
    "Morocco": "Rabat",
    "Cuba": "Havana",
    "Hungary": "Budapest",
    "Denmark": "Copenhagen",
    "Belgium": "Brussels",
    "Netherlands": "Amsterdam",
    "Switzerland": "Bern",
    "South Korea": "Seoul",
    "Indonesia": "Jakarta",
    "Colombia": "Bogota",
    "Iran": "Tehran",
}
SYSTEM_PROMPTS = ("You are a helpful assistant.", "Answer briefly and exactly.")


def _phrase(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 7)))


def _addition(rng):
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return {"a": a, "b": b}, str(a + b)


def _uppercase(rng):
    phrase = _phrase(rng)
    return {"phrase": phrase}, phrase.upper()


def _word_count(rng):
    phrase = _phrase(rng)
    return {"phrase": phrase}, str(len(phrase.split()))


def _sort_numbers(rng):
    numbers = rng.sample(range(100), rng.randint(3, 5))
    return {"numbers": ", ".join(map(str, numbers))}, ", ".join(map(str, sorted(numbers)))


def _parity(rng):
    n = rng.randint(0, 999)
    return {"n": n}, "even" if n % 2 == 0 else "odd"


def _capital(rng):
    country = rng.choice(sorted(CAPITALS))
    return {"country": country}, CAPITALS[country]


def _last_word(rng):
    phrase = _phrase(rng)
    return {"phrase": phrase}, phrase.split()[-1]


TASKS: dict[str, Callable[[random.Random], tuple[dict, str]]] = {
    "addition": _addition,
    "uppercase": _uppercase,
    "word_count": _word_count,
    "sort_numbers": _sort_numbers,
    "parity": _parity,
    "capital": _capital,
    "last_word": _last_word,
}


# The fields each task's templates are rendered with: the names its annotations draw.
TASK_FIELDS = {task: tuple(draw(random.Random(0))[0]) for task, draw in TASKS.items()}


def annotation_split(task: str, fields: dict, eval_fraction: float) -> str:
    """Train or eval, by a hash of the annotation itself (stable across runs and seeds)."""
    key = f"{task}:{json.dumps(fields, sort_keys=True)}".encode()
    bucket = int.from_bytes(hashlib.sha256(key).digest()[:4], "big") / 2**32
    return "eval" if bucket < eval_fraction else "train"


def _draw(rng: random.Random, task: str, split: str, eval_fraction: float) -> tuple[dict, str]:
    # Capitals have few annotations; they are shared across splits on purpose (world
    # knowledge is what is asked for), every other task keeps its splits disjoint.
    for _ in range(1000):
        fields, answer = TASKS[task](rng)
        if task == "capital" or annotation_split(task, fields, eval_fraction) == split:
            return fields, answer
    raise RuntimeError(f"could not draw a {split} annotation for task {task!r}")


def build_conversation(
    sample_id: str,
    seed: int,
    templates: dict[str, list[Template]],
    split: str,
    held_out: bool,
    max_turns: int,
    eval_fraction: float,
) -> Conversation:
    rng = sample_rng(seed, sample_id)
    turns = rng.randint(1, max_turns)
    messages, tasks, template_ids = [], [], []
    if rng.random() < 0.3:
        messages.append(Message("system", rng.choice(SYSTEM_PROMPTS)))
    for _ in range(turns):
        task = rng.choice(sorted(templates))
        template = choose_template(templates[task], rng, held_out)
        fields, answer = _draw(rng, task, split, eval_fraction)
        messages += [Message("user", template.render(fields)), Message("assistant", answer)]
        tasks.append(task)
        template_ids.append(template.id)
    return Conversation(
        sample_id, messages, {"tasks": tasks, "templates": template_ids, "answer": messages[-1].content}
    )


def prepare_text_skills(
    n_train: int = 4000,
    n_eval: int = 200,
    seed: int = 0,
    max_turns: int = 3,
    eval_fraction: float = 0.2,
    templates: str | None = None,
    out_dir: str | None = None,
) -> DataFiles:
    """Write train / eval_seen / eval_heldout JSONL files once into the cache; return them."""
    for name, value in (("n_train", n_train), ("n_eval", n_eval), ("max_turns", max_turns)):
        if not is_whole_number(value, 1):
            raise ValueError(f"data.source.{name}={value!r}: must be a whole number >= 1")
    if not (is_number(eval_fraction) and 0 < eval_fraction < 1):  # both splits draw annotations of their own
        raise ValueError(f"data.source.eval_fraction={eval_fraction!r}: must be between 0 and 1")
    template_path = Path(templates) if templates else RECIPES_DIR / "templates" / "text_skills.yaml"
    by_task = load_templates(template_path, TASK_FIELDS, held_out=TASK_FIELDS)  # eval_heldout uses them
    spec = {
        "n_train": n_train,
        "n_eval": n_eval,
        "seed": seed,
        "max_turns": max_turns,
        "eval_fraction": eval_fraction,
        "templates": template_path.read_text(),
    }
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(out_dir) if out_dir else cache_dir("data", f"text_skills-{key}")
    sets = {  # name: (split, held-out templates, count, turns)
        "train": ("train", False, n_train, max_turns),
        "eval_seen": ("eval", False, n_eval, 1),
        "eval_heldout": ("eval", True, n_eval, 1),
    }
    paths = {name: root / f"{name}.jsonl" for name in sets}
    for name, (split, held_out, count, turns) in sets.items():
        if paths[name].exists():
            continue
        lines = [
            json.dumps(
                build_conversation(f"{name}-{i:06d}", seed, by_task, split, held_out, turns, eval_fraction).to_json()
            )
            for i in range(count)
        ]
        atomic_write_text(paths[name], "\n".join(lines) + "\n")
        log.info("wrote %d conversations to %s", count, paths[name])
    return DataFiles(
        train=[str(paths["train"])], eval={"seen": [str(paths["eval_seen"])], "heldout": [str(paths["eval_heldout"])]}
    )
