"""trainer.compile=true: torch.compile of the training forward learns what the eager model learns."""

from __future__ import annotations

import json

import pytest

from mmit.train import run


def why_compile_is_unusable() -> str | None:
    """On a CPU, torch.compile (inductor) builds C++ kernels: it needs a compiler toolchain."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as error:  # whatever inductor says when it finds no compiler
        return f"torch.compile is unusable here: inductor finds no C++ compiler for CPU kernels ({error})"
    return None


OVERRIDES = [
    "+recipe=text_tiny",
    "data.source.n_train=24",
    "data.source.n_eval=4",
    "trainer.max_steps=3",
    "trainer.batch_size=4",
    "trainer.lr=3e-3",
    "trainer.warmup_steps=1",
    "trainer.log_every=1",
    "trainer.eval_before=none",
    "trainer.eval_batches=1",
    "trainer.generate_samples=0",
    "trainer.precision=fp32",
    "trainer.tensorboard=false",
    "trainer.pack_length=0",  # compiled runs train on padded rows; the eager one too, for equal batches
]


def _losses(run_dir) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in records if "train/loss" in r]


@pytest.mark.slow
def test_a_compiled_run_has_the_losses_of_an_eager_run(compose, tmp_path):
    reason = why_compile_is_unusable()
    if reason:
        pytest.skip(reason)
    compiled = run(compose([*OVERRIDES, "trainer.compile=true"]), tmp_path / "compiled")
    eager = run(compose(OVERRIDES), tmp_path / "eager")
    assert compiled["compiled"] and not eager["compiled"]
    have, want = _losses(tmp_path / "compiled"), _losses(tmp_path / "eager")
    assert len(have) == 3 and have == pytest.approx(want, rel=1e-4)
    assert compiled["after"]["eval/seen/loss"] == pytest.approx(eager["after"]["eval/seen/loss"], rel=1e-4)
