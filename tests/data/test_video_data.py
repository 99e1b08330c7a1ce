"""Video data: the video readers on small files written here (good records and each kind of bad one),
shaping into video tasks, the video templates, the moving-shapes demo's ground truth and its build."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mmit.build import build, compose_recipe
from mmit.data.annotations import (
    Annotation,
    event_targets,
    read_activitynet_captions,
    read_jsonl,
    read_llava_video,
    read_msrvtt_captions,
    read_video_qa,
)
from mmit.data.demo.motion import (
    COLOURS,
    DIRECTIONS,
    HELDOUT_COMBOS,
    PALETTE,
    QUESTION_KINDS,
    SPLITS,
    answer_counts,
    plan_clips,
    render_clip,
    write_demo_videos,
)
from mmit.data.instructions import ShapingConfig, shape_annotation
from mmit.data.samples import SampleError
from mmit.data.shards import shard_members, shard_urls
from mmit.data.templates import load_templates
from mmit.data.video import VideoSampling, decode_video
from mmit.paths import RECIPES_DIR

VIDEO_TEMPLATES = RECIPES_DIR / "templates" / "video.yaml"
VIDEO_TASKS = {"video_caption", "video_dense_caption", "video_qa", "video_yesno", "video_order", "video_temporal"}


def items(reader) -> tuple[list[Annotation], list[tuple[str, SampleError]]]:
    got = list(reader)
    return [a for _, a in got if isinstance(a, Annotation)], [(w, a) for w, a in got if isinstance(a, SampleError)]


def reasons(errors) -> list[str]:
    return [err.reason for _, err in errors]


def assert_named(errors, path: Path) -> None:
    """Each error's location and message name the file and the record."""
    for where, err in errors:
        assert str(path) in where and str(path) in str(err), (where, err)
        assert where.removeprefix(str(path))[:1] in ("[", ":"), where


@pytest.fixture
def videos(tmp_path) -> Path:
    """A folder of (empty) video files: readers check that files exist, the build decodes them."""
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("video7010.mp4", "video3.mp4", "clip.webm", "v_abc.mp4", "v_mkv.mkv", "x.mp4", "y.mp4"):
        (folder / name).write_bytes(b"")
    (tmp_path / "outside.mp4").write_bytes(b"")
    return folder


# --- readers -------------------------------------------------------------------------------


def test_video_qa_reader_groups_questions_per_video(tmp_path, videos):
    path = tmp_path / "msrvtt_qa.json"
    records = [
        {"id": 0, "video": "video7010", "question": "what is a man doing?", "answer": "cooking"},
        {"id": "q1", "video": "video7010.mp4", "question": "is he outside?", "answer": "No"},
        {"video_id": 3, "question": "who sings?", "answer": "a girl", "answer_type": "other", "type": "who"},
        {"video_name": "clip.webm", "question": "which comes first?", "answer": "the dog", "type": "order"},
        "not an object",
        {"video": "video7010", "question": "no answer"},
        {"video": "video7010", "question": 5, "answer": "five"},
        {"video": "video7010", "question": "empty?", "answer": "  "},
        {"video": "video7010", "question": "id?", "answer": "x", "id": [1]},
        {"video": True, "question": "a flag?", "answer": "x"},
        {"video": "video7010", "question": "type?", "answer": "x", "answer_type": 3},
        {"video": "gone", "question": "missing file?", "answer": "x"},
        {"video": "../outside", "question": "outside?", "answer": "x"},
    ]
    path.write_text(json.dumps(records))
    anns, errors = items(read_video_qa(str(path), str(videos), video_pattern="{video}"))
    assert {a.group: [(q.question, q.answer, q.answer_type, q.question_type) for q in a.qas] for a in anns} == {
        "video7010.mp4": [
            ("what is a man doing?", "cooking", "other", ""),
            ("is he outside?", "No", "yes/no", ""),
        ],
        "clip.webm": [("which comes first?", "the dog", "other", "order")],
    }
    assert [q.question_id for q in anns[-1].qas] == ["0", "q1"] and all(a.kind == "vqa" for a in anns)
    assert all(a.media[0].kind == "video" and Path(a.media[0].path).parent == videos for a in anns)
    assert reasons(errors) == [
        "not_an_object",
        "missing_field",
        "wrong_type",
        "empty_answer",
        "wrong_type",
        "wrong_type",
        "wrong_type",
        "outside_root",  # then each video once, by name: ../outside.mp4, 3.mp4 (not video3.mp4), gone.mp4
        "missing_media",
        "missing_media",
    ]
    assert_named(errors, path)
    # MSRVTT-QA's integer ids through the pattern
    anns, _ = items(read_video_qa(str(path), str(videos), video_pattern="video{video}"))
    assert "video3.mp4" in {a.group for a in anns}
    path.write_text('{"not": "a list"}')
    with pytest.raises(SampleError, match="msrvtt_qa.json"):
        list(read_video_qa(str(path), str(videos)))


