"""Audio-visual data: the video demo with a sound track (a beep as one of two shapes appears), read
as one clip's <video> and <audio>, shaped into av_qa / av_yesno, and its small build."""

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mmit.build import build, compose_recipe
from mmit.data.annotations import Annotation, read_video_qa
from mmit.data.audio import decode_audio
from mmit.data.demo.motion import (
    BEEP_HZ,
    BEEP_SECONDS,
    COLOURS,
    PALETTE,
    SPLITS,
    answer_counts,
    plan_clips,
    write_demo_videos,
)
from mmit.data.instructions import ShapingConfig, answer_pool, shape_annotation
from mmit.data.recipes import load_template_files
from mmit.data.shards import shard_members, shard_urls
from mmit.data.templates import load_templates
from mmit.data.video import VideoSampling, check_video, decode_video
from mmit.paths import RECIPES_DIR
from mmit.tasks import family

TEMPLATE_DIR = RECIPES_DIR / "templates"
AV_TASKS = {"av_qa", "av_yesno"}
BEEP_COLOUR = "Which colour appears when the beep sounds?"


def _beep(data: bytes, where: str) -> tuple[float, float] | None:
    """When the sound track's beep starts (seconds) and its pitch (Hz); None for faint noise only."""
    wave = decode_audio(data, where)
    loud = np.nonzero(np.abs(wave.samples) > 0.1)[0]
    if not len(loud):
        return None
    start = loud[0]
    tone = wave.samples[start : start + round(0.1 * wave.sample_rate)]
    spectrum = np.abs(np.fft.rfft(tone * np.hanning(len(tone))))
    return start / wave.sample_rate, np.fft.rfftfreq(len(tone), 1 / wave.sample_rate)[spectrum.argmax()]


def _shows(frame, colour: str) -> bool:
    """Whether a shape of a palette colour is on screen (H.264 blurs edges and shifts colours a little)."""
    close = np.abs(np.asarray(frame).astype(int) - np.array(PALETTE[colour])).sum(axis=2) < 60
    return close.sum() >= 20


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_videos(tmp_path_factory.mktemp("av"), n_clips=18, n_heldout_clips=6, seed=1, sound=True)


def _av_questions(demo, split: str) -> dict[str, dict[str, str]]:
    records = json.loads((demo.annotations(split) / "msrvtt_qa_av.json").read_text())
    by_clip: dict[str, dict[str, str]] = {}
    for r in records:
        assert r["type"] == "audio_visual" and r["id"].startswith(f"{r['video']}:av")
        by_clip.setdefault(r["video"], {})[r["question"]] = r["answer"]
    return by_clip


# --- the demo ------------------------------------------------------------------------------


def test_the_beep_sounds_as_the_answers_shape_appears(demo):
    checked = Counter()
    for split in SPLITS:
        asked = _av_questions(demo, split)
        video_only = json.loads((demo.annotations(split) / "msrvtt_qa.json").read_text())
        assert set(asked) == {r["video"] for r in video_only if r["type"] == "order"}  # each order clip's
        for name, questions in sorted(asked.items()):
            data = (demo.videos_dir / f"{name}.mp4").read_bytes()
            at, pitch = _beep(data, name)
            assert pitch == pytest.approx(BEEP_HZ, abs=20)
            assert at * 4 == pytest.approx(round(at * 4), abs=0.02), (name, at)  # on a frame's start (4 fps)
            clip = decode_video(data, name, VideoSampling(frames=8))
            during = max(i for i, t in enumerate(clip.timestamps) if t <= at + BEEP_SECONDS / 2)
            colour = questions[BEEP_COLOUR]
            assert _shows(clip.frames[during], colour), (name, colour)
            assert during == 0 or not _shows(clip.frames[during - 1], colour), (name, colour)  # appears then
            # both shapes are on screen by the end: the frames alone do not say which one the beep marks
            (other,) = [c for c in COLOURS if c != colour and _shows(clip.frames[-1], c)]
            (check,) = [q for q in questions if q != BEEP_COLOUR]
            assert (
                check == f"Does the beep sound when the {colour if questions[check] == 'yes' else other} shape appears?"
            )
            checked[questions[check]] += 1
    assert checked["yes"] and checked["no"], checked


