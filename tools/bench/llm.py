"""B3, B5 and B6: one LLM's training step (LoRA or full) on text batches; peak memory is measured in a
fresh child process per variant (tools/bench_perf.py re-run with ``--child``)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from bench.harness import (
    REPO,
    in_turn,
    interleaved,
    matmul_peak,
    median,
    peak_rss_mib,
    reset_peak_rss,
    rss_mib,
    share,
    spread,
    timed,
)
from bench.models import (
    LABEL_FRACTION,
    LOSSES,
    lora_config,
    make_optimizer,
    precision_for,
    text_batch,
    text_model,
    training_step,
)
from bench.plan import Plan
from bench.report import Result

PERF_SCRIPT = REPO / "tools" / "bench_perf.py"  # what a child process runs, with --child


# --- peak memory, in a fresh child process per variant ----------------------------------------


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
    from mmit.training.device import autocast  # noqa: F401

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


def start_children(tasks: list[dict], tmp: Path) -> list:
    """Start each task in its own fresh process, all at once (memory does not depend on the others)."""
    started = []
    for i, kwargs in enumerate(tasks):
        err = open(tmp / f"child-{time.monotonic_ns()}-{i}.err", "w+")  # noqa: SIM115 (closed in finish_children)
        command = [sys.executable, str(PERF_SCRIPT), "--threads", str(torch.get_num_threads())]
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
    """Answers of the benchmark's memory children: started early by ``--quick`` (see ``bench.perf.main``), or now,
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


def _memory_words(device: str) -> str:
    if device == "cuda":
        return "torch.cuda.max_memory_allocated in a fresh process per variant"
    return (
        "CPU: RSS high-water mark of a measured step after a warm-up step, in a fresh process per variant "
        "whose C allocator returns freed tensors at once (MALLOC_MMAP_THRESHOLD_=65536); 'training memory' "
        "is that peak less the RSS after importing torch and mmit"
    )


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
        for label in in_turn(labels, rep):
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