def test_activitynet_reader_gives_dense_captions_and_time_questions(tmp_path, videos):
    path = tmp_path / "val_1.json"
    data = {
        "v_abc": {
            "duration": 10.0,
            "timestamps": [[4.0, 10.6], [0.0, 4.0]],  # out of order, and ending past the video (as real files do)
            "sentences": ["A dog runs away.", " A man throws a ball. "],
        },
        "v_mkv": {"duration": 5, "timestamps": [[0, 3], [2, 5]], "sentences": ["Rain falls.", "A car passes."]},
        "v_list": [1, 2],
        "v_noduration": {"timestamps": [], "sentences": []},
        "v_strduration": {"duration": "10", "timestamps": [[0, 1]], "sentences": ["x"]},
        "v_badstamps": {"duration": 10, "timestamps": [[0]], "sentences": ["x"]},
        "v_nan": {"duration": 10, "timestamps": [[1, float("nan")]], "sentences": ["x"]},  # json.loads reads NaN
        "v_counts": {"duration": 10, "timestamps": [[0, 1], [1, 2]], "sentences": ["x"]},
        "v_reversed": {"duration": 10, "timestamps": [[5, 1]], "sentences": ["x"]},
        "v_empty": {"duration": 10, "timestamps": [[0, 1]], "sentences": [" "]},
        "v_gone": {"duration": 10, "timestamps": [[0, 1]], "sentences": ["x"]},
    }
    path.write_text(json.dumps(data))
    anns, errors = items(read_activitynet_captions(str(path), str(videos)))
    first, second = anns
    assert (first.kind, first.group, first.media[0].kind) == ("events", "v_abc.mp4", "video")
    assert first.captions == ["0.0-4.0 s: A man throws a ball.\n4.0-10.0 s: A dog runs away."]
    assert [(q.question, q.answer, q.question_type) for q in first.qas] == [
        ("What happens between 0.0 s and 4.0 s?", "A man throws a ball.", "temporal"),
        ("What happens between 4.0 s and 10.0 s?", "A dog runs away.", "temporal"),
        (first.qas[2].question, "A man throws a ball", "order"),
    ]
    assert first.qas[2].question in (
        'Which happens first: "A man throws a ball" or "A dog runs away"?',
        'Which happens first: "A dog runs away" or "A man throws a ball"?',
    )
    assert second.group == "v_mkv.mkv"  # the download's own extension is found
    assert [q.question_type for q in second.qas] == ["temporal", "temporal"]  # overlapping events: no order question
    assert reasons(errors) == [
        "not_an_object",
        "missing_field",
        "wrong_type",
        "wrong_type",
        "wrong_type",
        "missing_field",
        "bad_timestamp",
        "empty_answer",
        "missing_media",
    ]
    assert_named(errors, path)
    assert [w.rsplit(":", 1)[1] for w, _ in errors][:2] == ["v_list", "v_noduration"]
    path.write_text("[]")
    with pytest.raises(SampleError, match="val_1.json"):
        list(read_activitynet_captions(str(path), str(videos)))


