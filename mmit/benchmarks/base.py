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
from mmit.data.samples import Conversation, MediaRef, Message, SampleError

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


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise BenchmarkError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BenchmarkError(f"{path}: not valid JSON ({e})") from None


def read_jsonl(path: Path) -> list[tuple[int, Any]]:
    """(line number, record) of each non-empty line."""
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        out.append((number, json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise BenchmarkError(f"{path} line {number}: not valid JSON ({e})") from None
    except FileNotFoundError:
        raise BenchmarkError(f"{path} does not exist") from None
    return out


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
