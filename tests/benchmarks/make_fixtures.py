"""Writes the tiny benchmark fixtures under tests/benchmarks/fixtures/, each in its benchmark's
official layout with 2x2 images (run once; the files are committed):

    .venv/bin/python tests/benchmarks/make_fixtures.py
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

from PIL import Image

FIXTURES = Path(__file__).resolve().parent / "fixtures"
_colour = [0]


def image_bytes(fmt: str) -> bytes:
    _colour[0] += 37
    out = io.BytesIO()
    Image.new("RGB", (2, 2), (_colour[0] % 256, 90, 160)).save(out, fmt)
    return out.getvalue()


def write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes("PNG" if path.suffix == ".png" else "JPEG"))


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def vqav2(root: Path) -> None:
    questions = [
        {"image_id": 42, "question": "What color is the bus?", "question_id": 42001},
        {"image_id": 42, "question": "How many dogs are there?", "question_id": 42002},
        {"image_id": 73, "question": "Is it raining?", "question_id": 73000},
    ]
    answers = {
        42001: ("other", "what color is the", ["red"] * 8 + ["dark red"] * 2),
        42002: ("number", "how many", ["2"] * 2 + ["3"] * 8),
        73000: ("yes/no", "is it", ["yes"] * 10),
    }
    annotations = [
        {
            "question_id": q["question_id"],
            "image_id": q["image_id"],
            "answer_type": answers[q["question_id"]][0],
            "question_type": answers[q["question_id"]][1],
            "multiple_choice_answer": max(answers[q["question_id"]][2], key=answers[q["question_id"]][2].count),
            "answers": [
                {"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                for i, a in enumerate(answers[q["question_id"]][2])
            ],
        }
        for q in questions
    ]
    info = {"description": "fixture", "version": "2.0"}
    write_json(root / "v2_OpenEnded_mscoco_val2014_questions.json", {"info": info, "questions": questions})
    write_json(root / "v2_mscoco_val2014_annotations.json", {"info": info, "annotations": annotations})
    for image_id in (42, 73):
        write_image(root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg")
    test = [
        {"image_id": 1, "question": "What is the man holding?", "question_id": 1000},
        {"image_id": 1, "question": "How many people are there?", "question_id": 1001},
    ]
    write_json(root / "v2_OpenEnded_mscoco_test-dev2015_questions.json", {"info": info, "questions": test})
    extra = {"image_id": 2, "question": "Is it sunny?", "question_id": 2000}
    write_json(root / "v2_OpenEnded_mscoco_test2015_questions.json", {"info": info, "questions": [*test, extra]})
    write_image(root / "test2015" / f"COCO_test2015_{1:012d}.jpg")


def gqa(root: Path) -> None:
    def question(image, text, answer, structural, semantic):
        types = {"structural": structural, "semantic": semantic, "detailed": semantic}
        full = f"The answer is {answer}."
        return {
            "imageId": image,
            "question": text,
            "answer": answer,
            "fullAnswer": full,
            "isBalanced": True,
            "types": types,
        }

    questions = {
        "20968379": question("n161313", "Is there a bus to the left of the car?", "no", "verify", "rel"),
        "20968380": question("n161313", "What piece of furniture is white?", "table", "query", "obj"),
        "201307251": question("n235859", "Is the cup on the left or on the right?", "left", "choose", "rel"),
    }
    write_json(root / "testdev_balanced_questions.json", questions)
    for image in ("n161313", "n235859"):
        write_image(root / "images" / f"{image}.jpg")


def textvqa(root: Path) -> None:
    def question(qid, image, text, answers):
        return {
            "question": text,
            "image_id": image,
            "image_classes": ["Camera"],
            "image_width": 2,
            "image_height": 2,
            "answers": answers,
            "question_tokens": text.rstrip("?").split(),
            "question_id": qid,
            "set_name": "val",
        }

    data = [
        question(34602, "003a8ae2ef43b901", "what is the brand of this camera?", ["Dakota"] * 10),
        question(34603, "00685bc495504d61", "what does the SIGN say?", ["stop"] * 3 + ["stop sign"] * 7),
    ]
    doc = {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data}
    write_json(root / "TextVQA_0.5.1_val.json", doc)
    for q in data:
        write_image(root / "train_images" / f"{q['image_id']}.jpg")


def pope(root: Path) -> None:
    images = ("COCO_val2014_000000310196.jpg", "COCO_val2014_000000210789.jpg")
    splits = {
        "random": [("snowboard", "yes"), ("car", "no"), ("person", "yes"), ("giraffe", "no")],
        "popular": [("person", "yes"), ("chair", "no")],
        "adversarial": [("person", "yes"), ("skis", "no")],
    }
    for split, questions in splits.items():
        lines = [
            json.dumps(
                {
                    "question_id": k + 1,
                    "image": images[k % 2],
                    "text": f"Is there a {thing} in the image?",
                    "label": label,
                }
            )
            for k, (thing, label) in enumerate(questions)
        ]
        (root / f"coco_pope_{split}.json").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for name in images:
        write_image(root / "val2014" / name)


def scienceqa(root: Path) -> None:
    def problem(question, choices, answer, hint, image, split, subject, grade):
        return {
            "question": question,
            "choices": choices,
            "answer": answer,
            "hint": hint,
            "image": image,
            "task": "closed choice",
            "grade": grade,
            "subject": subject,
            "topic": "geography",
            "category": "Geography",
            "skill": "Read a map",
            "lecture": "",
            "solution": "",
            "split": split,
        }

    problems = {
        "5": problem(
            "Which type of ecosystem is shown?",
            ["taiga", "tundra", "desert"],
            1,
            "Figure: Barrow.",
            "image.png",
            "test",
            "natural science",
            "grade4",
        ),
        "8": problem(
            "Which state is highlighted?", ["Ohio", "Iowa"], 0, "", "image.png", "test", "social science", "grade8"
        ),
        "9": problem("Which word is a noun?", ["run", "cat"], 1, "", None, "test", "language science", "grade2"),
        "12": problem("Which is a mammal?", ["bat", "eel"], 0, "", "image.png", "train", "natural science", "grade3"),
    }
    write_json(root / "problems.json", problems)
    write_json(root / "pid_splits.json", {"train": ["12"], "val": [], "test": ["5", "8", "9"]})
    for pid in ("5", "8"):
        write_image(root / "images" / "test" / pid / "image.png")
    write_image(root / "images" / "train" / "12" / "image.png")


MME_SPLIT_LAYOUT = ("artwork", "celebrity", "landmark", "posters", "scene")
MME_SUBTASKS = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning",
)


def mme(root: Path) -> None:
    for subtask in MME_SUBTASKS:
        stems = ["0001", "0002"] if subtask in ("count", "code_reasoning") else ["0001"]
        ext = ".jpg" if subtask in ("artwork", "count") else ".png"
        for stem in stems:
            lines = [
                f"Is this question {stem} of {subtask} true? Please answer yes or no.\tYes",
                f"Is this question {stem} of {subtask} false? Please answer yes or no.\tNo",
            ]
            if subtask in MME_SPLIT_LAYOUT:
                text, image = root / subtask / "questions_answers_YN", root / subtask / "images"
            else:
                text = image = root / subtask
            text.mkdir(parents=True, exist_ok=True)
            (text / f"{stem}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
            write_image(image / f"{stem}{ext}")


def mmbench(root: Path) -> None:
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source"]
    header += ["l2-category", "comment", "split"]
    cat = base64.b64encode(image_bytes("PNG")).decode()
    roof = base64.b64encode(image_bytes("JPEG")).decode()
    perception = "finegrained_perception (instance-level)"
    rows = [
        [0, "What is shown?", "", "a cat", "a dog", "a bird", "", "B", "object_localization", cat, "coco"],
        [1, "Which color is the roof?", "Look at the house.", "red", "blue", "", "", "A", "attribute_recognition"],
        [
            1000001,
            "Which color is the roof?",
            "Look at the house.",
            "blue",
            "red",
            "",
            "",
            "B",
            "attribute_recognition",
        ],
    ]
    rows[0] += [perception, "", "dev"]
    rows[1] += [roof, "coco", perception, "", "dev"]
    rows[2] += ["1", "coco", perception, "", "dev"]  # VLMEvalKit style: the image is row 1's
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in row) for row in rows]
    (root / "mmbench_dev_20230712.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    for name, write in [
        ("vqav2", vqav2),
        ("gqa", gqa),
        ("textvqa", textvqa),
        ("pope", pope),
        ("scienceqa", scienceqa),
        ("mme", mme),
        ("mmbench", mmbench),
    ]:
        root = FIXTURES / name
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        write(root)
        files = [p for p in root.rglob("*") if p.is_file()]
        print(f"{name}: {len(files)} files, {sum(p.stat().st_size for p in files)} bytes in {root}")
