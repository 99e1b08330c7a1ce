"""The benchmark fixtures, each a tiny copy of its benchmark's official layout (make_fixtures.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def fixture_copy(name: str, tmp_path: Path) -> Path:
    """A writable copy of fixtures/<name>, for tests that break a file."""
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))