def test_order_questions_name_the_earlier_event_first_about_half_the_time():
    events = [(float(i), float(i + 1), f"Event {i} happens.") for i in range(40)]
    _, qas = event_targets("v", events)
    order = [q for q in qas if q.question_type == "order"]
    assert len(order) == 39 and all(q.answer == f"Event {i} happens" for i, q in enumerate(order))
    named_first = sum(q.question.index(q.answer) < q.question.index(" or ") for q in order)
    assert 10 < named_first < 29


def test_msrvtt_captions_reader(tmp_path, videos):
    path = tmp_path / "videodatainfo.json"
    data = {
        "videos": [
            {"video_id": "x", "split": "train", "id": 0},
            {"video_id": "y", "split": "test", "id": 1},
            {"video_id": "nocaption", "split": "train"},
            {"video_id": "x", "split": "train"},
            {"video_id": 7},
            "nope",
            {"video_id": "gone", "split": "train"},
            {"video_id": "video3", "split": 1},
        ],
        "sentences": [
            {"video_id": "x", "caption": "a man is cooking", "sen_id": 0},
            {"video_id": "x", "caption": "someone cooks food", "sen_id": 1},
            {"video_id": "y", "caption": "a cat plays", "sen_id": 2},
            {"video_id": "gone", "caption": "not downloaded", "sen_id": 3},
            {"video_id": "video3", "caption": "wrong split type", "sen_id": 4},
            {"video_id": "x", "caption": ""},
            {"video_id": "x", "caption": 3},
            {"video_id": "x"},
            [],
        ],
    }
    path.write_text(json.dumps(data))
    anns, errors = items(read_msrvtt_captions(str(path), str(videos)))
    assert [(a.group, a.kind, a.captions) for a in anns] == [
        ("x.mp4", "caption", ["a man is cooking", "someone cooks food"]),
        ("y.mp4", "caption", ["a cat plays"]),
    ]
    assert reasons(errors) == [
        "empty_answer",
        "wrong_type",
        "missing_field",
        "not_an_object",
        "duplicate_id",
        "wrong_type",
        "not_an_object",
        "missing_media",
        "wrong_type",
    ]
    assert_named(errors, path)
    anns, _ = items(read_msrvtt_captions(str(path), str(videos), split="test"))
    assert [a.group for a in anns] == ["y.mp4"]


def test_llava_video_and_jsonl_read_video_fields(tmp_path, videos):
    path = tmp_path / "llava_video.json"
    records = [
        {
            "id": "a",
            "video": "x.mp4",
            "conversations": [{"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": "x"}],
        },
        {
            "id": "b",
            "videos": ["x.mp4", "y.mp4"],
            "conversations": [{"from": "human", "value": "Compare."}, {"from": "gpt", "value": "y"}],
        },
        {
            "id": "c",
            "video": "x.mp4",
            "conversations": [{"from": "human", "value": "<video><video>"}, {"from": "gpt", "value": "z"}],
        },
        {
            "id": "d",
            "video": 3,
            "conversations": [{"from": "human", "value": "<video>"}, {"from": "gpt", "value": "z"}],
        },
        {
            "id": "e",
            "video": "gone.mp4",
            "conversations": [{"from": "human", "value": "<video>"}, {"from": "gpt", "value": "z"}],
        },
    ]
    path.write_text(json.dumps(records))
    anns, errors = items(read_llava_video(str(path), str(videos)))
    assert [(a.id, a.source, a.kind, a.group, [m.kind for m in a.media]) for a in anns] == [
        ("llava_video-a", "llava_video", "conversation", "x.mp4", ["video"]),
        ("llava_video-b", "llava_video", "conversation", "x.mp4", ["video", "video"]),
    ]
    assert reasons(errors) == ["media_mismatch", "wrong_type", "missing_media"]
    assert_named(errors, path)
    templates = load_templates(VIDEO_TEMPLATES)
    (conv,) = shape_annotation(anns[1], templates, ShapingConfig(), {}, "train")["seen"]
    assert conv.messages[0].content == "<video>\n<video>\nCompare."  # a placeholder per video is added

    jsonl = tmp_path / "chat.jsonl"
    record = {
        "video": "y.mp4",
        "image": [],
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "ok"}],
    }
    jsonl.write_text(json.dumps(record) + "\n")
    (ann,), _ = items(read_jsonl(str(jsonl), str(videos)))
    assert [m.kind for m in ann.media] == ["video"] and ann.group == "y.mp4"


