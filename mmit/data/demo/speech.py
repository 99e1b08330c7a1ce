"""The offline audio demo: short sentences spoken by espeak-ng, with exact ground truth from the text.

Each clip says one sentence such as "there are three green cups on the table", in one of
several voices (accent x variant), at a drawn speed and pitch, then varied with sox (sample
rate 8 to 48 kHz, mono or stereo, WAV or FLAC, leading silence, level). From the synthesis
settings and the text come captions of the voice (Clotho CSV layout), spoken-content
questions about colour, object, number and place (audio QA JSONL) and the transcript
(transcript JSONL): the same readers as real data consume them. ``HELDOUT_VOICES`` speak only
in the held-out files, so evaluation can test voices never heard in training.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import random
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mmit.paths import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Voice:
    espeak: str  # espeak-ng voice: language + "+variant"
    accent: str
    gender: str  # man | woman


# Chosen among espeak-ng's English voices for speech that Whisper base transcribes correctly.
SEEN_VOICES = (
    Voice("en-us", "American", "man"),
    Voice("en-us+m3", "American", "man"),
    Voice("en-us+f2", "American", "woman"),
    Voice("en-gb+m7", "British", "man"),
    Voice("en-gb+f1", "British", "woman"),
    Voice("en-gb+Annie", "British", "woman"),
    Voice("en-gb-x-rp+m2", "British", "man"),
    Voice("en-gb-scotland", "Scottish", "man"),
)
# Never in training: new voices with accents and genders that training has.
HELDOUT_VOICES = (
    Voice("en-us+f4", "American", "woman"),
    Voice("en-us+Linda", "American", "woman"),
    Voice("en-gb", "British", "man"),
)
COLOURS = ("red", "green", "blue", "yellow", "black", "white", "orange", "purple")
OBJECTS = {
    "ball": "balls",
    "cup": "cups",
    "book": "books",
    "box": "boxes",
    "hat": "hats",
    "shoe": "shoes",
    "key": "keys",
    "bottle": "bottles",
}
PLACES = ("under the chair", "on the table", "next to the lamp", "behind the door", "in the kitchen", "near the window")
NUMBERS = ("one", "two", "three", "four", "five")
SPEEDS = (120, 190)  # words per minute
PITCHES = (25, 75)  # espeak-ng's 0-99 scale
SAMPLE_RATES = (8000, 16000, 22050, 44100, 48000)
SPLITS = ("seen", "heldout_voices")


@dataclass(frozen=True)
class Clip:
    name: str  # file name in the audio folder
    voice: Voice
    speed: int
    pitch: int
    colour: str
    object: str
    count: int
    place: str
    text: str
    sample_rate: int
    channels: int
    lead_seconds: float
    gain_db: float


@dataclass
class DemoSpeechSources:
    """Where write_demo_speech put its files; ``annotations(split)`` is the folder of one voice set."""

    root: Path
    audio_dir: Path
    n_clips: dict[str, int]

    def annotations(self, split: str) -> Path:
        return self.root / "annotations" / split


def draw_clip(rng: random.Random, stem: str, voices: tuple[Voice, ...]) -> Clip:
    """One sentence and the way it is spoken and recorded (as WAV or FLAC)."""
    colour, obj, place = rng.choice(COLOURS), rng.choice(sorted(OBJECTS)), rng.choice(PLACES)
    count = rng.randint(1, 5)
    if count == 1:
        text = rng.choice([f"the {colour} {obj} is {place}", f"there is one {colour} {obj} {place}"])
    else:
        noun = f"{NUMBERS[count - 1]} {colour} {OBJECTS[obj]}"
        text = rng.choice([f"there are {noun} {place}", f"I can see {noun} {place}"])
    return Clip(
        f"{stem}.{rng.choice(('wav', 'flac'))}",
        rng.choice(voices),
        rng.randint(*SPEEDS),
        rng.randint(*PITCHES),
        colour,
        obj,
        count,
        place,
        text,
        rng.choice(SAMPLE_RATES),
        rng.choice((1, 1, 2)),
        round(rng.uniform(0.0, 0.5), 2),
        round(rng.uniform(-8.0, 0.0), 1),
    )


def _pace(clip: Clip) -> str:
    return "slowly" if clip.speed < 140 else "quickly" if clip.speed > 170 else "at a steady pace"


def _pitch(clip: Clip) -> str:
    return "low" if clip.pitch < 40 else "high" if clip.pitch > 60 else "medium"


def _an(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def clip_captions(clip: Clip) -> list[str]:
    """Five exact descriptions of the recording (Clotho has five captions per clip)."""
    v, pace, pitch = clip.voice, _pace(clip), _pitch(clip)
    return [
        f"A {v.gender} with {_an(v.accent)} accent speaks {pace}.",
        f"{_an(v.accent)[0].upper()}{_an(v.accent)[1:]} {v.gender} says a short sentence {pace} in a {pitch} voice.",
        f"Someone speaks {pace} in a {pitch}-pitched {v.accent} voice.",
        f"A {v.gender} talks {pace} with {_an(v.accent)} accent and a {pitch} voice.",
        f"Speech by {_an(v.gender)} with {_an(v.accent)} accent, {pace}, {pitch} pitch.",
    ]


def clip_questions(clip: Clip, rng: random.Random) -> list[dict]:
    """Spoken-content questions with exact answers: colour, object, number, place and a yes/no check."""
    plural = clip.count > 1
    noun = OBJECTS[clip.object] if plural else clip.object
    be = "are" if plural else "is"
    other = rng.choice([c for c in COLOURS if c != clip.colour])
    asked = rng.choice((clip.colour, other))
    return [
        {"question": f"What colour {be} the {noun}?", "answer": clip.colour, "answer_type": "other"},
        {"question": "Which kind of object does the speaker mention?", "answer": clip.object, "answer_type": "other"},
        {"question": f"How many {OBJECTS[clip.object]} are there?", "answer": str(clip.count), "answer_type": "number"},
        {"question": f"Where {be} the {noun}?", "answer": clip.place, "answer_type": "other"},
        {
            "question": f"{be.capitalize()} the {noun} {asked}?",
            "answer": "yes" if asked == clip.colour else "no",
            "answer_type": "yes/no",
        },
    ]


def synthesize(clip: Clip, out: Path) -> None:
    """espeak-ng speaks the text; sox resamples, sets channels, pads the start and sets the level."""
    with tempfile.TemporaryDirectory(prefix="mmit-speech-") as tmp:
        raw = Path(tmp) / "raw.wav"
        speak = ["espeak-ng", "-v", clip.voice.espeak, "-s", str(clip.speed), "-p", str(clip.pitch), "-w", str(raw)]
        subprocess.run([*speak, clip.text], check=True, capture_output=True)
        final = Path(tmp) / out.name
        convert = ["sox", str(raw), "-r", str(clip.sample_rate), "-c", str(clip.channels), "-b", "16", str(final)]
        subprocess.run([*convert, "pad", str(clip.lead_seconds), "0", "gain", str(clip.gain_db)], check=True)
        atomic_write_bytes(out, final.read_bytes())


def _check_tools() -> None:
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        raise FileNotFoundError(
            f"the audio demo needs {' and '.join(missing)} on PATH: apt-get install -y espeak-ng sox"
        )


def _clotho_csv(rows: list[tuple[str, list[str]]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file_name", *(f"caption_{i}" for i in range(1, 6))])
    for name, captions in rows:
        writer.writerow([name, *captions])
    return out.getvalue()


def write_demo_speech(
    out_dir: str | Path, n_clips: int = 300, n_heldout_clips: int = 60, seed: int = 0, workers: int = 2
) -> DemoSpeechSources:
    """Synthesise the clips and write their annotation files once; return where they are."""
    root = Path(out_dir)
    info = {"seed": seed, "n_clips": n_clips, "n_heldout_clips": n_heldout_clips, "version": "1.0"}
    counts = {"seen": n_clips, "heldout_voices": n_heldout_clips}
    sources = DemoSpeechSources(root, root / "audio", counts)
    done = root / "info.json"
    if done.exists() and json.loads(done.read_text()) == info:
        return sources
    _check_tools()
    done.unlink(missing_ok=True)  # a run killed part-way is never taken as finished
    sources.audio_dir.mkdir(parents=True, exist_ok=True)
    clips: dict[str, list[Clip]] = {}
    for split, voices in zip(SPLITS, (SEEN_VOICES, HELDOUT_VOICES)):
        clips[split] = [
            draw_clip(random.Random(f"{seed}:{split}:{i}"), f"{split}-{i:05d}", voices)
            for i in range(1, counts[split] + 1)
        ]
    every = [c for split in SPLITS for c in clips[split]]
    with ThreadPoolExecutor(max(1, workers)) as pool:  # the work is in the espeak-ng / sox processes
        list(pool.map(lambda c: synthesize(c, sources.audio_dir / c.name), every))

    for split in SPLITS:
        folder = sources.annotations(split)
        folder.mkdir(parents=True, exist_ok=True)
        qa_lines, transcripts, captions = [], [], []
        for clip in clips[split]:
            rng = random.Random(f"{seed}:questions:{clip.name}")
            for k, qa in enumerate(clip_questions(clip, rng)):
                qa_lines.append(json.dumps({"audio": clip.name, **qa, "question_id": f"{clip.name}:{k}"}))
            transcripts.append(json.dumps({"audio": clip.name, "text": clip.text}))
            captions.append((clip.name, clip_captions(clip)))
        atomic_write_text(folder / "clotho_captions.csv", _clotho_csv(captions))
        atomic_write_text(folder / "audio_qa.jsonl", "\n".join(qa_lines) + "\n")
        atomic_write_text(folder / "transcripts.jsonl", "\n".join(transcripts) + "\n")
    atomic_write_text(done, json.dumps(info))
    log.info(
        "wrote %d clips (%d seen voices) and %d held-out-voice clips (%d voices) to %s",
        n_clips,
        len(SEEN_VOICES),
        n_heldout_clips,
        len(HELDOUT_VOICES),
        root,
    )
    return sources
