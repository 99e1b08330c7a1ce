"""Reading conversation files (JSONL, a JSON list such as Alpaca's, or shard folders) into samples.

Bad records follow ``on_error``: ``raise`` stops with the file, line and reason; ``skip``
drops the record and counts it under its reason.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mmit.data.samples import Conversation, SampleError, conversation_from_record

ON_ERROR = ("raise", "skip")


class DataFileError(ValueError):
    """A record in a data file is unusable and the policy says raise."""


@dataclass
class DataFiles:
    """A data config's training files and its named evaluation sets."""

    train: list[str]
    eval: dict[str, list[str]] = field(default_factory=dict)


def _records(path: Path) -> Iterator[tuple[str, object]]:
    """Yield (location, record) pairs; a location is ``file:line`` or ``file[index]``.

    A record that cannot be decoded is yielded as a SampleError so the policy decides.
    """
    raw = path.read_bytes()
    if path.suffix == ".json":
        try:
            records = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            line = raw[: err.start].count(b"\n") + 1
            raise DataFileError(f"{path}:{line}: text is not UTF-8") from err
        except json.JSONDecodeError as err:
            raise DataFileError(f"{path}:{err.lineno}: bad JSON ({err.msg})") from err
        if not isinstance(records, list):
            raise DataFileError(f"{path}: expected a JSON list of records")
        for i, record in enumerate(records):
            yield f"{path}[{i}]", record
        return
    yield from jsonl_records(path)


def jsonl_records(path: str | Path) -> Iterator[tuple[str, object]]:
    """(``file:line``, record) per non-empty line; undecodable lines come as SampleError."""
    for lineno, line in enumerate(Path(path).read_bytes().split(b"\n"), start=1):
        if not line.strip():
            continue
        location = f"{path}:{lineno}"
        try:
            yield location, json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            yield location, SampleError("not_utf8", "text is not UTF-8")
        except json.JSONDecodeError as err:
            yield location, SampleError("bad_json", f"bad JSON ({err.msg})")


def read_conversations(
    files: Iterable[str | Path], on_error: str = "raise", skipped: Counter | None = None
) -> list[Conversation]:
    """Read every record of ``files``; skipped records are counted into ``skipped``."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")
    skipped = skipped if skipped is not None else Counter()
    samples, seen_ids = [], set()
    for file in files:
        path = Path(file)
        if not path.exists():
            raise FileNotFoundError(f"data file {path} does not exist")
        if path.is_dir():  # a folder of shards written by `python -m mmit.build`
            from mmit.data.shards import read_shards, shard_urls

            for sample in read_shards(shard_urls(path)):
                if sample.id in seen_ids:
                    raise DataFileError(f"{path}: sample {sample.id!r} appears twice")
                seen_ids.add(sample.id)
                samples.append(sample)
            continue
        for location, record in _records(path):
            try:
                if isinstance(record, SampleError):
                    raise record
                sample = conversation_from_record(record, default_id=location)
                if sample.id in seen_ids:
                    raise SampleError("duplicate_id", f"sample {sample.id!r} appears twice")
            except SampleError as err:
                if on_error == "raise":
                    raise DataFileError(f"{location}: {err}") from err
                skipped[err.reason] += 1
                continue
            seen_ids.add(sample.id)
            samples.append(sample)
    return samples
