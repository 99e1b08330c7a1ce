"""Files mmit writes through a temporary name get ordinary modes (0644 / 0755 under the usual umask),
not the private ones ``tempfile`` and safetensors create them with."""

from __future__ import annotations

import os
import stat

import torch
from safetensors.torch import save_file

from mmit.paths import atomic_dir, atomic_write_text, umask


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_have_ordinary_modes(tmp_path):
    file_mode, dir_mode = 0o666 & ~umask(), 0o777 & ~umask()
    atomic_write_text(tmp_path / "a.txt", "hello")
    assert _mode(tmp_path / "a.txt") == file_mode
    with atomic_dir(tmp_path / "ckpt") as tmp:
        save_file({"w": torch.zeros(2)}, tmp / "w.safetensors")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "x.json").write_text("{}")
    assert _mode(tmp_path / "ckpt") == dir_mode and _mode(tmp_path / "ckpt" / "sub") == dir_mode
    assert _mode(tmp_path / "ckpt" / "w.safetensors") == file_mode
    assert _mode(tmp_path / "ckpt" / "sub" / "x.json") == file_mode


def test_every_file_of_a_run_folder_has_an_ordinary_mode(tiny_vqa_run):
    run_dir, _ = tiny_vqa_run
    file_mode, dir_mode = 0o666 & ~umask(), 0o777 & ~umask()
    odd = [
        f"{path.relative_to(run_dir)}: {oct(_mode(path))}"
        for path in [run_dir, *run_dir.rglob("*")]
        if _mode(path) != (dir_mode if path.is_dir() else file_mode)
    ]
    assert not odd, odd
