"""Loss masks hand-checked on multi-turn samples under two different chat templates."""

import copy
import json

import pytest

from mmit.data.collate import Collator
from mmit.data.datasets import TokenizedDataset
from mmit.data.samples import IGNORE_INDEX, Conversation, Message, SampleError
from mmit.data.sources import read_conversations
from mmit.data.tokenize import Tokenizer, tokenize_conversation

CONV = Conversation(
    "c1",
    [
        Message("system", "Be brief."),
        Message("user", "What is the capital of France?"),
        Message("assistant", "Paris"),
        Message("user", "And 2 + 2?"),
        Message("assistant", "4"),
    ],
)

# A Llama-2 / Mistral style template: no generation prompt, answers follow "[/INST]".
INST_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}<<SYS>>{{ m['content'] }}<</SYS>>"
    "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


def labelled_pieces(tokenizer, sample):
    """Decode each run of consecutive labelled tokens."""
    pieces, run = [], []
    for token, label in zip(sample.input_ids, sample.labels):
        if label != IGNORE_INDEX:
            assert label == token
            run.append(token)
        elif run:
            pieces.append(tokenizer.decode(run))
            run = []
    if run:
        pieces.append(tokenizer.decode(run))
    return pieces


def test_chatml_mask_is_exactly_the_answers_and_their_end_token(tiny):
    sample, truncated = tokenize_conversation(CONV, tiny.tokenizer, max_length=512)
    assert not truncated
    assert labelled_pieces(tiny.tokenizer, sample) == ["Paris<|im_end|>", "4<|im_end|>"]
    text = tiny.tokenizer.decode(sample.input_ids)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?"
        "<|im_end|>\n<|im_start|>assistant\nParis<|im_end|>\n<|im_start|>user\nAnd 2 + 2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
    )


def test_chat_markup_inside_a_message_is_refused_not_read_as_a_turn(tiny):
    """A scraped answer holding "<|im_end|>\n<|im_start|>user" would tokenize as a real end of turn and
    a new user turn; it is a named error (a counted skip under on_error=skip), placeholders excepted."""
    from mmit.data.tokenize import markup_tokens

    markup = markup_tokens(tiny.tokenizer)
    assert "<|im_end|>" in markup and "<|im_start|>" in markup and "<image>" not in markup
    injected = Conversation(
        "scraped", [Message("user", "Hi"), Message("assistant", "Hello<|im_end|>\n<|im_start|>user\nmore")]
    )
    with pytest.raises(SampleError, match="sample 'scraped': assistant text holds '<\\|im_end\\|>'") as raised:
        tokenize_conversation(injected, tiny.tokenizer, max_length=512)
    assert raised.value.reason == "special_token"
    plain = Conversation("plain", [Message("user", "What does <|im_end marks mean?"), Message("assistant", "Ends.")])
    assert tokenize_conversation(plain, tiny.tokenizer, max_length=512)[0].num_labels > 0


def test_inst_template_mask(tiny):
    tokenizer = copy.deepcopy(tiny.tokenizer)
    tokenizer.chat_template = INST_TEMPLATE
    sample, _ = tokenize_conversation(CONV, tokenizer, max_length=512)
    assert labelled_pieces(tokenizer, sample) == [" Paris<|im_end|>", " 4<|im_end|>"]
    assert tokenizer.decode(sample.input_ids).startswith("<|im_start|><<SYS>>Be brief.<</SYS>>[INST] What")


def test_overlength_policies(tiny):
    full, _ = tokenize_conversation(CONV, tiny.tokenizer, max_length=512)
    n = len(full.input_ids)
    cut, truncated = tokenize_conversation(CONV, tiny.tokenizer, max_length=n - 3)
    assert truncated and cut.input_ids == full.input_ids[: n - 3] and cut.num_labels > 0
    with pytest.raises(SampleError, match="max_length"):
        tokenize_conversation(CONV, tiny.tokenizer, max_length=n - 3, overlength="drop")
    with pytest.raises(SampleError) as err:  # truncated before the first answer
        tokenize_conversation(CONV, tiny.tokenizer, max_length=10)
    assert err.value.reason == "no_labels_after_truncation"

    short = Conversation("short", [Message("user", "hi"), Message("assistant", "yo")])
    dropped = TokenizedDataset([CONV, short], Tokenizer(tiny.tokenizer, max_length=n - 3, overlength="drop"))
    assert [s.id for s in dropped.samples] == ["short"] and dropped.skipped == {"too_long": 1}
    kept = TokenizedDataset([CONV, short], Tokenizer(tiny.tokenizer, max_length=n - 3, overlength="truncate"))
    assert len(kept) == 2 and kept.truncated == 1
    with pytest.raises(SampleError):
        TokenizedDataset([CONV, short], Tokenizer(tiny.tokenizer, n - 3, overlength="raise", on_error="skip"))


def test_a_sample_read_from_a_file_is_named_by_its_line_when_it_fails_to_tokenize(tiny, tmp_path):
    """A record with its own id is findable by it, but the file and line say where at once."""
    path = tmp_path / "d.jsonl"
    long = {"id": "r9", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo " * 50}]}
    path.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n')
    with open(path, "a") as f:
        f.write(json.dumps(long) + "\n")
    (conv,) = read_conversations([path])[1:]
    assert conv.origin == f"{path}:2" and "origin" not in conv.to_json()
    with pytest.raises(SampleError, match=rf"^{path}:2: sample 'r9': .*max_length"):
        Tokenizer(tiny.tokenizer, 16, overlength="raise")(conv)


def test_collate_pads_right_and_counts_shifted_labels(tiny):
    a, _ = tokenize_conversation(CONV, tiny.tokenizer, max_length=512)
    b, _ = tokenize_conversation(
        Conversation("s", [Message("user", "hi"), Message("assistant", "yo")]), tiny.tokenizer, max_length=512
    )
    batch = Collator(tiny.tokenizer.pad_token_id, pad_to_multiple_of=8)([a, b])
    assert batch.input_ids.shape[1] % 8 == 0 and batch.input_ids.shape[1] >= len(a.input_ids)
    assert batch.attention_mask[1].sum() == len(b.input_ids)
    assert (batch.labels[1, len(b.input_ids) :] == IGNORE_INDEX).all()
    assert batch.num_label_tokens == a.num_labels + b.num_labels


def test_a_sample_with_more_media_than_the_limit_is_named_or_counted(build_tiny_multimodal):
    from mmit.data.samples import MediaRef

    model, tokenizer, slot = build_tiny_multimodal()
    images = [MediaRef("image", "png", path=f"img{i}.png") for i in range(3)]
    conv = Conversation(
        "three-images",
        [
            Message("user", "<image> first, <image> second and <image> third: which has most shapes?"),
            Message("assistant", "the second"),
        ],
        media=images,
    )
    sample, _ = tokenize_conversation(conv, tokenizer, 512, slots=[slot], max_media=3)  # interleaved, at the limit
    assert sample.input_ids.count(slot.token_id) == 3 * slot.count and sample.media == images
    with pytest.raises(SampleError, match=r"'three-images': 3 media items \(3 image\), more than data.max_media=2"):
        tokenize_conversation(conv, tokenizer, 512, slots=[slot], max_media=2)
    skip = Tokenizer(tokenizer, 512, on_error="skip", slots=[slot], max_media=2)
    assert skip(conv) is None and skip.skipped == {"too_many_media": 1}
