"""A recipe's dataset: :func:`build` runs the steps in order, and :func:`recipe_data_files` gives
training the shard folders of a recipe's build, building it first if needed.

compose (``mmit.data.recipes``, before :func:`build`) -> read and split (``mmit.data.splits``)
-> plan and write the shards (``mmit.data.build_plan``, with ``mmit.data.media_checks`` and
``mmit.data.shard_writer``) -> manifest (``mmit.data.manifest``). Each media file is read and
checked once; the same inputs and seed give byte-identical shards.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig

from mmit.data.build_plan import chunk_jobs, early_image_checks, max_pixels, plan_build, worker_pool, write_sets
from mmit.data.manifest import (
    build_fingerprint,
    built_from_another,
    check_not_foreign,
    claim_out_dir,
    format_manifest,
    recipe_manifest,
    source_hashes,
    write_manifest,
)
from mmit.data.recipes import BuildError, compose_recipe
from mmit.data.sources import DataFiles
from mmit.data.splits import read_annotations, split_annotations
from mmit.paths import LOCK_FILE, cache_dir, exclusive_folder

log = logging.getLogger("mmit.build")


@contextmanager
def gc_paused() -> Iterator[None]:
    """Automatic garbage collection off while building. A build makes many long-lived objects and
    few reference cycles, and every full collection walks all objects of the process (torch's
    included): 40% of reading the demo's annotations. Forked workers inherit the setting."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@gc_paused()
def build(cfg: DictConfig) -> dict:
    """Run a composed recipe; returns the manifest (also written as manifest.json). The build holds
    its out_dir as the only writer: a second build into it stops at once (FolderInUseError)."""
    if cfg.get("mode"):
        raise BuildError(f"recipe {cfg.get('name', '')!r} generates data with an LLM: run python -m mmit.synth")
    check_not_foreign(Path(cfg.out_dir))  # before the lock file goes in
    with exclusive_folder(cfg.out_dir, "mmit.build"):
        return _build(cfg)


def _build(cfg: DictConfig) -> dict:
    out = claim_out_dir(cfg)  # refuses a folder that holds another recipe's build; stamps this one
    if cfg.get("prepare"):  # e.g. draw the demo's scenes
        from mmit.factory import instantiate_source

        instantiate_source(cfg.prepare)
    skipped: Counter = Counter()  # annotations left out, by reason
    seen_ids: set = set()  # an id seen before, in any source, is a duplicate
    with worker_pool(max(1, cfg.num_workers), max_pixels(cfg)) as workers:
        check_early = early_image_checks(workers, out)  # the pool checks images while annotations are read
        annotations = read_annotations(cfg, skipped, seen=seen_ids, on_annotation=check_early)
        if not annotations:  # an empty file, or a file of another layout that holds no records of this one
            reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(skipped.items()))
            raise BuildError(
                f"recipe {cfg.name!r}: its sources gave no annotations"
                + (
                    f" (every record was skipped: {reasons})"
                    if reasons
                    else "; are they the right files, and not empty?"
                )
            )
        trained = {ann.group for ann in annotations}  # a held-out annotation about one of these files is refused
        heldout = read_annotations(cfg, skipped, "heldout_sources", seen_ids, check_early, trained)
        plan = plan_build(cfg, annotations)  # templates, shaping, answer pool, storage
        by_split = split_annotations(annotations, heldout, cfg.eval_fraction)
        warn_empty_split(cfg, by_split)
        sets = write_sets(chunk_jobs(by_split, cfg.shard_size), plan, workers)
    return write_manifest(out, recipe_manifest(cfg, source_hashes(cfg), skipped, sets))


def warn_empty_split(cfg: DictConfig, by_split: dict[str, list]) -> None:
    """Say so when ``eval_fraction`` leaves train or val without a media file (few files, a large or small
    fraction): the build writes no such set, and a training run on it would find out only later."""
    files = {split: len({ann.group for ann in anns}) for split, anns in by_split.items() if split != "heldout_sources"}
    total = sum(files.values())
    for split, other, what in (("train", "val", "training"), ("val", "train", "evaluation")):
        if not files[split] and (split == "train" or cfg.eval_fraction > 0):
            log.warning(
                "recipe %r: eval_fraction %s put all %d media files (a text-only record counts as one) into %s, "
                "so no %s set is written; %s eval_fraction or give it more files",
                cfg.name,
                cfg.eval_fraction,
                total,
                other,
                what,
                "lower" if split == "train" else "raise",
            )


def recipe_data_files(
    recipe: str, overrides: list[str] = (), train: str = "train", eval: dict[str, str] | None = None
) -> DataFiles:
    """The shard folders of a recipe's build, building it first if it has not been built. A build in
    the mmit cache from another recipe, settings or mmit version is built again; elsewhere it is an
    error, as a folder the user chose is not ours to delete. Two trainings that need the same build
    take turns: the second waits for the first to finish it, then reads it."""
    cfg = compose_recipe(recipe, list(overrides))
    out = Path(cfg.out_dir)
    with exclusive_folder(out, "mmit.build (for training)", wait=True):
        if built_from_another(out, build_fingerprint(cfg), cfg):
            if not out.resolve().is_relative_to(cache_dir().resolve()):
                raise BuildError(
                    f"{out} holds a build of a different recipe, settings or mmit version; delete it first"
                )
            log.info("%s was built from another recipe, settings or mmit version: building it again", out)
            for stale in out.iterdir():  # all but the lock file this process holds
                if stale.name != LOCK_FILE:
                    shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        if not (out / "manifest.json").exists():
            log.info("building dataset %s into %s (once)", recipe, out)
            print(format_manifest(build(cfg), out))
    sets = json.loads((out / "manifest.json").read_text())["sets"]
    missing = [s for s in [train, *(eval or {}).values()] if s not in sets]
    if missing:
        raise BuildError(f"{out}: no set(s) {missing}; built sets are {sorted(sets)}")
    return DataFiles(train=[str(out / train)], eval={name: [str(out / s)] for name, s in (eval or {}).items()})
