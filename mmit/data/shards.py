"""Webdataset shards: written byte-for-byte reproducibly and atomically; streamed for training.

A shard sample is ``<key>.json`` plus ``<key>.<i>.<ext>`` for its i-th media file (image or
audio), stored as the original encoded bytes; only a long clip that the build split
(``audio.long_clips=split``) is stored as its WAV windows. The JSON holds ``conversations``
(each with its id, messages and meta) and ``media`` (kind and extension of each file): every
conversation of a sample is about the same media files, so a file that several conversations
use (a caption, VQA turns, held-out wordings) is stored once per set. Readers yield one
:class:`Conversation` per conversation. Shards hold messages, never token ids, so one shard set
serves any LLM.
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from webdataset import tariterators

from mmit.data.samples import Conversation, MediaRef, Message, SampleError

_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False)  # one encoder: json.dumps with options makes one a call


def encode_sample(key: str, convs: list[Conversation], media: list[MediaRef]) -> list[tuple[str, bytes]]:
    """The files of one shard sample, in a fixed order: conversations that all use ``media``."""
    record = {"conversations": [c.to_json() for c in convs], "media": [{"kind": m.kind, "ext": m.ext} for m in media]}
    files = [(f"{key}.json", _JSON.encode(record).encode("utf-8"))]
    files += [(f"{key}.{i}.{m.ext}", m.read()) for i, m in enumerate(media)]
    return files


def decode_sample(sample: dict) -> list[Conversation]:
    """A webdataset sample dict (``json`` + ``<i>.<ext>`` bytes) back into its Conversations, which
    share the media objects. A record without ``conversations`` is one conversation (mmit 0.1.0)."""
    record = json.loads(sample["json"])
    media = [MediaRef(m["kind"], m["ext"], data=sample[f"{i}.{m['ext']}"]) for i, m in enumerate(record["media"])]
    return [
        Conversation(c["id"], [Message(m["role"], m["content"]) for m in c["messages"]], c["meta"], list(media))
        for c in record.get("conversations", [record])
    ]


def _tarfile_header(name: str, size: int) -> bytes:
    """The GNU header ``tarfile`` writes for a member with mmit's fixed metadata (mtime 0, mode 644)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


def _member_template() -> tuple[bytes, int]:
    """The header of an empty, nameless member, and its checksum over everything but the name,
    size and checksum fields."""
    header = _tarfile_header("", 0)
    assert len(header) == tarfile.BLOCKSIZE
    blank = header[:124] + bytes(12) + header[136:148] + b" " * 8 + header[156:]
    return blank, sum(blank)


_TEMPLATE, _TEMPLATE_SUM = _member_template()
_ZEROS = bytes(tarfile.BLOCKSIZE)


def member_header(name: str, size: int) -> bytes:
    """The header ``TarInfo.tobuf`` writes for a member with mmit's fixed metadata, byte for byte;
    short names are patched into one template, as formatting every field costs ~50 us a member."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) >= 100 or size >= 8**11:  # a GNU long-name record, or a size in base-256: tarfile's own
        return _tarfile_header(name, size)
    size_field = b"%011o\0" % size
    checksum = _TEMPLATE_SUM + sum(raw) + sum(size_field)
    return b"".join(
        (raw, _TEMPLATE[len(raw) : 124], size_field, _TEMPLATE[136:148], b"%06o\0 " % checksum, _TEMPLATE[156:])
    )


class TarWriter:
    """A tar written member by member with fixed metadata (so equal inputs give equal bytes), under a
    temporary name, and renamed into place by ``close``; ``abort`` (or an exception inside ``with``)
    removes it. Members are written as they come, so no shard is ever held in memory whole.

    The bytes are those of ``tarfile`` in GNU format; headers and members are written straight to
    the file, which is several times faster than ``TarFile.addfile`` for many small members.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.out = open(self.tmp, "wb")
        self.written = 0

    def add(self, name: str, data: bytes) -> None:
        padding = -len(data) % tarfile.BLOCKSIZE
        # Three writes rather than one joined buffer: no copy of the (often large) media bytes.
        header = member_header(name, len(data))
        self.out.write(header)
        self.out.write(data)
        self.out.write(_ZEROS[:padding])
        self.written += len(header) + len(data) + padding

    def close(self) -> None:
        # The end: two zero blocks, then zeros up to a whole record, as tarfile closes an archive.
        end = self.written + 2 * tarfile.BLOCKSIZE
        self.out.write(bytes(2 * tarfile.BLOCKSIZE + (-end % tarfile.RECORDSIZE)))
        self.out.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.out.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> TarWriter:
        return self

    def __exit__(self, kind, *_) -> None:
        self.abort() if kind else self.close()


