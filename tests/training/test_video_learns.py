"""The video path learns time: a tiny model, trained by mmit.train on clips where a square moves left
or right (any one frame is as likely in either clip; only the frames' order tells), answers which way
in mmit.eval, and cannot with swapped clips."""

import json
import random

import numpy as np
import pytest


def _clip(rng: random.Random, direction: str, frames: int = 4, size: int = 32) -> list[np.ndarray]:
    start = rng.randint(0, 4)
    step = 5 if direction == "right" else -5
    xs = (
        [start + step * k for k in range(frames)]
        if direction == "right"
        else [start + 15 - 5 * k for k in range(frames)]
    )
    assert step
    colour = [rng.randint(150, 255), rng.randint(0, 90), rng.randint(0, 255)]
    out = []
    for x in xs:
        frame = np.full((size, size, 3), 20, np.uint8)
        frame[10:22, x : x + 12] = colour
        out.append(frame)
    return out


def _write_set(folder, name: str, n: int, seed: int) -> str:
    from mmit.data.video import write_clip

    rng = random.Random(seed)
    lines = []
    for i in range(n):
        direction = "right" if i % 2 == 0 else "left"
        path = folder / f"{name}-{i:03d}.mp4"
        write_clip(path, _clip(rng, direction), fps=4)
        messages = [
            {"role": "user", "content": "<video>\nWhich way does the square move?"},
            {"role": "assistant", "content": direction},
        ]
        record = {"id": f"{name}-{i}", "video": path.name, "messages": messages, "meta": {"tasks": ["video_qa"]}}
        lines.append(json.dumps(record))
    (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder / f"{name}.jsonl")


@pytest.mark.slow
def test_a_tiny_model_learns_which_way_a_square_moves(tmp_path):
    from mmit.eval import main as evaluate
    from mmit.inference import compose_config
    from mmit.train import run

    train = _write_set(tmp_path, "train", 160, seed=0)
    val = _write_set(tmp_path, "val", 60, seed=1)
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
