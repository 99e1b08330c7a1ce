"""Look inside a built dataset: ``python -m mmit.show <dir> [--set NAME] [--samples N] [--sheet out.png] [--tokens]``.

Prints the manifest's counts, a few rendered conversations, and draws a contact sheet: one cell per
distinct image, with the first question asked about it and its answer. ``--tokens [overrides]``
counts each conversation's tokens by part (``mmit.data.token_parts``) with the tokenizer, chat
template, system prompt and media token counts of the training config those overrides compose.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import textwrap
from collections import defaultdict
from collections.abc import Iterable
from itertools import islice
from pathlib import Path

from mmit.cli import check_chosen, user_errors, whole_number
from mmit.data.samples import BAD_JSON, PLACEHOLDERS, Conversation
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

    from mmit.data.media import decode_image_bytes

    images = distinct_images(samples, count)
    if not images:
        return 0
    line_h, width = 13, thumb // 6 - 1
    caption_h = 6 * line_h + 6
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * thumb, rows * (thumb + caption_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (data, conv, n) in enumerate(images):
        image = decode_image_bytes(data, f"the image of sample {conv.id}", draft=(thumb, thumb))
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


def _not_a_manifest(manifest: Path, why: str) -> ValueError:
    return ValueError(f"{manifest}: not a build manifest as mmit.build writes it ({why})")


def read_manifest(manifest: Path) -> tuple[dict, list[str]]:
    """A build's manifest and the lines listing its sets. A build someone handed you: its manifest is
    data, named when it is not one."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        lines = [f"recipe {data['recipe']!r}, seed {data['seed']}, mmit {data['mmit_version']}"]
        for name, s in data["sets"].items():
            records = s.get("records", s["samples"])  # mmit 0.1.0 wrote one record per sample
            lines.append(
                f"  {name:<22} {s['samples']:>7} samples ({records} shard records) in {len(s['shards'])} shards;"
                f" tasks {s['by_task']}"
            )
        if data["skipped_annotations"]:
            lines.append(f"  skipped annotations: {data['skipped_annotations']}")
    except (*BAD_JSON, KeyError, TypeError, AttributeError) as err:
        raise _not_a_manifest(manifest, f"{type(err).__name__}: {err}") from err
    return data, lines


def manifest_wording(manifest: Path, data: dict | None):
    """The templates and hints a build's manifest names, for ``--tokens`` (``recipe_wording``); a
    ``config`` not as mmit.build writes it is named with the manifest."""
    from mmit.data.token_parts import recipe_wording

    try:
        return recipe_wording(data)
    except ValueError as err:
        raise _not_a_manifest(manifest, str(err)) from err


def token_counter(overrides: list[str], wording):
    """(a TokenParts counter, a line describing it, data.max_length) for the training config that
    ``overrides`` compose: its tokenizer and chat template with ``data.system_prompt`` applied, and each
    media placeholder expanded as its encoder and projector would (one token where none is configured);
    ``wording``: the build's templates and hints (``manifest_wording``)."""
    from mmit.data.samples import MediaSlot
    from mmit.data.token_parts import TokenParts
    from mmit.factory import build_model
    from mmit.inference import compose_config

    cfg = compose_config(overrides)
    built = build_model(cfg)
    slots = dict(built.model.slots)
    media = []
    for kind, placeholder in PLACEHOLDERS.items():
        if kind in slots:
            media.append(f"{kind} {slots[kind].count} tokens each")
            continue
        built.tokenizer.add_tokens([placeholder], special_tokens=True)
        slots[kind] = MediaSlot(placeholder, built.tokenizer.convert_tokens_to_ids(placeholder), 1)
        media.append(f"{kind}: no encoder configured, 1 token each")
    system = cfg.data.get("system_prompt") or "model_default"
    described = f"{built.source}; data.system_prompt={system}; {', '.join(media)}"
    return TokenParts(built.tokenizer, list(slots.values()), wording), described, cfg.data.max_length


def task_key(conv: Conversation) -> str:
    """A conversation's tasks, each once, sorted (a multi-turn VQA conversation may mix several)."""
    return "+".join(sorted(set(conv.meta.get("tasks") or []))) or "conversation"