def test_only_order_clips_beep_and_every_clip_has_a_sound_track(demo):
    beeping = set(_av_questions(demo, "seen")) | set(_av_questions(demo, "heldout_combos"))
    assert len(beeping) == sum(demo.n_av_questions.values()) / 2
    for path in sorted(demo.videos_dir.glob("*.mp4")):
        data = path.read_bytes()
        assert check_video(data, path.name).has_audio
        assert (_beep(data, path.name) is not None) == (path.stem in beeping), path.name


def test_beeps_are_balanced_and_leave_the_video_questions_as_they_were():
    clips = plan_clips("seen", 120, seed=3, sound=True)
    order = [c for c in clips if c.story == "order"]
    assert len(order) == 40 and all(len(c.av_questions) == 2 for c in order)
    assert not any(c.av_questions or c.beep_at is not None for c in clips if c.story != "order")
    on_first = Counter(c.beep_at == c.events[-2][0] for c in order)  # the first shape's appearance
    assert on_first == {True: 20, False: 20}
    counts = answer_counts(clips)
    assert counts["beep_check"] == {"no": 20, "yes": 20}
    assert sum(counts["beep_colour"].values()) == 40 and len(counts["beep_colour"]) >= 5
    silent = plan_clips("seen", 120, seed=3)
    assert [dataclasses.replace(c, beep_at=None, av_questions=()) for c in clips] == silent
    assert {k: v for k, v in counts.items() if not k.startswith(("beep", "all"))} == {
        k: v for k, v in answer_counts(silent).items() if k != "all yes/no"
    }
    assert plan_clips("seen", 120, seed=3, sound=True) == clips
    assert plan_clips("seen", 120, seed=4, sound=True) != clips


def test_the_sound_demo_is_the_same_for_a_seed_and_off_by_default(demo, tmp_path):
    again = write_demo_videos(tmp_path / "again", n_clips=18, n_heldout_clips=6, seed=1, sound=True)
    files = sorted(p.relative_to(demo.root) for p in demo.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again.root) for p in again.root.rglob("*") if p.is_file())
    for path in files:
        old, new = (demo.root / path).read_bytes(), (again.root / path).read_bytes()
        if path.suffix == ".mp4":
            old, new = (decode_audio(x).samples.tobytes() for x in (old, new))  # the sound track
        assert old == new, path
    silent = write_demo_videos(tmp_path / "silent", n_clips=6, n_heldout_clips=3, seed=1)
    assert "sound" not in json.loads((silent.root / "info.json").read_text()) and not silent.n_av_questions
    assert not list(silent.root.rglob("msrvtt_qa_av.json"))
    assert not any(check_video(p.read_bytes(), p.name).has_audio for p in silent.videos_dir.glob("*.mp4"))


# --- reading and shaping -------------------------------------------------------------------


