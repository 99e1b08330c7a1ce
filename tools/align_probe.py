"""Does the projector's alignment put an object's colour and its shape in the token that shows it?

    python tools/align_probe.py [--images 1800] [--pool-to 3] [--steps 600] [--out table.md]

Every demo scene (``mmit.data.demo.scenes``, seed 0) is drawn and encoded once by the main job's
frozen encoder (EfficientNet-Lite0, block 14, pooled to ``--pool-to``). For each
``projector_align.image_words`` choice, an MLP projector whose tokens keep a word's length (as
``projector.output_norm=true``) is aligned (``mmit.models.align``, the recipe's steps, rate and batch)
on the words of the scenes' brief captions, 80% of the images, in SmolLM2-135M-Instruct's word
embeddings, and read on the other 20%:

- word F1: the words the aligned tokens say against the captions' (as ``projector_align.json``);
- per object: whether the token whose cell holds the object's centre says its colour, its shape,
  and both (probability over 1/2); the colour and the shape each said somewhere is not enough to
  tell a red circle and a blue square from a blue circle and a red square.

No LLM trains; a run takes a few minutes on 2 CPU cores (5 on a busy 2-core EPYC).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mmit.data.demo.scenes import draw_scene, scene_captions
from mmit.models.align import IMAGE_WORDS, align_projector, informative_words, spelled
from mmit.models.encoders import EfficientNetLite0Encoder
from mmit.models.llm import load_smollm2_135m_instruct
from mmit.models.projectors import MLPProjector, word_length


def cell_of(center: tuple[int, int], image_size: int, grid: int) -> int:
    """The token (row-major over a ``grid`` x ``grid`` pooled map) whose cell holds a pixel."""
    x, y = center
    return min(grid - 1, y * grid // image_size) * grid + min(grid - 1, x * grid // image_size)


def object_binding(aligner, says: torch.Tensor, scenes, grid: int, tokenizer) -> dict[str, float]:
    """Share of objects whose own cell's token says its colour, its shape, and both."""
    counts = {"objects": 0, "colour": 0, "shape": 0, "both": 0}
    for row, scene in enumerate(scenes):
        for o in scene.objects:
            colour = aligner.index.get(spelled(tokenizer, o.color)[0])
            shape = aligner.index.get(spelled(tokenizer, o.shape)[0])
            if colour is None or shape is None:
                continue
            token = says[row, cell_of(o.center, scene.image_size, grid)]
            said_colour, said_shape = bool(token[colour - 1] > 0.5), bool(token[shape - 1] > 0.5)
            counts["objects"] += 1
            counts["colour"] += said_colour
            counts["shape"] += said_shape
            counts["both"] += said_colour and said_shape
    n = max(1, counts["objects"])
    return {"objects": counts["objects"], **{k: counts[k] / n for k in ("colour", "shape", "both")}}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1800)
    p.add_argument("--pool-to", type=int, default=3, help="the encoder's token grid (vision_encoder.pool_to)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", type=Path, help="also write the table here (Markdown)")
    args = p.parse_args(argv)

    drawn = [draw_scene(i) for i in range(1, args.images + 1)]
    scenes = [scene for _, scene in drawn]
    encoder = EfficientNetLite0Encoder(layer=14, pool_to=args.pool_to).eval()
    with torch.no_grad():
        images = [image for image, _ in drawn]
        features = torch.cat([encoder(encoder.preprocess(images[i : i + 64])) for i in range(0, len(images), 64)])
    llm = load_smollm2_135m_instruct()
    embeddings = llm.model.get_input_embeddings().weight.detach().float()
    targets = [sorted({t for text in scene_captions(s) for t in spelled(llm.tokenizer, text)}) for s in scenes]
    cut = int(0.8 * len(scenes))
    vocabulary = informative_words(targets[:cut])
    rows = []
    for choice, aligner_class in IMAGE_WORDS.items():
        torch.manual_seed(0)
        projector = MLPProjector(features.shape[-1], embeddings.shape[1], output_norm=word_length(embeddings))
        aligner = aligner_class(embeddings, vocabulary)
        align_projector(projector, aligner, features[:cut], targets[:cut], args.steps, args.lr, args.batch_size)
        with torch.no_grad():
            projected = projector(features[cut:])
            words = aligner.score(aligner.decode(projected), targets[cut:])
            binding = object_binding(aligner, aligner.token_says(projected), scenes[cut:], args.pool_to, llm.tokenizer)
        rows.append({"image_words": choice, "objective": aligner.objective, **words, **binding})
        print(rows[-1], flush=True)
    lines = [
        f"{args.images} demo scenes ({cut} to align on, {args.images - cut} to read), EfficientNet-Lite0 block 14 "
        f"pooled to {args.pool_to}x{args.pool_to}, {args.steps} alignment steps, {len(vocabulary)} words.",
        "",
        "| image_words | word F1 | objects | its token says the colour | the shape | both |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['image_words']} | {r['f1']:.3f} | {r['objects']} | {r['colour']:.2f} | {r['shape']:.2f} "
            f"| {r['both']:.2f} |"
            for r in rows
        ),
    ]
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    main()
