"""Dataset building: ``python -m mmit.build <recipe> [key=value ...]``.

A recipe (``data_recipes/<name>.yaml``) names its annotation sources, templates and shaping.
The build reads every annotation, splits by image or clip, applies templates and writes
webdataset shards plus a manifest. Each media file is read and checked once: images decode
(``check_image``); audio decodes, is complete and not silent, and long clips follow the recipe's
``audio.long_clips`` policy (``mmit.data.audio``). Finished shards are kept, so an interrupted
build run again only writes what is missing; the same inputs and seed give byte-identical shards.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import hashlib
import inspect
import json
import logging
import multiprocessing
import multiprocessing.queues
import os
import shutil
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

import mmit
from mmit.cli import user_errors
from mmit.data.annotations import Annotation
from mmit.data.audio import AudioPolicy, CheckedAudio, prepare_audio
from mmit.data.instructions import ShapingConfig, answer_pool, shape_annotation
from mmit.data.media import DEFAULT_MAX_PIXELS, check_image, resize_image
from mmit.data.recipes import RecipeError
from mmit.data.recipes import compose as compose_checked
from mmit.data.samples import Conversation, MediaRef, SampleError, check_placeholders
from mmit.data.shards import TarWriter, encode_sample
from mmit.data.sources import DataFiles
from mmit.data.templates import load_templates
from mmit.paths import LOCK_FILE, RECIPES_DIR, atomic_write_text, cache_dir, exclusive_folder

log = logging.getLogger("mmit.build")


# val_heldout_sources: every annotation of the recipe's ``heldout_sources`` (e.g. unseen voices), training wordings.
SETS = ("train", "val_seen", "val_heldout_templates", "val_heldout_tasks", "val_heldout_sources")


class BuildError(RuntimeError):
    """The build cannot go on; the message names the file and record."""


def compose_recipe(recipe: str, overrides: list[str] = ()) -> DictConfig:
    """A recipe by name (from data_recipes/) or path, over ``data_recipes/base.yaml``, with ``key=value``
    overrides (dotted keys), checked against the schema (``mmit.data.recipes``): an unknown key, a
    wrong type or a reader argument the reader does not take stops here, naming file, line and key."""
    # Plain OmegaConf rather than Hydra: a training job (itself a Hydra app) builds recipes too.
    try:
        return compose_checked(recipe, list(overrides))
    except RecipeError as err:
        raise BuildError(str(err)) from None


def split_of(group: str, eval_fraction: float) -> str:
    """Split by the media identity, so no image is in two splits (stable across seeds)."""
    bucket = int.from_bytes(hashlib.sha256(group.encode()).digest()[:4], "big") / 2**32
    return "val" if bucket < eval_fraction else "train"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_annotations(
    cfg: DictConfig,
    skipped: Counter,
    key: str = "sources",
    seen: set | None = None,
    on_annotation: Callable[[Annotation], None] | None = None,
) -> list[Annotation]:
    from mmit.factory import instantiate_source

    annotations, seen = [], set() if seen is None else seen
    on_error = cfg.on_error  # read once: an OmegaConf lookup per record costs more than the record
    for source_cfg in cfg.get(key) or []:
        source_cfg = with_recipe_options(cfg, source_cfg)
        records = iter(instantiate_source(source_cfg))
        bar = tqdm(desc=f"read {source_cfg._target_.rsplit('.', 1)[-1]}", unit="record", leave=False)
        while True:
            try:
                where, item = next(records)
            except StopIteration:
                break
            except SampleError as err:  # a whole file unreadable (bad JSON, not the layout): no record to skip
                raise BuildError(str(err)) from err
            bar.update()
            if isinstance(item, Annotation) and item.id in seen:
                item = SampleError("duplicate_id", f"{where}: annotation id {item.id!r} appears twice")
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


def shaping_config(cfg: DictConfig, templates: dict) -> ShapingConfig:
    shaping = ShapingConfig(seed=cfg.seed, **OmegaConf.to_container(cfg.shaping))
    unknown = set(shaping.held_out_tasks) - set(templates)
    if unknown:
        raise BuildError(f"shaping.held_out_tasks names unknown tasks {sorted(unknown)}")
    return shaping


def load_template_files(paths: str | list[str]) -> dict:
    """One template file, or several (e.g. vision + audio) merged; a task may appear in one file only."""
    templates: dict = {}
    for path in [paths] if isinstance(paths, str) else list(paths):
        loaded = load_templates(path)
        twice = set(templates) & set(loaded)
        if twice:
            raise BuildError(f"tasks {sorted(twice)} have templates in more than one file")
        templates.update(loaded)
    return templates


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


Checked = bytes | CheckedAudio | tuple[str, str]  # image bytes, audio to store, or (reason, message) if unusable


@dataclass
class Storage:
    """How samples are stored: the bad-input policy, resizing, audio, and media sharing."""

    on_error: str = "raise"
    resize_max: int | None = None  # longest image side, or None for the original bytes
    audio: AudioPolicy = dataclasses.field(default_factory=AudioPolicy)
    share_media: bool = True  # consecutive conversations about the same media files share one shard sample
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are refused from their header, never decoded


def read_media_file(
    path: str, kind: str = "image", audio: AudioPolicy | None = None, max_pixels: int | None = None
) -> Checked:
    """A media file read and fully decoded once: image bytes, audio after the long-clip policy,
    or (reason, message) if unusable (an image over ``max_pixels`` is refused from its header)."""
    try:
        data = Path(path).read_bytes()
        if kind == "audio":
            return prepare_audio(data, Path(path).suffix.lstrip(".").lower(), path, audio or AudioPolicy())
        check_image(data, path, max_pixels or DEFAULT_MAX_PIXELS)
    except OSError as err:
        return "missing_media", f"cannot read {path} ({err})"
    except SampleError as err:
        return err.reason, str(err)
    return data


def with_audio_windows(ann: Annotation, media: dict[str, Checked | None]) -> Annotation:
    """An annotation whose long clips the policy split: one audio item per window, in order."""
    if not any(isinstance(media.get(m.path), CheckedAudio) and len(media[m.path].items) > 1 for m in ann.media):
        return ann
    refs = []
    for ref in ann.media:
        checked = media.get(ref.path)
        if isinstance(checked, CheckedAudio) and len(checked.items) > 1:
            # The windows keep the clip's path (for the split and the counts) and carry their checked bytes.
            refs += [MediaRef("audio", ext, path=ref.path, data=data) for ext, data in checked.items]
        else:
            refs.append(ref)
    return dataclasses.replace(ann, media=refs)


def shard_done(path: Path) -> bool:
    """A shard is finished once its stats sidecar exists (written after the tar is renamed in)."""
    return path.exists() and path.with_suffix(".json").exists()


def shard_samples(convs: list[Conversation], share_media: bool = True) -> Iterator[list[Conversation]]:
    """Conversations grouped into shard samples: with ``share_media``, consecutive ones about the same
    media files (a caption, VQA turns, held-out wordings) form one sample, so each file is stored
    once. Conversations without media stay one per sample."""
    group: list[Conversation] = []
    for conv in convs:
        if group and share_media and conv.media and _media_key(conv) == _media_key(group[0]):
            group.append(conv)
            continue
        if group:
            yield group
        group = [conv]
    if group:
        yield group


def _media_key(conv: Conversation) -> tuple:
    return tuple((m.kind, m.ext, m.path, m.data) for m in conv.media)


def stored_media(conv: Conversation, media: dict[str, Checked | None], storage: Storage) -> tuple[list[MediaRef], dict]:
    """The media bytes a sample stores (checked, optionally resized), and the long-clip tag of each
    clip; raises SampleError if a file is unusable. ``media`` holds what the checks found per path."""
    stored, long_clips = [], {}
    for ref in conv.media:
        ext = ref.ext
        if ref.path and ref.data is not None:  # a window of a split clip: checked with its clip
            data, long_clips[ref.path] = ref.data, media[ref.path].long
        else:
            data = media.get(ref.path) if ref.path else ref.data
        if isinstance(data, tuple):  # the check found this file unusable
            raise SampleError(data[0], f"sample {conv.id}: {data[1]}")
        if data is None:  # a good file (checked, its bytes not held) or of a kind not checked: read it now
            try:
                data = ref.read()
            except OSError as err:
                raise SampleError("missing_media", f"sample {conv.id}: cannot read {ref.path} ({err})") from err
        elif ref.kind == "image" and ref.path is None:  # in-memory bytes were not checked yet
            check_image(data, f"sample {conv.id} (in-memory {ref.ext})", storage.max_pixels)
        elif ref.kind == "audio" and ref.path is None:  # in-memory audio: checked; a long clip is truncated
            where = f"sample {conv.id} (in-memory {ref.ext})"
            policy = storage.audio
            if policy.long_clips == "split":  # too late to add placeholders: keep the first window
                policy = dataclasses.replace(policy, long_clips="truncate")
            data = prepare_audio(data, ref.ext, where, policy)
        if isinstance(data, CheckedAudio):
            long_clips[ref.path or id(ref)] = data.long
            ext, data = data.items[0]
        if ref.kind == "image" and storage.resize_max:
            data, ext = resize_image(data, storage.resize_max, ref.path or f"sample {conv.id}", storage.max_pixels)
        stored.append(type(ref)(ref.kind, ext, data=data))
    return stored, long_clips


def write_shard(path: Path, convs: list[Conversation], media: dict[str, Checked | None], storage: Storage) -> dict:
    """Write one shard and its stats sidecar. Conversations are grouped into shard samples
    (:func:`shard_samples`) and each sample's media stored as it is written, so the shard is never
    built in memory; ``media`` holds what the checks found per path (None: a good file, read now).
    ``samples`` counts conversations, ``records`` the shard samples that hold them."""
    stats = {
        "samples": 0,
        "records": 0,
        "bytes": 0,
        "by_task": Counter(),
        "by_template": Counter(),
        "by_source": Counter(),
        "skipped": Counter(),
        "long_audio": Counter(),
    }
    with TarWriter(path) as tar:
        for group in shard_samples(convs, storage.share_media):
            try:
                stored, long_clips = stored_media(group[0], media, storage)
            except SampleError as err:
                if storage.on_error == "raise":
                    raise BuildError(str(err)) from err
                stats["skipped"][err.reason] += len(group)
                continue
            fitting = []
            for conv in group:  # what readers will check: one placeholder per media file
                try:
                    fitting.append(check_placeholders(conv))
                except SampleError as err:
                    if storage.on_error == "raise":
                        raise BuildError(str(err)) from err
                    stats["skipped"][err.reason] += 1
            if not fitting:
                continue
            group = fitting
            for name, data in encode_sample(f"{path.stem}-{stats['records']:06d}", group, stored):
                tar.add(name, data)
            stats["records"] += 1
            stats["samples"] += len(group)
            for conv in group:
                stats["by_task"].update(conv.meta.get("tasks", []))
                stats["by_template"].update(conv.meta.get("templates", []))
                stats["by_source"][conv.meta.get("source", "")] += 1
                stats["long_audio"].update(tag for tag in long_clips.values() if tag)
    stats["bytes"] = path.stat().st_size
    text = json.dumps(stats, sort_keys=True)
    atomic_write_text(path.with_suffix(".json"), text)
    return json.loads(text)


@dataclass
class BuildPlan:
    """What every chunk of one build shares; a worker process receives it once, not with each chunk
    (VQAv2's answer pool alone is tens of thousands of strings)."""

    out: Path
    templates: dict
    shaping: ShapingConfig
    pool: dict[str, list[str]]
    storage: Storage


@dataclass
class ChunkJob:
    """``shard_size`` annotations of one split; they become shard ``index`` of each output set."""

    index: int
    split: str
    annotations: list[Annotation]
    checked: dict[str, tuple[str, str] | None] = dataclasses.field(default_factory=dict)  # image -> None if good

    def images(self) -> list[str]:
        return image_paths(self.annotations)


def image_paths(annotations: Iterable[Annotation]) -> list[str]:
    """The image files the annotations name, sorted, each once."""
    return sorted({m.path for a in annotations for m in a.media if m.path and m.kind == "image"})


def chunk_done(job: ChunkJob, plan: BuildPlan) -> list[str] | None:
    """The sets a finished chunk wrote, or None if it has to be (re)built."""
    marker = plan.out / ".chunks" / f"{job.split}-{job.index:06d}.json"
    if not marker.exists():
        return None
    done = json.loads(marker.read_text())
    return done if all(shard_done(plan.out / name / f"shard-{job.index:06d}.tar") for name in done) else None


def build_chunk(job: ChunkJob, plan: BuildPlan) -> dict[str, dict]:
    """Template, validate and write one chunk's shards (in a worker); finished shards are kept."""
    shard = f"shard-{job.index:06d}"
    done = chunk_done(job, plan)
    if done is not None:
        return {name: json.loads((plan.out / name / f"{shard}.json").read_text()) for name in done}
    # A file is used by several samples (captions, QA turns, held-out wordings): read and check it
    # once, and keep its bytes for all of them. An image the pool already checked keeps only the
    # result (None if good): its bytes are read when its records are written.
    # Audio is checked before shaping: a clip the policy splits needs one placeholder per window.
    files = sorted(
        {(m.path, m.kind) for a in job.annotations for m in a.media if m.path and m.kind in ("image", "audio")}
    )
    storage = plan.storage
    media = {
        path: job.checked[path]
        if path in job.checked
        else read_media_file(path, kind, storage.audio, storage.max_pixels)
        for path, kind in files
    }
    annotations = [with_audio_windows(ann, media) for ann in job.annotations]
    stats = {}
    for name, convs in shape_chunk(annotations, job.split, plan.templates, plan.shaping, plan.pool).items():
        path = plan.out / name / f"{shard}.tar"
        if shard_done(path):  # written before an interruption
            stats[name] = json.loads(path.with_suffix(".json").read_text())
        else:
            stats[name] = write_shard(path, convs, media, plan.storage)
    atomic_write_text(plan.out / ".chunks" / f"{job.split}-{job.index:06d}.json", json.dumps(sorted(stats)))
    return stats


def check_media_file(
    path: str, kind: str = "image", audio: AudioPolicy | None = None, max_pixels: int | None = None
) -> Checked | None:
    """What a full check of a media file found: None for a good image (its bytes are read again when
    written, rather than held), audio to store, or (reason, message)."""
    checked = read_media_file(path, kind, audio, max_pixels)
    return None if isinstance(checked, bytes) else checked


def check_images(paths: list[str], max_pixels: int | None = None) -> list[tuple[str, str] | None]:
    """Check each image (in a worker); None for a good one, else (reason, message)."""
    return [check_media_file(path, max_pixels=max_pixels) for path in paths]


class ImageChecks:
    """Images checked by the worker pool in batches of ``batch_size``, queued as soon as an
    annotation names them, so the workers check them while the main process still reads the
    annotations. Chunks then re-read the good images' bytes instead of decoding them again. The
    small batches also keep every worker busy to the end, which whole chunks (``shard_size``
    annotations each) do not: 8 chunks on 2 workers left one idle for a tenth of the build."""

    def __init__(self, pool: ProcessPoolExecutor, batch_size: int = 16, max_pixels: int | None = None):
        self.pool, self.batch_size, self.max_pixels = pool, batch_size, max_pixels
        self.queued: set[str] = set()
        self.batch: list[str] = []
        self.futures: list[tuple[list[str], Future]] = []

    def add(self, paths: Iterable[str]) -> None:
        for path in paths:
            if path not in self.queued:
                self.queued.add(path)
                self.batch.append(path)
                if len(self.batch) == self.batch_size:
                    self.flush()

    def add_annotation(self, ann: Annotation) -> None:
        self.add(image_paths([ann]))

    def flush(self) -> None:
        if self.batch:
            self.futures.append((self.batch, self.pool.submit(check_images, self.batch, self.max_pixels)))
            self.batch = []

    def results(self) -> dict[str, tuple[str, str] | None]:
        """Every queued image's result, with a progress bar while they finish."""
        self.flush()
        results = {}
        bar = tqdm(total=len(self.queued), desc="check images", unit="image", leave=False)
        for paths, future in self.futures:
            results.update(zip(paths, future.result()))
            bar.update(len(paths))
        bar.close()
        return results


_worker_plan: BuildPlan | None = None  # a worker process's copy, taken from the queue for its first chunk
_plan_queue = None


def _init_worker(queue, parent: int) -> None:
    """The pool's initializer: the plan does not exist yet when the workers start. A worker dies with
    the build: Linux sends it SIGKILL when its parent ends (``PR_SET_PDEATHSIG``, even after the
    parent's ``kill -9``); elsewhere it checks between chunks that its parent is still there."""
    global _plan_queue, _parent
    _plan_queue, _parent = queue, parent
    die_with_parent()
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


_parent: int | None = None
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> bool:
    """Ask the kernel to SIGKILL this process when its parent ends; False where it cannot (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0


def _parent_alive() -> None:
    if _parent is not None and os.getppid() != _parent:
        os._exit(1)  # an orphan: the build that wanted these shards is gone


def _build_chunk_in_worker(job: ChunkJob) -> dict[str, dict]:
    global _worker_plan
    _parent_alive()
    if _worker_plan is None:  # the main process puts one copy per worker; each worker keeps the first it takes
        _worker_plan = _plan_queue.get()
    return build_chunk(job, _worker_plan)


@dataclass
class Workers:
    """A build's worker processes, and the queue that gives each of them its copy of the plan."""

    pool: ProcessPoolExecutor
    plans: multiprocessing.queues.Queue  # the build plan, one copy per worker
    count: int


@contextmanager
def worker_pool(count: int) -> Iterator[Workers | None]:
    """``count`` worker processes, or None for one process. The pool starts before the annotations
    are read, so it can check images meanwhile; the plan, which needs the annotations, reaches
    each worker once through a queue (VQAv2's answer pool alone is tens of thousands of strings)."""
    if count == 1:
        yield None
        return
    context = multiprocessing.get_context()
    plans = context.Queue()
    try:
        with ProcessPoolExecutor(
            count, mp_context=context, initializer=_init_worker, initargs=(plans, os.getpid())
        ) as pool:
            yield Workers(pool, plans, count)
    finally:
        plans.cancel_join_thread()  # copies no worker took (it built no chunk) are dropped, not waited on
        plans.close()


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


def build_fingerprint(cfg: DictConfig) -> str:
    """What a build's shards depend on: the resolved recipe, and the mmit version (the shard format)."""
    return hashlib.sha256(f"mmit {mmit.__version__}\n{OmegaConf.to_yaml(cfg, resolve=True)}".encode()).hexdigest()


def built_from_another(out: Path, fingerprint: str, cfg: DictConfig | None = None) -> bool:
    """Whether ``out`` holds a build (finished or not) with another fingerprint: of another recipe,
    settings or mmit version. A finished build stamped before recipes were merged over
    ``data_recipes/base.yaml`` (its fingerprint covered only the keys its recipe set) counts as the
    same build when its manifest's recipe, with the base's defaults filled in, is ``cfg`` and its
    mmit version this one; it is stamped again rather than built again."""
    stamp = out / "build.json"
    if not stamp.exists() or json.loads(stamp.read_text())["fingerprint"] == fingerprint:
        return False
    if cfg is None or cfg.get("mode") or not (out / "manifest.json").is_file():
        return True
    manifest = json.loads((out / "manifest.json").read_text())
    if manifest.get("mmit_version") != mmit.__version__:
        return True
    base = OmegaConf.load(RECIPES_DIR / "base.yaml")
    earlier = OmegaConf.to_container(OmegaConf.merge(base, manifest.get("config") or {}), resolve=True)
    if earlier != OmegaConf.to_container(cfg, resolve=True):
        return True
    atomic_write_text(stamp, json.dumps({"fingerprint": fingerprint}))
    return False


@gc_paused()
def build(cfg: DictConfig) -> dict:
    """Run a composed recipe; returns the manifest (also written as manifest.json). The build holds
    its out_dir as the only writer: a second build into it stops at once (FolderInUseError)."""
    if cfg.get("mode"):
        raise BuildError(f"recipe {cfg.get('name', '')!r} generates data with an LLM: run python -m mmit.synth")
    with exclusive_folder(cfg.out_dir, "mmit.build"):
        return _build(cfg)


def _build(cfg: DictConfig) -> dict:
    out, fingerprint = Path(cfg.out_dir), build_fingerprint(cfg)
    if built_from_another(out, fingerprint, cfg):
        raise BuildError(
            f"{out} holds a build of a different recipe, settings or mmit version; choose another output directory"
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "build.json", json.dumps({"fingerprint": fingerprint}))

    if cfg.get("prepare"):
        from mmit.factory import instantiate_source

        instantiate_source(cfg.prepare)
    with worker_pool(max(1, cfg.num_workers)) as workers:
        skipped, sets = build_sets(cfg, out, workers)
    for name in SETS:
        if name not in sets and not any((out / name).iterdir()):
            (out / name).rmdir()

    manifest = recipe_manifest(cfg, source_hashes(cfg), skipped, {n: sets[n] for n in SETS if n in sets})
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def build_sets(cfg: DictConfig, out: Path, workers: Workers | None) -> tuple[Counter, dict[str, list[dict]]]:
    """Read and split the annotations, then write every chunk's shards: returns the skipped
    annotations by reason and the stats of each set's shards."""
    # A fresh build queues each image for decoding as soon as an annotation names it; a resumed
    # one only the images of chunks still to write (in run_chunks).
    max_pixels = cfg.get("max_pixels") or DEFAULT_MAX_PIXELS
    checks = ImageChecks(workers.pool, max_pixels=max_pixels) if workers else None
    early = checks.add_annotation if checks and not any((out / ".chunks").glob("*.json")) else None
    skipped: Counter = Counter()
    seen_ids: set = set()
    annotations = read_annotations(cfg, skipped, seen=seen_ids, on_annotation=early)
    heldout = read_annotations(cfg, skipped, "heldout_sources", seen=seen_ids, on_annotation=early)
    templates = load_template_files(
        OmegaConf.to_container(cfg.templates) if OmegaConf.is_list(cfg.templates) else cfg.templates
    )
    shaping = shaping_config(cfg, templates)
    audio = AudioPolicy(**OmegaConf.to_container(cfg.audio)) if cfg.get("audio") else AudioPolicy()
    pool = answer_pool(annotations)
    # All annotations of one image (or clip) sit together, so a chunk decodes each file once.
    by_split: dict[str, list[Annotation]] = {"train": [], "val": [], "heldout_sources": []}
    eval_fraction = cfg.eval_fraction  # read once: OmegaConf lookups are slow per annotation
    for ann in sorted(annotations, key=lambda a: a.group):
        by_split[split_of(ann.group, eval_fraction)].append(ann)
    groups = {ann.group for ann in annotations}
    for ann in sorted(heldout, key=lambda a: a.group):
        if ann.group in groups:  # the same file in training would leak into the held-out set
            if cfg.on_error == "raise":
                raise BuildError(f"{ann.id}: held-out source names {ann.group!r}, which the training sources use too")
            skipped["heldout_overlap"] += 1
            continue
        by_split["heldout_sources"].append(ann)
    for name in (*SETS, ".chunks"):
        (out / name).mkdir(exist_ok=True)
        for stale in (out / name).glob(".*.tmp-*"):  # left by a killed build
            stale.unlink()
    storage = Storage(cfg.on_error, cfg.get("resize_max"), audio, cfg.get("share_media", True), max_pixels)
    plan = BuildPlan(out, templates, shaping, pool, storage)
    jobs = [
        ChunkJob(k // cfg.shard_size, split, anns[k : k + cfg.shard_size])
        for split, anns in by_split.items()
        for k in range(0, len(anns), cfg.shard_size)
    ]
    results = run_chunks(jobs, plan, workers, checks)
    sets: dict[str, list[dict]] = {}
    for job, result in zip(jobs, results):
        for name, stats in result.items():
            sets.setdefault(name, []).append({**stats, "shard": f"shard-{job.index:06d}.tar"})
    return skipped, sets


def recipe_manifest(cfg: DictConfig, sources: dict[str, str], skipped: dict, sets: dict[str, list[dict]]) -> dict:
    """What ``mmit.build`` and ``mmit.synth`` manifests hold: version, recipe, seed, config, source
    hashes, skipped annotations by reason and the per-set summary of the shards' stats."""
    return {
        "mmit_version": mmit.__version__,
        "recipe": cfg.get("name", ""),
        "seed": cfg.seed,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "sources": sources,
        "skipped_annotations": dict(sorted(skipped.items())),
        "sets": summarize_sets(sets),
    }


def summarize_sets(sets: dict[str, list[dict]]) -> dict[str, dict]:
    """The manifest's per-set entries from the stats of each set's shards (each with its ``shard`` name)."""
    summary = {}
    for name, stats in sets.items():
        merged = {
            key: dict(sorted(sum((Counter(s.get(key, {})) for s in stats), Counter()).items()))
            for key in ("by_task", "by_template", "by_source", "skipped", "long_audio")
        }
        summary[name] = {
            "samples": sum(s["samples"] for s in stats),
            "records": sum(s.get("records", s["samples"]) for s in stats),  # shards of mmit 0.1.0: one each
            "bytes": sum(s["bytes"] for s in stats),
            "shards": sorted(s["shard"] for s in stats),
            **merged,
        }
    return summary


def run_chunks(
    jobs: list[ChunkJob], plan: BuildPlan, workers: Workers | None, checks: ImageChecks | None
) -> list[dict]:
    """Each chunk's stats, in job order. With a pool, the images of the chunks still to write are
    checked first, in small batches (``ImageChecks``), then the chunks are shaped and written,
    the costliest first so the workers finish together: evaluation chunks (an annotation there
    yields samples for up to three sets), then the largest. A failed chunk raises once all are
    done, the first failure in job order, so which error a bad input gives does not depend on
    scheduling."""
    progress = {"total": len(jobs), "desc": "shards", "unit": "shard"}
    if workers is None:
        return [build_chunk(job, plan) for job in tqdm(jobs, **progress)]
    images = [job.images() for job in jobs]
    for job, paths in zip(jobs, images):
        if chunk_done(job, plan) is None:
            checks.add(paths)  # a fresh build queued these while reading; a resumed one does now
    checked = checks.results()
    jobs = [
        dataclasses.replace(job, checked={p: checked[p] for p in paths if p in checked})
        for job, paths in zip(jobs, images)
    ]
    for _ in range(workers.count):
        workers.plans.put(plan)
    costliest_first = sorted(range(len(jobs)), key=lambda i: (jobs[i].split != "val", -len(jobs[i].annotations)))
    futures = {i: workers.pool.submit(_build_chunk_in_worker, jobs[i]) for i in costliest_first}
    for _ in tqdm(as_completed(futures.values()), **progress):
        pass
    return [futures[i].result() for i in range(len(jobs))]


def source_hashes(cfg: DictConfig) -> dict[str, str]:
    """The sha256 of every file a recipe's annotation sources name."""
    hashes = {}
    for source in [*(cfg.get("sources") or []), *(cfg.get("heldout_sources") or [])]:
        for key, value in source.items():
            if key != "_target_" and isinstance(value, str) and os.path.isfile(value):
                hashes[value] = file_sha256(Path(value))
    return hashes


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


def format_manifest(manifest: dict, out: Path) -> str:
    lines = [f"built {manifest['recipe']} into {out}"]
    for name, s in manifest["sets"].items():
        tasks = ", ".join(f"{k} {v}" for k, v in s["by_task"].items())
        lines.append(
            f"  {name:<22} {s['samples']:>7} samples  {len(s['shards']):>3} shards  "
            f"{s['bytes'] / 1e6:8.1f} MB  ({tasks})"
        )
        if s["skipped"]:
            lines.append(f"  {'':<22} skipped: {s['skipped']}")
        if s.get("long_audio"):
            lines.append(f"  {'':<22} samples with clips longer than audio.max_seconds: {s['long_audio']}")
    if manifest["skipped_annotations"]:
        lines.append(f"  skipped annotations: {manifest['skipped_annotations']}")
    return "\n".join(lines)


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
