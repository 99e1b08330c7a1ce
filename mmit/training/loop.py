"""The training loop: accumulate micro-batches, step, log, evaluate, checkpoint.

``train`` reads top to bottom; each of its steps is a function below it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm
from transformers import (
    PreTrainedTokenizerBase,
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_wsd_schedule,
)

from mmit.data.collate import Collator
from mmit.data.datasets import TokenizedDataset
from mmit.data.features import FeatureStore
from mmit.data.loader import DataChangedError
from mmit.data.samples import Conversation
from mmit.evaluation import benchmark_metrics, evaluate_benchmarks, evaluate_set, sample_losses
from mmit.generation import ANSWER_BATCH, GenerationOptions
from mmit.grounding import AnswerPrior, swap_plan, swapped
from mmit.metrics import VQA_NORMALISATIONS
from mmit.models.multimodal_lm import MultimodalLM
from mmit.paths import atomic_write_text
from mmit.scoring import Prediction, flat_metrics, last_task, score_predictions
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
from mmit.training.device import autocast, autocast_dtype, release_freed_memory, resolve_precision
from mmit.training.loss import answer_turns, next_token_loss_sum
from mmit.training.tracking import MetricsLog

if TYPE_CHECKING:
    from mmit.factory import TrainingBatches

log = logging.getLogger(__name__)

# The trainer's named choices (checked here for direct callers, by mmit.config_checks for the command line).
TRAINER_CHOICES = {
    "on_nonfinite": ("skip", "stop"),
    "eval_before": ("full", "loss", "none"),
    "lr_schedule": ("cosine", "constant", "wsd"),
    "loss_weighting": ("token", "turn"),
}


@dataclass
class TrainerConfig:
    """The trainer's options and their defaults: set here only. conf/trainer/default.yaml lists the
    same values with notes for the command line; a test keeps the two equal."""

    max_steps: int = 200
    batch_size: int = 8
    group_by_length: int = 16  # batches per length-sorted window (0 = plain shuffle)
    # Each step's batch_size samples packed into rows of up to this many tokens (mmit.training.packing:
    # the same samples per step as padded, less padding); None: data.max_length where the model can
    # pack, else padded (logged); 0: padded, one sample per row.
    pack_length: int | None = None
    prefetch: int = 2  # batches prepared ahead in a background thread (0 = in the loop)
    # processes that decode and preprocess media where the step decodes any (no feature cache); 0: the
    # prefetch thread decodes them
    decode_workers: int = 0
    gradient_checkpointing: bool = False  # recompute the LLM's activations in backward: less memory
    release_memory: bool = False  # after each step, return freed heap memory to the OS: less RSS, slower steps
    compile: bool = False  # torch.compile the model's training forward (evaluation and generation stay eager)
    grad_accum: int = 1
    lr: float = 2e-4
    lr_per_component: dict[str, float] = field(default_factory=dict)  # llm | encoders | projectors -> lr
    weight_decay: float = 0.0
    warmup_steps: int = 10
    # After warm-up: cosine (to 0 at max_steps) | constant | wsd (warm-up, stable, decay: constant, then
    # down to 0 as 1 - sqrt over the last lr_decay_fraction of the steps, as Hagele et al. 2024)
    lr_schedule: str = "cosine"
    lr_decay_fraction: float = 0.2  # wsd only
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
    eval_batch_size: int = ANSWER_BATCH  # prompts answered at once (in-loop, benchmarks, mmit.eval's default)
    swap_media: bool = True  # also answer with media swapped between samples: the media dependence
    eval_before: str = "full"  # evaluation before training: full | loss (no generation) | none
    # Longest answer generated: a number for every task, or {task: number} (tasks not named get the
    # "default" entry, else 32), as mmit.eval answers too unless given --max-new-tokens.
    max_new_tokens: int | dict[str, int] = 32
    vqa_normalisation: str = "official"  # official (VQAv2's vqaEval.py) | lmms_eval (mmit.metrics.vqa_accuracy)
    # Standard benchmarks scored after training, {name: folder} (mmit.benchmarks), as mmit.eval --benchmark does
    benchmarks: dict[str, str] | None = None
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


def lr_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainerConfig):
    """``trainer.lr_schedule`` after ``warmup_steps`` of linear warm-up (transformers' schedules)."""
    if cfg.lr_schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, cfg.warmup_steps)
    if cfg.lr_schedule == "wsd":
        decay = max(1, round(cfg.lr_decay_fraction * cfg.max_steps))
        stable = max(0, cfg.max_steps - cfg.warmup_steps - decay)
        return get_wsd_schedule(optimizer, cfg.warmup_steps, decay, num_stable_steps=stable, decay_type="1-sqrt")
    return get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.max_steps)


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
    dtype = autocast_dtype(cfg.precision)

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
        task = last_task(conv)
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
    options = GenerationOptions.from_setting(cfg.max_new_tokens)
    dtype = autocast_dtype(cfg.precision)
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
                batch_size=cfg.eval_batch_size,
                autocast_dtype=dtype,
                preprocess=collate.preprocess,
                features=collate.features,  # the features training read, where a cache holds them
                progress=True,  # minutes on a CPU: a bar per set, not silence
            )
            predictions += result.predictions
            swapped += result.swapped
    scores = score_predictions(predictions, swapped, prior, cfg.vqa_normalisation) if predictions else {}
    if scores:
        metrics.update(flat_metrics(scores))
    return metrics, answers_by_set(predictions, swapped), scores


