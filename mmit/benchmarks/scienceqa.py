"""ScienceQA-IMG: the test questions that come with an image, read from ScienceQA's release
(github.com/lupantech/ScienceQA, data/scienceqa):

    ROOT/problems.json                 {pid: {question, choices, answer: index, hint, image, split, subject, grade, ...}}
    ROOT/images/test/<pid>/image.png

Scored by multiple-choice accuracy with lmms-eval's reading of a reply (sqa_process_results, from
LLaVA): right if the reply, stripped, is the answer's letter (any case), or starts with a capital
letter and a full stop ("B. tundra") whose letter is the answer's. Anything else is wrong.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmit.benchmarks.base import (
    Benchmark,
    BenchmarkError,
    accuracy_table,
    field_of,
    image_at,
    mean,
    optional_text,
    read_json,
    require_dir,
    require_file,
    require_samples,
    sample,
)
from mmit.data.samples import Conversation

# lmms_eval/tasks/scienceqa/scienceqa_img.yaml, lmms_eval_specific_kwargs.default:
#   format: default
#   pre_prompt: ""
#   post_prompt: "\nAnswer with the option's letter from the given choices directly."
# and sqa_doc_to_text (format "default"):
#   context = f"Context: {hint}\n" if hint else ""
#   f"{pre_prompt}{context}{question}\n{choices_str}{post_prompt}", choices_str = "A. x\nB. y"
POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."
# lmms_eval/tasks/scienceqa/scienceqa_img.yaml: generation_kwargs: max_new_tokens: 16
MAX_NEW_TOKENS = 16
PROBLEMS = "problems.json"


def build_prompt(question: str, choices: Sequence[str], hint: str) -> str:
    options = "\n".join(f"{chr(ord('A') + i)}. {choice}" for i, choice in enumerate(choices))
    context = f"Context: {hint}\n" if hint else ""
    return f"{context}{question}\n{options}{POST_PROMPT}"


def is_right(reply: str, letter: str) -> bool:
    """lmms-eval's sqa_process_results: the letter itself, or "<capital letter>." at the start."""
    reply = reply.strip()
    if reply.lower() == letter.lower():
        return True
    return len(reply) >= 2 and reply[0].isupper() and reply[1] == "." and reply[0].lower() == letter.lower()


def load(root: str | os.PathLike) -> Benchmark:
    root = Path(root)
    path = require_file(root / PROBLEMS, "ScienceQA problems")
    images = require_dir(root / "images" / "test", "ScienceQA test images")
    problems = read_json(path, unique_keys=True)
    if not isinstance(problems, dict):
        raise BenchmarkError(f"{path}: expected an object of problem id -> problem")
    samples = []
    for pid, p in problems.items():
        where = f"{path} problem {pid!r}"
        if field_of(p, "split", str, where) != "test" or not p.get("image"):
            continue
        choices = field_of(p, "choices", list, where)
        if not choices or not all(isinstance(c, str) for c in choices) or len(choices) > 26:
            raise BenchmarkError(f"{where}: 'choices' must be a list of 1 to 26 strings")
        answer = field_of(p, "answer", int, where)
        if not 0 <= answer < len(choices):
            raise BenchmarkError(f"{where}: 'answer' {answer} is not the index of one of its {len(choices)} choices")
        hint = p.get("hint") or ""
        if not isinstance(hint, str):
            raise BenchmarkError(f"{where}: 'hint' must be a string")
        letter = chr(ord("A") + answer)
        meta = {
            "benchmark": "scienceqa_img",
            "question_id": pid,
            "subject": optional_text(p, "subject", where),
            "grade": optional_text(p, "grade", where),
            "choices": choices,
            "answers": [letter],
            "tasks": ["vqa_multiple_choice"],
        }
        prompt = build_prompt(field_of(p, "question", str, where), choices, hint)
        image = image_at(images, f"{pid}/{field_of(p, 'image', str, where)}", where)
        samples.append(sample(pid, prompt, letter, image, meta))
    require_samples(samples, path, "test problems with an image")
    return Benchmark("scienceqa_img", str(root), samples, MAX_NEW_TOKENS, score, layout=f"{PROBLEMS}, images/test/")


def _grade_group(grade: str) -> str:
    """ScienceQA's paper groups grades 1-6 and 7-12."""
    number = grade.removeprefix("grade")
    if not number.isdigit():
        return ""
    return "grade1-6" if int(number) <= 6 else "grade7-12"


def score(convs: Sequence[Conversation], replies: Sequence[str]) -> dict[str, Any]:
    """Accuracy overall, per subject and per grade group (as ScienceQA's paper reports them)."""
    subjects, grades = defaultdict(list), defaultdict(list)
    scores = []
    for conv, reply in zip(convs, replies, strict=True):
        right = float(is_right(reply, conv.meta["answers"][0]))
        scores.append(right)
        if conv.meta["subject"]:
            subjects[conv.meta["subject"]].append(right)
        if group := _grade_group(conv.meta["grade"]):
            grades[group].append(right)
    tables = {"subject": accuracy_table(subjects), "grade": accuracy_table(grades)}
    return {"metrics": {"accuracy": mean(scores)}, "tables": tables}
