"""What Whisper base's frames say about the demo's spoken words: probes per feature choice.

    python tools/probe_audio_features.py [--clips 300] [--heldout 60] [--out docs/bench/probe_audio.md]

The demo's clips (``mmit.data.demo_speech``: seen voices to fit, held-out voices to test) are
encoded once by the offline Whisper base encoder at every layer; for each feature choice
(layer, frames averaged per token) two probes predict what the demo's questions ask (the colour,
the object, the number and the place said in the sentence):

- *ridge*: ridge regression onto one-hot labels over the flattened, standardised tokens;
- *spotting*: a linear score per token, max-pooled over time, trained with Adam (a keyword
  spotter, indifferent to where in the clip the word falls).

A projector can only pass on what the tokens hold, so this bounds what the LLM can learn to
hear, at a fraction of a training run's cost.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmit.data.audio import decode_audio  # noqa: E402
from mmit.data.demo_speech import COLOURS, HELDOUT_VOICES, OBJECTS, PLACES, SEEN_VOICES, draw_clip, synthesize  # noqa: E402
from mmit.models.audio import whisper_base_encoder  # noqa: E402

QUESTIONS = {
    "colour": lambda c: COLOURS.index(c.colour),
    "object": lambda c: sorted(OBJECTS).index(c.object),
    "number": lambda c: c.count - 1,
    "place": lambda c: PLACES.index(c.place),
}
CLASSES = {"colour": len(COLOURS), "object": len(OBJECTS), "number": 5, "place": len(PLACES)}


def ridge_probe(x: torch.Tensor, y: torch.Tensor, n_train: int, classes: int, ridge: float) -> float:
    """Test accuracy of ridge regression onto one-hot labels (linear kernel, solved in the dual)."""
    x = x.flatten(1).double()
    mean, std = x[:n_train].mean(0), x[:n_train].std(0) + 1e-6
    x = (x - mean) / std
    kernel = x @ x.T
    k_train = kernel[:n_train, :n_train]
    eye = torch.eye(n_train, dtype=kernel.dtype)
    alpha = torch.linalg.solve(
        k_train + ridge * k_train.diagonal().mean() * eye, F.one_hot(y[:n_train], classes).double()
    )
    return ((kernel[n_train:, :n_train] @ alpha).argmax(1) == y[n_train:]).double().mean().item()


def spotting_probe(x: torch.Tensor, y: torch.Tensor, n_train: int, classes: int, steps: int = 300) -> float:
    """Test accuracy of a per-token linear score max-pooled over time (x: clips, tokens, dim)."""
    torch.manual_seed(0)
    x = x.float()
    mean, std = x[:n_train].mean((0, 1)), x[:n_train].std((0, 1)) + 1e-6
    x = (x - mean) / std
    layer = torch.nn.Linear(x.shape[-1], classes)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(layer(x[:n_train]).amax(1), y[:n_train]).backward()
        opt.step()
    with torch.no_grad():
        return (layer(x[n_train:]).amax(1).argmax(1) == y[n_train:]).float().mean().item()


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=300, help="seen-voice clips to fit on")
    p.add_argument("--heldout", type=int, default=60, help="held-out-voice clips to test on")
    p.add_argument("--layers", type=int, nargs="+", default=[6, 5, 4, 3])
    p.add_argument("--strides", type=int, nargs="+", default=[10, 5, 20])
    p.add_argument("--max-seconds", type=float, default=6.0)
    p.add_argument("--window-seconds", type=float, default=8.0)
    p.add_argument("--ridge", type=float, default=1.0, help="ridge strength, relative to the mean kernel diagonal")
    p.add_argument("--out", type=Path, default=None, help="write the table here (Markdown)")
    args = p.parse_args(argv)

    clips = [draw_clip(random.Random(f"probe:seen:{i}"), f"s{i}", SEEN_VOICES) for i in range(args.clips)]
    clips += [draw_clip(random.Random(f"probe:heldout:{i}"), f"h{i}", HELDOUT_VOICES) for i in range(args.heldout)]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mmit-probe-audio-") as tmp:
        waves = []
        for clip in clips:
            path = Path(tmp) / clip.name
            synthesize(clip, path)
            waves.append(decode_audio(path.read_bytes(), str(path)))
    print(f"synthesised {len(clips)} clips in {time.perf_counter() - started:.1f} s", flush=True)
    encoder = whisper_base_encoder(max_seconds=args.max_seconds, stride=1, window_seconds=args.window_seconds).eval()
    started = time.perf_counter()
    hidden = []
    with torch.no_grad():
        for i in range(0, len(waves), 16):
            inputs = encoder.preprocess(waves[i : i + 16])
            states = encoder.encoder(inputs, output_hidden_states=True).hidden_states
            hidden.append(torch.stack([h[:, : encoder.kept_frames] for h in states], 1))  # clips, layers, frames, dim
    hidden = torch.cat(hidden)
    print(f"encoded in {time.perf_counter() - started:.1f} s: {tuple(hidden.shape)}", flush=True)
    n_train = args.clips
    rows = []
    for layer in args.layers:
        for stride in args.strides:
            x = hidden[:, layer]
            x = F.avg_pool1d(x.transpose(1, 2), stride, stride, ceil_mode=True).transpose(1, 2)
            row = {"layer": layer, "stride": stride, "tokens": x.shape[1]}
            for question, label in QUESTIONS.items():
                y = torch.tensor([label(c) for c in clips])
                row[f"{question} ridge"] = ridge_probe(x, y, n_train, CLASSES[question], args.ridge)
                row[f"{question} spotting"] = spotting_probe(x, y, n_train, CLASSES[question])
            print(row, flush=True)
            rows.append(row)
    lines = [
        f"Probes on Whisper base frames: {args.clips} seen-voice clips to fit, {args.heldout} held-out-voice clips "
        f"to test ({args.max_seconds:g} s kept of an {args.window_seconds:g} s window). Layer 6 is the last "
        "(after the final layer norm). Accuracy, ridge / spotting; chance is 1/8 (colour, object), 1/5, 1/6.",
        "",
        "| layer | frames per token | tokens | colour | object | number | place |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['layer']} | {r['stride']} | {r['tokens']} | "
            + " | ".join(f"{r[f'{q} ridge']:.2f} / {r[f'{q} spotting']:.2f}" for q in QUESTIONS)
            + " |"
            for r in rows
        ),
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return rows


if __name__ == "__main__":
    main()
