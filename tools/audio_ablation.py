"""Which settings make the audio job hear what is said: one training run per setting, side by side.

    python tools/audio_ablation.py --custom NAME='OVERRIDES' ... [--root runs/audio_ablation]
    python tools/audio_ablation.py --runs baseline ... ; python tools/audio_ablation.py --list
    python tools/audio_ablation.py --table        # the table of every row recorded so far

Every run is ``python -m mmit.train +recipe=audio_qa <overrides>`` with the frozen encoder's
features cached (so steps are cheap), no evaluation before training, and a final evaluation of
the held-out-voice set only, every sample, each answered with its own clip and with another's
(``--per-task`` to evaluate fewer). ``--curve N`` also evaluates every N steps (learning curve).

Each row: spoken-content QA accuracy (n, 95% interval), media dependence, the blind prior (the
training set's most common answer) and the prior per question kind (its most common answer per
kind: colour, object, number, place, yes/no), accuracy per kind, transcription word accuracy,
steps, wall minutes and CPU minutes. Rows are appended to ``<root>/results.jsonl``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import ablation_runs  # tools/ablation_runs.py, beside this script

SET = "heldout_voices"

# name -> (what it tests, overrides on top of +recipe=audio_qa)
RUNS: dict[str, tuple[str, list[str]]] = {
    "baseline": ("the recipe as it is", []),
}


def question_kind(question: str) -> str:
    """The demo's five question kinds, from the question's wording (mmit.data.demo.speech)."""
    q = question.lower()
    for prefix, kind in (("what colour", "colour"), ("which kind", "object"), ("how many", "number")):
        if q.startswith(prefix):
            return kind
    if q.startswith("where"):
        return "place"
    if q.startswith(("is ", "are ")):
        return "yes/no"
    return "other"


def _question(prompt: str) -> str:
    """The question inside a templated prompt: the line holding a '?'."""
    for line in prompt.splitlines():
        if "?" in line:
            for start in ("What colour", "Which kind", "How many", "Where", "Is the", "Are the"):
                if start in line:
                    return line[line.index(start) :]
    return prompt


def _norm(text: str) -> str:
    return " ".join(text.lower().strip().rstrip(".").split())


def training_kind_prior(run_dir: Path) -> dict[str, str]:
    """The most common answer per question kind in the seen-voice QA file the run's demo build read."""
    import yaml

    from mmit.build import compose_recipe

    source = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["source"]
    folder = Path(compose_recipe(source["recipe"], list(source.get("overrides") or [])).prepare.out_dir)
    counts: dict[str, Counter] = {}
    for line in (folder / "annotations/seen/audio_qa.jsonl").read_text().splitlines():
        record = json.loads(line)
        counts.setdefault(question_kind(record["question"]), Counter())[_norm(record["answer"])] += 1
    return {kind: c.most_common(1)[0][0] for kind, c in counts.items()}


def per_kind(answers: list[dict], prior: dict[str, str]) -> dict[str, dict]:
    """Accuracy with own and swapped media, and the kind prior, per question kind."""
    out: dict[str, dict] = {}
    for a in answers:
        if a["task"] != "audio_qa":
            continue
        kind = question_kind(_question(a["prompt"]))
        row = out.setdefault(kind, {"n": 0, "own": 0, "swapped": 0, "prior": 0})
        ref = _norm(a["reference"])
        row["n"] += 1
        row["own"] += _norm(a["prediction"]) == ref
        row["swapped"] += _norm(a.get("prediction_swapped_media", "")) == ref
        row["prior"] += prior.get(kind) == ref
    return {k: {"n": v["n"], **{m: v[m] / v["n"] for m in ("own", "swapped", "prior")}} for k, v in out.items()}


def curve(run_dir: Path) -> list[dict]:
    """(step, audio_qa accuracy, dependence, word accuracy) from every in-loop evaluation."""
    points = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        key = f"eval/{SET}/audio_qa/accuracy"
        if key in m:
            points.append(
                {
                    "step": m["step"],
                    "audio_qa": m[key],
                    "dependence": m.get(f"eval/{SET}/audio_qa/dependence"),
                    "word_accuracy": m.get(f"eval/{SET}/audio_transcription/word_accuracy"),
                }
            )
    return points


