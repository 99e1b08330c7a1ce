"""VQAv2 val (scored by VQA accuracy) and test-dev (an EvalAI answer file), read from the official
question / annotation JSON files and the COCO image folders as downloaded from visualqa.org:

    ROOT/v2_OpenEnded_mscoco_val2014_questions.json   {"questions": [{question_id, image_id, question}]}
    ROOT/v2_mscoco_val2014_annotations.json           {"annotations": [{question_id, answers, answer_type, ...}]}
    ROOT/val2014/COCO_val2014_000000000042.jpg
    ROOT/v2_OpenEnded_mscoco_test-dev2015_questions.json, ROOT/test2015/COCO_test2015_*.jpg
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mmit import metrics
from mmit.benchmarks.base import (
    Benchmark,
    BenchmarkError,
    accuracy_table,
    field_of,
    first_time,
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

# lmms_eval/tasks/vqav2/vqav2_val.yaml (and vqav2_test.yaml), lmms_eval_specific_kwargs.default:
#   pre_prompt: ""
#   post_prompt: "\nAnswer the question using a single word or phrase."
POST_PROMPT = "\nAnswer the question using a single word or phrase."
# lmms_eval/tasks/vqav2/_default_template_vqav2_yaml: generation_kwargs: max_new_tokens: 16
MAX_NEW_TOKENS = 16

VAL_QUESTIONS = "v2_OpenEnded_mscoco_val2014_questions.json"
VAL_ANNOTATIONS = "v2_mscoco_val2014_annotations.json"
TESTDEV_QUESTIONS = "v2_OpenEnded_mscoco_test-dev2015_questions.json"
TEST_QUESTIONS = "v2_OpenEnded_mscoco_test2015_questions.json"


def _questions(path: Path) -> list[tuple[str, dict]]:
    data = read_json(require_file(path, "VQAv2 questions"))
    records = field_of(data, "questions", list, str(path))
    out, seen = [], {}
    for k, q in enumerate(records):
        where = f"{path} questions[{k}]"
        first_time(seen, field_of(q, "question_id", int, where), "question_id", where)
        field_of(q, "image_id", int, where)
        field_of(q, "question", str, where)
        out.append((where, q))
    return out


def load_val(root: str | os.PathLike, normalisation: str = "official") -> Benchmark:
    """VQAv2 val: every question with its ten human answers, scored by ``mmit.metrics.vqa_accuracy``
    (``normalisation``: "official", the VQA API's vqaEval.py, or "lmms_eval")."""
    root = Path(root)
    images = require_dir(root / "val2014", "VQAv2 val images")
    path = root / VAL_ANNOTATIONS
    annotations = read_json(require_file(path, "VQAv2 annotations"))
    by_question, seen = {}, {}
    for k, a in enumerate(field_of(annotations, "annotations", list, str(path))):
        where = f"{path} annotations[{k}]"
        answers = field_of(a, "answers", list, where)
        texts = [field_of(x, "answer", str, f"{where} answers[{j}]") for j, x in enumerate(answers)]
        if not texts:
            raise BenchmarkError(f"{where}: no answers")
        qid = field_of(a, "question_id", int, where)
        first_time(seen, qid, "question_id", where)
        # The fields scoring and the reference read, checked here rather than after every answer.
        kinds = {key: optional_text(a, key, where) for key in ("answer_type", "question_type")}
        by_question[qid] = (kinds, texts, optional_text(a, "multiple_choice_answer", where))
    samples = []
    for where, q in _questions(root / VAL_QUESTIONS):
        qid = q["question_id"]
        if qid not in by_question:
            raise BenchmarkError(f"{where}: question {qid} has no annotation in {path}")
        kinds, answers, reference = by_question[qid]
        image = image_at(images, f"COCO_val2014_{q['image_id']:012d}.jpg", where)
        meta = {
            "benchmark": "vqav2",
            "question_id": qid,
            "image_id": q["image_id"],
            "answer_type": kinds["answer_type"],
            "question_types": [kinds["question_type"]],
            "answers": answers,
            "tasks": ["vqa_short"],
        }
        samples.append(sample(str(qid), q["question"] + POST_PROMPT, reference or answers[0], image, meta))
    require_samples(samples, root / VAL_QUESTIONS)
    return Benchmark(
        "vqav2",
        str(root),
        samples,
        MAX_NEW_TOKENS,
        lambda convs, replies: score_vqa(convs, replies, normalisation),
        layout=f"{VAL_QUESTIONS} + {VAL_ANNOTATIONS}, images val2014/",
        notes={"vqa_normalisation": normalisation},
    )


def score_vqa(convs: Sequence[Conversation], replies: Sequence[str], normalisation: str) -> dict[str, Any]:
    """VQA accuracy overall and per answer type (yes/no, number, other), as vqaEval.py reports them."""
    per_type = defaultdict(list)
    scores = []
    for conv, reply in zip(convs, replies, strict=True):
        score = metrics.vqa_accuracy(reply, conv.meta["answers"], normalisation=normalisation)
        scores.append(score)
        if conv.meta.get("answer_type"):
            per_type[conv.meta["answer_type"]].append(score)
    table = accuracy_table(per_type)
    flat = {"vqa_accuracy": mean(scores)}
    flat.update({f"{t}/vqa_accuracy": row["accuracy"] for t, row in table.items()})
    return {"metrics": flat, "tables": {"answer_type": table} if table else {}, "vqa_normalisation": normalisation}


def load_testdev(root: str | os.PathLike) -> Benchmark:
    """VQAv2 test-dev: questions without answers; the replies go to ``write_submission``."""
    root = Path(root)
    images = require_dir(root / "test2015", "VQAv2 test images")
    samples = []
    for where, q in _questions(root / TESTDEV_QUESTIONS):
        image = image_at(images, f"COCO_test2015_{q['image_id']:012d}.jpg", where)
        meta = {"benchmark": "vqav2_testdev", "question_id": q["question_id"], "image_id": q["image_id"]}
        meta["tasks"] = ["vqa_short"]
        samples.append(sample(str(q["question_id"]), q["question"] + POST_PROMPT, "", image, meta))
    require_samples(samples, root / TESTDEV_QUESTIONS)
    # EvalAI takes a file for every test2015 question (see ``submission``); read with the rest, so a
    # damaged file is named before any question is answered.
    everything = all_test_question_ids(root) if (root / TEST_QUESTIONS).is_file() else []
    return Benchmark(
        "vqav2_testdev",
        str(root),
        samples,
        MAX_NEW_TOKENS,
        None,
        layout=f"{TESTDEV_QUESTIONS}, images test2015/",
        notes={"test_question_ids": everything},
    )


def submission(
    benchmark: Benchmark,
    predictions: Mapping[str, str] | Iterable[Any],
    all_question_ids: Iterable[int] = (),
    normalisation: str = "lmms_eval",
) -> list[dict[str, Any]]:
    """EvalAI's result format, [{"question_id": int, "answer": str}], each reply normalised as
    lmms-eval and LLaVA write it (EvalAIAnswerProcessor). EvalAI's test-dev phase takes a file for
    the whole test2015 question set: ``all_question_ids`` (``all_test_question_ids``) adds an empty
    answer for every question not answered here, as LLaVA's submission script does."""
    replies = benchmark.replies(predictions)
    out = [
        {"question_id": conv.meta["question_id"], "answer": metrics.normalize_vqa_answer(reply, normalisation)}
        for conv, reply in zip(benchmark.samples, replies, strict=True)
    ]
    answered = {row["question_id"] for row in out}
    out += [{"question_id": qid, "answer": ""} for qid in all_question_ids if qid not in answered]
    return out


def all_test_question_ids(root: str | os.PathLike) -> list[int]:
    """Every test2015 question id, from ``v2_OpenEnded_mscoco_test2015_questions.json``."""
    return [q["question_id"] for _, q in _questions(Path(root) / TEST_QUESTIONS)]


def write_submission(rows: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write ``submission`` rows as the JSON file EvalAI uploads take."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path
