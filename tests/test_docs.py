"""Every command shown in README.md and docs/*.md works as written.

Each fenced shell command is checked without running it: a training command's overrides compose
and pass the config checks, a build recipe composes with its overrides, the other tools' options
parse (and their ``--base`` configs compose), and scripts exist. A command whose comment starts
with ``mmit.<tool>:`` shows an error and must fail with it. The fast ones run for real: the blocks
of docs/own_data.md marked ``<!-- tested -->``, in order, in a fresh folder (a folder of images and
a JSON file to a trained, evaluated and exported model loaded with plain transformers / peft), and
the README's dataset build and ``mmit.show``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"(<!-- tested -->\n)?```(\w*)\n(.*?)```", re.S)
README_RUNS = [
    "python -m mmit.build demo_vqa",
    "python -m mmit.show ~/.cache/mmit/datasets/demo_vqa --samples 2 --sheet sheet.png",
]


@dataclass
class Command:
    doc: str
    line: int
    text: str
    argv: list[str]
    comment: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def blocks(path: Path) -> list[tuple[bool, str, str, int]]:
    """(tested, language, text, first line) of each fenced block."""
    text = path.read_text(encoding="utf-8")
    return [
        (bool(m.group(1)), m.group(2), m.group(3), text[: m.start(3)].count("\n") + 1) for m in FENCE.finditer(text)
    ]


def commands(path: Path) -> list[Command]:
    """The shell commands of a file's bash blocks: continuation lines joined, heredoc bodies left out,
    ``<placeholders>`` made into words."""
    found = []
    for _, language, text, first in blocks(path):
        if language not in ("bash", "sh", "shell"):
            continue
        lines, heredoc = text.splitlines(), None
        i = 0
        while i < len(lines):
            line, number = lines[i], first + i
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
            i += 1
            if heredoc is not None:
                heredoc = None if line.strip() == heredoc else heredoc
                continue
            match = re.search(r"<<-?\s*'?(\w+)'?", line)
            if match:
                heredoc = match.group(1)
                continue
            code, comment = split_comment(line)
            tokens = shlex.split(re.sub(r"<([\w .-]+)>", lambda m: m.group(1).replace(" ", "_"), code))
            if tokens:
                found.append(Command(path.name, number, line.strip(), tokens, comment))
    return found


def split_comment(line: str) -> tuple[str, str]:
    """The code and the comment of a shell line: from the first ``#`` outside quotes after a space."""
    quote = None
    for k, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (k == 0 or line[k - 1].isspace()):
            return line[:k], line[k + 1 :].strip()
    return line, ""


ALL = [c for doc in DOCS for c in commands(doc)]


def _sweep_first(override: str) -> str:
    """``k=a,b`` (a Hydra sweep) as its first value; commas inside brackets or quotes are kept."""
    key, sep, value = override.partition("=")
    if not sep or value[:1] in "[{'\"":
        return override
    return f"{key}={value.split(',')[0]}"


def check(command: Command) -> None:
    """Validate one command without running it; raises what the command would."""
    from mmit.build import compose_recipe
    from mmit.inference import compose_config

    argv = command.argv
    if argv[0] == "torchrun":
        argv = ["python", *argv[argv.index("-m") :]]
    if argv[0] == "bash" or (argv[0] == "python" and argv[1].endswith(".py")):
        assert (REPO / argv[1]).is_file(), f"{argv[1]} does not exist"
        return
    if argv[0] in ("cat", "source", "tensorboard") or argv[:3] == [".venv/bin/python", "-m", "pytest"]:
        return
    assert argv[:2] == ["python", "-m"] and argv[2].startswith("mmit."), f"not a command this test knows: {argv}"
    tool, args = argv[2], argv[3:]
    if tool == "mmit.train":
        overrides, skip = [], False
        for arg in args:
            if skip:
                skip = False
            elif arg in ("-m", "--multirun"):
                continue
            elif arg == "--cfg":
                skip = True
            else:
                overrides.append(_sweep_first(arg))
        compose_config(overrides)
    elif tool in ("mmit.build", "mmit.synth"):
        compose_recipe(args[0], args[1:])
    elif tool in ("mmit.eval", "mmit.chat", "mmit.export", "mmit.demo", "mmit.show"):
        import importlib

        parsed = importlib.import_module(tool).parse_args(args)
        if getattr(parsed, "base", None):
            compose_config(parsed.base)
    else:
        raise AssertionError(f"{command}: no check for {tool}")


