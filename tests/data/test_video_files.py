"""Your own video data in JSONL: clips read and checked like images and audio, bad ones named or counted."""

import json
from collections import Counter

import numpy as np
import pytest

from mmit.data.sources import DataFileError, read_conversations
from mmit.data.video import write_clip


def _data(tmp_path):
    write_clip(tmp_path / "good.mp4", [np.full((16, 16, 3), 40 * k, np.uint8) for k in range(5)], fps=5)
    (tmp_path / "broken.mp4").write_bytes((tmp_path / "good.mp4").read_bytes()[:300])
    records = [
        {
            "id": "a",
            "video": "good.mp4",
            "conversations": [{"from": "human", "value": "What changes?"}, {"from": "gpt", "value": "It brightens."}],
        },
        {"id": "b", "videos": ["broken.mp4"], "instruction": "Describe the clip.", "output": "Grey."},
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_a_video_field_becomes_a_clip_with_its_placeholder(tmp_path):
    skipped = Counter()
    convs = read_conversations([_data(tmp_path)], on_error="skip", skipped=skipped)
    assert [c.id for c in convs] == ["a"] and sum(skipped.values()) == 1  # the cut file: no stream left in it
    assert convs[0].media[0].kind == "video" and convs[0].messages[0].content.startswith("<video>\n")


def test_a_broken_clip_is_an_error_naming_the_file_and_record(tmp_path):
    with pytest.raises(DataFileError, match=r"data.jsonl:2.*broken.mp4"):
        read_conversations([_data(tmp_path)])


def test_video_without_a_vision_path_is_refused_by_name(tmp_path):
    with pytest.raises(DataFileError, match="has video media but the model has no video encoder"):
        read_conversations([_data(tmp_path)], media_kinds={"image"}, on_error="raise")


def test_a_clips_sound_track_is_its_audio(tmp_path):
    from mmit.data.audio import decode_audio
    from mmit.data.samples import SampleError

    t = np.arange(32000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    write_clip(tmp_path / "sound.mp4", [np.zeros((16, 16, 3), np.uint8)] * 8, fps=4, audio=tone, sample_rate=16000)
    wave = decode_audio((tmp_path / "sound.mp4").read_bytes(), "sound.mp4")
    assert wave.sample_rate == 16000 and 2.0 <= len(wave.samples) / 16000 < 2.1  # AAC adds a little padding
    spectrum = np.abs(np.fft.rfft(wave.samples[4000:20000]))
    assert abs(np.argmax(spectrum) * 16000 / 16000 - 440) <= 2  # the tone, at its pitch
    write_clip(tmp_path / "silent.mp4", [np.zeros((16, 16, 3), np.uint8)] * 8, fps=4)
    with pytest.raises(SampleError, match="silent.mp4: the file has no audio stream"):
        decode_audio((tmp_path / "silent.mp4").read_bytes(), "silent.mp4")


def test_one_clip_as_video_and_audio_in_one_sample(tmp_path):
    t = np.arange(16000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    write_clip(tmp_path / "both.mp4", [np.full((16, 16, 3), 9 * k, np.uint8) for k in range(4)], fps=4, audio=tone)
    record = {
        "id": "both",
        "video": "both.mp4",
        "audio": "both.mp4",
        "instruction": "What do you see and hear?",
        "output": "A tone.",
    }
    (tmp_path / "data.jsonl").write_text(json.dumps(record) + "\n")
    (conv,) = read_conversations([tmp_path / "data.jsonl"])
    assert [m.kind for m in conv.media] == ["audio", "video"]  # placeholders in the order of PLACEHOLDERS' kinds
    assert conv.messages[0].content.startswith("<audio>\n<video>\n")


@pytest.mark.parametrize(
    "playlist",
    [
        "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile://{clip}\n#EXT-X-ENDLIST\n",  # HLS
        "ffconcat version 1.0\nfile {clip}\n",  # FFmpeg's concat list
    ],
)
def test_a_playlist_named_as_media_opens_no_other_file(playlist, tmp_path):
    """FFmpeg demuxers that open further files (HLS, concat) under a video's or a sound's name: the
    clip the list points to is never read, and the error names the item."""
    from mmit.data.audio import decode_audio
    from mmit.data.samples import SampleError
    from mmit.data.video import check_video

    clip = tmp_path / "elsewhere.mp4"
    write_clip(clip, [np.zeros((16, 16, 3), dtype=np.uint8)] * 4, 4.0)
    data = playlist.format(clip=clip).encode()
    with pytest.raises(SampleError, match="list.mp4") as raised:
        check_video(data, "list.mp4")
    assert raised.value.reason == "bad_video"
    with pytest.raises(SampleError, match="list.wav"):
        decode_audio(data, "list.wav")
