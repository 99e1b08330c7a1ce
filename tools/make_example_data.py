"""Write a small example of "your own data": a folder of images and LLaVA-style JSON files about them.

    python tools/make_example_data.py my_data [--images 60]

my_data/images/0001.png ...   drawn pictures of one coloured shape each
my_data/train.json            LLaVA conversation records ({"id", "image", "conversations"}), image paths
my_data/val.json              relative to my_data/images (as LLaVA's JSON is relative to its image root)

docs/own_data.md trains, evaluates and exports a model on it; replace it with your own folder.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (230, 200, 40)}
SHAPES = ("circle", "square", "triangle")


def draw(colour: str, shape: str, rng: random.Random, size: int = 96) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    canvas = ImageDraw.Draw(image)
    side = rng.randint(size // 3, size // 2)
    x, y = rng.randint(4, size - side - 4), rng.randint(4, size - side - 4)
    box = (x, y, x + side, y + side)
    if shape == "circle":
        canvas.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        canvas.rectangle(box, fill=COLOURS[colour])
    else:
        canvas.polygon([(x, y + side), (x + side, y + side), (x + side // 2, y)], fill=COLOURS[colour])
    return image


def record(index: int, colour: str, shape: str, name: str) -> dict:
    return {
        "id": f"example-{index:04d}",
        "image": name,
        "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the shape?"},
            {"from": "gpt", "value": colour},
            {"from": "human", "value": "And what shape is it?"},
            {"from": "gpt", "value": f"It is a {shape}."},
        ],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder to write (created)")
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(1, args.images + 1):
        colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
        name = f"{i:04d}.png"
        draw(colour, shape, rng).save(args.out / "images" / name)
        records.append(record(i, colour, shape, name))
    held_out = max(1, len(records) // 5)
    (args.out / "train.json").write_text(json.dumps(records[:-held_out], indent=1) + "\n")
    (args.out / "val.json").write_text(json.dumps(records[-held_out:], indent=1) + "\n")
    print(
        f"wrote {len(records)} images to {args.out / 'images'}, {len(records) - held_out} records to "
        f"{args.out / 'train.json'} and {held_out} to {args.out / 'val.json'}"
    )


if __name__ == "__main__":
    main()
