"""Look inside a built dataset: ``python -m mmit.show <dir> [--samples N] [--sheet out.png]``.

Prints the manifest's counts, a few rendered conversations, and draws a contact sheet: one cell per
distinct image, with the first question asked about it and its answer.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import textwrap
from collections.abc import Iterable
from itertools import islice
from pathlib import Path

from mmit.cli import user_errors
from mmit.data.samples import Conversation
from mmit.data.shards import read_shards, shard_urls

PLACEHOLDER = re.compile(r"<image>|<audio>")


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


def first_exchange(conv: Conversation) -> tuple[str, str]:
    """The first user turn (without media placeholders) and the answer to it."""
    question = answer = ""
    for i, m in enumerate(conv.messages):
        if m.role == "user":
            question = " ".join(PLACEHOLDER.sub(" ", m.content).split())
            answer = next((n.content for n in conv.messages[i + 1 :] if n.role == "assistant"), "")
            break
    return question, " ".join(answer.split())


def _labelled(label: str, text: str, width: int, colour: str, lines: int = 2) -> list[tuple[str, str]]:
    """``text`` wrapped into at most ``lines`` lines after ``label`` (continuations indented, a cut marked)."""
    wrapped = textwrap.wrap(text, width - len(label)) or [""]
    if len(wrapped) > lines:
        rest = " ".join(wrapped[lines - 1 :])
        wrapped = [
            *wrapped[: lines - 1],
            rest if len(rest) <= width - len(label) else rest[: width - len(label) - 3] + "...",
        ]
    return [((label if i == 0 else " " * len(label)) + line, colour) for i, line in enumerate(wrapped)]


def distinct_images(convs: Iterable[Conversation], count: int) -> list[tuple[bytes, Conversation, int]]:
    """The first ``count`` distinct images (by content), each with its first conversation and how many
    conversations of those read are about it. A shard sample holds every conversation about an image,
    so consecutive conversations often share one."""
    found: dict[str, list] = {}
    for conv in convs:
        image = next((m for m in conv.media if m.kind == "image"), None)
        if image is None:
            continue
        data = image.data if image.data is not None else image.read()
        key = hashlib.sha256(data).hexdigest()
        if key in found:
            found[key][2] += 1
        elif len(found) < count:
            found[key] = [data, conv, 1]
        else:
            break
    return [tuple(entry) for entry in found.values()]


def contact_sheet(
    samples: Iterable[Conversation], path: Path, count: int = 16, thumb: int = 200, columns: int = 4
) -> int:
    """One cell per distinct image: its thumbnail, the first question asked about it and the answer, and
    its task; returns how many images were drawn."""
    from PIL import Image, ImageDraw

    images = distinct_images(samples, count)
    if not images:
        return 0
    line_h, width = 13, thumb // 6 - 1
    caption_h = 6 * line_h + 6
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * thumb, rows * (thumb + caption_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (data, conv, n) in enumerate(images):
        image = Image.open(io.BytesIO(data)).convert("RGB")
        image.thumbnail((thumb - 8, thumb - 8))
        x, y = (i % columns) * thumb, (i // columns) * (thumb + caption_h)
        sheet.paste(image, (x + (thumb - image.width) // 2, y + 4))
        question, answer = first_exchange(conv)
        lines = _labelled("Q: ", question, width, "black") + _labelled("A: ", answer, width, "darkblue")
        task = "/".join(conv.meta.get("tasks", [])) or "conversation"
        lines.append((textwrap.shorten(f"{task}; {n} conversation{'s' if n > 1 else ''}", width), "gray"))
        for k, (text, colour) in enumerate(lines):
            draw.text((x + 4, y + thumb + k * line_h), text, fill=colour)
    tmp = path.with_name(f".{path.name}.tmp")
    sheet.save(tmp, format="PNG")
    os.replace(tmp, path)
    return len(images)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mmit.show", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="a build directory (with manifest.json) or one shard folder")
    parser.add_argument("--samples", type=int, default=3, help="conversations to print per set")
    parser.add_argument("--sheet", type=Path, help="write a PNG contact sheet: one cell per distinct image")
    parser.add_argument("--sheet-count", type=int, default=16, help="distinct images on the sheet")
    return parser.parse_args(argv)


@user_errors("mmit.show")  # a user's mistake ends with one line naming it, not a traceback
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.path.is_dir():
        raise FileNotFoundError(f"{args.path} is not a folder (a build directory or a shard folder)")

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
        count = contact_sheet(read_shards(shard_urls(first)), args.sheet, args.sheet_count)
        print(
            f"\ncontact sheet of {count} distinct images from {first.name}, each with a question and its answer: {args.sheet}"
        )


if __name__ == "__main__":
    main()
