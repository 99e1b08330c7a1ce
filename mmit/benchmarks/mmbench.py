"""MMBench dev (English), read from the official TSV release (mmbench_dev_20230712.tsv or
mmbench_dev_en_20231003.tsv; also VLMEvalKit's MMBench_DEV_EN.tsv), one question a row:

    index  question  hint  A  B  C  D  answer  category  image  source  l2-category  comment  split

``image`` is the base64-encoded image, or (VLMEvalKit's files) the index of the row holding it.
Rows with index >= 1,000,000 are circular copies of row ``index % 1,000,000`` with the options
rotated; a question that comes without copies gets them here, one per rotation of its options.

Scored by CircularEval: a question counts as right only if every copy is answered right. A
reply's option letter is read by a plain rule instead of MMBench's ChatGPT matching: the reply,
stripped, ends with an option letter in brackets ("a cat (B)", mmit's option-then-letter answer
form), or starts with a capital option letter (optionally in brackets) not followed by a letter
or digit ("B", "B.", "(B)", "B: a cat"); else the reply, less a trailing full stop, equals one
option's text (case ignored). Otherwise it has no answer and is wrong. (A reply starting with the
article "A" followed by a space reads as option A.)
"""

from __future__ import annotations

import base64
import binascii
import csv
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmit.benchmarks.base import Benchmark, BenchmarkError, accuracy_table, mean, require_samples, sample
from mmit.data.media import decode_image_bytes
from mmit.data.samples import Conversation, MediaRef, SampleError
from mmit.metrics import option_letter

# lmms_eval/tasks/mmbench/_default_template_mmbench_en_yaml, lmms_eval_specific_kwargs.default:
#   pre_prompt: ""
#   post_prompt: "\nAnswer with the option's letter from the given choices directly."
# and en_utils.mmbench_doc_to_text: f"{hint} {question} {options}" (without "{hint} " when there is
# none), options = "There are several options:" (mmbench.yaml sys_prompt) + "\nA. ..." per option,
# then f"{query_prompt}\n{post_prompt}": a blank line before the instruction.
SYS_PROMPT = "There are several options:"
POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."
# lmms_eval/tasks/mmbench/_default_template_mmbench_en_yaml: generation_kwargs: max_new_tokens: 1024
MAX_NEW_TOKENS = 1024
LETTERS = "ABCDE"  # lmms-eval's option_candidate
COPY_STRIDE = 1_000_000  # a circular copy's index: original index + shift * COPY_STRIDE
TSV_NAMES = ("mmbench_dev_20230712.tsv", "mmbench_dev_en_20231003.tsv", "MMBench_DEV_EN.tsv")
_MAGIC = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG", "png"), (b"GIF8", "gif"), (b"BM", "bmp"), (b"RIFF", "webp"))


def build_prompt(question: str, hint: str, options: dict[str, str]) -> str:
    listed = "\n".join(f"{letter}. {text}" for letter, text in options.items())
    query = f"{question} {SYS_PROMPT}\n{listed}"
    if hint:
        query = f"{hint} {query}"
    return f"{query}\n{POST_PROMPT}"


def _tsv_path(root: Path) -> Path:
    if root.is_file():
        return root
    if not root.is_dir():
        raise BenchmarkError(f"MMBench: {root} is neither the dev TSV file nor a folder holding it")
    for name in TSV_NAMES:
        if (root / name).is_file():
            return root / name
    found = sorted(root.glob("mmbench_dev*.tsv"))
    if len(found) != 1:
        raise BenchmarkError(f"MMBench: expected one of {', '.join(TSV_NAMES)} in {root}, found {len(found)} dev TSVs")
    return found[0]


