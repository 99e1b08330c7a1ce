"""Does memory stay flat over a long run? RSS of a 2,000-step tiny training run, sampled from outside.

    python tools/bench_memory.py [--steps 2000] [--out docs/bench]

Trains the tiny text recipe (random tiny Llama + LoRA, in-memory data, checkpoints every 250
steps, in-loop evaluation every 500) in a child process and reads its resident set size from
/proc every 0.2 s, the step from its metrics log. The figure of merit is the growth of RSS from
the end of warm-up (10% of the steps) to the end of training; the goal is under 5%.
Writes memory.md (the table) and memory.png (RSS against the step) into --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--out", type=Path, default=Path("docs/bench"))
    args = p.parse_args()
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
        time.sleep(0.2)
    if proc.returncode != 0:
        raise SystemExit(f"the training run failed (exit {proc.returncode}); see {run_dir}")

    training = [(t, s, r) for t, s, r in samples if 0 < s < args.steps]
    log_every = 10  # the step in metrics.jsonl moves in steps of this
    warm = [r for _, s, r in training if s <= max(args.steps // 10, log_every)]
    end = [r for _, s, r in training if s >= args.steps - max(args.steps // 20, log_every)]
    start_rss, end_rss, peak = warm[-1], max(end), max(r for _, _, r in training)
    growth = (end_rss - start_rss) / start_rss
    verdict = "meets" if growth < 0.05 else "misses"

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
            f"`python tools/bench_memory.py --steps {args.steps}` on {platform.processor() or platform.machine()}, "
            f"{time.strftime('%Y-%m-%d')}: the tiny text recipe (LoRA, in-memory data), checkpoints every 250 "
            "steps and in-loop evaluation every 500, RSS of the training process read from /proc every 0.2 s.",
            "",
            "| after warm-up (step ≤ 10%) | at the end (last 5%) | peak | growth | goal < 5% |",
            "|---|---|---|---|---|",
            f"| {start_rss:.0f} MiB | {end_rss:.0f} MiB | {peak:.0f} MiB | {100 * growth:+.1f}% | {verdict} |",
            "",
            f"Training took {samples[-1][0]:.0f} s in all. ![RSS against the step](memory.png)",
            "",
        ]
    )
    (args.out / "memory.md").write_text(table, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
