"""Instruction templates: YAML data grouped by task, chosen per sample with a seed.

A template file maps task names to lists of ``{id, text, held_out}``; ``text`` is a
``str.format`` pattern over the annotation's fields. Held-out templates never reach
training data; they build the evaluation sets that test generalisation to new wordings.
"""

from __future__ import annotations

import random
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Template:
    id: str
    task: str
    text: str
    held_out: bool = False

    @property
    def fields(self) -> set[str]:
        return {name for _, name, _, _ in string.Formatter().parse(self.text) if name}

    def render(self, values: Mapping[str, Any]) -> str:
        try:
            return self.text.format_map(values)
        except KeyError:
            raise KeyError(f"template {self.id!r} needs field(s) {sorted(self.fields - set(values))}") from None


def load_templates(path: str | Path) -> dict[str, list[Template]]:
    """Read a template file; ids must be unique and every task needs a training template."""
    path = Path(path)
    raw = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of task -> list of templates")
    by_task: dict[str, list[Template]] = {}
    seen: set[str] = set()
    for task, entries in raw.items():
        templates = []
        for entry in entries:
            if entry["id"] in seen:
                raise ValueError(f"{path}: template id {entry['id']!r} is used twice")
            seen.add(entry["id"])
            templates.append(Template(entry["id"], task, entry["text"].strip(), bool(entry.get("held_out"))))
        if not any(not t.held_out for t in templates):
            raise ValueError(f"{path}: task {task!r} has no training (non-held-out) template")
        by_task[task] = templates
    return by_task


def choose_template(templates: list[Template], rng: random.Random, held_out: bool) -> Template:
    """Pick a template of the wanted pool (training or held-out) with ``rng``."""
    pool = [t for t in templates if t.held_out == held_out]
    if not pool:
        kind = "held-out" if held_out else "training"
        raise ValueError(f"task {templates[0].task!r} has no {kind} templates")
    return rng.choice(pool)


def sample_rng(seed: int, key: str) -> random.Random:
    """A generator that depends only on the seed and the sample key, not on order or workers."""
    return random.Random(f"{seed}:{key}")
