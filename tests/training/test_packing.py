"""Packed batches, the default: each step's samples packed into rows, learning exactly what padded
rows learn; and the one log line that says why a run falls back to padded rows or live encoders."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import torch

from mmit.data.collate import Batch
from mmit.factory import build_model
from mmit.train import feature_cache_setting, run
from mmit.training.packing import pack_batch, resolve_pack_length, row_layout, why_not_packed


def test_rows_keep_the_sample_order_and_never_cost_more_than_padding():
    lengths = [100, 90, 60, 50, 40, 30, 20, 10]
    rows, width = row_layout(lengths, 512)
    assert [i for row in rows for i in row] == list(range(len(lengths)))  # media stay in line
    assert width <= 512 and all(sum(lengths[i] for i in row) <= width for row in rows)
    assert len(rows) * width <= len(lengths) * 104  # the padded batch: 8 rows of 104
    assert row_layout([100] * 8, 512) == ([[0, 1, 2, 3], [4, 5, 6, 7]], 400)  # 800 tokens, not 832
    assert row_layout([100, 90], 100) == ([[0], [1]], 104)  # rows no longer than pack_length (or a sample)


def test_a_packed_batch_restarts_positions_and_drops_each_sample_s_first_label():
    ids = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0], [6, 0, 0, 0]])
    mask = (ids != 0).long()
    padded = Batch(ids, mask, torch.where(mask.bool(), ids, -100), ["a", "b", "c"])
    packed = pack_batch(padded, 8, pad_token_id=0)
    assert packed.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 0, 0]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 0, 1]]
    assert packed.labels.tolist() == [[-100, 2, 3, -100, 5, -100, -100, -100]]
    assert packed.spans == [[(0, 3), (3, 5), (5, 6), (6, 8)]]
    assert packed.num_label_tokens == padded.num_label_tokens and packed.ids == padded.ids


def test_a_batch_stays_padded_where_packing_saves_too_little():
    ids = torch.tensor([[1, 2, 3, 0], [4, 5, 6, 0], [7, 8, 0, 0]])  # 12 tokens padded, 8 packed at best
    mask = (ids != 0).long()
    padded = Batch(ids, mask, torch.where(mask.bool(), ids, -100), ["a", "b", "c"])
    assert pack_batch(padded, 8, pad_token_id=0, min_saving=0.5) is padded  # saves a third, not a half
    assert pack_batch(padded, 8, pad_token_id=0, min_saving=0.25).input_ids.numel() == 8


TINY_TEXT = [
    "+recipe=text_tiny",
    "data.source.n_train=48",
    "data.source.n_eval=8",
    "trainer.max_steps=6",
    "trainer.batch_size=8",
    "trainer.lr=3e-3",
    "trainer.warmup_steps=2",
    "trainer.log_every=1",
    "trainer.eval_before=none",
    "trainer.eval_batches=1",
    "trainer.generate_samples=0",
    "trainer.precision=fp32",
    "trainer.tensorboard=false",
]


def _train_records(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["train/loss"], r["train/grad_norm"]) for r in records if "train/loss" in r]


@pytest.mark.slow
def test_the_default_packed_run_learns_what_the_padded_run_learns(compose, tmp_path):
    packed = run(compose(TINY_TEXT), tmp_path / "packed")  # pack_length: the default, data.max_length
    padded = run(compose([*TINY_TEXT, "trainer.pack_length=0"]), tmp_path / "padded")
    assert packed["pack_length"] == 512 and padded["pack_length"] == 0
    have, want = _train_records(tmp_path / "packed"), _train_records(tmp_path / "padded")
    assert len(have) == 6
    for step, (a, b) in enumerate(zip(have, want, strict=True), start=1):
        assert a == pytest.approx(b, rel=1e-4), step
    assert packed["after"]["eval/seen/loss"] == pytest.approx(padded["after"]["eval/seen/loss"], rel=1e-4)
    assert packed["padding_share"] < padded["padding_share"]
    text = (tmp_path / "packed" / "summary.md").read_text()
    assert "- batches: samples packed into rows of up to 512 tokens; padding " in text
    assert "- model FLOP/s: " in text and "6 x N x tokens / s" in text
    assert packed["model_flops_per_second"] > 0 and packed["label_tokens_per_second"] > 0


def test_what_cannot_pack_falls_back_to_padded_rows_with_one_line(compose, caplog):
    prompt_tuned = build_model(compose(["+recipe=text_tiny", "peft=prompt_tuning"])).model
    lora = build_model(compose(["+recipe=text_tiny"])).model
    with caplog.at_level(logging.INFO, logger="mmit.training.packing"):
        assert resolve_pack_length(None, 512, prompt_tuned, compile_model=False) == 0
        assert resolve_pack_length(None, 512, lora, compile_model=True) == 0
        assert resolve_pack_length(None, 512, lora, compile_model=False) == 512
    lines = [r.getMessage() for r in caplog.records if r.name == "mmit.training.packing"]
    assert lines[0].startswith("batches padded, not packed: prompt tuning prepends its prompt")
    assert lines[1].startswith("batches padded, not packed: trainer.compile=true")
    assert lines[2].startswith("batches packed where that removes at least 25% of their tokens: ")
    with pytest.raises(ValueError, match="trainer.pack_length=384: prompt tuning"):
        resolve_pack_length(384, 512, prompt_tuned, compile_model=False)
    assert resolve_pack_length(0, 512, lora, compile_model=False) == 0
    unknown = SimpleNamespace(
        soft_prompt=None,
        base_llm=SimpleNamespace(get_decoder=lambda: SimpleNamespace(config=SimpleNamespace(_attn_implementation="k"))),
    )
    assert "attention 'k' is not known to keep packed samples apart" in why_not_packed(unknown, False)


def test_the_feature_cache_is_on_for_frozen_encoders_and_says_why_not_otherwise(compose, caplog):
    frozen = compose(["+recipe=vqa_tiny"])
    trained = compose(["+recipe=vqa_tiny", "tuning.vision_encoder=lora"])
    text = compose(["+recipe=text_tiny"])
    with caplog.at_level(logging.INFO, logger="mmit.train"):
        assert frozen.feature_cache == "auto"
        assert feature_cache_setting(frozen, build_model(frozen).model) == "auto"
        assert feature_cache_setting(trained, build_model(trained).model) is None
        assert feature_cache_setting(text, build_model(text).model) is None
    lines = [r.getMessage() for r in caplog.records if r.name == "mmit.train"]
    assert lines == [
        "feature cache off, encoders run every step: tuning.vision_encoder=lora (a trained encoder's outputs change)",
        "feature cache not used: text-only, no media encoder",
    ]
    chosen = compose(["+recipe=vqa_tiny", "tuning.vision_encoder=lora", "feature_cache=/somewhere"])
    assert feature_cache_setting(chosen, build_model(chosen).model) == "/somewhere"  # refused later, by name


def test_a_trained_encoder_beside_a_frozen_one_leaves_only_its_own_media_uncached(compose, caplog, tmp_path):
    from mmit.factory import prepare_feature_caches

    cfg = compose(["+recipe=vqa_tiny", "audio_encoder=tiny", "tuning.vision_encoder=lora"])
    model = build_model(cfg).model
    assert feature_cache_setting(cfg, model) == "auto"  # the audio encoder is frozen: its clips are cached
    data = SimpleNamespace(train=SimpleNamespace(samples=[]), eval={})
    with caplog.at_level(logging.INFO, logger="mmit.factory"):
        stores = prepare_feature_caches(cfg, model, data)
    assert set(stores) == {"audio"}
    assert any(
        "image media run their encoder every step (tuning.vision_encoder=lora" in r.getMessage() for r in caplog.records
    )
    explicit = compose(
        ["+recipe=vqa_tiny", "audio_encoder=tiny", "tuning.vision_encoder=lora", f"feature_cache={tmp_path}"]
    )
    with pytest.raises(ValueError, match="feature_cache needs a frozen vision_encoder, but tuning.vision_encoder=lora"):
        prepare_feature_caches(explicit, model, data)
