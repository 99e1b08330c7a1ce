"""Instruction templates: YAML data grouped by task, chosen per sample with a seed.

A template file maps task names to lists of ``{id, text, held_out}``; ``text`` is a
``str.format`` pattern over the fields its task supplies (``{question}``, ``{options}``, ...).
A multiple-choice wording that asks for the letter alone says so (``letter_only: true``): where
``shaping.choice_answer`` writes the option's text before its letter, it is not drawn.
Held-out templates never reach training data; they build the evaluation sets that test
generalisation to new wordings. A file is checked whole when it is read: a mistake stops there,
naming the file, line and template, not a build halfway through.
"""

from __future__ import annotations

import random
import string
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mmit.cli import did_you_mean

ENTRY_KEYS = ("id", "text", "held_out", "letter_only")


class TemplateError(ValueError):
    """A template file cannot be used; the message names the file, line and template."""


@dataclass(frozen=True)
class Template:
    id: str
    task: str
    text: str
    held_out: bool = False
    letter_only: bool = False  # a multiple-choice wording that asks for the option's letter alone

    @property
    def fields(self) -> set[str]:
        return {name for _, name, _, _ in string.Formatter().parse(self.text) if name}

    def render(self, values: Mapping[str, Any]) -> str:
        try:
            return self.text.format_map(values)
        except KeyError:
            raise KeyError(f"template {self.id!r} needs field(s) {sorted(self.fields - set(values))}") from None


def _scalar(node: yaml.Node) -> Any:
    """The value a YAML node stands for, as ``yaml.safe_load`` builds it."""
    return yaml.SafeLoader("").construct_object(node, deep=True)


def _pairs(node: yaml.MappingNode, where: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """A mapping node's entries by key; a key given twice is refused (YAML readers keep the last)."""
    pairs: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key, value in node.value:
        name = _scalar(key)
        if not isinstance(name, str):
            raise TemplateError(f"{where}, line {key.start_mark.line + 1}: key {name!r} is not a name")
        if name in pairs:
            first = pairs[name][0].start_mark.line + 1
            raise TemplateError(f"{where}, line {key.start_mark.line + 1}: {name!r} appears twice (also line {first})")
        pairs[name] = (key, value)
    return pairs


def _format_fields(text: str, where: str) -> None:
    """``text`` must be a format pattern whose fields are plain ``{name}``s: no positional ``{}``,
    no attribute or index access (``{question.__class__}`` would read the object behind a field)."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as err:
        raise TemplateError(f"{where}: {err} (write a literal brace as {{{{ or }}}})") from None
    for _, name, spec, conversion in parsed:
        if name is not None and (not name.isidentifier() or spec or conversion):
            field = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise TemplateError(
                f"{where}: field {field} is not a plain {{name}} (write a literal brace as {{{{ or }}}})"
            )


def _entry(node: yaml.Node, task: str, where: str) -> Template:
    if not isinstance(node, yaml.MappingNode):
        raise TemplateError(f"{where}: a template is a mapping {{id: ..., text: ...}}, not {_scalar(node)!r:.60}")
    pairs = _pairs(node, where)
    for name in pairs:
        if name not in ENTRY_KEYS:
            raise TemplateError(
                f"{where}: unknown key {name!r}{did_you_mean(name, ENTRY_KEYS)}; a template has {', '.join(ENTRY_KEYS)}"
            )
    values = {name: _scalar(value) for name, (_, value) in pairs.items()}
    for name in ("id", "text"):
        if not (isinstance(values.get(name), str) and values[name].strip()):
            got = "missing" if name not in values else f"{values[name]!r:.60}"
            raise TemplateError(f"{where}: {name} must be a non-empty text (quote it), not {got}")
    flags = {name: values.get(name, False) for name in ("held_out", "letter_only")}
    for name, flag in flags.items():
        if not isinstance(flag, bool):
            raise TemplateError(f"{where}: {name} must be true or false, not {flag!r:.60}")
    _format_fields(values["text"], f"{where} ({values['id']!r})")
    template = Template(values["id"], task, values["text"].strip(), **flags)
    if template.letter_only and "options" not in template.fields:
        raise TemplateError(f"{where} ({values['id']!r}): letter_only is for a wording that lists {{options}}")
    return template


def load_templates(
    path: str | Path, fields: Mapping[str, Collection[str]] | None = None, held_out: Collection[str] = ()
) -> dict[str, list[Template]]:
    """Read and check a template file: every task has a training template, ids are unique.

    ``fields``: the tasks a build words and the fields each supplies. Given, a task it does not name
    is refused (a misspelt task would never be used), and each template must show exactly its task's
    fields (a question template without ``{question}`` asks the same thing every time).
    ``held_out``: the tasks whose evaluation set of unseen wordings will be built: each of them the
    file words needs a held-out template.
    """
    path = Path(path)
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except FileNotFoundError:
        raise TemplateError(f"{path}: no such template file") from None
    except UnicodeDecodeError:
        raise TemplateError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as err:
        raise TemplateError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(root, yaml.MappingNode):
        raise TemplateError(f"{path}: expected a mapping of task -> list of templates")
    by_task: dict[str, list[Template]] = {}
    ids: dict[str, str] = {}
    for task, (key, node) in _pairs(root, str(path)).items():
        at = f"{path}, line {key.start_mark.line + 1}"
        if fields is not None and task not in fields:
            raise TemplateError(
                f"{at}: unknown task {task!r}{did_you_mean(task, fields)}; tasks: {', '.join(sorted(fields))}"
            )
        if not (isinstance(node, yaml.SequenceNode) and node.value):
            raise TemplateError(f"{at}: task {task!r} needs a list of templates")
        templates = []
        for i, entry in enumerate(node.value, 1):
            where = f"{path}, line {entry.start_mark.line + 1}: {task} template {i}"
            template = _entry(entry, task, where)
            if template.id in ids:
                raise TemplateError(f"{where}: id {template.id!r} is used twice (also {ids[template.id]})")
            ids[template.id] = f"line {entry.start_mark.line + 1}"
            if fields is not None and template.fields != set(fields[task]):
                wanted = ", ".join(f"{{{f}}}" for f in sorted(fields[task])) or "no fields"
                raise TemplateError(
                    f"{where} ({template.id!r}): shows {sorted(template.fields) or 'no fields'}; "
                    f"a {task} template shows exactly {wanted}"
                )
            templates.append(template)
        if not any(not t.held_out for t in templates):
            raise TemplateError(f"{at}: task {task!r} has no training template (held_out: false)")
        if task in held_out and all(not t.held_out for t in templates):
            raise TemplateError(
                f"{at}: task {task!r} has no held-out template (held_out: true) to word its evaluation set"
            )
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
