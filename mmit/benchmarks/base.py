"""What every benchmark reader returns: evaluation samples in mmit's Conversation shape, and the
benchmark's official scorer for the model's replies to them."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmit.data.media import media_file
from mmit.data.samples import BAD_JSON, Conversation, MediaRef, Message, SampleError, json_problem, json_type

# A scorer gets the samples and the replies in the same order and returns
# {"metrics": {name: value}, "tables": {table: {row: {column: value}}}}.
Scorer = Callable[[Sequence[Conversation], Sequence[str]], dict[str, Any]]


class BenchmarkError(ValueError):
    """A benchmark file that is missing or does not have the official layout; names the file and record."""


@dataclass
class Benchmark:
    """One benchmark read from disk: ``samples`` to answer, and ``score`` for the answers.

    Each sample is a Conversation: a user turn (``<image>`` then the lmms-eval prompt), an
    assistant turn with the reference answer ("" where the split has none, as test-dev), the
    image as ``media[0]`` and the benchmark's fields in ``meta``.
    """

    name: str
    root: str
    samples: list[Conversation]
    max_new_tokens: int  # lmms-eval's generation_kwargs for the task
    scorer: Scorer | None  # None: no references (a test split); write a submission file instead
    layout: str = ""  # what was read, for logs and reports
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def has_references(self) -> bool:
        return self.scorer is not None

    def replies(self, predictions: Mapping[str, str] | Iterable[Any]) -> list[str]:
        """The replies in sample order, from {sample id: reply} or from objects with ``id`` and
        ``prediction`` (``mmit.scoring.Prediction``); every sample needs exactly one."""
        if isinstance(predictions, Mapping):
            by_id = dict(predictions)
        else:
            by_id = {}
            for p in predictions:
                if p.id in by_id:
                    raise BenchmarkError(f"{self.name}: two predictions for sample {p.id!r}")
                by_id[p.id] = p.prediction
        ids = [s.id for s in self.samples]
        missing = [i for i in ids if i not in by_id]
        extra = sorted(set(by_id) - set(ids))
        if missing or extra:
            raise BenchmarkError(
                f"{self.name}: predictions do not match the samples: {len(missing)} missing "
                f"(first: {missing[:3]}), {len(extra)} unknown (first: {extra[:3]})"
            )
        for i in ids:
            if not isinstance(by_id[i], str):
                raise BenchmarkError(f"{self.name}: the prediction for sample {i!r} is not a string")
        return [by_id[i] for i in ids]

    def score(self, predictions: Mapping[str, str] | Iterable[Any]) -> dict[str, Any]:
        """{"benchmark", "n", "metrics": flat {name: value}, "tables": {table: {row: {column: value}}}}."""
        if self.scorer is None:
            raise BenchmarkError(f"{self.name} has no reference answers to score against; write a submission file")
        replies = self.replies(predictions)
        scores = self.scorer(self.samples, replies)
        return {"benchmark": self.name, "n": len(self.samples), **scores}


def image_prompt(prompt: str) -> str:
    """The user turn: one ``<image>`` placeholder on its own line before the prompt, as mmit's templates do."""
    return f"<image>\n{prompt}"


def sample(sample_id: str, prompt: str, reference: str, image: MediaRef, meta: dict[str, Any]) -> Conversation:
    """An evaluation sample: the image and prompt in the user turn, the reference in the assistant turn."""
    return Conversation(
        sample_id, [Message("user", image_prompt(prompt)), Message("assistant", reference)], meta, [image]
    )


def image_at(root: str | os.PathLike, name: str, where: str) -> MediaRef:
    """The image file ``name`` under ``root``; BenchmarkError naming ``where`` if it is missing."""
    try:
        return media_file("image", root, name)
    except SampleError as e:
        raise BenchmarkError(f"{where}: {e}") from None


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise BenchmarkError(f"{what}: {path} does not exist")
    return path


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise BenchmarkError(f"{what}: folder {path} does not exist")
    return path


