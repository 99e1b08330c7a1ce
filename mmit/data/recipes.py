"""Build recipes: ``data_recipes/base.yaml``, then the recipe, then ``key=value`` overrides, checked
against the schema before anything is read or written.

The base holds every setting with its default, so a recipe sets only what differs. A recipe's other
top-level keys are its own parameters (``coco_root``), allowed because the recipe uses them
(``${coco_root}``). Anything else is refused, naming the file and line (or the override) with the
valid keys: a typo such as ``shard_sise=100`` must not be ignored. Values are checked for type and
range, ``shaping`` and ``audio`` against their dataclasses, and each reader's arguments against its
signature. Recipes with a ``mode`` (``mmit.synth``'s) are LLM-generation recipes: they compose
without the base and keep their own settings.

The build's first step: :func:`compose_recipe` gives the checked config, and the template files and
shaping settings it names are loaded here too.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import re
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError, OmegaConfBaseException

from mmit.cli import did_you_mean
from mmit.config_checks import argument_problems, unknown_arguments
from mmit.data.instructions import TEMPLATE_FIELDS, ShapingConfig, usable_templates
from mmit.data.templates import load_templates
from mmit.paths import RECIPES_DIR, is_plain_file_name

BASE = "base"  # data_recipes/base.yaml: the defaults, not a recipe


class RecipeError(ValueError):
    """A recipe or override does not fit the schema; the message names the file, line or key."""


class BuildError(RuntimeError):
    """The build cannot go on; the message names the file and record."""


def recipe_path(recipe: str) -> Path:
    """A recipe by name (from data_recipes/) or by path to a ``.yaml`` file."""
    known = ", ".join(shipped_recipe_names())
    if recipe == BASE:
        raise RecipeError(f"{RECIPES_DIR / 'base.yaml'} holds the defaults of every recipe; it is not one ({known})")
    path = Path(recipe).expanduser() if recipe.endswith((".yaml", ".yml")) else RECIPES_DIR / f"{recipe}.yaml"
    if not path.is_file():
        raise RecipeError(f"no recipe {recipe!r} (recipes in {RECIPES_DIR}: {known}; or a path to a .yaml file)")
    return path


def shipped_recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml") if p.stem != BASE)


def _load(path: Path) -> tuple[dict, dict[str, int | str]]:
    """The recipe file as a plain mapping, and the line of each of its keys (dotted, lists as [i])."""
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML ({err})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of settings, not {type(data).__name__}")
    lines: dict[str, int | str] = {}

    def walk(node, key: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                child = f"{key}.{k.value}" if key else str(k.value)
                if child in lines:  # YAML readers keep the last silently
                    raise RecipeError(
                        f"{path}, line {k.start_mark.line + 1}: {child} is set twice (also line {lines[child]})"
                    )
                lines[child] = k.start_mark.line + 1
                walk(v, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[f"{key}[{i}]"] = v.start_mark.line + 1
                walk(v, f"{key}[{i}]")

    walk(root, "")
    return data, lines


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].strip().lstrip("+~")


def _override_path(override: str) -> str:
    """An override's key as a dotted path (``sources.0.json_file`` for ``sources[0].json_file=...``)."""
    return re.sub(r"\[(\w+)\]", r".\1", _override_key(override))


def _override_top(override: str) -> str:
    """The top-level key an override sets (``sources`` for ``sources[0].json_file=...``)."""
    return re.split(r"[.\[]", _override_key(override))[0]


def _texts(node: Any) -> Iterator[str]:
    """Every string value in a plain config tree."""
    if isinstance(node, dict | list):
        for value in node.values() if isinstance(node, dict) else node:
            yield from _texts(value)
    elif isinstance(node, str):
        yield node


def _names_in(text: str) -> set[str]:
    """Top-level names that interpolations in ``text`` refer to (``${coco_root}``, ``${prepare.out_dir}``)."""
    return set(re.findall(r"\$\{\s*([A-Za-z_]\w*)\s*[.}]", text))


def _used_names(node: Any) -> set[str]:
    """Top-level names that interpolations anywhere in ``node`` refer to."""
    return {name for text in _texts(node) for name in _names_in(text)}


