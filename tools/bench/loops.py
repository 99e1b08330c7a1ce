"""B1, B2 and B4: epochs of mmit's own training loop on a length-skewed image+text set (B1 packed vs
padded, B2 cached encoder features vs the encoder every step, B4 mmit vs a naive LLaVA loop)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from bench.harness import alternate, median, spread, sync
from bench.models import build_mmit_b4, labelled_loss, lora_config, naive_llava, precision_for, save_b4_models
from bench.plan import DEFAULTS, MmitFastPaths, Plan
from bench.report import Result

# --- the set, a plain LLaVA loop and mmit's loop, shared by B1, B2 and B4 -----------------------

_WORDS = (
    "the image shows a red blue green circle square triangle on left right of and is there yes no two three "
    "four five small large near far top bottom next to above below color shape count answer question"
).split()


def synthetic_conversations(n: int, image_side: int, seed: int = 0) -> list:
    """A length-skewed mix: most answers short, some medium, a few long; 85% with one image."""
    import numpy as np
    from PIL import Image

    from mmit.data.samples import Conversation, MediaRef, Message

    rng = random.Random(seed)
    convs = []
    for i in range(n):
        kind = rng.random()
        words = rng.randint(2, 12) if kind < 0.7 else (rng.randint(30, 60) if kind < 0.9 else rng.randint(150, 250))
        question = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 15))) + "?"
        answer = " ".join(rng.choice(_WORDS) for _ in range(words)) + "."
        media = []
        if rng.random() < 0.85:
            side = max(image_side, 8)
            y, x = np.mgrid[0:side, 0:side]
            base = rng.randrange(256)
            pixels = np.stack([(x * 3 + base) % 256, (y * 5 + base) % 256, (x + y + rng.randrange(256)) % 256], -1)
            noise = np.random.default_rng(seed * 100_003 + i).integers(0, 40, pixels.shape)
            buffer = io.BytesIO()
            Image.fromarray((pixels + noise).clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
            media = [MediaRef("image", "jpg", data=buffer.getvalue())]
            question = "<image>\n" + question
        convs.append(Conversation(f"bench-{i}", [Message("user", question), Message("assistant", answer)], {}, media))
    return convs


class NaiveBatches:
    """Seeded shuffle, fixed batches, right-padded to each batch's longest sample; images decoded and
    preprocessed per batch by the vision tower's own image processor (as a plain LLaVA script does)."""

    def __init__(self, samples: list, batch_size: int, processor, pad_id: int, seed: int = 0):
        from mmit.data.samples import IGNORE_INDEX

        self.samples, self.batch_size, self.processor, self.pad_id = samples, batch_size, processor, pad_id
        self.ignore = IGNORE_INDEX
        order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
        self.batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]

    def collate(self, indices: list[int]) -> dict:
        from PIL import Image

        chosen = [self.samples[i] for i in indices]
        width = max(len(s.input_ids) for s in chosen)
        ids = torch.full((len(chosen), width), self.pad_id, dtype=torch.long)
        labels = torch.full_like(ids, self.ignore)
        mask = torch.zeros_like(ids)
        for row, s in enumerate(chosen):
            ids[row, : len(s.input_ids)] = torch.tensor(s.input_ids)
            labels[row, : len(s.labels)] = torch.tensor(s.labels)
            mask[row, : len(s.input_ids)] = 1
        images = [Image.open(io.BytesIO(m.read())).convert("RGB") for s in chosen for m in s.media]
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"] if images else None
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": pixels}


