import multiprocessing
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import pytest

from mmit.data.samples import Message, SampleError, conversation_from_record
from mmit.data.sources import DataFileError, read_conversations


def test_three_layouts_normalise_to_messages():
    chat = conversation_from_record(
        {"id": "a", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, "x"
    )
    llava = conversation_from_record(
        {"id": "b", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}, "x"
    )
    alpaca = conversation_from_record({"instruction": "Add.", "input": "2 3", "output": "5"}, "file:3")
    assert chat.messages == llava.messages == [Message("user", "hi"), Message("assistant", "yo")]
    assert alpaca.id == "file:3"
    assert alpaca.messages == [Message("user", "Add.\n\n2 3"), Message("assistant", "5")]
    no_input = conversation_from_record(
        {"instruction": "Say hi.", "input": "", "output": "hi", "system": "Be kind."}, "x"
    )
    assert no_input.messages == [Message("system", "Be kind."), Message("user", "Say hi."), Message("assistant", "hi")]


@pytest.mark.parametrize(
    "record, reason",
    [
        ({"messages": [{"role": "user", "content": "only a question"}]}, "no_assistant_turn"),
        ({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}, "unknown_role"),
        ({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "y"}]}, "empty_content"),
        ({"messages": [{"role": "user"}, {"role": "assistant", "content": "y"}]}, "missing_field"),
        ({"instruction": "no output"}, "missing_field"),
        ({"text": "neither layout"}, "missing_field"),
        (
            {"messages": [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "hi"}]},
            "assistant_first",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "content": "hi"},
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a"},
                ]
            },
            "assistant_first",
        ),
        ({"conversations": [{"from": "system", "value": "s"}, {"from": "gpt", "value": "a"}]}, "assistant_first"),
        ({"messages": [{"role": "user", "content": "hi \ud800"}, {"role": "assistant", "content": "a"}]}, "not_utf8"),
    ],
)
def test_bad_records_name_the_reason_and_sample(record, reason):
    with pytest.raises(SampleError) as err:
        conversation_from_record({"id": "s7", **record}, "x")
    assert err.value.reason == reason
    assert "s7" in str(err.value)


def _write_jsonl(path, lines: list[bytes]):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


GOOD = b'{"id": "%s", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}'


def test_bad_lines_raise_with_file_and_line(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [GOOD % b"1", b"{not json", GOOD % b"2"])
    with pytest.raises(DataFileError, match=r"d\.jsonl:2: .*bad JSON"):
        read_conversations([path])


def test_skip_policy_counts_every_reason_and_keeps_good_samples(tmp_path):
    path = _write_jsonl(
        tmp_path / "d.jsonl",
        [
            GOOD % b"1",
            b"{not json",
            b'{"id": "3", "messages": [{"role": "user", "content": "q"}]}',
            GOOD % b"1",  # duplicate id
            b'{"id": "5", "messages": [{"role": "user", "content": "caf\xe9"}, {"role": "assistant", "content": "a"}]}',
            GOOD % b"6",
        ],
    )
    skipped = Counter()
    samples = read_conversations([path], on_error="skip", skipped=skipped)
    assert [s.id for s in samples] == ["1", "6"]
    assert skipped == Counter(bad_json=1, no_assistant_turn=1, duplicate_id=1, not_utf8=1)


def test_alpaca_json_list(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text('[{"instruction": "Say yes.", "input": "", "output": "yes"}, {"instruction": "x"}]')
    with pytest.raises(DataFileError, match=r"alpaca\.json\[1\]"):
        read_conversations([path])
    assert len(read_conversations([path], on_error="skip")) == 1


def raise_sample_error():
    raise SampleError("missing_media", "sample 3: cannot read a.jpg")


def test_sample_error_keeps_its_reason_across_processes():
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        err = pool.submit(raise_sample_error).exception()
    assert type(err) is SampleError
    assert (err.reason, str(err)) == ("missing_media", "sample 3: cannot read a.jpg")


def test_text_a_tokenizer_cannot_take_is_refused_with_its_file_and_line(tmp_path):
    """JSON's escapes can spell a lone surrogate ("\\ud800"), and a conversation may start with the
    assistant: both crashed inside the tokenizer or the chat template, past the skip policy."""
    lines = [
        GOOD % b"1",
        b'{"id": "2", "messages": [{"role": "user", "content": "hi \\ud800"}, {"role": "assistant", "content": "a"}]}',
        b'{"id": "3", "messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "q"}, '
        b'{"role": "assistant", "content": "a"}]}',
        b'{"id": "4", "messages": [{"role": "user", "content": "<image> What is it?"}, {"role": "assistant", "content": "a"}]}',
        GOOD % b"5",
    ]
    path = _write_jsonl(tmp_path / "d.jsonl", lines)
    with pytest.raises(DataFileError, match=r"d\.jsonl:2: sample '2': message 0 \(user\) holds a lone surrogate"):
        read_conversations([path])
    skipped = Counter()
    assert [s.id for s in read_conversations([path], on_error="skip", skipped=skipped)] == ["1", "5"]
    assert skipped == Counter(not_utf8=1, assistant_first=1, media_mismatch=1)
    # the placeholder without a file is named where it is, also for a model without media
    one = _write_jsonl(tmp_path / "p.jsonl", [lines[3]])
    with pytest.raises(DataFileError, match=r"p\.jsonl:1: sample '4': 1 <image> placeholder\(s\) for 0 image file"):
        read_conversations([one], media_kinds=set())


def test_a_file_without_records_is_named(tmp_path):
    for name, text in (("empty.jsonl", ""), ("blank.jsonl", "\n  \n"), ("none.json", "[]")):
        (tmp_path / name).write_text(text)
        with pytest.raises(DataFileError, match=rf"{name}: holds no records"):
            read_conversations([tmp_path / name], on_error="skip")
