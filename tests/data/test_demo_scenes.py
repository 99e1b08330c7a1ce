import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from mmit.data.demo.scenes import (
    ANSWER_TYPES,
    BACKGROUNDS,
    COLUMNS,
    EXTENTS,
    EXTRA_KINDS,
    PALETTE,
    QUESTION_KINDS,
    ROWS,
    Scene,
    SceneObject,
    detailed_caption,
    image_file_name,
    plan_scene,
    scene_captions,
    write_demo_scenes,
)

N_IMAGES = 30


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_scenes(tmp_path_factory.mktemp("demo"), n_images=N_IMAGES, seed=0)


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_files_parse_in_official_layouts(demo):
    captions = _load(demo.captions_file)
    assert {"info", "images", "annotations"} <= captions.keys()
    assert [im["id"] for im in captions["images"]] == list(range(1, N_IMAGES + 1))
    for im in captions["images"]:
        assert im == {"id": im["id"], "file_name": image_file_name(im["id"]), "width": 224, "height": 224}
        assert re.fullmatch(r"COCO_demo_\d{12}\.png", im["file_name"])
    per_image = Counter(a["image_id"] for a in captions["annotations"])
    assert per_image == {i: 3 for i in range(1, N_IMAGES + 1)}
    assert len({a["id"] for a in captions["annotations"]}) == 3 * N_IMAGES
    for i in range(1, N_IMAGES + 1):
        texts = [a["caption"] for a in captions["annotations"] if a["image_id"] == i]
        assert len(set(texts)) == 3 and all(t[0].isupper() and t.endswith(".") for t in texts)

    questions = _load(demo.questions_file)
    assert questions["task_type"] == "Open-Ended"
    assert questions["data_type"] == questions["data_subtype"] == "demo"
    assert all(q.keys() == {"image_id", "question", "question_id"} for q in questions["questions"])
    assert len(questions["questions"]) == demo.n_questions
    annotations = _load(demo.vqa_annotations_file)
    assert annotations["data_type"] == annotations["data_subtype"] == "demo"

    detailed = [json.loads(line) for line in demo.detailed_file.read_text().splitlines()]
    assert [d["image_id"] for d in detailed] == list(range(1, N_IMAGES + 1))
    assert all(len(d["caption"]) > 60 for d in detailed)


def test_every_image_opens_at_its_size(demo):
    for i in range(1, N_IMAGES + 1):
        with Image.open(demo.images_dir / image_file_name(i)) as image:
            assert image.format == "PNG" and image.size == (224, 224)


def test_answers_follow_vqav2(demo):
    questions = {q["question_id"]: q for q in _load(demo.questions_file)["questions"]}
    annotations = _load(demo.vqa_annotations_file)["annotations"]
    assert sorted(questions) == sorted(a["question_id"] for a in annotations)
    for a in annotations:
        q = questions[a["question_id"]]
        assert q["image_id"] == a["image_id"] and a["question_id"] // 1000 == a["image_id"]
        assert q["question"].endswith("?") and "colour" not in q["question"]
        assert a["answer_type"] in ANSWER_TYPES
        answer = a["multiple_choice_answer"]
        assert answer == answer.lower() and not answer.endswith((".", "?", "!"))
        assert a["answers"] == [{"answer": answer, "answer_confidence": "yes", "answer_id": i} for i in range(1, 11)]
        if a["answer_type"] == "yes/no":
            assert answer in ("yes", "no")
        if a["answer_type"] == "number":
            assert answer.isdigit()
    per_image = Counter(a["image_id"] for a in annotations)
    assert set(per_image) == set(range(1, N_IMAGES + 1)) and max(per_image.values()) == 4


def _expected_answer(question: str, objects: list[SceneObject]) -> str:
    """Answer a question from the scene's objects alone, independently of the generator."""
    columns = {"on the left": "left", "in the middle": "middle", "on the right": "right"}
    if question == "How many shapes are there?":
        return str(len(objects))
    if m := re.fullmatch(r"How many (\w+) objects are there\?", question):
        return str(sum(o.color == m[1] for o in objects))
    if m := re.fullmatch(r"What color is the (\w+)\?", question):
        (match,) = [o for o in objects if o.shape == m[1]]
        return match.color
    if m := re.fullmatch(r"What shape is the (\w+) object\?", question):
        (match,) = [o for o in objects if o.color == m[1]]
        return match.shape
    if m := re.fullmatch(r"Is there anything (\w+)\?", question):
        return "yes" if any(o.color == m[1] for o in objects) else "no"
    if m := re.fullmatch(r"Is there an? (\w+)\?", question):
        return "yes" if any(o.shape == m[1] for o in objects) else "no"
    if m := re.fullmatch(r"Is there an? (\w+) (\w+)\?", question):
        return "yes" if any((o.color, o.shape) == (m[1], m[2]) for o in objects) else "no"
    if m := re.fullmatch(r"Is the (\w+) (\w+) (on the left|in the middle|on the right)\?", question):
        (match,) = [o for o in objects if (o.color, o.shape) == (m[1], m[2])]
        return "yes" if match.column == columns[m[3]] else "no"
    if m := re.fullmatch(r"Where is the (\w+) (\w+): on the left, in the middle or on the right\?", question):
        (match,) = [o for o in objects if (o.color, o.shape) == (m[1], m[2])]
        return match.column
    raise AssertionError(f"unexpected question {question!r}")


