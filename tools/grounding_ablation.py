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

import json
from pathlib import Path

import ablation_runs  # tools/ablation_runs.py, beside this script

TASKS = ("vqa_short", "vqa_yesno", "vqa_multiple_choice", "caption_brief")

# name -> (what it tests, overrides on top of +recipe=vqa). The rows in docs/grounding.md name the
# commit they ran at, with the overrides they were given on top of that commit's recipe.
RUNS: dict[str, tuple[str, list[str]]] = {
    "recipe": ("the recipe as it is", []),
    "before": (
        "the recipe before the grounding work: the head's features, no alignment, SmolLM2's system prompt",
        ["vision_encoder.layer=head", "~projector_align", "data.system_prompt=model_default"],
    ),
    "no_align": ("no projector_align", ["~projector_align"]),
    "head": ("EfficientNet's 1280-channel head instead of block 14", ["vision_encoder.layer=head"]),
    "grid_7x7": ("block 14's full 7x7 grid (49 tokens a picture)", ["vision_encoder.pool_to=null"]),
    "turn": ("every answer weighing the same in the loss", ["trainer.loss_weighting=turn"]),
    "vocab": ("the vocabulary projector (tokens as mixtures of word embeddings)", ["projector=vocab"]),
    "lr_2x": (
        "twice the LLM's and the projector's learning rates",
        ["trainer.lr=1e-3", "++trainer.lr_per_component.projectors=2e-3"],
    ),
    "media_after": ("the image after the question", ["data.source.overrides=['shaping.media_position=after']"]),
    "dense": (
        "8 questions per conversation, the answer hint once",
        ["data.source.overrides=['shaping.qa_per_conversation=8','shaping.hint_every_turn=false']"],
    ),
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
        "-m",
        "mmit.train",
        "+recipe=vqa",
        *experiment_overrides(per_task),
        *overrides,
        f"hydra.run.dir={run_dir}",
    ]
    minutes, cpu_minutes = ablation_runs.train(command, root / f"{name}.log")
    summary = json.loads((run_dir / "summary.json").read_text())
    heldout = summary["grounding"].get("heldout_templates", {})
    tasks = {
        task: {
            k: heldout[task].get(k)
            for k in (
                "n",
                "score",
                "dependence",
                "prior",
                "prior_question_type",
                "ranking_auc",
                "ranking_auc_swapped_media",
            )
        }
        for task in TASKS
        if task in heldout
    }
    return ablation_runs.row(name, overrides, summary, minutes, cpu_minutes, tasks=tasks)


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


CURVE_KEYS = (
    "dependence",
    "prior",
    "prior_question_type",
    "loss_dependence",
    "ranking_auc",
    "ranking_auc_swapped_media",
)


def plot_curve(run_dir: Path, out: Path, set_name: str = "heldout_templates") -> list[dict]:
    """Each task's score (solid) and score with swapped media (dashed) at every in-loop evaluation of a run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prefix = f"eval/{set_name}/"
    points = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        tasks = {}
        for key, value in record.items():
            parts = key[len(prefix) :].split("/") if key.startswith(prefix) else []
            if len(parts) == 2 and parts[0] in TASKS and parts[1] not in CURVE_KEYS:
                tasks[parts[0]] = {
                    "metric": parts[1],
                    "score": value,
                    "dependence": record.get(f"{prefix}{parts[0]}/dependence"),
                }
        if tasks:
            points.append({"step": record["step"], "tasks": tasks})
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [3, 1]})
    for i, task in enumerate(t for t in TASKS if any(t in p["tasks"] for p in points)):
        ax = axes[1] if task.startswith("caption") else axes[0]
        steps = [p["step"] for p in points if task in p["tasks"]]
        scores = [p["tasks"][task]["score"] for p in points if task in p["tasks"]]
        swapped = [
            p["tasks"][task]["score"] - (p["tasks"][task]["dependence"] or 0.0) for p in points if task in p["tasks"]
        ]
        colour = f"C{i}"
        ax.plot(steps, scores, "o-", color=colour, label=f"{task} (own image)")
        ax.plot(steps, swapped, "o--", color=colour, alpha=0.6, label=f"{task} (swapped image)")
    axes[0].set_ylabel("accuracy")
    axes[1].set_ylabel("CIDEr-D")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{run_dir.name}: {set_name}, own vs swapped image", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return points


def main(argv: list[str] | None = None) -> list[dict]:
    p = ablation_runs.parser(
        __doc__, "runs/grounding_ablation", 100, "held-out samples per task in the final evaluation"
    )
    p.add_argument("--plot-curve", type=Path, metavar="RUN_DIR", help="draw a run's in-loop curve per task to --out")
    args = p.parse_args(argv)
    if args.plot_curve:
        return plot_curve(args.plot_curve, args.out or args.plot_curve / "grounding_curve.png")
    todo = ablation_runs.planned(args, RUNS)
    if args.list:
        return []
    args.root.mkdir(parents=True, exist_ok=True)
    for name, overrides in todo:
        ablation_runs.record(args.root, run_one(name, overrides, args.root, args.per_task))
    return ablation_runs.report(args.root, table, args.out)


if __name__ == "__main__":
    main()
