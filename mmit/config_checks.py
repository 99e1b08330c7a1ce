"""Checks of a composed training config, before anything is built: each value's type and range, and
the names it picks (precision, tuning, peft method, projector kind, components), so that
``trainer.lr=abc`` stops at once with the key rather than deep in torch after the model is built.

Hydra already refuses unknown keys and unknown group options; these checks cover the values.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mmit.data.samples import is_number, is_whole_number
from mmit.paths import CONF_DIR


class ConfigError(ValueError):
    """The composed config has values that cannot work; the message lists each key and what it needs."""


# trainer keys -> (low, high) bounds, inclusive; None: unbounded on that side.
TRAINER_RANGES: dict[str, tuple[float | None, float | None]] = {
    "max_steps": (1, None),
    "batch_size": (1, None),
    "grad_accum": (1, None),
    "group_by_length": (0, None),
    "pack_length": (0, None),
    "prefetch": (0, None),
    "decode_workers": (0, None),
    "lr": (0, None),
    "weight_decay": (0, None),
    "warmup_steps": (0, None),
    "lr_decay_fraction": (0, 1),
    "max_grad_norm": (0, None),
    "log_every": (1, None),
    "eval_every": (1, None),
    "eval_batches": (0, None),
    "eval_batch_size": (1, None),
    "generate_samples": (0, None),
    "max_new_tokens": (1, None),
    "save_every": (1, None),
    "keep_last": (1, None),
    "max_nonfinite_skips": (0, None),
    "seed": (0, None),
}
POSITIVE = {"lr", "max_grad_norm", "lr_decay_fraction"}  # > 0, not only >= 0
CHOICES = {
    "trainer.precision": ("auto", "bf16", "fp32"),
    "trainer.distributed": ("ddp", "fsdp2"),
    "tuning.vision_encoder": ("frozen", "lora", "full"),
    "tuning.audio_encoder": ("frozen", "lora", "full"),
    "tuning.projector": ("full", "lora", "frozen"),
    "projector.position_code": ("none", "learned", "words", "word_tokens"),
    "projector_align.image_words": ("one", "several"),
    "frozen_dtype": ("auto", "float32", "bfloat16", "float16"),
    "data.overlength": ("truncate", "drop", "raise"),
    "data.on_error": ("raise", "skip"),
    "llm.dtype": ("float32", "bfloat16", "float16", "fp32", "bf16", "fp16"),
    "vision_encoder.tokens": ("patch", "cls", "all"),
}
# Keys outside trainer, where present: whole numbers of at least this, and numbers > 0.
WHOLE_NUMBERS = {
    "projector_align.steps": 1,
    "projector_align.batch_size": 1,
    "peft.config.r": 1,
    "projector.depth": 1,
    "audio_encoder.windows": 1,
    "llm.seed": 0,
    "data.source.seed": 0,
}
POSITIVE_NUMBERS = ("projector_align.lr", "peft.config.lora_alpha")
COMPONENTS = ("llm", "encoders", "projectors")  # what trainer.lr_per_component can name


def shipped_values(group: str, key: str) -> tuple[str, ...]:
    """The values the shipped options of a config group give ``key`` (peft methods, projector kinds)."""
    import yaml

    values = {(yaml.safe_load(p.read_text()) or {}).get(key) for p in (CONF_DIR / group).glob("*.yaml")}
    return tuple(sorted(v for v in values if isinstance(v, str)))


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError listing every value of ``cfg`` that cannot work."""
    problems: list[str] = []
    values = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    _check_trainer(values.get("trainer") or {}, problems)
    for key, allowed in CHOICES.items():
        value = value_at(values, key)
        if value is not ABSENT and value not in allowed:
            problems.append(f"{key}={_show(value)}: must be one of {', '.join(allowed)}")
    for key, group in (("peft.method", "peft"), ("projector.kind", "projector")):
        value, known = value_at(values, key), shipped_values(group, key.split(".")[1])
        if value is not ABSENT and value not in known:
            problems.append(f"{key}={_show(value)}: must be one of {', '.join(known)} ({group}=<option>)")
    _check_data(values.get("data") or {}, problems)
    for group in BUILT_GROUPS:
        _check_arguments(group, values.get(group), problems)
    for group in ("vision_encoder", "audio_encoder"):
        if values.get(group) and not values.get("projector"):
            problems.append(f"{group} is set but no projector is: add projector=mlp (or linear, resampler)")
        pool = value_at(values, f"{group}.pool_to")
        if pool not in (ABSENT, None) and not is_whole_number(pool, 1):
            problems.append(f"{group}.pool_to={_show(pool)}: must be a whole number >= 1 or null")
    for key, low in WHOLE_NUMBERS.items():
        value = value_at(values, key)
        if value is not ABSENT and not is_whole_number(value, low):
            problems.append(f"{key}={_show(value)}: must be a whole number >= {low}")
    for key in POSITIVE_NUMBERS:
        value = value_at(values, key)
        if value is not ABSENT and not (is_number(value) and value > 0):
            problems.append(f"{key}={_show(value)}: must be a number > 0")
    dropout = value_at(values, "peft.config.lora_dropout")
    if dropout is not ABSENT and not (is_number(dropout) and 0 <= dropout < 1):
        problems.append(f"peft.config.lora_dropout={_show(dropout)}: must be a number from 0 to below 1")
    _check_video(values.get("video"), bool(values.get("vision_encoder")), problems)
    if not is_whole_number(values.get("seed", 0), 0):
        problems.append(f"seed={_show(values.get('seed'))}: must be a whole number >= 0")
    pack, length = value_at(values, "trainer.pack_length"), value_at(values, "data.max_length")
    if is_whole_number(pack, 1) and is_whole_number(length, 1) and pack < length:
        problems.append(
            f"trainer.pack_length={pack} is shorter than data.max_length={length}: a sample must fit in one packed row"
        )
    if problems:
        raise ConfigError("the config cannot work:\n  " + "\n  ".join(problems))


