"""Our shard writer, shard reader and caption metrics side by side with webdataset's and
pycocoevalcap's, on the same data in one process: the figures behind docs/data.md's
"Our code or a library's". Run: python -m tools.bench.libraries [--reps 3]."""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import os
import random
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import webdataset as wds

from mmit.data.shards import TarWriter, shard_members

CAPTION_WORDS = (
    "a man woman dog cat red blue green small large riding sitting on in the of with near two three "
    "horse table street park grass beach car bus white black and is are playing running holding ball"
).split()


def caption_corpus(n: int, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """``n`` predictions, each with 1-5 references: edits of a shared base caption, so that every
    n-gram order finds partial matches; lowercase words only, so they are already tokenized."""
    import random

    rng = random.Random(seed)

    def edit(words: list[str]) -> list[str]:
        words = list(words)
        for _ in range(rng.randint(0, 3)):
            i = rng.randrange(len(words) + 1)
            action = rng.choice(("insert", "drop", "replace", "swap"))
            if action == "insert" or len(words) < 2:
                words.insert(i, rng.choice(CAPTION_WORDS))
            elif action == "drop":
                del words[min(i, len(words) - 1)]
            elif action == "replace":
                words[min(i, len(words) - 1)] = rng.choice(CAPTION_WORDS)
            else:
                j = rng.randrange(len(words))
                words[min(i, len(words) - 1)], words[j] = words[j], words[min(i, len(words) - 1)]
        return words

    predictions, references = [], []
    for k in range(n):
        base = [rng.choice(CAPTION_WORDS) for _ in range(rng.randint(1, 14))]
        refs = [" ".join(edit(base)) for _ in range(rng.randint(1, 5))]
        # Most predictions paraphrase the image's own caption; some repeat words (CIDEr-D's clipping),
        # some are unrelated.
        if k % 10 == 0:
            prediction = [rng.choice(CAPTION_WORDS) for _ in range(rng.randint(1, 10))]
        elif k % 10 == 1:
            prediction = base + base[: rng.randint(1, len(base))]
        else:
            prediction = edit(base)
        predictions.append(" ".join(prediction))
        references.append(refs)
    return predictions, references


def _samples(n: int, media_bytes: int, seed: int = 0) -> list[tuple[str, bytes, bytes]]:
    """(key, json, media) for ``n`` shard samples: a small JSON record and one media file."""
    rng = random.Random(seed)
    return [
        (
            f"shard-000000-{i:06d}",
            b'{"conversations": [], "media": [{"ext": "jpg", "kind": "image"}]}',
            rng.randbytes(media_bytes),
        )
        for i in range(n)
    ]


def _ours(path: Path, samples) -> None:
    with TarWriter(path) as tar:
        for key, record, media in samples:
            tar.add(f"{key}.json", record)
            tar.add(f"{key}.0.jpg", media)


def _webdataset(path: Path, samples) -> None:
    # As close to ours as its options go: fixed mtime, no user names, GNU format. It still sorts a
    # sample's members by extension and writes in place (no temporary name).
    with wds.TarWriter(str(path), user="", group="", mode=0o644, mtime=0, encoder=False, format="GNU_FORMAT") as tar:
        for key, record, media in samples:
            tar.write({"__key__": key, "json": record, "0.jpg": media})


def _best_of(reps: int, fn) -> tuple[float, float]:
    """The best and the median time of ``reps`` calls, in seconds."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def bench_writers(tmp: Path, reps: int) -> None:
    for n, size in ((20000, 2_000), (2000, 60_000)):
        samples = _samples(n, size)
        mb = sum(len(r) + len(m) for _, r, m in samples) / 1e6
        for name, write in (("ours", _ours), ("webdataset.TarWriter", _webdataset)):
            path = tmp / f"{name}.tar"
            best, median = _best_of(reps, functools.partial(write, path, samples))
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
            again = tmp / f"{name}-again.tar"
            write(again, samples)
            same = path.read_bytes() == again.read_bytes()
            print(
                f"write {n} samples x {size} B ({mb:.0f} MB): {name:22s} {mb / median:7.0f} MB/s median"
                f" ({mb / best:.0f} best), sha256 {digest}, rerun identical: {same}"
            )
        print(
            f"  same bytes as each other: {(tmp / 'ours.tar').read_bytes() == (tmp / 'webdataset.TarWriter.tar').read_bytes()}"
        )


def _read_ours(path: str) -> int:
    return sum(1 for _, members in shard_members(path))


def _read_webdataset(path: str) -> int:
    dataset = wds.WebDataset([path], shardshuffle=False, empty_check=False)
    return sum(1 for _ in dataset)


def bench_readers(tmp: Path, reps: int) -> None:
    for n, size in ((20000, 2_000), (2000, 60_000)):
        path = tmp / "read.tar"
        _ours(path, _samples(n, size))
        mb = path.stat().st_size / 1e6
        for name, read in (("ours shard_members", _read_ours), ("webdataset.WebDataset", _read_webdataset)):
            assert read(str(path)) == n
            best, median = _best_of(reps, functools.partial(read, str(path)))
            print(
                f"read {n} samples x {size} B ({mb:.0f} MB): {name:22s} {n / median:8.0f} samples/s, {mb / median:5.0f} MB/s"
            )
    # A shard cut at a member boundary (a copy that stopped early): does the reader notice?
    _ours(path, _samples(100, 2_000))
    data = path.read_bytes()
    with tarfile.open(path) as tar:
        cut = tar.getmembers()[101].offset  # sample 50's media starts here: its .json stays, alone
    cut_path = tmp / "cut.tar"
    cut_path.write_bytes(data[:cut])
    ours = [m for _, m in shard_members(str(cut_path))]
    errors = [m.reason for m in ours if not isinstance(m, dict)]
    try:
        seen = _read_webdataset(str(cut_path))
        theirs = f"{seen} samples, no error"
    except Exception as err:  # noqa: BLE001
        theirs = f"raises {type(err).__name__}"
    print(f"shard cut after 50 of 100 samples: ours {len(ours) - len(errors)} samples + {errors}; webdataset {theirs}")


def _png(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.frombytes("RGB", (64, 64), random.Random(seed).randbytes(64 * 64 * 3)).save(buf, "PNG")
    return buf.getvalue()


def _conversation_shards(tmp: Path, shards: int, per_shard: int) -> list[str]:
    """Shards of real records (one question and answer about a 64x64 PNG), as the build writes them."""
    from mmit.data.samples import Conversation, MediaRef, Message
    from mmit.data.shards import encode_sample

    urls = []
    for s in range(shards):
        path = tmp / f"shard-{s:06d}.tar"
        with TarWriter(path) as tar:
            for i in range(per_shard):
                media = [MediaRef("image", "png", data=_png(s * per_shard + i))]
                conv = Conversation(
                    f"c{s}-{i}", [Message("user", "<image>\nWhat is it?"), Message("assistant", "noise")], {}, media
                )
                for name, data in encode_sample(f"{path.stem}-{i:06d}", [conv], media):
                    tar.add(name, data)
        urls.append(str(path))
    return urls


def _stream_webdataset(urls: list[str]):
    """The same job as ShardStream for one worker in webdataset's stages: seeded shard order and
    sample buffer, and our record checks (webdataset has no such checks of its own)."""
    from mmit.data.shards import decode_record

    def checked(sample):
        members = {k: v for k, v in sample.items() if not k.startswith("__")}
        return decode_record(f"{sample['__url__']}:{sample['__key__']}", members)[0][1]

    return wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.detshuffle(bufsize=len(urls), seed=0, epoch=0),
        wds.tarfile_to_samples(),
        wds.map(checked),
        wds.shuffle(1000, initial=1000, rng=random.Random(0)),
    )


def bench_streams(tmp: Path, reps: int) -> None:
    from mmit.data.shards import ShardStream

    urls = _conversation_shards(tmp, 8, 500)
    n = 8 * 500
    for name, make in (
        ("ours ShardStream", lambda: ShardStream(urls, shuffle_buffer=1000, seed=0)),
        ("webdataset pipeline", lambda: _stream_webdataset(urls)),
    ):
        assert sum(1 for _ in make()) == n
        best, median = _best_of(reps, lambda make=make: sum(1 for _ in make()))
        print(f"stream {n} checked conversations (64x64 PNG each): {name:20s} {n / median:6.0f} per s")
    # Resume mid-epoch: ours from (epoch, consumed); webdataset keeps no position to save.
    whole = [c.id for c in ShardStream(urls, 1000, seed=0)]
    stream = ShardStream(urls, 1000, seed=0)
    stream.load_position({"epoch": 0, "consumed": 1234})
    print(f"ShardStream resumed at 1234 gives the rest exactly: {[c.id for c in stream] == whole[1234:]}")


def bench_metrics(reps: int) -> None:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    from mmit.metrics import bleu, cider_d, rouge_l_corpus

    predictions, references = caption_corpus(5000)
    res = {i: [p] for i, p in enumerate(predictions)}
    gts = dict(enumerate(references))
    pairs = (
        ("BLEU-4", lambda: bleu(predictions, references, 4), lambda: Bleu(4).compute_score(gts, res, verbose=0)[0][3]),
        ("CIDEr-D", lambda: cider_d(predictions, references), lambda: Cider().compute_score(gts, res)[0]),
        ("ROUGE-L", lambda: rouge_l_corpus(predictions, references), lambda: Rouge().compute_score(gts, res)[0]),
    )
    for name, ours, theirs in pairs:
        diff = abs(ours() - theirs())
        t_ours, t_theirs = _best_of(reps, ours)[1], _best_of(reps, theirs)[1]
        print(
            f"{name} on 5000 captions: ours {t_ours * 1e3:.0f} ms, pycocoevalcap {t_theirs * 1e3:.0f} ms, |diff| {diff:.1e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench_writers(Path(tmp), args.reps)
        bench_readers(Path(tmp), args.reps)
        bench_streams(Path(tmp), args.reps)
    bench_metrics(args.reps)
    print(
        f"torchdata installed: {__import__('importlib').util.find_spec('torchdata') is not None}; cpu: {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()