def experiment_overrides(per_task: int, curve_every: int) -> list[str]:
    return [
        "feature_cache=auto",
        "trainer.eval_before=none",
        "~data.source.eval.seen",
        "~data.source.eval.heldout_templates",
        f"trainer.generate_samples={per_task}",
        "trainer.save_every=100000",
        f"trainer.eval_every={curve_every or 100000}",
    ]


def run_one(
    name: str, overrides: list[str], root: Path, per_task: int, curve_every: int, script: Path | None = None
) -> dict:
    run_dir = root / name
    trainer = [str(script)] if script else ["-m", "mmit.train"]
    command = [*trainer, "+recipe=audio_qa", *experiment_overrides(per_task, curve_every), *overrides]
    minutes, cpu_minutes = ablation_runs.train([*command, f"hydra.run.dir={run_dir}"], root / f"{name}.log")
    summary = json.loads((run_dir / "summary.json").read_text())
    return row_of(name, overrides, run_dir, summary, minutes, cpu_minutes)


def row_of(name: str, overrides: list[str], run_dir: Path, summary: dict, minutes: float, cpu_minutes: float) -> dict:
    g = summary["grounding"].get(SET, {})
    answers = json.loads((run_dir / "answers_after.json").read_text()).get(SET, [])
    keep = (
        "n",
        "score",
        "ci95",
        "dependence",
        "dependence_ci95",
        "prior",
        "prior_answer",
        "loss",
        "loss_swapped_media",
    )
    return ablation_runs.row(
        name,
        overrides,
        summary,
        minutes,
        cpu_minutes,
        audio_qa={k: g.get("audio_qa", {}).get(k) for k in keep},
        transcription={k: g.get("audio_transcription", {}).get(k) for k in keep},
        per_kind=per_kind(answers, training_kind_prior(run_dir)),
        projector_align=summary.get("projector_align"),
        curve=curve(run_dir),
    )


def kind_prior(row: dict) -> float:
    kinds = row["per_kind"]
    return sum(k["prior"] * k["n"] for k in kinds.values()) / max(1, sum(k["n"] for k in kinds.values()))


def table(rows: list[dict]) -> str:
    lines = [
        "| run | overrides | steps | minutes (train / all / CPU) | audio_qa (n, 95% CI) | dependence | "
        "prior (answer / per kind) | per kind: colour, object, number, place, yes/no | transcription word acc. |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        q, t = r["audio_qa"], r["transcription"]
        overrides = " ".join(f"`{o}`" for o in r["overrides"]) or "–"
        kinds = ", ".join(
            f"{r['per_kind'][k]['own']:.2f}" if k in r["per_kind"] else "–"
            for k in ("colour", "object", "number", "place", "yes/no")
        )
        lines.append(
            f"| {r['name']} | {overrides} | {r['steps']} | {r['train_minutes']:.1f} / {r['minutes']:.1f} / "
            f"{r['cpu_minutes']:.1f} | {q['score']:.3f} (n={q['n']}, {q['ci95'][0]:.2f}-{q['ci95'][1]:.2f}) | "
            f"{q['dependence']:+.2f} | {q['prior']:.2f} / {kind_prior(r):.2f} | {kinds} | "
            f"{t['score']:.2f} (n={t['n']}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = ablation_runs.parser(__doc__, "runs/audio_ablation", 0, "held-out samples per task (0 = all)")
    p.add_argument("--curve", type=int, default=0, help="also evaluate every this many steps")
    p.add_argument("--train-script", type=Path, help="run this copy of mmit/train.py instead (e.g. with a patch)")
    p.add_argument("--record", nargs=2, metavar=("NAME", "RUN_DIR"), help="add a row for a finished run")
    args = p.parse_args(argv)
    todo = ablation_runs.planned(args, RUNS)
    if args.list:
        return []
    args.root.mkdir(parents=True, exist_ok=True)
    if args.record:
        run_dir = Path(args.record[1])
        summary = json.loads((run_dir / "summary.json").read_text())
        ablation_runs.record(args.root, row_of(args.record[0], [], run_dir, summary, float("nan"), float("nan")))
    for name, overrides in todo:
        ablation_runs.record(
            args.root, run_one(name, overrides, args.root, args.per_task, args.curve, args.train_script)
        )
    return ablation_runs.report(args.root, table, args.out)


if __name__ == "__main__":
    main()
