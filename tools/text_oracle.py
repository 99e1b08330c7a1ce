"""The image demo with each image replaced by its exact description: what the LLM learns with perfect sight.

    python tools/text_oracle.py [~/.cache/mmit/datasets/demo_vqa] --out /tmp/oracle
    python -m mmit.train +recipe=text data=files 'data.source.train=[/tmp/oracle/train.jsonl]' \\
        '+data.source.eval={heldout_templates: [/tmp/oracle/val_heldout_templates.jsonl]}' data.system_prompt=none \\
        trainer.max_steps=150 trainer.batch_size=8 trainer.lr=5e-4 trainer.generate_samples=100 trainer.max_new_tokens=12

Every conversation of a demo build's ``train`` and ``val_heldout_templates`` shards is written
to JSONL with its ``<image>`` placeholder replaced by the scene's detailed caption (the demo's
exact ground truth: every shape's colour, size and position), and no media. A text-only run on
these is the ceiling of the image job at the same steps: what is left of the gap to the goals
when the vision pathway is perfect is the LLM's learning, not its sight.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmit.data.samples import PLACEHOLDERS
from mmit.data.shards import read_shards, shard_urls
from mmit.paths import atomic_write_text, cache_dir

SETS = ("train", "val_heldout_templates")


def detailed_captions(build: Path) -> dict[str, str]:
    """Image file name -> the demo's detailed caption, from the sources the build was made from."""
    source = Path(json.loads((build / "manifest.json").read_text())["config"]["prepare"]["out_dir"])
    captions = {}
    for line in (source / "annotations" / "detailed_demo.jsonl").read_text().splitlines():
        record = json.loads(line)
        captions[f"COCO_demo_{record['image_id']:012d}.png"] = record["caption"]
    return captions


def convert(build: Path, out: Path) -> dict[str, int]:
    captions = detailed_captions(build)
    image = PLACEHOLDERS["image"]
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name in SETS:
        lines = []
        for conv in read_shards(shard_urls(build / name)):
            description = captions[conv.meta["group"]]
            messages = [{"role": m.role, "content": m.content.replace(image, description)} for m in conv.messages]
            lines.append(json.dumps({"id": conv.id, "messages": messages, "meta": conv.meta}))
        atomic_write_text(out / f"{name}.jsonl", "\n".join(lines) + "\n")
        counts[name] = len(lines)
    print(f"wrote {counts} to {out}")
    return counts


def main(argv: list[str] | None = None) -> dict[str, int]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("build", type=Path, nargs="?", default=cache_dir("datasets") / "demo_vqa")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    return convert(args.build.expanduser(), args.out)


if __name__ == "__main__":
    main()
