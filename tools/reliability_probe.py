"""Try every kind of bad input and crafted file that issue 21 names, and print what mmit did.

    python tools/reliability_probe.py > /tmp/probe.md

Each bad record is put between good ones and read twice: with ``on_error=raise`` (the error must
name the file and line, or the shard and sample key) and with ``on_error=skip`` (it must be
counted under its reason, and every good sample kept). Each crafted run folder is opened the way
``mmit.eval`` / ``mmit.export`` / ``mmit.chat`` open one (it must be refused, naming the file and
key, with nothing run). The cases are the tests' own tables (tests/data/test_field_types.py,
tests/data/test_shard_checks.py, tests/test_saved_config.py), so the figures and the tests agree.
The Markdown tables go into docs/reliability.md.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

os.environ.setdefault("MMIT_CACHE", tempfile.mkdtemp(prefix="mmit-probe-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "data")]

from PIL import Image  # noqa: E402

from mmit.build import BuildError, build  # noqa: E402
from mmit.data.sources import DataFileError, read_conversations  # noqa: E402
from mmit.paths import RECIPES_DIR  # noqa: E402

GOOD_TURNS = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]
IMAGE_TURNS = [{"role": "user", "content": "<image>\nColour?"}, {"role": "assistant", "content": "red"}]


def _png(size=(8, 8), color="red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def _bomb() -> bytes:
    out = io.BytesIO()
    Image.new("1", (12000, 12000)).save(out, format="PNG")
    return out.getvalue()


def data_file_cases(root: Path) -> dict[str, dict]:
    """Bad JSONL records (data=files and the build's JSONL reader) by kind."""
    from test_field_types import BAD_RECORDS

    root.mkdir(parents=True, exist_ok=True)
    (root / "ok.png").write_bytes(_png())
    (root / "broken.png").write_bytes(_png()[:40])
    (root / "bomb.png").write_bytes(_bomb())
    (root / "eps.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n")
    (root.parent / "secret.png").write_bytes(_png())
    if not (root / "link.png").exists():
        os.symlink(root.parent / "secret.png", root / "link.png")
    cases = {f"field type: {k}": v for k, v in BAD_RECORDS.items()}
    cases.update(
        {
            "unknown role": {"messages": [GOOD_TURNS[0], {"role": "wizard", "content": "hi"}]},
            "empty answer": {"messages": [GOOD_TURNS[0], {"role": "assistant", "content": " "}]},
            "no assistant turn": {"messages": GOOD_TURNS[:1]},
            "the assistant speaks first": {"messages": [GOOD_TURNS[1], *GOOD_TURNS]},
            "a lone surrogate in the text (JSON's \\ud800)": {
                "messages": [{"role": "user", "content": "hi \ud800"}, GOOD_TURNS[1]]
            },
            "a placeholder and no image field": {"messages": IMAGE_TURNS},
            "no conversation field": {"text": "x"},
            "image path ../": {"messages": IMAGE_TURNS, "image": "../secret.png"},
            "image path absolute": {"messages": IMAGE_TURNS, "image": str(root.parent / "secret.png")},
            "image symlink leaving the folder": {"messages": IMAGE_TURNS, "image": "link.png"},
            "image missing": {"messages": IMAGE_TURNS, "image": "nowhere.png"},
            "image corrupt": {"messages": IMAGE_TURNS, "image": "broken.png"},
            "image path with a NUL": {"messages": IMAGE_TURNS, "image": "ok\u0000.png"},
            "PostScript named .png (Pillow would run Ghostscript on it)": {"messages": IMAGE_TURNS, "image": "eps.png"},
            "image bomb (12000 x 12000 PNG)": {"messages": IMAGE_TURNS, "image": "bomb.png"},
            "more placeholders than images": {
                "messages": [{"role": "user", "content": "<image><image>?"}, IMAGE_TURNS[1]],
                "image": "ok.png",
            },
        }
    )
    return cases


def probe_data_files(root: Path) -> list[list[str]]:
    rows = []
    cases = data_file_cases(root / "files")
    raw = {"bad JSON": b"{not json", "not UTF-8": b'{"messages": "caf\xe9"}', "duplicate id": None}
    for kind in [*cases, *raw]:
        path = root / "files" / "data.jsonl"
        good = [{"id": f"g{i}", "messages": GOOD_TURNS} for i in range(3)]
        if kind == "duplicate id":
            lines = [json.dumps(good[0]).encode(), json.dumps(good[0]).encode()]
        elif kind in raw:
            lines = [json.dumps(good[0]).encode(), raw[kind]]
        else:
            lines = [json.dumps(good[0]).encode(), json.dumps(cases[kind]).encode()]
        lines += [json.dumps(g).encode() for g in good[1:]]
        path.write_bytes(b"\n".join(lines) + b"\n")
        rows.append(
            [kind, *_policy(lambda on_error, c, path=path: read_conversations([path], on_error, c), f"{path}:2", 3)]
        )
    rows.append(["image field, model without a vision encoder", *_no_encoder(root)])
    return rows


def _no_encoder(root: Path) -> list[str]:
    path = root / "files" / "media.jsonl"
    records = [{"id": "g0", "messages": GOOD_TURNS}, {"id": "b", "messages": IMAGE_TURNS, "image": "ok.png"}]
    records += [{"id": f"g{i}", "messages": GOOD_TURNS} for i in (1, 2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return _policy(lambda on_error, c: read_conversations([path], on_error, c, media_kinds=set()), f"{path}:2", 3)


def _policy(read, location: str | tuple[str, ...], goods: int) -> list[str]:
    """[raise outcome, skip outcome, good samples kept] for one bad input; ``location``: what the
    error must name (any one of them)."""
    places = (location,) if isinstance(location, str) else location
    try:
        read("raise", Counter())
        raised = "**not refused**"
    except (DataFileError, BuildError) as err:
        named = any(p in str(err) for p in places)
        raised = "error names file and line" if named else f"**error without place**: {err}"
    except Exception as err:  # noqa: BLE001 (what the probe looks for)
        raised = f"**{type(err).__name__}**: {err}"
    counted = Counter()
    try:
        kept = read("skip", counted)
        skipped = ", ".join(f"{k} {v}" for k, v in counted.items()) or "**nothing counted**"
        good = f"{len(kept)}/{goods}"
    except Exception as err:  # noqa: BLE001
        skipped, good = f"**{type(err).__name__}**: {err}", "0"
    return [raised, skipped, good]


def probe_shards(root: Path) -> list[list[str]]:
    from test_shard_checks import BAD, _good, _shard

    rows = []
    for kind, (members, _reason) in BAD.items():
        folder = root / "shards" / kind
        shard = _shard(folder, [*_good("s-000"), *members, *_good("s-002")])
        where = f"{shard}:{'../../' if 'parent' in kind else '/tmp/' if 'absolute' in kind else ''}s-bad"
        rows.append([kind, *_policy(lambda on_error, c, f=folder: read_conversations([f], on_error, c), where, 2)])
    folder = root / "shards" / "cut"
    shard = _shard(folder, [*_good("s-000"), *_good("s-001"), *_good("s-002")])
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2 + 100])
    rows.append(
        ["shard cut short", *_policy(lambda on_error, c: read_conversations([folder], on_error, c), str(shard), 2)]
    )
    rows[-1][-1] += " (the third was in the lost tail)"
    return rows


def probe_build(root: Path) -> list[list[str]]:
    """The build's JSONL reader over the same bad records: skipped_annotations / set skips."""
    rows = []
    cases = data_file_cases(root / "build")
    for kind, record in cases.items():
        path = root / "build" / "data.jsonl"
        records = [{"id": f"g{i}", "messages": GOOD_TURNS} for i in range(3)]
        records.insert(1, {**record, "id": "bad"} if isinstance(record, dict) and "id" not in record else record)
        path.write_text("".join(json.dumps(r) + "\n" for r in records))

        def run(on_error, counted, path=path, kind=kind):
            cfg = _recipe(root / "build" / f"out-{abs(hash(kind))}-{on_error}", path, on_error)
            manifest = build(cfg)
            counted.update(manifest["skipped_annotations"])
            train = manifest["sets"].get("train", {"samples": 0, "skipped": {}})
            counted.update(train["skipped"])
            return [None] * train["samples"]

        rows.append([kind, *_policy(run, (f"{path}:2", "sample bad"), 3)])
    return rows


def _recipe(out: Path, path: Path, on_error: str):
    from omegaconf import OmegaConf

    return OmegaConf.create(
        {
            "name": "probe",
            "seed": 0,
            "out_dir": str(out),
            "templates": str(RECIPES_DIR / "templates" / "vision.yaml"),
            "eval_fraction": 0.0,
            "shard_size": 10,
            "num_workers": 1,
            "on_error": on_error,
            "shaping": {},
            "sources": [{"_target_": "mmit.data.annotations.read_jsonl", "path": str(path)}],
        }
    )


def probe_run_folders(root: Path) -> list[list[str]]:
    import yaml
    from hydra import compose, initialize_config_dir
    from test_saved_config import CRAFTED, TEXT

    from mmit.factory import resolved_yaml
    from mmit.inference import load_run
    from mmit.paths import CONF_DIR
    from mmit.saved_config import UnsafeConfigError

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        base = resolved_yaml(compose(config_name="train", overrides=TEXT))
    rows = []
    cases = {name: (edit, key) for name, (edit, key) in CRAFTED.items()}
    for pointer in ("..", "/etc", "step-0000001/../../.."):
        cases[f"checkpoints/latest = {pointer!r}"] = (pointer, "latest")
    for name, (edit, key) in cases.items():
        run_dir = root / "runs" / name.replace("/", "_").replace("'", "")
        run_dir.mkdir(parents=True)
        marker = run_dir / "pwned.txt"
        cfg = yaml.safe_load(base)
        if callable(edit):
            edit(marker)(cfg)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
        checkpoint = "none"
        if not callable(edit):
            (run_dir / "checkpoints").mkdir()
            (run_dir / "checkpoints" / "latest").write_text(edit + "\n")
            checkpoint = "latest"
        crafted = {p.name for p in run_dir.iterdir()}
        try:
            load_run(run_dir, checkpoint=checkpoint)
            outcome = "**loaded**"
        except (UnsafeConfigError, ValueError, FileNotFoundError) as err:
            named = key in str(err) and (str(run_dir) in str(err))
            outcome = "refused, naming file and key" if named else f"refused: {str(err)[:80]}"
        left = sorted({p.name for p in run_dir.iterdir()} - crafted)
        ran = f"**yes**: {left}" if left else "nothing"
        rows.append([name, outcome, ran])
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="mmit-probe-"))
    header = ["bad input", "on_error=raise", "on_error=skip: counted as", "good samples kept"]
    sections = [
        ("Data files (`data=files`, JSONL)", header, probe_data_files(root)),
        ("Shard folders (`data=shards`, the demo builds, `mmit.eval --sets`)", header, probe_shards(root)),
        ("The build (`mmit.build`, JSONL reader)", header, probe_build(root)),
        (
            "Crafted run folders (`mmit.eval` / `mmit.export` / `mmit.chat` / demo)",
            ["crafted", "outcome", "code run / files written"],
            probe_run_folders(root),
        ),
    ]
    for title, head, rows in sections:
        print(f"### {title}\n\n{table(head, rows)}\n")


if __name__ == "__main__":
    main()