# --- shaping and templates -----------------------------------------------------------------


def test_video_annotations_become_video_tasks(tmp_path, videos):
    templates = load_templates(VIDEO_TEMPLATES)
    qa = tmp_path / "qa.json"
    qa.write_text(
        json.dumps(
            [
                {"video": "x", "question": "Which way does it move?", "answer": "left", "type": "direction"},
                {"video": "x", "question": "Does it move?", "answer": "yes"},
                {"video": "x", "question": "Which colour appears first?", "answer": "red", "type": "order"},
            ]
        )
    )
    (ann,) = [a for _, a in read_video_qa(str(qa), str(videos))]
    convs = shape_annotation(ann, templates, ShapingConfig(), {}, "val")["seen"]
    assert [c.meta["tasks"] for c in convs] == [["video_qa"], ["video_yesno"], ["video_order"]]
    hint = "Answer the question using a single word or phrase."
    assert [c.messages[0].content.endswith(hint) for c in convs] == [True, False, False]
    assert all(c.messages[0].content.startswith("<video>\n") and c.media == ann.media for c in convs)

    events = tmp_path / "events.json"
    events.write_text(json.dumps({"x": {"duration": 4, "timestamps": [[0, 2], [2, 4]], "sentences": ["A.", "B."]}}))
    (ann,) = [a for _, a in read_activitynet_captions(str(events), str(videos))]
    convs = shape_annotation(ann, templates, ShapingConfig(), {}, "val")["seen"]
    assert [c.meta["tasks"] for c in convs] == [
        ["video_dense_caption"],
        ["video_temporal"],
        ["video_temporal"],
        ["video_order"],
    ]
    assert convs[0].messages[-1].content == "0.0-2.0 s: A.\n2.0-4.0 s: B."
    held = shape_annotation(ann, templates, ShapingConfig(), {}, "val", held_out_templates=True)["seen"]
    assert all(t.split("-")[1].startswith("h") for c in held for t in c.meta["templates"])


def test_video_templates_have_training_and_held_out_wordings():
    templates = load_templates(VIDEO_TEMPLATES)
    assert set(templates) == VIDEO_TASKS
    for task, wordings in templates.items():
        assert sum(not t.held_out for t in wordings) >= 12 and sum(t.held_out for t in wordings) == 4, task
        assert all(t.held_out == t.id.split("-")[1].startswith("h") for t in wordings)
        fields = {"question"} if task not in ("video_caption", "video_dense_caption") else set()
        assert all(t.fields == fields for t in wordings), task
        texts = [t.text for t in wordings]
        assert len(set(texts)) == len(texts), task


# --- the demo ------------------------------------------------------------------------------


def test_demo_answers_are_balanced_and_held_out_pairs_stay_held_out():
    clips = plan_clips("seen", 120, seed=3)
    counts = answer_counts(clips)
    assert Counter(c.story for c in clips) == {"motion": 40, "order": 40, "change": 40}
    assert counts["moves"] == {"no": 20, "yes": 20}
    assert counts["direction"] == dict.fromkeys(sorted(DIRECTIONS), 5)
    assert counts["direction_check"] == {"no": 10, "yes": 10}
    for kind in ("first_colour", "new_colour"):
        assert sorted(counts[kind].values()) in ([6] * 2 + [7] * 4, [6] * 4 + [7] * 2), counts[kind]
        assert set(counts[kind]) == set(COLOURS)
    assert counts["all yes/no"] == {"no": 70, "yes": 70}
    assert set(counts) <= {*QUESTION_KINDS, "all yes/no"}

    def pairs(clip):
        return {(c, a.shape) for a in clip.actors for c in a.colours if c}

    assert not any(pairs(c) & set(HELDOUT_COMBOS) for c in clips)
    held = plan_clips("heldout_combos", 30, seed=3)
    assert all(pairs(c) & set(HELDOUT_COMBOS) for c in held)
    assert plan_clips("seen", 120, seed=3) == clips and plan_clips("seen", 120, seed=4) != clips


