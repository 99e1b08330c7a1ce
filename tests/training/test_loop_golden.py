"""The training loop's numbers, pinned: tiny runs' per-step losses, gradient norms and learning
rates, and their evaluation losses, equal what they were when recorded (golden_loop.json).

It guards restructurings of mmit.training.loop that must not change behaviour. A deliberate change
of the numbers (a new loss, another schedule) re-records them: MMIT_RECORD_GOLDEN=1 pytest <this file>.
Recorded on a CPU in fp32; another CPU family or torch version may round differently.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from mmit.train import run

GOLDEN = Path(__file__).with_name("golden_loop.json")

# Recorded before packed batches and the feature cache became the defaults: pinned off here, so the
# numbers keep proving the refactors behaviour-neutral (test_packing.py shows packed losses equal these).
COMMON = [
    "feature_cache=null",
    "trainer.pack_length=0",
    "trainer.batch_size=4",
    "trainer.lr=3e-3",
    "trainer.warmup_steps=2",
    "trainer.log_every=1",
    "trainer.eval_batches=1",
    "trainer.generate_samples=2",
    "trainer.max_new_tokens=4",
    "trainer.precision=fp32",
    "trainer.tensorboard=false",
]
# Text: two micro-batches a step, a NaN step skipped, evaluation and checkpoints at step 3, then a
# resumed run with per-turn loss weighting.
TEXT = [
    "+recipe=text_tiny",
    "data.source.n_train=48",
    "data.source.n_eval=8",
    *COMMON,
    "trainer.max_steps=6",
    "trainer.grad_accum=2",
    "trainer.eval_every=3",
    "trainer.save_every=3",
    "trainer.eval_before=loss",
]
RESUMED = ["trainer.max_steps=8", "trainer.loss_weighting=turn"]
NAN_MICRO_BATCH = 9  # the first micro-batch of step 5


def vqa(root: Path) -> list[str]:
    """Images through an encoder and projector; evaluation losses with own and swapped media."""
    return [
        "+recipe=vqa_tiny",
        f"data.source.overrides=['prepare.n_images=24','out_dir={root}/demo','prepare.out_dir={root}/demo-src']",
        *COMMON,
        "trainer.max_steps=4",
        "trainer.eval_every=2",
        "trainer.save_every=4",
        "trainer.eval_before=full",
    ]


# What is pinned: train/* and lr every step, and each set's evaluation losses (not what mmit.scoring
# derives from generated answers, nor timings).
PINNED = re.compile(r"train/(loss|grad_norm|skipped_steps)|lr|eval/[^/]+/loss(_swapped_media)?")


def pinned(run_dir: Path) -> list[dict]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        kept = {k: v for k, v in record.items() if PINNED.fullmatch(k)}
        if kept:
            out.append({"step": record["step"], **kept})
    return out


@pytest.fixture
def nan_on_micro_batch(monkeypatch):
    """The loss of the given (1-based) training micro-batch becomes NaN."""
    import mmit.training.loop as loop

    real, calls = loop.next_token_loss_sum, {"n": 0}

    def install(n: int) -> None:
        def patched(*args, **kwargs):
            loss = real(*args, **kwargs)
            if torch.is_grad_enabled():  # training, not evaluation
                calls["n"] += 1
                if calls["n"] == n:
                    return loss * float("nan")
            return loss

        monkeypatch.setattr(loop, "next_token_loss_sum", patched)

    return install


def check_against_golden(case: str, got: dict) -> None:
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("MMIT_RECORD_GOLDEN"):
        golden[case] = got
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    expected = golden[case]
    assert [r["step"] for r in got["metrics"]] == [r["step"] for r in expected["metrics"]]
    for have, want in zip(got["metrics"], expected["metrics"], strict=True):
        assert set(have) == set(want), have["step"]
        assert have == pytest.approx(want, rel=1e-6, abs=1e-9, nan_ok=True), have["step"]
    for have, want in zip(got["summary"], expected["summary"], strict=True):
        assert have == pytest.approx(want, rel=1e-6, abs=1e-9)


def summary_numbers(summary: dict) -> dict:
    keys = ("steps", "resumed_from_step", "final_train_loss", "skipped_steps")
    return {k: summary[k] for k in keys}


@pytest.mark.slow
def test_a_tiny_text_run_reproduces_its_recorded_numbers(compose, tmp_path, nan_on_micro_batch):
    run_dir = tmp_path / "run"
    nan_on_micro_batch(NAN_MICRO_BATCH)
    first = run(compose(TEXT), run_dir)
    resumed = run(compose([*TEXT, *RESUMED]), run_dir)  # from the step-6 checkpoint
    assert first["skipped_steps"] == 1 and resumed["resumed_from_step"] == 6
    check_against_golden(
        "text", {"metrics": pinned(run_dir), "summary": [summary_numbers(first), summary_numbers(resumed)]}
    )


@pytest.mark.slow
def test_a_tiny_vqa_run_reproduces_its_recorded_numbers(compose, tmp_path):
    summary = run(compose(vqa(tmp_path)), tmp_path / "run")
    metrics = pinned(tmp_path / "run")
    assert any("loss_swapped_media" in k for r in metrics for k in r)
    check_against_golden("vqa", {"metrics": metrics, "summary": [summary_numbers(summary)]})
