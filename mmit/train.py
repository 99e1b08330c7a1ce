"""Entry point: ``python -m mmit.train +recipe=<name> [overrides]``.

Reads top to bottom: config, model, tuning, data, loop, summary.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mmit.factory import build_data, build_model, build_trainer_config, prepare_feature_caches, resolved_yaml
from mmit.paths import CONF_DIR, atomic_write_text
from mmit.plots import plot_training_curves
from mmit.training import distributed
from mmit.training.loop import train
from mmit.training.report import format_summary
from mmit.training.tracking import read_metrics

log = logging.getLogger("mmit.train")


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """The whole job for a composed config; returns the summary dict.

    Under torchrun every process runs it; the first one writes the run directory's files and
    builds any missing dataset while the others wait.
    """
    d, _ = distributed.setup(cfg.trainer.device)
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", resolved_yaml(cfg))
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    built = build_model(cfg)
    log.info("model: %s\n%s", built.source, built.table)

    # The first process builds the dataset and encodes any feature cache (on first use) while the
    # others wait; they then find both done and only read them.
    if not d.is_main:
        distributed.barrier(d)
    data = build_data(cfg, built.tokenizer, list(built.model.slots.values()))
    features = prepare_feature_caches(cfg, built.model, data, "cuda" if torch.cuda.is_available() else "cpu")
    if d.is_main:
        distributed.barrier(d)
    log.info(
        "data: training %s; eval sets: %s", data.train.describe(), {n: len(e.tokens) for n, e in data.eval.items()}
    )

    trainer_cfg = build_trainer_config(cfg)
    summary = train(built.model, built.tokenizer, data.train, data.eval, trainer_cfg, run_dir, features)
    summary.update(
        llm=built.source,
        parameters=built.table,
        train_samples=data.train.describe(),
        skipped=data.skipped(),
        truncated=data.truncated(),
    )
    if not d.is_main:
        return summary

    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
    plot_training_curves(read_metrics(run_dir / "metrics.jsonl"), run_dir / "training_curves.png")
    text = format_summary(summary, run_dir)
    atomic_write_text(run_dir / "summary.md", text)
    print(text)
    return summary


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg, Path(HydraConfig.get().runtime.output_dir))
    finally:
        distributed.teardown()


if __name__ == "__main__":
    main()
