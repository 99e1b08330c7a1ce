"""The record every data source produces: a conversation of role-tagged messages.

Sources accept three layouts and normalise them here: ``messages`` (role / content, as
chat templates expect), LLaVA-style ``conversations`` (from: human | gpt) and Alpaca-style
``instruction`` / ``input`` / ``output``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

ROLES = ("system", "user", "assistant")
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

    kind: str  # image | audio
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
    """One training or evaluation sample; ``media`` fill the ``<image>`` / ``<audio>`` placeholders in order."""

    id: str
    messages: list[Message]
    meta: dict[str, Any] = field(default_factory=dict)
    media: list[MediaRef] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "messages": self.as_chat(), "meta": self.meta}

    def as_chat(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.messages]


def validate(conv: Conversation) -> Conversation:
    """Raise SampleError unless roles are known, contents non-empty and an assistant speaks."""
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
    if not any(m.role == "assistant" for m in conv.messages):
        raise SampleError("no_assistant_turn", f"sample {conv.id!r}: no assistant turn to learn from")
    return conv


def conversation_from_record(record: dict[str, Any], default_id: str) -> Conversation:
    """Normalise one JSON record (any accepted layout) into a validated Conversation."""
    if not isinstance(record, dict):
        raise SampleError("not_an_object", f"sample {default_id!r}: expected a JSON object")
    sample_id = str(record.get("id", default_id))
    meta = dict(record.get("meta", {}))
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
    if record.get("system"):
        messages.insert(0, Message("system", str(record["system"])))
    return validate(Conversation(sample_id, messages, meta))


def alpaca_messages(record: dict[str, Any], sample_id: str) -> list[Message]:
    """Alpaca's instruction + optional input become the user turn; output the assistant turn."""
    if "output" not in record:
        raise SampleError("missing_field", f"sample {sample_id!r}: Alpaca record without 'output'")
    prompt = str(record["instruction"]).strip()
    if str(record.get("input") or "").strip():
        prompt = f"{prompt}\n\n{str(record['input']).strip()}"
    return [Message("user", prompt), Message("assistant", str(record["output"]))]


def _list(value: Any, sample_id: str, name: str) -> list:
    if not isinstance(value, list):
        raise SampleError("missing_field", f"sample {sample_id!r}: {name!r} must be a list")
    return value


def _message(m: Any, sample_id: str, role_key: str, text_key: str, roles: dict[str, str]) -> Message:
    if not isinstance(m, dict) or role_key not in m or text_key not in m:
        raise SampleError("missing_field", f"sample {sample_id!r}: each turn needs {role_key!r} and {text_key!r}")
    role = roles.get(str(m[role_key]), str(m[role_key]))
    content = m[text_key]
    return Message(role, content if isinstance(content, str) else "")
