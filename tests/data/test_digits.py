"""tools/digits_to_vqav2.py: scikit-learn's digits in the official COCO / VQAv2 layout, built by the standard recipe."""

import json
from collections import Counter

import pytest

from mmit.build import build, compose_recipe
from mmit.data.shards import read_shards, shard_urls

pytest.importorskip("sklearn")


def test_digits_convert_to_vqav2_and_build_with_the_coco_vqav2_recipe(tool, tmp_path):
    from sklearn.datasets import load_digits

    root = tmp_path / "digits"
    counts = tool("digits_to_vqav2").main([str(root), "--limit", "40", "--size", "32"])
    assert counts == {"images": 40, "captions": 200, "questions": 120}
    truth = [int(t) for t in load_digits().target[:40]]
    answers = json.loads((root / "v2_mscoco_train2014_annotations.json").read_text())["annotations"]
    which = [a for a in answers if a["question_id"] % 10 == 0]  # "What digit is shown in the image?"
    assert [a["multiple_choice_answer"] for a in which] == [str(d) for d in truth]
    even = [a["multiple_choice_answer"] for a in answers if a["question_id"] % 10 == 1]
    assert even == ["yes" if d % 2 == 0 else "no" for d in truth]
    cfg = compose_recipe(
        "coco_vqav2", [f"coco_root={root}", f"out_dir={tmp_path / 'shards'}", "eval_fraction=0.2", "num_workers=1"]
    )
    manifest = build(cfg)
    assert not manifest["skipped_annotations"]
    train = list(read_shards(shard_urls(tmp_path / "shards" / "train")))
    held = list(read_shards(shard_urls(tmp_path / "shards" / "val_heldout_templates")))
    train_images = {c.media[0].sha256 for c in train}
    assert train_images.isdisjoint(c.media[0].sha256 for c in held)
    tasks = Counter(t for c in train + held for t in c.meta["tasks"])
    assert (
        tasks["caption_brief"] == 40 and tasks["vqa_short"] + tasks["vqa_yesno"] + tasks["vqa_multiple_choice"] == 120
    )
    assert {q for c in train + held for q in c.meta.get("question_types", ())} == {"what", "is the", "is this"}
