"""Benchmark: dataset build throughput vs the raw decode rate of the same images.

    python tools/bench_build.py [--images 1200] [--workers 1 2]

Both are measured in this one run on the demo recipe's images: first every image is decoded
once (PIL open + load: the floor any builder pays to validate its inputs), then the whole
build runs (read annotations, templates, decode check, tar writing). The report is the ratio
of the two rates; the goal is a build overhead beyond decoding of at most 30%.
"""

from __future__ import annotations

import argparse
import io
import platform
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

from mmit.build import build, compose_recipe
from mmit.data.demo_scenes import write_demo_scenes
from mmit.data.shards import read_shards, shard_urls


def decode_rate(images: list[Path]) -> float:
    start = time.perf_counter()
    for path in images:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            image.load()
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mmit-bench-build-"))
    try:
        sources = write_demo_scenes(work / "src", n_images=args.images)
        images = sorted(sources.images_dir.glob("*.png"))
        decode_rate(images[:50])  # warm the page cache and PIL's plugins
        rows = []
        for workers in args.workers:
            floor = decode_rate(images)
            out = work / f"out-{workers}"
            cfg = compose_recipe(
                "demo_vqa",
                [
                    f"out_dir={out}",
                    f"prepare.n_images={args.images}",
                    f"prepare.out_dir={sources.root}",
                    f"num_workers={workers}",
                ],
            )
            start = time.perf_counter()
            manifest = build(cfg)
            seconds = time.perf_counter() - start
            decoded = sum(len(c.media) for name in manifest["sets"] for c in read_shards(shard_urls(out / name)))
            rate = decoded / seconds
            rows.append((workers, floor, decoded, seconds, rate, rate / floor))
        print(
            f"machine: {platform.processor() or platform.machine()}, {platform.python_version()}, "
            f"{args.images} demo images (224x224 PNG)"
        )
        print(
            "| build workers | raw decode (images/s, 1 process) | images in shards | build s | "
            "build images/s | build / decode |"
        )
        print("|---|---|---|---|---|---|")
        for workers, floor, decoded, seconds, rate, ratio in rows:
            print(f"| {workers} | {floor:.0f} | {decoded} | {seconds:.2f} | {rate:.0f} | {ratio:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