def _centre(frame: np.ndarray, colour: str) -> tuple[float, float] | None:
    """The centre of the pixels close to a palette colour (H.264 blurs edges and shifts colours a little)."""
    mask = np.abs(frame.astype(int) - np.array(PALETTE[colour])).sum(axis=2) < 60
    if mask.sum() < 20:
        return None
    ys, xs = np.nonzero(mask)
    return xs.mean(), ys.mean()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_videos(tmp_path_factory.mktemp("motion"), n_clips=18, n_heldout_clips=6, seed=1)


def test_demo_clips_show_what_their_answers_say(demo):
    questions = json.loads((demo.annotations("seen") / "msrvtt_qa.json").read_text())
    events = json.loads((demo.annotations("seen") / "activitynet_captions.json").read_text())
    by_video: dict[str, dict[str, str]] = {}
    for q in questions:
        by_video.setdefault(q["video"], {})[q["question"]] = q["answer"]
    checked = Counter()
    for name, asked in sorted(by_video.items()):
        data = (demo.videos_dir / f"{name}.mp4").read_bytes()
        clip = decode_video(data, name, VideoSampling(frames=8))
        first, last = np.asarray(clip.frames[0]), np.asarray(clip.frames[-1])
        assert clip.duration == pytest.approx(2.0) and first.shape == (64, 64, 3)
        assert events[name]["duration"] == 2.0 and events[name]["timestamps"][-1][1] == 2.0
        for question, answer in asked.items():
            if question.startswith("Which way does the "):
                colour = question.split()[4]
                (x0, y0), (x1, y1) = _centre(first, colour), _centre(last, colour)
                dx, dy = DIRECTIONS[answer]
                assert (x1 - x0) * dx + (y1 - y0) * dy > 15, (name, question, answer)  # moved that way
                assert abs((x1 - x0) * dy) + abs((y1 - y0) * dx) < 2  # and not across
                checked["direction"] += 1
            elif question.startswith("Does the ") and question.endswith(" move?") and answer == "no":
                colour = question.split()[2]
                assert np.allclose(_centre(first, colour), _centre(last, colour), atol=1)
                checked["still"] += 1
            elif question == "Which colour appears first?":
                second = next(c for c in COLOURS if c != answer and _centre(last, c) is not None)
                appear = [
                    next(i for i, f in enumerate(clip.frames) if _centre(np.asarray(f), c)) for c in (answer, second)
                ]
                assert appear[0] < appear[1], (name, appear)
                checked["order"] += 1
            elif question.startswith("What colour does the "):
                start = asked[question.replace("does the", "is the").replace("turn into?", "at the start?")]
                assert _centre(first, start) and not _centre(first, answer)
                assert _centre(last, answer) and not _centre(last, start)
                checked["change"] += 1
    assert checked["direction"] and checked["still"] and checked["order"] and checked["change"], checked