ABSENT = object()  # what value_at gives for a path that is not there
BUILT_GROUPS = ("llm", "vision_encoder", "audio_encoder")  # groups whose _target_ takes the group's keys


def unknown_arguments(function: Any, given: Sequence[str]) -> tuple[list[str], list[str]]:
    """The names in ``given`` (in order) that ``function`` has no parameter for, and the names it
    takes; nothing unknown when it takes any keyword (``**kwargs``) or has no signature to read."""
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return [], []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return [], []
    takes = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    return [name for name in given if name not in params], takes


def argument_problems(function: Any, given: dict[str, Any]) -> list[tuple[str | None, str]]:
    """Why ``function(**given)`` would fail or misread its arguments: each required parameter not
    given (name None), and each given value whose type is not the one its annotation declares (for
    the plain types ``_matches`` reads), as (name, what it must be)."""
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):  # no signature to read: nothing to check
        return []
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # annotations that do not resolve here: the types go unchecked
        hints = {}
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    missing = [n for n, p in params.items() if p.kind in named and p.default is p.empty and n not in given]
    problems: list[tuple[str | None, str]] = [(None, f"needs {name}") for name in missing]
    for name, value in given.items():
        if name in params and name in hints and not _matches(value, hints[name]):
            problems.append((name, f"must be {_describe(hints[name])}, not {_show(value)[:60]}"))
    return problems


def _check_arguments(group: str, node: Any, problems: list[str]) -> None:
    """Keys that mmit's own builder for a group does not take: a recipe's setting for its encoder left
    behind when the command line picks another (``+recipe=vqa vision_encoder=hf_clip``), or a typo.
    Only ``mmit.`` targets are looked up, so that checking imports nothing a config names."""
    from hydra.utils import get_object

    target = node.get("_target_") if isinstance(node, dict) else None
    if not isinstance(target, str) or not target.startswith("mmit."):
        return
    try:
        builder = get_object(target)
    except ImportError:
        problems.append(f"{group}._target_={target!r}: no such builder in mmit")
        return
    name = target.rpartition(".")[2]
    unknown, takes = unknown_arguments(builder, sorted(k for k in node if not k.startswith("_")))
    for key in unknown:
        problems.append(
            f"{group}.{key}={_show(node[key])}: {name} takes no {key!r} (it takes {', '.join(takes)}); "
            f"drop it with ~{group}.{key}"
        )