def _within_text(node: Any) -> list[tuple[str, str]]:
    """(name, text) for each top-level name interpolated into a longer text (``${coco_root}/train2014``)."""
    return [
        (name, text)
        for text in _texts(node)
        for name in _names_in(text)
        if not re.fullmatch(r"\$\{\s*" + name + r"\s*\}", text)
    ]


def _unknown(key: str, valid: list[str], where: str, note: str = "") -> RecipeError:
    hint = did_you_mean(key.rsplit(".", 1)[-1], valid)
    return RecipeError(f"{where}: unknown key {key!r}{hint}.{note} Valid keys: {', '.join(valid)}")


# Settings an mmit.synth recipe may add beyond those its mode's shipped recipes spell out.
SYNTH_OPTIONAL = ("checkpoint",)  # with run_dir: which of the run's checkpoints writes


def _synth_settings(mode: str) -> list[str]:
    """The settings of an mmit.synth mode: every key of the shipped recipes of that mode (a synth
    recipe has no base), and SYNTH_OPTIONAL."""
    keys: dict[str, None] = {}
    for shipped in sorted(RECIPES_DIR.glob("*.yaml")):
        data, _ = _load(shipped)
        if data.get("mode") == mode:
            keys.update(dict.fromkeys(data))
    return [*keys, *SYNTH_OPTIONAL] if keys else []


def _check_keys(data: dict, lines: dict, overrides: list[str], settings: list[str], used: set[str], where: str) -> None:
    """RecipeError for a key of the recipe or of an override that is not a setting (a typo would
    be ignored); a key of the recipe's own is a parameter, allowed where the recipe uses it, and an
    override may set a parameter the recipe uses without declaring it."""
    for key in data:
        if key not in settings and key not in used:
            note = f" A key of the recipe's own is a parameter, allowed where the recipe uses it (${{{key}}})."
            raise _unknown(key, settings, f"{where}, line {lines.get(key, '?')}", note)
    allowed = [*settings, *(k for k in [*data, *sorted(used)] if k not in settings)]
    for override in overrides:
        top = _override_top(override)
        if top not in allowed:
            raise _unknown(top, allowed, f"override {override!r} of {where}")


def compose(recipe: str, overrides: list[str] = ()) -> DictConfig:
    """The recipe ``recipe`` (a name in data_recipes/ or a path) with its overrides, merged over the
    base and checked; RecipeError names what does not fit."""
    path = recipe_path(recipe)
    data, lines = _load(path)
    overrides = list(overrides)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise RecipeError(f"overrides are key=value, not {bad[0]!r}")
    try:
        given = OmegaConf.from_dotlist(overrides)
    except OmegaConfBaseException as err:
        raise RecipeError(f"cannot read the overrides {overrides}: {err}") from None
    used = _used_names(data) | _used_names(OmegaConf.to_container(given))
    where = f"recipe {path}"
    if data.get("mode"):  # an LLM-generation recipe (mmit.synth): its own settings, no base
        settings = _synth_settings(data["mode"])
        if settings:  # an unknown mode is named by mmit.synth itself
            _check_keys(data, lines, overrides, settings, used, where)
        try:
            return OmegaConf.merge(OmegaConf.create(data), given)
        except OmegaConfBaseException as err:
            raise RecipeError(f"{path}: the overrides do not fit ({err})") from None

    base, _ = _load(RECIPES_DIR / "base.yaml")
    _check_keys(data, lines, overrides, list(base), used, where)
    try:
        cfg = OmegaConf.merge(OmegaConf.create(base), OmegaConf.create(data))
    except OmegaConfBaseException as err:
        key, kind = _misfit(base, data) or ("", "")
        raise RecipeError(f"{where}{_line(lines, key)}: {key} must be {kind}" if key else f"{where}: {err}") from None
    try:
        cfg = OmegaConf.merge(cfg, given)
    except OmegaConfBaseException as err:
        key, kind = _misfit(OmegaConf.to_container(cfg), OmegaConf.to_container(given)) or ("", "")
        if not key:
            raise RecipeError(f"{where}: the overrides do not fit ({err})") from None
        within = [o for o in overrides if f"{_override_path(o)}.".startswith(f"{key}.")]  # the one reaching the key
        override = (within or [o for o in overrides if _override_top(o) == key.split(".")[0]])[0]
        if kind == "a list":  # from_dotlist reads sources[0].json_file as a mapping under sources
            raise RecipeError(
                f"{where}, override {override!r}: one item of a list cannot be set from the command line; "
                "give the recipe a parameter of its own there (json_file: ${my_json}) and set that (my_json=...)"
            ) from None
        raise RecipeError(f"{where}, override {override!r}: {key} must be {kind}") from None
    _keep_required(cfg, data, given)
    if cfg.name is None:
        cfg.name = path.stem
    missing = sorted(key for key in cfg if OmegaConf.is_missing(cfg, key))
    if missing:
        raise RecipeError(f"{where} needs values for {missing} (pass key=value, or set them in the recipe)")
    for name, text in _within_text(data):  # ${coco_root}/x.json with coco_root null would read None/x.json
        if name in cfg and cfg[name] is None:
            given = next((o for o in overrides if _override_key(o) == name), None)
            tilde = " (~ is YAML's null: write the folder's full path)" if given and given.endswith("=~") else ""
            raise RecipeError(
                f"{where}{f', override {given!r}' if given else _line(lines, name)}: {name} is null, and the "
                f"recipe writes it into {text!r}; give it a value ({name}=...){tilde}"
            )
    for override in overrides:  # an override's key is located by the override, not the file's line
        key = _override_key(override)
        lines = {k: v for k, v in lines.items() if k != key and not k.startswith((f"{key}.", f"{key}["))}
        lines[key] = f"override {override!r}"
    check(cfg, where, lines)
    return cfg


