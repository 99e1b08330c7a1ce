"""Benchmark: dataset build throughput vs the raw decode rate of the same images.

    python tools/bench_build.py [--images 1200] [--workers 1 2]

Both are measured side by side in this one run, with the same number of processes, on the demo
recipe's images at two sizes (the demo's 224 px and COCO-like 640 px): first every image is
read and fully decoded once (the floor any builder pays to validate its inputs), then the whole
build runs (read annotations, templates, one decode check per image, tar writing for every
sample that uses it). Goal: the build's overhead beyond decoding is at most 30%.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

from mmit.build import build, compose_recipe
from mmit.data.demo_scenes import write_demo_scenes


def decode(path: Path) -> None:
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        image.load()


def decode_seconds(images: list[Path], workers: int) -> float:
    """Wall time to read and fully decode every image once, with ``workers`` processes."""
    start = time.perf_counter()
    if workers == 1:
        for path in images:
            decode(path)
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(decode, images, chunksize=64))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--image-size", type=int, nargs="+", default=[224, 640])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repeats; the best time of each counts")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mmit-bench-build-"))
    rows = []
    try:
        for size in args.image_size:
            sources = write_demo_scenes(work / f"src-{size}", n_images=args.images, image_size=size)
            images = sorted(sources.images_dir.glob("*.png"))
            decode_seconds(images[:50], 1)  # warm the page cache and PIL's plugins
            for workers in args.workers:
                # Interleaved repeats, best of each: this machine's timings are noisy.
                floors, builds = [], []
                for repeat in range(args.repeat):
                    floors.append(decode_seconds(images, workers))
                    out = work / f"out-{size}-{workers}-{repeat}"
                    cfg = compose_recipe(
                        "demo_vqa",
                        [
                            f"out_dir={out}",
                            f"prepare.n_images={args.images}",
                            f"prepare.out_dir={sources.root}",
                            f"prepare.image_size={size}",
                            f"num_workers={workers}",
                        ],
                    )
                    start = time.perf_counter()
                    manifest = build(cfg)
                    builds.append(time.perf_counter() - start)
                samples = sum(s["samples"] for s in manifest["sets"].values())
                rows.append((size, workers, len(images), samples, min(floors), min(builds)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"demo_vqa recipe, {args.images} PNG images"
    )
    print(
        "| image side | processes | images | samples written | decode all images once (s) | build (s) | "
        "build / decode time | overhead beyond decoding |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for size, workers, n, samples, floor, seconds in rows:
        print(
            f"| {size} | {workers} | {n} | {samples} | {floor:.2f} | {seconds:.2f} | {seconds / floor:.2f} | "
            f"{100 * (seconds - floor) / floor:.0f}% |"
        )


if __name__ == "__main__":
    main()