def value_at(node: Any, path: str | Sequence[str]) -> Any:
    """The value at a path of nested dicts ("trainer.lr", or its parts), or ABSENT."""
    for part in path.split(".") if isinstance(path, str) else path:
        if not isinstance(node, dict) or part not in node:
            return ABSENT
        node = node[part]
    return node


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _matches(value: Any, hint: Any) -> bool:
    """Whether a config value has the type a TrainerConfig field or a reader's parameter declares (int,
    float, bool, str, lists, dicts, unions); any other annotation passes."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return is_whole_number(value)
    if hint is float:
        return is_number(value)
    if hint is str:
        return isinstance(value, str)
    if origin is dict:
        key_type, value_type = typing.get_args(hint)
        return isinstance(value, dict) and all(
            _matches(k, key_type) and _matches(v, value_type) for k, v in value.items()
        )
    if origin in (list, Sequence) and typing.get_args(hint):
        return isinstance(value, list) and all(_matches(v, typing.get_args(hint)[0]) for v in value)
    return True


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "a text", type(None): "null"}
    if origin is dict:  # "a mapping of whole numbers", "a mapping of texts"
        return "a mapping of " + _describe(typing.get_args(hint)[1]).removeprefix("a ") + "s"
    if origin in (list, Sequence) and typing.get_args(hint):  # "a list of texts"
        return "a list of " + _describe(typing.get_args(hint)[0]).removeprefix("a ") + "s"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _check_trainer(trainer: dict, problems: list[str]) -> None:
    from mmit.training.loop import TRAINER_CHOICES, TrainerConfig

    hints = typing.get_type_hints(TrainerConfig)
    for key, value in trainer.items():
        if key == "_target_" or key not in hints:
            continue
        if not _matches(value, hints[key]):
            problems.append(f"trainer.{key}={_show(value)}: must be {_describe(hints[key])}")
            continue
        if key in TRAINER_CHOICES and value not in TRAINER_CHOICES[key]:
            problems.append(f"trainer.{key}={_show(value)}: must be one of {', '.join(TRAINER_CHOICES[key])}")
            continue
        low, high = TRAINER_RANGES.get(key, (None, None))
        numbers = list(value.values()) if isinstance(value, dict) else [value]
        for number in (n for n in numbers if is_number(n)):
            if key in POSITIVE and number <= 0:
                problems.append(f"trainer.{key}={_show(value)}: must be > 0")
                break
            if (low is not None and number < low) or (high is not None and number > high):
                bounds = f">= {low}" if high is None else f"between {low} and {high}"
                problems.append(f"trainer.{key}={_show(value)}: must be {bounds}")
                break
    for name, rate in (trainer.get("lr_per_component") or {}).items():
        if name not in COMPONENTS:
            problems.append(f"trainer.lr_per_component.{name}: not a component; components are {', '.join(COMPONENTS)}")
        elif is_number(rate) and rate <= 0:
            problems.append(f"trainer.lr_per_component.{name}={rate}: must be > 0")
    workers, prefetch = trainer.get("decode_workers"), trainer.get("prefetch")
    if is_number(workers) and workers > 0 and is_number(prefetch) and prefetch == 0:
        problems.append(
            f"trainer.decode_workers={workers}: needs trainer.prefetch >= 1 (the batches they decode ahead)"
        )
    device = trainer.get("device", "auto")
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        problems.append(f"trainer.device={_show(device)}: must be auto, cpu, cuda, cuda:N or mps")


VIDEO_KEYS = ("frames", "fps", "pool_to", "temporal")


def _check_video(video, has_vision: bool, problems: list[str]) -> None:
    if video is None:
        return
    if not isinstance(video, dict):
        problems.append(f"video={_show(video)}: must be null or {{frames, fps, pool_to, temporal}}")
        return
    if not has_vision:
        problems.append("video is set but no vision_encoder is: video frames go through the image encoder")
    for key in sorted(set(video) - set(VIDEO_KEYS)):
        problems.append(f"video.{key}: not a video setting; settings are {', '.join(VIDEO_KEYS)}")
    if not is_whole_number(video.get("frames", 8), 1):
        problems.append(f"video.frames={_show(video.get('frames'))}: must be a whole number >= 1")
    fps = video.get("fps")
    if fps is not None and not (is_number(fps) and fps > 0):
        problems.append(f"video.fps={_show(fps)}: must be a number > 0 or null (uniform over the clip)")
    pool = video.get("pool_to", 2)
    if pool is not None and not is_whole_number(pool, 1):
        problems.append(f"video.pool_to={_show(pool)}: must be a whole number >= 1 or null")
    if video.get("temporal", "learned") not in ("learned", "sinusoidal", "none"):
        problems.append(f"video.temporal={_show(video.get('temporal'))}: must be one of learned, sinusoidal, none")


def _check_data(data: dict, problems: list[str]) -> None:
    for key, low in (("max_length", 1), ("max_pixels", 1), ("shuffle_buffer", 1), ("max_media", 1)):
        if key in data and not is_whole_number(data[key], low):
            problems.append(f"data.{key}={_show(data[key])}: must be a whole number >= {low}")
    for key in ("stream", "allow_outside_root"):
        if key in data and not isinstance(data[key], bool):
            problems.append(f"data.{key}={_show(data[key])}: must be true or false")
    if "system_prompt" in data and not isinstance(data["system_prompt"], str | None):
        problems.append(f"data.system_prompt={_show(data['system_prompt'])}: must be model_default, none or a text")
    source = data.get("source") or {}
    if source.get("_target_") == "mmit.data.sources.DataFiles" and source.get("train") == "???":
        problems.append(
            "data.source.train is not set: name your training files, e.g. 'data.source.train=[train.jsonl]' "
            "(see docs/own_data.md)"
        )