def compose_recipe(recipe: str, overrides: list[str] = ()) -> DictConfig:
    """A recipe by name (from data_recipes/) or path, over ``data_recipes/base.yaml``, with ``key=value``
    overrides (dotted keys), checked against the schema: an unknown key, a wrong type or a reader
    argument the reader does not take stops here (BuildError), naming file, line and key."""
    # Plain OmegaConf rather than Hydra: a training job (itself a Hydra app) builds recipes too.
    try:
        return compose(recipe, list(overrides))
    except RecipeError as err:
        raise BuildError(str(err)) from None


def load_template_files(paths: str | list[str], held_out: Collection[str] = ()) -> dict:
    """One template file, or several (e.g. vision + audio) merged; a task may appear in one file only.
    ``held_out``: the tasks that must have held-out wordings (``load_templates``)."""
    templates: dict = {}
    for path in [paths] if isinstance(paths, str) else list(paths):
        loaded = load_templates(path, TEMPLATE_FIELDS, held_out)
        twice = set(templates) & set(loaded)
        if twice:
            raise BuildError(f"tasks {sorted(twice)} have templates in more than one file")
        templates.update(loaded)
    return templates


def template_paths(cfg: DictConfig) -> list[str]:
    """The template files a composed recipe names (``templates``: one file or a list of them)."""
    named = cfg.get("templates")
    if named is None:
        return []
    return [str(p) for p in OmegaConf.to_container(named, resolve=True)] if OmegaConf.is_list(named) else [named]


def recipe_templates(cfg: DictConfig) -> dict:
    """The templates of a composed recipe (``templates``: one file or a list of them). Where the build
    keeps images for evaluation, each task but the held-out ones needs held-out wordings."""
    return load_template_files(template_paths(cfg), held_out_worded(cfg))


def held_out_worded(cfg: DictConfig) -> set[str]:
    """The tasks whose evaluation set of unseen wordings the recipe's build writes: every task but the
    held-out ones, where the build keeps images for evaluation."""
    return set(TEMPLATE_FIELDS) - set(cfg.shaping.held_out_tasks) if cfg.eval_fraction > 0 else set()