def answers_by_set(predictions: list[Prediction], swapped: list[Prediction]) -> dict[str, list[dict]]:
    """Each set's answers, with what the model said given another sample's media beside each (and,
    for yes/no, its margin then)."""
    others = {(p.set, p.id): p for p in swapped}
    out: dict[str, list[dict]] = {}
    for p in predictions:
        entry = p.to_json()
        if (other := others.get((p.set, p.id))) is not None:
            entry["prediction_swapped_media"] = other.prediction
            if other.yes_no_margin is not None:
                entry["yes_no_margin_swapped_media"] = other.yes_no_margin
        out.setdefault(p.set, []).append(entry)
    return out


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient and the policy says stop."""


@dataclass(frozen=True)
class TrainingRun:
    """What the loop's steps share, fixed once set up: the config (its precision resolved), this
    process's place, the model and what evaluates it, and the metrics log (first process only)."""

    cfg: TrainerConfig
    run_dir: Path
    d: distributed.Dist
    device: torch.device
    model: MultimodalLM
    tokenizer: PreTrainedTokenizerBase
    eval_sets: dict[str, EvalSet]
    collate: Collator
    prior: AnswerPrior | None
    tracker: MetricsLog | None

    @property
    def sharded(self) -> bool:
        return self.d.active and self.cfg.distributed == "fsdp2"

    @property
    def per_turn(self) -> bool:
        return self.cfg.loss_weighting == "turn"  # every answer weighs the same, not every token

    def evaluate(self, generate: bool = True) -> tuple[dict, dict, dict]:
        return evaluate(
            self.model, self.tokenizer, self.eval_sets, self.collate, self.cfg, self.device, self.prior, generate
        )


@dataclass
class Progress:
    """What the loop counts as it goes; the logs and the summary read it."""

    start_step: int
    step: int = 0  # optimizer steps done, skipped ones included
    tokens_seen: int = 0  # on this process, not padding
    batch_tokens: int = 0  # padding included
    label_tokens: int = 0
    cache_hits: int = 0  # media items read from a feature cache
    cache_misses: int = 0  # media items of a cached kind decoded and encoded in the step
    last_loss: float = math.nan  # of the last step whose update was applied
    skipped_steps: int = 0
    skipped_in_a_row: int = 0
    started: float = field(default_factory=time.perf_counter)

    def count(self, batches: list, features: dict[str, FeatureStore]) -> None:
        for b in batches:
            self.tokens_seen += int(b.attention_mask.sum())
            self.batch_tokens += b.attention_mask.numel()
            self.label_tokens += b.num_label_tokens
            self.cache_hits += sum(len(v) for v in b.features.values())
            self.cache_misses += sum(len(b.media[kind]) for kind in features if kind in b.media)