def test_ground_truth_is_exact(demo):
    questions = {q["question_id"]: q for q in _load(demo.questions_file)["questions"]}
    seen_kinds = set()
    for a in _load(demo.vqa_annotations_file)["annotations"]:
        scene = plan_scene(a["image_id"], seed=0)
        question = questions[a["question_id"]]["question"]
        assert a["multiple_choice_answer"] == _expected_answer(question, scene.objects), question
        seen_kinds.add(next(q.kind for q in scene.questions if q.question == question))
        if question.startswith("What color is the"):
            with Image.open(demo.images_dir / image_file_name(a["image_id"])) as image:
                (obj,) = [o for o in scene.objects if question == f"What color is the {o.shape}?"]
                assert image.getpixel(obj.center) == PALETTE[a["multiple_choice_answer"]]
    assert seen_kinds == set(QUESTION_KINDS)


def test_pixels_match_the_scene(demo):
    for i in range(1, N_IMAGES + 1):
        scene = plan_scene(i, seed=0)
        with Image.open(demo.images_dir / image_file_name(i)) as image:
            image = image.convert("RGB")
            assert image.getpixel((0, 0)) == image.getpixel((223, 223)) == BACKGROUNDS[scene.background]
            for obj in scene.objects:
                assert image.getpixel(obj.center) == PALETTE[obj.color]
            # Every palette colour present in the image belongs to a listed object.
            colors = {rgb for _, rgb in image.getcolors(maxcolors=64)}
            assert colors - {BACKGROUNDS[scene.background]} == {PALETTE[o.color] for o in scene.objects}


def test_objects_do_not_overlap_and_positions_are_unambiguous():
    for i in range(1, 201):
        scene = plan_scene(i, seed=3)
        assert 1 <= len(scene.objects) <= 4
        for o in scene.objects:
            side, up, down = (e * o.radius for e in EXTENTS[o.shape])
            (x, y), col, row = o.center, COLUMNS.index(o.column), ROWS.index(o.row)
            # The whole shape stays inside its third (and half), so cells never overlap.
            assert col * 224 / 3 <= x - side and x + side <= (col + 1) * 224 / 3
            assert row * 112 <= y - up and y + down <= (row + 1) * 112
        cells = [(o.column, o.row) for o in scene.objects]
        assert len(set(cells)) == len(cells)


def test_captions_use_correct_english():
    def obj(shape, color, size, column, row):
        return SceneObject(shape, color, size, (0, 0), 20, column, row)

    scene = Scene(
        1,
        224,
        "white",
        [
            obj("circle", "red", "large", "left", "top"),
            obj("circle", "red", "small", "left", "bottom"),
            obj("square", "orange", "small", "right", "top"),
        ],
        [],
    )
    assert scene_captions(scene) == [
        "Two red circles and an orange square.",
        "Three shapes: a red circle in the top left, a red circle in the bottom left and an orange square on the right.",
        "A large red circle, a small red circle and a small orange square on a white background.",
    ]
    assert detailed_caption(scene) == (
        "The image shows three shapes on a white background: a large red circle in the top left, a small red circle"
        " in the bottom left and a small orange square in the top right. One is large and two are small."
    )
    single = Scene(2, 224, "light gray", [obj("triangle", "blue", "large", "middle", "bottom")], [])
    assert scene_captions(single) == [
        "A blue triangle.",
        "A single shape: a blue triangle in the middle.",
        "A large blue triangle on a light gray background.",
    ]
    assert detailed_caption(single) == (
        "The image shows one shape on a light gray background: a large blue triangle in the bottom middle."
    )


def test_yes_no_is_balanced_and_zero_counts_occur():
    answers = Counter()
    for i in range(1, 201):
        for q in plan_scene(i, seed=0).questions:
            if q.answer_type == "yes/no" or q.kind == "count_color":
                answers[q.answer] += 1
    assert 0.4 < answers["yes"] / (answers["yes"] + answers["no"]) < 0.6
    assert answers["0"] > 10


