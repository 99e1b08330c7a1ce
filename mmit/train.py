"""Entry point: ``python -m mmit.train +recipe=<name> [overrides]``.

Reads top to bottom: config, model, tuning, data, loop, summary.
"""

from __future__ import annotations

import json
import logging
import random
import sys
from contextlib import nullcontext
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mmit.cli import user_errors
from mmit.config_checks import check_config
from mmit.factory import (
    ENCODER_GROUPS,
    build_data,
    build_model,
    build_trainer_config,
    build_training_batches,
    prepare_feature_caches,
)
from mmit.grounding import PRIOR_FILE
from mmit.models.align import align_projectors
from mmit.paths import CONF_DIR, atomic_write_text, exclusive_folder
from mmit.plots import plot_grounding, plot_training_curves
from mmit.training import distributed
from mmit.training.checkpoint import write_run_config
from mmit.training.device import pick_device
from mmit.training.loop import train
from mmit.training.report import format_summary
from mmit.training.tracking import read_metrics

log = logging.getLogger("mmit.train")


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """The whole job for a composed config; returns the summary dict.

    Under torchrun every process runs it; the first one writes the run directory's files and
    builds any missing dataset while the others wait. It holds the run directory as its only
    writer: a second training into it stops at once, naming this one (readers such as mmit.eval
    are not locked out).
    """
    place = distributed.setup(cfg.trainer.device)  # the only call: the loop is handed its result
    with exclusive_folder(run_dir, "mmit.train") if place[0].is_main else nullcontext():
        return _run(cfg, run_dir, place)


def _run(cfg: DictConfig, run_dir: Path, place: tuple[distributed.Dist, torch.device]) -> dict:
    d = place[0]
    if d.is_main and cfg.trainer.get("benchmarks"):  # read now: a damaged folder stops the run before anything is built
        from mmit.benchmarks import load_benchmarks

        counts = {name: len(b.samples) for name, b in load_benchmarks(cfg.trainer.benchmarks).items()}
        log.info("benchmarks to score after training: %s questions", counts)
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_config(run_dir, cfg)  # on resume: changes the checkpoint cannot honour are refused
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    built = build_model(cfg)
    log.info("model: %s\n%s", built.source, built.table)

    # The first process builds the dataset and encodes any feature cache (on first use) while the
    # others wait; they then find both done and only read them.
    if not d.is_main:
        distributed.barrier(d)
    data = build_data(cfg, built.tokenizer, list(built.model.slots.values()))
    cache_cfg = OmegaConf.merge(cfg, {"feature_cache": feature_cache_setting(cfg, built.model)})
    features = prepare_feature_caches(cache_cfg, built.model, data, str(pick_device(cfg.trainer.get("device", "auto"))))
    if d.is_main:
        distributed.barrier(d)
    log.info(
        "data: training %s; eval sets: %s", data.train.describe(), {n: len(e.tokens) for n, e in data.eval.items()}
    )

    aligned = {}
    if cfg.get("projector_align"):  # projectors first learn to say their media's words in the LLM's embeddings
        aligned = align_projectors(
            cfg.projector_align, built.model, built.tokenizer, data, features, run_dir, cfg.init_from
        )

    if d.is_main and data.prior is not None:  # mmit.eval reads the run's blind prior from here
        data.prior.save(run_dir / PRIOR_FILE)
    trainer_cfg = build_trainer_config(cfg)
    batches = build_training_batches(trainer_cfg, built.model, built.tokenizer, data.train, features, d)
    summary = train(built.model, built.tokenizer, batches, data.eval, trainer_cfg, run_dir, data.prior, place)
    if aligned:
        summary["projector_align"] = aligned
    summary.update(
        llm=built.source,
        parameters=built.table,
        train_samples=data.train.describe(),
        skipped=data.skipped(),
        truncated=data.truncated(),
        feature_cache={kind: store.describe() for kind, store in features.items()},
    )
    if not d.is_main:
        return summary

    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
    plot_training_curves(read_metrics(run_dir / "metrics.jsonl"), run_dir / "training_curves.png")
    plot_grounding(summary.get("grounding", {}), run_dir / "grounding.png")  # own vs swapped media, blind prior
    text = format_summary(summary, run_dir)
    atomic_write_text(run_dir / "summary.md", text)
    print(text)
    return summary


def feature_cache_setting(cfg: DictConfig, model) -> str | None:
    """``feature_cache`` for this run: ``auto`` (the default) turns itself off, with one log line
    saying why, where there is nothing to cache (text only, or every encoder trained); a directory
    named explicitly is used as given."""
    setting = cfg.get("feature_cache")
    if not setting:
        return None
    if not model.encoders:
        log.info("feature cache not used: text-only, no media encoder")
        return None
    groups = ENCODER_GROUPS
    trained = [
        f"tuning.{group}={cfg.tuning[group]}"
        for group in dict.fromkeys(groups[k] for k in model.encoders)  # video shares the vision encoder
        if cfg.tuning[group] != "frozen"
    ]
    if setting == "auto" and all(cfg.tuning[groups[k]] != "frozen" for k in model.encoders):
        log.info(
            "feature cache off, encoders run every step: %s (a trained encoder's outputs change)", ", ".join(trained)
        )
        return None
    return setting  # a trained encoder beside frozen ones: only the frozen ones' media are cached


def check_run_dir_override(argv: list[str]) -> None:
    """``hydra.run.dir`` naming a file, or a folder under one, is named here: Hydra makes the folder
    before any of mmit's code runs, and fails with a traceback."""
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+") == "hydra.run.dir" and "${" not in value:
            path = Path(value).expanduser()
            blocker = next((p for p in (path, *path.parents) if p.exists()), None)
            if blocker is not None and not blocker.is_dir():
                raise SystemExit(f"mmit.train: hydra.run.dir={value}: {blocker} is a file, not a folder")


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
@user_errors("mmit.train")  # a user's mistake ends with one line naming it, not a traceback
def main(cfg: DictConfig) -> None:
    check_config(cfg)  # values (types, ranges, names) before anything is built
    try:
        run(cfg, Path(HydraConfig.get().runtime.output_dir))
    finally:
        distributed.teardown()


if __name__ == "__main__":
    check_run_dir_override(sys.argv[1:])
    main()