def test_demo_writes_each_layout_once_and_the_same_for_a_seed(demo, tmp_path):
    for split, n in zip(SPLITS, (18, 6)):
        folder = demo.annotations(split)
        captions = json.loads((folder / "msrvtt_captions.json").read_text())
        assert len(captions["videos"]) == n and len(captions["sentences"]) == 3 * n
        assert len(json.loads((folder / "activitynet_captions.json").read_text())) == n
        conversations = json.loads((folder / "llava_video.json").read_text())
        assert len(conversations) == n and all(
            c["conversations"][0]["value"].startswith("<video>\n") for c in conversations
        )
        assert len(json.loads((folder / "msrvtt_qa.json").read_text())) == demo.n_questions[split]
    before = {p: p.stat().st_mtime_ns for p in demo.root.rglob("*") if p.is_file()}
    write_demo_videos(demo.root, n_clips=18, n_heldout_clips=6, seed=1)
    assert {p: p.stat().st_mtime_ns for p in demo.root.rglob("*") if p.is_file()} == before  # nothing rewritten
    again = write_demo_videos(tmp_path / "again", n_clips=18, n_heldout_clips=6, seed=1)
    files = sorted(p.relative_to(demo.root) for p in demo.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again.root) for p in again.root.rglob("*") if p.is_file())
    # libx264's bytes may vary from run to run (its threaded lookahead); the annotations may not
    for path in (p for p in files if p.suffix == ".json"):
        assert (again.root / path).read_bytes() == (demo.root / path).read_bytes(), path


def test_decoded_clips_match_the_drawn_frames(demo):
    for clip in plan_clips("seen", 18, seed=1)[:6]:
        data = (demo.videos_dir / f"{clip.name}.mp4").read_bytes()
        decoded = decode_video(data, clip.name, VideoSampling(frames=8)).frames
        for drawn, frame in zip(render_clip(clip, 64), decoded):
            assert np.abs(drawn.astype(int) - np.asarray(frame)).mean() < 3, clip.name  # H.264 is lossy


# --- the build -----------------------------------------------------------------------------


def _sets(out: Path, names) -> dict[str, list[tuple[dict, dict]]]:
    """Each set's (record, conversation) pairs, read from the shards' own members."""
    sets = {}
    for name in names:
        pairs = []
        for url in shard_urls(out / name):
            for _, members in shard_members(url):
                record = json.loads(members["json"])
                assert all(f"{i}.{m['ext']}" in members for i, m in enumerate(record["media"]))
                pairs += [(record, c) for c in record["conversations"]]
        sets[name] = pairs
    return sets


def test_demo_video_tiny_recipe_builds(compose, tmp_path):
    cfg = compose(["data=demo_video_tiny"])
    assert cfg.data.source.recipe == "demo_video"
    overrides = [o for o in cfg.data.source.overrides if not o.startswith("out_dir=")]
    recipe = compose_recipe(
        "demo_video",
        [*overrides, f"out_dir={tmp_path / 'out'}", f"prepare.out_dir={tmp_path / 'src'}", "num_workers=1"],
    )
    manifest = build(recipe)
    assert not manifest["skipped_annotations"] and not any(s["skipped"] for s in manifest["sets"].values())
    sets = _sets(tmp_path / "out", manifest["sets"])
    assert set(sets) == {"train", "val_seen", "val_heldout_templates", "val_heldout_sources"}
    templates = load_templates(VIDEO_TEMPLATES)
    held_out = {t.id for wordings in templates.values() for t in wordings if t.held_out}
    for name, pairs in sets.items():
        assert pairs, name
        for record, conv in pairs:
            assert [m["kind"] for m in record["media"]] == ["video"]
            assert sum(m["content"].count("<video>") for m in conv["messages"]) == 1
            used = set(conv["meta"]["templates"])
            assert used <= held_out if name == "val_heldout_templates" else not used & held_out
    tasks = {t for _, c in sets["train"] for t in c["meta"]["tasks"]}
    assert tasks == VIDEO_TASKS | {"conversation"}
    heldout = {c["meta"]["group"] for _, c in sets["val_heldout_sources"]}
    assert len(heldout) == 8 and all(g.startswith("heldout_combos_") for g in heldout)
    train = {c["meta"]["group"] for _, c in sets["train"]}
    assert len(train) + len({c["meta"]["group"] for _, c in sets["val_seen"]}) == 24
