"""The training loop: accumulate micro-batches, step, log, evaluate, checkpoint."""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, get_cosine_schedule_with_warmup

from mmit.data.collate import Collator
from mmit.data.features import FeatureStore
from mmit.data.loader import Prefetch
from mmit.data.samples import Conversation
from mmit.data.tokenize import StreamedDataset, TokenizedDataset
from mmit.evaluation import evaluate_set, sample_losses
from mmit.generation import GenerationOptions
from mmit.grounding import AnswerPrior, swap_plan, swapped
from mmit.models.multimodal_lm import MultimodalLM
from mmit.paths import atomic_write_text
from mmit.scoring import Prediction, flat_metrics, score_predictions
from mmit.training import distributed
from mmit.training.checkpoint import (
    divergence_advice,
    gather_checkpoint,
    latest_checkpoint,
    load_trainable,
    load_training_state,
    read_state,
    save_checkpoint,
)
from mmit.training.loss import answer_turns, next_token_loss_sum
from mmit.training.tracking import MetricsLog

log = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    return getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only


def release_freed_memory() -> bool:
    """Hand the heap pages that malloc keeps free back to the OS; False where that is not possible.

    glibc keeps freed memory for reuse, but a training step frees tensors of many sizes (every
    batch has its own shapes) and later requests fit the gaps badly: in the main job on a CPU,
    about 2 GB of the 3.5 GB resident set is such free heap. Doing this after every step lowered
    the job's peak RSS by 0.8-1.0 GB but made steps ~25% slower, as the pages are faulted in again.
    """
    trim = _malloc_trim()
    return trim is not None and bool(trim(0))


@dataclass
class TrainerConfig:
    max_steps: int = 200
    batch_size: int = 8
    group_by_length: int = 16  # batches per length-sorted window (0 = plain shuffle)
    pack_length: int = 0  # > 0: pack samples into rows of this many tokens (batch_size rows a batch)
    prefetch: int = 2  # batches prepared ahead in a background thread (0 = in the loop)
    gradient_checkpointing: bool = False  # recompute the LLM's activations in backward: less memory
    release_memory: bool = False  # after each step, return freed heap memory to the OS: less RSS, slower steps
    grad_accum: int = 1
    lr: float = 2e-4
    lr_per_component: dict[str, float] = field(default_factory=dict)
    weight_decay: float = 0.0
    warmup_steps: int = 10
    max_grad_norm: float = 1.0
    # token: every answer token weighs the same (long captions dominate the gradient); turn: every
    # answer weighs the same, its tokens 1 / its length (a one-word answer counts as much as a caption)
    loss_weighting: str = "token"
    precision: str = "auto"  # auto | bf16 (autocast, CPU and GPU) | fp32
    device: str = "auto"
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 20  # per evaluation set; 0 = the whole set
    # Answers generated and scored, per task of each evaluation set (0 = all): a number, or
    # {set name: number} (sets not named get the "default" entry, else 32).
    generate_samples: int | dict[str, int] = 32
    swap_media: bool = True  # also answer with media swapped between samples: the media dependence
    eval_before: str = "full"  # evaluation before training: full | loss (no generation) | none
    max_new_tokens: int = 32
    save_every: int = 100
    keep_last: int = 2
    resume: bool = True
    deterministic: bool = False  # torch.use_deterministic_algorithms: bitwise-repeatable runs (CPU)
    on_nonfinite: str = "skip"  # NaN / inf loss or gradient: skip the update, or stop
    max_nonfinite_skips: int = 5  # stop after more skipped steps than this in a row
    distributed: str = "ddp"  # under torchrun: ddp (replicas) | fsdp2 (weights sharded over processes)
    tensorboard: bool = True  # event files in <run dir>/tensorboard, beside metrics.jsonl
    seed: int = 0