@pytest.fixture(scope="module")
def guide_folder(tmp_path_factory):
    """Runs the tested blocks of docs/own_data.md in order, in a fresh folder (tools/ linked in, as in
    a clone); returns the folder and each block's output."""
    root = tmp_path_factory.mktemp("own-data")
    (root / "tools").symlink_to(REPO / "tools")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    outputs = []
    for tested, language, text, line in blocks(REPO / "docs" / "own_data.md"):
        if not tested:
            continue
        shell = ["bash", "-euo", "pipefail", "-c", text] if language == "bash" else [sys.executable, "-c", text]
        run = subprocess.run(shell, cwd=root, env=env, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, f"own_data.md:{line} failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
        outputs.append(run.stdout + run.stderr)
    return root, outputs


@pytest.mark.slow
def test_the_own_data_guide_runs_from_images_and_json_to_an_exported_model(guide_folder):
    root, outputs = guide_folder
    assert len(outputs) >= 4
    assert (root / "runs" / "my_data_tiny" / "summary.md").is_file()
    assert list((root / "runs" / "my_data_tiny" / "eval").glob("*/report.md"))
    assert {p.name for p in (root / "exports" / "my_data_tiny").iterdir()} == {"adapter", "merged", "llava"}
    assert (root / "shards" / "my_data" / "manifest.json").is_file() and (root / "my_data_sheet.png").is_file()
    assert (root / "runs" / "my_data_shards" / "summary.md").is_file()
    assert "Traceback" not in "".join(outputs)


@pytest.mark.slow
def test_the_guides_run_is_evaluated_from_another_folder(guide_folder, tmp_path):
    """The guide trains on relative paths (my_data/train.json); its run's config.yaml names them from the
    folder it trained in, so mmit.eval finds the run's own sets from anywhere."""
    run_dir = guide_folder[0] / "runs" / "my_data_tiny"
    assert f"{guide_folder[0]}/my_data/val.json" in (run_dir / "config.yaml").read_text()  # written absolutely
    argv = [sys.executable, "-m", "mmit.eval", str(run_dir), "--max-samples", "2", "--no-swap-media"]
    run = subprocess.run([*argv, "--out", str(tmp_path / "e")], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "heldout" in json.loads((tmp_path / "e" / "metrics.json").read_text())["scores"]["tasks"]


@pytest.mark.parametrize("command", [c for c in ALL if c.doc == "own_data.md"], ids=str)
@pytest.mark.slow
def test_every_command_of_the_guide_is_valid(command, guide_folder, monkeypatch):
    monkeypatch.chdir(guide_folder[0])  # its files exist there, as for a reader who ran the tested blocks
    _check_as_documented(command)


@pytest.mark.parametrize("command", [c for c in ALL if c.doc != "own_data.md"], ids=str)
def test_every_documented_command_is_valid(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _check_as_documented(command)


def _check_as_documented(command: Command) -> None:
    expected = re.match(r"(mmit\.\w+): (.*?)(\.\.\.|$)", command.comment)
    if not expected:
        check(command)
        return
    with pytest.raises(Exception) as failed:  # the documented error, from the same checks the command runs
        check(command)
    assert expected.group(2).strip() in str(failed.value), f"{command}: {failed.value}"


@pytest.mark.slow
def test_the_readme_builds_and_shows_the_demo_as_written(tmp_path):
    listed = {c.text.split("  #")[0].strip() for c in commands(REPO / "README.md")}
    assert set(README_RUNS) <= listed
    env = {k: v for k, v in os.environ.items() if k != "MMIT_CACHE"}  # the README's ~/.cache/mmit
    env.update(HOME=str(tmp_path), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for line in README_RUNS:
        run = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"{line}\n{run.stderr[-3000:]}"
    assert (tmp_path / ".cache" / "mmit" / "datasets" / "demo_vqa" / "manifest.json").is_file()
    assert (tmp_path / "sheet.png").is_file()
