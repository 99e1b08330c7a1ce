"""Where a sample's tokens go: system prompt, template wording, answer-format hint, media, question,
chat markup and answer, counted with the tokenizer and chat template training uses.

Each token of the tokenized sample (``mmit.data.tokenize``, nothing truncated) is given to one part,
so the parts add up to the sample's length exactly:

- ``answer``: the labelled tokens (the loss mask's, end-of-turn tokens included);
- ``media``: each ``<image>`` / ``<audio>`` placeholder, counted as the tokens it expands to;
- every other token goes to the part that owns most of its characters in the rendered text:
  - ``system``: the whole system turn, markup included: a system message, or the turn the chat
    template adds to conversations without one (a model's default prompt; under
    ``data.system_prompt=none`` the empty turn's markup);
  - ``hint``: an answer-format hint of the recipe (``shaping.*_hint``) ending a templated user turn,
    with the newline before it;
  - ``template``: the template's own wording, found by matching the turn's template (its id in the
    sample's metadata) against the turn's text;
  - ``question``: the template's fields (question, options) and any user text not templated;
  - ``format``: the rest: role markers, unlabelled markup, newlines around placeholders.
"""

from __future__ import annotations

import logging
import re
import string
from dataclasses import dataclass, field, replace
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from mmit.data.samples import IGNORE_INDEX, PLACEHOLDERS, Conversation, MediaSlot
from mmit.data.tokenize import ChatTemplateError, tokenize_conversation

log = logging.getLogger(__name__)

PARTS = ("system", "template", "hint", "media", "question", "format", "answer")
_PLACEHOLDER = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS.values()))
_LEADING_MEDIA = re.compile(rf"(?:(?:{_PLACEHOLDER.pattern})\n)+")
_TRAILING_MEDIA = re.compile(rf"(?:\n(?:{_PLACEHOLDER.pattern}))+$")
_PROBE = "mmit-probe-7f3a"


@dataclass
class Wording:
    """What a build's recipe adds to questions: template texts by id, and the answer-format hints."""

    templates: dict[str, str] = field(default_factory=dict)
    hints: tuple[str, ...] = ()
    _patterns: dict[str, re.Pattern] = field(default_factory=dict, repr=False)

    def pattern(self, template_id: str) -> re.Pattern | None:
        """The template as a regular expression: its wording literal, each field a group."""
        if template_id not in self.templates:
            return None
        if template_id not in self._patterns:
            pieces = []
            for literal, name, _, _ in string.Formatter().parse(self.templates[template_id]):
                pieces.append(re.escape(literal))
                if name is not None:
                    pieces.append("(.*?)")
            self._patterns[template_id] = re.compile("".join(pieces), re.DOTALL)
        return self._patterns[template_id]


def recipe_wording(manifest: dict | None) -> Wording:
    """The templates and hints a build's manifest names (its recipe's ``templates`` files and
    ``shaping``); a template file moved since the build is looked for under ``data_recipes/templates``
    by name. No manifest, or none of its files found: no templates, the default hints. A ``config``
    not shaped as mmit.build writes it is a ValueError naming the key."""
    from mmit.data.instructions import ShapingConfig
    from mmit.data.templates import TemplateError, load_templates
    from mmit.paths import RECIPES_DIR

    config = (manifest or {}).get("config") or {}
    if not isinstance(config, dict):
        raise ValueError(f"config is {config!r}, not a mapping")
    if not isinstance(config.get("shaping") or {}, dict):
        raise ValueError(f"config.shaping is {config['shaping']!r}, not a mapping")
    shaping = {**vars(ShapingConfig()), **(config.get("shaping") or {})}
    hints = tuple(h for h in (shaping.get("short_answer_hint"), shaping.get("multiple_choice_hint")) if h)
    if not all(isinstance(h, str) for h in hints):
        raise ValueError(f"config.shaping's answer-format hints {list(hints)} are not all text")
    paths = config.get("templates") or []
    if not isinstance(paths, str) and not (isinstance(paths, list) and all(isinstance(p, str) for p in paths)):
        raise ValueError(f"config.templates is {paths!r}, not a file name or a list of them")
    templates = {}
    for path in [paths] if isinstance(paths, str) else paths:
        found = next((p for p in (Path(path), RECIPES_DIR / "templates" / Path(path).name) if p.is_file()), None)
        try:
            loaded = load_templates(found) if found else {}
        except TemplateError as err:  # a file edited since the build: its wordings are not counted apart
            log.warning("token parts: %s", err)
            loaded = {}
        templates.update({t.id: t.text for ts in loaded.values() for t in ts})
    return Wording(templates, hints)


def _render(tokenizer: PreTrainedTokenizerBase, chat: list[dict]) -> str:
    if not chat:  # some templates fail on no messages; a template adds nothing before the first turn
        return ""
    return tokenizer.apply_chat_template(chat, tokenize=False)


