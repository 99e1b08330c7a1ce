"""The video path learns time: a tiny model, trained by mmit.train on clips where a square moves left
or right (any one frame is as likely in either clip; only the frames' order tells), answers which way
in mmit.eval, and cannot with swapped clips."""

import json

import pytest

from mmit.data.demo.motion import write_direction_set


@pytest.mark.slow
def test_a_tiny_model_learns_which_way_a_square_moves(tmp_path):
    from mmit.eval import main as evaluate
    from mmit.inference import compose_config
    from mmit.train import run

    train = write_direction_set(tmp_path, "train", 160, seed=0)
    val = write_direction_set(tmp_path, "val", 60, seed=1)
    overrides = [
        "+recipe=video_qa_tiny",
        "data=files",
        f"data.source.train=[{train}]",
        f"data.source.eval={{heldout: [{val}]}}",
        "trainer.max_steps=300",
        "video.pool_to=null",  # every patch of each frame: where the square is
        "trainer.batch_size=16",
        "trainer.lr=3e-3",
        "trainer.warmup_steps=5",
        "trainer.eval_every=1000",
        "trainer.save_every=300",
        "trainer.eval_before=none",
        "trainer.generate_samples=8",
        "trainer.precision=fp32",
    ]
    run(compose_config(overrides), tmp_path / "run")
    out = evaluate([str(tmp_path / "run"), "--max-new-tokens", "8"])
    g = json.loads((out / "metrics.json").read_text())["scores"]["grounding"]["heldout"]["video_qa"]
    assert g["n"] == 60 and g["n_swapped"] == 60
    assert g["score"] >= 0.95, g
    assert g["dependence"] >= 0.3, g  # a swapped clip moves the other way half of the time
    assert g["prior"] <= 0.5
