"""The build's plan and its worker pool: the annotations of each split cut into chunks of
``shard_size``, each chunk checked, shaped and written as shard ``index`` of every set it feeds,
by this process or by worker processes. Finished chunks are kept, so a build run again only
writes what is missing."""

from __future__ import annotations

import ctypes
import dataclasses
import json
import multiprocessing
import multiprocessing.queues
import os
import signal
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from mmit.data.annotations import Annotation
from mmit.data.audio import AudioPolicy
from mmit.data.instructions import ShapingConfig, answer_pool
from mmit.data.media import DEFAULT_MAX_PIXELS
from mmit.data.media_checks import ImageChecks, image_paths, read_media_file, with_audio_windows
from mmit.data.recipes import recipe_templates, shaping_config
from mmit.data.shard_writer import Storage, shard_done, write_shard
from mmit.data.splits import SETS, shape_chunk
from mmit.paths import atomic_write_text


@dataclass
class BuildPlan:
    """What every chunk of one build shares; a worker process receives it once, not with each chunk
    (VQAv2's answer pool alone is tens of thousands of strings)."""

    out: Path
    templates: dict
    shaping: ShapingConfig
    pool: dict[str, list[str]]
    storage: Storage


def max_pixels(cfg: DictConfig) -> int:
    """The recipe's pixel limit: a larger image is refused from its header, never decoded."""
    return cfg.get("max_pixels") or DEFAULT_MAX_PIXELS


def plan_build(cfg: DictConfig, annotations: list[Annotation]) -> BuildPlan:
    """The recipe's templates and shaping, the answer pool of its (training source) annotations, and
    how samples are stored."""
    templates = recipe_templates(cfg)
    shaping = shaping_config(cfg, templates)
    audio = AudioPolicy(**OmegaConf.to_container(cfg.audio)) if cfg.get("audio") else AudioPolicy()
    pool = answer_pool(annotations)
    storage = Storage(cfg.on_error, cfg.get("resize_max"), audio, cfg.get("share_media", True), max_pixels(cfg))
    return BuildPlan(Path(cfg.out_dir), templates, shaping, pool, storage)


@dataclass
class ChunkJob:
    """``shard_size`` annotations of one split; they become shard ``index`` of each output set."""

    index: int
    split: str
    annotations: list[Annotation]
    checked: dict[str, tuple[str, str] | None] = dataclasses.field(default_factory=dict)  # image -> None if good

    def images(self) -> list[str]:
        return image_paths(self.annotations)


def chunk_jobs(by_split: dict[str, list[Annotation]], shard_size: int) -> list[ChunkJob]:
    """Each split's annotations (sorted by media file) cut into chunks of ``shard_size``."""
    return [
        ChunkJob(k // shard_size, split, anns[k : k + shard_size])
        for split, anns in by_split.items()
        for k in range(0, len(anns), shard_size)
    ]


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
    # A good video keeps only its result (None), like a pool-checked image: videos are large.
    files = sorted(
        {(m.path, m.kind) for a in job.annotations for m in a.media if m.path and m.kind in ("image", "audio", "video")}
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


@dataclass
class Workers:
    """A build's worker processes, the queue that gives each of them its copy of the plan, and the
    image checks they run while the annotations are read."""

    pool: ProcessPoolExecutor
    plans: multiprocessing.queues.Queue  # the build plan, one copy per worker
    count: int
    checks: ImageChecks


@contextmanager
def worker_pool(count: int, max_pixels: int | None = None) -> Iterator[Workers | None]:
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
            yield Workers(pool, plans, count, ImageChecks(pool, max_pixels=max_pixels))
    finally:
        plans.cancel_join_thread()  # copies no worker took (it built no chunk) are dropped, not waited on
        plans.close()


def early_image_checks(workers: Workers | None, out: Path) -> Callable[[Annotation], None] | None:
    """With a pool, a fresh build queues each image for checking as soon as an annotation names it;
    a resumed one only the images of chunks still to write (in :func:`run_chunks`)."""
    if workers is None or any((out / ".chunks").glob("*.json")):
        return None
    return workers.checks.add_annotation


def write_sets(jobs: list[ChunkJob], plan: BuildPlan, workers: Workers | None) -> dict[str, list[dict]]:
    """Every chunk's shards written (finished ones kept): the stats of each set's shards, each with
    its ``shard`` name. Set folders left empty are removed."""
    for name in (*SETS, ".chunks"):
        (plan.out / name).mkdir(exist_ok=True)
        for stale in (plan.out / name).glob(".*.tmp-*"):  # left by a killed build
            stale.unlink()
    results = run_chunks(jobs, plan, workers)
    sets: dict[str, list[dict]] = {}
    for job, result in zip(jobs, results):
        for name, stats in result.items():
            sets.setdefault(name, []).append({**stats, "shard": f"shard-{job.index:06d}.tar"})
    for name in SETS:
        if name not in sets and not any((plan.out / name).iterdir()):
            (plan.out / name).rmdir()
    return {name: sets[name] for name in SETS if name in sets}


def run_chunks(jobs: list[ChunkJob], plan: BuildPlan, workers: Workers | None) -> list[dict]:
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
            workers.checks.add(paths)  # a fresh build queued these while reading; a resumed one does now
    checked = workers.checks.results()
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


@dataclass
class WorkerState:
    """What a worker process keeps between chunks: the queue its copy of the plan comes through,
    the build process it works for, and the plan once taken."""

    plans: multiprocessing.queues.Queue
    parent: int
    plan: BuildPlan | None = None

    def check_parent(self) -> None:
        if os.getppid() != self.parent:
            os._exit(1)  # an orphan: the build that wanted these shards is gone

    def take_plan(self) -> BuildPlan:
        if self.plan is None:  # the main process puts one copy per worker; each worker keeps the first it takes
            self.plan = self.plans.get()
        return self.plan


_worker: WorkerState | None = None  # set in each worker process by the pool's initializer, and only there


def _init_worker(plans: multiprocessing.queues.Queue, parent: int) -> None:
    """The pool's initializer: the plan does not exist yet when the workers start. A worker dies with
    the build: Linux sends it SIGKILL when its parent ends (``PR_SET_PDEATHSIG``, even after the
    parent's ``kill -9``); elsewhere it checks between chunks that its parent is still there."""
    global _worker
    _worker = WorkerState(plans, parent)
    die_with_parent()
    _worker.check_parent()  # the parent died before the line above took effect


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> bool:
    """Ask the kernel to SIGKILL this process when its parent ends; False where it cannot (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0


def _build_chunk_in_worker(job: ChunkJob) -> dict[str, dict]:
    _worker.check_parent()
    return build_chunk(job, _worker.take_plan())
