"""Dataset building: ``python -m mmit.build <recipe> [key=value ...]``.

A recipe (``data_recipes/<name>.yaml``) names its annotation sources, templates and shaping. The
build composes the recipe (``mmit.data.recipes``), reads every annotation and splits by image or
clip (``mmit.data.splits``), plans chunks and writes webdataset shards (``mmit.data.build_plan``,
checking each media file once in ``mmit.data.media_checks``, writing with
``mmit.data.shard_writer``), then the manifest (``mmit.data.manifest``); ``mmit.data.build`` runs
these steps. Finished shards are kept, so an interrupted build run again only writes what is
missing; the same inputs and seed give byte-identical shards.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from mmit.cli import user_errors
from mmit.data.build import build
from mmit.data.manifest import format_manifest
from mmit.data.recipes import BuildError, compose_recipe
from mmit.paths import exclusive_folder

__all__ = ["BuildError", "build", "compose_recipe", "main", "recipe_command"]  # tools and tests import these


def recipe_command(
    prog: str,
    description: str,
    run: Callable[[DictConfig], dict],
    report: Callable[[dict, Path], str],
    argv: list[str] | None,
) -> None:
    """The command line of ``python -m mmit.build`` and ``mmit.synth``: a recipe, overrides, a summary."""
    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=description)
    parser.add_argument("recipe", help="a recipe name in data_recipes/ or a path to a recipe .yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. out_dir=/data/demo shard_size=1000")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with user_errors(prog):  # a bad recipe, file or folder ends with one line naming it
        cfg = compose_recipe(args.recipe, args.overrides)
        with exclusive_folder(cfg.out_dir, f"python -m {prog}"):  # one writer per out_dir
            manifest = run(cfg)
    print(report(manifest, Path(cfg.out_dir)))


def main(argv: list[str] | None = None) -> None:
    recipe_command("mmit.build", __doc__.splitlines()[0], build, format_manifest, argv)


if __name__ == "__main__":
    main()
