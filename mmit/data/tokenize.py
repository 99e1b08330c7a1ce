"""Conversations -> token ids and labels, through the tokenizer's own chat template.

The loss mask comes from the template itself: for each assistant turn we render the
conversation up to the turn's generation prompt and up to the end of the turn; the text in
between (less trailing whitespace) is what the model must write, end-of-turn token included.
Labels stay aligned with ``input_ids``; the one shift happens in the loss.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from mmit.data.samples import (
    IGNORE_INDEX,
    PLACEHOLDERS,
    Conversation,
    MediaRef,
    MediaSlot,
    SampleError,
    TokenizedSample,
)

log = logging.getLogger(__name__)

OVERLENGTH = ("truncate", "drop", "raise")
MAX_MEDIA = 16  # media items one sample may hold (data.max_media): a 17th is an error or a counted skip


class ChatTemplateError(ValueError):
    """The tokenizer's chat template cannot give an assistant mask."""


def _render(tokenizer: PreTrainedTokenizerBase, chat: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer: PreTrainedTokenizerBase, conv: Conversation) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans the assistant writes."""
    chat = conv.as_chat()
    text = _render(tokenizer, chat, generation_prompt=False)
    spans = []
    for i, message in enumerate(chat):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, chat[:i], generation_prompt=True)
        turn = _render(tokenizer, chat[: i + 1], generation_prompt=False)
        if not (text.startswith(prompt) and text.startswith(turn) and turn.startswith(prompt)):
            raise ChatTemplateError(
                f"sample {conv.id!r}: the chat template does not render conversations as "
                "prefixes of each other, so assistant turns cannot be located; "
                "set llm.chat_template to a prefix-stable template"
            )
        start, end = len(prompt), len(turn.rstrip())
        if end <= start:
            raise ChatTemplateError(f"sample {conv.id!r}: assistant turn {i} renders empty")
        spans.append((start, end))
    return text, spans


def expand_media(input_ids: list[int], labels: list[int], slots: list[MediaSlot]) -> tuple[list[int], list[int]]:
    """Repeat each media placeholder token ``count`` times (never labelled)."""
    counts = {slot.token_id: slot.count for slot in slots}
    ids_out, labels_out = [], []
    for token, label in zip(input_ids, labels):
        n = counts.get(token, 1)
        ids_out += [token] * n
        labels_out += [label] if n == 1 else [IGNORE_INDEX] * n
    return ids_out, labels_out


def _check_media(conv: Conversation, input_ids: list[int], slots: list[MediaSlot], max_media: int) -> None:
    if len(conv.media) > max_media:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(Counter(m.kind for m in conv.media).items()))
        raise SampleError(
            "too_many_media",
            f"sample {conv.id!r}: {len(conv.media)} media items ({kinds}), more than data.max_media={max_media}",
        )
    by_kind = {slot.kind: slot for slot in slots}
    for kind in {m.kind for m in conv.media} - set(by_kind):
        raise SampleError("no_encoder", f"sample {conv.id!r} has {kind} media but the model has no {kind} encoder")
    for kind, slot in by_kind.items():
        found, wanted = input_ids.count(slot.token_id), sum(m.kind == kind for m in conv.media)
        if found != wanted:
            raise SampleError(
                "media_mismatch",
                f"sample {conv.id!r}: {found} {slot.placeholder} placeholders for {wanted} {kind} item(s)",
            )


def _whole_media_blocks(input_ids: list[int], labels: list[int], media: list[MediaRef], slots: list[MediaSlot]):
    """After truncation: cut a partly kept media block and drop the media no longer referenced."""
    kept = list(media)
    for slot in slots:
        positions = [i for i, t in enumerate(input_ids) if t == slot.token_id]
        whole, partial = divmod(len(positions), slot.count)
        if partial:
            cut = positions[whole * slot.count]
            input_ids, labels = input_ids[:cut], labels[:cut]
        of_kind = [i for i, m in enumerate(kept) if m.kind == slot.kind]
        dropped = set(of_kind[whole:])
        kept = [m for i, m in enumerate(kept) if i not in dropped]
    return input_ids, labels, kept


def markup_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The texts of the tokenizer's special tokens (``<|im_start|>``, ``<|endoftext|>``, ...) other than
    mmit's media placeholders: in a message they would tokenize as chat markup, not as text."""
    specials = {
        *tokenizer.all_special_tokens,
        *(t.content for t in tokenizer.added_tokens_decoder.values() if t.special),
    }
    return sorted(t for t in specials - set(PLACEHOLDERS.values()) if t)


