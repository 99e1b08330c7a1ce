"""pyproject.toml lists every package folder, so an installed mmit has all its modules and configs."""

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _folders(root: Path, name: str, wanted: str) -> set[str]:
    """Dotted names of ``root`` and every folder under it holding a ``wanted`` file."""
    found = {name}
    for path in root.rglob(wanted):
        relative = path.parent.relative_to(root)
        if "__pycache__" not in relative.parts and relative.parts:
            found.add(".".join([name, *relative.parts]))
    return found


def test_every_package_folder_is_listed():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    expected = (
        _folders(REPO / "mmit", "mmit", "*.py")
        | _folders(REPO / "conf", "mmit.conf", "*.yaml")
        | _folders(REPO / "data_recipes", "mmit.data_recipes", "*.y*ml")
        | _folders(REPO / "data_recipes", "mmit.data_recipes", "*.jsonl")
    )
    assert listed == expected
