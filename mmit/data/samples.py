"""The records that cross the data modules: a conversation of role-tagged messages, and what it
becomes in token space (a tokenized sample, the media slots its placeholders expand into).

Sources accept three layouts and normalise them here: ``messages`` (role / content, as
chat templates expect), LLaVA-style ``conversations`` (from: human | gpt) and Alpaca-style
``instruction`` / ``input`` / ``output``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

ROLES = ("system", "user", "assistant")
PLACEHOLDERS = {"image": "<image>", "audio": "<audio>", "video": "<video>"}  # one per media item, in order
IGNORE_INDEX = -100  # a label that takes no loss
_LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class SampleError(ValueError):
    """A record that cannot become a training sample; ``reason`` is a short counting key."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # so it crosses to and from worker processes intact
        return type(self), (self.reason, str(self))


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class MediaRef:
    """An encoded media file: on disk (``path``) or already in memory (``data``)."""

    kind: str  # image | audio | video
    ext: str  # file extension, lowercase, no dot
    path: str | None = None
    data: bytes | None = None

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.path, "rb") as f:
            return f.read()

    @cached_property
    def sha256(self) -> str:
        """The encoded bytes' hash: the item's key in a feature cache."""
        return hashlib.sha256(self.read()).hexdigest()


@dataclass
class Conversation:
    """One training or evaluation sample; ``media`` fill the ``<image>`` / ``<audio>`` / ``<video>`` placeholders in order."""

    id: str
    messages: list[Message]
    meta: dict[str, Any] = field(default_factory=dict)
    media: list[MediaRef] = field(default_factory=list)
    # Where it was read (``file:line``, ``file[index]``, ``shard.tar:key``), for the messages of checks
    # that come later (tokenization); not stored in shards.
    origin: str = field(default="", compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "messages": self.as_chat(), "meta": self.meta}

    def as_chat(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.messages]


class InvalidConversation(Conversation):
    """A record that failed its checks, carried to where the ``on_error`` policy is applied (a
    streamed shard's records reach it in the tokenizer): it has no messages and no media, and any
    use of its content raises its error, so it can be skipped and counted, never used."""

    def __init__(self, location: str, error: SampleError):
        super().__init__(location, [], {}, [])
        self.error = error

    def as_chat(self) -> list[dict[str, str]]:
        raise self.error

    def to_json(self) -> dict[str, Any]:
        raise self.error


@dataclass(frozen=True)
class MediaSlot:
    """How one modality appears in token space: its placeholder id, repeated ``count`` times.

    ``kind`` (image | audio | video) is the ``MediaRef.kind`` the slot takes; when not given it is read
    from the placeholder (``<image>`` -> image)."""

    placeholder: str  # e.g. "<image>" in message text
    token_id: int
    count: int  # tokens per item (the projector's output length)
    kind: str = ""

    def __post_init__(self) -> None:
        if not self.kind:
            object.__setattr__(self, "kind", self.placeholder.strip("<>"))


@dataclass
class TokenizedSample:
    """A conversation as token ids and labels (``IGNORE_INDEX`` where no loss), with its media."""

    id: str
    input_ids: list[int]
    labels: list[int]
    media: list[MediaRef] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


# What json.loads raises on UTF-8 text it cannot read: bad syntax (JSONDecodeError, a ValueError), an
# integer of over 4,300 digits (ValueError), nesting deeper than the recursion limit (RecursionError).
BAD_JSON = (ValueError, RecursionError)


def json_problem(err: Exception) -> str:
    """What is wrong with a JSON text, from the error json.loads raised (one of ``BAD_JSON``)."""
    if isinstance(err, json.JSONDecodeError):
        return err.msg
    return "nested too deeply" if isinstance(err, RecursionError) else str(err)


def json_line(err: Exception) -> str:
    """``:line`` where json.loads says where the text went wrong, else nothing."""
    return f":{err.lineno}" if isinstance(err, json.JSONDecodeError) else ""


def is_whole_number(value: Any, low: int | None = None) -> bool:
    """An int (not a bool, which Python counts as one) of at least ``low``: a size, count or step read
    from a config or a file someone hands over."""
    return isinstance(value, int) and not isinstance(value, bool) and (low is None or value >= low)


def is_number(value: Any) -> bool:
    """An int or a float, not a bool (which Python counts as an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for messages about a field of the wrong type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return {str: "a string", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def validate(conv: Conversation) -> Conversation:
    """Raise SampleError unless roles are known, contents non-empty text (no lone surrogates), the
    user speaks first (after any system message) and an assistant answers."""
    if not conv.messages:
        raise SampleError("no_messages", f"sample {conv.id!r}: no messages")
    for i, m in enumerate(conv.messages):
        if m.role not in ROLES:
            raise SampleError(
                "unknown_role",
                f"sample {conv.id!r}: message {i} has unknown role {m.role!r} (expected one of {', '.join(ROLES)})",
            )
        if not isinstance(m.content, str) or not m.content.strip():
            raise SampleError("empty_content", f"sample {conv.id!r}: message {i} ({m.role}) is empty")
        if m.role == "system" and i != 0:
            raise SampleError("misplaced_system", f"sample {conv.id!r}: system message at position {i}")
        if not is_unicode(m.content):
            raise SampleError(
                "not_utf8",
                f"sample {conv.id!r}: message {i} ({m.role}) holds a lone surrogate (\\ud800-\\udfff), not text",
            )
    if not is_unicode(conv.id):
        raise SampleError("not_utf8", f"sample {conv.id!r}: the id holds a lone surrogate (\\ud800-\\udfff), not text")
    roles = [m.role for m in conv.messages if m.role != "system"]
    if "assistant" not in roles:
        raise SampleError("no_assistant_turn", f"sample {conv.id!r}: no assistant turn to learn from")
    if roles[0] != "user":
        raise SampleError("assistant_first", f"sample {conv.id!r}: the assistant speaks before any user message")
    return conv


def check_unicode(conv: Conversation) -> Conversation:
    """Raise SampleError unless all of the conversation's text (messages, id, meta) can be written as UTF-8."""
    if not is_unicode(json.dumps(conv.to_json(), ensure_ascii=False)):
        raise SampleError(
            "not_utf8", f"sample {conv.id!r}: its text holds a lone surrogate (\\ud800-\\udfff), not text"
        )
    return conv


