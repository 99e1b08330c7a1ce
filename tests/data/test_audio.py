"""Audio data: decoding and its checks, the long-clip policy, the audio readers, shaping, the build
and the espeak-ng demo, on small files written here."""

import io
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile
from omegaconf import OmegaConf

from mmit.build import BuildError, build, compose_recipe
from mmit.data.annotations import (
    read_audio_caption_jsonl,
    read_audio_qa_jsonl,
    read_audiocaps,
    read_clotho_captions,
    read_jsonl,
    read_transcript_jsonl,
)
from mmit.data.audio import AudioPolicy, check_audio, decode_audio, prepare_audio, resample
from mmit.data.instructions import ShapingConfig, shape_annotation
from mmit.data.samples import SampleError
from mmit.data.shards import read_shards, shard_urls
from mmit.data.templates import load_templates
from mmit.paths import RECIPES_DIR

AUDIO_TEMPLATES = RECIPES_DIR / "templates" / "audio.yaml"


def tone(seconds: float = 1.0, rate: int = 16000, channels: int = 1, freq: float = 440.0, fmt: str = "WAV") -> bytes:
    """A sine tone (channels differ in level) encoded as WAV or FLAC."""
    t = np.arange(round(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t)
    samples = np.stack([wave * (1.0 - 0.5 * c) for c in range(channels)], axis=1)
    out = io.BytesIO()
    soundfile.write(out, samples, rate, format=fmt, subtype="PCM_16")
    return out.getvalue()


def reason(data: bytes, policy: AudioPolicy | None = None) -> str:
    with pytest.raises(SampleError) as err:
        check_audio(data, "clip.wav", policy or AudioPolicy())
    assert "clip.wav" in str(err.value)  # the message names the file
    return err.value.reason


# --- decoding and checks -----------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
def test_any_rate_resamples_to_the_encoder_rate(rate):
    wave = decode_audio(tone(1.5, rate))
    assert wave.sample_rate == rate and wave.seconds == pytest.approx(1.5)
    at_16k = resample(wave, 16000)
    assert abs(at_16k.numel() - 24000) <= 1 and float(at_16k.abs().max()) == pytest.approx(0.5, abs=0.02)


def test_stereo_is_averaged_to_mono():
    wave = decode_audio(tone(0.5, 44100, channels=2, fmt="FLAC"))
    assert wave.samples.ndim == 1 and float(np.abs(wave.samples).max()) == pytest.approx(0.375, abs=0.01)


def test_bad_audio_kinds_have_their_own_reasons():
    good = tone(1.0)
    assert reason(b"") == "audio_empty"
    assert reason(tone(0.0)) == "audio_empty"  # a valid header and no samples
    assert reason(b"this is not audio at all" * 20) == "audio_undecodable"
    assert reason(good[: len(good) // 2]) == "audio_truncated"  # WAV: data chunk larger than the file
    flac = tone(2.0, fmt="FLAC")
    assert reason(flac[: len(flac) // 2]) == "audio_truncated"
    assert reason(_silence()) == "audio_silent"
    assert reason(tone(12.0), AudioPolicy(max_seconds=10, long_clips="skip")) == "audio_too_long"
    assert check_audio(tone(12.0), "long.wav", AudioPolicy(max_seconds=10)).seconds == pytest.approx(12.0)


def test_audio_that_would_decode_to_gigabytes_is_refused_before_decoding(monkeypatch):
    """Hours of compressed silence are a few MB on disk and tens of GB decoded: the clip's declared
    length decides, before a sample is read. A FLAC header claiming 2^35 frames, and, with a lower
    limit, a real clip."""
    import mmit.data.audio as audio

    flac = bytearray(tone(1.0, fmt="FLAC"))
    assert flac[:4] == b"fLaC" and flac[4] & 0x7F == 0  # STREAMINFO first: total frames in 36 bits at 21..25
    total = 1 << 35
    flac[21] = (flac[21] & 0xF0) | (total >> 32)
    flac[22:26] = (total & 0xFFFFFFFF).to_bytes(4, "big")
    with pytest.raises(SampleError, match="34359738368 frames x 1 channels decode to over 1 GiB") as raised:
        decode_audio(bytes(flac), "hours.flac")
    assert raised.value.reason == "audio_too_long"
    monkeypatch.setattr(audio, "MAX_AUDIO_VALUES", 2 * 8000 - 1)
    assert reason(tone(1.0, 8000, channels=2)) == "audio_too_long"
    assert decode_audio(tone(1.0, 8000)).seconds == pytest.approx(1.0)


def test_a_sound_track_is_counted_as_it_decodes(monkeypatch):
    """FFmpeg's sound tracks (AAC in MP4) have no header to trust: their decoded values are counted,
    and decoding stops past the limit (it had none)."""
    import mmit.data.audio as audio

    assert 2.0 <= decode_audio(_aac_mp4(2.0), "clip.mp4").seconds < 2.2  # with AAC's priming samples
    monkeypatch.setattr(audio, "MAX_AUDIO_VALUES", 8000)
    with pytest.raises(SampleError, match=r"clip.mp4: the sound track decodes to over") as raised:
        decode_audio(_aac_mp4(2.0), "clip.mp4")
    assert raised.value.reason == "audio_too_long"


def _aac_mp4(seconds: float, rate: int = 16000) -> bytes:
    import av

    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate, layout="mono")
        t = np.arange(round(seconds * rate)) / rate
        frame = av.AudioFrame.from_ndarray(
            (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None], format="flt", layout="mono"
        )
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return out.getvalue()


@pytest.mark.parametrize("value", [np.nan, np.inf, 1e30], ids=["nan", "inf", "1e30"])
def test_float_audio_that_is_not_sound_is_refused(value):
    """A float WAV holding NaN, inf or 1e30 decoded and passed every check: training then skipped
    every batch holding it as a NaN loss, naming no file, and lost the batch's good samples too."""
    out = io.BytesIO()
    samples = np.full(16000, 0.25, np.float32)
    samples[100] = value
    soundfile.write(out, samples, 16000, format="WAV", subtype="FLOAT")
    assert reason(out.getvalue()) == "audio_undecodable"
    out = io.BytesIO()
    soundfile.write(out, np.full(16000, 30000.0, np.float32), 16000, format="WAV", subtype="FLOAT")
    assert decode_audio(out.getvalue()).seconds == pytest.approx(1.0)  # 16-bit scale in a float file: kept


def _silence() -> bytes:
    out = io.BytesIO()
    soundfile.write(out, np.zeros(16000), 16000, format="WAV")
    return out.getvalue()


def test_long_clip_policy_truncate_split_skip():
    data = tone(25.0, 8000)
    kept = prepare_audio(data, "wav", "long.wav", AudioPolicy(max_seconds=10))
    assert kept.items == [("wav", data)] and kept.long == "truncated"  # original bytes; the encoder cuts
    split = prepare_audio(data, "wav", "long.wav", AudioPolicy(max_seconds=10, long_clips="split"))
    assert split.long == "split" and [ext for ext, _ in split.items] == ["wav"] * 3
    assert [decode_audio(w).seconds for _, w in split.items] == pytest.approx([10.0, 10.0, 5.0])
    capped = prepare_audio(data, "wav", "long.wav", AudioPolicy(max_seconds=10, long_clips="split", max_windows=2))
    assert capped.long == "split_truncated" and len(capped.items) == 2
    short = prepare_audio(tone(2.0), "wav", "short.wav", AudioPolicy(max_seconds=10, long_clips="split"))
    assert short.long == "" and len(short.items) == 1
    with pytest.raises(SampleError, match="longer than"):
        prepare_audio(data, "wav", "long.wav", AudioPolicy(max_seconds=10, long_clips="skip"))
    with pytest.raises(ValueError, match="long_clips"):
        AudioPolicy(long_clips="chop")


def test_long_clip_policy_windows_keeps_one_item_up_to_max_windows():
    policy = AudioPolicy(max_seconds=5, long_clips="windows", max_windows=3)
    cut = prepare_audio(tone(20.0, 8000), "wav", "long.wav", policy)
    assert cut.long == "truncated" and [ext for ext, _ in cut.items] == ["wav"]  # what the encoder's windows read
    assert decode_audio(cut.items[0][1]).seconds == pytest.approx(15.0)
    whole = tone(12.0, 8000, fmt="FLAC")
    kept = prepare_audio(whole, "flac", "mid.flac", policy)
    assert kept.items == [("flac", whole)] and kept.long == "windows"  # one item, its original bytes
    assert prepare_audio(tone(4.0), "wav", "short.wav", policy).long == ""


# --- readers -------------------------------------------------------------------------------


@pytest.fixture
def clips(tmp_path) -> Path:
    folder = tmp_path / "audio"
    folder.mkdir()
    for i, rate in enumerate([16000, 44100, 8000, 48000]):
        (folder / f"c{i}.wav").write_bytes(tone(1.0 + i * 0.5, rate, freq=300 + 100 * i))
    return folder


def items(reader) -> tuple[list, list[str]]:
    got = list(reader)
    return [a for _, a in got if not isinstance(a, SampleError)], [
        a.reason for _, a in got if isinstance(a, SampleError)
    ]


def test_clotho_reader(tmp_path, clips):
    csv_file = tmp_path / "clotho_captions_development.csv"
    csv_file.write_text(
        "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
        'c0.wav,A tone plays.,"A beep, steady.",A sound.,A hum.,A note.\n'
        "c1.wav,,,,,\n"
        "gone.wav,A missing file.,x,x,x,x\n"
        "c0.wav,Twice.,x,x,x,x\n"
    )
    anns, errors = items(read_clotho_captions(str(csv_file), str(clips)))
    assert [a.captions for a in anns] == [["A tone plays.", "A beep, steady.", "A sound.", "A hum.", "A note."]]
    assert anns[0].media[0].kind == "audio" and anns[0].group == "c0.wav" and anns[0].kind == "caption"
    assert errors == ["empty_answer", "missing_media", "duplicate_id"]
    bad = tmp_path / "bad.csv"
    bad.write_text("name,text\nc0.wav,x\n")
    with pytest.raises(SampleError, match="file_name"):
        list(read_clotho_captions(str(bad), str(clips)))
    # an unclosed quote would read the rest of the file as one caption; a field over csv's limit raised csv.Error
    for text, line in (
        ('file_name,caption_1\nc0.wav,"open\nc1.wav,x\n', 2),
        ("file_name,caption_1\nc0.wav," + "x" * 200_000 + "\n", 2),
    ):
        bad.write_text(text)
        with pytest.raises(SampleError, match=f"{bad}:{line}: not CSV this reader can read") as raised:
            list(read_clotho_captions(str(bad), str(clips)))
        assert raised.value.reason == "bad_csv"


def test_audiocaps_reader_groups_rows_of_a_clip(tmp_path, clips):
    for name in ("c0.wav", "c1.wav"):
        shutil.copy(clips / name, clips / f"Y{name[:2]}_30.wav")
    csv_file = tmp_path / "val.csv"
    csv_file.write_text(
        "audiocap_id,youtube_id,start_time,caption\n"
        "1,c0,30,A dog barks\n2,c0,30,Barking nearby\n3,c1,30,Rain falls\n4,zz,0,Not downloaded\n5,c1,30,\n"
    )
    anns, errors = items(read_audiocaps(str(csv_file), str(clips), "Y{youtube_id}_{start_time}.wav"))
    assert [(a.group, a.captions) for a in anns] == [
        ("Yc0_30.wav", ["A dog barks", "Barking nearby"]),
        ("Yc1_30.wav", ["Rain falls"]),
    ]
    assert sorted(errors) == ["empty_answer", "missing_media"]
    anns, errors = items(read_audiocaps(str(csv_file), str(clips), "Y{ytid}_{start_time}.wav"))  # a typo in the recipe
    assert not anns and set(errors) == {"wrong_type", "empty_answer"}


def test_audio_jsonl_readers(tmp_path, clips):
    captions = tmp_path / "captions.jsonl"
    captions.write_text(
        '{"audio": "c0.wav", "caption": "a tone"}\n{"audio": "c0.wav", "caption": "a beep"}\n{"caption": "no audio"}\n'
    )
    anns, errors = items(read_audio_caption_jsonl(str(captions), str(clips)))
    assert [a.captions for a in anns] == [["a tone", "a beep"]] and errors == ["missing_field"]

    qa = tmp_path / "qa.jsonl"
    lines = [
        {"audio": "c1.wav", "question": "What is heard?", "answer": "a tone", "answers": ["a tone", "tone"]},
        {"audio": "c1.wav", "question": "How many?", "answer": "1", "answer_type": "number"},
        {"audio": "c2.wav", "question": "Loud?", "answer": " "},
    ]
    qa.write_text("\n".join(json.dumps(line) for line in lines) + "\n{broken\n")
    anns, errors = items(read_audio_qa_jsonl(str(qa), str(clips)))
    assert anns[0].kind == "vqa" and [(q.answer, q.answers, q.answer_type) for q in anns[0].qas] == [
        ("a tone", ["a tone", "tone"], "other"),
        ("1", ["1"], "number"),
    ]
    assert sorted(errors) == ["bad_json", "empty_answer"]

    transcripts = tmp_path / "transcripts.jsonl"
    transcripts.write_text('{"audio": "c3.wav", "text": "hello there"}\n{"audio": "c3.wav", "text": "again"}\n')
    anns, errors = items(read_transcript_jsonl(str(transcripts), str(clips)))
    assert [(a.kind, a.transcript) for a in anns] == [("transcript", "hello there")] and errors == ["duplicate_id"]

    chat = tmp_path / "chat.jsonl"
    record = {
        "audio": "c0.wav",
        "image": [],
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "ok"}],
    }
    chat.write_text(json.dumps(record) + "\n")
    (ann,), _ = items(read_jsonl(str(chat), str(clips)))
    assert [m.kind for m in ann.media] == ["audio"] and ann.group == "c0.wav"


# --- shaping -------------------------------------------------------------------------------


def test_audio_annotations_become_audio_tasks(tmp_path, clips):
    templates = load_templates(AUDIO_TEMPLATES)
    assert {t: len(v) for t, v in templates.items()} == {"audio_caption": 26, "audio_qa": 26, "audio_transcription": 26}
    assert all(sum(t.held_out for t in v) == 4 for v in templates.values())
    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        "\n".join(json.dumps({"audio": "c0.wav", "question": f"Q{i}?", "answer": f"a{i}"}) for i in range(4)) + "\n"
    )
    (ann,) = [a for _, a in read_audio_qa_jsonl(str(qa), str(clips))]
    convs = shape_annotation(ann, templates, ShapingConfig(qa_per_conversation=3), {}, "train")["seen"]
    assert [c.meta["tasks"] for c in convs] == [["audio_qa"] * 3, ["audio_qa"]]
    first = convs[0].messages[0].content
    assert first.startswith("<audio>\n") and first.endswith("Answer the question using a single word or phrase.")
    assert "<audio>" not in convs[0].messages[2].content  # later turns refer to the same clip
    transcripts = tmp_path / "t.jsonl"
    transcripts.write_text('{"audio": "c0.wav", "text": "hello there"}\n')
    (ann,) = [a for _, a in read_transcript_jsonl(str(transcripts), str(clips))]
    (conv,) = shape_annotation(ann, templates, ShapingConfig(), {}, "val", held_out_templates=True)["seen"]
    assert conv.meta["tasks"] == ["audio_transcription"] and conv.meta["templates"][0].startswith("audt-h")
    assert conv.messages[-1].content == "hello there" and conv.meta["answers"] == ["hello there"]


# --- the build -----------------------------------------------------------------------------


def audio_recipe(root: Path, out: Path, **overrides):
    folder = root / "audio"
    folder.mkdir(parents=True, exist_ok=True)
    captions, transcripts = [], []
    for i in range(12):
        name = f"clip{i:02d}.{'flac' if i % 2 else 'wav'}"
        fmt = "FLAC" if name.endswith("flac") else "WAV"
        (folder / name).write_bytes(tone(1.0, [16000, 44100, 8000][i % 3], channels=1 + i % 2, fmt=fmt))
        captions.append({"audio": name, "caption": f"a tone number {i}"})
        transcripts.append({"audio": name, "text": f"number {i}"})
    (folder / "long.wav").write_bytes(tone(25.0, 8000))
    captions.append({"audio": "long.wav", "caption": "a long tone"})
    (folder / "quiet.wav").write_bytes(_silence())
    captions.append({"audio": "quiet.wav", "caption": "nothing"})
    (folder / "broken.wav").write_bytes(tone(1.0)[:2000])
    transcripts.append({"audio": "broken.wav", "text": "cut off"})
    (folder / "other.wav").write_bytes(tone(1.5, 22050))
    (root / "captions.jsonl").write_text("\n".join(map(json.dumps, captions)) + "\n")
    (root / "transcripts.jsonl").write_text("\n".join(map(json.dumps, transcripts)) + "\n")
    (root / "heldout.jsonl").write_text(json.dumps({"audio": "other.wav", "text": "a new voice"}) + "\n")
    cfg = {
        "name": "audio_fixture",
        "seed": 0,
        "out_dir": str(out),
        "templates": str(AUDIO_TEMPLATES),
        "eval_fraction": 0.25,
        "shard_size": 5,
        "num_workers": 1,
        "on_error": "skip",
        "audio": {"max_seconds": 10.0, "long_clips": "split"},
        "shaping": {"qa_per_conversation": 2, "held_out_tasks": []},
        "sources": [
            {
                "_target_": "mmit.data.annotations.read_audio_caption_jsonl",
                "path": str(root / "captions.jsonl"),
                "audio_dir": str(folder),
            },
            {
                "_target_": "mmit.data.annotations.read_transcript_jsonl",
                "path": str(root / "transcripts.jsonl"),
                "audio_dir": str(folder),
            },
        ],
        "heldout_sources": [
            {
                "_target_": "mmit.data.annotations.read_transcript_jsonl",
                "path": str(root / "heldout.jsonl"),
                "audio_dir": str(folder),
            }
        ],
    }
    cfg.update(overrides)
    return OmegaConf.create(cfg)


def test_build_checks_audio_once_counts_skips_and_splits_long_clips(tmp_path):
    manifest = build(audio_recipe(tmp_path / "src", tmp_path / "out"))
    sets = manifest["sets"]
    assert set(sets) >= {"train", "val_heldout_sources"}
    skipped = Counter()
    for s in sets.values():
        skipped.update(s["skipped"])
    assert set(skipped) == {"audio_silent", "audio_truncated"}  # counted per sample that used the file
    long_samples = sum(s["long_audio"].get("split", 0) for s in sets.values())
    samples = [c for name in sets for c in read_shards(shard_urls(tmp_path / "out" / name))]
    assert not {c.meta["group"] for c in samples} & {"quiet.wav", "broken.wav"}
    long = [c for c in samples if c.meta["group"] == "long.wav"]
    assert len(long) == long_samples >= 1  # the 25 s clip as three 10 s windows, one placeholder each
    assert all([m.ext for m in c.media] == ["wav"] * 3 for c in long)
    assert all(c.messages[0].content.startswith("<audio>\n" * 3) for c in long)
    original = (tmp_path / "src" / "audio" / "clip01.flac").read_bytes()
    stored = [c for c in samples if c.meta["group"] == "clip01.flac"]
    assert stored and all(c.media[0].data == original and c.media[0].ext == "flac" for c in stored)
    (heldout,) = read_shards(shard_urls(tmp_path / "out" / "val_heldout_sources"))
    assert heldout.meta["group"] == "other.wav" and heldout.meta["tasks"] == ["audio_transcription"]
    train_groups = {c.meta["group"] for c in read_shards(shard_urls(tmp_path / "out" / "train"))}
    assert "other.wav" not in train_groups

    with pytest.raises(BuildError, match="silent"):
        build(audio_recipe(tmp_path / "src2", tmp_path / "strict", on_error="raise"))


def test_build_with_windows_stores_a_long_clip_as_one_cut_item(tmp_path):
    audio = {"max_seconds": 10.0, "long_clips": "windows", "max_windows": 2}
    manifest = build(audio_recipe(tmp_path / "src", tmp_path / "out", audio=audio))
    truncated = sum(s["long_audio"].get("truncated", 0) for s in manifest["sets"].values())
    samples = [c for name in manifest["sets"] for c in read_shards(shard_urls(tmp_path / "out" / name))]
    long = [c for c in samples if c.meta["group"] == "long.wav"]
    assert len(long) == truncated >= 1  # the 25 s clip, cut to 2 windows of 10 s
    for conv in long:
        assert len(conv.media) == 1 and conv.messages[0].content.count("<audio>") == 1
        assert decode_audio(conv.media[0].data).seconds == pytest.approx(20.0)


def test_mixed_image_and_audio_templates(tmp_path):
    from mmit.data.recipes import load_template_files

    merged = load_template_files([str(RECIPES_DIR / "templates" / "vision.yaml"), str(AUDIO_TEMPLATES)])
    assert {"caption_brief", "vqa_short", "audio_qa", "audio_transcription"} <= set(merged)
    with pytest.raises(BuildError, match="more than one file"):
        load_template_files([str(AUDIO_TEMPLATES), str(AUDIO_TEMPLATES)])


@pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="the audio demo synthesises speech with espeak-ng and sox (apt-get install -y espeak-ng sox)",
)
def test_demo_audio_recipe_builds_small(tmp_path):
    cfg = compose_recipe(
        "demo_audio",
        [
            f"out_dir={tmp_path / 'demo'}",
            "prepare.n_clips=6",
            "prepare.n_heldout_clips=2",
            f"prepare.out_dir={tmp_path / 'src'}",
            "num_workers=1",
            "eval_fraction=0.34",
        ],
    )
    manifest = build(cfg)
    tasks = {task for s in manifest["sets"].values() for task in s["by_task"]}
    assert tasks == {"audio_caption", "audio_qa", "audio_transcription"}
    assert manifest["sets"]["val_heldout_sources"]["samples"] == 2 * 7  # caption, 5 questions, transcript
    assert not manifest["skipped_annotations"] and not any(s["skipped"] for s in manifest["sets"].values())
    heldout = list(read_shards(shard_urls(tmp_path / "demo" / "val_heldout_sources")))
    transcripts = [c for c in heldout if c.meta["tasks"] == ["audio_transcription"]]
    wave = decode_audio(transcripts[0].media[0].data)
    assert 1.0 < wave.seconds < 6.0
    text = transcripts[0].messages[-1].content
    qa = [c.messages[-1].content for c in heldout if c.meta["group"] == transcripts[0].meta["group"]]
    assert any(answer in text.split() for answer in qa)  # answers come from the spoken sentence