@dataclass
class EvalSet:
    """A held-out set: tokenized for the loss, conversations for generation."""

    tokens: TokenizedDataset
    conversations: list[Conversation]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: without them CPU bf16 matmuls are far slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 where the hardware does it fast (CUDA, AMX CPUs), else fp32."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"trainer.precision must be auto, bf16 or fp32, not {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def param_groups(model: torch.nn.Module, cfg: TrainerConfig) -> list[dict]:
    """One group per component (first name segment), each with its learning rate."""
    groups: dict[str, list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault(name.split(".")[0], []).append(p)
    unknown = set(cfg.lr_per_component) - set(groups)
    if unknown:
        raise ValueError(f"trainer.lr_per_component names no trainable component: {sorted(unknown)}")
    if not groups:
        raise ValueError("nothing to train: every component is frozen")
    return [
        {"params": ps, "lr": cfg.lr_per_component.get(name, cfg.lr), "component": name} for name, ps in groups.items()
    ]


def eval_losses(
    model: MultimodalLM, dataset: TokenizedDataset, collate: Collator, cfg: TrainerConfig, device: torch.device
) -> dict[str, float]:
    """Mean loss per label token over (a prefix of) the set, in a fixed order: ``loss``, and with
    ``swap_media`` also ``loss_swapped_media``, the same samples with media swapped between them."""
    samples = dataset.samples[: cfg.eval_batches * cfg.batch_size or None]
    dtype = torch.bfloat16 if cfg.precision == "bf16" else None

    def mean_loss(items) -> float:
        losses = sample_losses(model, items, collate, cfg.batch_size, dtype)
        return sum(loss for loss, _ in losses) / max(sum(tokens for _, tokens in losses), 1)

    out = {"loss": mean_loss(samples)}
    swapped_samples = [s for _, s in swapped(samples, swap_plan(samples, cfg.seed))] if cfg.swap_media else []
    if swapped_samples:
        out["loss_swapped_media"] = mean_loss(swapped_samples)
    return out


def samples_per_task(setting: int | dict[str, int], set_name: str) -> int:
    """``trainer.generate_samples`` for one set: a number for every set, or per set name."""
    if isinstance(setting, int):
        return setting
    return int(setting.get(set_name, setting.get("default", 32)))


def per_task_prefix(convs: list[Conversation], n: int) -> list[int]:
    """Indices of the first ``n`` conversations of each task (their last turn's), in set order; all for 0."""
    if n <= 0:
        return list(range(len(convs)))
    taken: dict[str, int] = {}
    chosen = []
    for i, conv in enumerate(convs):
        task = (conv.meta.get("tasks") or ["instruction"])[-1]
        if taken.get(task, 0) < n:
            taken[task] = taken.get(task, 0) + 1
            chosen.append(i)
    return chosen


def evaluate(
    model,
    tokenizer,
    eval_sets: dict[str, EvalSet],
    collate,
    cfg,
    device,
    prior: AnswerPrior | None = None,
    generate: bool = True,
) -> tuple[dict, dict, dict]:
    """Loss per evaluation set, and the scores of generated answers (mmit.scoring) on the first
    samples of each task: with own and with swapped media, beside the blind prior (``mmit.grounding``)."""
    metrics, predictions, swapped = {}, [], []
    options = GenerationOptions(cfg.max_new_tokens)
    dtype = torch.bfloat16 if cfg.precision == "bf16" else None
    for name, eval_set in eval_sets.items():
        losses = eval_losses(model, eval_set.tokens, collate, cfg, device)
        metrics.update({f"eval/{name}/{key}": value for key, value in losses.items()})
        chosen = per_task_prefix(eval_set.conversations, samples_per_task(cfg.generate_samples, name))
        if generate and chosen:
            result = evaluate_set(
                model,
                tokenizer,
                name,
                [eval_set.conversations[i] for i in chosen],
                options,
                samples=[eval_set.tokens.samples[i] for i in chosen],
                swap_media=cfg.swap_media,
                seed=cfg.seed,
                batch_size=cfg.batch_size * 2,
                autocast_dtype=dtype,
                preprocess=collate.preprocess,
                progress=True,  # minutes on a CPU: a bar per set, not silence
            )
            predictions += result.predictions
            swapped += result.swapped
    scores = score_predictions(predictions, swapped, prior) if predictions else {}
    if scores:
        metrics.update(flat_metrics(scores))
    return metrics, answers_by_set(predictions, swapped), scores


def answers_by_set(predictions: list[Prediction], swapped: list[Prediction]) -> dict[str, list[dict]]:
    """Each set's answers, with what the model said given another sample's media beside each."""
    others = {(p.set, p.id): p.prediction for p in swapped}
    out: dict[str, list[dict]] = {}
    for p in predictions:
        entry = p.to_json()
        if (p.set, p.id) in others:
            entry["prediction_swapped_media"] = others[(p.set, p.id)]
        out.setdefault(p.set, []).append(entry)
    return out


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient and the policy says stop."""


def train(
    model: MultimodalLM,
    tokenizer: PreTrainedTokenizerBase,
    train_set: TokenizedDataset | StreamedDataset,
    eval_sets: dict[str, EvalSet],
    cfg: TrainerConfig,
    run_dir: Path,
    features: dict[str, FeatureStore] | None = None,
    prior: AnswerPrior | None = None,
) -> dict:
    """Train ``model`` in place; returns the run's summary (also written to the run dir).

    ``features``: caches of frozen encoders' outputs, used in place of running those encoders.
    ``prior``: the training set's answers, for the blind prior beside each evaluation score.

    Under torchrun every process runs this; only the first evaluates and writes files.
    """
    run_dir = Path(run_dir)
    if cfg.on_nonfinite not in ("skip", "stop"):
        raise ValueError(f"trainer.on_nonfinite must be skip or stop, not {cfg.on_nonfinite!r}")
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    d, device = distributed.setup(cfg.device)
    if len(set(distributed.gather_objects(d, str(run_dir.resolve())))) > 1:
        raise ValueError("processes disagree on the run directory: give torchrun runs hydra.run.dir=<dir>")
    cfg.precision = resolve_precision(cfg.precision, device)
    log.info("device %s, precision %s", device, cfg.precision)
    model.to(device).train()
    if cfg.gradient_checkpointing:
        model.base_llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    collate = Collator(
        tokenizer.pad_token_id, preprocess={k: e.preprocess for k, e in model.encoders.items()}, features=features
    )
    stream = train_set.batches(
        cfg.batch_size,
        collate,
        cfg.seed,
        cfg.group_by_length,
        rank=d.rank,
        world_size=d.world_size,
        pack_length=cfg.pack_length,
    )
    if cfg.prefetch:
        stream = Prefetch(stream, cfg.prefetch)
    state, start_step, before = None, 0, None
    resume_from = latest_checkpoint(run_dir) if cfg.resume else None
    if resume_from is not None:
        state = read_state(resume_from)
        load_trainable(model, resume_from)  # before any sharding: whole tensors into whole parameters
        start_step, before = state["step"], state["extra"].get("before")
        stream.load_state(data_state_for(state, d))
        log.info("resumed from %s at step %d", resume_from, start_step)
    tracker = MetricsLog(run_dir, cfg.tensorboard, resume_step=start_step) if d.is_main else None
    if before is None:
        if cfg.eval_before not in ("full", "loss", "none"):
            raise ValueError(f"trainer.eval_before must be full, loss or none, not {cfg.eval_before!r}")
        before = {}
        if d.is_main and cfg.eval_before != "none":
            generate = cfg.eval_before == "full"
            before, before_answers, _ = evaluate(model, tokenizer, eval_sets, collate, cfg, device, prior, generate)
            if generate:
                _write_json(run_dir / "answers_before.json", before_answers)
            tracker.log({"step": 0, **before})
        distributed.barrier(d)
    # Every trainable parameter gets a gradient, zero when the batch did not use it (no image in
    # it, say): updates then do not depend on how a step's samples are spread over processes, and
    # no process waits for a gradient that is not coming. Added inside forward, where FSDP2 has
    # the parameters gathered.
    touch = model.register_forward_hook(lambda module, args, hidden: hidden + distributed.touch_all(module))
    # DDP wraps the model; FSDP2 shards it in place (its parameters become DTensors), so the
    # optimizer is made after this, from the parameters as they now are.
    train_model = distributed.wrap(model, d, cfg.distributed)
    sharded = d.active and cfg.distributed == "fsdp2"
    optimizer = torch.optim.AdamW(param_groups(model, cfg), weight_decay=cfg.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.max_steps)
    if state is not None:
        load_training_state(resume_from, state, optimizer, scheduler)

    def run_evaluation() -> dict:
        """In-loop evaluation: the first process alone, or every process in step when sharded."""
        if not (d.is_main or sharded):
            return {}
        with distributed.whole(model, sharded):
            metrics, _, _ = evaluate(model, tokenizer, eval_sets, collate, cfg, device, prior)
        return metrics

    per_turn = cfg.loss_weighting == "turn"  # every answer weighs the same, not every token
    started, tokens_seen, last_loss = time.perf_counter(), 0, float("nan")
    skipped_steps, skipped_in_a_row = 0, 0
    bar = tqdm(
        range(start_step, cfg.max_steps),
        initial=start_step,
        total=cfg.max_steps,
        desc="train",
        unit="step",
        disable=not d.is_main,
    )
    for step in bar:
        micro_batches = [next(stream).to(device) for _ in range(cfg.grad_accum)]
        # Normalise by the label tokens of the whole step (all processes, all micro-batches),
        # not per micro-batch: long and short answers then weigh the same however the step is
        # split. DDP averages gradients over processes, hence the factor world_size.
        units = (answer_turns(b.labels) if per_turn else b.num_label_tokens for b in micro_batches)
        step_tokens = distributed.sum_across(d, sum(units), device)
        loss_sum = 0.0
        for i, batch in enumerate(micro_batches):
            sync = i == len(micro_batches) - 1
            with distributed.gradient_sync(train_model, d, sync), autocast(device, cfg.precision):
                hidden = train_model(batch)
                loss = next_token_loss_sum(hidden, batch.labels, model.output_head, per_turn) / max(step_tokens, 1)
            (loss * d.world_size).backward()
            loss_sum += loss.item()
        if sharded:
            distributed.all_reduce_replicated(model, d)
        loss_sum = distributed.sum_across(d, loss_sum, device)
        grad_norm = distributed.clip_grad_norm(model, cfg.max_grad_norm)
        done = step + 1
        if math.isfinite(loss_sum) and math.isfinite(grad_norm):
            optimizer.step()
            scheduler.step()
            skipped_in_a_row = 0
            last_loss = loss_sum
        else:
            skipped_steps, skipped_in_a_row = skipped_steps + 1, skipped_in_a_row + 1
            message = f"step {done}: non-finite loss ({loss_sum}) or gradient norm ({grad_norm})"
            if cfg.on_nonfinite == "stop" or skipped_in_a_row > cfg.max_nonfinite_skips:
                raise NonFiniteLossError(
                    f"{message}; stopping (trainer.on_nonfinite={cfg.on_nonfinite}, "
                    f"{skipped_in_a_row} in a row). {divergence_advice(run_dir)}"
                )
            log.warning("%s: update skipped (%d in a row)", message, skipped_in_a_row)
        optimizer.zero_grad(set_to_none=True)
        if cfg.release_memory:
            release_freed_memory()
        tokens_seen += sum(int(b.attention_mask.sum()) for b in micro_batches)
        bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")

        if d.is_main and (done % cfg.log_every == 0 or done == cfg.max_steps):
            tracker.log(
                {
                    "step": done,
                    "train/loss": loss_sum,
                    "train/grad_norm": grad_norm,
                    "train/skipped_steps": skipped_steps,
                    "lr": scheduler.get_last_lr()[0],
                    "tokens/s": d.world_size * tokens_seen / (time.perf_counter() - started),
                },
            )
        if done % cfg.eval_every == 0 and done != cfg.max_steps:
            metrics = run_evaluation()
            if d.is_main:
                tracker.log({"step": done, **metrics})
                bar.write(f"step {done}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if done % cfg.save_every == 0 or done == cfg.max_steps:
            data_states = distributed.gather_objects(d, stream.state())
            payload = gather_checkpoint(model, optimizer) if sharded else None  # every process gathers
            if d.is_main:
                save_checkpoint(
                    run_dir,
                    done,
                    model,
                    optimizer,
                    scheduler,
                    data_states[0] if len(data_states) == 1 else {"per_rank": data_states},
                    cfg.keep_last,
                    extra={"before": before},
                    payload=payload,
                )
            distributed.barrier(d)
    bar.close()
    touch.remove()
    if cfg.prefetch:
        stream.close()
    elapsed = time.perf_counter() - started

    after, scores = {}, {}
    if d.is_main or sharded:
        with distributed.whole(model, sharded):
            after, after_answers, scores = evaluate(model, tokenizer, eval_sets, collate, cfg, device, prior)
    if d.is_main:
        _write_json(run_dir / "answers_after.json", after_answers)
        tracker.log({"step": cfg.max_steps, **after})
        tracker.close()
    distributed.barrier(d)
    return {
        "steps": cfg.max_steps,
        "resumed_from_step": start_step,
        "processes": d.world_size,
        "device": str(device),
        "precision": cfg.precision,
        "train_seconds": elapsed,
        "tokens_per_second": d.world_size * tokens_seen / max(elapsed, 1e-9),
        "final_train_loss": last_loss,
        "skipped_steps": skipped_steps,
        "before": before,
        "after": after,
        "grounding": scores.get("grounding", {}),
    }


def data_state_for(state: dict, d: distributed.Dist) -> dict:
    """This process's data position from a checkpoint (written by as many processes as this run has)."""
    data = state["data"]
    if "per_rank" not in data:
        return data
    if len(data["per_rank"]) != d.world_size:
        raise ValueError(
            f"the checkpoint was written by {len(data['per_rank'])} processes and this run has {d.world_size}: "
            "resume with the same number of processes"
        )
    return data["per_rank"][d.rank]


def _write_json(path: Path, value) -> None:
    atomic_write_text(path, json.dumps(value, indent=1, ensure_ascii=False))
