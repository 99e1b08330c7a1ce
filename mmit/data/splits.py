"""A recipe's annotations read from its sources and split by media file (train, val, held-out
sources), then shaped into the output sets: ``train`` and the ``val_*`` evaluation sets."""

from __future__ import annotations

import hashlib
import inspect
from collections import Counter
from collections.abc import Callable, Collection, Iterator

from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from mmit.data.annotations import Annotation
from mmit.data.instructions import ShapingConfig, shape_annotation
from mmit.data.recipes import BuildError
from mmit.data.samples import Conversation, SampleError

# val_heldout_sources: every annotation of the recipe's ``heldout_sources`` (e.g. unseen voices), training wordings.
SETS = ("train", "val_seen", "val_heldout_templates", "val_heldout_tasks", "val_heldout_sources")


def read_annotations(
    cfg: DictConfig,
    skipped: Counter,
    key: str = "sources",
    seen: set | None = None,
    on_annotation: Callable[[Annotation], None] | None = None,
    trained: Collection[str] = (),
) -> list[Annotation]:
    """The annotations of the recipe's readers under ``key``; bad records follow ``on_error``
    (``skip`` counts them in ``skipped`` by reason). An id in ``seen`` is a duplicate; an annotation
    about a media file in ``trained`` (the training sources' files, for ``heldout_sources``) would leak
    it into the held-out set."""
    from mmit.factory import instantiate_source

    annotations, seen = [], set() if seen is None else seen
    on_error = cfg.on_error  # read once: an OmegaConf lookup per record costs more than the record
    for source_cfg in cfg.get(key) or []:
        source_cfg = with_recipe_options(cfg, source_cfg)
        reader = source_cfg._target_
        records = instantiate_source(source_cfg)
        if not isinstance(records, Iterator):
            raise BuildError(f"{reader} is not an annotation reader: it returned {type(records).__name__}")
        bar = tqdm(desc=f"read {reader.rsplit('.', 1)[-1]}", unit="record", leave=False)
        while True:
            try:
                pair = next(records)
            except StopIteration:
                break
            except SampleError as err:  # a whole file unreadable (bad JSON, not the layout): no record to skip
                raise BuildError(str(err)) from err
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[1], Annotation | SampleError)):
                gave = (
                    f"({', '.join(type(x).__name__ for x in pair)})" if isinstance(pair, tuple) else type(pair).__name__
                )
                raise BuildError(f"{reader} is not an annotation reader: it gave {gave}, not (place, annotation) pairs")
            where, item = pair
            bar.update()
            if isinstance(item, Annotation) and item.id in seen:
                item = SampleError("duplicate_id", f"{where}: annotation id {item.id!r} appears twice")
            elif isinstance(item, Annotation) and item.group in trained:
                item = SampleError(
                    "heldout_overlap",
                    f"{where}: held-out source names {item.group!r}, which the training sources use too",
                )
            if isinstance(item, SampleError):
                if on_error == "raise":
                    raise BuildError(f"{where}: {item}" if where not in str(item) else str(item))
                skipped[item.reason] += 1
                continue
            seen.add(item.id)
            annotations.append(item)
            if on_annotation:
                on_annotation(item)
        bar.close()
    return annotations


def with_recipe_options(cfg: DictConfig, source_cfg: DictConfig) -> DictConfig:
    """A source with the recipe-wide reader options it takes and does not set itself
    (``allow_outside_root``: media paths may leave the reader's folder)."""
    from hydra.utils import get_object

    options = {k: cfg[k] for k in ("allow_outside_root",) if cfg.get(k) is not None and k not in source_cfg}
    if not options:
        return source_cfg
    accepted = inspect.signature(get_object(source_cfg._target_)).parameters
    options = {k: v for k, v in options.items() if k in accepted}
    return OmegaConf.merge(source_cfg, options) if options else source_cfg


def split_of(group: str, eval_fraction: float) -> str:
    """Split by the media identity, so no image is in two splits (stable across seeds)."""
    bucket = int.from_bytes(hashlib.sha256(group.encode()).digest()[:4], "big") / 2**32
    return "val" if bucket < eval_fraction else "train"


def split_annotations(
    annotations: list[Annotation], heldout: list[Annotation], eval_fraction: float
) -> dict[str, list[Annotation]]:
    """``train`` and ``val`` by media file (``eval_fraction``), and ``heldout_sources``, each sorted
    by media file: all annotations of one image (or clip) sit together, so a chunk decodes each file
    once."""
    by_split: dict[str, list[Annotation]] = {"train": [], "val": [], "heldout_sources": []}
    for ann in sorted(annotations, key=lambda a: a.group):
        by_split[split_of(ann.group, eval_fraction)].append(ann)
    by_split["heldout_sources"] = sorted(heldout, key=lambda a: a.group)
    return by_split


def shape_chunk(
    annotations: list[Annotation], split: str, templates: dict, shaping: ShapingConfig, pool: dict[str, list[str]]
) -> dict[str, list[Conversation]]:
    """Conversations per output set: ``train``, or ``val_seen`` / ``val_heldout_templates`` /
    ``val_heldout_tasks`` for evaluation annotations, or ``val_heldout_sources``."""
    sets: dict[str, list[Conversation]] = {}
    for ann in annotations:
        if split == "train":
            sets.setdefault("train", []).extend(shape_annotation(ann, templates, shaping, pool, "train")["seen"])
            continue
        if split == "heldout_sources":  # new sources, training wordings; held-out tasks are not repeated here
            sets.setdefault("val_heldout_sources", []).extend(
                shape_annotation(ann, templates, shaping, pool, "val")["seen"]
            )
            continue
        seen = shape_annotation(ann, templates, shaping, pool, "val")
        sets.setdefault("val_seen", []).extend(seen["seen"])
        sets.setdefault("val_heldout_tasks", []).extend(seen["heldout_tasks"])
        if ann.kind != "conversation":  # conversations carry their own wording
            held_out = shape_annotation(ann, templates, shaping, pool, "val", True)["seen"]
            sets.setdefault("val_heldout_templates", []).extend(held_out)
    return {name: convs for name, convs in sets.items() if convs}
