"""Performance benchmarks of issue #7 (B1-B6): every figure a ratio of two variants measured side by side.

    python tools/bench_perf.py                        # all of them -> BENCHMARKS.md + docs/bench/perf.json
    python tools/bench_perf.py --only B3,B5 --quick   # a fast smoke run (tiny sizes, one repetition)
    python tools/bench_perf.py --device cuda --out /tmp/B.md

The machine is usually shared, so no absolute time is a result here. Within one run the two
variants of a benchmark alternate (A B, B A, ...), each ratio is taken from medians, and the
machine's matmul peak is measured next to the training step it is compared with. Peak memory is
measured in a fresh child process per variant (this script re-runs itself with ``--child``).

Each benchmark is a function ``bench_bN(plan: Plan) -> Result`` listed in ``BENCHMARKS``; a failing
one is reported as failed and the others still run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import itertools
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model here is built from a config
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads that spin while they wait made the same training step take 12 to 70 s instead of
# 3 to 8 s on a 2-core machine shared with other jobs; sleeping waiters keep timings steady. Read
# by the OpenMP runtime when torch loads it, so it must be set before the import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "BENCHMARKS.md"
DEFAULT_JSON = REPO / "docs" / "bench" / "perf.json"
LABEL_FRACTION = 0.25  # labelled (assistant) share of the tokens in the text benchmarks


def llama(hidden: int, layers: int, heads: int, kv_heads: int, mlp: int, vocab: int, positions: int, **extra) -> dict:
    """A LlamaConfig's sizes (head_dim 64 unless given; tied embeddings)."""
    return dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=extra.pop("head_dim", 64),
        intermediate_size=mlp,
        vocab_size=vocab,
        max_position_embeddings=positions,
        tie_word_embeddings=True,
        **extra,
    )


# SmolLM2-135M-Instruct (mmit's llm=smollm2_135m) as a Llama config; weights are random here.
SMOLLM2_135M = llama(576, 30, 9, 3, mlp=1536, vocab=49152, positions=8192, rms_norm_eps=1e-5)
PUBLISHED_DTYPE = torch.bfloat16  # the dtype SmolLM2 (and most hub LLMs) is published in: config.json's "dtype"
# Qwen2.5-0.5B's shape as a Llama (no QKV bias): the 0.5B-class LLM of the GPU runs.
LLM_05B_CLASS = llama(896, 24, 14, 2, mlp=4864, vocab=151936, positions=8192)
TINY_LLM = llama(64, 2, 4, 2, mlp=128, vocab=2048, positions=1024, head_dim=16)
# B4 on a 2-core CPU: a small Llama (6.3M parameters) whose output head has SmolLM2-135M's
# share of the weights (25% vs 27%), and a ViT-S/32-class tower of half depth (49 patches at
# 224 px). On GPUs: SmolLM2-135M and ViT-B/16.
B4_LLM_CPU = llama(256, 6, 4, 2, mlp=768, vocab=6144, positions=2048)
VIT_S32_HALF = dict(
    image_size=224, patch_size=32, hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6
)
VIT_B16 = dict(
    image_size=224, patch_size=16, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12
)
VIT_TINY = dict(
    image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
)


# --- records ---------------------------------------------------------------------------------


@dataclass
class Result:
    """One benchmark: what was compared, the side-by-side measurements, the ratio and the goal."""

    id: str
    title: str
    compared: str = ""
    status: str = "ok"  # ok | not implemented | skipped | failed
    columns: list[str] = field(default_factory=list)
    rows: list[list] = field(default_factory=list)  # one per variant, in the order of ``columns``
    ratio: float | None = None
    ratio_label: str = ""
    goal: str = ""
    met: bool | None = None  # None: no numeric goal, or nothing measured
    notes: list[str] = field(default_factory=list)
    raw: dict = field(default_factory=dict)
    seconds: float = 0.0


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


@dataclass
class MmitFastPaths:
    """One configuration of the mmit side of B4 (the naive side uses none of these).

    The labelled-only loss is not optional: mmit's training loop always applies the output head
    at labelled positions only (mmit/training/loss.py).
    """

    name: str
    group_by_length: int = 16  # batches per length-sorted window (trainer.group_by_length), 0 = off
    pack_length: int = 0  # packed rows of this many tokens (trainer.pack_length); 0 = off, -1 = fit the data
    feature_cache: bool = False  # frozen-encoder outputs computed once (feature_cache=DIR)
    prefetch: int | None = None  # batches collated ahead (trainer.prefetch); None = mmit's default

    def describe(self, batch_size: int) -> str:
        parts = [
            f"{batch_size} rows of {self.pack_length} packed tokens" if self.pack_length else f"{batch_size} a batch"
        ]
        if not self.pack_length:
            parts.append(f"group_by_length={self.group_by_length}" if self.group_by_length else "no length grouping")
        parts.append("cached encoder features" if self.feature_cache else "encoder every step")
        if self.prefetch is not None:
            parts.append(f"prefetch={self.prefetch}")
        return "; ".join(parts)


def make_plan(args: argparse.Namespace, tmp: Path) -> Plan:
    cuda = args.device == "cuda"
    # B4's mmit sides: mmit's defaults, and with packing and the feature cache (unless turned off).
    variants = [MmitFastPaths("mmit", args.b4_group_by_length, prefetch=args.b4_prefetch)]
    extra = (["packing"] if args.b4_pack_length else []) + ([] if args.b4_no_feature_cache else ["feature cache"])
    if extra:
        variants.append(
            MmitFastPaths(
                " + ".join(["mmit", *extra]),
                args.b4_group_by_length,
                args.b4_pack_length,
                not args.b4_no_feature_cache,
                args.b4_prefetch,
            )
        )
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
        b4_llm=SMOLLM2_135M if cuda else B4_LLM_CPU,
        b4_vision=VIT_B16 if cuda else VIT_S32_HALF,
        b4_samples=512 if cuda else 48,
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


