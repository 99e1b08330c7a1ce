"""The offline video demo: short clips of coloured shapes whose questions need the order of the frames.

Each clip tells one of three stories on a plain background: a shape moves one way or stays still
(``motion``), two shapes appear one after the other (``order``), or a shape turns another colour
(``change``). No single frame answers "which way does it move", "which appears first" or "what
colour does it turn into"; the answers come exactly from the drawing plan, balanced (each
direction and colour equally often, yes/no half and half). The clips are written as H.264 MP4
(``mmit.data.video.write_clip``) with their annotations in the official layouts of MSR-VTT
(captions), MSRVTT-QA (questions), ActivityNet Captions (timestamped events) and LLaVA-Video
(conversations), so the same readers as real data consume them. ``HELDOUT_COMBOS`` (colour and
shape pairs) are drawn only in the held-out clips, so evaluation can test combinations of colour
and shape never seen in training, each colour and each shape being well known on its own.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmit.data.demo.scenes import BACKGROUNDS, PALETTE, SHAPES
from mmit.data.video import write_clip
from mmit.paths import atomic_write_text

log = logging.getLogger(__name__)

COLOURS = tuple(sorted(PALETTE))
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
MOVES = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}
# Never in the seen clips: each colour still appears with two other shapes, each shape with five colours.
HELDOUT_COMBOS = (("orange", "triangle"), ("purple", "square"), ("yellow", "circle"))
STORIES = ("motion", "order", "change")
SPLITS = ("seen", "heldout_combos")
NARRATION_PROMPTS = (
    "Describe what happens in the video, in order.",
    "What happens in this clip? Tell me step by step.",
    "Narrate the video from beginning to end.",
    "Walk me through the events of this video in the order they happen.",
)
Event = tuple[float, float, str]  # start, end (seconds), sentence
QUESTION_KINDS = {  # kind: the MSRVTT-QA "type" written for it (order: asked as temporal ordering)
    "moves": "motion",
    "direction": "direction",
    "direction_check": "direction",
    "first_colour": "order",
    "first_shape": "order",
    "order_check": "order",
    "new_colour": "colour_change",
    "old_colour": "colour_change",
    "change_check": "colour_change",
    "beep_colour": "audio_visual",  # the sound track's questions (sound=True): need the sound and the frames
    "beep_check": "audio_visual",
}
SAMPLE_RATE = 16000  # Hz, of the sound track
BEEP_HZ = 1000.0
BEEP_SECONDS = 0.15
BEEP_LEVEL = 0.5  # peak amplitude of the beep
NOISE_LEVEL = 0.003  # standard deviation of the faint noise under it (about -50 dBFS)


@dataclass(frozen=True)
class Actor:
    """One shape over the clip: its colour per frame (None: not on screen yet) and its centre per frame."""

    shape: str
    colours: tuple[str | None, ...]
    centres: tuple[tuple[float, float], ...]  # (x, y) in pixels


@dataclass(frozen=True)
class DemoQuestion:
    kind: str  # one of QUESTION_KINDS
    question: str
    answer: str

    def record(self, video: str, question_id: str) -> dict:
        """The question as an MSRVTT-QA record (with the optional answer_type and type)."""
        answer_type = "yes/no" if self.answer in ("yes", "no") else "other"
        return {
            "id": question_id,
            "video": video,
            "question": self.question,
            "answer": self.answer,
            "answer_type": answer_type,
            "type": QUESTION_KINDS[self.kind],
        }


@dataclass(frozen=True)
class MotionClip:
    name: str  # file stem in the videos folder
    story: str  # one of STORIES
    background: str
    actors: tuple[Actor, ...]
    events: tuple[Event, ...]  # in time order, as ActivityNet Captions gives them
    captions: tuple[str, ...]  # one-sentence summaries, as MSR-VTT gives them
    questions: tuple[DemoQuestion, ...]
    beep_at: float | None = None  # seconds: when the sound track beeps (sound=True, order clips)
    av_questions: tuple[DemoQuestion, ...] = ()  # about the beep: need the sound and the frames


@dataclass
class DemoVideoSources:
    """Where write_demo_videos put its files; ``annotations(split)`` is the folder of one split."""

    root: Path
    videos_dir: Path
    n_clips: dict[str, int]
    n_questions: dict[str, int]
    answers: dict[str, dict[str, dict[str, int]]]  # per split and question kind: how often each answer is right
    n_av_questions: dict[str, int] = dataclasses.field(default_factory=dict)  # sound=True: msrvtt_qa_av.json

    def annotations(self, split: str) -> Path:
        return self.root / "annotations" / split


def combos(split: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The (colour, shape) pairs a split draws for the shape a clip's answer is about, and for the
    others (the second shape to appear, the colour a shape had before it changed): held-out clips
    show a held-out pair in the first role and seen pairs in the others."""
    seen = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELDOUT_COMBOS]
    return (list(HELDOUT_COMBOS) if split == "heldout_combos" else seen), seen


