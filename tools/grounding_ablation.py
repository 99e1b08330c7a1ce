"""Which settings make the main job look at its images: one training run per setting, side by side.

    python tools/grounding_ablation.py --runs baseline layer14 ... [--root /tmp/ablation] [--per-task 100]
    python tools/grounding_ablation.py --list

Every run is ``python -m mmit.train +recipe=vqa <the run's overrides>`` with the frozen encoder's
features cached (so steps are cheap), no evaluation before training, and a final evaluation of
the held-out-template set only, ``--per-task`` samples per task, each answered with its own image
and with another's. Each run's row (per-task score, media dependence, blind prior, steps,
minutes) is appended to ``<root>/results.jsonl`` and the table of all rows so far is printed as
Markdown (``--out`` writes it to a file too).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

TASKS = ("vqa_short", "vqa_yesno", "vqa_multiple_choice", "caption_brief")

# name -> (what it tests, overrides on top of +recipe=vqa)
RUNS: dict[str, tuple[str, list[str]]] = {
    "baseline": ("the recipe as it is", []),
    "layer14": ("EfficientNet block 14 (192 ch) instead of the head, pooled 4x4", ["vision_encoder.layer=14"]),
    "layer14_7x7": (
        "block 14 at its full 7x7 grid (49 tokens)",
        ["vision_encoder.layer=14", "vision_encoder.pool_to=null"],
    ),
    "head_7x7": ("the head at its full 7x7 grid (49 tokens)", ["vision_encoder.pool_to=null"]),
}


def experiment_overrides(per_task: int) -> list[str]:
    return [
        "feature_cache=auto",
        "trainer.eval_before=none",
        "~data.source.eval.seen",
        "~data.source.eval.heldout_tasks",
        f"trainer.generate_samples={per_task}",
        "trainer.save_every=100000",
    ]


def run_one(name: str, overrides: list[str], root: Path, per_task: int) -> dict:
    run_dir = root / name
    command = [
        sys.executable,
        "-m",
        "mmit.train",
        "+recipe=vqa",
        *experiment_overrides(per_task),
        *overrides,
        f"hydra.run.dir={run_dir}",
    ]
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    with open(root / f"{name}.log", "w") as log:
        subprocess.run(
            command, check=True, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TQDM_MININTERVAL": "30"}
        )
    minutes = (time.perf_counter() - started) / 60
    summary = json.loads((run_dir / "summary.json").read_text())
    heldout = summary["grounding"].get("heldout_templates", {})
    row = {
        "name": name,
        "overrides": overrides,
        "steps": summary["steps"],
        "train_minutes": summary["train_seconds"] / 60,
        "minutes": minutes,
        "tokens_per_second": summary["tokens_per_second"],
        "tasks": {
            task: {k: heldout[task].get(k) for k in ("n", "score", "dependence", "prior", "prior_question_type")}
            for task in TASKS
            if task in heldout
        },
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    with open(root / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def table(rows: list[dict]) -> str:
    def cell(row: dict, task: str) -> str:
        t = row["tasks"].get(task)
        if not t:
            return "–"
        prior = max(v for v in (t.get("prior"), t.get("prior_question_type")) if v is not None)
        return f"{t['score']:.2f} / {t['dependence']:+.2f} / {prior:.2f}"

    lines = [
        "| run | overrides | steps | minutes (train / all) | "
        + " | ".join(f"{t}: score / dependence / prior" for t in TASKS)
        + " |",
        "|---|---|---|---|" + "---|" * len(TASKS),
    ]
    for r in rows:
        overrides = " ".join(f"`{o}`" for o in r["overrides"]) or "–"
        lines.append(
            f"| {r['name']} | {overrides} | {r['steps']} | {r['train_minutes']:.1f} / {r['minutes']:.1f} | "
            + " | ".join(cell(r, t) for t in TASKS)
            + " |"
        )
    n = {t: r["tasks"][t]["n"] for r in rows[-1:] for t in r["tasks"]}
    lines.append("")
    lines.append("Samples per task (held-out templates): " + ", ".join(f"{t} {c}" for t, c in n.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", default=[], help="named runs (see --list), in order")
    p.add_argument("--custom", nargs="+", default=[], metavar="NAME=OVERRIDES", help="e.g. lr3='trainer.lr=3e-4'")
    p.add_argument("--root", type=Path, default=Path("runs/grounding_ablation"))
    p.add_argument("--per-task", type=int, default=100, help="held-out samples per task in the final evaluation")
    p.add_argument("--out", type=Path, help="also write the Markdown table here")
    p.add_argument("--list", action="store_true")
    args = p.parse_args(argv)
    if args.list:
        for name, (what, overrides) in RUNS.items():
            print(f"{name:24s} {what}: {' '.join(overrides) or '(none)'}")
        return []
    args.root.mkdir(parents=True, exist_ok=True)
    todo = [(name, RUNS[name][1]) for name in args.runs]
    for item in args.custom:
        name, _, overrides = item.partition("=")
        todo.append((name, overrides.split()))
    for name, overrides in todo:
        print(json.dumps(run_one(name, overrides, args.root, args.per_task)), flush=True)
    rows = [json.loads(line) for line in (args.root / "results.jsonl").read_text().splitlines()]
    text = table(rows)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return rows


if __name__ == "__main__":
    main()
