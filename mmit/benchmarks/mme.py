"""MME, read from the official release folder (MME_Benchmark_release_version), where each subtask
is a folder in one of two layouts:

    ROOT/artwork/images/10002.jpg + ROOT/artwork/questions_answers_YN/10002.txt
        (artwork, celebrity, landmark, posters, scene)
    ROOT/count/000000006040.jpg + ROOT/count/000000006040.txt   (the other nine)

Each .txt holds the image's two questions, one a line: "question<TAB>Yes|No". Scored as the
official eval_tool's calculation.py: a reply (stripped, lowercased) is "yes" or "no" when it is
that word, else the one of them found in its first four characters, else "other" (wrong). Per
subtask, acc is the share of questions right and acc+ the share of images with both right; the
subtask's score is 100 * (acc + acc+), and the perception and cognition totals are the sums of
their subtasks' scores (at most 2000 and 800).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmit.benchmarks.base import Benchmark, BenchmarkError, image_at, require_dir, sample
from mmit.data.samples import Conversation

# lmms_eval/tasks/mme/mme.yaml, lmms_eval_specific_kwargs.default:
#   pre_prompt: ""
#   post_prompt: "\nAnswer the question using a single word or phrase."
# and mme_doc_to_text: with a post_prompt, " Please answer yes or no." is removed from the
# stripped question and the post_prompt appended.
POST_PROMPT = "\nAnswer the question using a single word or phrase."
REPLACED = " Please answer yes or no."
# lmms_eval/tasks/mme/mme.yaml: generation_kwargs: max_new_tokens: 16
MAX_NEW_TOKENS = 16

# calculation.py's eval_type_dict, in its order.
PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
SUBTASKS = PERCEPTION + COGNITION
IMAGE_EXTENSIONS = (".jpg", ".png", ".jpeg")


def parse_yes_no(reply: str) -> str:
    """calculation.py's parse_pred_ans on the lowercased, stripped reply: yes | no | other."""
    text = reply.strip().lower()
    if text in ("yes", "no"):
        return text
    if "yes" in text[:4]:
        return "yes"
    if "no" in text[:4]:
        return "no"
    return "other"


def _folders(subtask_dir: Path) -> tuple[Path, Path]:
    """(question files folder, images folder) of one subtask, in whichever layout it has."""
    questions, images = subtask_dir / "questions_answers_YN", subtask_dir / "images"
    if questions.is_dir() and images.is_dir():
        return questions, images
    return subtask_dir, subtask_dir


def _image_name(images: Path, stem: str, where: str) -> str:
    for ext in IMAGE_EXTENSIONS:
        if (images / f"{stem}{ext}").is_file():
            return f"{stem}{ext}"
    raise BenchmarkError(f"{where}: no image {stem}.jpg / .png / .jpeg in {images}")


def _question_pair(path: Path) -> list[tuple[str, str]]:
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as e:
        raise BenchmarkError(f"{path}: not UTF-8 text ({e})") from None
    if len(lines) != 2:
        raise BenchmarkError(f"{path}: expected two question lines, found {len(lines)}")
    pair = []
    for number, line in enumerate(lines, 1):
        question, tab, answer = line.rpartition("\t")
        answer = answer.strip().lower()
        if not tab or not question.strip() or answer not in ("yes", "no"):
            raise BenchmarkError(f"{path} line {number}: expected 'question<TAB>Yes|No', got {line!r}")
        pair.append((question.strip(), answer))
    return pair


def load(root: str | os.PathLike, subtasks: Sequence[str] = SUBTASKS) -> Benchmark:
    root = Path(root)
    if not (root / SUBTASKS[0]).is_dir() and (root / "MME_Benchmark").is_dir():
        root = root / "MME_Benchmark"  # the Hugging Face copy nests the release one level deeper
    samples = []
    for subtask in subtasks:
        if subtask not in SUBTASKS:
            raise BenchmarkError(f"MME subtask must be one of {', '.join(SUBTASKS)}, not {subtask!r}")
        questions, images = _folders(require_dir(root / subtask, f"MME subtask {subtask}"))
        files = sorted(questions.glob("*.txt"))
        if not files:
            raise BenchmarkError(f"MME subtask {subtask}: no question files (*.txt) in {questions}")
        for path in files:
            image_name = _image_name(images, path.stem, str(path))
            image = image_at(images, image_name, str(path))
            for k, (question, answer) in enumerate(_question_pair(path)):
                meta = {
                    "benchmark": "mme",
                    "subtask": subtask,
                    "category": "perception" if subtask in PERCEPTION else "cognition",
                    "image": image_name,
                    "answers": [answer],
                    "tasks": ["vqa_yesno"],
                }
                prompt = question.replace(REPLACED, "") + POST_PROMPT
                samples.append(sample(f"{subtask}/{path.stem}/{k}", prompt, answer.capitalize(), image, meta))
    return Benchmark(
        "mme", str(root), samples, MAX_NEW_TOKENS, score, layout="<subtask>/[images/, questions_answers_YN/] or flat"
    )


def score(convs: Sequence[Conversation], replies: Sequence[str]) -> dict[str, Any]:
    """Per subtask acc, acc+, score (= 100 * (acc + acc+)) and unreadable replies ("other");
    the perception and cognition totals sum the subtask scores, as calculation.py does."""
    by_image: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    others: dict[str, int] = defaultdict(int)
    for conv, reply in zip(convs, replies, strict=True):
        predicted = parse_yes_no(reply)
        subtask = conv.meta["subtask"]
        by_image[subtask][conv.meta["image"]].append(predicted == conv.meta["answers"][0])
        others[subtask] += predicted == "other"
    table = {}
    for subtask in SUBTASKS:
        if subtask not in by_image:
            continue
        images = by_image[subtask]
        answers = [right for pair in images.values() for right in pair]
        acc = sum(answers) / len(answers)
        acc_plus = sum(all(pair) for pair in images.values()) / len(images)
        table[subtask] = {
            "score": 100 * (acc + acc_plus),
            "acc": acc,
            "acc_plus": acc_plus,
            "other": others[subtask],
            "questions": len(answers),
            "images": len(images),
        }
    perception = sum(row["score"] for name, row in table.items() if name in PERCEPTION)
    cognition = sum(row["score"] for name, row in table.items() if name in COGNITION)
    flat = {"perception": perception, "cognition": cognition, "total": perception + cognition}
    flat.update({f"{name}/score": row["score"] for name, row in table.items()})
    return {"metrics": flat, "tables": {"subtask": table}}
