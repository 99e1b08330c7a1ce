"""Tokens by part: they add up to the tokenized sample, answers are its labels, and each system-prompt
choice shows in the system part."""

import copy

import pytest

from mmit.data.samples import Conversation, MediaRef, MediaSlot, Message
from mmit.data.token_parts import PARTS, TokenParts, Wording
from mmit.data.tokenize import tokenize_conversation
from mmit.models.llm import set_system_prompt

HINT = "Answer the question using a single word or phrase."
LETTER = "Answer with the letter."
WORDING = Wording({"t-short": "Question: {question}", "t-choice": "{question}\n{options}\n" + LETTER}, (HINT, LETTER))
IMAGE = MediaRef("image", "png", data=b"not decoded here")
# SmolLM2's chat template, with a default system prompt of its own.
DEFAULT_SYSTEM_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def conversation(system: str | None = "Be brief.", hint: bool = True) -> Conversation:
    """Three templated turns: a short answer with its hint, and two multiple-choice questions whose
    template ends with the hint's own words, once without the hint and once with it."""
    options = "A. yes\nB. no"
    messages = [
        Message("user", "<image>\nQuestion: What colour is the square?" + (f"\n{HINT}" if hint else "")),
        Message("assistant", "red"),
        Message("user", f"Is the square big?\n{options}\n{LETTER}"),
        Message("assistant", "A"),
        Message("user", f"Is it round?\n{options}\n{LETTER}" + (f"\n{LETTER}" if hint else "")),
        Message("assistant", "B"),
    ]
    if system is not None:
        messages.insert(0, Message("system", system))
    meta = {"tasks": ["vqa_short", "vqa_multiple_choice", "vqa_multiple_choice"]}
    meta["templates"] = ["t-short", "t-choice", "t-choice"]
    return Conversation("c1", messages, meta, [IMAGE])


def tokenizer_with_image(tokenizer, chat_template: str | None = None):
    tokenizer = copy.deepcopy(tokenizer)
    if chat_template:
        tokenizer.chat_template = chat_template
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    return tokenizer, [MediaSlot("<image>", tokenizer.convert_tokens_to_ids("<image>"), 7)]


def tokens(tokenizer, slots, conv) -> int:
    return len(tokenize_conversation(conv, tokenizer, 1 << 20, slots=slots)[0].input_ids)


def test_parts_add_up_to_the_sample_and_answers_are_its_labels(tiny):
    tokenizer, slots = tokenizer_with_image(tiny.tokenizer)
    conv = conversation()
    counts = TokenParts(tokenizer, slots, WORDING)(conv)
    sample, _ = tokenize_conversation(conv, tokenizer, 1 << 20, slots=slots)
    assert list(counts) == list(PARTS)
    assert sum(counts.values()) == len(sample.input_ids)
    assert counts["answer"] == sample.num_labels
    assert counts["media"] == 7  # one image, expanded to its slot's count
    assert min(counts.values()) > 0


def test_each_part_is_what_removing_it_costs(tiny):
    tokenizer, slots = tokenizer_with_image(tiny.tokenizer)
    counts = TokenParts(tokenizer, slots, WORDING)(conversation())
    full = tokens(tokenizer, slots, conversation())
    assert counts["hint"] == full - tokens(tokenizer, slots, conversation(hint=False))
    assert counts["system"] == full - tokens(tokenizer, slots, conversation(system=None))  # no default here


def test_template_wording_and_hints_by_character(tiny):
    tokenizer, slots = tokenizer_with_image(tiny.tokenizer)
    text, owner = TokenParts(tokenizer, slots, WORDING).char_parts(conversation())

    def chars(part: str) -> str:
        return "".join(c for c, p in zip(text, owner) if p == part)

    # The second turn's template ends with the hint's words and has no hint: all of it is template.
    assert chars("template") == "Question: " + f"\n\n{LETTER}" * 2
    assert chars("hint") == f"\n{HINT}\n{LETTER}"
    assert chars("question") == "What colour is the square?" + "".join(
        f"{q}A. yes\nB. no" for q in ("Is the square big?", "Is it round?")
    )
    assert chars("system") == "<|im_start|>system\nBe brief.<|im_end|>\n"


@pytest.mark.parametrize(
    ("setting", "turn"),
    [
        ("model_default", "<|im_start|>system\nYou are a tiny test assistant.<|im_end|>\n"),
        ("none", "<|im_start|>system\n<|im_end|>\n"),
        ("Be kind.", "<|im_start|>system\nBe kind.<|im_end|>\n"),
    ],
)
def test_system_part_under_each_system_prompt_choice(tiny, setting, turn):
    tokenizer, slots = tokenizer_with_image(tiny.tokenizer, DEFAULT_SYSTEM_TEMPLATE)
    set_system_prompt(tokenizer, setting)
    conv = conversation(system=None)
    counts = TokenParts(tokenizer, slots, WORDING)(conv)
    assert counts["system"] == len(tokenizer(turn, add_special_tokens=False)["input_ids"])
    assert sum(counts.values()) == tokens(tokenizer, slots, conv)


def test_untemplated_text_is_question(tiny):
    tokenizer, slots = tokenizer_with_image(tiny.tokenizer)
    conv = Conversation(
        "c2", [Message("user", "<image>\nWhat is this?"), Message("assistant", "A square.")], {}, [IMAGE]
    )
    counts = TokenParts(tokenizer, slots, WORDING)(conv)
    assert counts["template"] == counts["hint"] == counts["system"] == 0
    assert counts["question"] > 0 and sum(counts.values()) == tokens(tokenizer, slots, conv)