def train(
    model: MultimodalLM,
    tokenizer: PreTrainedTokenizerBase,
    batches: TrainingBatches,
    eval_sets: dict[str, EvalSet],
    cfg: TrainerConfig,
    run_dir: Path,
    prior: AnswerPrior | None = None,
    place: tuple[distributed.Dist, torch.device] | None = None,
) -> dict:
    """Train ``model`` in place on ``batches`` (``mmit.factory.build_training_batches``); returns the
    run's summary (also written to the run dir).

    ``prior``: the training set's answers, for the blind prior beside each evaluation score.
    ``place``: this process's ``distributed.setup()``, done by the caller once (the batches were
    built for it); here when not given.

    Under torchrun every process runs this; only the first evaluates and writes files.
    """
    check_choices(cfg)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    d, device = place or distributed.setup(cfg.device)
    run_dir = Path(run_dir)
    check_same_run_dir(run_dir, d)
    # Resolved into a copy: the caller's config stays as given.
    cfg = replace(cfg, precision=resolve_precision(cfg.precision, device), pack_length=batches.pack_length)
    log.info("device %s, precision %s", device, cfg.precision)
    prepare_model(model, device, cfg)
    stream, collate = batches.stream, batches.collate
    resume_from = latest_checkpoint(run_dir) if cfg.resume else None
    state = resume_weights_and_data(resume_from, model, stream, d)
    start_step = state["step"] if state else 0
    tracker = MetricsLog(run_dir, cfg.tensorboard, resume_step=start_step) if d.is_main else None
    run = TrainingRun(cfg, run_dir, d, device, model, tokenizer, eval_sets, collate, prior, tracker)
    before = state["extra"].get("before") if state else None
    if before is None:
        before = evaluate_before(run)
    touch = model.register_forward_hook(touch_every_trainable_parameter)
    # DDP wraps the model; FSDP2 shards it in place (its parameters become DTensors), so the
    # optimizer is made after this, from the parameters as they now are.
    train_model = distributed.wrap(model, d, cfg.distributed)
    if cfg.compile:  # the training forward only: evaluation and generation call the model itself
        train_model = torch.compile(train_model)
    optimizer = torch.optim.AdamW(param_groups(model, cfg), weight_decay=cfg.weight_decay)
    scheduler = lr_scheduler(optimizer, cfg)
    if state is not None:
        load_training_state(resume_from, state, optimizer, scheduler)

    progress = Progress(start_step)  # its clock starts now: train_seconds leaves set-up and evaluation out
    progress.skipped_steps = state["extra"].get("skipped_steps", 0) if state else 0  # across resumes
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
        loss, grad_norm = forward_backward(run, train_model, micro_batches)
        progress.step = step + 1
        if passes_nonfinite_guard(progress, loss, grad_norm, cfg, run_dir):
            optimizer.step()
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if cfg.release_memory:
            release_freed_memory()
        progress.count(micro_batches, collate.features)
        lr = scheduler.get_last_lr()[0]
        bar.set_postfix(loss=f"{progress.last_loss:.4f}", lr=f"{lr:.2e}")
        if d.is_main and log_due(progress.step, cfg):
            log_step(run, progress, loss, grad_norm, lr)
        if eval_due(progress.step, cfg):
            evaluate_in_loop(run, progress.step, bar)
        if save_due(progress.step, cfg):
            save(run, progress, stream, optimizer, scheduler, before)
    bar.close()
    touch.remove()
    batches.close()
    elapsed = time.perf_counter() - progress.started
    after, scores = evaluate_at_end(run)
    return run_summary(run, progress, elapsed, before, after, scores)


