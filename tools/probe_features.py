"""What a frozen image encoder's tokens say about the demo scenes: linear probes per feature choice.

    python tools/probe_features.py [--images 1200] [--out docs/bench/probe_features.md]

For each feature choice (EfficientNet-Lite0's layer and token grid), every demo image is encoded
once; a linear classifier on the flattened, standardised tokens (ridge regression onto one-hot labels) is fitted on 90% of the images and scored on the
rest, for what the demo's questions ask: each cell's shape and colour (a 3 x 2 grid of cells,
"none" when empty) and the number of shapes. A projector can only pass on what the tokens hold,
so this bounds what the LLM can learn to see, at a fraction of a training run's cost.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmit.data.demo.scenes import COLUMNS, PALETTE, ROWS, SHAPES, draw_scene  # noqa: E402
from mmit.models.encoders import EfficientNetLite0Encoder  # noqa: E402

# (label, layer, pool_to): layer as EfficientNetLite0Encoder takes it.
CHOICES = [
    ("head 1280 ch, 7x7 pooled to 4x4 (main job)", "head", 4),
    ("head 1280 ch, 7x7", "head", None),
    ("block 15: 320 ch, 7x7", 15, None),
    ("block 15: 320 ch, 7x7 pooled to 4x4", 15, 4),
    ("block 14: 192 ch, 7x7", 14, None),
    ("block 14: 192 ch, 7x7 pooled to 4x4", 14, 4),
    ("block 10: 112 ch, 14x14 pooled to 7x7", 10, 7),
    ("block 10: 112 ch, 14x14 pooled to 4x4", 10, 4),
]
COLOURS = sorted(PALETTE)


def scene_targets(image_id: int) -> tuple[list[int], list[int], int]:
    """Per cell (column-major over 3 x 2): shape index (0 = none) and colour index (0 = none); count."""
    _, scene = draw_scene(image_id)
    shapes, colours = [0] * 6, [0] * 6
    for o in scene.objects:
        cell = COLUMNS.index(o.column) * len(ROWS) + ROWS.index(o.row)
        shapes[cell], colours[cell] = 1 + SHAPES.index(o.shape), 1 + COLOURS.index(o.color)
    return shapes, colours, len(scene.objects)


def probe(kernel: torch.Tensor, y: torch.Tensor, n_train: int, classes: int, ridge: float) -> float:
    """Test accuracy of ridge regression onto one-hot labels (linear kernel, solved in the dual)."""
    targets = F.one_hot(y[:n_train], classes).double()
    k_train = kernel[:n_train, :n_train]
    alpha = torch.linalg.solve(
        k_train + ridge * k_train.diagonal().mean() * torch.eye(n_train, dtype=k_train.dtype), targets
    )
    predicted = (kernel[n_train:, :n_train] @ alpha).argmax(1)
    return (predicted == y[n_train:]).double().mean().item()


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1200)
    p.add_argument("--out", type=Path, default=None, help="write the table here (Markdown)")
    p.add_argument("--ridge", type=float, default=0.1, help="ridge strength, relative to the mean kernel diagonal")
    p.add_argument("--only", nargs="+", type=int, help="run only these rows of the table (0-based)")
    args = p.parse_args(argv)
    torch.manual_seed(0)

    images = [draw_scene(i)[0] for i in range(1, args.images + 1)]
    targets = [scene_targets(i) for i in range(1, args.images + 1)]
    shapes = torch.tensor([t[0] for t in targets])
    colours = torch.tensor([t[1] for t in targets])
    counts = torch.tensor([t[2] for t in targets])
    n_train = int(0.9 * len(images))
    rows = []
    for k, (label, layer, pool) in enumerate(CHOICES):
        if args.only and k not in args.only:
            continue
        started = time.perf_counter()
        encoder = EfficientNetLite0Encoder(layer=layer, pool_to=pool).eval()
        with torch.no_grad():
            feats = torch.cat(
                [encoder(encoder.preprocess(images[i : i + 64])) for i in range(0, len(images), 64)]
            ).flatten(1)
        tokens = encoder.num_tokens
        mean, std = feats[:n_train].mean(0), feats[:n_train].std(0) + 1e-6
        x = ((feats - mean) / std).double()
        kernel = x @ x.T

        def score(y, classes, kernel=kernel):
            return probe(kernel, y, n_train, classes, args.ridge)

        shape_acc = sum(score(shapes[:, c], 4) for c in range(6)) / 6
        colour_acc = sum(score(colours[:, c], 7) for c in range(6)) / 6
        count_acc = score(counts - 1, 4)
        row = {
            "features": label,
            "tokens": tokens,
            "dim": encoder.output_dim,
            "cell shape": shape_acc,
            "cell colour": colour_acc,
            "count": count_acc,
            "seconds": time.perf_counter() - started,
        }
        print(row, flush=True)
        rows.append(row)
    lines = [
        f"Linear probes on {args.images} demo scenes ({n_train} to fit, {args.images - n_train} to test); "
        "accuracy per cell averaged over the 6 cells (chance for an empty-heavy cell is its majority class).",
        "",
        "| features | tokens | dim | cell shape | cell colour | count (1-4) |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['features']} | {r['tokens']} | {r['dim']} | {r['cell shape']:.3f} | {r['cell colour']:.3f} "
            f"| {r['count']:.3f} |"
            for r in rows
        ),
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return rows


if __name__ == "__main__":
    main()
