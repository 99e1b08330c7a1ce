"""The whole path learns to look: a tiny model, trained by mmit.train on a question only the image
answers (the colour of a flat image), scores near 1 in mmit.eval, and near 0 with swapped images."""

import json
import random

import pytest
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (30, 80, 220), "yellow": (240, 200, 0)}


def _write_set(folder, name: str, n: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        colour = rng.choice(sorted(COLOURS))
        # Each image its own shade, so every sample has its own bytes (the swap pairs distinct images).
        shade = tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in COLOURS[colour])
        path = folder / f"{name}-{i:03d}.png"
        Image.new("RGB", (32, 32), shade).save(path)
        messages = [
            {"role": "user", "content": "<image>\nWhat colour is this picture?"},
            {"role": "assistant", "content": colour},
        ]
        lines.append(
            json.dumps(
                {"id": f"{name}-{i}", "image": path.name, "messages": messages, "meta": {"tasks": ["vqa_short"]}}
            )
        )
    (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder / f"{name}.jsonl")


@pytest.mark.slow
def test_a_tiny_model_learns_an_image_only_question(tmp_path):
    from mmit.eval import main as evaluate
    from mmit.inference import compose_config
    from mmit.train import run

    train = _write_set(tmp_path, "train", 160, seed=0)
    val = _write_set(tmp_path, "val", 60, seed=1)
    overrides = [
        "+recipe=vqa_tiny",
        "data=files",
        f"data.source.train=[{train}]",
        f"data.source.eval={{heldout: [{val}]}}",
        "trainer.max_steps=120",
        "trainer.batch_size=16",
        "trainer.lr=3e-3",
        "trainer.warmup_steps=5",
        "trainer.eval_every=1000",
        "trainer.save_every=120",
        "trainer.eval_before=none",
        "trainer.generate_samples=8",
        "trainer.precision=fp32",
    ]
    run(compose_config(overrides), tmp_path / "run")
    out = evaluate([str(tmp_path / "run"), "--max-new-tokens", "8"])
    g = json.loads((out / "metrics.json").read_text())["scores"]["grounding"]["heldout"]["vqa_short"]
    assert g["n"] == 60 and g["n_swapped"] == 60
    assert g["score"] >= 0.95, g
    assert g["dependence"] >= 0.5, g  # a swapped image is another colour most of the time
    assert g["loss_swapped_media"] > g["loss"] + 1.0
    assert g["prior"] < 0.5  # four colours: guessing the commonest cannot score this
