"""A run folder's ``config.yaml`` is data, not code: it rebuilds a model only through mmit's own builders.

``mmit.eval``, ``mmit.export``, ``mmit.chat``, the web demo and ``mmit.synth run_dir=`` rebuild a run's
model from the config the run saved. Instantiating that file as it stands would run whatever
``_target_`` it names, so a run folder from someone else could run code. Here a saved config is
checked against an allow-list before anything is instantiated:

- a ``_target_`` may appear only where mmit's config groups put one (``llm``, ``vision_encoder``,
  ``audio_encoder``, ``peft.config``, ``data.source``, ``trainer``), naming a builder that a shipped
  option of that group uses, with only the parameters the shipped configs (options and recipes)
  give it;
- no other Hydra key (``_args_``, ``_partial_``, ...) and no interpolation (a saved config is
  resolved);
- no ``trust_remote_code: true``, and no local weights file other than safetensors;
- a demo dataset (``mmit.data.build.recipe_data_files``) names a shipped recipe, its overrides only set
  keys the recipe has or arguments its builders take (never a ``_target_``), and it is built only into
  the mmit cache.

A builder that moved is read under its new name (``RENAMED_TARGETS``): runs saved by mmit 0.2.1
and earlier name their demo dataset ``mmit.build.recipe_data_files``, and older runs name the demo
data generators by their modules before ``mmit.data.demo`` (``mmit.data.text_skills``, ...).

Anything else is refused with the file and the key. A recipe or config named on the command line
is the user's own code (like a Python file) and is not checked. A run folder that is the user's
own may be trusted explicitly: ``MMIT_TRUSTED_RUNS=/path/to/run[:/another/run]``.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from mmit.config_checks import ABSENT, value_at
from mmit.paths import CONF_DIR, RECIPES_DIR, cache_dir, pickled_files

log = logging.getLogger(__name__)

TRUSTED_RUNS_ENV = "MMIT_TRUSTED_RUNS"
RECIPE_DATA_FILES = "mmit.data.build.recipe_data_files"
# A builder's old name in configs saved by earlier versions -> its name now.
RENAMED_TARGETS = {
    "mmit.build.recipe_data_files": RECIPE_DATA_FILES,
    "mmit.data.text_skills.prepare_text_skills": "mmit.data.demo.text.prepare_text_skills",
    "mmit.data.demo_scenes.write_demo_scenes": "mmit.data.demo.scenes.write_demo_scenes",
    "mmit.data.demo_speech.write_demo_speech": "mmit.data.demo.speech.write_demo_speech",
}


class UnsafeConfigError(ValueError):
    """A saved config asks for something other than mmit's own builders; the message names file and keys."""


def _option(group: str, name: str) -> dict:
    """A config group option as a plain dict, with the options of its own group it builds on (``defaults``)."""
    node = yaml.safe_load((CONF_DIR / group / f"{name}.yaml").read_text()) or {}
    merged: dict = {}
    for entry in node.pop("defaults", []) or []:
        if isinstance(entry, str) and entry != "_self_":
            merged = _merge(merged, _option(group, entry))
    return _merge(merged, node)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, dict) else value
    return out


def _collect(node: Any, position: str, builders: dict[str, dict[str, set[str]]]) -> None:
    if not isinstance(node, dict):
        return
    if "_target_" in node:
        builders.setdefault(position, {}).setdefault(node["_target_"], set()).update(k for k in node if k != "_target_")
    for key, value in node.items():
        _collect(value, f"{position}.{key}", builders)


@functools.cache
def shipped_builders() -> dict[str, dict[str, frozenset[str]]]:
    """Position (``llm``, ``peft.config``, ...) -> builder -> the parameters mmit's shipped config
    groups and recipes give it."""
    builders: dict[str, dict[str, set[str]]] = {}
    groups = [p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "recipe"]
    for group in groups:
        for path in (CONF_DIR / group).glob("*.yaml"):
            _collect(_option(group, path.stem), group, builders)
    for path in (CONF_DIR / "recipe").glob("*.yaml"):  # recipes set more parameters of the options they pick
        recipe = yaml.safe_load(path.read_text()) or {}
        for entry in recipe.get("defaults", []) or []:
            if not isinstance(entry, dict):
                continue
            for key, option in entry.items():
                group = key.removeprefix("override ").strip().lstrip("/")
                if group in groups and isinstance(option, str) and isinstance(recipe.get(group), dict):
                    _collect(_merge(_option(group, option), recipe[group]), group, builders)
    return {pos: {t: frozenset(keys) for t, keys in targets.items()} for pos, targets in builders.items()}


