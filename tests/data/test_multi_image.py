"""Several images in one sample: LLaVA-Interleave conversations and NLVR2 statements read in image
order, shaped into the compare tasks with numbered images, the compare templates, the image-pair
demo's ground truth (checked against its own objects and pixels) and its tiny build."""

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmit.build import main
from mmit.data.annotations import QA, Annotation, read_llava, read_nlvr2
from mmit.data.demo.motion import HELDOUT_COMBOS
from mmit.data.demo.pairs import (
    BACKGROUNDS,
    CHANGES,
    QUESTION_TASK,
    SPLITS,
    answer_counts,
    interleaved,
    plan_items,
    question_wordings,
    write_demo_pairs,
)
from mmit.data.demo.scenes import PALETTE
from mmit.data.instructions import ShapingConfig, answer_pool, numbered_images, shape_annotation
from mmit.data.samples import MediaRef, SampleError
from mmit.data.shards import shard_members, shard_urls
from mmit.data.templates import load_templates
from mmit.paths import RECIPES_DIR

COMPARE_TEMPLATES = RECIPES_DIR / "templates" / "vision_compare.yaml"
ORDINAL = {"The first": 0, "The second": 1, "The third": 2}


def items(reader) -> tuple[list[Annotation], list[tuple[str, SampleError]]]:
    got = list(reader)
    return [a for _, a in got if isinstance(a, Annotation)], [(w, a) for w, a in got if isinstance(a, SampleError)]


def assert_named(errors, path: Path) -> None:
    """Each error's location and message name the file and the record."""
    for where, err in errors:
        assert str(path) in where and str(path) in str(err), (where, err)
        assert where.removeprefix(str(path))[:1] in ("[", ":"), where


