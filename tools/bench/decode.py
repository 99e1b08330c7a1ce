"""Benchmark: media decoded and preprocessed for training, images/s: the prefetch thread vs decode workers.

    python tools/bench_decode.py [--images 256] [--batch 8] [--size 336] [--workers 1 2 4] [--reps 3] [--step-ms 0 300]

The training stream's own code (``BatchStream`` -> ``Collator`` -> ``Prefetch``, as
``mmit.factory.build_training_batches`` builds it) over photo-like 640x480 JPEGs (quality 90, with
grain: a photo's detail and decode cost), each preprocessed as a CLIP tower of ``--size`` px takes it
(open_clip's evaluation transform: bicubic resize, centre crop, normalise). Sides, alternated every
repetition: ``thread`` (``trainer.decode_workers=0``: the prefetch thread decodes) and ``workers=N``
(``trainer.decode_workers=N``). Each side reads one epoch; images/s is images over its wall time.
``--step-ms``: the consumer also computes that long per batch (matmuls, all torch threads), as a
training step would, so the figure says what decoding costs beside a step; 0 is the data path alone.
Worker start-up (a fork per worker, once per run) is timed apart.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.harness import alternate, machine, median, spread
from bench.report import markdown_table
from mmit.data.collate import Collator, decode_pool
from mmit.data.loader import BatchStream, Prefetch
from mmit.data.samples import IGNORE_INDEX, MediaRef, TokenizedSample


def photos(n: int, seed: int = 0) -> list[bytes]:
    """``n`` 640x480 JPEGs: smooth colour fields with film grain."""
    rng = np.random.default_rng(seed)
    out = []
    y, x = np.mgrid[0:480, 0:640].astype(np.float32)
    for _ in range(n):
        a, b, c = rng.uniform(0.002, 0.02, 3)
        base = np.stack([128 + 100 * np.sin(a * x + b * y + k) for k in rng.uniform(0, 6, 3)], axis=-1)
        pixels = (base + rng.integers(-24, 25, base.shape) + 20 * np.cos(c * x * y / 640)[..., None]).clip(0, 255)
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def samples(images: list[bytes]) -> list[TokenizedSample]:
    return [
        TokenizedSample(f"s{i}", [1] * 16, [IGNORE_INDEX] * 15 + [1], [MediaRef("image", "jpg", data=data)])
        for i, data in enumerate(images)
    ]


def clip_preprocess(size: int):
    import open_clip

    transform = open_clip.image_transform(size, is_train=False)
    return lambda images: torch.stack([transform(im) for im in images])


def fake_step(ms: float) -> None:
    """About ``ms`` milliseconds of matmuls on every torch thread, as a training step keeps the cores busy."""
    if ms <= 0:
        return
    a = torch.randn(512, 512)
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        a = torch.tanh(a @ a)


def epoch_seconds(data: list[TokenizedSample], collate: Collator, batch: int, depth: int, step_ms: float) -> float:
    stream = Prefetch(BatchStream(data, batch, collate, seed=0, shuffle=False), depth)
    start = time.perf_counter()
    for _ in range(-(-len(data) // batch)):
        next(stream)
        fake_step(step_ms)
    seconds = time.perf_counter() - start
    stream.close()
    return seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=336)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, os.cpu_count() or 2])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--prefetch", type=int, default=2, help="trainer.prefetch (workers use max(prefetch, N))")
    parser.add_argument("--step-ms", type=float, nargs="+", default=[0.0])
    parser.add_argument("--json", type=Path, default=Path("docs/bench/decode.json"))
    args = parser.parse_args(argv)

    data = samples(photos(args.images))
    preprocess = {"image": clip_preprocess(args.size)}
    plain = Collator(0, preprocess=preprocess)
    pools, startup = {}, {}
    for n in sorted(set(args.workers)):
        start = time.perf_counter()
        pools[n] = decode_pool(preprocess, n)
        startup[n] = time.perf_counter() - start
    results = {"machine": machine("cpu"), "args": {k: str(v) for k, v in vars(args).items()}, "startup_s": startup}
    rows = []
    try:
        for step_ms in args.step_ms:
            sides = {"thread": lambda s=step_ms: epoch_seconds(data, plain, args.batch, args.prefetch, s)}
            for n, pool in pools.items():
                depth = max(args.prefetch, n)
                sides[f"workers={n}"] = lambda p=pool, d=depth, s=step_ms: epoch_seconds(
                    data, plain.with_pool(p), args.batch, d, s
                )
            for fn in sides.values():  # warm-up: first decodes, the workers' imports
                fn()
            seconds = alternate(sides, args.reps, label=f"step {step_ms:g} ms")
            rates = {name: [args.images / s for s in values] for name, values in seconds.items()}
            base = median(rates["thread"])
            results[f"step_ms={step_ms:g}"] = rates
            for name, values in rates.items():
                rows.append(
                    [f"{step_ms:g}", name, f"{median(values):.1f}", spread(values), f"{median(values) / base:.2f}x"]
                )
    finally:
        for pool in pools.values():
            pool.shutdown()
    table = markdown_table(
        ["step ms", "decoding in", "images/s (median)", "range", "vs thread"], rows, [False, False, True, False, True]
    )
    print("\n".join(table))
    print("worker start-up:", ", ".join(f"{n}: {s:.2f} s" for n, s in startup.items()))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    return results