def check_markup(conv: Conversation, markup: list[str]) -> None:
    """SampleError when a message holds one of ``markup`` (scraped chats often carry another model's
    turn markers): it would end a turn or start one where the data meant text."""
    for m in conv.messages:
        found = next((t for t in markup if t in m.content), None)
        if found is not None:
            raise SampleError(
                "special_token",
                f"sample {conv.id!r}: {m.role} text holds {found!r}, one of the tokenizer's special tokens: it "
                "would be read as that token (chat markup such as an end of turn), not as text",
            )


def tokenize_conversation(
    conv: Conversation,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    overlength: str = "truncate",
    slots: list[MediaSlot] = (),
    max_media: int = MAX_MEDIA,
) -> tuple[TokenizedSample, bool]:
    """Token ids and labels of one conversation; the flag says whether it was truncated."""
    if overlength not in OVERLENGTH:
        raise ValueError(f"overlength must be one of {OVERLENGTH}, not {overlength!r}")
    check_markup(conv, markup_tokens(tokenizer))
    text, spans = assistant_spans(tokenizer, conv)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoded["input_ids"])
    labels = [IGNORE_INDEX] * len(input_ids)
    for k, (tok_start, tok_end) in enumerate(encoded["offset_mapping"]):
        # A token belongs to the answer if it overlaps an assistant span at all: a token
        # that straddles the boundary still carries the answer's first characters.
        if any(tok_end > start and tok_start < end for start, end in spans):
            labels[k] = input_ids[k]
    _check_media(conv, input_ids, list(slots), max_media)
    input_ids, labels = expand_media(input_ids, labels, list(slots))
    media = list(conv.media)
    truncated = len(input_ids) > max_length
    if truncated:
        if overlength != "truncate":
            raise SampleError("too_long", f"sample {conv.id!r}: {len(input_ids)} tokens > data.max_length={max_length}")
        input_ids, labels, media = _whole_media_blocks(input_ids[:max_length], labels[:max_length], media, list(slots))
    sample = TokenizedSample(conv.id, input_ids, labels, media)
    if sample.num_labels == 0:
        raise SampleError(
            "no_labels_after_truncation",
            f"sample {conv.id!r}: no assistant token within data.max_length={max_length} (the prompt alone is longer)",
        )
    return sample, truncated


def encode_prompt(tokenizer: PreTrainedTokenizerBase, chat: list[dict], slots: list[MediaSlot] = ()) -> list[int]:
    """Token ids of a conversation ending in a generation prompt (the same template as training)."""
    text = _render(tokenizer, chat, generation_prompt=True)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return expand_media(ids, [IGNORE_INDEX] * len(ids), list(slots))[0]


@dataclass
class Tokenizer:
    """Tokenization with the data policies; counts what it skips and truncates."""

    tokenizer: PreTrainedTokenizerBase
    max_length: int
    overlength: str = "truncate"
    on_error: str = "raise"
    slots: list[MediaSlot] = field(default_factory=list)
    max_media: int = MAX_MEDIA
    skipped: Counter = field(default_factory=Counter)
    truncated: int = 0

    def __call__(self, conv: Conversation) -> TokenizedSample | None:
        """The tokenized sample, or None when the policy skips it."""
        try:
            sample, truncated = tokenize_conversation(
                conv, self.tokenizer, self.max_length, self.overlength, self.slots, self.max_media
            )
        except SampleError as err:
            # Over-long samples follow the overlength policy; every other fault on_error.
            policy = {"drop": "skip", "raise": "raise"}[self.overlength] if err.reason == "too_long" else self.on_error
            if policy == "raise":
                if conv.origin and conv.origin not in str(err):
                    raise SampleError(err.reason, f"{conv.origin}: {err}") from err
                raise
            self.skipped[err.reason] += 1
            return None
        self.truncated += truncated
        return sample