def check_choices(cfg: TrainerConfig) -> None:
    """The named choices a caller may give ``run_training`` directly (``mmit.config_checks`` checks the
    command line's against the same lists)."""
    for key, allowed in TRAINER_CHOICES.items():
        if (value := getattr(cfg, key)) not in allowed:
            raise ValueError(f"trainer.{key} must be one of {', '.join(allowed)}, not {value!r}")
    if cfg.vqa_normalisation not in VQA_NORMALISATIONS:
        raise ValueError(
            f"trainer.vqa_normalisation must be one of {VQA_NORMALISATIONS}, not {cfg.vqa_normalisation!r}"
        )


def check_same_run_dir(run_dir: Path, d: distributed.Dist) -> None:
    if len(set(distributed.gather_objects(d, str(run_dir.resolve())))) > 1:
        raise ValueError("processes disagree on the run directory: give torchrun runs hydra.run.dir=<dir>")


def prepare_model(model: MultimodalLM, device: torch.device, cfg: TrainerConfig) -> None:
    model.to(device).train()
    if cfg.gradient_checkpointing:
        model.base_llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def resume_weights_and_data(resume_from: Path | None, model: MultimodalLM, stream, d: distributed.Dist) -> dict | None:
    """The checkpoint's state, its trained weights loaded and the data stream put back where it was
    (the optimizer's state comes later, once the optimizer exists); None when starting afresh."""
    if resume_from is None:
        return None
    state = read_state(resume_from)
    try:
        stream.load_state(data_state_for(state, d))
    except DataChangedError as err:
        raise DataChangedError(
            f"{resume_from}: {err}; its run goes on only on those data. To train on these, choose a new "
            f"folder (hydra.run.dir=...), if you like from this run's weights: init_from={resume_from}"
        ) from None
    load_trainable(model, resume_from)  # before any sharding: whole tensors into whole parameters
    log.info("resumed from %s at step %d", resume_from, state["step"])
    return state


def evaluate_before(run: TrainingRun) -> dict:
    """The metrics at step 0 (``eval_before``: full, loss only, or none), by the first process."""
    before = {}
    if run.d.is_main and run.cfg.eval_before != "none":
        generate = run.cfg.eval_before == "full"
        before, answers, _ = run.evaluate(generate)
        if generate:
            _write_json(run.run_dir / "answers_before.json", answers)
        run.tracker.log({"step": 0, **before})
    distributed.barrier(run.d)
    return before


def touch_every_trainable_parameter(module: MultimodalLM, args, hidden: torch.Tensor) -> torch.Tensor:
    """Forward hook. Every trainable parameter gets a gradient, zero when the batch did not use it
    (no image in it, say): updates then do not depend on how a step's samples are spread over
    processes, and no process waits for a gradient that is not coming. Added inside forward,
    where FSDP2 has the parameters gathered."""
    return hidden + distributed.touch_all(module)


def forward_backward(run: TrainingRun, train_model: torch.nn.Module, micro_batches: list) -> tuple[float, float]:
    """One step's gradients, reduced over processes and clipped; returns the step's loss and the
    gradient norm before clipping."""
    d, device = run.d, run.device
    # Normalise by the label tokens of the whole step (all processes, all micro-batches),
    # not per micro-batch: long and short answers then weigh the same however the step is
    # split. DDP averages gradients over processes, hence the factor world_size.
    units = (answer_turns(b.labels) if run.per_turn else b.num_label_tokens for b in micro_batches)
    step_tokens = distributed.sum_across(d, sum(units), device)
    loss_sum = 0.0
    for i, batch in enumerate(micro_batches):
        sync = i == len(micro_batches) - 1
        with distributed.gradient_sync(train_model, d, sync), autocast(device, run.cfg.precision):
            hidden = train_model(batch)
            loss = next_token_loss_sum(hidden, batch.labels, run.model.output_head, run.per_turn) / max(step_tokens, 1)
        (loss * d.world_size).backward()
        loss_sum += loss.item()
    if run.sharded:
        distributed.all_reduce_replicated(run.model, d)
    loss_sum = distributed.sum_across(d, loss_sum, device)
    return loss_sum, distributed.clip_grad_norm(run.model, run.cfg.max_grad_norm)


