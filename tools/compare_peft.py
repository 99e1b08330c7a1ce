"""Compare the LLM tuning methods (`peft=...`) on the demo VQA task with a reduced budget.

Each method is one `python -m mmit.train +recipe=vqa peft=<method>` in its own process and run
directory (runs/compare_peft/<method>), so its peak memory is that process's RSS high-water mark.
The table goes to docs/peft_methods.md:

    nice -n 10 python tools/compare_peft.py                      # every method
    python tools/compare_peft.py --methods lora adapter --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The learning rate of the LLM's trained weights per method (the projector keeps the recipe's 1e-3):
# the recipe's LoRA rate, or what each method's paper or common practice uses for short runs.
METHODS: dict[str, list[str]] = {
    "frozen": [],  # the projector alone
    "lora": [],  # 5e-4, the recipe's
    "dora": [],
    "ia3": ["trainer.lr=3e-3"],  # the IA3 paper's rate
    "prompt_tuning": ["trainer.lr=3e-2"],  # soft prompts need far larger steps than weights
    "bitfit": ["trainer.lr=1e-3"],
    "adapter": ["trainer.lr=1e-3"],
    "full": ["trainer.lr=5e-5"],
}
VQA_MODELS = (
    ": SmolLM2-135M-Instruct (the weights a method leaves frozen kept in bf16, `frozen_dtype=auto`),"
    " frozen EfficientNet-Lite0 (16 tokens per image) and the MLP projector (1.07M parameters, trained in every row)"
)
HELD_OUT = "heldout_templates"  # the one evaluation set kept: instructions worded as never in training


def budget_overrides(args: argparse.Namespace) -> list[str]:
    return [
        f"trainer.max_steps={args.steps}",
        f"trainer.warmup_steps={max(1, args.steps // 10)}",
        "trainer.eval_every=100000",  # evaluate before and after only
        f"trainer.eval_batches={args.eval_batches}",
        f"trainer.generate_samples={args.samples}",
        f"trainer.max_new_tokens={args.max_new_tokens}",
        "trainer.save_every=100000",  # one checkpoint, at the end
        "~data.source.eval.seen",
        "~data.source.eval.heldout_tasks",
    ]


@dataclass
class Result:
    method: str
    llm_trainable: int
    total_trainable: int
    peak_rss_mib: float
    step_seconds: float
    wall_seconds: float
    loss_before: float
    loss_after: float
    exact_match: float
    vqa_accuracy: float
    vqa_accuracy_before: float


def _trainable(table: str, component: str) -> int:
    """The trainable count of a row of the run's parameter table (summary.json "parameters")."""
    for line in table.splitlines():
        cells = line.split()
        if cells and cells[0] == component:
            return int(next(c for c in cells[1:] if c[0].isdigit()).replace(",", ""))
    raise ValueError(f"no {component!r} row in the parameter table")