def shipped_recipes() -> set[str]:
    from mmit.data.recipes import shipped_recipe_names

    return set(shipped_recipe_names())


def _trusted(run_dir: Path) -> bool:
    listed = [p for p in os.environ.get(TRUSTED_RUNS_ENV, "").split(os.pathsep) if p.strip()]
    return any(Path(p).expanduser().resolve() == run_dir.resolve() for p in listed)


RUN_GROUPS = ("llm", "trainer")  # what every run's config.yaml holds, and loading one reads


def run_config(run_dir: str | Path) -> Path:
    """A training run's ``config.yaml``; a folder without one is named as not a run directory."""
    config = Path(run_dir) / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
    return config


def load_saved_config(path: str | Path) -> DictConfig:
    """A run's ``config.yaml``, checked (:func:`check_saved_config`) unless its run folder is trusted."""
    path = Path(path)
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # yaml and OmegaConf raise many types
        raise UnsafeConfigError(f"{path}: not a readable config ({err})") from err
    if not isinstance(cfg, DictConfig):
        raise UnsafeConfigError(f"{path}: expected a mapping of config groups")
    missing = [group for group in RUN_GROUPS if group not in cfg]
    if missing:
        raise UnsafeConfigError(f"{path}: no {' or '.join(missing)} section, which every run's config.yaml has")
    rename_targets(cfg)
    if _trusted(path.parent):
        log.info("%s: trusted through %s, not checked", path, TRUSTED_RUNS_ENV)
        return cfg
    check_saved_config(cfg, path)
    return cfg


def rename_targets(cfg: DictConfig) -> None:
    """Each ``_target_`` that names a builder by its old name (``RENAMED_TARGETS``) set to its new
    name, in place; nothing is resolved. Builders sit in mappings only: one in a list keeps its name
    (and is refused by the check)."""
    for key, value in cfg.items_ex(resolve=False):
        if key == "_target_" and isinstance(value, str) and value in RENAMED_TARGETS:
            cfg[key] = RENAMED_TARGETS[value]
        elif isinstance(value, DictConfig):
            rename_targets(value)


def check_saved_config(cfg: DictConfig, path: str | Path) -> None:
    """Raise UnsafeConfigError, naming ``path`` and every refused key, unless ``cfg`` asks only for
    mmit's own builders with the parameters its shipped configs use."""
    problems: list[str] = []
    _walk(OmegaConf.to_container(cfg, resolve=False), "", problems)
    if problems:
        listed = "\n  ".join(problems)
        raise UnsafeConfigError(
            f"{path}: refused, as it asks for more than mmit's own builders (a run folder is data, not code):\n"
            f"  {listed}\nIf this run folder is your own, trust it: {TRUSTED_RUNS_ENV}={Path(path).parent}"
        )


def _walk(value: Any, key: str, problems: list[str]) -> None:
    if isinstance(value, dict):
        for name in value:
            if not isinstance(name, str):
                problems.append(f"{key}: the key {name!r} is not a string")
            elif name.startswith("_") and name != "_target_":
                problems.append(f"{_join(key, name)}: Hydra's {name} is not allowed in a saved config")
        if "_target_" in value:
            _check_builder(value, key, problems)
        for name, child in value.items():
            if isinstance(name, str) and name != "_target_":
                _walk(child, _join(key, name), problems)
    elif isinstance(value, list):
        for i, child in enumerate(value):
            _walk(child, f"{key}[{i}]", problems)
    elif isinstance(value, str) and "${" in value:
        problems.append(f"{key}: an interpolation ({value!r}); a saved config is resolved")


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _check_builder(node: dict, key: str, problems: list[str]) -> None:
    target = node["_target_"]
    allowed = shipped_builders().get(key, {})
    if target not in allowed:
        if allowed:
            problems.append(
                f"{_join(key, '_target_')}: {target!r} is not one of mmit's builders for {key}: {', '.join(sorted(allowed))}"
            )
        else:
            problems.append(f"{_join(key, '_target_')}: {target!r}, but no builder belongs at {key or 'the top level'}")
        return
    for name in node:
        if name != "_target_" and name not in allowed[target]:
            problems.append(f"{_join(key, name)}: not a parameter mmit's configs give {target}")
    if node.get("trust_remote_code"):
        problems.append(f"{_join(key, 'trust_remote_code')}: a run folder cannot turn on remote code")
    for name in ("name_or_path", "pretrained"):
        if isinstance(node.get(name), str) and pickled_files(node[name]):
            problems.append(f"{_join(key, name)}: {node[name]} holds weights that are not safetensors")
    if target == RECIPE_DATA_FILES:
        _check_recipe_build(node, key, problems)