def _read_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of each data row, as pandas.read_csv(sep="\\t") reads the file."""
    limit = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)  # base64 images are far longer than csv's default field limit
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="\t")
            header = next(reader, None)
            if not header:
                raise BenchmarkError(f"{path}: empty file")
            missing = {"index", "question", "answer", "image", "A", "B"} - set(header)
            if missing:
                raise BenchmarkError(f"{path}: no column {', '.join(sorted(missing))} in the header")
            rows = []
            for row in reader:
                if len(row) != len(header):
                    raise BenchmarkError(
                        f"{path} line {reader.line_num}: {len(row)} fields, the header has {len(header)}"
                    )
                rows.append((reader.line_num, dict(zip(header, row, strict=True))))
            return rows
    except FileNotFoundError:
        raise BenchmarkError(f"{path} does not exist") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise BenchmarkError(f"{path}: not a readable TSV ({e})") from None
    finally:
        csv.field_size_limit(limit)


def _present(value: str | None) -> str:
    """A cell as text; pandas reads an empty cell (and the text "nan") as missing."""
    return "" if value is None or value == "nan" else value


def _decode_image(text: str, where: str) -> MediaRef:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BenchmarkError(f"{where}: 'image' is not base64") from None
    ext = next((ext for magic, ext in _MAGIC if data.startswith(magic)), None)
    if ext is None:
        raise BenchmarkError(f"{where}: 'image' decodes to no known image format")
    # Decoded once here: the image has no file of its own, so a broken one found while answering
    # could not be traced back to its row.
    try:
        decode_image_bytes(data, "'image'")
    except SampleError as e:
        raise BenchmarkError(f"{where}: {e}") from None
    return MediaRef("image", ext, data=data)


def load(root: str | os.PathLike) -> Benchmark:
    path = _tsv_path(Path(root))
    rows = _read_rows(path)
    by_index: dict[int, tuple[str, dict[str, str]]] = {}
    for line, row in rows:
        where = f"{path} line {line}"
        try:
            index = int(row["index"])
        except ValueError:
            raise BenchmarkError(f"{where}: 'index' {row['index']!r} is not an integer") from None
        if index in by_index:
            raise BenchmarkError(f"{where}: index {index} appears twice")
        by_index[index] = (where, row)
    images: dict[int, MediaRef] = {}

    def image_of(index: int) -> MediaRef:
        where, row = by_index[index]
        if index not in images:
            text = row["image"].strip()
            if len(text) <= 64:  # VLMEvalKit's files name the row holding the image
                if not text.isdigit() or int(text) not in by_index or len(by_index[int(text)][1]["image"]) <= 64:
                    raise BenchmarkError(f"{where}: 'image' {text!r} is neither base64 nor the index of a row with one")
                images[index] = image_of(int(text))
            else:
                images[index] = _decode_image(text, where)
        return images[index]

    groups: dict[int, list[int]] = defaultdict(list)
    for index in sorted(by_index):
        groups[index % COPY_STRIDE].append(index)
    samples = []
    for base, members in groups.items():
        if base not in by_index:
            raise BenchmarkError(f"{by_index[members[0]][0]}: circular copy of index {base}, which is not in {path}")
        for index in members:
            where, row = by_index[index]
            options = {letter: _present(row.get(letter)) for letter in LETTERS}
            options = {letter: text for letter, text in options.items() if text}
            answer = row["answer"].strip()
            if answer not in options:
                raise BenchmarkError(f"{where}: 'answer' {answer!r} is not one of its options {', '.join(options)}")
            shifts = [(index, options, answer)]
            if members == [base]:
                shifts += _rotations(base, options, answer)
            for sample_index, shifted, letter in shifts:
                meta = {
                    "benchmark": "mmbench_dev",
                    "index": sample_index,
                    "circular_group": base,
                    "category": _present(row.get("category")),
                    "l2_category": _present(row.get("l2-category") or row.get("L2-category")),
                    "options": shifted,
                    "answers": [letter],
                    "tasks": ["vqa_multiple_choice"],
                }
                prompt = build_prompt(row["question"], _present(row.get("hint")), shifted)
                samples.append(sample(str(sample_index), prompt, letter, image_of(index), meta))
    require_samples(samples, path)
    return Benchmark("mmbench_dev", str(path.parent), samples, MAX_NEW_TOKENS, score, layout=path.name)


def _rotations(base: int, options: dict[str, str], answer: str) -> list[tuple[int, dict[str, str], str]]:
    """The circular copies of a question: shift s puts option (i + s) mod n at letter i."""
    letters, texts = list(options), list(options.values())
    n = len(texts)
    out = []
    for shift in range(1, n):
        rotated = {letters[i]: texts[(i + shift) % n] for i in range(n)}
        out.append((base + shift * COPY_STRIDE, rotated, letters[(letters.index(answer) - shift) % n]))
    return out


def score(convs: Sequence[Conversation], replies: Sequence[str]) -> dict[str, Any]:
    """CircularEval accuracy overall, per category and per L2 category; ``vanilla_accuracy`` is the
    plain accuracy of the original rows (index < 1,000,000) alone."""
    groups: dict[int, list[bool]] = defaultdict(list)
    info: dict[int, Conversation] = {}
    vanilla = []
    for conv, reply in zip(convs, replies, strict=True):
        right = option_letter(reply, conv.meta["options"]) == conv.meta["answers"][0]
        group = conv.meta["circular_group"]
        groups[group].append(right)
        info.setdefault(group, conv)
        if conv.meta["index"] < COPY_STRIDE:
            vanilla.append(float(right))
    categories, l2_categories = defaultdict(list), defaultdict(list)
    circular = []
    for group, answers in groups.items():
        right = float(all(answers))
        circular.append(right)
        categories[info[group].meta["category"] or "uncategorized"].append(right)
        l2_categories[info[group].meta["l2_category"] or "uncategorized"].append(right)
    tables = {"category": accuracy_table(categories), "l2_category": accuracy_table(l2_categories)}
    flat = {"circular_accuracy": mean(circular), "vanilla_accuracy": mean(vanilla), "questions": len(circular)}
    return {"metrics": flat, "tables": tables}
