"""Look inside a built dataset: ``python -m mmit.show <dir> [--samples N] [--sheet out.png]``.

Prints the manifest's counts, a few rendered conversations, and draws a contact sheet of
image thumbnails with their first answer.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import textwrap
from itertools import islice
from pathlib import Path

from mmit.cli import user_errors
from mmit.data.samples import Conversation
from mmit.data.shards import read_shards, shard_urls


def set_dirs(root: Path) -> list[Path]:
    """The shard folders under a build directory, or the folder itself."""
    if list(root.glob("shard-*.tar")):
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and list(p.glob("shard-*.tar")))


def render(conv: Conversation) -> str:
    media = ", ".join(f"{m.kind}/{m.ext} {len(m.data or b'') / 1024:.1f} KiB" for m in conv.media) or "no media"
    lines = [f"--- {conv.id}  [{media}]  tasks={conv.meta.get('tasks')} templates={conv.meta.get('templates')}"]
    for m in conv.messages:
        # The role labels the first line; the message's further lines align under its text.
        lines.append(f"{m.role:>9}: " + m.content.replace("\n", "\n" + " " * 11))
    return "\n".join(lines)


def contact_sheet(samples: list[Conversation], path: Path, thumb: int = 160, columns: int = 4) -> int:
    """Thumbnails of the samples' first images with their last answer; returns how many were drawn."""
    from PIL import Image, ImageDraw

    with_images = [c for c in samples if any(m.kind == "image" for m in c.media)]
    if not with_images:
        return 0
    rows = -(-len(with_images) // columns)
    caption_h = 36
    sheet = Image.new("RGB", (columns * thumb, rows * (thumb + caption_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, conv in enumerate(with_images):
        image = Image.open(io.BytesIO(next(m for m in conv.media if m.kind == "image").data)).convert("RGB")
        image.thumbnail((thumb - 8, thumb - 8))
        x, y = (i % columns) * thumb, (i // columns) * (thumb + caption_h)
        sheet.paste(image, (x + (thumb - image.width) // 2, y + 4))
        answer = conv.messages[-1].content.replace("\n", " ")
        draw.text((x + 4, y + thumb), textwrap.shorten(answer, 26, placeholder="..."), fill="black")
        draw.text((x + 4, y + thumb + 14), textwrap.shorten(conv.meta.get("tasks", [""])[-1], 26), fill="gray")
    tmp = path.with_name(f".{path.name}.tmp")
    sheet.save(tmp, format="PNG")
    os.replace(tmp, path)
    return len(with_images)


@user_errors("mmit.show")  # a user's mistake ends with one line naming it, not a traceback
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mmit.show", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="a build directory (with manifest.json) or one shard folder")
    parser.add_argument("--samples", type=int, default=3, help="conversations to print per set")
    parser.add_argument("--sheet", type=Path, help="write a PNG contact sheet of the first images here")
    parser.add_argument("--sheet-count", type=int, default=16)
    args = parser.parse_args(argv)

    manifest = args.path / "manifest.json"
    if manifest.exists():
        data = json.loads(manifest.read_text())
        print(f"recipe {data['recipe']!r}, seed {data['seed']}, mmit {data['mmit_version']}")
        for name, s in data["sets"].items():
            records = s.get("records", s["samples"])  # mmit 0.1.0 wrote one record per sample
            print(
                f"  {name:<22} {s['samples']:>7} samples ({records} shard records) in {len(s['shards'])} shards;"
                f" tasks {s['by_task']}"
            )
        if data["skipped_annotations"]:
            print(f"  skipped annotations: {data['skipped_annotations']}")
    for directory in set_dirs(args.path):
        print(f"\n=== {directory.name}")
        for conv in islice(read_shards(shard_urls(directory)), args.samples):
            print(render(conv))
    if args.sheet:
        first = set_dirs(args.path)[0]
        count = contact_sheet(list(islice(read_shards(shard_urls(first)), args.sheet_count)), args.sheet)
        print(f"\ncontact sheet of {count} images from {first.name}: {args.sheet}")


if __name__ == "__main__":
    main()
