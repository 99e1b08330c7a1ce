"""Where mmit finds its shipped configs and recipes, and where it keeps caches."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf

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


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory that is renamed to ``final`` only on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
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
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    atomic_write_bytes(path, text.encode("utf-8"))
