"""TextVQA val, read from the official annotation file and image folder (textvqa.org, 0.5.1):

    ROOT/TextVQA_0.5.1_val.json        {"data": [{question_id, question, image_id, answers: [10], ...}]}
    ROOT/train_images/003a8ae2ef43b901.jpg   (train_val_images.zip: val images are in train_images/)

Scored by VQA accuracy with every answer normalised (``mmit.metrics`` convention "lmms_eval"):
TextVQA's own evaluator (M4C's TextVQAAccuracyEvaluator) and lmms-eval both run EvalAI's answer
processor on every answer, never comparing unanimous answers as written as VQAv2's script does.
"""

from __future__ import annotations

import os
from pathlib import Path

from mmit.benchmarks.base import (
    Benchmark,
    BenchmarkError,
    field_of,
    first_time,
    image_at,
    read_json,
    require_dir,
    require_samples,
    sample,
)
from mmit.benchmarks.vqav2 import score_vqa

# lmms_eval/tasks/textvqa/_default_template_textvqa_yaml, lmms_eval_specific_kwargs.default:
#   pre_prompt: ""
#   post_prompt: "\nAnswer the question using a single word or phrase."
#   ocr: false
# and textvqa_doc_to_text: f"{pre_prompt}{doc['question'].capitalize()}{ocr_ref}{post_prompt}"
POST_PROMPT = "\nAnswer the question using a single word or phrase."
# The task sets no max_new_tokens (only until: ["ASSISTANT:"]), so lmms-eval's model default applies:
# lmms_eval/models/simple/llava.py: gen_kwargs["max_new_tokens"] = 1024.
MAX_NEW_TOKENS = 1024
ANNOTATIONS = "TextVQA_0.5.1_val.json"
NORMALISATION = "lmms_eval"


def load(root: str | os.PathLike) -> Benchmark:
    root = Path(root)
    images = require_dir(root / "train_images", "TextVQA images")
    path = root / ANNOTATIONS
    data = field_of(read_json(path), "data", list, str(path))
    samples, seen = [], {}
    for k, q in enumerate(data):
        where = f"{path} data[{k}]"
        qid = field_of(q, "question_id", int, where)
        first_time(seen, qid, "question_id", where)
        answers = field_of(q, "answers", list, where)
        if not answers or not all(isinstance(a, str) for a in answers):
            raise BenchmarkError(f"{where}: 'answers' must be a non-empty list of strings")
        image_id = field_of(q, "image_id", str, where)
        meta = {
            "benchmark": "textvqa",
            "question_id": qid,
            "image_id": image_id,
            "answers": answers,
            "tasks": ["vqa_short"],
        }
        reference = max(answers, key=answers.count)  # the most common answer, first on a tie
        prompt = field_of(q, "question", str, where).capitalize() + POST_PROMPT
        samples.append(sample(str(qid), prompt, reference, image_at(images, f"{image_id}.jpg", where), meta))
    require_samples(samples, path)
    return Benchmark(
        "textvqa",
        str(root),
        samples,
        MAX_NEW_TOKENS,
        lambda convs, replies: score_vqa(convs, replies, NORMALISATION),
        layout=f"{ANNOTATIONS}, images train_images/",
        notes={"vqa_normalisation": NORMALISATION},
    )