def _check_recipe_build(node: dict, key: str, problems: list[str]) -> None:
    """A demo dataset the run's data came from: a shipped recipe, overrides of keys it has, built into the cache."""
    from mmit.data.recipes import BuildError, compose_recipe

    recipe, overrides = node.get("recipe"), node.get("overrides") or []
    if not isinstance(recipe, str) or recipe not in shipped_recipes():
        problems.append(
            f"{key}.recipe: {recipe!r} is not one of mmit's recipes ({', '.join(sorted(shipped_recipes()))})"
        )
        return
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        problems.append(f"{key}.overrides: must be a list of key=value strings")
        return
    shipped = yaml.safe_load((RECIPES_DIR / f"{recipe}.yaml").read_text()) or {}
    if not shipped.get("mode"):  # a build recipe: the base's settings are its keys too
        shipped = _merge(yaml.safe_load((RECIPES_DIR / "base.yaml").read_text()) or {}, shipped)
    for override in overrides:
        name, sep, _ = override.partition("=")
        parts = name.strip().split(".")
        if not sep or "_target_" in override or any(p.startswith("_") for p in parts):
            problems.append(f"{key}.overrides: {override!r} may not set a _target_ or a Hydra key")
        elif not (_has_key(shipped, parts) or _builder_argument(shipped, parts)):
            problems.append(f"{key}.overrides: {override!r} sets {name.strip()!r}, which recipe {recipe} does not have")
    if any(p.startswith(f"{key}.overrides") for p in problems):
        return
    try:
        cfg = compose_recipe(recipe, overrides)
        out = Path(cfg.out_dir)
        writes = [out, *(Path(v) for k, v in _out_dirs(OmegaConf.to_container(cfg, resolve=True)))]
    except (BuildError, ValueError, TypeError, KeyError) as err:
        problems.append(f"{key}.overrides: recipe {recipe} does not compose with them ({err})")
        return
    if (out / "manifest.json").exists():
        return  # built already: it is only read
    cache = cache_dir().resolve()
    outside = [str(p) for p in writes if not p.expanduser().resolve().is_relative_to(cache)]
    if outside:
        problems.append(
            f"{key}.overrides: would build recipe {recipe} into {', '.join(outside)}, outside the mmit cache "
            f"({cache}); build it there yourself (python -m mmit.build {recipe} ...) or trust the run"
        )


def _builder_argument(node: Any, parts: list[str]) -> bool:
    """Whether ``parts`` names an argument of a builder the recipe has (a node with a ``_target_``,
    such as ``prepare.kinds``): composing the recipe then checks that the builder takes it."""
    parent = value_at(node, parts[:-1])
    return isinstance(parent, dict) and "_target_" in parent


def _has_key(node: Any, parts: list[str]) -> bool:
    return value_at(node, parts) is not ABSENT


def _out_dirs(node: Any, key: str = "") -> list[tuple[str, str]]:
    """Every ``out_dir`` below the top level of a resolved recipe (a ``prepare`` step's, say)."""
    found = []
    if isinstance(node, dict):
        for name, value in node.items():
            child = _join(key, str(name))
            if name == "out_dir" and key and isinstance(value, str):
                found.append((child, value))
            found += _out_dirs(value, child)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _out_dirs(value, f"{key}[{i}]")
    return found
