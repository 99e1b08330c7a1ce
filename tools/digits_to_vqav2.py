"""scikit-learn's handwritten digits as a COCO + VQAv2 download: a real data check nobody here drew.

    python tools/digits_to_vqav2.py /data/digits [--size 64]
    python -m mmit.build coco_vqav2 coco_root=/data/digits out_dir=/data/shards/digits eval_fraction=0.2

The 1,797 8x8 digits of the UCI optical-recognition set (shipped inside scikit-learn, so no
download) are written as COCO's ``train2014`` JPEGs (dark ink on white, upscaled), five
captions per image in ``annotations/captions_train2014.json``, and three questions per image in
VQAv2's official files, with ten (agreeing) human answers, ``answer_type`` and
``question_type``: which digit it is, whether it is even, and whether it is a given digit (the
true one half of the time). The standard ``coco_vqav2`` recipe then builds it like real COCO.
"""

from __future__ import annotations

import argparse
import io
import json
import random
from pathlib import Path

from PIL import Image

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def digit_image(pixels, size: int) -> Image.Image:
    """An 8x8 grid of ink levels 0-16 as a size x size greyscale image, dark ink on white."""
    grey = bytes(255 - round(float(v) * 255 / 16) for v in pixels.reshape(-1))
    return Image.frombytes("L", (8, 8), grey).resize((size, size), Image.Resampling.BICUBIC).convert("RGB")


def questions_for(digit: int, rng: random.Random) -> list[tuple[str, str, str, str]]:
    """(question, answer, answer_type, question_type) about one digit."""
    asked = digit if rng.random() < 0.5 else rng.choice([d for d in range(10) if d != digit])
    return [
        ("What digit is shown in the image?", str(digit), "number", "what"),
        ("Is the digit in the image even?", "yes" if digit % 2 == 0 else "no", "yes/no", "is the"),
        (f"Is this the digit {asked}?", "yes" if asked == digit else "no", "yes/no", "is this"),
    ]


def captions_for(digit: int) -> list[str]:
    word = WORDS[digit]
    return [
        f"A handwritten digit {word}.",
        f"The number {digit} written by hand.",
        f"A small, blurry handwritten {word} on a white background.",
        f"A scanned handwritten numeral {digit}.",
        f"The digit {word}, drawn in dark ink.",
    ]


def convert(out_dir: Path, size: int = 64, seed: int = 0, limit: int | None = None) -> dict[str, int]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images_dir = out_dir / "train2014"
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    images, captions, questions, answers = [], [], [], []
    for index, (pixels, target) in enumerate(zip(digits.images[:limit], digits.target[:limit], strict=True)):
        image_id, digit = index + 1, int(target)
        name = f"COCO_train2014_{image_id:012d}.jpg"
        buffer = io.BytesIO()
        digit_image(pixels, size).save(buffer, format="JPEG", quality=95)
        (images_dir / name).write_bytes(buffer.getvalue())
        images.append({"id": image_id, "file_name": name, "width": size, "height": size})
        for k, caption in enumerate(captions_for(digit)):
            captions.append({"id": image_id * 10 + k, "image_id": image_id, "caption": caption})
        for k, (question, answer, answer_type, question_type) in enumerate(questions_for(digit, rng)):
            question_id = image_id * 10 + k
            questions.append({"image_id": image_id, "question": question, "question_id": question_id})
            answers.append(
                {
                    "question_id": question_id,
                    "image_id": image_id,
                    "question_type": question_type,
                    "answer_type": answer_type,
                    "multiple_choice_answer": answer,
                    "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": i} for i in range(1, 11)],
                }
            )
    info = {"description": "scikit-learn digits (UCI optical recognition) in the COCO / VQAv2 layout"}
    header = {"info": info, "license": {}, "data_type": "mscoco", "data_subtype": "train2014"}
    files = {
        out_dir / "annotations" / "captions_train2014.json": {
            "info": info,
            "licenses": [],
            "images": images,
            "annotations": captions,
        },
        out_dir / "v2_OpenEnded_mscoco_train2014_questions.json": {
            **header,
            "task_type": "Open-Ended",
            "questions": questions,
        },
        out_dir / "v2_mscoco_train2014_annotations.json": {**header, "annotations": answers},
    }
    for path, content in files.items():
        path.write_text(json.dumps(content))
    counts = {"images": len(images), "captions": len(captions), "questions": len(questions)}
    print(f"wrote {counts} to {out_dir}")
    return counts


def main(argv: list[str] | None = None) -> dict[str, int]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--size", type=int, default=64, help="image side in pixels (the digits are 8x8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="only the first N digits (of 1,797)")
    args = p.parse_args(argv)
    return convert(args.out_dir, args.size, args.seed, args.limit)


if __name__ == "__main__":
    main()