def passes_nonfinite_guard(
    progress: Progress, loss: float, grad_norm: float, cfg: TrainerConfig, run_dir: Path
) -> bool:
    """The non-finite guard: whether the step's update may be applied. A NaN / inf loss or gradient
    norm skips it (counted), or stops the run (``on_nonfinite=stop``, or too many in a row)."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        progress.skipped_in_a_row = 0
        progress.last_loss = loss
        return True
    progress.skipped_steps += 1
    progress.skipped_in_a_row += 1
    message = f"step {progress.step}: non-finite loss ({loss}) or gradient norm ({grad_norm})"
    if cfg.on_nonfinite == "stop" or progress.skipped_in_a_row > cfg.max_nonfinite_skips:
        raise NonFiniteLossError(
            f"{message}; stopping (trainer.on_nonfinite={cfg.on_nonfinite}, "
            f"{progress.skipped_in_a_row} in a row). {divergence_advice(run_dir)}"
        )
    log.warning("%s: update skipped (%d in a row)", message, progress.skipped_in_a_row)
    return False


def log_due(done: int, cfg: TrainerConfig) -> bool:
    return done % cfg.log_every == 0 or done == cfg.max_steps


def eval_due(done: int, cfg: TrainerConfig) -> bool:
    return done % cfg.eval_every == 0 and done != cfg.max_steps  # the last step's comes after the loop


def save_due(done: int, cfg: TrainerConfig) -> bool:
    return done % cfg.save_every == 0 or done == cfg.max_steps


def log_step(run: TrainingRun, progress: Progress, loss: float, grad_norm: float, lr: float) -> None:
    seconds = time.perf_counter() - progress.started
    run.tracker.log(
        {
            "step": progress.step,
            "train/loss": loss,
            "train/grad_norm": grad_norm,
            "train/skipped_steps": progress.skipped_steps,
            "lr": lr,
            "tokens/s": run.d.world_size * progress.tokens_seen / seconds,
        },
    )


def evaluate_in_loop(run: TrainingRun, done: int, bar: tqdm) -> None:
    """By the first process alone, or by every process in step when sharded."""
    if not (run.d.is_main or run.sharded):
        return
    with distributed.whole(run.model, run.sharded):
        metrics, answers, _ = run.evaluate()
    if run.d.is_main:
        if answers:  # each evaluation's answers, to read how they changed along the run
            _write_json(run.run_dir / f"answers_step-{done:07d}.json", answers)
        run.tracker.log({"step": done, **metrics})
        bar.write(f"step {done}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))


def save(run: TrainingRun, progress: Progress, stream, optimizer, scheduler, before: dict) -> None:
    """A checkpoint with every process's data position, written by the first process."""
    done = progress.step
    data_states = distributed.gather_objects(run.d, stream.state())
    payload = gather_checkpoint(run.model, optimizer) if run.sharded else None  # every process gathers
    if run.d.is_main:
        save_checkpoint(
            run.run_dir,
            done,
            run.model,
            optimizer,
            scheduler,
            data_states[0] if len(data_states) == 1 else {"per_rank": data_states},
            run.cfg.keep_last,
            extra={"before": before, "skipped_steps": progress.skipped_steps},
            payload=payload,
        )
    distributed.barrier(run.d)