def test_same_seed_is_byte_identical_and_another_seed_differs(demo, tmp_path):
    again = write_demo_scenes(tmp_path / "again", n_images=N_IMAGES, seed=0)
    other = write_demo_scenes(tmp_path / "other", n_images=N_IMAGES, seed=1)
    reference = _files(demo.root)
    assert _files(again.root) == reference
    assert not any(name.startswith(".") or ".tmp-" in name for name in reference)
    different = _files(other.root)
    assert different.keys() == reference.keys()
    assert (
        different[str(Path("annotations", "captions_demo.json"))]
        != reference[str(Path("annotations", "captions_demo.json"))]
    )
    assert sum(different[name] != reference[name] for name in reference if name.endswith(".png")) > N_IMAGES // 2


def test_second_call_rewrites_nothing_and_a_changed_build_is_redone(tmp_path):
    first = write_demo_scenes(tmp_path, n_images=5)
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert write_demo_scenes(tmp_path, n_images=5) == first
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == mtimes

    for missing in (first.captions_file, first.images_dir / image_file_name(3)):
        missing.unlink()
        assert write_demo_scenes(tmp_path, n_images=5) == first
        assert missing.exists()

    bigger = write_demo_scenes(tmp_path, n_images=8)
    assert bigger.n_images == 8 and len(_load(bigger.captions_file)["images"]) == 8


def test_more_questions_per_image_extend_the_same_scene():
    from mmit.data.demo.scenes import plan_scene

    for image_id in range(1, 60):
        four, eight = plan_scene(image_id, seed=0), plan_scene(image_id, seed=0, questions_per_image=8)
        assert eight.objects == four.objects and eight.questions[: len(four.questions)] == four.questions
        texts = [q.question for q in eight.questions]
        assert len(set(texts)) == len(texts) and 4 <= len(texts) <= 8
    assert sum(len(plan_scene(i, questions_per_image=8).questions) for i in range(1, 60)) > 6 * 59


def test_text_oracle_replaces_each_image_by_its_scene_description(tool, tmp_path):
    """tools/text_oracle.py: the demo's conversations with the detailed caption in place of <image>."""
    import json

    from mmit.build import build, compose_recipe

    overrides = [f"out_dir={tmp_path / 'demo'}", "prepare.n_images=30", f"prepare.out_dir={tmp_path / 'src'}"]
    build(compose_recipe("demo_vqa", [*overrides, "num_workers=1"]))
    counts = tool("text_oracle").main([str(tmp_path / "demo"), "--out", str(tmp_path / "oracle")])
    records = [json.loads(line) for line in (tmp_path / "oracle" / "train.jsonl").read_text().splitlines()]
    assert len(records) == counts["train"] > 30 and counts["val_heldout_templates"] > 0
    details = {
        f"COCO_demo_{json.loads(line)['image_id']:012d}.png": json.loads(line)["caption"]
        for line in (tmp_path / "src" / "annotations" / "detailed_demo.jsonl").read_text().splitlines()
    }
    for record in records:
        first = record["messages"][0]["content"]
        assert "<image>" not in first and details[record["meta"]["group"]] in first


def test_extra_question_kinds_are_asked_exactly_and_only_when_chosen(tmp_path):
    kinds = [*QUESTION_KINDS, *EXTRA_KINDS]
    default = write_demo_scenes(tmp_path / "default", n_images=12, questions_per_image=8)
    where = write_demo_scenes(tmp_path / "where", n_images=12, questions_per_image=8, kinds=kinds)
    assert _load(default.questions_file)["info"].get("question_kinds") is None  # earlier builds stay valid
    assert _load(where.questions_file)["info"]["question_kinds"] == kinds
    questions = {q["question_id"]: q["question"] for q in _load(where.questions_file)["questions"]}
    asked = Counter()
    for a in _load(where.vqa_annotations_file)["annotations"]:
        scene = plan_scene(a["image_id"], questions_per_image=8, kinds=kinds)
        question = questions[a["question_id"]]
        assert a["multiple_choice_answer"] == _expected_answer(question, scene.objects), question
        asked[next(q.kind for q in scene.questions if q.question == question)] += 1
    assert set(asked) == set(kinds) and min(asked[k] for k in EXTRA_KINDS) >= 6
    assert {a["multiple_choice_answer"] for a in _load(where.vqa_annotations_file)["annotations"]} >= set(COLUMNS)
    # The images do not depend on the kinds asked; the default questions never include the extra kinds.
    assert _files(default.images_dir) == _files(where.images_dir)
    assert not any(
        q["question"].startswith(("Where", "Is there anything")) or re.fullmatch(r"Is there an? \w+\?", q["question"])
        for q in _load(default.questions_file)["questions"]
    )
    with pytest.raises(ValueError, match="question kinds .*'colour'"):
        plan_scene(1, kinds=["colour"])