@dataclass
class TokenParts:
    """Counts a conversation's tokens by part (``PARTS``) with ``tokenizer`` and its media ``slots``
    (placeholder tokens the tokenizer knows, and the tokens each expands to)."""

    tokenizer: PreTrainedTokenizerBase
    slots: list[MediaSlot]
    wording: Wording = field(default_factory=Wording)

    def __post_init__(self):
        self._media = {slot.token_id: slot.count for slot in self.slots}
        self._single = [replace(s, count=1) for s in self.slots]  # ids align with the text
        # What the template writes before a user message's content (when it follows a system turn):
        # what is left before a first user message's own header is the turn the template added.
        base = _render(self.tokenizer, [{"role": "system", "content": "S"}])
        probed = _render(self.tokenizer, [{"role": "system", "content": "S"}, {"role": "user", "content": _PROBE}])
        tail = probed[len(base) :] if probed.startswith(base) else ""
        self._user_header = tail[: tail.find(_PROBE)] if _PROBE in tail else None

    def __call__(self, conv: Conversation) -> dict[str, int]:
        """Tokens per part; they add up to the tokenized sample's length, ``answer`` is its label count."""
        sample, _ = tokenize_conversation(conv, self.tokenizer, 1 << 30, slots=self._single)
        text, owner = self.char_parts(conv)
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if list(encoded["input_ids"]) != sample.input_ids:
            raise ChatTemplateError(f"sample {conv.id!r}: the text tokenizes differently from the sample")
        counts = dict.fromkeys(PARTS, 0)
        for token, label, (start, end) in zip(sample.input_ids, sample.labels, encoded["offset_mapping"]):
            if label != IGNORE_INDEX:
                counts["answer"] += 1
            elif token in self._media:
                counts["media"] += self._media[token]
            else:
                chars = owner[start:end] or ["format"]
                counts[max(dict.fromkeys(chars), key=chars.count)] += 1  # most characters; ties: the first
        return counts

    def char_parts(self, conv: Conversation) -> tuple[str, list[str]]:
        """The rendered conversation and the part of each of its characters (answers left as ``format``:
        tokens are answers by their labels)."""
        chat = conv.as_chat()
        prefixes = [_render(self.tokenizer, chat[:i]) for i in range(len(chat) + 1)]
        text = prefixes[-1]
        if not all(text.startswith(p) for p in prefixes):
            raise ChatTemplateError(f"sample {conv.id!r}: the chat template does not render turns as prefixes")
        owner = ["format"] * len(text)
        tasks, template_ids = conv.meta.get("tasks") or [], conv.meta.get("templates") or []
        user_turn = 0
        for i, message in enumerate(chat):
            start, end = len(prefixes[i]), len(prefixes[i + 1])
            if message["role"] == "system":
                owner[start:end] = ["system"] * (end - start)
                continue
            at = text.rfind(message["content"], start, end)
            if i == 0 and at >= 0 and self._user_header is not None:
                # No system message: what the template wrote before this turn's header is its system turn.
                header = text.rfind(self._user_header, start, at) if self._user_header else at
                if header >= 0 and header + len(self._user_header) == at:
                    owner[start:header] = ["system"] * (header - start)
            if message["role"] != "user" or at < 0:
                continue
            templated = user_turn < len(template_ids) and user_turn < len(tasks)
            self._user_parts(owner, at, message["content"], template_ids[user_turn] if templated else None)
            user_turn += 1
        return text, owner

    def _user_parts(self, owner: list[str], offset: int, content: str, template_id: str | None) -> None:
        """Mark one user message's characters (starting at ``offset`` in the text); its placeholders
        need no marking: their tokens are media by their ids."""
        lead = _LEADING_MEDIA.match(content)
        trail = _TRAILING_MEDIA.search(content)
        first, last = lead.end() if lead else 0, trail.start() if trail else len(content)
        prompt = content[first:last]

        def mark(part: str, a: int, b: int) -> None:
            owner[offset + first + a : offset + first + b] = [part] * (b - a)

        if template_id is None:  # not templated (a conversation's own text): all of it is the question
            mark("question", 0, len(prompt))
            return
        pattern = self.wording.pattern(template_id)
        # A hint ends the turn; a template whose own wording ends the same way matches without it.
        hinted = next((len(prompt) - len(h) - 1 for h in self.wording.hints if prompt.endswith(f"\n{h}")), None)
        body_end = len(prompt) if hinted is None else hinted
        found = None
        if pattern is not None:
            found = pattern.fullmatch(prompt, 0, body_end)
            if found is None and body_end < len(prompt):
                found = pattern.fullmatch(prompt)
            body_end = found.end() if found else body_end
        mark("hint", body_end, len(prompt))
        if found is None:  # template unknown, or not matching: all of it is the question
            mark("question", 0, body_end)
            return
        mark("template", 0, body_end)
        for g in range(1, pattern.groups + 1):
            mark("question", *found.span(g))
