"""What the ablation tools share (tools/grounding_ablation.py, tools/audio_ablation.py): named and
custom runs of ``python -m mmit.train`` from one command line, each run's row appended to
``<root>/results.jsonl``, and the Markdown table of every row so far printed (and written)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def parser(doc: str, default_root: str, per_task: int, per_task_help: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", default=[], help="named runs (see --list), in order")
    p.add_argument("--custom", nargs="+", default=[], metavar="NAME=OVERRIDES", help="e.g. lr3='trainer.lr=3e-4'")
    p.add_argument("--root", type=Path, default=Path(default_root))
    p.add_argument("--per-task", type=int, default=per_task, help=per_task_help)
    p.add_argument("--out", type=Path, help="also write the Markdown table here")
    p.add_argument("--list", action="store_true", help="list the named runs and stop")
    p.add_argument("--table", action="store_true", help="print the table of the recorded rows and stop")
    return p


def planned(args: argparse.Namespace, runs: dict[str, tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """(name, overrides) of the runs the command line asks for; none for --list (which prints them) or --table."""
    if args.list:
        for name, (what, overrides) in runs.items():
            print(f"{name:24s} {what}: {' '.join(overrides) or '(none)'}")
        return []
    if args.table:
        return []
    todo = [(name, runs[name][1]) for name in args.runs]
    for item in args.custom:
        name, _, overrides = item.partition("=")
        todo.append((name, overrides.split()))
    return todo


def train(command: list[str], log_file: Path) -> tuple[float, float]:
    """Run ``python <command>`` (output to ``log_file``); returns its wall and CPU minutes."""
    command = [sys.executable, *command]
    print("$", " ".join(command), flush=True)
    started, cpu_before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_file, "w") as log:
        subprocess.run(
            command, check=True, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TQDM_MININTERVAL": "30"}
        )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - cpu_before.ru_utime) + (after.ru_stime - cpu_before.ru_stime)
    return (time.perf_counter() - started) / 60, cpu / 60


def record(root: Path, row: dict) -> None:
    with open(root / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def report(root: Path, table: Callable[[list[dict]], str], out: Path | None) -> list[dict]:
    """Print (and write to ``out``) the table of every row recorded under ``root``; returns the rows."""
    results = root / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    emit(table(rows), out)
    return rows


def emit(text: str, out: Path | None) -> None:
    print(text)
    if out:
        out.write_text(text + "\n")


def row(name: str, overrides: list[str], summary: dict, minutes: float, cpu_minutes: float, **figures) -> dict:
    """A results row: the run, its cost (steps, minutes, tokens/s), the machine and date, then ``figures``."""
    import platform

    return {
        "name": name,
        "overrides": overrides,
        "steps": summary["steps"],
        "train_minutes": summary["train_seconds"] / 60,
        "minutes": minutes,
        "cpu_minutes": cpu_minutes,
        "tokens_per_second": summary["tokens_per_second"],
        **figures,
        "machine": platform.processor() or platform.machine(),
        "threads": os.environ.get("OMP_NUM_THREADS", ""),
        "date": time.strftime("%Y-%m-%d"),
    }