def write_tar(path: Path, files: list[tuple[str, bytes]]) -> None:
    """A whole tar at once (see :class:`TarWriter`)."""
    with TarWriter(path) as tar:
        for name, data in files:
            tar.add(name, data)


def check_image(data: bytes, where: str) -> None:
    """Raise SampleError unless the bytes decode as an image. All of the compressed data is decoded;
    a JPEG at 1/8 scale (``draft``): libjpeg still decodes every block's coefficients, which is
    where a truncated or broken file fails, and skips most of the inverse DCT, upsampling and
    colour conversion, which cannot fail: about a third of a photo's decode time saved."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "JPEG":
                image.draft(image.mode, (image.width // 8, image.height // 8))
            image.load()
    except Exception as err:  # PIL raises many types for broken files
        raise SampleError("undecodable_media", f"{where}: image does not decode ({err})") from err


def resize_image(data: bytes, max_side: int) -> tuple[bytes, str]:
    """Shrink so the longer side is ``max_side``; re-encode as PNG (lossless, deterministic)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
        if max(image.size) > max_side:
            scale = max_side / max(image.size)
            image = image.resize(
                (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BICUBIC
            )
        out = io.BytesIO()
        image.save(out, format="PNG", optimize=False)
    return out.getvalue(), "png"


def shard_urls(directory: str | Path) -> list[str]:
    urls = sorted(str(p) for p in Path(directory).glob("shard-*.tar"))
    if not urls:
        raise FileNotFoundError(f"no shard-*.tar files in {directory}")
    return urls


def read_shards(urls: list[str]) -> Iterator[Conversation]:
    """Every sample of the shards, in stored order."""
    for sample in tariterators.tarfile_samples([{"url": u} for u in urls]):
        yield from decode_sample(sample)


@dataclass
class StreamPosition:
    epoch: int = 0
    consumed: int = 0  # samples this stream has yielded in the epoch


class ShardStream(torch.utils.data.IterableDataset):
    """Shards -> shuffled conversations for one rank, split by rank and then by loader worker.

    Each epoch shuffles the shard order and a sample buffer with generators seeded by
    (seed, epoch), so every rank x worker sees a disjoint part and together they see every
    sample once. ``position`` / ``load_position`` resume mid-epoch without repeats or gaps
    (for a single-worker stream; each worker of a loader keeps its own position).
    """

    def __init__(self, urls: list[str], shuffle_buffer: int = 1000, seed: int = 0, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.urls, self.shuffle_buffer, self.seed = list(urls), shuffle_buffer, seed
        self.rank, self.world_size = rank, world_size
        self.position = StreamPosition()

    def set_epoch(self, epoch: int) -> None:
        self.position = StreamPosition(epoch, 0)

    def load_position(self, state: dict) -> None:
        self.position = StreamPosition(int(state["epoch"]), int(state["consumed"]))

    def state(self) -> dict:
        return {"epoch": self.position.epoch, "consumed": self.position.consumed}

    def _my_shards(self, worker: int, num_workers: int) -> list[str]:
        order = list(self.urls)
        random.Random(f"{self.seed}:{self.position.epoch}:shards").shuffle(order)
        slot, slots = self.rank * num_workers + worker, self.world_size * num_workers
        return order[slot::slots]

    def _shuffled(self, convs: Iterator[Conversation], worker: int) -> Iterator[Conversation]:
        rng = random.Random(f"{self.seed}:{self.position.epoch}:{self.rank}:{worker}:buffer")
        buffer: list[Conversation] = []
        for conv in convs:
            buffer.append(conv)
            if len(buffer) >= self.shuffle_buffer:
                yield buffer.pop(rng.randrange(len(buffer)))
        while buffer:
            yield buffer.pop(rng.randrange(len(buffer)))

    def __iter__(self) -> Iterator[Conversation]:
        info = torch.utils.data.get_worker_info()
        return self.iter_worker(*((info.id, info.num_workers) if info else (0, 1)))

    def iter_worker(self, worker: int, num_workers: int) -> Iterator[Conversation]:
        """The conversations of one loader worker of this rank. A shard sample's conversations enter
        the shuffle buffer one by one; they share the sample's media bytes, not copies."""
        shards = self._my_shards(worker, num_workers)
        samples = tariterators.tarfile_samples([{"url": u} for u in shards])
        convs = (conv for sample in samples for conv in decode_sample(sample))
        skip = self.position.consumed
        for i, conv in enumerate(self._shuffled(convs, worker)):
            if i < skip:
                continue  # already consumed before the resume
            self.position.consumed = i + 1
            yield conv