@pytest.fixture
def images(tmp_path) -> Path:
    """A folder of (empty) image files: readers check that files exist, the build decodes them."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png", "dev-850-0-img0.png", "dev-850-0-img1.png"):
        (folder / name).write_bytes(b"")
    (tmp_path / "outside.png").write_bytes(b"")
    return folder


# --- readers -------------------------------------------------------------------------------


def test_llava_reads_interleaved_images_in_placeholder_order(tmp_path, images):
    path = tmp_path / "interleave.json"
    turns = [{"from": "human", "value": "Image 1: <image>\nImage 2: <image>\nWhich has more?"}]
    records = [
        {"id": "pair", "image": ["b.png", "a.png"], "conversations": [*turns, {"from": "gpt", "value": "The second"}]},
        {  # OneVision's multi-turn layout: the third image arrives in a later turn
            "id": "later",
            "images": ["c.png", "a.png", "b.png"],
            "conversations": [
                {"from": "human", "value": "<image> and <image>: same?"},
                {"from": "gpt", "value": "No."},
                {"from": "human", "value": "And this one? <image>"},
                {"from": "gpt", "value": "Yes."},
            ],
        },
        {"id": "extra", "image": ["a.png"], "conversations": [*turns, {"from": "gpt", "value": "x"}]},
    ]
    path.write_text(json.dumps(records))
    anns, errors = items(read_llava(str(path), str(images)))
    assert [(a.id, a.group, [Path(m.path).name for m in a.media]) for a in anns] == [
        ("llava-pair", "b.png", ["b.png", "a.png"]),
        ("llava-later", "c.png", ["c.png", "a.png", "b.png"]),
    ]
    assert [e.reason for _, e in errors] == ["media_mismatch"]  # two placeholders for one image
    templates = load_templates(COMPARE_TEMPLATES)
    for ann, record in zip(anns, records):
        (conv,) = shape_annotation(ann, templates, ShapingConfig(), {}, "train")["seen"]
        assert [m.content for m in conv.messages] == [t["value"] for t in record["conversations"]]  # as written
        assert conv.media == ann.media


def test_nlvr2_reader_groups_the_statements_of_a_pair(tmp_path, images):
    path = tmp_path / "dev.json"  # NLVR2 ships JSON lines
    records = [
        {
            "identifier": "p-0",
            "left": "a.png",
            "right": "b.png",
            "sentence": " Both images contain a dog. ",
            "label": "True",
        },
        {
            "identifier": "q-0",
            "left": "b.png",
            "right": "a.png",
            "sentence": "The left image has two dogs.",
            "label": "false",
        },
        {"identifier": "p-1", "left": "a.png", "right": "b.png", "sentence": "There are no dogs.", "label": False},
        {"identifier": "dev-850-0-0", "sentence": "One image shows a cat.", "label": "True", "writer": 7},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    anns, errors = items(read_nlvr2(str(path), str(images)))
    assert not errors
    assert [(a.id, a.source, a.kind, a.group) for a in anns] == [
        ("nlvr2-p-0", "nlvr2", "vqa", "a.png"),
        ("nlvr2-q-0", "nlvr2", "vqa", "b.png"),
        ("nlvr2-dev-850-0-0", "nlvr2", "vqa", "dev-850-0-img0.png"),  # NLVR2's own image names
    ]
    assert [[Path(m.path).name for m in a.media] for a in anns] == [
        ["a.png", "b.png"],
        ["b.png", "a.png"],
        ["dev-850-0-img0.png", "dev-850-0-img1.png"],
    ]
    assert [(q.question, q.answer, q.answer_type, q.question_id, q.question_type) for q in anns[0].qas] == [
        ("Both images contain a dog.", "yes", "yes/no", "p-0", "statement"),
        ("There are no dogs.", "no", "yes/no", "p-1", "statement"),
    ]
    listed = tmp_path / "list.json"  # a JSON list reads the same
    listed.write_text(json.dumps(records))
    again, _ = items(read_nlvr2(str(listed), str(images)))
    assert [(a.id, a.qas) for a in again] == [(a.id, a.qas) for a in anns]


def test_nlvr2_reader_names_file_and_record_for_bad_fields(tmp_path, images):
    path = tmp_path / "train.json"
    good = {"identifier": "ok-0", "left": "a.png", "right": "b.png", "sentence": "Fine.", "label": "True"}
    lines = [
        json.dumps(good),
        "[1, 2",  # one broken line in a JSON-lines file
        json.dumps(["not", "an", "object"]),
        json.dumps({**good, "identifier": "x-1", "label": "maybe"}),
        json.dumps({k: v for k, v in good.items() if k != "label"} | {"identifier": "x-2"}),
        json.dumps({**good, "identifier": "x-3", "label": 1}),
        json.dumps({**good, "identifier": "x-4", "sentence": 5}),
        json.dumps({**good, "identifier": "x-5", "sentence": "  "}),
        json.dumps({**good, "identifier": [1]}),
        json.dumps({"identifier": "x6", "left": "a.png", "sentence": "One side.", "label": "True"}),
        json.dumps({**good, "identifier": "x-7", "right": 3}),
        json.dumps({**good, "sentence": "Same id again."}),
        json.dumps({**good, "identifier": "x-8", "left": "gone.png"}),
        json.dumps({**good, "identifier": "x-9", "left": "../outside.png"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    anns, errors = items(read_nlvr2(str(path), str(images)))
    assert [a.id for a in anns] == ["nlvr2-ok-0"] and len(anns[0].qas) == 1
    assert [e.reason for _, e in errors] == [
        "bad_json",
        "not_an_object",
        "wrong_type",  # label "maybe"
        "missing_field",  # no label
        "wrong_type",  # label 1
        "wrong_type",  # sentence 5
        "missing_field",  # empty sentence
        "wrong_type",  # identifier [1]
        "missing_field",  # no right image
        "wrong_type",  # right 3
        "duplicate_id",
        "missing_media",  # then each pair once, by its first record
        "outside_root",
    ]
    assert_named(errors, path)
    assert [w.rsplit(":", 1)[1].split(" ")[0] for w, _ in errors[:3]] == ["2", "3", "4"]  # the line numbers
    path.write_text("[1, 2")
    with pytest.raises(SampleError, match="train.json"):
        list(read_nlvr2(str(path), str(images)))


# --- shaping and templates -----------------------------------------------------------------


def _pair(qas: list[QA]) -> Annotation:
    media = [MediaRef("image", "png", path=f"{n}.png") for n in ("a", "b")]
    return Annotation("pair", "test", "vqa", media, "a.png", qas=qas)


def test_statements_become_compare_tasks_with_numbered_images():
    templates = load_templates(COMPARE_TEMPLATES)
    statement = QA("Both images contain a red shape.", ["yes"], "yes", "yes/no", "s", "statement")
    question = QA("Which image has more shapes?", ["The second"], "The second", "other", "q")
    ann = _pair([statement, question])
    convs = shape_annotation(ann, templates, ShapingConfig(), {}, "val")["seen"]
    assert [c.meta["tasks"] for c in convs] == [["compare_statement"], ["compare_qa"]]
    hint = ShapingConfig().short_answer_hint
    for conv, qa in zip(convs, (statement, question)):
        prompt = conv.messages[0].content
        assert prompt.startswith("Image 1: <image>\nImage 2: <image>\n") and qa.question in prompt
        assert prompt.endswith(hint) == (qa is question) and conv.messages[1].content == qa.answer
        assert conv.media == ann.media
    held = shape_annotation(ann, templates, ShapingConfig(), {}, "val", held_out_templates=True)["seen"]
    assert all(t.split("-")[1].startswith("h") for c in held for t in c.meta["templates"])
    (after, *_) = shape_annotation(ann, templates, ShapingConfig(media_position="after"), {}, "val")["seen"]
    assert after.messages[0].content.endswith("\nImage 1: <image>\nImage 2: <image>")
    assert answer_pool([ann]) == {}  # no multiple-choice options drawn from questions about several images
    assert numbered_images("Q?", ann.media) == interleaved(2, "Q?")  # the demo writes the build's layout


def test_compare_templates_have_training_and_held_out_wordings():
    templates = load_templates(COMPARE_TEMPLATES)
    assert set(templates) == {"compare_statement", "compare_qa"}
    for task, wordings in templates.items():
        assert sum(not t.held_out for t in wordings) >= 12 and sum(t.held_out for t in wordings) == 4, task
        assert all(t.held_out == t.id.split("-")[1].startswith("h") for t in wordings)
        fields = {"statement"} if task == "compare_statement" else {"question"}
        assert all(t.fields == fields for t in wordings), task
        texts = [t.text for t in wordings]
        assert len(set(texts)) == len(texts), task
    assert {t.id for t in question_wordings()} == {t.id for t in templates[QUESTION_TASK] if not t.held_out}


# --- the demo ------------------------------------------------------------------------------


def test_demo_answers_are_balanced_and_held_out_combos_stay_held_out():
    plan = plan_items("seen", 100, seed=3)
    assert Counter(i.story for i in plan) == {"change": 40, "different": 40, "odd_one_out": 20}
    counts = answer_counts(plan)
    assert counts["what_changed"] == dict.fromkeys(sorted(CHANGES), 10)
    assert counts["more_shapes"] == {"The first": 30, "The second": 30}
    assert counts["which_image"] == {"The first": 35, "The second": 35}
    assert sorted(counts["odd_one_out"].values()) == [6, 7, 7]
    assert counts["both_contain"]["yes"] == counts["both_contain"]["no"] > 60
    assert all(len(i.scenes) == (3 if i.story == "odd_one_out" else 2) for i in plan)

    def combos(item):
        return {(o.color, o.shape) for scene in item.scenes for o in scene}

    assert not any(combos(i) & set(HELDOUT_COMBOS) for i in plan)
    assert all(combos(i) & set(HELDOUT_COMBOS) for i in plan_items("heldout_combos", 30, seed=3))
    assert plan_items("seen", 100, seed=3) == plan and plan_items("seen", 100, seed=4) != plan


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_pairs(tmp_path_factory.mktemp("pairs"), n_pairs=40, n_heldout_pairs=10, seed=1, image_size=96)


def _key(obj: dict) -> tuple:
    return obj["shape"], obj["color"], tuple(obj["center"]), obj["radius"]


def _change_sentence(before: list[dict], after: list[dict]) -> str:
    """What changed from one image's objects to the other's, worked out from the objects alone."""
    gone = [o for o in before if _key(o) not in {_key(a) for a in after}]
    new = [o for o in after if _key(o) not in {_key(b) for b in before}]
    if not gone:
        (o,) = new
        article = "An" if o["color"][0] in "aeiou" else "A"
        return f"{article} {o['color']} {o['shape']} was added in the {o['row']} {o['column']}."
    (old,) = gone
    if not new:
        return f"The {old['color']} {old['shape']} was removed from the {old['row']} {old['column']}."
    (o,) = new
    assert (o["shape"], o["size"]) == (old["shape"], old["size"])
    if o["center"] == old["center"]:
        return f"The {old['color']} {old['shape']} turned {o['color']}."
    assert o["color"] == old["color"] and (o["row"], o["column"]) != (old["row"], old["column"])
    return f"The {o['color']} {o['shape']} moved from the {old['row']} {old['column']} to the {o['row']} {o['column']}."


def test_demo_answers_follow_the_written_objects(demo):
    checked = Counter()
    for split in SPLITS:
        folder = demo.annotations(split)
        truth = {item["id"]: item for item in json.loads((folder / "pairs.json").read_text())}
        conversations = json.loads((folder / "llava_interleave.json").read_text())
        assert len(conversations) == demo.n_questions[split]
        for record in conversations:
            item = truth[record["id"].rsplit("-", 1)[0]]
            objects = item["objects"]
            assert record["image"] == item["images"]
            prompt, answer = (turn["value"] for turn in record["conversations"])
            assert prompt.startswith(interleaved(len(objects), "")) and prompt.count("<image>") == len(objects)
            if "more shapes" in prompt:
                counts = [len(o) for o in objects]
                assert counts[0] != counts[1] and ORDINAL[answer] == counts.index(max(counts))
            elif "contains the " in prompt:
                colour, shape = re.search(r"contains the (\w+) (\w+)\?", prompt).groups()
                found = [sum((o["color"], o["shape"]) == (colour, shape) for o in scene) for scene in objects]
                assert sorted(found) == [0, 1] and ORDINAL[answer] == found.index(1), (record["id"], found)
            elif "different from the other two" in prompt:
                keys = [sorted(map(_key, scene)) for scene in objects]
                odd = [k for k in range(3) if keys.count(keys[k]) == 1]
                assert odd == [ORDINAL[answer]] and len(keys) == 3
            else:
                assert "What changed" in prompt, prompt
                assert answer == _change_sentence(*objects) == item["change"]["sentence"]
            checked[record["id"].rsplit("-", 1)[1]] += 1
        statements = [json.loads(line) for line in (folder / "nlvr2.json").read_text().splitlines()]
        assert len(statements) == demo.n_statements[split]
        for s in statements:
            item = truth[s["identifier"].rsplit("-", 1)[0]]
            colour = re.fullmatch(r"Both images contain an? (\w+) shape\.", s["sentence"]).group(1)
            in_both = all(any(o["color"] == colour for o in scene) for scene in item["objects"])
            assert s["label"] == str(in_both) and [s["left"], s["right"]] == item["images"]
            checked[f"statement {s['label']}"] += 1
    assert set(checked) == {
        "more_shapes",
        "which_image",
        "odd_one_out",
        "what_changed",
        "statement True",
        "statement False",
    }
    assert checked["statement True"] == checked["statement False"]


def _pixel(path: Path, obj: dict) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(Image.open(path).convert("RGB"))[obj["center"][1], obj["center"][0]])


def test_the_changed_shape_differs_in_the_pixels(demo):
    checked = Counter()
    for split in SPLITS:
        for item in json.loads((demo.annotations(split) / "pairs.json").read_text()):
            paths = [demo.images_dir / name for name in item["images"]]
            for path, scene, background in zip(paths, item["objects"], item["backgrounds"]):
                with Image.open(path) as image:
                    assert image.size == (96, 96) and image.getpixel((0, 0)) == BACKGROUNDS[background]
                assert all(_pixel(path, o) == PALETTE[o["color"]] for o in scene)  # every shape where it is said to be
            change = item["change"]
            if change is None:
                continue
            odd = item["odd"]
            first, second = (paths[0], paths[1]) if odd is None else (paths[(odd + 1) % 3], paths[odd])
            ground = BACKGROUNDS[item["backgrounds"][0]]
            before, after = change["before"], change["after"]
            if before:
                assert _pixel(first, before) == PALETTE[before["color"]]
                assert _pixel(second, before) == (PALETTE[after["color"]] if change["kind"] == "colour" else ground)
            if after:
                assert _pixel(second, after) == PALETTE[after["color"]]
                if change["kind"] != "colour":
                    assert _pixel(first, after) == ground
            if change["kind"] == "colour":
                assert before["color"] != after["color"]
            checked[change["kind"]] += 1
    assert set(checked) == set(CHANGES), checked


def test_demo_is_written_once_and_the_same_for_a_seed(demo, tmp_path):
    assert set(demo.answers["seen"]) == {"more_shapes", "what_changed", "which_image", "odd_one_out", "both_contain"}
    before = {p: p.stat().st_mtime_ns for p in demo.root.rglob("*") if p.is_file()}
    write_demo_pairs(demo.root, n_pairs=40, n_heldout_pairs=10, seed=1, image_size=96)
    assert {p: p.stat().st_mtime_ns for p in demo.root.rglob("*") if p.is_file()} == before  # nothing rewritten
    again = write_demo_pairs(tmp_path / "again", n_pairs=40, n_heldout_pairs=10, seed=1, image_size=96)
    files = sorted(p.relative_to(demo.root) for p in demo.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again.root) for p in again.root.rglob("*") if p.is_file())
    assert all((again.root / p).read_bytes() == (demo.root / p).read_bytes() for p in files)
    other = write_demo_pairs(tmp_path / "other", n_pairs=40, n_heldout_pairs=10, seed=2, image_size=96)
    pairs = Path("annotations/seen/pairs.json")
    assert (other.root / pairs).read_bytes() != (demo.root / pairs).read_bytes()
    assert len(list(demo.images_dir.iterdir())) == sum(demo.n_images.values())


# --- the build -----------------------------------------------------------------------------


def test_demo_compare_tiny_recipe_builds(compose, tmp_path, capsys):
    cfg = compose(["data=demo_compare_tiny"])
    assert cfg.data.source.recipe == "demo_compare"
    overrides = [o for o in cfg.data.source.overrides if not o.startswith("out_dir=")]
    out, src = tmp_path / "out", tmp_path / "src"
    main(["demo_compare", *overrides, f"out_dir={out}", f"prepare.out_dir={src}", "num_workers=1"])
    assert "built demo_compare" in capsys.readouterr().out  # the summary python -m mmit.build prints
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["skipped_annotations"] and not any(s["skipped"] for s in manifest["sets"].values())
    assert set(manifest["sets"]) == {"train", "val_seen", "val_heldout_templates", "val_heldout_sources"}
    images = src / "images"

    templates = load_templates(COMPARE_TEMPLATES)
    held_out = {t.id for wordings in templates.values() for t in wordings if t.held_out}
    held_out_texts = [t.text.split("{")[0] or t.text.split("}")[-1] for t in templates[QUESTION_TASK] if t.held_out]
    counts = Counter()
    for name in manifest["sets"]:
        for url in shard_urls(out / name):
            for _, members in shard_members(url):
                record = json.loads(members["json"])
                stored = [members[f"{i}.{m['ext']}"] for i, m in enumerate(record["media"])]
                for conv in record["conversations"]:
                    prompt = conv["messages"][0]["content"]
                    n = len(stored)
                    assert n in (2, 3) and prompt.count("<image>") == n
                    assert sum(m["content"].count("<image>") for m in conv["messages"]) == n
                    assert prompt.startswith("".join(f"Image {k}: <image>\n" for k in range(1, n + 1)))
                    item = conv["meta"]["group"].removesuffix("-img0.png")
                    assert stored == [(images / f"{item}-img{k}.png").read_bytes() for k in range(n)]  # in order
                    used = set(conv["meta"]["templates"])
                    assert used <= held_out if name == "val_heldout_templates" else not used & held_out
                    if name == "train":
                        assert not any(text in prompt for text in held_out_texts)
                    counts[name, n, conv["meta"]["tasks"][0]] += 1
    for name in manifest["sets"]:
        assert sum(v for k, v in counts.items() if k[0] == name) == manifest["sets"][name]["samples"]
    assert counts["train", 2, "compare_statement"] and counts["train", 2, "conversation"]
    assert counts["train", 3, "conversation"]  # triples
    assert counts["val_heldout_templates", 2, "compare_statement"]
