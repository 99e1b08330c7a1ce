"""Does memory stay flat over a long run? RSS of a 2,000-step tiny training run, sampled from outside.

    python tools/bench_memory.py [--steps 2000] [--out docs/bench]

Trains the tiny text recipe (random tiny Llama + LoRA, in-memory data, checkpoints every 250
steps, in-loop evaluation every 500) in a child process and reads its resident set size from
/proc every 0.5 s, the step from its metrics log. The figure of merit is the growth of the median RSS from
just after warm-up (steps 10-20%) to the end (last 10%); the goal is under 5%. Writes memory.md
(the table), memory.png (RSS against the step) and memory.csv (every sample) into --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import processor, rss_mib
from bench.report import markdown_table
from mmit.paths import atomic_write_text

MIN_STEPS = 500


def last_step(metrics: Path) -> int:
    if not metrics.exists():
        return 0
    lines = metrics.read_text().splitlines()
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            continue
    return 0


def measure(training: list[tuple[float, int, float]], steps: int) -> dict:
    """Growth between the median RSS just after warm-up (steps 10-20%) and over the last 10%.

    Medians of windows, not single samples: in-loop evaluation and checkpointing raise RSS for a
    moment, and one sample taken then would read as growth. The slope of a least-squares line
    through every sample after warm-up says whether anything keeps growing.
    """

    def median_between(lo: float, hi: float) -> float:
        window = [r for _, s, r in training if lo * steps < s <= hi * steps]
        if not window:
            raise ValueError(f"no RSS sample between steps {lo * steps:g} and {hi * steps:g}: run more --steps")
        return statistics.median(window)

    after = [(s, r) for _, s, r in training if s > 0.1 * steps]
    mean_s = statistics.fmean(s for s, _ in after)
    mean_r = statistics.fmean(r for _, r in after)
    slope = sum((s - mean_s) * (r - mean_r) for s, r in after) / sum((s - mean_s) ** 2 for s, _ in after)
    start, end = median_between(0.1, 0.2), median_between(0.9, 1.0)
    return {
        "start": start,
        "end": end,
        "peak": max(r for _, _, r in training),
        "growth": (end - start) / start,
        "mib_per_1000_steps": 1000 * slope,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--out", type=Path, default=Path("docs/bench"))
    args = p.parse_args(argv)
    if args.steps < MIN_STEPS:  # RSS is read every 0.5 s: a shorter run leaves its windows without a reading
        p.error(f"--steps must be at least {MIN_STEPS}, not {args.steps}: the tiny run takes ~15 steps a second")
    run_dir = Path(tempfile.mkdtemp(prefix="mmit-bench-memory-")) / "run"
    overrides = [
        "+recipe=text_tiny",
        f"trainer.max_steps={args.steps}",
        "trainer.log_every=10",
        "trainer.save_every=250",
        "trainer.eval_every=500",
        "trainer.generate_samples=4",
        "trainer.precision=fp32",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.Popen([sys.executable, "-m", "mmit.train", *overrides], stdout=subprocess.DEVNULL)
    samples: list[tuple[float, int, float]] = []  # (seconds, step, RSS MiB)
    started = time.monotonic()
    while proc.poll() is None:
        rss = rss_mib(proc.pid)
        if rss is not None:
            samples.append((time.monotonic() - started, last_step(run_dir / "metrics.jsonl"), rss))
        time.sleep(0.5)
    if proc.returncode != 0:
        raise SystemExit(f"the training run failed (exit {proc.returncode}); see {run_dir}")

    training = [(t, s, r) for t, s, r in samples if 0 < s < args.steps]
    m = measure(training, args.steps)
    verdict = "meets" if m["growth"] < 0.05 else "misses"
    start_rss, end_rss, peak, growth = m["start"], m["end"], m["peak"], m["growth"]

    args.out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.plot([s for _, s, _ in training], [r for _, _, r in training], lw=1)
    ax.axhline(start_rss * 1.05, color="grey", ls="--", lw=0.8, label="+5% of the RSS after warm-up")
    ax.set_xlabel("step")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title(f"Resident memory over {args.steps} tiny training steps")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out / "memory.png", dpi=120)
    table = "\n".join(
        [
            "# Memory over a long run",
            "",
            f"`python tools/bench_memory.py --steps {args.steps}` on {processor()}, "
            f"{time.strftime('%Y-%m-%d')}: the tiny text recipe (LoRA, in-memory data), checkpoints every 250 "
            "steps and in-loop evaluation every 500, RSS of the training process read from /proc every 0.5 s.",
            "",
            "Medians of windows, not single samples: evaluation and checkpoints raise RSS for a moment. "
            "The slope is a least-squares line through every sample after warm-up.",
            "",
            *markdown_table(
                ["median RSS, steps 10-20%", "median RSS, last 10%", "peak", "growth", "slope", "goal < 5%"],
                [
                    [
                        f"{start_rss:.0f} MiB",
                        f"{end_rss:.0f} MiB",
                        f"{peak:.0f} MiB",
                        f"{100 * growth:+.1f}%",
                        f"{m['mib_per_1000_steps']:+.1f} MiB / 1,000 steps",
                        verdict,
                    ]
                ],
            ),
            "",
            f"Training took {samples[-1][0]:.0f} s in all. ![RSS against the step](memory.png)",
            "",
        ]
    )
    atomic_write_text(args.out / "memory.md", table)
    rows = "".join(f"{t:.1f},{s},{r:.1f}\n" for t, s, r in samples)
    atomic_write_text(args.out / "memory.csv", "seconds,step,rss_mib\n" + rows)
    print(table)