def test_the_reader_gives_each_clip_as_its_video_and_its_audio(demo):
    path = demo.annotations("seen") / "msrvtt_qa_av.json"
    anns = [a for _, a in read_video_qa(str(path), str(demo.videos_dir), with_audio=True)]
    assert anns and all(isinstance(a, Annotation) for a in anns)
    for ann in anns:
        assert [m.kind for m in ann.media] == ["video", "audio"] and ann.media[0].path == ann.media[1].path
        assert ann.id == f"avqa-{ann.group}" and ann.source == "av_qa" and len(ann.qas) == 2
    plain = [a for _, a in read_video_qa(str(path), str(demo.videos_dir))]
    assert [a.group for a in plain] == [a.group for a in anns] and {a.id for a in plain}.isdisjoint(a.id for a in anns)
    assert answer_pool(anns) == {}  # no multiple-choice options drawn from them

    templates = load_template_files([str(TEMPLATE_DIR / "video.yaml"), str(TEMPLATE_DIR / "av.yaml")])
    convs = shape_annotation(anns[0], templates, ShapingConfig(), {}, "val")["seen"]
    assert sorted(t for c in convs for t in c.meta["tasks"]) == ["av_qa", "av_yesno"]
    hint = "Answer the question using a single word or phrase."
    for conv in convs:
        prompt = conv.messages[0].content
        assert prompt.startswith("<video>\n<audio>\n") and prompt.count("<video>") == prompt.count("<audio>") == 1
        assert prompt.endswith(hint) == (conv.meta["tasks"] == ["av_qa"]) and conv.media == anns[0].media
    held = shape_annotation(anns[0], templates, ShapingConfig(), {}, "val", held_out_templates=True)["seen"]
    assert all(t.split("-")[1].startswith("h") for c in held for t in c.meta["templates"])
    assert family("av_qa") == "short" and family("av_yesno") == "yesno"


def test_av_templates_have_training_and_held_out_wordings():
    templates = load_templates(TEMPLATE_DIR / "av.yaml")
    assert set(templates) == AV_TASKS
    for task, wordings in templates.items():
        assert sum(not t.held_out for t in wordings) >= 12 and sum(t.held_out for t in wordings) == 4, task
        assert all(t.held_out == t.id.split("-")[1].startswith("h") for t in wordings)
        assert all(t.fields == {"question"} for t in wordings), task
        assert len({t.text for t in wordings}) == len(wordings), task


# --- the build -----------------------------------------------------------------------------


def test_demo_av_tiny_recipe_builds(compose, tmp_path):
    cfg = compose(["data=demo_av_tiny"])
    assert cfg.data.source.recipe == "demo_av"
    overrides = [o for o in cfg.data.source.overrides if not o.startswith("out_dir=")]
    recipe = compose_recipe(
        "demo_av", [*overrides, f"out_dir={tmp_path / 'out'}", f"prepare.out_dir={tmp_path / 'src'}", "num_workers=1"]
    )
    assert recipe.prepare.sound is True
    manifest = build(recipe)
    assert not manifest["skipped_annotations"] and not any(s["skipped"] for s in manifest["sets"].values())
    held_out = {
        t.id
        for name in ("video.yaml", "av.yaml")
        for wordings in load_templates(TEMPLATE_DIR / name).values()
        for t in wordings
        if t.held_out
    }
    tasks: dict[str, set[str]] = {}
    for name in manifest["sets"]:
        for url in shard_urls(Path(tmp_path / "out" / name)):
            for _, members in shard_members(url):
                record = json.loads(members["json"])
                kinds = [m["kind"] for m in record["media"]]
                for conv in record["conversations"]:
                    text = "".join(m["content"] for m in conv["messages"])
                    assert text.count("<video>") == 1 and text.count("<audio>") == kinds.count("audio")
                    is_av = set(conv["meta"]["tasks"]) <= AV_TASKS
                    assert kinds == (["video", "audio"] if is_av else ["video"]), conv["id"]
                    used = set(conv["meta"]["templates"])
                    assert used <= held_out if name == "val_heldout_templates" else not used & held_out
                    tasks.setdefault(name, set()).update(conv["meta"]["tasks"])
                if kinds == ["video", "audio"]:  # one clip, stored as both items: the same bytes
                    video, audio = (members[f"{i}.{m['ext']}"] for i, m in enumerate(record["media"]))
                    assert video == audio
                    assert _beep(audio, record["conversations"][0]["id"]) is not None
    assert tasks["train"] == AV_TASKS | {"video_caption", "video_qa", "video_yesno", "video_order"}
    assert AV_TASKS <= tasks["val_heldout_sources"]
