"""One writer per folder: a training run folder and a build's out_dir are locked (fcntl.flock) by
the process writing them; a second writer stops at once and says who holds the folder. Readers
(evaluation while training) are not locked out."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mmit.paths import RECIPES_DIR

TEXT = [
    "+recipe=text_tiny",
    "data.source.n_train=32",
    "data.source.n_eval=4",
    "trainer.max_steps=2",
    "trainer.save_every=2",
    "trainer.eval_every=1000",
    "trainer.generate_samples=0",
    "trainer.eval_batches=1",
    "trainer.tensorboard=false",
]


def recipe(src: Path, out: Path, n: int = 8):
    """A small build recipe over a JSONL file of ``n`` text conversations."""
    src.mkdir(parents=True, exist_ok=True)
    lines = [
        {
            "id": f"c{i}",
            "messages": [{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i}"}],
        }
        for i in range(n)
    ]
    (src / "data.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return OmegaConf.create(
        {
            "name": "locks",
            "seed": 0,
            "out_dir": str(out),
            "templates": str(RECIPES_DIR / "templates" / "vision.yaml"),
            "eval_fraction": 0.0,
            "shard_size": 4,
            "num_workers": 1,
            "on_error": "raise",
            "shaping": {},
            "sources": [{"_target_": "mmit.data.annotations.read_jsonl", "path": str(src / "data.jsonl")}],
        }
    )


def _hold(folder: Path, role: str) -> subprocess.Popen:
    """Another process that holds ``folder`` as its writer until it is killed."""
    code = (
        "import sys, time; from mmit.paths import exclusive_folder\n"
        f"with exclusive_folder({str(folder)!r}, {role!r}):\n"
        "    print('held', flush=True); time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_build_into_the_same_folder_stops_at_once(tmp_path):
    from mmit.build import build
    from mmit.paths import FolderInUseError

    out = tmp_path / "out"
    out.mkdir()
    holder = _hold(out, "build")
    try:
        started = time.monotonic()
        with pytest.raises(FolderInUseError) as refused:
            build(recipe(tmp_path / "src", out))
        assert time.monotonic() - started < 5
        message = str(refused.value)
        assert str(out) in message and f"pid {holder.pid}" in message and socket.gethostname() in message
        assert not list(out.glob("*/shard-*"))  # it wrote nothing
    finally:
        holder.kill()
        holder.wait()
    manifest = build(recipe(tmp_path / "src", out))  # the lock went with its holder
    assert manifest["sets"]["train"]["samples"] > 0


def test_the_lock_file_names_its_holder(tmp_path):
    from mmit.paths import LOCK_FILE, exclusive_folder

    with exclusive_folder(tmp_path, "training run"):
        holder = json.loads((tmp_path / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert holder["role"] == "training run"
        with exclusive_folder(tmp_path, "training run"):  # the same process may take it again
            pass
    assert (tmp_path / LOCK_FILE).read_text() == ""  # released: no stale holder is named


def test_a_folder_to_write_that_is_a_file_is_named_as_such(tmp_path):
    from mmit.cli import user_error_message
    from mmit.paths import exclusive_folder

    (tmp_path / "out").write_text("mine")
    with pytest.raises(NotADirectoryError) as caught:  # was a FileExistsError traceback from mkdir
        with exclusive_folder(tmp_path / "out", "mmit.build"):
            pass
    assert (
        user_error_message(caught.value)
        == f"{tmp_path / 'out'} is a file, not a folder (mmit.build writes a folder there)"
    )
    assert (tmp_path / "out").read_text() == "mine"


@pytest.mark.slow
def test_a_second_training_into_the_same_run_folder_stops_and_readers_still_read(compose, tmp_path):
    from mmit.inference import load_run
    from mmit.paths import FolderInUseError
    from mmit.train import run

    run_dir = tmp_path / "run"
    run(compose(TEXT), run_dir)
    before = (run_dir / "metrics.jsonl").read_bytes()
    holder = _hold(run_dir, "training run")
    try:
        with pytest.raises(FolderInUseError, match=f"pid {holder.pid}"):
            run(compose([*TEXT, "trainer.max_steps=4"]), run_dir)
        assert (run_dir / "metrics.jsonl").read_bytes() == before
        assert load_run(run_dir).checkpoint.name == "step-0000002"  # evaluation while training: allowed
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_two_trainings_started_together_leave_one_intact_run(tmp_path):
    """Two real `mmit.train` processes into one folder: one trains, the other stops with the message.

    The run is long enough that the winner still holds the folder whenever the loser gets to it;
    once the loser has stopped, the winner is stopped too."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "mmit.train", *TEXT, "trainer.max_steps=100000", f"hydra.run.dir={run}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for _ in range(2)
    ]
    deadline = time.monotonic() + 300
    while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.2)
    (loser,) = [p for p in procs if p.poll() is not None]
    (winner,) = [p for p in procs if p is not loser]
    output = loser.communicate(timeout=60)[0]
    # the holder's pid is named once it is written; a loser that comes in between says the rest
    assert loser.returncode != 0 and "is being written by" in output, output
    while not (run / "metrics.jsonl").is_file() and winner.poll() is None:  # the winner is training
        time.sleep(0.2)
    winner.kill()
    winner.communicate(timeout=60)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps.count(0) == 1 and steps == sorted(steps)  # one writer: no record twice
