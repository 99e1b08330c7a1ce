"""Benchmark: dataset build throughput vs the raw decode rate of the same images.

    python tools/bench_build.py [--images 1200] [--workers 1 2] [--cases demo png640 photo]

Both are measured side by side in this one run, with the same number of processes, on the demo
recipe's scenes stored three ways:
- ``demo``: the demo's own 224 px PNGs;
- ``png640``: the same scenes drawn at 640 px, as PNG;
- ``photo``: COCO-like: 640x480 JPEGs (quality 90) with film grain, so each carries a photo's
  detail (about 110 KB, COCO's average is about 160 KB) and decodes at a photo's cost. Flat
  drawn shapes compress and decode far more cheaply than photos do.

Each repeat runs three things side by side: every image read and fully decoded once; every image
read and checked as the build checks it (``check_image``: JPEGs at 1/8 scale, which decodes all
of the compressed data); and the whole build: reading the annotations, templates, one check per
image, and tar writing (one shard record per image and set, holding every conversation about the
image). Goal: the build's overhead beyond decoding is at most 30%. Each overhead is given as the
best build over the best of the other side, and as the median over repeats of each build over
the run just before it. The overhead beyond the build's own check is the cost of everything but
the images' validation.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml
from omegaconf import OmegaConf
from PIL import Image

from bench.harness import timed
from bench.report import markdown_table
from mmit.build import build, compose_recipe
from mmit.data.demo.scenes import DemoSources, write_demo_scenes
from mmit.data.shards import check_image

CASES = {"demo": "224 px PNG (the demo)", "png640": "640 px PNG", "photo": "640x480 JPEG, photo-like"}


def decode(path: Path) -> None:
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        image.load()


def check(path: Path) -> None:
    check_image(path.read_bytes(), str(path))


def decode_seconds(images: list[Path], workers: int, each: Callable[[Path], None] = decode) -> float:
    """Wall time to read and fully decode (or ``check``) every image once, with ``workers`` processes."""

    def run() -> None:
        if workers == 1:
            for path in images:
                each(path)
        else:
            with ProcessPoolExecutor(workers) as pool:
                list(pool.map(each, images, chunksize=64))

    return timed(run)


def as_photos(scenes: DemoSources, root: Path) -> Path:
    """COCO-like copies of the scenes under ``root``: 640x480 JPEGs with grain; the annotation
    files name the ``.jpg`` files. Squeezing a square scene to 4:3 keeps every answer true."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    for path in sorted(scenes.images_dir.glob("*.png")):
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB").resize((640, 480), Image.Resampling.BICUBIC), dtype=np.int16)
        grain = rng.integers(-24, 25, pixels.shape, dtype=np.int16)
        photo = Image.fromarray((pixels + grain).clip(0, 255).astype(np.uint8))
        photo.save(root / "images" / f"{path.stem}.jpg", format="JPEG", quality=90)
    shutil.copytree(scenes.captions_file.parent, root / "annotations")
    captions = json.loads(scenes.captions_file.read_text())
    for image in captions["images"]:
        image.update(file_name=image["file_name"].replace(".png", ".jpg"), width=640, height=480)
    (root / "annotations" / scenes.captions_file.name).write_text(json.dumps(captions))
    return root / "images"


def recipe_for(scenes: DemoSources, size: int, out: Path, workers: int, photos: Path | None) -> str | Path:
    """The demo recipe over these scenes (as a resolved recipe file when the images are photos)."""
    cfg = compose_recipe(
        "demo_vqa",
        [
            f"out_dir={out}",
            f"prepare.n_images={scenes.n_images}",
            f"prepare.out_dir={scenes.root}",
            f"prepare.image_size={size}",
            f"num_workers={workers}",
        ],
    )
    if photos is None:
        return cfg
    resolved = OmegaConf.to_container(cfg, resolve=True)
    del resolved["prepare"]  # the scenes exist; the photos replace their images
    for source in resolved["sources"]:
        for key, value in source.items():
            if isinstance(value, str) and key != "_target_":
                source[key] = value.replace(str(scenes.root), str(photos.parent)).replace(".png", ".jpg")
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(resolved))
    return compose_recipe(str(path))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repeats; the best time of each counts")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mmit-bench-build-"))
    rows = []
    try:
        for case in args.cases:
            size = 224 if case == "demo" else 640
            scenes = write_demo_scenes(work / f"src-{size}", n_images=args.images, image_size=size)
            photos = as_photos(scenes, work / "photos") if case == "photo" else None
            images = sorted((photos or scenes.images_dir).glob("*.jpg" if photos else "*.png"))
            decode_seconds(images[:50], 1)  # warm the page cache and PIL's plugins
            for workers in args.workers:
                # Interleaved repeats, best of each: this machine's timings are noisy.
                floors, checks, builds = [], [], []
                for repeat in range(args.repeat):
                    floors.append(decode_seconds(images, workers))
                    checks.append(decode_seconds(images, workers, check))
                    out = work / f"out-{case}-{workers}-{repeat}"
                    cfg = recipe_for(scenes, size, out, workers, photos)
                    start = time.perf_counter()
                    manifest = build(cfg)
                    builds.append(time.perf_counter() - start)
                    # Deleted at once, so the kernel's write-back of these shards (~3.8x the image
                    # bytes) does not run during the next measurements.
                    shutil.rmtree(out)
                rows.append(
                    {
                        "case": case,
                        "workers": workers,
                        "images": len(images),
                        "mean_image_kb": sum(p.stat().st_size for p in images) / len(images) / 1e3,
                        "samples": sum(s["samples"] for s in manifest["sets"].values()),
                        "records": sum(s["records"] for s in manifest["sets"].values()),
                        "written_mb": sum(s["bytes"] for s in manifest["sets"].values()) / 1e6,
                        "decode_s": min(floors),
                        "check_s": min(checks),
                        "build_s": min(builds),
                        # Each build against the runs just before it: slow spells of a shared
                        # machine then weigh on both sides of a ratio.
                        "paired": statistics.median(b / d for b, d in zip(builds, floors)),
                        "paired_check": statistics.median(b / c for b, c in zip(builds, checks)),
                    }
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"demo_vqa recipe, {args.images} images, best of {args.repeat}"
    )
    columns = [
        "images",
        "processes",
        "mean file (KB)",
        "conversations",
        "shard records",
        "written (MB)",
        "decode all images once (s)",
        "check all images as the build does (s)",
        "build (s)",
        "overhead beyond decoding: best, paired median",
        "overhead beyond the build's own check: best, paired median",
    ]
    cells = [
        [
            CASES[r["case"]],
            str(r["workers"]),
            f"{r['mean_image_kb']:.0f}",
            str(r["samples"]),
            str(r["records"]),
            f"{r['written_mb']:.0f}",
            f"{r['decode_s']:.2f}",
            f"{r['check_s']:.2f}",
            f"{r['build_s']:.2f}",
            f"{r['build_s'] / r['decode_s'] - 1:.0%}, {r['paired'] - 1:.0%}",
            f"{r['build_s'] / r['check_s'] - 1:.0%}, {r['paired_check'] - 1:.0%}",
        ]
        for r in rows
    ]
    print("\n".join(markdown_table(columns, cells)))
    return rows
