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

# name -> (what it tests, overrides on top of +recipe=vqa)
RUNS: dict[str, tuple[str, list[str]]] = {
    "baseline": ("the recipe as it is", []),
    "layer14": ("EfficientNet block 14 (192 ch) instead of the head, pooled 4x4", ["vision_encoder.layer=14"]),
    "layer14_7x7": (
        "block 14 at its full 7x7 grid (49 tokens)",
        ["vision_encoder.layer=14", "vision_encoder.pool_to=null"],
    ),
    "head_7x7": ("the head at its full 7x7 grid (49 tokens)", ["vision_encoder.pool_to=null"]),
    "k1": (
        "block 14, no system prompt, 2x the LLM's and 3x the projector's learning rate, image after the question",
        [
            "vision_encoder.layer=14",
            "data.system_prompt=none",
            "trainer.lr=1e-3",
            "trainer.lr_per_component={projectors:3e-3}",
            "data.source.overrides=['shaping.media_position=after']",
        ],
    ),
    "qfirst": (
        "block 14, no system prompt, the image after the question, one QA per conversation",
        [
            "vision_encoder.layer=14",
            "data.system_prompt=none",
            "data.source.overrides=['shaping.media_position=after','shaping.qa_per_conversation=1']",
        ],
    ),
    "dense": (
        "block 14, no system prompt, input LayerNorm, 8 questions per image in one conversation, hint once",
        [
            "vision_encoder.layer=14",
            "data.system_prompt=none",
            "projector.input_norm=true",
            "data.source.overrides=['prepare.questions_per_image=8','shaping.qa_per_conversation=8',"
            "'shaping.hint_every_turn=false']",
        ],
    ),
    "dense_vocab": (
        "as dense, with the vocabulary projector (each token a mixture of the LLM's word embeddings)",
        [
            "vision_encoder.layer=14",
            "data.system_prompt=none",
            "projector=vocab",
            "data.source.overrides=['prepare.questions_per_image=8','shaping.qa_per_conversation=8',"
            "'shaping.hint_every_turn=false']",
        ],
    ),
    "layer14_align": (
        "block 14, the projector first aligned to the captions' words (projector_align)",
        ["vision_encoder.layer=14", "+projector_align.steps=600"],
    ),
    "layer14_turn": (
        "block 14, every answer weighing the same in the loss (a yes/no as much as a caption)",
        ["vision_encoder.layer=14", "trainer.loss_weighting=turn"],
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
        task: {k: heldout[task].get(k) for k in ("n", "score", "dependence", "prior", "prior_question_type")}
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


def main(argv: list[str] | None = None) -> list[dict]:
    p = ablation_runs.parser(
        __doc__, "runs/grounding_ablation", 100, "held-out samples per task in the final evaluation"
    )
    args = p.parse_args(argv)
    todo = ablation_runs.planned(args, RUNS)
    if args.list:
        return []
    args.root.mkdir(parents=True, exist_ok=True)
    for name, overrides in todo:
        ablation_runs.record(args.root, run_one(name, overrides, args.root, args.per_task))
    return ablation_runs.report(args.root, table, args.out)


if __name__ == "__main__":
    main()
