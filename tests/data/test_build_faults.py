"""Faults during a build: killing it kills its worker processes, and a full disk leaves no
temporary shard files behind."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from mmit.paths import RECIPES_DIR


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc (Linux)")
@pytest.mark.slow
def test_killing_a_build_kills_its_workers(tmp_path):
    # A source that names 40 images at once, then reads slowly for a long time: the workers have
    # started checking images by then, as in a real build reading a large annotation file.
    (tmp_path / "img").mkdir()
    for i in range(40):
        Image.new("RGB", (16, 16), "red").save(tmp_path / "img" / f"{i}.png")
    (tmp_path / "slow_source.py").write_text(
        textwrap.dedent(
            """
            import time
            from mmit.data.annotations import Annotation
            from mmit.data.samples import MediaRef

            def read(images_dir):
                for i in range(40):
                    media = [MediaRef("image", "png", path=f"{images_dir}/{i}.png")]
                    yield f"slow:{i}", Annotation(f"a{i}", "slow", "caption", media, f"{i}.png", captions=["red"])
                time.sleep(600)
            """
        )
    )
    recipe = {
        "name": "slow",
        "seed": 0,
        "out_dir": str(tmp_path / "out"),
        "templates": str(RECIPES_DIR / "templates" / "vision.yaml"),
        "eval_fraction": 0.0,
        "shard_size": 10,
        "num_workers": 2,
        "on_error": "raise",
        "shaping": {},
        "sources": [{"_target_": "slow_source.read", "images_dir": str(tmp_path / "img")}],
    }
    (tmp_path / "slow.yaml").write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    build = subprocess.Popen(
        [sys.executable, "-m", "mmit.build", str(tmp_path / "slow.yaml")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        workers = []
        while time.monotonic() < deadline and len(workers) < 2:
            workers = [pid for pid in _children(build.pid) if _alive(pid)]
            time.sleep(0.1)
        assert len(workers) == 2, "the build did not start its two workers"
        time.sleep(1.0)  # let them take their first batches
        build.kill()  # SIGKILL: the parent gets no chance to stop them
        build.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
            time.sleep(0.1)
        assert not [pid for pid in workers if _alive(pid)], "workers outlived the killed build"
    finally:
        try:
            os.killpg(build.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class FullDisk(io.RawIOBase):
    """A file on a disk that fills up after ``room`` bytes: writes, flushes and close fail with ENOSPC."""

    def __init__(self, path, room: int):
        self.real, self.room = open(path, "wb"), room  # noqa: SIM115

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.real.write(data)

    def close(self) -> None:
        self.real.close()
        super().close()


@pytest.mark.parametrize("room", [0, 3000])
def test_a_full_disk_leaves_no_temporary_shard_files(room, tmp_path, monkeypatch):
    from mmit.build import build
    from mmit.data import shards

    def full_disk_open(path, mode="r", *args, **kwargs):
        assert mode == "wb"
        return io.BufferedWriter(FullDisk(path, room), buffer_size=1024)

    monkeypatch.setattr(shards, "open", full_disk_open, raising=False)
    lines = [
        {
            "id": f"c{i}",
            "messages": [{"role": "user", "content": f"Say {i}." * 50}, {"role": "assistant", "content": "ok"}],
        }
        for i in range(20)
    ]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {
            "name": "full",
            "seed": 0,
            "out_dir": str(tmp_path / "out"),
            "templates": str(RECIPES_DIR / "templates" / "vision.yaml"),
            "eval_fraction": 0.0,
            "shard_size": 10,
            "num_workers": 1,
            "on_error": "raise",
            "shaping": {},
            "sources": [{"_target_": "mmit.data.annotations.read_jsonl", "path": str(tmp_path / "data.jsonl")}],
        }
    )
    with pytest.raises(OSError, match="No space left"):
        build(cfg)
    leftovers = [p.name for p in (tmp_path / "out").rglob("*") if ".tmp-" in p.name]
    assert leftovers == []