def shaping_config(cfg: DictConfig, templates: dict) -> ShapingConfig:
    """The recipe's ``shaping`` settings, seeded by its ``seed``; held-out tasks must have templates."""
    shaping = ShapingConfig(seed=cfg.seed, **OmegaConf.to_container(cfg.shaping))
    unknown = set(shaping.held_out_tasks) - set(templates)
    if unknown:
        raise BuildError(
            f"shaping.held_out_tasks names {sorted(unknown)}, which the recipe's templates do not word; "
            f"its tasks are {', '.join(sorted(templates))}"
        )
    task = "vqa_multiple_choice"
    if task in templates:  # option-then-letter answers leave out the wordings asking for the letter alone
        usable = usable_templates(templates, task, shaping)
        needed = [False, True] if task in held_out_worded(cfg) else [False]
        missing = ["held-out" if held else "training" for held in needed if not any(t.held_out == held for t in usable)]
        if missing:
            raise BuildError(
                f'shaping.choice_answer is option_letter ("red (B)"), and every {missing[0]} {task} wording of '
                "the recipe's templates asks for the letter alone (letter_only: true); add one that does not, "
                "or answer with the letter (shaping.choice_answer: letter)"
            )
    return shaping


def _misfit(below: Any, above: Any, key: str = "") -> tuple[str, str] | None:
    """The first dotted key where ``above`` has a mapping for a list of ``below``, or a list for a
    mapping (what OmegaConf cannot merge), and what it must be there."""
    if isinstance(below, dict) and isinstance(above, dict):
        for name, value in above.items():
            found = _misfit(below.get(name), value, f"{key}.{name}" if key else str(name))
            if found:
                return found
    elif isinstance(below, list | dict) and isinstance(above, list | dict) and type(below) is not type(above):
        return key, "a list" if isinstance(below, list) else "a mapping"
    return None


def _keep_required(cfg: DictConfig, data: dict, given: DictConfig) -> None:
    """A recipe's ``???`` stays required: merged over the base's default, OmegaConf would keep the default."""
    for key, value in data.items():
        if value == "???" and key not in given:
            cfg[key] = "???"
        elif isinstance(value, dict) and isinstance(cfg.get(key), DictConfig):
            _keep_required(cfg[key], value, given.get(key) or OmegaConf.create({}))


def _line(lines: dict[str, int | str], key: str) -> str:
    """Where ``key`` was set: its line in the recipe file, or the override that set it (or a parent of it)."""
    for part in [key, *(key[: m.start()] for m in reversed(list(re.finditer(r"[.\[]", key))))]:
        if part in lines:
            found = lines[part]
            return f", line {found}" if isinstance(found, int) else f", {found}"
    below = [v for k, v in lines.items() if isinstance(v, str) and k.startswith((f"{key}.", f"{key}["))]
    return f", {below[0]}" if below else ""