def run_method(method: str, run_dir: Path, overrides: list[str], recipe: str = "vqa") -> Result:
    """Train one method in a child process; read its summary and its peak RSS."""
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: resuming would skip the steps we time
    run_dir.mkdir(parents=True)
    command = [sys.executable, "-m", "mmit.train", f"+recipe={recipe}", f"peft={method}", *overrides]
    command += [*METHODS[method], f"hydra.run.dir={run_dir}"]
    started = time.perf_counter()
    with open(run_dir / "train.log", "w") as log:
        child = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        # wait4 gives this child's own resource usage, not the maximum over all children.
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"{method}: exit status {child.returncode}; see {run_dir / 'train.log'}")
    summary = json.loads((run_dir / "summary.json").read_text())
    before, after = summary["before"], summary["after"]
    key = f"eval/{HELD_OUT}"
    return Result(
        method=method,
        llm_trainable=_trainable(summary["parameters"], "llm"),
        total_trainable=_trainable(summary["parameters"], "total"),
        peak_rss_mib=usage.ru_maxrss / 1024,  # KiB on Linux
        step_seconds=summary["train_seconds"] / (summary["steps"] - summary["resumed_from_step"]),
        wall_seconds=time.perf_counter() - started,
        loss_before=before[f"{key}/loss"],
        loss_after=after[f"{key}/loss"],
        exact_match=after.get(f"{key}/exact_match", float("nan")),
        vqa_accuracy=after.get(f"{key}/vqa_accuracy", float("nan")),
        vqa_accuracy_before=before.get(f"{key}/vqa_accuracy", float("nan")),
    )


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def markdown(results: list[Result], args: argparse.Namespace, load: tuple[float, float]) -> str:
    rows = [
        "| method | LLM trainable | all trainable | peak RSS (MiB) | step (s) | held-out loss before -> after "
        "| exact match | VQA accuracy (before -> after) | wall (min) |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in results:
        rows.append(
            f"| `{r.method}` | {r.llm_trainable:,} | {r.total_trainable:,} | {r.peak_rss_mib:,.0f} | "
            f"{r.step_seconds:.2f} | {r.loss_before:.3f} -> {r.loss_after:.3f} | {100 * r.exact_match:.1f}% | "
            f"{100 * r.vqa_accuracy_before:.1f}% -> {100 * r.vqa_accuracy:.1f}% | {r.wall_seconds / 60:.1f} |"
        )
    own = ", ".join(f"`{m}` {o[0].split('=')[1]}" for m, o in METHODS.items() if o)
    recipe = " and ".join(f"`{m}`" for m, o in METHODS.items() if not o and m != "frozen")
    total = sum(r.wall_seconds for r in results) / 60
    return f"""# Efficient-tuning methods on the demo VQA task

Written by `python tools/compare_peft.py` ({time.strftime("%Y-%m-%d")}). Each row is one
`python -m mmit.train +recipe={args.recipe} peft=<method>` run{VQA_MODELS if args.recipe == "vqa" else ""},
on {_cpu_name()} ({os.cpu_count()} cores), fp32 compute. The whole comparison took {total:.0f} minutes.

**A reduced budget, not the recipe's:** {args.steps} steps of 8 conversations instead of 150, and
evaluation only on `val_heldout_templates` (instructions worded as never in training): loss on
its first {8 * args.eval_batches} conversations, answers of at most {args.max_new_tokens} tokens
generated for its first {args.samples}. Overrides:
`{" ".join(budget_overrides(args))}`.
The budget was cut to fit 2 CPU cores shared with other jobs: 30 steps and 48 answers per
method would have taken over 90 minutes there. At this budget the
table shows how fast each method starts to learn the task and its answer format, not where it
ends up; `python tools/compare_peft.py --steps 150 --samples 96` is closer to the recipe.

{chr(10).join(rows)}

- **Trainable**: the LLM's trained weights; "all" adds the projector.
- **Peak RSS**: the high-water resident memory of the run's process (`wait4` rusage): model,
  optimizer state, data and evaluation. On a GPU it would count host memory only.
- **Step**: training seconds per step, including the one checkpoint written at the end. The
  1-minute load average was {load[0]:.1f} at the start and {load[1]:.1f} at the end; on this shared
  machine step times vary by tens of percent between runs, so compare them only roughly.
- **Exact match** over all generated answers; **VQA accuracy** (official VQAv2 measure) over the
  short-answer and yes/no questions among them. With this few samples a difference of a few
  points is noise.
- **Learning rate of the LLM's weights**: {own}; {recipe} keep the recipe's (vqa: 5e-4). The
  projector keeps the recipe's rate (vqa: 1e-3) in every row. These are the usual rates of each
  method, not tuned here.
- DoRA, IA3 and LoRA go through peft; prompt tuning (20 virtual tokens), BitFit (zero biases
  added to every linear layer of the bias-free Llama) and the bottleneck adapters (64 wide,
  after each MLP) are mmit's own (`mmit/models/tuning.py`).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--recipe", default="vqa", help="vqa_tiny: a quick check of the tool itself")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--samples", type=int, default=32, help="generated answers on the held-out set")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="enough for the short VQA answers")
    parser.add_argument("--eval-batches", type=int, default=1, help="batches of 8 for the held-out loss")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "compare_peft")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "peft_methods.md")
    args = parser.parse_args()

    load_start = os.getloadavg()[0]
    results = []
    for method in args.methods:
        result = run_method(method, args.runs / method, budget_overrides(args), args.recipe)
        results.append(result)
        print(
            f"{method}: {result.llm_trainable:,} LLM parameters trained, {result.peak_rss_mib:,.0f} MiB peak, "
            f"{result.step_seconds:.2f} s/step, VQA accuracy {100 * result.vqa_accuracy:.1f}% "
            f"({result.wall_seconds / 60:.1f} min)",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(markdown(results, args, (load_start, os.getloadavg()[0])), encoding="utf-8")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