def naive_epoch(llava, batches: NaiveBatches, optimizer, trainable, precision: str, device: str, steps=None) -> float:
    """One pass: collate, forward with labels (full logits, mean loss), backward, clip, AdamW."""
    from mmit.training.device import autocast

    start = time.perf_counter()
    for indices in batches.batches[:steps]:
        inputs = {k: (v.to(device) if v is not None else None) for k, v in batches.collate(indices).items()}
        with autocast(torch.device(device), precision):
            loss = llava(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - start


def mmit_trainer_config(plan: Plan, variant: MmitFastPaths, steps: int, batch_size: int, precision: str):
    """TrainerConfig for timing: no evaluation, logging or checkpoints but the one the loop writes at its end."""
    from mmit.training.loop import TrainerConfig

    config = TrainerConfig(
        max_steps=steps,
        batch_size=batch_size,
        group_by_length=variant.group_by_length,
        pack_length=variant.pack_length,
        warmup_steps=0,
        lr=2e-4,
        precision=precision,
        device=plan.device,
        log_every=10**9,
        eval_every=10**9,
        save_every=10**9,
        generate_samples=0,
        resume=False,
        tensorboard=False,
    )
    if variant.prefetch is not None:
        config.prefetch = variant.prefetch
    return config


@dataclass
class LoopSetup:
    """What B1, B2 and B4 share: the model as ``mmit.train`` builds it, the length-skewed image+text
    set tokenized by mmit, and epochs of mmit's own training loop under a chosen ``MmitFastPaths``."""

    plan: Plan
    cfg: object
    model: nn.Module
    tokenizer: object
    dataset: object
    clip_dir: Path
    precision: str
    cache_seconds: float = 0.0
    _features: dict | None = None
    _runs: itertools.count = field(default_factory=itertools.count)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def lengths(self) -> list[int]:
        return [len(s.input_ids) for s in self.dataset.samples]

    @property
    def real_tokens(self) -> int:
        return sum(self.lengths)

    def resolve(self, variant: MmitFastPaths) -> MmitFastPaths:
        """``pack_length=-1``: rows as long as the longest sample, rounded up to 64 tokens."""
        if variant.pack_length is None or variant.pack_length >= 0:
            return variant
        return dataclasses.replace(variant, pack_length=-(-max(self.lengths) // 64) * 64)

    def batch_size(self, variant: MmitFastPaths) -> int:
        """``b4_batch`` samples a step, padded or packed: the trainer packs each step's own samples."""
        return self.plan.b4_batch

    def epoch_stats(self, variant: MmitFastPaths) -> dict:
        """Steps, samples, computed and real tokens of the first epoch of mmit's loader (seed 0, media undecoded)."""
        from mmit.data.collate import Collator
        from mmit.data.loader import batch_stream
        from mmit.training.packing import min_saving_for, pack_batch, resolve_pack_length

        stream = batch_stream(self.dataset, Collator(self.pad_id), self.batch_size(variant), 0, variant.group_by_length)
        # as mmit.factory.build_training_batches resolves trainer.pack_length for this model
        pack_length = resolve_pack_length(variant.pack_length, self.dataset.tokenize.max_length, self.model, False)
        min_saving = min_saving_for(variant.pack_length)
        steps = samples = computed = real = 0
        while samples < len(self.dataset):
            batch = next(stream)
            if pack_length:
                batch = pack_batch(batch, pack_length, self.pad_id, min_saving)
            steps, samples = steps + 1, samples + len(batch.ids)
            computed += batch.input_ids.numel()
            real += int(batch.attention_mask.sum())
        return {"steps": steps, "samples": samples, "computed_tokens": computed, "real_tokens": real}

    def features(self) -> dict:
        """Frozen-encoder features computed once, as ``python -m mmit.train feature_cache=DIR`` does."""
        if self._features is None:
            from types import SimpleNamespace

            from omegaconf import open_dict

            from mmit.factory import prepare_feature_caches

            with open_dict(self.cfg):
                self.cfg.feature_cache = str(self.plan.tmp / "features")
            start = time.perf_counter()
            data = SimpleNamespace(train=self.dataset, eval={})
            self._features = prepare_feature_caches(self.cfg, self.model, data, self.plan.device)
            self.cache_seconds = time.perf_counter() - start
        return self._features

    def epoch(self, variant: MmitFastPaths, steps: int | None = None) -> float:
        """Seconds of one epoch (or ``steps``) of ``mmit.training.loop.train``: its own ``train_seconds``."""
        from mmit.factory import build_training_batches
        from mmit.training.loop import train

        steps = steps or self.epoch_stats(variant)["steps"]
        config = mmit_trainer_config(self.plan, variant, steps, self.batch_size(variant), self.precision)
        features = self.features() if variant.feature_cache else None
        batches = build_training_batches(config, self.model, self.tokenizer, self.dataset, features)
        run_dir = self.plan.tmp / f"run-{next(self._runs)}"
        with contextlib.redirect_stderr(io.StringIO()):  # the loop's progress bar
            summary = train(self.model, self.tokenizer, batches, {}, config, run_dir)
        return summary["train_seconds"]

    def timed_sides(self, variants: list[MmitFastPaths]) -> tuple[dict, dict[str, Callable[[], float]]]:
        """Each variant's epoch stats and a two-step warm-up; then, per variant, a ``loop_reps`` side that
        times one epoch. The warm-up trains the model: call this after anything that needs it untrained."""
        stats = {v.name: self.epoch_stats(v) for v in variants}
        for v in variants:
            self.epoch(v, steps=2)  # warm-up (and the feature cache, for a variant that reads it)
        return stats, {v.name: (lambda v=v: self.epoch(v)) for v in variants}


def loop_setup(plan: Plan) -> LoopSetup:
    """B1, B2 and B4's setup, built by the first of them and kept in the plan."""
    if plan.loop is None:
        from mmit.data.datasets import TokenizedDataset
        from mmit.data.tokenize import Tokenizer

        clip_dir, llm_dir = save_b4_models(plan)
        built, cfg = build_mmit_b4(clip_dir, llm_dir)
        convs = synthetic_conversations(plan.b4_samples, plan.b4_vision["image_size"] + 32)
        slots = list(built.model.slots.values())
        dataset = TokenizedDataset(convs, Tokenizer(built.tokenizer, 4096, "raise", "raise", slots), name="bench")
        plan.loop = LoopSetup(plan, cfg, built.model, built.tokenizer, dataset, clip_dir, precision_for(plan.device))
    return plan.loop


# --- B1: packed vs padded; B2: cached features vs the encoder every step ------------------------


LOOP_COLUMNS = [
    "side",
    "samples/s (median)",
    "useful tokens/s",
    "epoch (s, median)",
    "range (s)",
    "steps/epoch",
    "computed tokens/epoch",
    "setup",
]


def loop_rows(loop: LoopSetup, seconds: dict, variants: list[MmitFastPaths], stats: dict) -> list[list]:
    """One row of ``LOOP_COLUMNS`` per side."""
    return [
        [
            v.name,
            stats[v.name]["samples"] / median(seconds[v.name]),
            stats[v.name]["real_tokens"] / median(seconds[v.name]),
            median(seconds[v.name]),
            spread(seconds[v.name]),
            stats[v.name]["steps"],
            stats[v.name]["computed_tokens"],
            v.describe(loop.batch_size(v)),
        ]
        for v in variants
    ]


def share_of_ideal(result: Result, rows: list[list], gain: float, ideal: float) -> Result:
    """B1 and B2: the measured gain as a share of the ideal one; the goal is 90%."""
    result.columns, result.rows = LOOP_COLUMNS, rows
    result.ratio, result.goal = gain / ideal, ">= 90%"
    result.met = result.ratio >= 0.9
    return result


def loop_words(plan: Plan, loop: LoopSetup) -> str:
    v, llm = plan.b4_vision, plan.b4_llm
    return (
        f"B4's model and data through mmit's own factory and training loop ({loop.precision}): "
        f"{len(loop.dataset)} synthetic conversations (70% short answers, 20% medium, 10% long; 85% with an "
        f"image), random CLIP ViT (hidden {v['hidden_size']}, {v['num_hidden_layers']} layers, "
        f"{loop.model.slots['image'].count} tokens an image) frozen, random Llama (hidden {llm['hidden_size']}, "
        f"{llm['num_hidden_layers']} layers) with LoRA, MLP projector; one epoch per repetition"
    )


def bench_b1(plan: Plan) -> Result:
    loop = loop_setup(plan)
    # The feature cache on both sides: the encoder's cost does not change with packing, so it is kept
    # out of a comparison of how the LLM's tokens are laid out.
    padded = MmitFastPaths("padded", group_by_length=0, feature_cache=True)
    packed = MmitFastPaths("packed", pack_length=None, feature_cache=True)  # as trainer.pack_length's default
    variants = [padded, packed]
    stats, sides = loop.timed_sides(variants)
    seconds = alternate(sides, plan.reps, "B1")
    useful = {v.name: stats[v.name]["real_tokens"] / median(seconds[v.name]) for v in variants}
    ideal = stats["padded"]["computed_tokens"] / stats["padded"]["real_tokens"]
    gain = useful["packed"] / useful["padded"]
    result = share_of_ideal(
        Result(
            "B1",
            "Packed vs padded batches: useful tokens/s",
            compared=(
                f"{loop_words(plan, loop)}. **padded**: batches of {plan.b4_batch} samples in shuffled order, each "
                "padded to its longest; **packed**: mmit's default (`trainer.pack_length` unset: rows of up to "
                f"`data.max_length`, {loop.dataset.tokenize.max_length} tokens here): each step's samples laid in "
                "rows, per-sample positions and attention. "
                "Both read cached encoder features"
            ),
            ratio_label="share of the ideal gain: (packed / padded useful tokens/s) / (padded tokens / real tokens)",
            raw={"seconds": seconds, "epoch_stats": stats, "ideal_gain": ideal, "gain": gain},
        ),
        loop_rows(loop, seconds, variants, stats),
        gain,
        ideal,
    )
    packed_overhead = stats["packed"]["computed_tokens"] / stats["packed"]["real_tokens"]
    result.notes += [
        f"Useful tokens/s packed / padded: {gain:.2f}x; the ideal, padded tokens / real tokens of the padded "
        f"side: {ideal:.2f}x.",
        f"Packed rows are {packed_overhead:.2f}x the real tokens (the end of a row that no sample fits).",
        "Not every cost shrinks with the padding: the output head and loss run on labelled tokens only, and "
        "the projector on each image, on both sides.",
    ]
    if gain > ideal:
        result.notes.append(
            "Above 100%: the ideal counts tokens, but the padded side's attention grows with the square of its "
            "padded length, while packed rows attend within each sample."
        )
    result.notes.append(
        f"Attention: `llm.attn_implementation={loop.model.base_llm.config._attn_implementation}`. mmit's default, "
        "`packed_sdpa`, runs each sample of a packed row through SDPA on its own, so attention work follows the "
        "samples' lengths, not the row's; with plain `sdpa` the whole row is computed and the blocks between "
        "samples masked."
    )
    return result


def encoder_epoch_seconds(loop: LoopSetup) -> float:
    """What the feature cache saves in an epoch: decoding, preprocessing and the frozen encoder, on
    every image of the set in batches of the training batch size (no LLM, no loss)."""
    from mmit.data.collate import Collator
    from mmit.training.device import autocast

    device = torch.device(loop.plan.device)
    collate = Collator(loop.pad_id, preprocess={k: e.preprocess for k, e in loop.model.encoders.items()})
    samples, size = loop.dataset.samples, loop.plan.b4_batch
    start = time.perf_counter()
    with torch.no_grad(), autocast(device, loop.precision):
        for k in range(0, len(samples), size):
            for kind, pixels in collate(samples[k : k + size]).media.items():
                loop.model.encoders[kind](pixels.to(device))
    sync(loop.plan.device)
    return time.perf_counter() - start


def bench_b2(plan: Plan) -> Result:
    loop = loop_setup(plan)
    live = MmitFastPaths("encoder every step", feature_cache=False)
    cached = MmitFastPaths("cached features", feature_cache=True)
    variants = [live, cached]
    stats, sides = loop.timed_sides(variants)
    encoder_epoch_seconds(loop)  # warm-up
    seconds = alternate({**sides, "encoder alone": lambda: encoder_epoch_seconds(loop)}, plan.reps, "B2")
    encoder_share = median(seconds["encoder alone"]) / median(seconds[live.name])
    ideal = 1 / (1 - min(encoder_share, 0.99))
    rate = {v.name: stats[v.name]["samples"] / median(seconds[v.name]) for v in variants}
    gain = rate[cached.name] / rate[live.name]
    result = share_of_ideal(
        Result(
            "B2",
            "Cached encoder features vs the encoder every step: samples/s",
            compared=(
                f"{loop_words(plan, loop)}. Same batches on both sides (batches of {plan.b4_batch}, "
                "`group_by_length=16`); **encoder every step**: images decoded, preprocessed and encoded in every "
                "step; **cached features**: `feature_cache=DIR`, built once before timing. The encoder's share of "
                "a step is measured in the same repetitions: decoding, preprocessing and encoding every image of "
                "the epoch on its own, divided by the live side's epoch"
            ),
            ratio_label="share of the ideal gain: (cached / live samples/s) / (1 / (1 - encoder share))",
            raw={"seconds": seconds, "epoch_stats": stats, "encoder_share": encoder_share, "ideal_gain": ideal},
        ),
        loop_rows(loop, seconds, variants, stats),
        gain,
        ideal,
    )
    result.notes += [
        f"Samples/s cached / live: {gain:.2f}x. Encoder share of the live epoch: {encoder_share:.1%} "
        f"(encoder alone {median(seconds['encoder alone']):.2f} s of {median(seconds[live.name]):.2f} s), so "
        f"the ideal gain is {ideal:.2f}x.",
        f"Building the cache took {loop.cache_seconds:.1f} s once (not in the epochs); it pays for itself from "
        "the second epoch on.",
    ]
    if gain > ideal:
        saved = median(seconds[live.name]) - median(seconds[cached.name])
        result.notes.append(
            f"Above 100%: the cache saved {saved:.2f} s an epoch, more than decoding, preprocessing and encoding "
            "the epoch's images take when timed on their own; in the loop, the decoding and preprocessing run in "
            "the prefetch thread beside the step, on the same 2 cores."
        )
    return result


# --- B4: mmit vs a naive LLaVA training loop --------------------------------------------------


def bench_b4(plan: Plan) -> Result:
    from transformers import AutoImageProcessor

    from mmit.data.collate import Collator

    loop = loop_setup(plan)
    device, precision = plan.device, loop.precision
    model, dataset, pad_id = loop.model, loop.dataset, loop.pad_id
    llava = naive_llava(model, device)
    llava_trainable = [p for p in llava.parameters() if p.requires_grad]
    counts = {
        "mmit": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "naive": sum(p.numel() for p in llava_trainable),
    }
    naive = NaiveBatches(dataset.samples, plan.b4_batch, AutoImageProcessor.from_pretrained(loop.clip_dir), pad_id)
    real_tokens = loop.real_tokens
    naive_computed = sum(len(b) * max(loop.lengths[i] for i in b) for b in naive.batches)
    variants = [loop.resolve(v) for v in plan.b4_variants]

    # Same weights, same function: the first naive batch's loss through both, before any training.
    first = naive.collate(naive.batches[0])
    mmit_batch = Collator(pad_id, preprocess={k: e.preprocess for k, e in model.encoders.items()})(
        [dataset.samples[i] for i in naive.batches[0]]
    ).to(device)
    with torch.no_grad():
        model.eval()
        llava.eval()
        mmit_loss = float(labelled_loss(model, mmit_batch)) / mmit_batch.num_label_tokens
        naive_loss = float(llava(**{k: (v.to(device) if v is not None else None) for k, v in first.items()}).loss)
    llava.train()
    if any(v.feature_cache for v in variants):
        loop.features()
    optimizer = torch.optim.AdamW(llava_trainable, lr=2e-4)
    naive_epoch(llava, naive, optimizer, llava_trainable, precision, device, steps=2)  # warm-up
    stats, mmit_sides = loop.timed_sides(variants)  # after the loss check: the warm-up trains the model
    sides = {"naive": lambda: naive_epoch(llava, naive, optimizer, llava_trainable, precision, device), **mmit_sides}
    seconds = alternate(sides, plan.reps, "B4")
    batch_sizes = {v.name: loop.batch_size(v) for v in variants}

    samples = {"naive": len(dataset), **{v.name: stats[v.name]["samples"] for v in variants}}
    rate = {name: samples[name] / median(s) for name, s in seconds.items()}
    best = max((v.name for v in variants), key=rate.get)
    v, llm = plan.b4_vision, plan.b4_llm
    n_params = {
        "vision": sum(p.numel() for p in model.encoders["image"].parameters()),
        "llm": sum(p.numel() for n, p in model.base_llm.named_parameters() if "lora_" not in n),
    }
    rows = [
        [
            variant.name,
            rate[variant.name],
            median(seconds[variant.name]),
            spread(seconds[variant.name]),
            stats[variant.name]["steps"],
            stats[variant.name]["computed_tokens"],
            variant.describe(batch_sizes[variant.name]),
        ]
        for variant in variants
    ]
    rows.append(
        [
            "naive",
            rate["naive"],
            median(seconds["naive"]),
            spread(seconds["naive"]),
            len(naive.batches),
            naive_computed,
            f"batches of {plan.b4_batch} padded to their longest; full logits; encoder every step",
        ]
    )
    result = Result(
        "B4",
        "End to end: mmit vs a naive LLaVA training loop",
        compared=(
            f"{len(dataset)} synthetic image+text conversations (length-skewed: 70% short answers, 20% medium, "
            f"10% long; 85% with one image), one epoch per repetition, {precision}. Vision: random CLIP ViT "
            f"(hidden {v['hidden_size']}, {v['num_hidden_layers']} layers, {v['image_size']} px, patch "
            f"{v['patch_size']}: {model.slots['image'].count} tokens per image; {n_params['vision'] / 1e6:.1f}M "
            f"parameters), frozen. LLM: random Llama (hidden {llm['hidden_size']}, {llm['num_hidden_layers']} "
            f"layers, vocabulary {llm['vocab_size']:,}; {n_params['llm'] / 1e6:.1f}M parameters; token ids from "
            "mmit's 512-token tiny BPE tokenizer, the rest of the vocabulary still costs its share of the output "
            f"head) with LoRA r={lora_config().r} on every linear layer; MLP projector trained. **mmit**: "
            "`mmit.factory.build_model` from the Hydra config and `mmit.training.loop.train`, always with the "
            "labelled-only loss. **naive**: the same weights as transformers' `LlavaForConditionalGeneration` "
            "(`mmit.export.build_llava`) + peft LoRA, shuffled batches padded to their longest sample, `labels=` "
            "to the model (full logits), the encoder every step, AdamW"
        ),
        columns=[
            "side",
            "samples/s (median)",
            "epoch (s, median)",
            "range (s)",
            "steps/epoch",
            "computed tokens/epoch",
            "setup",
        ],
        rows=rows,
        ratio=rate[DEFAULTS] / rate["naive"],
        ratio_label=f"samples/s {DEFAULTS} / naive",
        goal=">= 2x",
        raw={
            "seconds": seconds,
            "samples_per_epoch": samples,
            "epoch_stats_mmit": stats,
            "batch_sizes": batch_sizes,
            "naive_computed_tokens": naive_computed,
            "real_tokens": real_tokens,
            "trainable_parameters": counts,
            "first_batch_loss": {"mmit": mmit_loss, "naive": naive_loss},
            "variants": [asdict(v) for v in variants],
            "feature_cache_seconds": loop.cache_seconds,
            "parameters": n_params,
        },
    )
    result.met = result.ratio >= 2.0
    result.notes += [
        f"{name} / naive: {rate[name] / rate['naive']:.2f}x." for name in rate if name not in (DEFAULTS, "naive")
    ]
    best_ratio = rate[best] / rate["naive"]
    result.notes.append(
        f"The best mmit side ({best}) / naive: {best_ratio:.2f}x; goal >= 2.5x: "
        f"{'met' if best_ratio >= 2.5 else '**not met**'}."
    )
    result.notes += [
        f"Real tokens per epoch: {real_tokens:,}; computed (with padding): naive {naive_computed / real_tokens:.2f}x, "
        + ", ".join(f"{n} {s['computed_tokens'] / real_tokens:.2f}x" for n, s in stats.items())
        + ".",
        f"Same model and data: trainable parameters mmit {counts['mmit']:,}, naive {counts['naive']:,}; loss of the "
        f"first naive batch before training: mmit {mmit_loss:.5f}, naive {naive_loss:.5f}.",
        "mmit's time is the training loop's own `train_seconds`; it includes the one checkpoint the loop writes "
        "at its last step (the naive loop writes none).",
    ]
    if loop.cache_seconds:
        result.notes.append(
            f"The feature cache was built once before timing, in {loop.cache_seconds:.1f} s (not in the epochs)."
        )
    return result