def is_unicode(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8: JSON's escapes can spell a lone surrogate ("\\ud800"),
    which Python reads into a str that no tokenizer or file takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_placeholders(conv: Conversation) -> Conversation:
    """Raise SampleError unless each media kind has exactly one placeholder per item."""
    for kind, placeholder in PLACEHOLDERS.items():
        given = sum(m.content.count(placeholder) for m in conv.messages)
        items = sum(m.kind == kind for m in conv.media)
        if given != items:
            raise SampleError(
                "media_mismatch", f"sample {conv.id!r}: {given} {placeholder} placeholder(s) for {items} {kind} file(s)"
            )
    return conv


# meta fields that scoring reads: per turn (tasks, templates, question_types) or per answer (answers)
SCORED_META = ("tasks", "templates", "question_types", "answers")


def conversation_from_record(record: dict[str, Any], default_id: str) -> Conversation:
    """Normalise one JSON record (any accepted layout) into a validated Conversation. Every field's
    type is checked (``wrong_type``); ``id``, ``meta`` and ``system`` may be null (absent)."""
    if not isinstance(record, dict):
        raise SampleError("not_an_object", f"sample {default_id!r}: expected a JSON object, not {json_type(record)}")
    sample_id = record.get("id")
    if sample_id is None:
        sample_id = default_id
    elif isinstance(sample_id, str) or (isinstance(sample_id, int) and not isinstance(sample_id, bool)):
        sample_id = str(sample_id)
    else:
        raise SampleError(
            "wrong_type", f"sample {default_id!r}: 'id' must be a string or an integer, not {json_type(sample_id)}"
        )
    meta = record.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise SampleError("wrong_type", f"sample {sample_id!r}: 'meta' must be an object, not {json_type(meta)}")
    for key in SCORED_META:  # read by scoring, one entry a turn: "tasks": "vqa" would score as task "a"
        value = (meta or {}).get(key)
        if value is None:
            continue
        odd = [v for v in value if not isinstance(v, str | None)] if isinstance(value, list) else [value]
        if odd:
            found = json_type(value) if odd == [value] else f"a list holding {json_type(odd[0])}"
            raise SampleError(
                "wrong_type", f"sample {sample_id!r}: meta {key!r} must be a list of strings, not {found}"
            )
    if "messages" in record:
        messages = [
            _message(m, sample_id, "role", "content", {r: r for r in ROLES})
            for m in _list(record["messages"], sample_id, "messages")
        ]
    elif "conversations" in record:
        messages = [
            _message(m, sample_id, "from", "value", _LLAVA_ROLES)
            for m in _list(record["conversations"], sample_id, "conversations")
        ]
    elif "instruction" in record:
        messages = alpaca_messages(record, sample_id)
    else:
        raise SampleError(
            "missing_field", f"sample {sample_id!r}: needs 'messages', 'conversations' or 'instruction'/'output'"
        )
    system = _text(record.get("system"), sample_id, "system", optional=True)
    if system:
        messages.insert(0, Message("system", system))
    return validate(Conversation(sample_id, messages, dict(meta or {})))


def alpaca_messages(record: dict[str, Any], sample_id: str) -> list[Message]:
    """Alpaca's instruction + optional input become the user turn; output the assistant turn."""
    if "output" not in record:
        raise SampleError("missing_field", f"sample {sample_id!r}: Alpaca record without 'output'")
    prompt = _text(record["instruction"], sample_id, "instruction").strip()
    extra = (_text(record.get("input"), sample_id, "input", optional=True) or "").strip()
    if extra:
        prompt = f"{prompt}\n\n{extra}"
    return [Message("user", prompt), Message("assistant", _text(record["output"], sample_id, "output"))]


def _text(value: Any, sample_id: str, name: str, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise SampleError("wrong_type", f"sample {sample_id!r}: {name!r} must be a string, not {json_type(value)}")
    return value


def _list(value: Any, sample_id: str, name: str) -> list:
    if not isinstance(value, list):
        raise SampleError("wrong_type", f"sample {sample_id!r}: {name!r} must be a list, not {json_type(value)}")
    return value


def _message(m: Any, sample_id: str, role_key: str, text_key: str, roles: dict[str, str]) -> Message:
    if not isinstance(m, dict):
        raise SampleError("wrong_type", f"sample {sample_id!r}: each turn must be an object, not {json_type(m)}")
    if role_key not in m or text_key not in m:
        raise SampleError("missing_field", f"sample {sample_id!r}: each turn needs {role_key!r} and {text_key!r}")
    role = _text(m[role_key], sample_id, role_key)
    return Message(roles.get(role, role), _text(m[text_key], sample_id, text_key))
