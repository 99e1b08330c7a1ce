"""What one run of B1-B6 measures: the sizes and repetitions (``--quick``: everything tiny) and B4's
mmit-side configurations."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench.models import LLM_05B_CLASS, SMOLLM2_135M, TINY_LLM, VIT_B16, VIT_B32, VIT_TINY

if TYPE_CHECKING:
    from bench.loops import LoopSetup


@dataclass
class Plan:
    """Sizes and repetitions for one run; ``--quick`` makes everything tiny."""

    device: str
    quick: bool
    reps: int
    tmp: Path
    text_shape: dict  # B3, B5, B6
    text_shape_name: str
    b3_tokens: tuple[int, int]  # (batch, sequence)
    b5_tokens: tuple[int, int]
    b6_tokens: tuple[int, int]
    b4_llm: dict
    b4_vision: dict
    b4_samples: int
    b4_batch: int
    b4_variants: list[MmitFastPaths]
    extra_b5_shapes: dict[str, dict] = field(default_factory=dict)
    started: dict[str, list] = field(default_factory=dict)  # benchmark id -> child processes started early
    loop: LoopSetup | None = None  # B1, B2 and B4's model and data, built by the first of them


DEFAULTS = "mmit's defaults"  # the B4 side its goal is about


@dataclass
class MmitFastPaths:
    """One configuration of the mmit side of B4 (the naive side uses none of these).

    The labelled-only loss is not optional: mmit's training loop always applies the output head
    at labelled positions only (mmit/training/loss.py).
    """

    name: str
    group_by_length: int = 16  # batches per length-sorted window (trainer.group_by_length), 0 = off
    # each batch packed into rows of up to this many tokens (trainer.pack_length); 0 = off, -1 = the
    # longest sample, None = the trainer's default (rows of up to data.max_length where that saves 25%)
    pack_length: int | None = 0
    feature_cache: bool = False  # frozen-encoder outputs computed once (feature_cache=DIR)
    prefetch: int | None = None  # batches collated ahead (trainer.prefetch); None = mmit's default

    def describe(self, batch_size: int) -> str:
        if self.pack_length is None:
            packing = f"{batch_size} a batch, packed as by default (rows of up to data.max_length tokens)"
        elif self.pack_length:
            packing = f"{batch_size} a batch, packed into rows of up to {self.pack_length} tokens"
        else:
            packing = f"{batch_size} a batch"
        parts = [packing]
        if not self.pack_length:
            parts.append(f"group_by_length={self.group_by_length}" if self.group_by_length else "no length grouping")
        parts.append("cached encoder features" if self.feature_cache else "encoder every step")
        if self.prefetch is not None:
            parts.append(f"prefetch={self.prefetch}")
        return "; ".join(parts)


def make_plan(args: argparse.Namespace, tmp: Path) -> Plan:
    cuda = args.device == "cuda"
    # B4's mmit sides: its defaults (packing where it saves, the feature cache), and with both off;
    # --b4-pack-length adds a side packed into rows of that many tokens, with the cache.
    variants = [
        MmitFastPaths(DEFAULTS, args.b4_group_by_length, None, True, args.b4_prefetch),
        MmitFastPaths("mmit, no packing or cache", args.b4_group_by_length, 0, False, args.b4_prefetch),
    ]
    if args.b4_pack_length is not None:
        name = f"mmit, rows of {'the longest sample' if args.b4_pack_length < 0 else args.b4_pack_length}"
        variants.append(MmitFastPaths(name, args.b4_group_by_length, args.b4_pack_length, True, args.b4_prefetch))
    if args.quick:
        return Plan(
            device=args.device,
            quick=True,
            reps=args.reps or 1,
            tmp=tmp,
            text_shape=TINY_LLM,
            text_shape_name="tiny Llama (2 layers, hidden 64, vocabulary 2,048)",
            b3_tokens=(2, 32),
            b5_tokens=(2, 32),
            b6_tokens=(2, 32),
            b4_llm={**TINY_LLM, "vocab_size": 1024},
            b4_vision=VIT_TINY,
            b4_samples=8,
            b4_batch=4,
            b4_variants=variants,
        )
    shape, shape_name = smollm2_shape()
    return Plan(
        device=args.device,
        quick=False,
        reps=args.reps or 5,
        tmp=tmp,
        text_shape=shape,
        text_shape_name=shape_name,
        b3_tokens=(8, 512) if cuda else (2, 128),
        b5_tokens=(16, 1024) if cuda else (4, 128),
        b6_tokens=(16, 512) if cuda else (8, 64),  # CPU: trainer.batch_size 8 of demo-VQA-length samples
        b4_llm=SMOLLM2_135M,
        b4_vision=VIT_B16 if cuda else VIT_B32,
        b4_samples=512 if cuda else 32,
        b4_batch=16 if cuda else 8,
        b4_variants=variants,
        extra_b5_shapes={"0.5B-class (Qwen2.5-0.5B shape)": LLM_05B_CLASS} if cuda else {},
    )


def smollm2_shape() -> tuple[dict, str]:
    """SmolLM2-135M's shape: from the converted model in the mmit cache when there is one."""
    root = Path(os.environ.get("MMIT_CACHE", Path.home() / ".cache" / "mmit")).expanduser()
    from mmit.models.llm import SMOLLM2_DIR

    cached = root / "models" / SMOLLM2_DIR / "config.json"
    if cached.exists():
        config = json.loads(cached.read_text())
        shape = {k: config[k] for k in SMOLLM2_135M if k in config}
        return {**SMOLLM2_135M, **shape}, "SmolLM2-135M (the config of mmit's converted copy, random weights)"
    return dict(SMOLLM2_135M), "SmolLM2-135M (its config as published, random weights)"