def test_demo_answers_groups_each_question_by_what_answering_it_needs(tool):
    """tools/demo_answers.py: yes/no by what the scene makes of it; a hand count on a redrawn scene."""
    from mmit.data.demo.scenes import plan_scene

    for image_id in range(1, 300):
        objects = plan_scene(image_id).objects
        unique = [o for o in objects if sum(p.color == o.color for p in objects) == 1]
        pairs = {(o.color, o.shape) for o in objects}
        crossed = [(a.color, b.shape) for a in objects for b in objects if (a.color, b.shape) not in pairs]
        if unique and crossed and len({o.shape for o in objects}) < 3:
            break
    found, (color, shape) = unique[0], crossed[0]
    same_shape = sum(o.shape == found.shape for o in objects)
    absent_shape = next((s for s in ("circle", "square", "triangle") if all(o.shape != s for o in objects)), None)
    on_left = found.column == "left"

    def answer(task, prompt, reference, prediction, swapped, question_type=""):  # as answers_after.json holds it
        return {"set": "heldout_templates", "id": f"vqa-{image_id}-0", "task": task, "template": "t",
                "prompt": f"<image>\n{prompt}", "reference": reference, "references": [reference] * 10,
                "prediction": prediction, "question_type": question_type, "has_media": True, "loss": 1.0,
                "label_tokens": 2, "prediction_swapped_media": swapped}  # fmt: skip

    answers = [
        answer(
            "vqa_yesno", f"Is the {found.color} {found.shape} on the left?", "yes" if on_left else "no", "yes", "no"
        ),
        answer("vqa_yesno", f"Is there a {found.color} {found.shape}?", "yes", "Yes.", "no"),
        answer("vqa_yesno", f"Is there a {color} {shape}?", "no", "yes", "no"),
        answer("vqa_yesno", f"Is there anything {found.color}?", "yes", "yes", "yes"),
        answer("vqa_yesno", f"Is there {'an' if absent_shape == 'circle' else 'a'} {absent_shape}?", "no", "yes", "no"),
        answer("vqa_short", "How many circles are there?", "2", "2", "3", question_type="how many"),
        answer(
            "vqa_short",
            f"Where is the {found.color} {found.shape}: on the left, in the middle or on the right?",
            found.column,
            found.column,
            "nowhere",
            question_type="where is the",
        ),
        answer("vqa_multiple_choice", "What color? A. red B. blue", "B", "A", "B", question_type="what color is the"),
        answer("caption_brief", "Describe it.", "A red circle.", "A red circle.", "A square."),
    ]
    assert tool("demo_answers").groups(answers) == {
        "multiple choice (letter), what color is the": [1, 0, 1],
        "one colour yes/no, present": [1, 1, 1],
        "one shape yes/no, absent": [1, 0, 1],
        "position yes/no, colour unique": [1, int(on_left), int(not on_left)],
        "presence yes/no, absent: both elsewhere": [1, 0, 1],
        "presence yes/no, present": [1, 1, 0],
        "short answer, how many": [1, 1, 0],
        "short answer, where is the": [1, 1, 0],
        f"where, {len(objects)} objects": [1, 1, 0],
        f"where, colour unique, shape {'unique' if same_shape == 1 else 'shared'}": [1, 1, 0],
    }

    # With margins: each yes/no kind ranked on its own. Presence: the present object above the absent
    # one with own image, backwards with another; position: one answer of each reference added.
    margins = {0: (1.0, None), 1: (-0.5, -4.0), 2: (-2.0, 1.0), 4: (-3.0, 2.0)}
    for i, (own, swapped) in margins.items():
        answers[i]["yes_no_margin"] = own
        if swapped is not None:
            answers[i]["yes_no_margin_swapped_media"] = swapped
    answers.append({**answers[0], "reference": "no" if on_left else "yes", "yes_no_margin": -1.0})
    ranked = tool("demo_answers").rankings(answers)
    assert ranked["presence yes/no"] == [2, 1.0, 0.0]
    assert ranked["one shape yes/no"][0] == 1 and math.isnan(ranked["one shape yes/no"][1])  # one reference only
    assert ranked["position yes/no"][:2] == [2, 1.0 if on_left else 0.0]
    assert math.isnan(ranked["position yes/no"][2])  # not every answer has a swapped margin
    assert "one colour yes/no" not in ranked  # no margin given