def check(cfg: DictConfig, where: str, lines: dict[str, int | str] | None = None) -> None:
    """Types and ranges of the settings, ``shaping`` / ``audio`` against their dataclasses, and each
    source's arguments against its reader's signature. ``lines``: where each key was set."""
    from mmit.data.audio import AudioPolicy

    lines = lines or {}
    try:
        values = OmegaConf.to_container(cfg, resolve=True)
    except InterpolationKeyError as err:
        name = re.search(r"key '([^']+)'", str(err))
        name = name[1] if name else "?"
        raise RecipeError(
            f"{where}{_line(lines, str(err.full_key))}: {err.full_key} uses ${{{name}}}, which is not set: "
            f"pass {name}=... (or set it in the recipe)"
        ) from None
    except OmegaConfBaseException as err:
        raise RecipeError(f"{where}: {_first_line(err)}") from None

    def fail(key: str, message: str) -> RecipeError:
        return RecipeError(f"{where}{_line(lines, key)}: {key} {message}")

    def integer(key: str, low: int, optional: bool = False) -> None:
        value = values.get(key)
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise fail(key, f"must be a whole number >= {low}{' or null' if optional else ''}, not {value!r}")

    def boolean(key: str) -> None:
        if not isinstance(values.get(key), bool):
            raise fail(key, f"must be true or false, not {values.get(key)!r}")

    integer("seed", 0)
    integer("shard_size", 1)
    integer("num_workers", 1)
    integer("max_pixels", 1)
    integer("resize_max", 1, optional=True)
    boolean("share_media")
    boolean("allow_outside_root")
    fraction = values.get("eval_fraction")
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction < 1:
        raise fail("eval_fraction", f"must be a number in [0, 1), not {fraction!r}")
    if values.get("on_error") not in ("raise", "skip"):
        raise fail("on_error", f"must be raise or skip, not {values.get('on_error')!r}")
    for key in ("name", "out_dir"):
        if not isinstance(values.get(key), str) or not values[key]:
            raise fail(key, f"must be a text, not {values.get(key)!r}")
    if not is_plain_file_name(values["name"]):  # it names the build's folder in the mmit cache
        raise fail("name", f"must be a plain name (no /, not hidden), not {values['name']!r}")
    templates = values.get("templates")
    files = [templates] if isinstance(templates, str) else templates
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        raise fail("templates", f"must be a template file or a list of them, not {templates!r}")
    for file in files:
        if not Path(file).is_file():
            raise fail("templates", f"names {file}, which does not exist")

    for key, schema in (("shaping", ShapingConfig), ("audio", AudioPolicy)):
        fields = [f.name for f in dataclasses.fields(schema) if f.name != "seed"]
        node = values.get(key)
        if not isinstance(node, dict):
            raise fail(key, f"must be a mapping of {', '.join(fields)}, not {node!r}")
        for name in node:
            if name not in fields:
                raise _unknown(f"{key}.{name}", fields, f"{where}{_line(lines, f'{key}.{name}')}")
        try:
            OmegaConf.merge(OmegaConf.structured(schema), {k: v for k, v in node.items()})
            schema(**node)
        except (OmegaConfBaseException, ValueError, TypeError) as err:
            named = re.match(rf"{key}\.\w+", str(err))  # the dataclass's own checks name their key
            name = f"{key}.{err.full_key}" if getattr(err, "full_key", None) else named[0] if named else key
            message = _first_line(err) if named else f"{name}: {_first_line(err)}"
            raise RecipeError(f"{where}{_line(lines, name)}: {message}") from None
    shaping = values["shaping"]
    if not 0 <= shaping["multiple_choice_fraction"] <= 1:
        raise fail("shaping.multiple_choice_fraction", "must be in [0, 1]")
    if shaping["qa_per_conversation"] < 1 or shaping["captions_per_image"] < 0:
        raise fail("shaping", "needs qa_per_conversation >= 1 and captions_per_image >= 0")

    sources = cfg.get("sources")
    if not isinstance(sources, ListConfig) or not sources:
        raise fail("sources", "must be a list of annotation readers, each with its _target_")
    for key in ("sources", "heldout_sources"):
        node = cfg.get(key)
        if node is None:
            continue
        if not isinstance(node, ListConfig):
            raise fail(key, "must be a list of annotation readers, each with its _target_")
        for i, source in enumerate(node):
            _check_call(source, f"{key}[{i}]", where, lines)
    if cfg.get("prepare") is not None:
        _check_call(cfg.prepare, "prepare", where, lines)


def _check_call(node: Any, key: str, where: str, lines: dict[str, int | str]) -> None:
    """A ``_target_`` node: the target exists and takes every argument given."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise RecipeError(f"{where}{_line(lines, key)}: {key} must be a mapping with a _target_ (a reader function)")
    target = node._target_
    function = _target(str(target), f"{where}{_line(lines, f'{key}._target_')}: {key}._target_")
    unknown, valid = unknown_arguments(function, [name for name in node if name != "_target_"])
    if unknown:
        name = unknown[0]
        raise _unknown(f"{key}.{name}", valid, f"{where}{_line(lines, f'{key}.{name}')}: {target}")
    given = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "_target_"}
    for name, problem in argument_problems(function, given):
        at = f"{key}.{name}" if name else key
        raise RecipeError(f"{where}{_line(lines, at)}: {at} ({target.rpartition('.')[2]}) {problem}")


def _target(target: str, where: str):
    """The function a ``_target_`` names, imported; RecipeError with the names close to it if there is none."""
    module_name, _, name = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise RecipeError(f"{where} {target!r}: cannot import {module_name!r} ({err})") from None
    if not callable(getattr(module, name, None)):
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(f'{module_name}.{c}' for c in close)}?" if close else ""
        raise RecipeError(f"{where} {target!r} not found: {module_name} has no {name!r}{hint}")
    return getattr(module, name)


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
