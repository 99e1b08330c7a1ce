"""Reading conversation files (JSONL, a JSON list such as Alpaca's, or shard folders) into samples.

Every record goes through the same checks, whatever holds it: field types, roles, contents, one
placeholder per media file, and media that stay inside their data folder and decode within the
pixel limit. Bad records follow ``on_error``: ``raise`` stops with the file, line (or shard and
sample key) and reason; ``skip`` drops the record and counts it under its reason.

A JSONL or JSON record may name media files (``image`` / ``images``, ``audio`` / ``audios``),
relative to its file's folder or to the config's ``images_dir`` (as LLaVA's JSON names them); a
placeholder (``<image>``, ``<audio>``) is added to the first user turn for each file the text does
not place itself.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mmit.cli import some
from mmit.data.samples import (
    BAD_JSON,
    PLACEHOLDERS,
    Conversation,
    Message,
    SampleError,
    check_placeholders,
    conversation_from_record,
    json_line,
    json_problem,
)

ON_ERROR = ("raise", "skip")


class DataFileError(ValueError):
    """A record in a data file is unusable and the policy says raise."""


class DataFile(str):
    """A data file's path that also knows the folder its records' media paths are relative to
    (``media_root``; None: the file's own folder). It is a str, so it reads, prints and serialises as
    the path wherever a path is expected."""

    media_root: str | None = None

    def __new__(cls, path: str | Path, media_root: str | Path | None = None) -> DataFile:
        file = super().__new__(cls, str(path))
        file.media_root = None if media_root is None else str(Path(media_root).expanduser().resolve())
        return file


@dataclass
class DataFiles:
    """A data config's training files and its named evaluation sets.

    ``images_dir``: the folder that the media paths of JSON / JSONL records are relative to (LLaVA's
    JSON names ``coco/train2017/...`` under one image root), for every file here; None: each file's
    own folder. A single path may stand for a list of one.
    """

    train: list[str]
    eval: dict[str, list[str]] | None = field(default_factory=dict)
    images_dir: str | None = None

    def __post_init__(self) -> None:
        from omegaconf import OmegaConf

        self.train, self.eval = (
            OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for v in (self.train, self.eval)
        )
        if self.images_dir is not None and not Path(self.images_dir).expanduser().is_dir():
            raise FileNotFoundError(f"data.source.images_dir: {self.images_dir} is not a folder")
        self.train = self._files("data.source.train", self.train)
        if self.eval is not None and not isinstance(self.eval, dict):
            raise ValueError(
                f"data.source.eval must map set names to files, e.g. {{heldout: [val.jsonl]}}, not {self.eval!r}"
            )
        self.eval = {
            str(name): self._files(f"data.source.eval.{name}", paths) for name, paths in (self.eval or {}).items()
        }

    def _files(self, key: str, paths) -> list[str]:
        if isinstance(paths, str | Path):
            paths = [paths]
        if not isinstance(paths, list | tuple) or not all(isinstance(p, str | Path) for p in paths):
            raise ValueError(f"{key} must be a list of files or shard folders, not {paths!r}")
        if not paths:
            raise ValueError(f"{key} is an empty list: name the JSON / JSONL files or shard folders to read")
        for path in map(Path, paths):
            # a folder of JSON files, not of shards: data=files reads the files it is given, listed
            listed = sorted(p.name for p in path.glob("*.json*")) if path.is_dir() else []
            if listed and not any(path.glob("**/shard-*.tar")):
                raise ValueError(
                    f"{key}: {path} is a folder of data files ({some(listed)}), not of shards; list the files themselves"
                )
        return [DataFile(p, self.images_dir) for p in paths]


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
        except BAD_JSON as err:
            lines = raw.lstrip().startswith(b"{") and "Extra data" in str(err)  # one record a line: JSONL
            hint = "; a .json file is read as one JSON list: name a file of one record a line .jsonl" if lines else ""
            raise DataFileError(f"{path}{json_line(err)}: bad JSON ({json_problem(err)}){hint}") from err
        if not isinstance(records, list):
            raise DataFileError(f"{path}: expected a JSON list of records")
        for i, record in enumerate(records):
            yield f"{path}[{i}]", record
        return
    yield from jsonl_records(path)


def jsonl_records(path: str | Path) -> Iterator[tuple[str, object]]:
    """(``file:line``, record) per non-empty line, read line by line; undecodable lines come as SampleError."""
    with open(path, "rb") as lines:
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            location = f"{path}:{lineno}"
            try:
                yield location, json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                yield location, SampleError("not_utf8", "text is not UTF-8")
            except BAD_JSON as err:
                yield location, SampleError("bad_json", f"bad JSON ({json_problem(err)})")


def with_media(
    conv: Conversation, record: dict, root: Path, max_pixels: int | None = None, allow_outside_root: bool = False
) -> Conversation:
    """The conversation with the media files its record names: inside ``root`` (unless
    ``allow_outside_root``), decodable, each with a placeholder (missing ones go before the first
    user turn's text)."""
    from mmit.data.media import media_file, media_names
    from mmit.data.shards import check_media_bytes

    media = [
        media_file(kind, root, name, allow_outside_root) for kind in PLACEHOLDERS for name in media_names(record, kind)
    ]
    if not media:  # a placeholder with no file is refused here, where the file and line are known
        return check_placeholders(conv)
    for ref in media:
        check_media_bytes(ref.kind, ref.read(), ref.path, max_pixels)
    messages = list(conv.messages)
    missing = []
    for kind, placeholder in PLACEHOLDERS.items():
        given = sum(m.content.count(placeholder) for m in messages)
        missing += [placeholder] * max(0, sum(r.kind == kind for r in media) - given)
    if missing:
        first = next((i for i, m in enumerate(messages) if m.role == "user"), None)
        if first is None:
            raise SampleError("media_mismatch", f"sample {conv.id!r}: media files but no user turn to place them in")
        messages[first] = Message("user", "\n".join([*missing, messages[first].content]))
    return check_placeholders(Conversation(conv.id, messages, conv.meta, media))


def read_conversations(
    files: Iterable[str | Path],
    on_error: str = "raise",
    skipped: Counter | None = None,
    media_kinds: Collection[str] | None = None,
    max_pixels: int | None = None,
    allow_outside_root: bool = False,
) -> list[Conversation]:
    """Read every record of ``files``; skipped records are counted into ``skipped``.

    ``media_kinds``: the media the model can take (None: any). A record with media of another
    kind is an error (``no_encoder``) rather than silently losing its images or clips.
    ``max_pixels``: the image size limit (default: ``mmit.data.media.max_pixels()``).
    ``allow_outside_root``: media paths of JSONL / JSON records may leave the file's folder.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")
    skipped = skipped if skipped is not None else Counter()
    samples, seen_ids = [], set()
    for file in files:
        path = Path(file)
        if not path.exists():
            raise FileNotFoundError(f"data file {path} does not exist")
        if not path.is_dir() and not path.is_file():  # a device or a pipe (/dev/zero) would never end
            raise DataFileError(f"{path}: not a regular file or a folder of shards")
        if path.is_dir():  # a folder of shards written by `python -m mmit.build`
            from mmit.data.shards import read_shard_items, shard_urls

            items = read_shard_items(shard_urls(path), max_pixels=max_pixels)
        else:
            root = Path(file.media_root) if getattr(file, "media_root", None) else None
            items = _file_items(path, max_pixels, allow_outside_root, root)
        empty = True
        for location, item in items:
            empty = False
            try:
                if isinstance(item, SampleError):
                    raise item
                if item.id in seen_ids:
                    raise SampleError("duplicate_id", f"sample {item.id!r} appears twice")
                extra = {m.kind for m in item.media} - set(media_kinds if media_kinds is not None else PLACEHOLDERS)
                if extra:
                    kinds = ", ".join(sorted(extra))
                    raise SampleError(
                        "no_encoder",
                        f"sample {item.id!r} has {kinds} media but the model has no {kinds} encoder "
                        "(add one, e.g. vision_encoder=..., or remove the field; data.on_error=skip skips such samples)",
                    )
            except SampleError as err:
                if on_error == "raise":
                    message = str(err)
                    raise DataFileError(message if message.startswith(location) else f"{location}: {message}") from err
                skipped[err.reason] += 1
                continue
            seen_ids.add(item.id)
            item.origin = location
            samples.append(item)
        if empty:
            raise DataFileError(f"{path}: holds no records")
    return samples


def _file_items(
    path: Path, max_pixels: int | None, allow_outside_root: bool, media_root: Path | None = None
) -> Iterator[tuple[str, Conversation | SampleError]]:
    """(location, conversation or its error) per record of a JSONL or JSON file; media paths are
    relative to ``media_root`` (default: the file's folder)."""
    root = path.parent if media_root is None else media_root
    for location, record in _records(path):
        try:
            if isinstance(record, SampleError):
                raise record
            conv = conversation_from_record(record, default_id=location)
            yield location, with_media(conv, record, root, max_pixels, allow_outside_root)
        except SampleError as err:
            if err.reason == "missing_media" and media_root is None:
                err = SampleError(
                    err.reason,
                    f"{err} (media paths are relative to the data file's folder; if they are relative to another "
                    "folder, as LLaVA's JSON is to its image root, name it: data.source.images_dir=FOLDER in training, "
                    "--images-dir FOLDER in mmit.eval)",
                )
            yield location, err
