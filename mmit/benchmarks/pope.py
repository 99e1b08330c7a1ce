"""POPE (object hallucination), read from the question files of POPE's repository and COCO val2014:

    ROOT/coco_pope_random.json, coco_pope_popular.json, coco_pope_adversarial.json
        one JSON object a line: {"question_id", "image": "COCO_val2014_....jpg", "text", "label": yes|no}
    ROOT/val2014/COCO_val2014_000000310196.jpg   (or ``image_root``)

Scored as POPE's evaluate.py does, per split: a reply is "no" when its first sentence, commas
removed, has the word "no", "No" or "not", otherwise "yes"; then accuracy, precision, recall and
F1 of "yes", and the yes-ratio of the replies. lmms-eval's pope task differs: it counts a reply
right only when it equals the label once lowercased, and its yes-ratio is the labels'.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmit.benchmarks.base import (
    Benchmark,
    BenchmarkError,
    field_of,
    first_time,
    image_at,
    mean,
    read_jsonl,
    require_dir,
    require_samples,
    sample,
)
from mmit.data.samples import Conversation

# lmms_eval/tasks/pope/pope.yaml, lmms_eval_specific_kwargs.default:
#   pre_prompt: ""
#   post_prompt: "\nAnswer the question using a single word or phrase."
# and pope_doc_to_text: f"{pre_prompt}{doc['question'].strip()}{post_prompt}"
POST_PROMPT = "\nAnswer the question using a single word or phrase."
# lmms_eval/tasks/pope/pope.yaml: generation_kwargs: max_new_tokens: 128
MAX_NEW_TOKENS = 128
SPLITS = ("random", "popular", "adversarial")


def parse_yes_no(reply: str) -> str:
    """POPE's evaluate.py reading of a reply: "no" if the first sentence (up to the first ".")
    without commas has the word "no", "No" or "not" (words split on single spaces), else "yes"."""
    words = reply.split(".")[0].replace(",", "").split(" ")
    return "no" if {"no", "No", "not"} & set(words) else "yes"


def load(
    root: str | os.PathLike, splits: Sequence[str] = SPLITS, image_root: str | os.PathLike | None = None
) -> Benchmark:
    root = Path(root)
    images = require_dir(Path(image_root) if image_root is not None else root / "val2014", "POPE (COCO val2014) images")
    samples = []
    for split in splits:
        if split not in SPLITS:
            raise BenchmarkError(f"POPE split must be one of {', '.join(SPLITS)}, not {split!r}")
        path = root / f"coco_pope_{split}.json"
        seen: dict[int, str] = {}
        # an empty split would silently drop out of the averaged metrics
        for line, q in require_samples(read_jsonl(path), path):
            where = f"{path} line {line}"
            qid = field_of(q, "question_id", int, where)
            first_time(seen, qid, "question_id", where)
            label = field_of(q, "label", str, where)
            if label not in ("yes", "no"):
                raise BenchmarkError(f"{where}: 'label' must be yes or no, not {label!r}")
            image_name = field_of(q, "image", str, where)
            meta = {
                "benchmark": "pope",
                "split": split,
                "question_id": qid,
                "image": image_name,
                "answers": [label],
                "tasks": ["vqa_yesno"],
            }
            prompt = field_of(q, "text", str, where).strip() + POST_PROMPT
            samples.append(sample(f"{split}/{qid}", prompt, label, image_at(images, image_name, where), meta))
    files = ", ".join(f"coco_pope_{s}.json" for s in splits)
    return Benchmark("pope", str(root), samples, MAX_NEW_TOKENS, score, layout=f"{files}, images {images}")


def binary_scores(predicted: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """POPE's accuracy, precision, recall, F1 (of "yes") and yes-ratio; 0 where a ratio has no denominator."""
    pairs = list(zip(predicted, labels, strict=True))
    tp = sum(p == "yes" and g == "yes" for p, g in pairs)
    fp = sum(p == "yes" and g == "no" for p, g in pairs)
    tn = sum(p == "no" and g == "no" for p, g in pairs)
    fn = sum(p == "no" and g == "yes" for p, g in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / len(pairs),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / len(pairs),
        "n": len(pairs),
    }


def score(convs: Sequence[Conversation], replies: Sequence[str]) -> dict[str, Any]:
    """Per split, POPE's five numbers; the flat metrics are their means over the splits read (how
    LLaVA-1.5 and later papers report a single POPE F1), and each split's as ``<split>/<metric>``."""
    by_split: dict[str, tuple[list[str], list[str]]] = {}
    for conv, reply in zip(convs, replies, strict=True):
        predicted, labels = by_split.setdefault(conv.meta["split"], ([], []))
        predicted.append(parse_yes_no(reply))
        labels.append(conv.meta["answers"][0])
    table = {split: binary_scores(*by_split[split]) for split in SPLITS if split in by_split}
    names = ("f1", "accuracy", "precision", "recall", "yes_ratio")
    flat = {name: mean([row[name] for row in table.values()]) for name in names}
    flat.update({f"{split}/{name}": row[name] for split, row in table.items() for name in names})
    return {"metrics": flat, "tables": {"split": table}}
