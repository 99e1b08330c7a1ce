"""Parsing and quality filters for LLM-written instruction data, as Self-Instruct applies them.

Parsers turn what an LLM wrote into items: a numbered list of instructions, an input, a
``User: / Assistant:`` dialogue, one chat turn. Each check returns a ``Rejection`` (a short counting reason plus a readable detail) or None.
``InstructionPool`` holds what was kept so far and rejects new text that is too short or too
long, starts oddly, names a blocked keyword, or duplicates kept text exactly (after
normalisation) or nearly (ROUGE-L F1 above a threshold, 0.7 in Self-Instruct).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mmit.data.samples import Message
from mmit.metrics import rouge_l_tokens, text_tokens

# Self-Instruct's list of what a text-only model cannot do or show.
TEXT_ONLY_BLOCKLIST = (
    "image",
    "images",
    "graph",
    "graphs",
    "picture",
    "pictures",
    "file",
    "files",
    "map",
    "maps",
    "draw",
    "plot",
    "go to",
    "video",
    "audio",
    "music",
    "flowchart",
    "diagram",
)


@dataclass(frozen=True)
class Rejection:
    reason: str  # a counting key: too_short, blocklist, rouge_similar, ...
    detail: str = ""


def normalize_text(text: str) -> str:
    """Lowercased words without punctuation, single-spaced: the key for exact duplicates."""
    return " ".join(text_tokens(text))


def word_count(text: str) -> int:
    return len(text.split())


def check_length(text: str, min_words: int = 0, max_words: int = 0) -> Rejection | None:
    """Whitespace-separated words within [min_words, max_words] (0: no limit)."""
    words = word_count(text)
    if words == 0:
        return Rejection("empty", "no text")
    if min_words and words < min_words:
        return Rejection("too_short", f"{words} words < {min_words}")
    if max_words and words > max_words:
        return Rejection("too_long", f"{words} words > {max_words}")
    return None


def blocklist_pattern(keywords: Iterable[str]) -> re.Pattern | None:
    """One case-insensitive pattern matching any keyword as whole words ("draw" is not in "drawer")."""
    words = sorted({k.strip().lower() for k in keywords if k.strip()}, key=len, reverse=True)
    if not words:
        return None
    return re.compile(
        r"(?<!\w)(?:" + "|".join(r"\s+".join(map(re.escape, w.split())) for w in words) + r")(?!\w)", re.I
    )


def check_blocklist(text: str, pattern: re.Pattern | None) -> Rejection | None:
    found = pattern.search(text) if pattern else None
    return Rejection("blocklist", f"contains {found.group().lower()!r}") if found else None


def check_start(text: str) -> Rejection | None:
    """Self-Instruct drops text that starts with punctuation or a non-English character."""
    first = text.lstrip()[:1]
    if not first.isascii() or not first.isalnum():
        return Rejection("bad_start", f"starts with {first!r}")
    return None


def repetition_ratio(text: str, n: int = 3) -> float:
    """The share of word n-grams that repeat an earlier one: 0 for fresh text, near 1 for a loop."""
    words = text_tokens(text)
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def check_repetition(text: str, max_ratio: float) -> Rejection | None:
    ratio = repetition_ratio(text)
    if max_ratio < 1.0 and ratio > max_ratio:
        return Rejection("repetitive", f"{ratio:.2f} of its word 3-grams repeat")
    return None


@dataclass
class TextFilter:
    """Length, start and keyword checks of one piece of text, e.g. an instruction or an answer."""

    min_words: int = 0
    max_words: int = 0
    blocklist: Sequence[str] = ()
    check_start: bool = False
    max_repetition: float = 1.0  # the largest allowed repetition_ratio (1: no check)

    def __post_init__(self):
        self._pattern = blocklist_pattern(self.blocklist)

    def check(self, text: str) -> Rejection | None:
        return (
            check_length(text, self.min_words, self.max_words)
            or (check_start(text) if self.check_start else None)
            or check_blocklist(text, self._pattern)
            or check_repetition(text, self.max_repetition)
        )


@dataclass
class _Kept:
    text: str
    tokens: list[str]
    bag: Counter


@dataclass
class InstructionPool:
    """Kept texts, and the duplicate checks a new one must pass to join them.

    ``rouge_threshold``: a text whose ROUGE-L F1 with any kept text is above it is a near
    duplicate (``rouge_similar``); 1.0 turns the check off.
    """

    text_filter: TextFilter = field(default_factory=TextFilter)
    rouge_threshold: float = 0.7
    _kept: list[_Kept] = field(default_factory=list)
    _normalized: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def texts(self) -> list[str]:
        return [k.text for k in self._kept]

    def most_similar(self, text: str) -> tuple[float, str]:
        """The highest ROUGE-L F1 with a kept text, and that text (0 and "" if none is close)."""
        tokens = text_tokens(text)
        bag = Counter(tokens)
        best, best_text = 0.0, ""
        for kept in self._kept:
            # The LCS is at most the bag-of-words overlap: skip pairs that cannot beat the best so far.
            overlap = sum((bag & kept.bag).values())
            if 2 * overlap / (len(tokens) + len(kept.tokens) or 1) <= best:
                continue
            score = rouge_l_tokens(tokens, kept.tokens, beta=1.0)
            if score > best:
                best, best_text = score, kept.text
        return best, best_text

    def check(self, text: str) -> Rejection | None:
        """Why ``text`` may not join the pool, or None."""
        found = self.text_filter.check(text)
        if found:
            return found
        key = normalize_text(text)
        if key in self._normalized:
            return Rejection("exact_duplicate", f"same as {self._normalized[key]!r}")
        if self.rouge_threshold < 1.0:
            score, similar = self.most_similar(text)
            if score > self.rouge_threshold:
                return Rejection("rouge_similar", f"ROUGE-L {score:.2f} with {similar!r}")
        return None

    def add(self, text: str) -> None:
        tokens = text_tokens(text)
        self._kept.append(_Kept(text, tokens, Counter(tokens)))
        self._normalized.setdefault(normalize_text(text), text)

    def offer(self, text: str) -> Rejection | None:
        """Add ``text`` if it passes every check; return the rejection otherwise."""
        found = self.check(text)
        if found is None:
            self.add(text)
        return found


# --- parsing what the LLM wrote ---------------------------------------------------------------

_NUMBERED = re.compile(r"^\s*(?:[-*#>]+\s*)?(?:\*\*)?(?:task|instruction)?\s*#?(\d{1,3})\s*[.):]\s*(.*)$", re.I)
_LABEL = re.compile(r"^(?:\*\*)?(?:new\s+)?(?:task|instruction|input|output)\s*(?:\*\*)?\s*:\s*(?:\*\*)?\s*", re.I)
_TERMINAL = (".", "?", "!", ":", '"', "'", ")", "]", "*")


_LEADING_NUMBER = re.compile(r"^\d{1,3}\s*[.)]\s+")


def clean_item(text: str) -> str:
    """An instruction without markdown emphasis, a leading label or number, or wrapping quotes."""
    text = _LABEL.sub("", text.strip()).replace("**", "").strip()
    while len(text) > 1 and text[0] == text[-1] and text[0] in "\"'`*_":
        text = text[1:-1].strip()
    return _LEADING_NUMBER.sub("", text)


def parse_numbered_list(text: str) -> list[str]:
    """The items of the first numbered list in ``text`` (``1. ...``, ``2) ...``, ``Task 3: ...``).

    A line that is not numbered continues the item just above it; after a blank line it does not.
    The list ends where the numbering starts over: small models often repeat their list.
    """
    items: list[str] = []
    last_number, joined = 0, False
    for line in text.splitlines():
        match = _NUMBERED.match(line)
        if match:
            number = int(match.group(1))
            if items and number <= last_number:
                break
            last_number, joined = number, True
            items.append(match.group(2).strip())
        elif not line.strip():
            joined = False
        elif items and joined:
            items[-1] = f"{items[-1]} {line.strip()}"
    return [item for item in (clean_item(i) for i in items) if item]


def ends_with(answer: str, part: str) -> bool:
    """Whether ``answer`` ends with (the last words of) ``part``, ignoring case, punctuation and markdown."""
    return normalize_text(answer).endswith(normalize_text(part)[-30:])


def check_echo(text: str, *sources: str) -> Rejection | None:
    """An answer that only repeats (part of) its instruction or input."""
    key = normalize_text(text)
    if key and any(key in normalize_text(source) for source in sources if source):
        return Rejection("echo", "repeats its instruction or input")
    return None


def check_copied(text: str, prompt_parts: Sequence[str], min_words: int = 3, run: int = 6) -> Rejection | None:
    """Text that copies the prompt's own wording (say, its format example), given the prompt
    without its data (``prompt_parts``): a whole sentence or line of ``min_words`` or more words
    found there, or any ``run`` consecutive words found there."""
    parts = [f" {normalize_text(part)} " for part in prompt_parts]
    for sentence in re.split(r"[.!?\n]+", text):
        words = normalize_text(sentence).split()
        pieces = [words] if len(words) >= min_words else []
        pieces += [words[i : i + run] for i in range(len(words) - run + 1)]
        for piece in pieces:
            if any(f" {' '.join(piece)} " in part for part in parts):
                return Rejection("copies_prompt", f"{' '.join(piece)!r} is the prompt's own wording")
    return None


def looks_truncated(answer: str, items: list[str], cut: bool | None = None) -> bool:
    """Whether the last item of a parsed list was cut off at the end of the answer.

    ``cut`` says whether generation stopped at max_new_tokens; the last item was cut if the
    answer ends inside it. When that is not known, a last item without the closing punctuation
    that other items have, at the very end of the answer, counts as cut.
    """
    if not items or not ends_with(answer, items[-1]):
        return False
    if cut is not None:
        return cut
    return not items[-1].rstrip().endswith(_TERMINAL) and any(i.rstrip().endswith(_TERMINAL) for i in items[:-1])


_NO_INPUT = {"none", "no input", "n a", "na", "noinput", "nothing", "null", "empty", "not applicable", "no"}
_NO_INPUT_PHRASES = re.compile(r"\b(?:(?:does not|doesn t|do not|don t) (?:need|require)|no input (?:is )?needed)\b")
_SECTION = re.compile(
    r"^[ \t]*(?:\*\*)?(task|instruction|input|output|answer)[ \t]*(?:\*\*)?[ \t]*:[ \t]*", re.I | re.M
)


def parse_input(text: str, instruction: str) -> str:
    """The input the LLM wrote for a task; "" when it says the task needs none.

    Models often echo a ``Task: / Input: / Output:`` layout: then only the ``Input:`` section
    counts, and a reply with such labels but no ``Input:`` has no input.
    """
    sections = list(_SECTION.finditer(text))
    if sections:
        found = [m for m in sections if m.group(1).lower() == "input"]
        if not found:
            return ""
        after = [m.start() for m in sections if m.start() > found[0].start()]
        text = text[found[0].end() : after[0] if after else len(text)]
    text = clean_item(text.strip().strip("`").strip())
    key = normalize_text(text)
    if not key or key in _NO_INPUT or key.startswith(("none ", "no input ")) or key == normalize_text(instruction):
        return ""
    return "" if _NO_INPUT_PHRASES.search(key) else text


_SPEAKER = re.compile(
    r"^\s*(?:[-*#>]+\s*)?(?:\*\*)?\s*(user|human|person|question|q|assistant|ai|gpt|answer|a)\s*(?:\*\*)?\s*:"
    r"\s*(?:\*\*)?\s*(.*)$",
    re.I,
)
_USER_LABELS = {"user", "human", "person", "question", "q"}


def parse_dialogue(text: str, max_exchanges: int = 0, cut: bool = False) -> list[Message]:
    """``User: ... / Assistant: ...`` lines as alternating messages, starting with the user and
    ending with the assistant (labels such as Human / AI / Q / A are understood too).

    ``cut``: the text stopped at max_new_tokens, so its last turn is unfinished and dropped.
    """
    turns: list[list[str]] = []  # [role, text]
    for line in text.splitlines():
        match = _SPEAKER.match(line)
        if match:
            role = "user" if match.group(1).lower() in _USER_LABELS else "assistant"
            if turns and turns[-1][0] == role:
                turns[-1][1] += f"\n{match.group(2).strip()}"
            else:
                turns.append([role, match.group(2).strip()])
        elif turns and line.strip():
            turns[-1][1] += f"\n{line.strip()}"
    while turns and turns[0][0] != "user":
        turns.pop(0)
    messages = [Message(role, body.replace("**", "").strip()) for role, body in turns]
    if any(not m.content for m in messages):  # an empty turn breaks the alternation: keep what precedes it
        messages = messages[: next(i for i, m in enumerate(messages) if not m.content)]
    if cut:
        messages = messages[:-1]
    if max_exchanges:
        messages = messages[: 2 * max_exchanges]
    if messages and messages[-1].role == "user":
        messages.pop()
    return messages


_ROLE_PREFIX = re.compile(r"^\s*(?:\*\*)?(?:user|assistant|human|ai)\s*(?:\*\*)?\s*:\s*", re.I)


def clean_turn(text: str) -> str:
    """A turn without a leading speaker label, cut where the model starts speaking for the other side."""
    lines = _ROLE_PREFIX.sub("", text.strip()).splitlines()
    kept = []
    for line in lines:
        if _ROLE_PREFIX.match(line):
            break
        kept.append(line)
    return "\n".join(kept).strip().strip('"').strip()


_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")


def trim_to_sentence(text: str) -> str:
    """Text cut off mid-sentence, up to the end of its last complete sentence ("" if none)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]].strip() if ends else ""