def token_table(name: str, counts: dict[str, list[dict[str, int]]], max_length: int) -> str:
    """Per task and for all: each part's mean, median and max tokens per conversation, and its share
    of all the tokens."""
    from mmit.data.token_parts import PARTS

    columns = [*PARTS, "total"]
    every = [c for rows in counts.values() for c in rows]
    if not every:
        return f"{name}: no conversations"
    over = sum(sum(c.values()) > max_length for c in every)
    width = max(len(task) for task in [*counts, "task"])
    lines = [
        f"{name}: {len(every)} conversations, {over} longer than data.max_length={max_length}",
        f"{'task':<{width}} {'n':>6}  {'':<6}" + "".join(f"{c:>9}" for c in columns),
    ]
    for task, rows in [*sorted(counts.items()), ("all", every)]:
        values = {part: [r[part] for r in rows] for part in PARTS}
        values["total"] = [sum(r.values()) for r in rows]
        total = sum(values["total"])
        stats = {
            "mean": [f"{statistics.fmean(values[c]):.1f}" for c in columns],
            "median": [f"{statistics.median(values[c]):g}" for c in columns],
            "max": [f"{max(values[c])}" for c in columns],
            "share": [f"{100 * sum(values[c]) / max(total, 1):.1f}%" for c in columns],
        }
        for k, (stat, cells) in enumerate(stats.items()):
            head = f"{task:<{width}} {len(rows):>6}" if k == 0 else " " * (width + 7)
            lines.append(f"{head}  {stat:<6}" + "".join(f"{cell:>9}" for cell in cells))
    return "\n".join(lines)


def print_token_counts(directories: list[Path], overrides: list[str], wording, limit: int) -> None:
    counter, described, max_length = token_counter(overrides, wording)
    print(f"\n=== tokens per conversation by part ({described})")
    for directory in directories:
        counts: dict[str, list[dict[str, int]]] = defaultdict(list)
        for conv in islice(read_shards(shard_urls(directory)), limit or None):
            counts[task_key(conv)].append(counter(conv))
        print("\n" + token_table(directory.name, counts, max_length))
    print(
        "\nanswer: the label tokens (its share is theirs); media: placeholders as expanded; format: role"
        " markers and other markup; system: the whole system turn. Attribution: mmit/data/token_parts.py"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mmit.show", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="a build directory (with manifest.json) or one shard folder")
    parser.add_argument(
        "--set", nargs="+", metavar="NAME", dest="only", help="only these sets (printed, drawn and counted)"
    )
    parser.add_argument("--samples", type=whole_number(0), default=3, help="conversations to print per set")
    parser.add_argument(
        "--sheet",
        type=Path,
        help="write a PNG contact sheet of the first set (or --set's): one cell per distinct image",
    )
    parser.add_argument("--sheet-count", type=whole_number(1), default=16, help="distinct images on the sheet")
    parser.add_argument("--tokens", action="store_true", help="count tokens per conversation by part, per set and task")
    parser.add_argument(
        "--llm", help="the LLM whose tokenizer counts (a conf/llm option; default smollm2_135m, or the recipe's)"
    )
    parser.add_argument(
        "--token-samples", type=whole_number(0), default=0, help="conversations counted per set (0: all)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="with --tokens: training config overrides (+recipe=vqa, data.system_prompt=none, vision_encoder=...)",
    )
    args = parser.parse_intermixed_args(argv)
    if args.overrides and not args.tokens:
        parser.error(f"config overrides {args.overrides} need --tokens")
    return args


def token_overrides(args: argparse.Namespace) -> list[str]:
    """The overrides a token count composes: ``--llm``'s, else SmolLM2 unless a recipe or override picks one."""
    if args.llm:
        return [*args.overrides, f"llm={args.llm}"]
    if any(o.startswith(("llm=", "+recipe=", "recipe=")) for o in args.overrides):
        return list(args.overrides)
    return [*args.overrides, "llm=smollm2_135m"]


@user_errors("mmit.show")  # a user's mistake ends with one line naming it, not a traceback
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.path.is_dir():
        raise FileNotFoundError(f"{args.path} is not a folder (a build directory or a shard folder)")

    manifest = args.path / "manifest.json"
    data, lines = read_manifest(manifest) if manifest.exists() else (None, [])
    sets = set_dirs(args.path)
    if args.only and sets:  # checked before anything is printed or drawn
        check_chosen("--set", args.only, [d.name for d in sets], str(args.path))
        sets = [d for d in sets if d.name in args.only]
    wording = None
    if args.tokens:  # checked before anything is printed or drawn
        if data is None and sets == [args.path]:  # a set's folder: its build's manifest names the templates and hints
            parent = args.path.resolve().parent / "manifest.json"
            if parent.is_file():
                manifest, (data, _) = parent, read_manifest(parent)
        wording = manifest_wording(manifest, data)
    if lines:
        print("\n".join(lines))
    if not sets:
        raise ValueError(f"{args.path} holds no shard sets (shard-*.tar files, in it or in its folders)")
    for directory in sets:
        print(f"\n=== {directory.name}")
        for conv in islice(read_shards(shard_urls(directory)), args.samples):
            print(render(conv))
    if args.sheet:
        count = contact_sheet(read_shards(shard_urls(sets[0])), args.sheet, args.sheet_count)
        if not count:
            raise ValueError(f"no contact sheet written to {args.sheet}: {sets[0]} holds no images to draw")
        print(
            f"\ncontact sheet of {count} distinct images from {sets[0].name}, each with a question and its answer: {args.sheet}"
        )
    if args.tokens:
        print_token_counts(sets, token_overrides(args), wording, args.token_samples)


if __name__ == "__main__":
    main()