def deck(values, n: int, rng: random.Random) -> list:
    """``n`` values, each of ``values`` equally often (to one), in a shuffled order: exact balance."""
    out = [values[i % len(values)] for i in range(n)]
    rng.shuffle(out)
    return out


def _seconds(frame: int, fps: float) -> float:
    return round(frame / fps, 3)


def capitalised(text: str) -> str:
    return text[0].upper() + text[1:]


def with_article(*words: str) -> str:
    """The words with their indefinite article: "a red circle", "an orange square"."""
    text = " ".join(words)
    return ("an " if text[0] in "aeiou" else "a ") + text


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _radius(size: int) -> float:
    return size / 8


def _still(centre: tuple[float, float], frames: int) -> tuple[tuple[float, float], ...]:
    return (centre,) * frames


def _spot(rng: random.Random, size: int, x_range: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
    """A centre that keeps the whole shape inside the frame, its x within ``x_range`` (fractions of the width)."""
    edge = _radius(size) * 1.2 + 1
    low, high = max(edge, x_range[0] * size + edge), min(size - edge, x_range[1] * size - edge)
    return round(rng.uniform(low, high), 1), round(rng.uniform(edge, size - edge), 1)


def motion_clip(
    name: str,
    rng: random.Random,
    main: list[tuple[str, str]],
    moves: bool,
    direction: str,
    truthful: bool,
    size: int,
    frames: int,
    fps: float,
) -> MotionClip:
    """A shape that moves ``direction`` for at least half the clip (resting before or after), or stays still."""
    colour, shape = rng.choice(main)
    thing = f"the {colour} {shape}"
    end_time = _seconds(frames, fps)
    if not moves:
        centres = _still(_spot(rng, size), frames)
        events: list[Event] = [(0.0, end_time, f"{capitalised(thing)} stays still.")]
        captions = (
            f"{capitalised(with_article(colour, shape))} stays still.",
            f"{capitalised(with_article(colour, shape))} sits in place and does not move.",
            f"Nothing moves: {thing} stays where it is.",
        )
        questions = [DemoQuestion("moves", f"Does {thing} move?", "no")]
    else:
        dx, dy = DIRECTIONS[direction]
        edge = _radius(size) * 1.2 + 1
        travel = rng.uniform(0.4, 0.55) * size
        along = rng.uniform(edge, size - edge - travel)  # where it starts, counted from the side it leaves
        across = rng.uniform(edge, size - edge)
        start_along = along if dx + dy > 0 else size - along
        begin, end = rng.randint(0, frames // 4), rng.randint(frames - 1 - frames // 4, frames - 1)
        centres = []
        for k in range(frames):
            done = min(1.0, max(0.0, (k - begin) / (end - begin)))
            position = start_along + (dx + dy) * travel * done
            centres.append((round(position, 1), round(across, 1)) if dx else (round(across, 1), round(position, 1)))
        events = [(0.0, _seconds(begin, fps), f"{capitalised(thing)} stays still.")] if begin else []
        events.append((_seconds(begin, fps), _seconds(end, fps), f"{capitalised(thing)} moves {MOVES[direction]}."))
        if end < frames - 1:
            events.append((_seconds(end, fps), end_time, f"{capitalised(thing)} stops."))
        captions = (
            f"{capitalised(with_article(colour, shape))} moves {MOVES[direction]}.",
            f"{capitalised(with_article(colour, shape))} slides {MOVES[direction]} across a plain background.",
            f"{capitalised(thing)} travels {MOVES[direction]}.",
        )
        asked = direction if truthful else rng.choice([d for d in DIRECTIONS if d != direction])
        questions = [
            DemoQuestion("moves", f"Does {thing} move?", "yes"),
            DemoQuestion("direction", f"Which way does {thing} move?", direction),
            DemoQuestion("direction_check", f"Does {thing} move {MOVES[asked]}?", _yes(truthful)),
        ]
        centres = tuple(centres)
    actor = Actor(shape, (colour,) * frames, tuple(centres))
    return MotionClip(name, "motion", _background(rng), (actor,), tuple(events), captions, tuple(questions))


def _background(rng: random.Random) -> str:
    return rng.choice(sorted(BACKGROUNDS))


def order_clip(
    name: str,
    rng: random.Random,
    main: list[tuple[str, str]],
    others: list[tuple[str, str]],
    first_colour: str,
    truthful: bool,
    size: int,
    frames: int,
    fps: float,
) -> MotionClip:
    """Two shapes of different colours and kinds appear one after the other and stay."""
    first_shape = rng.choice([s for c, s in main if c == first_colour])
    second_colour, second_shape = rng.choice([(c, s) for c, s in others if c != first_colour and s != first_shape])
    first_at = rng.randint(0, min(frames // 2 - 1, frames - 4))
    second_at = rng.randint(first_at + 2, frames - 2)
    left_first = rng.random() < 0.5
    spots = [_spot(rng, size, (0.0, 0.5)), _spot(rng, size, (0.5, 1.0))]
    first_spot, second_spot = spots if left_first else spots[::-1]
    actors = (
        Actor(
            first_shape,
            tuple(first_colour if k >= first_at else None for k in range(frames)),
            _still(first_spot, frames),
        ),
        Actor(
            second_shape,
            tuple(second_colour if k >= second_at else None for k in range(frames)),
            _still(second_spot, frames),
        ),
    )
    a, b = f"{first_colour} {first_shape}", f"{second_colour} {second_shape}"
    events: list[Event] = [(0.0, _seconds(first_at, fps), "The background is empty.")] if first_at else []
    events += [
        (_seconds(first_at, fps), _seconds(second_at, fps), f"{capitalised(with_article(a))} appears."),
        (_seconds(second_at, fps), _seconds(frames, fps), f"{capitalised(with_article(b))} appears."),
    ]
    captions = (
        f"{capitalised(with_article(a))} appears, then {with_article(b)}.",
        f"First {with_article(a)} and then {with_article(b)} appear.",
        f"{capitalised(with_article(b))} appears after {with_article(a)}.",
    )
    one, other = (first_shape, second_shape) if rng.random() < 0.5 else (second_shape, first_shape)
    asked = (b, a) if not truthful else (a, b)
    questions = (
        DemoQuestion("first_colour", "Which colour appears first?", first_colour),
        DemoQuestion("first_shape", f"Which shape appears first, the {one} or the {other}?", first_shape),
        DemoQuestion("order_check", f"Does the {asked[0]} appear before the {asked[1]}?", _yes(truthful)),
    )
    return MotionClip(name, "order", _background(rng), actors, tuple(events), captions, questions)


def change_clip(
    name: str,
    rng: random.Random,
    main: list[tuple[str, str]],
    others: list[tuple[str, str]],
    new_colour: str,
    truthful: bool,
    size: int,
    frames: int,
    fps: float,
) -> MotionClip:
    """A still shape that turns from one colour into another part-way through."""
    shape = rng.choice([s for c, s in main if c == new_colour])
    old_colour = rng.choice([c for c, s in others if s == shape and c != new_colour])
    at = rng.randint(2, frames - 2)
    actor = Actor(
        shape, tuple(old_colour if k < at else new_colour for k in range(frames)), _still(_spot(rng, size), frames)
    )
    events = (
        (0.0, _seconds(at, fps), f"{capitalised(with_article(old_colour, shape))} is shown."),
        (_seconds(at, fps), _seconds(frames, fps), f"The {shape} turns {new_colour}."),
    )
    captions = (
        f"{capitalised(with_article(old_colour, shape))} turns {new_colour}.",
        f"A {shape} changes colour from {old_colour} to {new_colour}.",
        f"The {shape} is {old_colour} at first and {new_colour} at the end.",
    )
    asked = new_colour if truthful else rng.choice([c for c in COLOURS if c not in (old_colour, new_colour)])
    questions = (
        DemoQuestion("new_colour", f"What colour does the {shape} turn into?", new_colour),
        DemoQuestion("old_colour", f"What colour is the {shape} at the start?", old_colour),
        DemoQuestion("change_check", f"Does the {shape} turn {asked}?", _yes(truthful)),
    )
    return MotionClip(name, "change", _background(rng), (actor,), events, captions, questions)


def with_beep(clip: MotionClip, on_first: bool, truthful: bool, fps: float) -> MotionClip:
    """An order clip whose sound track beeps as its first (or second) shape appears, with the
    questions only the sound and the frames together answer: the sound alone does not say which
    colour, and the frames alone show both shapes appear, not which of them the beep marks."""
    first, second = clip.actors
    beeping, silent = (first, second) if on_first else (second, first)
    at = next(k for k, c in enumerate(beeping.colours) if c is not None)
    colour, other = (next(c for c in actor.colours if c is not None) for actor in (beeping, silent))
    asked = colour if truthful else other
    questions = (
        DemoQuestion("beep_colour", "Which colour appears when the beep sounds?", colour),
        DemoQuestion("beep_check", f"Does the beep sound when the {asked} shape appears?", _yes(truthful)),
    )
    return dataclasses.replace(clip, beep_at=_seconds(at, fps), av_questions=questions)


def plan_clips(
    split: str, n: int, seed: int, size: int = 64, frames: int = 8, fps: float = 4.0, sound: bool = False
) -> list[MotionClip]:
    """The clips of one split: stories, directions, colours and yes/no answers dealt from balanced
    decks; with ``sound``, the order clips' beeps too (from decks of their own, so the clips and
    their video questions are the same with or without)."""
    if frames < 6:
        raise ValueError(f"the video demo needs at least 6 frames per clip, not {frames}")
    if size % 2 or size < 32:
        raise ValueError(f"the video demo needs an even frame size of at least 32 px, not {size}")
    main, others = combos(split)
    colours = sorted({c for c, _ in main})
    deal = random.Random(f"{seed}:{split}:decks")
    stories = deck(STORIES, n, deal)
    counts = Counter(stories)
    moving = deck([True, False], counts["motion"], deal)
    directions = iter(deck(list(DIRECTIONS), sum(moving), deal))
    direction_truth = iter(deck([True, False], sum(moving), deal))
    first_colours = iter(deck(colours, counts["order"], deal))
    order_truth = iter(deck([True, False], counts["order"], deal))
    new_colours = iter(deck(colours, counts["change"], deal))
    change_truth = iter(deck([True, False], counts["change"], deal))
    moves = iter(moving)
    clips = []
    for i, story in enumerate(stories, start=1):
        name, rng = f"{split}_{i:05d}", random.Random(f"{seed}:{split}:{i}")
        if story == "motion":
            move = next(moves)
            direction, truthful = (next(directions), next(direction_truth)) if move else ("left", True)
            clips.append(motion_clip(name, rng, main, move, direction, truthful, size, frames, fps))
        elif story == "order":
            first = next(first_colours)
            clips.append(order_clip(name, rng, main, others, first, next(order_truth), size, frames, fps))
        else:
            new = next(new_colours)
            clips.append(change_clip(name, rng, main, others, new, next(change_truth), size, frames, fps))
    if sound:
        beeps = random.Random(f"{seed}:{split}:beeps")
        on_first = iter(deck([True, False], counts["order"], beeps))
        beep_truth = iter(deck([True, False], counts["order"], beeps))
        clips = [with_beep(c, next(on_first), next(beep_truth), fps) if c.story == "order" else c for c in clips]
    return clips


def _pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return xs, ys


def _shape_mask(shape: str, centre: tuple[float, float], radius: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    x, y = xs - centre[0], ys - centre[1]
    if shape == "circle":
        return x * x + y * y <= radius * radius
    if shape == "square":
        side = 0.85 * radius
        return (np.abs(x) <= side) & (np.abs(y) <= side)
    top = 1.15 * radius  # the triangle's circumradius, so its area is closer to the others'
    return (y >= -top) & (y <= top / 2) & (np.abs(x) <= (y + top) / math.sqrt(3))


def render_clip(clip: MotionClip, size: int) -> list[np.ndarray]:
    """The clip's frames, (size, size, 3) uint8 RGB each."""
    xs, ys = _pixel_centres(size)
    radius = _radius(size)
    out = []
    for k in range(len(clip.actors[0].colours)):
        frame = np.empty((size, size, 3), np.uint8)
        frame[:] = BACKGROUNDS[clip.background]
        for actor in clip.actors:
            if actor.colours[k] is not None:
                frame[_shape_mask(actor.shape, actor.centres[k], radius, xs, ys)] = PALETTE[actor.colours[k]]
        out.append(frame)
    return out


def render_sound(clip: MotionClip, frames: int, fps: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The clip's sound track, mono float32 in [-1, 1]: faint noise (seeded by the clip's name) for
    the clip's length, and its beep, if any: a 1 kHz tone with 5 ms fades, starting at ``beep_at``."""
    length = round(frames / fps * sample_rate)
    if clip.beep_at is not None:
        length = max(length, round((clip.beep_at + BEEP_SECONDS) * sample_rate))
    noise = np.random.default_rng(random.Random(f"{clip.name}:noise").getrandbits(64))
    samples = NOISE_LEVEL * noise.standard_normal(length)
    if clip.beep_at is not None:
        t = np.arange(round(BEEP_SECONDS * sample_rate)) / sample_rate
        fade = np.clip(np.minimum(t, BEEP_SECONDS - t) / 0.005, 0.0, 1.0)
        start = round(clip.beep_at * sample_rate)
        samples[start : start + len(t)] += BEEP_LEVEL * fade * np.sin(2 * np.pi * BEEP_HZ * t)
    return np.clip(samples, -1.0, 1.0).astype(np.float32)


def narration(clip: MotionClip) -> str:
    """The events in order, told as a short story (LLaVA-Video's free-form answers)."""
    texts = [e[2] for e in clip.events]
    if len(texts) == 1:
        return texts[0]
    lead = ["First, ", *["Then "] * (len(texts) - 2), "Finally, " if len(texts) > 2 else "Then "]
    return " ".join(word + text[0].lower() + text[1:] for word, text in zip(lead, texts))


def _annotation_files(clips: list[MotionClip], split: str, seed: int, fps: float, frames: int) -> dict[str, str]:
    """The split's annotation files, by name, in the official layouts."""
    videos = [{"video_id": c.name, "split": split, "id": i} for i, c in enumerate(clips)]
    captions = [(c.name, text) for c in clips for text in c.captions]
    sentences = [{"video_id": name, "caption": text, "sen_id": k} for k, (name, text) in enumerate(captions)]
    questions = [qa.record(c.name, f"{c.name}:{j}") for c in clips for j, qa in enumerate(c.questions)]
    events = {
        c.name: {
            "duration": _seconds(frames, fps),
            "timestamps": [[start, end] for start, end, _ in c.events],
            "sentences": [text for _, _, text in c.events],
        }
        for c in clips
    }
    conversations = []
    for c in clips:
        prompt = random.Random(f"{seed}:{c.name}:prompt").choice(NARRATION_PROMPTS)
        conversations.append(
            {
                "id": c.name,
                "video": f"{c.name}.mp4",
                "conversations": [
                    {"from": "human", "value": f"<video>\n{prompt}"},
                    {"from": "gpt", "value": narration(c)},
                ],
            }
        )
    info = {"description": f"mmit video demo ({split})", "version": "1.0"}
    files = {
        "msrvtt_captions.json": json.dumps({"info": info, "videos": videos, "sentences": sentences}),
        "msrvtt_qa.json": json.dumps(questions),
        "activitynet_captions.json": json.dumps(events),
        "llava_video.json": json.dumps(conversations),
    }
    if any(c.beep_at is not None for c in clips):  # sound=True: the questions that need the sound track too
        av = [qa.record(c.name, f"{c.name}:av{j}") for c in clips for j, qa in enumerate(c.av_questions)]
        files["msrvtt_qa_av.json"] = json.dumps(av)
    return files


def answer_counts(clips: list[MotionClip]) -> dict[str, dict[str, int]]:
    """How often each answer is the right one, per question kind, and over all yes/no questions."""
    counts: dict[str, Counter] = {}
    for qa in (qa for clip in clips for qa in (*clip.questions, *clip.av_questions)):
        counts.setdefault(qa.kind, Counter())[qa.answer] += 1
        if qa.answer in ("yes", "no"):
            counts.setdefault("all yes/no", Counter())[qa.answer] += 1
    return {kind: dict(sorted(counts[kind].items())) for kind in [*QUESTION_KINDS, "all yes/no"] if kind in counts}


def write_demo_videos(
    out_dir: str | Path,
    n_clips: int = 600,
    n_heldout_clips: int = 90,
    seed: int = 0,
    size: int = 64,
    frames: int = 8,
    fps: float = 4.0,
    sound: bool = False,
) -> DemoVideoSources:
    """Draw and encode the clips and write their annotation files once; return where they are.
    ``sound``: each clip with a sound track (AAC, 16 kHz), the order clips' with a beep, and the
    questions about the beep in ``msrvtt_qa_av.json``."""
    root = Path(out_dir)
    info = {
        "seed": seed,
        "n_clips": n_clips,
        "n_heldout_clips": n_heldout_clips,
        "size": size,
        "frames": frames,
        "fps": fps,
        "version": "1.0",
    }
    if sound:  # only then: a silent demo's info.json stays as it was
        info["sound"] = True
    counts = {"seen": n_clips, "heldout_combos": n_heldout_clips}
    plans = {split: plan_clips(split, counts[split], seed, size, frames, fps, sound) for split in SPLITS}
    answers = {split: answer_counts(plans[split]) for split in SPLITS}
    sources = DemoVideoSources(
        root,
        root / "videos",
        counts,
        {split: sum(len(c.questions) for c in plans[split]) for split in SPLITS},
        answers,
        {split: sum(len(c.av_questions) for c in plans[split]) for split in SPLITS} if sound else {},
    )
    done = root / "info.json"
    if done.exists() and json.loads(done.read_text()) == info:
        return sources
    done.unlink(missing_ok=True)  # a run killed part-way is never taken as finished
    sources.videos_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        for clip in plans[split]:
            audio = render_sound(clip, frames, fps) if sound else None
            write_clip(sources.videos_dir / f"{clip.name}.mp4", render_clip(clip, size), fps, audio, SAMPLE_RATE)
        folder = sources.annotations(split)
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in _annotation_files(plans[split], split, seed, fps, frames).items():
            atomic_write_text(folder / name, text)
    atomic_write_text(done, json.dumps(info))
    log.info(
        "wrote %d clips and %d held-out-combination clips (%d x %d px, %d frames at %g fps) with %d + %d questions to %s",
        n_clips,
        n_heldout_clips,
        size,
        size,
        frames,
        fps,
        sources.n_questions["seen"],
        sources.n_questions["heldout_combos"],
        root,
    )
    if sound:
        log.info(
            "  with sound: %d + %d questions about the beep in msrvtt_qa_av.json",
            sources.n_av_questions["seen"],
            sources.n_av_questions["heldout_combos"],
        )
    for kind, count in sources.answers["seen"].items():
        log.info("  %-15s %s", kind, ", ".join(f"{a} {n}" for a, n in count.items()))
    return sources


def write_direction_set(folder: str | Path, name: str, n: int, seed: int, frames: int = 4, size: int = 32) -> Path:
    """The smallest question only a clip's frame order answers, as a JSONL data file: a square moves
    left or right (alternately), from a random start, so any one frame is as likely in either clip.
    ``<name>-<i>.mp4`` clips beside ``<name>.jsonl``; for tests and ``tools/video_temporal.py``."""
    folder = Path(folder)
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        direction = "right" if i % 2 == 0 else "left"
        start = rng.randint(0, 4)
        xs = (
            [start + 5 * k for k in range(frames)]
            if direction == "right"
            else [start + 15 - 5 * k for k in range(frames)]
        )
        colour = [rng.randint(150, 255), rng.randint(0, 90), rng.randint(0, 255)]
        clip = []
        for x in xs:
            frame = np.full((size, size, 3), 20, np.uint8)
            frame[10:22, x : x + 12] = colour
            clip.append(frame)
        path = folder / f"{name}-{i:03d}.mp4"
        write_clip(path, clip, fps=4)
        messages = [
            {"role": "user", "content": "<video>\nWhich way does the square move?"},
            {"role": "assistant", "content": direction},
        ]
        record = {"id": f"{name}-{i}", "video": path.name, "messages": messages, "meta": {"tasks": ["video_qa"]}}
        lines.append(json.dumps(record))
    out = folder / f"{name}.jsonl"
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out