# --- measuring -------------------------------------------------------------------------------


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(variants: dict[str, Callable[[], object]], reps: int, device: str, warmup: int = 1) -> dict:
    """Seconds per call of each variant, alternating the order every repetition (A B, B A, ...)."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    names, seconds = list(variants), {name: [] for name in variants}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            seconds[name].append(timed(variants[name], device))
    return seconds


def _proc_status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB -> MiB
    return float("nan")


def rss_mib() -> float:
    return _proc_status("VmRSS")


def reset_peak_rss() -> bool:
    """Set this process's RSS high-water mark to its current RSS (Linux clear_refs); False if not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    return _proc_status("VmHWM")


def matmul_rate(dtype: torch.dtype, device: str, n: int, target_s: float) -> tuple[float, float]:
    """(FLOP/s, seconds of one call) of an n x n x n matmul: best of three timings of enough calls
    to last ``target_s``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    once = timed(lambda: a @ b, device)  # also the warm-up
    calls = max(1, min(1000, int(target_s / max(once, 1e-6))))

    def run():
        for _ in range(calls):
            a @ b

    best = min(timed(run, device) for _ in range(3))
    return 2 * n**3 * calls / best, best / calls


def matmul_peak(dtype: torch.dtype, device: str, sizes: list[int] | None, quick: bool) -> tuple[float, int]:
    """(FLOP/s, n) of the fastest square matmul size; ``sizes`` None: double n (from 256) until one
    call takes ``target`` seconds (a slow dtype, such as bf16 without AMX, stops early)."""
    target = 0.02 if quick else (0.05 if device == "cuda" else 0.2)
    if sizes is not None:
        rates = {n: matmul_rate(dtype, device, n, target)[0] for n in sizes}
    else:
        rates, n, cap = {}, 256, 512 if quick else (16384 if device == "cuda" else 4096)
        while n <= cap:
            rates[n], one_call = matmul_rate(dtype, device, n, target)
            if one_call > target:
                break
            n *= 2
    best = max(rates, key=rates.get)
    return rates[best], best


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def share(part: float, whole: float) -> float:
    return part / whole if whole else float("nan")


def spread(values: list[float]) -> str:
    """The fastest and slowest repetition: how noisy the machine was."""
    return f"{min(values):.2f}-{max(values):.2f}" if values else "-"


# --- models and batches, through mmit's own code ---------------------------------------------


def build_llm(shape: dict, seed: int = 0):
    """A random-weight Llama with the given shape (sdpa attention, as mmit loads LLMs)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(LlamaConfig(**shape), attn_implementation="sdpa")


def lora_config():
    """The peft config of ``peft=lora`` (conf/peft/lora.yaml), instantiated as mmit's factory does."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from mmit.paths import CONF_DIR

    return instantiate(OmegaConf.load(CONF_DIR / "peft" / "lora.yaml").config, _convert_="all")


def text_model(shape: dict, tuning: str, device: str, frozen_dtype: str = "auto"):
    """mmit's text-only model (MultimodalLM without encoders) with the LLM tuned as ``peft=<tuning>``,
    its frozen weights kept as ``frozen_dtype=auto`` keeps a checkpoint published in bf16 (SmolLM2 is)."""
    from mmit.models.multimodal_lm import MultimodalLM
    from mmit.models.tuning import apply_tuning, narrow_frozen, resolve_frozen_dtype

    llm = apply_tuning(build_llm(shape), tuning, lora_config() if tuning == "lora" else None, name="llm")
    dtype = resolve_frozen_dtype(frozen_dtype, PUBLISHED_DTYPE)
    if dtype is not None:
        narrow_frozen(llm, dtype)
    return MultimodalLM(llm).to(device).train()


def text_batch(batch: int, seq: int, vocab: int, device: str, seed: int = 0):
    """Full rows of random tokens; the last quarter of each row is labelled (the answer)."""
    from mmit.data.collate import Batch
    from mmit.data.tokenize import IGNORE_INDEX

    ids = torch.randint(vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))
    labels = torch.full_like(ids, IGNORE_INDEX)
    answer = max(2, round(seq * LABEL_FRACTION))
    labels[:, seq - answer :] = ids[:, seq - answer :]
    return Batch(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, ids=[]).to(device)


def labelled_loss(model, batch) -> torch.Tensor:
    """mmit's training loss: the output head at labelled positions only."""
    from mmit.training.loss import next_token_loss_sum

    return next_token_loss_sum(model(batch), batch.labels, model.output_head)


def full_logits_loss(model, batch) -> torch.Tensor:
    """The usual way: logits at every position, then cross-entropy that ignores unlabelled ones."""
    from mmit.data.tokenize import IGNORE_INDEX

    logits = model.logits(batch)[:, :-1]
    targets = batch.labels[:, 1:]
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )


LOSSES = {"labelled": labelled_loss, "full": full_logits_loss}


def precision_for(device: str) -> str:
    """What ``trainer.precision=auto`` picks on this machine (bf16 on CUDA and AMX CPUs, else fp32)."""
    from mmit.training.loop import resolve_precision

    return resolve_precision("auto", torch.device(device))


def training_step(model, batch, loss_name: str, precision: str, device: str, optimizer=None) -> float:
    """Forward and backward (and an AdamW update when given one), as mmit's loop does them."""
    from mmit.training.distributed import clip_grad_norm
    from mmit.training.loop import autocast

    with autocast(torch.device(device), precision):
        loss = LOSSES[loss_name](model, batch) / max(batch.num_label_tokens, 1)
    loss.backward()
    if optimizer is not None:
        clip_grad_norm(model, 1.0)
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return float(loss.detach())


def make_optimizer(model):
    from mmit.training.loop import TrainerConfig, param_groups

    return torch.optim.AdamW(param_groups(model, TrainerConfig()), weight_decay=0.0)


# --- child processes (peak memory per variant) -----------------------------------------------