def evaluate_at_end(run: TrainingRun) -> tuple[dict, dict]:
    """The final metrics and scores, and the benchmarks' (``trainer.benchmarks``); the first process
    writes the answers and closes the metrics log."""
    after, scores = {}, {}
    if run.d.is_main or run.sharded:
        with distributed.whole(run.model, run.sharded):
            after, answers, scores = run.evaluate()
            if run.cfg.benchmarks:
                after, scores = score_benchmarks(run, after, scores, answers)
    if run.d.is_main:
        _write_json(run.run_dir / "answers_after.json", answers)
        run.tracker.log({"step": run.cfg.max_steps, **after})
        run.tracker.close()
    distributed.barrier(run.d)
    return after, scores


def score_benchmarks(run: TrainingRun, after: dict, scores: dict, answers: dict) -> tuple[dict, dict]:
    """The benchmarks answered and scored as ``mmit.eval --benchmark`` does (the same code); their
    answers join ``answers``, a test-dev set's EvalAI file goes to the run folder."""
    from mmit.benchmarks import load_benchmarks

    model = run.model.eval()
    predictions, swapped, benchmarks, submissions = evaluate_benchmarks(
        model,
        run.tokenizer,
        load_benchmarks(run.cfg.benchmarks),
        GenerationOptions.from_setting(run.cfg.max_new_tokens),
        batch_size=run.cfg.eval_batch_size,
        swap_media=run.cfg.swap_media,
        seed=run.cfg.seed,
        autocast_dtype=autocast_dtype(run.cfg.precision),
        preprocess=run.collate.preprocess,
    )
    answers.update(answers_by_set(predictions, swapped))
    if run.d.is_main:
        for name, rows in submissions.items():
            _write_json(run.run_dir / f"{name}_submission.json", rows)
    return {**after, **benchmark_metrics(benchmarks)}, {**scores, "benchmarks": benchmarks}


FLOPS_FORMULA = "6 x N x tokens / s, N: LLM + projector parameters (not the encoders), tokens: not padding"


def per_token_parameters(model: MultimodalLM) -> int:
    """N of the FLOP estimate: the parameters every token goes through (shared ones once)."""
    modules = (model.base_llm, *model.projectors.values())
    return sum(p.numel() for p in {id(p): p for m in modules for p in m.parameters()}.values())


def run_summary(run: TrainingRun, progress: Progress, elapsed: float, before: dict, after: dict, scores: dict) -> dict:
    d, device, seconds = run.d, run.device, max(elapsed, 1e-9)
    tokens, batch_tokens, label_tokens, hits, misses = (
        distributed.sum_across(d, n, device)
        for n in (
            progress.tokens_seen,
            progress.batch_tokens,
            progress.label_tokens,
            progress.cache_hits,
            progress.cache_misses,
        )
    )
    n = per_token_parameters(run.model)
    return {
        "steps": run.cfg.max_steps,
        "resumed_from_step": progress.start_step,
        "processes": d.world_size,
        "device": str(device),
        "precision": run.cfg.precision,
        "compiled": run.cfg.compile,
        "pack_length": run.cfg.pack_length,  # as resolved: 0 when padded
        "train_seconds": elapsed,
        "tokens_per_second": tokens / seconds,
        "label_tokens_per_second": label_tokens / seconds,
        "padding_share": (batch_tokens - tokens) / max(batch_tokens, 1),
        "feature_cache_hits": int(hits),
        "feature_cache_misses": int(misses),
        "model_flops_per_second": 6 * n * tokens / seconds,
        "model_flops_formula": FLOPS_FORMULA,
        "model_flops_parameters": n,
        "final_train_loss": progress.last_loss,
        "skipped_steps": progress.skipped_steps,
        "before": before,
        "after": after,
        "grounding": scores.get("grounding", {}),
        "vqa_normalisation": run.cfg.vqa_normalisation,
        "benchmarks": scores.get("benchmarks", {}),
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
