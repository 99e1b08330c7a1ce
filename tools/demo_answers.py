"""A demo run's answers by what each question needs: what the model reads from the image, and what not.

    python tools/demo_answers.py <run dir>/answers_after.json [--set heldout_templates] [--seed 0]

Each answer of the image demo (``+recipe=vqa``) is put in a group by its question and by the
scene it asks about (redrawn from the demo's seed, ``mmit.data.demo.scenes.plan_scene``):

- yes/no "Is there a red circle?": the circle present; absent with neither its colour nor its
  shape in the picture; absent with one of them; absent with both elsewhere (only binding colour
  to shape answers these, a bag of the picture's words does not);
- yes/no "Is the red circle on the left?": the named colour unique in the picture (finding the
  object needs no binding, only its place is asked) or shared with another object;
- yes/no checks of one property, "Is there anything red?" and "Is there a circle?"
  (``prepare.kinds`` with ``exists_color`` / ``exists_shape``): the colour or shape present or absent;
- short answers and multiple choice (by letter) by VQA question type; the open "Where is the red
  circle?" (``prepare.kinds=[where]``) also by how many objects the picture holds and whether the
  named colour and shape are each unique in it (picking the object needs no binding when both are).

Each answer is scored as the run scored it (``mmit.scoring.sample_scores``: the task's headline
per sample). For each group: questions, right, the rate, and the rate with another image (chance
for this group). Where the answers carry yes/no margins (log p(yes) - log p(no), written by runs
and ``mmit.eval`` since the ranking AUC), a second table ranks each yes/no kind (presence,
position, one property) by its margin: ROC AUC with own and with another image, 0.5 being chance
whatever the model's bias. Prints Markdown tables; ``--json`` writes the rows too. Reads a run's
``answers_*.json`` or ``mmit.eval``'s ``predictions.jsonl``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from collections import defaultdict
from pathlib import Path

from mmit.data.demo.scenes import plan_scene
from mmit.metrics import VQA_NORMALISATIONS, yes_no_auc
from mmit.scoring import Prediction, sample_scores

PRESENCE = re.compile(r"Is there an? (\w+) (\w+)\?")
POSITION = re.compile(r"Is the (\w+) (\w+) (?:on the \w+|in the middle)\?")
WHERE = re.compile(r"Where is the (\w+) (\w+)[:?]")
ONE_COLOUR = re.compile(r"Is there anything (\w+)\?")
ONE_SHAPE = re.compile(r"Is there an? (\w+)\?")
SAMPLE_ID = re.compile(r"-(\d+)-\d+$")  # vqa-<image id>-<question>


def yes_no_group(prompt: str, objects) -> str | None:
    if found := POSITION.search(prompt):
        color = found.group(1)
        shared = sum(o.color == color for o in objects) > 1
        return f"position yes/no, colour {'shared' if shared else 'unique'}"
    for pattern, name, field in ((ONE_COLOUR, "one colour", "color"), (ONE_SHAPE, "one shape", "shape")):
        if found := pattern.search(prompt):
            present = any(getattr(o, field) == found.group(1) for o in objects)
            return f"{name} yes/no, {'present' if present else 'absent'}"
    if found := PRESENCE.search(prompt):
        color, shape = found.groups()
        if any(o.color == color and o.shape == shape for o in objects):
            return "presence yes/no, present"
        others = any(o.color == color for o in objects) + any(o.shape == shape for o in objects)
        return "presence yes/no, absent: " + ("neither", "colour or shape elsewhere", "both elsewhere")[others]
    return None


def where_groups(prompt: str, objects) -> list[str]:
    if not (found := WHERE.search(prompt)):
        return []
    color, shape = found.groups()
    unique = [
        "unique" if sum(getattr(o, k) == v for o in objects) == 1 else "shared"
        for k, v in (("color", color), ("shape", shape))
    ]
    return [f"where, {len(objects)} object{'s' * (len(objects) > 1)}", f"where, colour {unique[0]}, shape {unique[1]}"]


FIELDS = {f.name for f in dataclasses.fields(Prediction)}


def scored(answer: dict, vqa_normalisation: str) -> tuple[float, float]:
    """The answer's headline score with its own image and with another's, as the run scored them."""
    own = Prediction(**{k: v for k, v in answer.items() if k in FIELDS})
    swapped = dataclasses.replace(own, prediction=answer.get("prediction_swapped_media", ""))
    scores, _ = sample_scores(own.task, [own, swapped], vqa_normalisation)
    return scores[0], scores[1]


def _scenes(seed: int):
    """answer -> the objects of the scene it asks about (each scene redrawn once)."""
    scenes = {}

    def objects(answer: dict):
        image_id = int(SAMPLE_ID.search(answer["id"]).group(1))
        if image_id not in scenes:
            scenes[image_id] = plan_scene(image_id, seed).objects
        return scenes[image_id]

    return objects


def groups(answers: list[dict], seed: int = 0, vqa_normalisation: str = "official") -> dict[str, list[float]]:
    """group -> [questions, right, right with another image]"""
    out: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    objects = _scenes(seed)
    for a in answers:
        if a["task"] == "vqa_yesno":
            names = [yes_no_group(a["prompt"], objects(a))]
        elif a["task"] in ("vqa_short", "vqa_multiple_choice"):
            kind = "short answer" if a["task"] == "vqa_short" else "multiple choice (letter)"
            names = [f"{kind}, {a.get('question_type') or 'other'}"]
            if WHERE.search(a["prompt"]):
                names += where_groups(a["prompt"], objects(a))
        else:
            continue
        own, swapped = scored(a, vqa_normalisation)
        for group in filter(None, names):
            row = out[group]
            row[0] += 1
            row[1] += own
            row[2] += swapped
    return dict(sorted(out.items()))


def rankings(answers: list[dict], seed: int = 0) -> dict[str, list[float]]:
    """yes/no kind ("position yes/no", ...) -> [questions, ranking AUC with own image, with another
    image], over the yes/no answers that carry margins."""
    objects = _scenes(seed)
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for a in answers:
        if a["task"] == "vqa_yesno" and a.get("yes_no_margin") is not None:
            group = yes_no_group(a["prompt"], objects(a))
            by_kind[group.split(",")[0] if group else "other yes/no"].append(a)
    out = {}
    for kind, group in sorted(by_kind.items()):
        references = [a["reference"] for a in group]
        swapped = [a.get("yes_no_margin_swapped_media") for a in group]
        out[kind] = [
            len(group),
            yes_no_auc([a["yes_no_margin"] for a in group], references)[0],
            yes_no_auc(swapped, references)[0] if all(m is not None for m in swapped) else float("nan"),
        ]
    return out


def ranking_table(rows: dict[str, list[float]]) -> str:
    lines = ["| yes/no kind | n | ranking AUC | with another image |", "|---|---|---|---|"]
    lines += [f"| {kind} | {n} | {auc:.3f} | {swapped:.3f} |" for kind, (n, auc, swapped) in rows.items()]
    return "\n".join(lines)


def read_answers(path: Path, set_name: str) -> list[dict]:
    """One set's answers from a run's answers_*.json (set -> list) or mmit.eval's predictions.jsonl."""
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        found = sorted({r["set"] for r in rows})
        answers = [r for r in rows if r["set"] == set_name]
    else:
        by_set = json.loads(path.read_text())
        found, answers = sorted(by_set), by_set.get(set_name, [])
    if set_name not in found:
        raise SystemExit(f"{path}: no set {set_name!r}; it has {found}")
    return answers


def table(rows: dict[str, list[float]]) -> str:
    lines = ["| question | n | right | rate | with another image |", "|---|---|---|---|---|"]
    for group, (n, right, swapped) in rows.items():
        lines.append(f"| {group} | {n} | {right:g} | {right / n:.2f} | {swapped / n:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("answers", type=Path, help="a run's answers_*.json, or predictions.jsonl of mmit.eval")
    p.add_argument("--set", default="heldout_templates", help="the evaluation set to read")
    p.add_argument("--seed", type=int, default=0, help="the demo's prepare.seed")
    p.add_argument(
        "--vqa-normalisation", default="official", choices=VQA_NORMALISATIONS, help="as the run's (its summary.json)"
    )
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    answers = read_answers(args.answers, args.set)
    rows = groups(answers, args.seed, args.vqa_normalisation)
    print(table(rows))
    ranked = rankings(answers, args.seed)
    if ranked:
        print("\n" + ranking_table(ranked))
    if args.json:
        args.json.write_text(json.dumps({"groups": rows, "rankings": ranked}, indent=1))
    return rows


if __name__ == "__main__":
    main()