class _DuplicateKey(ValueError):
    """A JSON object that names one key twice (json.load would keep the last value silently)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"key {key!r} appears twice in one object (a record would be lost)")
        out[key] = value
    return out


def _unreadable(path: Path, err: Exception, where: str = "") -> BenchmarkError:
    """The BenchmarkError for a file that does not read as UTF-8 JSON: bad syntax, an integer of over
    4,300 digits, nesting too deep, bytes that are not UTF-8, a folder or an unreadable file."""
    place = f"{path}{where}"
    if isinstance(err, FileNotFoundError):
        return BenchmarkError(f"{path} does not exist")
    if isinstance(err, OSError):
        return BenchmarkError(f"{path}: cannot be read ({err.strerror or err})")
    if isinstance(err, UnicodeDecodeError):
        return BenchmarkError(f"{place}: not UTF-8 text ({err})")
    return BenchmarkError(f"{place}: not valid JSON ({json_problem(err)})")


def read_json(path: Path, unique_keys: bool = False) -> Any:
    """The JSON file at ``path``; ``unique_keys``: an object naming a key twice is an error (files
    keyed by question id, where json would keep one of the two questions silently)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f, object_pairs_hook=_unique_keys if unique_keys else None)
    except (OSError, *BAD_JSON) as e:
        raise _unreadable(path, e) from None


def read_jsonl(path: Path) -> list[tuple[int, Any]]:
    """(line number, record) of each non-empty line."""
    out = []
    number = 0
    try:
        with open(path, "rb") as f:  # bytes, so that text that is not UTF-8 is named by its line
            for number, raw in enumerate(f, 1):
                line = raw.decode("utf-8")
                if line.strip():
                    out.append((number, json.loads(line)))
    except (OSError, *BAD_JSON) as e:
        raise _unreadable(path, e, f" line {number}") from None
    return out


def first_time(seen: dict[Any, str], key: Any, what: str, where: str) -> None:
    """Record that ``key`` (a question id) was read at ``where``; BenchmarkError if it was read before:
    two samples with one id would be answered twice and scored once."""
    if key in seen:
        raise BenchmarkError(f"{where}: {what} {key!r} appears twice (first at {seen[key]})")
    seen[key] = where


def require_samples(samples: list, path: Path | str, what: str = "questions") -> list:
    """``samples`` (or the records read for them) unless there are none: a benchmark file that yields
    nothing is damaged, not a score."""
    if not samples:
        raise BenchmarkError(f"{path}: holds no {what}")
    return samples


def optional_text(record: dict, key: str, where: str) -> str:
    """``record[key]`` as text for a field scoring groups by ("" when absent or null); BenchmarkError
    naming ``where`` for another type, which would only fail once every sample was answered."""
    value = record.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BenchmarkError(f"{where}: {key!r} must be a string, not {json_type(value)}")
    return value


def field_of(record: Any, key: str, types: type | tuple[type, ...], where: str) -> Any:
    """``record[key]``, checked to be of ``types``; BenchmarkError naming ``where`` otherwise."""
    if not isinstance(record, dict):
        raise BenchmarkError(f"{where}: expected a JSON object, not {type(record).__name__}")
    if key not in record:
        raise BenchmarkError(f"{where}: no {key!r} field")
    value = record[key]
    if not isinstance(value, types) or isinstance(value, bool) and bool not in _tuple(types):
        names = " or ".join(t.__name__ for t in _tuple(types))
        raise BenchmarkError(f"{where}: {key!r} must be {names}, not {type(value).__name__}")
    return value


def _tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def accuracy_table(groups: Mapping[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    """{group: {"accuracy", "n"}} from each group's per-sample scores, groups sorted by name."""
    return {g: {"accuracy": mean(groups[g]), "n": len(groups[g])} for g in sorted(groups)}
