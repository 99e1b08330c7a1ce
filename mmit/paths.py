"""Where mmit finds its shipped configs and recipes, where it keeps caches, and how it writes
folders: atomically, and one writer at a time."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf

from mmit.cli import some

_PACKAGE_DIR = Path(__file__).resolve().parent


def _shipped_dir(name: str) -> Path:
    # An installed wheel carries conf/ and data_recipes/ inside the package; a source
    # checkout (or an editable install) has them beside the package.
    for candidate in (_PACKAGE_DIR / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"mmit's {name}/ directory is missing next to {_PACKAGE_DIR}")


CONF_DIR = _shipped_dir("conf")
RECIPES_DIR = _shipped_dir("data_recipes")


def cache_dir(*parts: str) -> Path:
    """The mmit cache (``$MMIT_CACHE`` or ``~/.cache/mmit``), created on first use."""
    root = Path(os.environ.get("MMIT_CACHE", Path.home() / ".cache" / "mmit")).expanduser()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


# ${mmit_cache:sub/dir} and ${recipes_dir:} in configs and recipes.
OmegaConf.register_new_resolver(
    "mmit_cache", lambda sub="": str(cache_dir(*[p for p in sub.split("/") if p])), replace=True
)
OmegaConf.register_new_resolver("recipes_dir", lambda: str(RECIPES_DIR), replace=True)


def umask() -> int:
    """The process's file mode creation mask (read without changing it where Linux allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ordinary_modes(path: Path) -> None:
    """Give ``path``, and everything under a folder, the modes of a file or folder created the usual way
    (0666 / 0777 less the umask: 0644 / 0755 for most users). ``tempfile`` creates private ones (0600 /
    0700), and so does safetensors' ``save_file``; renamed into place, they would stay private."""
    mask = umask()
    paths = [Path(path)]
    if paths[0].is_dir() and not paths[0].is_symlink():
        paths += [p for p in paths[0].rglob("*") if not p.is_symlink()]
    for p in paths:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


OUTPUT_MARK = ".mmit-output"  # in a folder a command writes whole for the user: which command wrote it


class OutputFolderError(ValueError):
    """A folder a command would replace holds something else: the user's files are never deleted."""


def check_replaceable(final: str | Path, writer: str, earlier: Collection[str] = ()) -> None:
    """``writer`` (``mmit.eval``, ``mmit.export``) may write the folder ``final`` whole: it is absent,
    empty, or one that ``writer`` wrote before: its ``OUTPUT_MARK`` says so, or, from before the
    marks, it holds every one of the ``earlier`` files that only ``writer`` writes. A run folder, a
    data folder or the current one would be deleted by the replacement, so anything else is refused."""
    final = Path(final).absolute()  # "." named as the folder it is
    if not final.exists() and not final.is_symlink():
        return
    if not final.is_dir() or final.is_symlink():
        raise OutputFolderError(f"{final} is not a folder ({writer} writes a folder there)")
    names = sorted(p.name for p in final.iterdir())
    mark = final / OUTPUT_MARK
    if mark.is_file() and mark.read_text(encoding="utf-8", errors="replace").strip() == writer:
        return
    if not names or (earlier and set(earlier) <= set(names)):
        return
    raise OutputFolderError(
        f"{final} holds files that {writer} did not write, by its {OUTPUT_MARK} mark ({some(names)}); it "
        "replaces only a folder it wrote: delete it or give a new folder"
    )


@contextmanager
def atomic_dir(
    final: Path, writer: str | None = None, guard: bool = True, earlier: Collection[str] = ()
) -> Iterator[Path]:
    """Yield a temporary sibling directory that is renamed to ``final`` only on success. With
    ``writer`` (a command writing a folder for the user), the new folder carries the writer's mark,
    and with ``guard`` (the user chose the folder) an existing ``final`` is replaced only when
    ``check_replaceable`` allows it."""
    final = Path(final).absolute()
    guard = bool(writer) and guard
    if guard:
        check_replaceable(final, writer, earlier)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if writer:
            (tmp / OUTPUT_MARK).write_text(writer + "\n", encoding="utf-8")
        if guard:
            check_replaceable(final, writer, earlier)  # again: the folder may have changed while tmp was written
        ordinary_modes(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp's file is private (0600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_plain_file_name(name: object) -> bool:
    """A file name that stays in its folder once joined to it: no folder part, not absolute, not hidden
    (a manifest or index someone hands you may name ``../x`` or ``/abs/y``)."""
    return isinstance(name, str) and Path(name).name == name and not name.startswith(".")


# Weight files that are pickles (torch.save, HF's pytorch_model.bin): loading one can run code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def pickled_files(path: str | Path) -> list[str]:
    """The pickled weights at ``path``: a local file that is not safetensors, or the pickles at the top
    of a local folder that holds no safetensors ([] otherwise, and for a hub id; a folder's subfolders
    are not walked, so a crafted "/" costs one listing)."""
    local = Path(path).expanduser()
    if local.is_file():
        return [] if local.suffix == ".safetensors" else [local.name]
    if not local.is_dir():
        return []
    files = [p for p in local.iterdir() if p.is_file()]
    if any(p.suffix == ".safetensors" for p in files):
        return []
    return sorted(p.name for p in files if p.suffix in PICKLE_SUFFIXES)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


log = logging.getLogger(__name__)

LOCK_FILE = ".mmit-writer.lock"
_held: dict[str, tuple[int, int]] = {}  # folder -> (lock file descriptor, depth) held by this process


class FolderInUseError(RuntimeError):
    """Another process is writing the folder (a training run, a build)."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"{info.get('role', 'a writer')} (pid {info.get('pid')} on {info.get('host')}, since {since})"


@contextmanager
def exclusive_folder(folder: str | Path, role: str, wait: bool = False) -> Iterator[Path]:
    """Hold ``folder`` as its only writer: an exclusive ``fcntl.flock`` on ``<folder>/.mmit-writer.lock``,
    which names the holder (pid, host, role, since). Another writer stops at once with
    FolderInUseError naming the holder (or, with ``wait``, waits for it); readers are not locked
    out. The lock goes with its holder, however it ends (even ``kill -9``); this process may take
    it again while it holds it. flock works across processes of one host and on most network
    file systems (NFSv4 maps it to a byte-range lock)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a folder ({role} writes a folder there)")
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        try:
            yield folder
        finally:
            _held[key] = (fd, _held[key][1] - 1)
        return
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(path)
            if not wait:
                raise FolderInUseError(
                    f"{folder} is being written by {holder}; one writer per folder: wait for it to finish, "
                    "stop it, or choose another folder"
                ) from None
            log.info("%s is being written by %s: waiting for it", folder, holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "role": role, "since": time.time()}
        info["command"] = " ".join(sys.argv)[:500]
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _held[key] = (fd, 1)
        try:
            yield folder
        finally:
            del _held[key]
            os.ftruncate(fd, 0)  # released: the file names no holder
    finally:
        os.close(fd)  # closing the descriptor releases the lock
