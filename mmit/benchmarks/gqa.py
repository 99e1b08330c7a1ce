"""GQA testdev-balanced, read from the official question file and image folder (gqadataset.org):

    ROOT/testdev_balanced_questions.json   {question id: {imageId, question, answer, types, ...}}
    ROOT/images/n161313.jpg

Scored by exact match, as GQA's eval.py does, after the cleaning LLaVA's convert_gqa_for_eval.py
gives the predictions (eval.py itself compares the strings as they are): the reply is stripped,
loses trailing full stops and is lowercased; GQA's answers already are lowercase words.
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

# lmms_eval/tasks/gqa/gqa.yaml, lmms_eval_specific_kwargs.default:
#   pre_prompt: ""
#   post_prompt: "\nAnswer the question using a single word or phrase."
POST_PROMPT = "\nAnswer the question using a single word or phrase."
# lmms_eval/tasks/gqa/gqa.yaml: generation_kwargs: max_new_tokens: 16
MAX_NEW_TOKENS = 16
QUESTIONS = "testdev_balanced_questions.json"


def clean_answer(reply: str) -> str:
    """A reply as GQA's exact match compares it: stripped, trailing full stops removed, lowercased."""
    return reply.strip().rstrip(".").lower()


def load(root: str | os.PathLike) -> Benchmark:
    root = Path(root)
    images = require_dir(root / "images", "GQA images")
    path = require_file(root / QUESTIONS, "GQA testdev-balanced questions")
    questions = read_json(path, unique_keys=True)
    if not isinstance(questions, dict):
        raise BenchmarkError(f"{path}: expected an object of question id -> question")
    samples = []
    for qid, q in questions.items():
        where = f"{path} question {qid!r}"
        image_id = field_of(q, "imageId", str, where)
        answer = field_of(q, "answer", str, where)
        types = q.get("types") or {}
        if not isinstance(types, dict):
            raise BenchmarkError(f"{where}: 'types' must be an object of structural / semantic types")
        meta = {
            "benchmark": "gqa",
            "question_id": qid,
            "image_id": image_id,
            "structural": optional_text(types, "structural", f"{where} types"),
            "semantic": optional_text(types, "semantic", f"{where} types"),
            "answers": [answer],
            "tasks": ["vqa_short"],
        }
        image = image_at(images, f"{image_id}.jpg", where)
        samples.append(sample(qid, field_of(q, "question", str, where) + POST_PROMPT, answer, image, meta))
    require_samples(samples, path)
    return Benchmark("gqa", str(root), samples, MAX_NEW_TOKENS, score, layout=f"{QUESTIONS}, images/")


def score(convs: Sequence[Conversation], replies: Sequence[str]) -> dict[str, Any]:
    """Accuracy overall, on open questions (structural type "query") and binary ones (all others),
    and per structural and semantic type, as eval.py reports them."""
    tables: dict[str, dict[str, list[float]]] = {"answer_kind": defaultdict(list)}
    tables.update(structural=defaultdict(list), semantic=defaultdict(list))
    scores = []
    for conv, reply in zip(convs, replies, strict=True):
        right = float(clean_answer(reply) == conv.meta["answers"][0])
        scores.append(right)
        structural = conv.meta["structural"]
        if structural:
            tables["answer_kind"]["open" if structural == "query" else "binary"].append(right)
            tables["structural"][structural].append(right)
        if conv.meta["semantic"]:
            tables["semantic"][conv.meta["semantic"]].append(right)
    out = {name: accuracy_table(groups) for name, groups in tables.items()}
    flat = {"accuracy": mean(scores)}
    flat.update({f"{kind}/accuracy": row["accuracy"] for kind, row in out["answer_kind"].items()})
    return {"metrics": flat, "tables": out}