def child_train_memory(
    shape: dict,
    tuning: str,
    loss: str,
    batch: int,
    seq: int,
    steps: int,
    optimizer: bool,
    device: str,
    checkpointing: bool = False,
    frozen_dtype: str = "auto",
) -> dict:
    """Build a model, run ``steps`` training steps; memory as seen by this fresh process."""
    # Everything the steps need is imported before the baseline RSS is read.
    import peft  # noqa: F401
    from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: F401

    from mmit.models.multimodal_lm import MultimodalLM  # noqa: F401
    from mmit.training.loop import autocast  # noqa: F401

    lora_config()
    rss_imports = rss_mib()
    model = text_model(shape, tuning, device, frozen_dtype)
    if checkpointing:  # as mmit's loop does for trainer.gradient_checkpointing=true
        model.base_llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    data = text_batch(batch, seq, shape["vocab_size"], device)
    opt = make_optimizer(model) if optimizer else None
    precision = precision_for(device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    training_step(model, data, loss, precision, device, opt)  # warm-up: lazy buffers, AdamW state
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    allocated_before = torch.cuda.memory_allocated() / 2**20 if device == "cuda" else None
    hwm_reset = reset_peak_rss()
    rss_before = rss_mib()  # after the reset: the high-water mark from here on is at least this
    seconds = [timed(lambda: training_step(model, data, loss, precision, device, opt), device) for _ in range(steps)]
    out = {
        "rss_after_imports_mib": rss_imports,
        "rss_before_steps_mib": rss_before,
        "peak_rss_mib": peak_rss_mib() if hwm_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_is_steps_only": hwm_reset,
        "step_seconds": seconds,
        "trainable_parameters": trainable,
        "weights_mib": weights,
        "precision": precision,
    }
    if device == "cuda":
        out["cuda_allocated_before_steps_mib"] = allocated_before
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


CHILD_TASKS: dict[str, Callable[..., dict]] = {"train_memory": child_train_memory}


def start_children(tasks: list[dict], tmp: Path) -> list:
    """Start each task in its own fresh process, all at once (memory does not depend on the others)."""
    started = []
    for i, kwargs in enumerate(tasks):
        err = open(tmp / f"child-{time.monotonic_ns()}-{i}.err", "w+")  # noqa: SIM115 (closed in finish_children)
        command = [sys.executable, str(Path(__file__).resolve()), "--threads", str(torch.get_num_threads())]
        command += ["--child", "train_memory", json.dumps(kwargs)]
        # Every allocation of 64 KiB or more gets its own mapping, returned to the system when freed:
        # RSS then follows the live tensors instead of what the C allocator keeps for reuse.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        started.append((subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, env=env), err))
    return started


def finish_children(started: list) -> list[dict]:
    """Each child's JSON answer; a failed child raises with the end of its stderr."""
    answers = []
    for proc, err in started:
        out, _ = proc.communicate()
        err.seek(0)
        tail = err.read()[-3000:]
        err.close()
        if proc.returncode != 0:
            raise RuntimeError(f"a benchmark child process failed (exit {proc.returncode}):\n{tail}")
        answers.append(json.loads(out.strip().splitlines()[-1]))
    return answers


def memory_tasks(plan: Plan, bench_id: str) -> list[dict]:
    """The child processes a benchmark measures memory in (B3: one per loss, B6: one per tuning)."""
    if bench_id == "B3":
        batch, seq = plan.b3_tokens
        common = dict(shape=plan.text_shape, tuning="lora", batch=batch, seq=seq, steps=1, optimizer=False)
        return [dict(common, loss=name, device=plan.device) for name in LOSSES]
    if bench_id == "B6":
        batch, seq = plan.b6_tokens
        common = dict(shape=plan.text_shape, loss="labelled", batch=batch, seq=seq, steps=2, optimizer=True)
        # mmit's defaults, then both again with gradient checkpointing, and LoRA with its frozen
        # weights in fp32 (neither in the smoke run).
        tasks = [
            dict(common, tuning=tuning, device=plan.device, checkpointing=checkpointing)
            for checkpointing in ((False,) if plan.quick else (False, True))
            for tuning in ("lora", "full")
        ]
        if not plan.quick:
            tasks.append(dict(common, tuning="lora", device=plan.device, checkpointing=False, frozen_dtype="float32"))
        return tasks
    return []


def memory_children(plan: Plan, bench_id: str, at_once: int = 2) -> list[dict]:
    """Answers of the benchmark's memory children: started early by ``--quick`` (see main), or now,
    ``at_once`` at a time (each holds a model, its training state and activations)."""
    if bench_id in plan.started:
        return finish_children(plan.started.pop(bench_id))
    tasks = memory_tasks(plan, bench_id)
    answers = []
    for k in range(0, len(tasks), at_once):
        answers += finish_children(start_children(tasks[k : k + at_once], plan.tmp))
    return answers


def memory_mib(answer: dict, measure: str) -> float:
    """``step``: what the training steps added above the built model (CPU: RSS; CUDA: allocated).
    ``training``: everything the model and its training hold (CPU: peak RSS less the RSS after
    imports; CUDA: max allocated). ``process``: the process's peak RSS."""
    if "cuda_max_allocated_mib" in answer:
        peak = answer["cuda_max_allocated_mib"]
        return {"step": peak - answer["cuda_allocated_before_steps_mib"], "training": peak}.get(
            measure, answer["peak_rss_mib"]
        )
    if measure == "step":
        return answer["peak_rss_mib"] - answer["rss_before_steps_mib"]
    if measure == "training":
        return answer["peak_rss_mib"] - answer["rss_after_imports_mib"]
    return answer["peak_rss_mib"]


# --- B3: labelled-only loss vs full logits ----------------------------------------------------


def bench_b3(plan: Plan) -> Result:
    batch, seq = plan.b3_tokens
    shape, device = plan.text_shape, plan.device
    precision = precision_for(device)
    model = text_model(shape, "lora", device)
    data = text_batch(batch, seq, shape["vocab_size"], device)
    # Warm-up, and a check of the fast path: no update is made, so both compute the same loss.
    values = {name: training_step(model, data, name, precision, device) for name in LOSSES}
    seconds = interleaved(  # steps of a few seconds: two more repetitions than the other benchmarks
        {name: (lambda name=name: training_step(model, data, name, precision, device)) for name in LOSSES},
        plan.reps + 2,
        device,
        warmup=0,
    )
    mem = dict(zip(LOSSES, memory_children(plan, "B3")))
    t = {name: median(s) for name, s in seconds.items()}
    step_mem = {name: memory_mib(mem[name], "step") for name in LOSSES}
    train_mem = {name: memory_mib(mem[name], "training") for name in LOSSES}
    answer = max(2, round(seq * LABEL_FRACTION))
    result = Result(
        "B3",
        "Labelled-only loss vs full logits",
        compared=(
            f"{plan.text_shape_name}, LoRA (peft=lora), forward+backward of {batch} x {seq} tokens with the "
            f"last {answer} of each row labelled ({LABEL_FRACTION:.0%}), {precision}: mmit's "
            "`next_token_loss_sum` (output head at labelled positions only) vs `model.logits(batch)` and "
            "cross-entropy over every position"
        ),
        columns=[
            "variant",
            "step (s, median)",
            "range (s)",
            "steps timed",
            "memory above the model (MiB)",
            "training memory (MiB)",
        ],
        rows=[
            [name, t[name], spread(seconds[name]), len(seconds[name]), step_mem[name], train_mem[name]]
            for name in LOSSES
        ],
        ratio=t["labelled"] / t["full"],
        ratio_label="step time labelled / full",
        goal="none set (reported: step time and peak memory)",
        met=None,
        raw={"seconds": seconds, "loss_values": values, "memory_children": mem, "precision": precision},
    )
    result.notes += [
        f"Memory ratio labelled / full: {share(step_mem['labelled'], step_mem['full']):.2f} of the memory the step "
        f"adds above the built model, {share(train_mem['labelled'], train_mem['full']):.2f} of all training memory "
        f"({_memory_words(device)}).",
        f"Same loss either way (checks the fast path): {values['labelled']:.6f} vs {values['full']:.6f} "
        f"(mean over {batch * (answer - 1)} next-token targets).",
        f"The full-logits tensor alone is {batch} x {seq} x {shape['vocab_size']:,} fp32 = "
        f"{batch * seq * shape['vocab_size'] * 4 / 2**20:,.0f} MiB; cross-entropy keeps another of that size "
        "for backward.",
    ]
    return result


def _memory_words(device: str) -> str:
    if device == "cuda":
        return "torch.cuda.max_memory_allocated in a fresh process per variant"
    return (
        "CPU: RSS high-water mark of a measured step after a warm-up step, in a fresh process per variant "
        "whose C allocator returns freed tensors at once (MALLOC_MMAP_THRESHOLD_=65536); 'training memory' "
        "is that peak less the RSS after importing torch and mmit"
    )


# --- B4: mmit vs a naive LLaVA training loop --------------------------------------------------

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


def save_b4_models(plan: Plan) -> tuple[Path, Path]:
    """A random CLIP vision tower (+ image processor) and a random Llama (+ mmit's tiny BPE tokenizer)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from mmit.models.llm import build_tiny_tokenizer

    clip_dir, llm_dir = plan.tmp / "b4-vision", plan.tmp / "b4-llm"
    side = plan.b4_vision["image_size"]
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(**plan.b4_vision)).save_pretrained(clip_dir)
    CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}).save_pretrained(
        clip_dir
    )
    tokenizer = build_tiny_tokenizer(512)
    config = LlamaConfig(
        **plan.b4_llm,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(1)
    LlamaForCausalLM(config).save_pretrained(llm_dir)
    tokenizer.save_pretrained(llm_dir)
    return clip_dir, llm_dir


def build_mmit_b4(clip_dir: Path, llm_dir: Path):
    """The model exactly as ``python -m mmit.train`` builds it: Hydra config -> mmit.factory.build_model."""
    from hydra import compose, initialize_config_dir

    from mmit.factory import build_model
    from mmit.paths import CONF_DIR

    overrides = [
        "llm=hf",
        f"llm.name_or_path={llm_dir}",
        "vision_encoder=hf_clip",
        f"vision_encoder.name_or_path={clip_dir}",
        "projector=mlp",
        "peft=lora",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    return build_model(cfg), cfg


def naive_llava(mmit_model, device: str):
    """The same weights as a transformers ``LlavaForConditionalGeneration`` (mmit.export.build_llava),
    LoRA on its language model as peft=lora puts it on mmit's LLM, the projector trained."""
    from peft import LoraConfig, get_peft_model

    from mmit.export import build_llava

    llava, _ = build_llava(mmit_model)
    llava.requires_grad_(False)
    mine = lora_config()
    targets = [n for n, m in llava.named_modules() if isinstance(m, nn.Linear) and ".language_model." in n]
    config = LoraConfig(
        r=mine.r, lora_alpha=mine.lora_alpha, lora_dropout=mine.lora_dropout, target_modules=targets, bias="none"
    )
    llava = get_peft_model(llava, config)
    for p in llava.base_model.model.model.multi_modal_projector.parameters():
        p.requires_grad_(True)
    return llava.to(device).train()


class NaiveBatches:
    """Seeded shuffle, fixed batches, right-padded to each batch's longest sample; images decoded and
    preprocessed per batch by the vision tower's own image processor (as a plain LLaVA script does)."""

    def __init__(self, samples: list, batch_size: int, processor, pad_id: int, seed: int = 0):
        from mmit.data.tokenize import IGNORE_INDEX

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
    from mmit.training.loop import autocast

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
        if variant.pack_length >= 0:
            return variant
        return dataclasses.replace(variant, pack_length=-(-max(self.lengths) // 64) * 64)

    def batch_size(self, variant: MmitFastPaths) -> int:
        """Padded: ``b4_batch`` samples. Packed: as many rows as hold the real tokens of such a batch."""
        if not variant.pack_length:
            return self.plan.b4_batch
        rows = self.plan.b4_batch * self.real_tokens / len(self.lengths) / variant.pack_length
        return max(1, round(rows))

    def epoch_stats(self, variant: MmitFastPaths) -> dict:
        """Steps, samples, computed and real tokens of the first epoch of mmit's loader (seed 0, media undecoded)."""
        from mmit.data.collate import Collator

        stream = self.dataset.batches(
            self.batch_size(variant),
            Collator(self.pad_id),
            0,
            variant.group_by_length,
            pack_length=variant.pack_length,
        )
        steps = samples = computed = real = 0
        while samples < len(self.dataset):
            batch = next(stream)
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
        from mmit.training.loop import train

        steps = steps or self.epoch_stats(variant)["steps"]
        config = mmit_trainer_config(self.plan, variant, steps, self.batch_size(variant), self.precision)
        extra = {"features": self.features()} if variant.feature_cache else {}
        run_dir = self.plan.tmp / f"run-{next(self._runs)}"
        with contextlib.redirect_stderr(io.StringIO()):  # the loop's progress bar
            summary = train(self.model, self.tokenizer, self.dataset, {}, config, run_dir, **extra)
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
        from mmit.data.tokenize import TokenizedDataset, Tokenizer

        clip_dir, llm_dir = save_b4_models(plan)
        built, cfg = build_mmit_b4(clip_dir, llm_dir)
        convs = synthetic_conversations(plan.b4_samples, plan.b4_vision["image_size"] + 32)
        slots = list(built.model.slots.values())
        dataset = TokenizedDataset(convs, Tokenizer(built.tokenizer, 4096, "raise", "raise", slots), name="bench")
        plan.loop = LoopSetup(plan, cfg, built.model, built.tokenizer, dataset, clip_dir, precision_for(plan.device))
    return plan.loop


def loop_reps(plan: Plan, bench_id: str, sides: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Seconds of each side per repetition, alternating the order (A B, B A, ...)."""
    seconds = {name: [] for name in sides}
    for rep in range(plan.reps):
        for name in list(sides) if rep % 2 == 0 else list(sides)[::-1]:
            seconds[name].append(sides[name]())
        print(f"  {bench_id} rep", rep + 1, ", ".join(f"{n} {s[-1]:.1f} s" for n, s in seconds.items()), flush=True)
    return seconds


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
    seconds = loop_reps(plan, "B4", sides)
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
        ratio=rate[best] / rate["naive"],
        ratio_label=f"samples/s {best} / naive",
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
        f"{name} / naive: {rate[name] / rate['naive']:.2f}x." for name in rate if name not in (best, "naive")
    ]
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
    packed = loop.resolve(MmitFastPaths("packed", pack_length=-1, feature_cache=True))
    variants = [padded, packed]
    stats, sides = loop.timed_sides(variants)
    seconds = loop_reps(plan, "B1", sides)
    useful = {v.name: stats[v.name]["real_tokens"] / median(seconds[v.name]) for v in variants}
    ideal = stats["padded"]["computed_tokens"] / stats["padded"]["real_tokens"]
    gain = useful["packed"] / useful["padded"]
    result = share_of_ideal(
        Result(
            "B1",
            "Packed vs padded batches: useful tokens/s",
            compared=(
                f"{loop_words(plan, loop)}. **padded**: batches of {plan.b4_batch} samples in shuffled order, each "
                f"padded to its longest; **packed**: `trainer.pack_length={packed.pack_length}` (the longest "
                "sample, rounded up), rows filled best-fit, per-sample positions and block-diagonal attention. "
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
    from mmit.training.loop import autocast

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
    seconds = loop_reps(plan, "B2", {**sides, "encoder alone": lambda: encoder_epoch_seconds(loop)})
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


# --- B5: model FLOP/s of a LoRA step vs the machine's matmul peak -----------------------------


def lora_step_flops(model, batch: int, seq: int, labelled: int) -> dict:
    """Model FLOPs of one LoRA training step (forward + backward), counted per matmul.

    - frozen linear weights of the decoder: 2 (forward) + 2 (gradient w.r.t. their input) per
      weight and token; no weight gradient. (Layer 0's q/k/v need no input gradient either,
      since the embeddings are frozen: a <1% over-count.)
    - trained (LoRA) weights: 2 + 2 + 2 (forward, input gradient, weight gradient).
    - attention scores and weighted values: 4 x seq x d_attn per token and layer in the forward,
      halved for the causal mask, x3 for forward + backward.
    - the output head (tied, frozen) only at the labelled positions: 2 + 2 per weight.
    Norms, activations, softmax and the optimizer are not counted.
    """
    base = model.base_llm
    head = model.output_head
    frozen = trained = 0
    for module in base.get_decoder().modules():
        if isinstance(module, nn.Linear):
            if module.weight.requires_grad:
                trained += module.weight.numel()
            else:
                frozen += module.weight.numel()
    config = base.config
    d_attn = config.num_attention_heads * getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    tokens = batch * seq
    per_token = 4 * frozen + 6 * trained + 6 * config.num_hidden_layers * seq * d_attn
    head_flops = (6 if head.weight.requires_grad else 4) * head.weight.numel() * labelled
    return {
        "frozen_linear_params": frozen,
        "lora_params": trained,
        "head_params": head.weight.numel(),
        "tokens": tokens,
        "labelled_tokens": labelled,
        "flops": tokens * per_token + head_flops,
    }


def lora_mfu(plan: Plan, shape: dict, variants: dict[str, tuple[str, str]], sizes: dict) -> dict:
    """Per variant (label -> (precision, frozen_dtype)): step seconds, achieved FLOP/s and the fp32 / bf16
    matmul peaks of each repetition. Variants alternate within every repetition."""
    device = plan.device
    batch, seq = plan.b5_tokens
    data = text_batch(batch, seq, shape["vocab_size"], device)
    models = {frozen: text_model(shape, "lora", device, frozen) for _, frozen in variants.values()}
    optimizers = {frozen: make_optimizer(model) for frozen, model in models.items()}
    count = lora_step_flops(next(iter(models.values())), batch, seq, data.num_label_tokens)

    def step(label: str) -> float:
        precision, frozen = variants[label]
        return training_step(models[frozen], data, "labelled", precision, device, optimizers[frozen])

    labels = list(variants)
    for label in labels:
        step(label)  # warm-up
    peaks: dict[str, list[float]] = {"fp32": [], "bf16": []}
    seconds: dict[str, list[float]] = {label: [] for label in labels}
    for rep in range(plan.reps):
        # The peaks are measured next to the steps they are compared with, every repetition.
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            rate, sizes[name] = matmul_peak(dtype, device, sizes[name] and [sizes[name]], plan.quick)
            peaks[name].append(rate)
        for label in labels if rep % 2 == 0 else labels[::-1]:
            seconds[label].append(timed(lambda label=label: step(label), device))
    out = {}
    for label in labels:
        achieved = [count["flops"] / s for s in seconds[label]]
        out[label] = {
            "step_seconds": seconds[label],
            "tokens_per_second": batch * seq / median(seconds[label]),
            "achieved_flops": achieved,
            "peak_fp32": peaks["fp32"],
            "peak_bf16": peaks["bf16"],
            "matmul_n": dict(sizes),
            "flop_count": count,
            # MFU of each repetition against the peaks measured beside it, then the median.
            "mfu_vs_fp32": median([a / p for a, p in zip(achieved, peaks["fp32"])]),
            "mfu_vs_bf16": median([a / p for a, p in zip(achieved, peaks["bf16"])]),
            "mfu_vs_machine_peak": median([a / max(f, b) for a, f, b in zip(achieved, peaks["fp32"], peaks["bf16"])]),
        }
    return out


WIDE = "frozen weights fp32"  # B5's comparison variant: frozen_dtype=float32 instead of mmit's auto


def bench_b5(plan: Plan) -> Result:
    device = plan.device
    batch, seq = plan.b5_tokens
    precisions = ["fp32"] + (["bf16"] if precision_for(device) == "bf16" else [])
    shapes = {plan.text_shape_name: plan.text_shape, **plan.extra_b5_shapes}
    sizes: dict[str, int | None] = {"fp32": None, "bf16": None}  # matmul sizes, found in the first repetition
    rows, raw, notes = [], {}, []
    for name, shape in shapes.items():
        variants = {p: (p, "auto") for p in precisions}
        if name == plan.text_shape_name and precisions == ["fp32"]:  # frozen bf16 weights widened for fp32 matmuls
            variants[f"fp32, {WIDE}"] = ("fp32", "float32")
        for label, m in lora_mfu(plan, shape, variants, sizes).items():
            raw[f"{name} {label}"] = m
            rows.append(
                [
                    f"{name.split(' (')[0]}, {label}",
                    m["tokens_per_second"],
                    median(m["achieved_flops"]) / 1e9,
                    median(m["peak_fp32"]) / 1e9,
                    median(m["peak_bf16"]) / 1e9,
                    100 * m["mfu_vs_fp32"],
                    100 * m["mfu_vs_bf16"],
                ]
            )
    mfu_best = max(raw[f"{plan.text_shape_name} {p}"]["mfu_vs_machine_peak"] for p in precisions)
    main_fp32 = raw[f"{plan.text_shape_name} fp32"]
    fp32_peak, bf16_peak = median(main_fp32["peak_fp32"]), median(main_fp32["peak_bf16"])
    first = main_fp32["flop_count"]
    result = Result(
        "B5",
        "Model FLOP/s of a LoRA training step vs the measured matmul peak",
        compared=(
            f"{plan.text_shape_name}, LoRA (peft=lora: r=16, every linear layer), one training step (forward, "
            f"backward, AdamW) on {batch} x {seq} tokens, {LABEL_FRACTION:.0%} labelled, mmit's loss; vs the "
            "fastest large square matmul of this machine, measured in the same repetition"
        ),
        columns=[
            "model, precision",
            "tokens/s",
            "achieved GFLOP/s",
            "fp32 matmul peak (GFLOP/s)",
            "bf16 matmul peak (GFLOP/s)",
            "MFU vs fp32 peak (%)",
            "MFU vs bf16 peak (%)",
        ],
        rows=rows,
        ratio=mfu_best,
        ratio_label="MFU vs the machine's fastest matmul peak",
        goal=">= 40%",
        met=mfu_best >= 0.40,
        raw=raw,
    )
    notes.append(
        f"FLOPs per step: {first['flops'] / 1e9:,.1f} G = tokens x (4 x {first['frozen_linear_params'] / 1e6:.1f}M "
        f"frozen linear weights + 6 x {first['lora_params'] / 1e6:.2f}M LoRA weights + causal attention) + "
        f"{first['labelled_tokens']} labelled tokens x 4 x {first['head_params'] / 1e6:.1f}M head weights "
        "(see `lora_step_flops`: frozen weights get no weight gradient, but backward still multiplies by them)."
    )
    if device == "cpu" and "bf16" not in precisions:
        notes.append(
            f"This CPU has no AMX or AVX512-BF16: bf16 matmuls ran at {bf16_peak / 1e9:.2f} GFLOP/s, "
            f"{fp32_peak / max(bf16_peak, 1):.0f}x slower than fp32. mmit's `trainer.precision=auto` therefore "
            "trains in fp32 here, the bf16 step was not run (it would take minutes), and the "
            "'MFU vs bf16 peak' column is far above 100%: the goal is judged against the fp32 peak, the "
            "faster one."
        )
    wide = raw.get(f"{plan.text_shape_name} fp32, {WIDE}")
    if wide:
        paired = median([a / b for a, b in zip(main_fp32["step_seconds"], wide["step_seconds"])])
        notes.append(
            f"The `{WIDE}` row keeps the frozen weights as fp32 (`frozen_dtype=float32`); mmit's default keeps "
            "them in bf16, as SmolLM2 is published, and widens each for its fp32 matmul. Step time bf16 / fp32 "
            f"frozen weights, paired per repetition: {paired:.3f} (the price of B6's memory saving on a CPU "
            "without fast bf16; under bf16 autocast the matmuls read the bf16 weights as they are)."
        )
    result.notes = notes
    return result


# --- B6: peak memory of LoRA vs full fine-tuning ----------------------------------------------


def bench_b6(plan: Plan) -> Result:
    batch, seq = plan.b6_tokens
    device = plan.device
    answers = {}
    for task, answer in zip(memory_tasks(plan, "B6"), memory_children(plan, "B6")):
        variant = task["tuning"] + (", frozen weights fp32" if task.get("frozen_dtype") == "float32" else "")
        answers[variant + (", gradient checkpointing" if task["checkpointing"] else "")] = answer
    training = {v: memory_mib(a, "training") for v, a in answers.items()}
    process = {v: memory_mib(a, "process") for v, a in answers.items()}
    result = Result(
        "B6",
        "Peak memory: LoRA vs full fine-tuning",
        compared=(
            f"{plan.text_shape_name}, AdamW training steps on {batch} x {seq} tokens ({LABEL_FRACTION:.0%} "
            f"labelled, mmit's loss, {answers['lora']['precision']}; a warm-up step, then two measured), each variant "
            "in a fresh process: `peft=lora` (conf/peft/lora.yaml) vs `peft=full`, with mmit's defaults "
            "(`frozen_dtype=auto`: frozen weights stay in bf16, the dtype SmolLM2 is published in; trainable "
            "weights, gradients and AdamW state in fp32)"
            + (
                ""
                if plan.quick
                else "; again with `trainer.gradient_checkpointing=true`, and LoRA with `frozen_dtype=float32`"
            )
        ),
        columns=["variant", "trainable parameters", "training memory (MiB)", "process peak RSS (MiB)"],
        rows=[[v, a["trainable_parameters"], training[v], process[v]] for v, a in answers.items()],
        ratio=training["lora"] / training["full"],
        ratio_label="training memory LoRA / full (mmit's defaults)",
        goal="<= 0.5x",
        raw=answers,
    )
    result.met = result.ratio <= 0.5
    checkpointed = "lora, gradient checkpointing"
    if checkpointed in training:
        ratio = training[checkpointed] / training["full, gradient checkpointing"]
        result.notes.append(
            f"With gradient checkpointing on both sides: LoRA / full = {ratio:.2f} "
            f"({'within' if ratio <= 0.5 else 'above'} the goal)."
        )
    wide = "lora, frozen weights fp32"
    if wide in training:
        ratio = training[wide] / training["full"]
        result.notes.append(
            f"LoRA with its frozen weights in fp32 (`frozen_dtype=float32`, as mmit stored them before): LoRA / full "
            f"= {ratio:.2f}; in bf16 they take {answers[wide]['weights_mib'] - answers['lora']['weights_mib']:,.0f} "
            "MiB less, and the layers widen them one at a time for fp32 matmuls (`mmit.models.tuning.narrow_frozen`). "
            f"Median step in these memory runs: {median(answers['lora']['step_seconds']):.2f} s with bf16 frozen "
            f"weights, {median(answers[wide]['step_seconds']):.2f} s with fp32 ones (two steps each; B5 times the "
            "default)."
        )
    weights = answers["lora"]["weights_mib"]
    result.notes += [
        f"Training memory: {_memory_words(device)}. It holds the weights ({weights:,.0f} MiB here), gradients, "
        "AdamW state and activations. LoRA saves the gradients and AdamW state of the frozen weights, a fixed "
        "amount; activations grow with the tokens per step and LoRA does not shrink them, so the ratio rises "
        "with the batch: LoRA's activations come to about "
        f"{(training['lora'] - weights) / (batch * seq):.2f} MiB per token here.",
        f"Whole-process peak RSS ratio (with torch's own ~{answers['lora']['rss_after_imports_mib']:.0f} MiB): "
        f"{process['lora'] / process['full']:.2f}.",
    ]
    if device == "cpu" and not plan.quick:
        result.notes.append(
            f"{batch} x {seq} tokens: mmit's default batch size (trainer.batch_size=8) of rows about as long as a "
            "demo VQA sample (16 image tokens, question and short answer)."
        )
    return result


BENCHMARKS: dict[str, Callable[[Plan], Result]] = {
    "B1": bench_b1,
    "B2": bench_b2,
    "B3": bench_b3,
    "B4": bench_b4,
    "B5": bench_b5,
    "B6": bench_b6,
}


# --- report ----------------------------------------------------------------------------------


def machine(device: str) -> dict:
    import peft
    import transformers

    cpu, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine()
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "mmit"], cwd=REPO, capture_output=True, text=True)
        revision = commit.stdout.strip() + (" (mmit/ has uncommitted changes)" if dirty.stdout.strip() else "")
    except OSError:
        revision = "unknown"
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "cpu_flags": {f: f in flags.split() for f in wanted},
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "device": device,
        "git": revision,
        "load_average_start": os.getloadavg()[0],
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "-"}[value]
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def fmt_ratio(result: Result) -> str:
    if result.ratio is None:
        return "-"
    if "MFU" in result.ratio_label or result.ratio_label.startswith("share"):
        return f"{100 * result.ratio:.1f}%"
    return f"{result.ratio:.2f}x"


def verdict(result: Result) -> str:
    if result.status != "ok":
        return result.status
    return {True: "**met**", False: "**not met**", None: "no goal"}[result.met]


def markdown(results: list[Result], info: dict, command: str, total_s: float) -> str:
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["cpu_flags"].items())
    lines = [
        "# Performance benchmarks (issue #7)",
        "",
        f"Written by `{command}` on {info['date']} ({total_s / 60:.1f} minutes). Every figure is a ratio of two "
        "variants measured side by side in this one run: the variants alternate (A B, B A, ...), ratios come from "
        "medians, and a machine peak is measured next to the step it is compared with. Absolute times are shown "
        "for context only: the machine is shared with other jobs.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {info['cpu']}, {info['cores']} cores |",
        f"| threads | torch {info['torch_threads']}, OMP_WAIT_POLICY={info['omp_wait_policy'] or 'unset'} |",
        f"| CPU features | {flags} |",
        f"| memory | {info['memory_gib']} GiB |",
    ]
    if "gpu" in info:
        lines.append(f"| GPU | {info['gpu']} ({info['gpu_memory_gib']} GiB) |")
    lines += [
        f"| device benchmarked | {info['device']} |",
        f"| software | Python {info['python']}, torch {info['torch']}, transformers {info['transformers']}, "
        f"peft {info['peft']} |",
        f"| mmit | git {info['git']} |",
        f"| load average | {info['load_average_start']:.1f} at the start, {info.get('load_average_end', 0):.1f} "
        "at the end |",
        "",
    ]
    if info["omp_wait_policy"].upper() == "PASSIVE" and info["device"] == "cpu":
        lines += [
            "The tool sets `OMP_WAIT_POLICY=PASSIVE` unless it is set. While other jobs ran on this 2-core "
            "machine, a SmolLM2-135M forward+backward of 2 x 128 tokens took 12 to 70 s with torch's default "
            "(OpenMP threads that spin while they wait) and 3 to 8 s with sleeping waiters (measured while "
            "writing the tool).",
            "",
        ]
    lines += [
        "## Summary",
        "",
        "| benchmark | measured | ratio | goal | verdict |",
        "|---|---|---:|---|---|",
    ]
    for r in results:
        lines.append(f"| {r.id} {r.title} | {r.ratio_label or '-'} | {fmt_ratio(r)} | {r.goal or '-'} | {verdict(r)} |")
    for r in results:
        lines += ["", f"## {r.id}: {r.title}", ""]
        if r.compared:
            lines += [r.compared + ".", ""]
        if r.rows:
            numeric = [isinstance(c, (int, float)) for c in r.rows[0]]
            lines += [
                "| " + " | ".join(r.columns) + " |",
                "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
            ]
            lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in r.rows]
            lines.append("")
        lines.append(
            f"**{r.ratio_label or 'ratio'}: {fmt_ratio(r)}**; goal {r.goal or '-'}: {verdict(r)}"
            + (f" ({r.seconds:.0f} s)" if r.seconds else "")
            + "."
        )
        if r.notes:
            lines += [""] + [f"- {note}" for note in r.notes]
    lines += [
        "",
        "Raw numbers (every repetition): "
        "[docs/bench/perf.json](docs/bench/perf.json) when written to the default place.",
        "",
    ]
    return "\n".join(lines)


def summary_text(results: list[Result]) -> str:
    width = max(len(f"{r.id} {r.title}") for r in results)
    out = []
    for r in results:
        out.append(f"{f'{r.id} {r.title}':<{width}}  {fmt_ratio(r):>8}  goal {r.goal or '-':<12} {verdict(r)}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated benchmark ids, e.g. B3,B5 (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition: a smoke run")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--json", type=Path, help="raw numbers (default: docs/bench/perf.json, or beside --out)")
    parser.add_argument("--reps", type=int, help="repetitions per variant (default 5; 1 with --quick; B3: +2)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--b4-group-by-length", type=int, default=16, help="B4's mmit sides (0 = off)")
    parser.add_argument("--b4-prefetch", type=int, help="B4's mmit sides (default: mmit's TrainerConfig)")
    parser.add_argument(
        "--b4-pack-length",
        type=int,
        default=-1,
        help="B4's fast mmit side: packed rows of N tokens (default -1: the longest sample, rounded up; 0: off)",
    )
    parser.add_argument("--b4-no-feature-cache", action="store_true", help="B4's fast mmit side: run the encoder")
    parser.add_argument("--child", nargs=2, metavar=("TASK", "JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.child:
        task, kwargs = args.child
        print(json.dumps(CHILD_TASKS[task](**json.loads(kwargs))), flush=True)
        return []
    chosen = [b.strip().upper() for b in args.only.split(",")] if args.only else list(BENCHMARKS)
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; known: {', '.join(BENCHMARKS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    json_path = args.json or (DEFAULT_JSON if args.out.resolve() == DEFAULT_OUT else args.out.with_suffix(".json"))
    command = " ".join(["python tools/bench_perf.py", *(argv if argv is not None else sys.argv[1:])])

    info = machine(args.device)
    print(f"{info['cpu']}, {info['cores']} cores, device {args.device}; torch {info['torch']}", flush=True)
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="mmit-bench-perf-") as tmp:
        plan = make_plan(args, Path(tmp))
        if plan.quick:  # a smoke run: the memory children need not wait for the timings
            plan.started = {b: start_children(memory_tasks(plan, b), plan.tmp) for b in chosen if memory_tasks(plan, b)}
        for bench_id in chosen:
            print(f"{bench_id} ...", flush=True)
            t0 = time.perf_counter()
            try:
                result = BENCHMARKS[bench_id](plan)
            except Exception as error:  # one failed benchmark still leaves the others' report
                result = Result(bench_id, BENCHMARKS[bench_id].__name__, status="failed")
                result.notes.append(f"{type(error).__name__}: {error}")
                print(f"{bench_id} failed: {error}", flush=True)
            result.seconds = time.perf_counter() - t0
            results.append(result)
            print(
                f"{bench_id}: {fmt_ratio(result)} ({result.ratio_label or result.status}); {verdict(result)}; "
                f"{result.seconds:.0f} s",
                flush=True,
            )
    total = time.perf_counter() - started
    info["load_average_end"] = os.getloadavg()[0]

    from mmit.paths import atomic_write_text

    atomic_write_text(args.out, markdown(results, info, command, total))
    payload = {"command": command, "machine": info, "seconds": total, "results": [asdict(r) for r in results]}
    atomic_write_text(json_path, json.dumps(payload, indent=1, default=str) + "\n")
    print("\n" + summary_text(results))
    print(f"\nwrote {args.out} and {json_path} ({total / 60:.1f} min)")
    return results


if __name__ == "__main__":
    main()
