"""Readers for the annotation formats people have, in their official layouts.

Each reader yields ``(location, Annotation | SampleError)``: one annotation per image or audio
clip (all of its captions, all of its question-answer pairs, or its transcript) or per
conversation. Errors are yielded, not raised, so the builder's ``on_error`` policy decides; a
location names the file and record. A file that cannot be read at all (bad JSON, or not the
layout's shape) raises SampleError naming the file. Several images: LLaVA-Interleave / OneVision
conversations (``read_llava``: an ``image`` list, its ``<image>`` placeholders anywhere in the text,
in order) and NLVR2 statements about a pair (``read_nlvr2``). Audio readers: Clotho and AudioCaps
caption CSVs, and audio caption / QA / transcript JSONL. Video readers: MSR-VTT captions, MSRVTT-QA /
MSVD-QA questions, ActivityNet Captions' timestamped events, and LLaVA-Video conversations.

Every field's type is checked (``wrong_type``). Media files must lie inside the reader's folder
(``images_dir``, ``audio_dir``, ``videos_dir``, the JSONL's own folder): ``..``, absolute paths and
symlinks that leave it are refused (``outside_root``) unless ``allow_outside_root=True``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmit.data.media import media_file, media_names
from mmit.data.samples import (
    BAD_JSON,
    PLACEHOLDERS,
    MediaRef,
    Message,
    SampleError,
    conversation_from_record,
    is_number,
    json_line,
    json_problem,
    json_type,
)
from mmit.data.sources import jsonl_records
from mmit.data.video import VIDEO_EXTENSIONS

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")
AUDIO_EXTENSIONS = ("wav", "flac", "mp3", "ogg", "opus")


@dataclass
class QA:
    question: str
    answers: list[str]  # all human answers (VQAv2 has ten)
    answer: str  # the consensus answer used as the target
    answer_type: str = "other"  # yes/no | number | other
    question_id: str = ""
    question_type: str = ""  # VQAv2's question prefix ("how many", "is there a"), where the data has one


@dataclass
class Annotation:
    """An annotated item before templates.

    ``group`` is the media identity used for splits: the image name as the annotation gives it
    (relative to its folder), so all annotations of one image share a split wherever the data lives.
    ``events`` annotations (a video's timestamped events) carry the dense caption in ``captions``
    and the questions about when things happen in ``qas``.
    """

    id: str
    source: str
    kind: str  # caption | vqa | conversation | transcript | events
    media: list[MediaRef]
    group: str
    captions: list[str] = field(default_factory=list)
    qas: list[QA] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    detailed: bool = False  # captions are long descriptions (caption_detailed task)
    transcript: str = ""  # what is said in the audio (transcript annotations)


Item = Iterator[tuple[str, "Annotation | SampleError"]]


def _load_json(path: str | Path, shape: type | None = None, what: str = "") -> Any:
    """A whole JSON file; SampleError naming the file if it does not parse or is not of ``shape``."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise SampleError("not_utf8", f"{path}: not UTF-8 at byte {err.start}") from err
    except BAD_JSON as err:
        raise SampleError("bad_json", f"{path}{json_line(err)}: bad JSON ({json_problem(err)})") from err
    if shape is not None and not isinstance(data, shape):
        raise SampleError("wrong_type", f"{path}: expected {what}, not {json_type(data)}")
    return data


def _items(data: dict, key: str, path: str | Path) -> list:
    """``data[key]`` of a JSON file, a list; SampleError naming the file otherwise (absent, it is
    likely another file of the dataset: VQAv2's questions and annotations files given the other way round)."""
    if key not in data:
        keys = ", ".join(repr(k) for k in list(data)[:6]) or "none"
        raise SampleError("missing_field", f"{path}: no {key!r} list (its keys: {keys}); is it the right file?")
    value = data[key]
    if not isinstance(value, list):
        raise SampleError("wrong_type", f"{path}: {key!r} must be a list, not {json_type(value)}")
    return value


def _media(kind: str, root: str | Path, name: Any, allow_outside_root: bool = False) -> MediaRef:
    """The file ``name`` under ``root``, kept inside it (``mmit.data.media.media_path``)."""
    return media_file(kind, root, name, allow_outside_root)


def _clean(text: Any) -> str:
    return text.strip() if isinstance(text, str) else ""


def _is_id(value: Any) -> bool:
    """An id as the official files have them: an integer or a string."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _wrong(where: str, field: str, expected: str, value: Any) -> SampleError:
    return SampleError("wrong_type", f"{where}: {field!r} must be {expected}, not {json_type(value)}")


def read_coco_captions(
    annotations_file: str, images_dir: str, detailed: bool = False, allow_outside_root: bool = False
) -> Item:
    """COCO ``captions_<split>.json``: ``images`` [{id, file_name}] + ``annotations`` [{image_id, caption}]."""
    data = _load_json(annotations_file, dict, "a COCO captions object with 'images' and 'annotations'")
    by_image: dict[Any, list[str]] = {}
    first_caption: dict[Any, str] = {}  # where each image's first caption is, to name captions of no image
    for k, ann in enumerate(_items(data, "annotations", annotations_file)):
        where = f"{annotations_file}:annotations[{k}]"
        if not isinstance(ann, dict):
            yield where, SampleError("not_an_object", f"{where}: expected an object, not {json_type(ann)}")
            continue
        if "image_id" not in ann or "caption" not in ann:
            yield where, SampleError("missing_field", f"{where}: needs image_id and caption")
            continue
        if not _is_id(ann["image_id"]):
            yield where, _wrong(where, "image_id", "an integer or a string", ann["image_id"])
            continue
        if not isinstance(ann["caption"], str):
            yield where, _wrong(where, "caption", "a string", ann["caption"])
            continue
        caption = _clean(ann["caption"])
        if not caption:
            yield where, SampleError("empty_answer", f"{where}: empty caption")
            continue
        by_image.setdefault(ann["image_id"], []).append(caption)
        first_caption.setdefault(ann["image_id"], where)
    seen: set = set()
    for k, image in enumerate(_items(data, "images", annotations_file)):
        where = f"{annotations_file}:images[{k}]"
        if not isinstance(image, dict):
            yield where, SampleError("not_an_object", f"{where}: expected an object, not {json_type(image)}")
            continue
        image_id = image.get("id")
        if not _is_id(image_id):
            yield where, _wrong(where, "id", "an integer or a string", image_id)
            continue
        if image_id in seen:
            yield where, SampleError("duplicate_id", f"{where}: image id {image_id} appears twice")
            continue
        seen.add(image_id)
        if image_id not in by_image:
            continue  # an image without captions is simply not annotated
        if "file_name" not in image:
            yield where, SampleError("missing_field", f"{where}: no file_name")
            continue
        try:
            media = _media("image", images_dir, image["file_name"], allow_outside_root)
        except SampleError as err:
            yield where, SampleError(err.reason, f"{where}: {err}")
            continue
        yield (
            where,
            Annotation(
                f"coco-{image_id}",
                "coco_captions",
                "caption",
                [media],
                image["file_name"],
                captions=by_image[image_id],
                detailed=detailed,
            ),
        )
    for image_id in (i for i in by_image if i not in seen):
        where, count = first_caption[image_id], len(by_image[image_id])
        yield (
            where,
            SampleError("unknown_image", f"{where}: image_id {image_id!r} ({count} caption(s)) is not in 'images'"),
        )


def read_vqav2(
    questions_file: str,
    annotations_file: str,
    images_dir: str,
    image_pattern: str = "COCO_{data_subtype}_{image_id:012d}.jpg",
    allow_outside_root: bool = False,
) -> Item:
    """VQAv2 questions + annotations (ten answers each); images found by the COCO name pattern."""
    questions = _load_json(questions_file, dict, "a VQAv2 questions object with 'questions'")
    annotations = _load_json(annotations_file, dict, "a VQAv2 annotations object with 'annotations'")
    subtype = questions.get("data_subtype", "")
    if not isinstance(subtype, str):
        raise SampleError("wrong_type", f"{questions_file}: 'data_subtype' must be a string, not {json_type(subtype)}")
    by_qid = {}
    for k, ann in enumerate(_items(annotations, "annotations", annotations_file)):
        if isinstance(ann, dict) and _is_id(ann.get("question_id")):
            by_qid[ann["question_id"]] = ann
        else:
            where = f"{annotations_file}:annotations[{k}]"
            yield where, SampleError("wrong_type", f"{where}: expected an object with a question_id, not {ann!r:.60}")
    per_image: dict[Any, list[QA]] = {}
    for k, q in enumerate(_items(questions, "questions", questions_file)):
        where = f"{questions_file}:questions[{k}]"
        if not isinstance(q, dict):
            yield where, SampleError("not_an_object", f"{where}: expected an object, not {json_type(q)}")
            continue
        qid = q.get("question_id")
        if not _is_id(qid) or qid not in by_qid or "image_id" not in q or not _clean(q.get("question")):
            reason = "wrong_type" if "question" in q and not isinstance(q["question"], str) else "missing_field"
            yield where, SampleError(reason, f"{where}: question {qid!r} lacks text, image or annotation")
            continue
        if not _is_id(q["image_id"]):
            yield where, _wrong(where, "image_id", "an integer or a string", q["image_id"])
            continue
        ann = by_qid[qid]
        raw_answers = ann.get("answers", [])
        if not isinstance(raw_answers, list) or not all(isinstance(a, dict) for a in raw_answers):
            yield (
                where,
                SampleError("wrong_type", f"{where}: 'answers' must be a list of objects, not {raw_answers!r:.60}"),
            )
            continue
        texts = ("multiple_choice_answer", "answer_type", "question_type")
        wrong = next((key for key in texts if ann.get(key) is not None and not isinstance(ann[key], str)), None)
        if wrong:
            yield where, _wrong(where, wrong, "a string", ann[wrong])
            continue
        odd = [a.get("answer") for a in raw_answers if not isinstance(a.get("answer"), str)]
        if odd:
            yield where, _wrong(where, "answers[].answer", "a string", odd[0])
            continue
        answers = [_clean(a.get("answer")) for a in raw_answers]
        answers = [a for a in answers if a]
        target = _clean(ann.get("multiple_choice_answer")) or (Counter(answers).most_common(1)[0][0] if answers else "")
        if not target:
            yield where, SampleError("empty_answer", f"{where}: question {qid} has no answer")
            continue
        per_image.setdefault(q["image_id"], []).append(
            QA(
                _clean(q["question"]),
                answers or [target],
                target,
                ann.get("answer_type") or "other",
                str(qid),
                _clean(ann.get("question_type")),
            )
        )
    for image_id in sorted(per_image, key=str):
        where = f"{questions_file}:image {image_id}"
        try:
            name = image_pattern.format(data_subtype=subtype, image_id=image_id)
        except (ValueError, KeyError, IndexError) as err:
            yield (
                where,
                SampleError(
                    "wrong_type", f"{where}: image_pattern {image_pattern!r} does not fit id {image_id!r} ({err})"
                ),
            )
            continue
        try:
            media = _media("image", images_dir, name, allow_outside_root)
        except SampleError as err:
            yield where, SampleError(err.reason, f"{where}: {err}")
            continue
        yield where, Annotation(f"vqa-{image_id}", "vqav2", "vqa", [media], name, qas=per_image[image_id])


def read_caption_jsonl(
    path: str,
    images_dir: str,
    image_pattern: str = "{image_id}",
    detailed: bool = True,
    allow_outside_root: bool = False,
) -> Item:
    """Captions as JSONL lines ``{"image_id" | "image", "caption"}`` (e.g. long descriptions)."""
    by_image: dict[str, list[str]] = {}
    for where, record in jsonl_records(path):
        if isinstance(record, SampleError):
            yield where, SampleError(record.reason, f"{where}: {record}")
            continue
        if not isinstance(record, dict):
            yield where, SampleError("not_an_object", f"{where}: expected an object, not {json_type(record)}")
            continue
        name, image_id, caption = record.get("image"), record.get("image_id"), record.get("caption")
        if name is not None and not isinstance(name, str):
            yield where, _wrong(where, "image", "a path", name)
            continue
        if image_id is not None and not _is_id(image_id):
            yield where, _wrong(where, "image_id", "an integer or a string", image_id)
            continue
        if caption is not None and not isinstance(caption, str):
            yield where, _wrong(where, "caption", "a string", caption)
            continue
        if not name and image_id is not None:
            try:
                name = image_pattern.format(image_id=image_id)
            except (ValueError, KeyError, IndexError) as err:
                yield where, SampleError("wrong_type", f"{where}: image_pattern does not fit id {image_id!r} ({err})")
                continue
        if not name or not _clean(caption):
            yield (
                where,
                SampleError("missing_field" if not name else "empty_answer", f"{where}: needs an image and a caption"),
            )
            continue
        by_image.setdefault(name, []).append(_clean(caption))
    for name in sorted(by_image):
        where = f"{path}:{name}"
        try:
            media = _media("image", images_dir, name, allow_outside_root)
        except SampleError as err:
            yield where, SampleError(err.reason, f"{where}: {err}")
            continue
        yield (
            where,
            Annotation(
                f"captions-{Path(name).stem}",
                "caption_jsonl",
                "caption",
                [media],
                name,
                captions=by_image[name],
                detailed=detailed,
            ),
        )


def _conversation(
    record: Any,
    where: str,
    source: str,
    id_prefix: str,
    root: Path,
    default_id: str | None = None,
    allow_outside_root: bool = False,
    media: bool = True,
) -> Annotation:
    """A conversation record with the media it names (``image(s)``, ``audio(s)``, ``video(s)``; none
    when not ``media``) as an Annotation; raises SampleError naming ``where``."""
    try:
        conv = conversation_from_record(record, default_id=default_id or where)
        names = {kind: media_names(record, kind) if media else [] for kind in PLACEHOLDERS}
        refs = [_media(kind, root, n, allow_outside_root) for kind in PLACEHOLDERS for n in names[kind]]
        for kind, placeholder in PLACEHOLDERS.items():  # missing ones are added when shaped, extra ones never fit
            given, files = sum(m.content.count(placeholder) for m in conv.messages), len(names[kind])
            if given > files:
                raise SampleError("media_mismatch", f"{given} {placeholder} placeholder(s) for {files} {kind} file(s)")
    except SampleError as err:
        raise SampleError(err.reason, str(err) if where in str(err) else f"{where}: {err}") from err
    group = next((n[0] for n in names.values() if n), f"text:{conv.id}")
    return Annotation(f"{id_prefix}{conv.id}", source, "conversation", refs, group, messages=conv.messages)


def _llava_records(json_file: str, root: str | None, source: str, allow_outside_root: bool) -> Item:
    for k, record in enumerate(_load_json(json_file, list, "a JSON list of conversations")):
        where = f"{json_file}[{k}]"
        try:
            root_dir = Path(root) if root else Path(json_file).parent  # as data=files reads a JSON's media
            item = _conversation(record, where, source, f"{source}-", root_dir, None, allow_outside_root)
        except SampleError as err:
            item = err
        yield where, item


def read_llava(json_file: str, images_dir: str | None = None, allow_outside_root: bool = False) -> Item:
    """LLaVA instruct JSON: [{id, image?, conversations: [{from: human|gpt, value}]}] with ``<image>``
    (``video`` / ``audio`` fields and placeholders are read too; every file under ``images_dir``, by
    default the JSON file's folder)."""
    return _llava_records(json_file, images_dir, "llava", allow_outside_root)


def _nlvr2_records(json_file: str) -> Iterator[tuple[str, Any]]:
    """NLVR2's own files hold one JSON object per line; a JSON list is read too."""
    with open(json_file, "rb") as f:
        head = f.read(256).lstrip()
    if head.startswith(b"["):
        for k, record in enumerate(_load_json(json_file, list, "a JSON list of NLVR2 records")):
            yield f"{json_file}[{k}]", record
        return
    for where, record in jsonl_records(json_file):
        yield where, SampleError(record.reason, f"{where}: {record}") if isinstance(record, SampleError) else record


def _nlvr2_statement(record: Any, where: str) -> tuple[str, str, str, str, str]:
    """(identifier, left image, right image, sentence, yes | no) of an NLVR2 record; raises SampleError."""
    if not isinstance(record, dict):
        raise SampleError("not_an_object", f"{where}: expected an object, not {json_type(record)}")
    missing = [key for key in ("identifier", "sentence", "label") if key not in record]
    if missing:
        raise SampleError("missing_field", f"{where}: needs {missing}")
    identifier, sentence, label = record["identifier"], record["sentence"], record["label"]
    if not _is_id(identifier):
        raise _wrong(where, "identifier", "an integer or a string", identifier)
    if not isinstance(sentence, str):
        raise _wrong(where, "sentence", "a string", sentence)
    if not _clean(sentence):
        raise SampleError("missing_field", f"{where}: empty sentence")
    if isinstance(label, str) and label.strip().lower() in ("true", "false"):
        label = label.strip().lower() == "true"
    if not isinstance(label, bool):
        raise SampleError("wrong_type", f'{where}: \'label\' must be "True" or "False", not {label!r:.40}')
    sides = [key for key in ("left", "right") if record.get(key) is not None]
    if not sides and isinstance(identifier, str) and identifier.count("-") >= 3:
        pair = identifier.rsplit("-", 1)[0]  # NLVR2's dev / test naming: split-set-pair-sentence
        left, right = f"{pair}-img0.png", f"{pair}-img1.png"
    elif len(sides) < 2:
        raise SampleError("missing_field", f"{where}: needs 'left' and 'right' image paths")
    else:
        left, right = record["left"], record["right"]
        for key, value in (("left", left), ("right", right)):
            if not isinstance(value, str):
                raise _wrong(where, key, "an image path", value)
    return str(identifier), left, right, _clean(sentence), "yes" if label else "no"


def read_nlvr2(json_file: str, images_dir: str, allow_outside_root: bool = False) -> Item:
    """NLVR2 statements about two images: ``{"identifier", "left", "right", "sentence", "label":
    "True" | "False"}`` per line (NLVR2's JSON lines; a JSON list is read too), images under
    ``images_dir``. Without ``left`` and ``right``, an identifier ``split-set-pair-k`` names
    ``split-set-pair-img0.png`` and ``-img1.png``, as NLVR2's dev and test images are named.

    The statements of one pair of images become one ``vqa`` annotation: each a QA whose question
    is the sentence (``question_type`` ``statement``) and whose answer is yes (true) or no (false);
    the build asks it as a yes/no question about both images (``compare_statement``)."""
    by_pair: dict[tuple[str, str], list[QA]] = {}
    first: dict[tuple[str, str], tuple[str, str]] = {}  # pair -> (where, identifier) of its first record
    seen: set[str] = set()
    for where, record in _nlvr2_records(json_file):
        if isinstance(record, SampleError):
            yield where, record
            continue
        try:
            identifier, left, right, sentence, answer = _nlvr2_statement(record, where)
        except SampleError as err:
            yield where, err
            continue
        if identifier in seen:
            yield where, SampleError("duplicate_id", f"{where}: identifier {identifier!r} appears twice")
            continue
        seen.add(identifier)
        by_pair.setdefault((left, right), []).append(QA(sentence, [answer], answer, "yes/no", identifier, "statement"))
        first.setdefault((left, right), (where, identifier))
    for (left, right), qas in by_pair.items():
        where, identifier = first[(left, right)]
        where = f"{where} (images {left}, {right})"
        try:
            media = [_media("image", images_dir, name, allow_outside_root) for name in (left, right)]
        except SampleError as err:
            yield where, SampleError(err.reason, f"{where}: {err}")
            continue
        yield where, Annotation(f"nlvr2-{identifier}", "nlvr2", "vqa", media, left, qas=qas)


def read_llava_video(json_file: str, videos_dir: str | None = None, allow_outside_root: bool = False) -> Item:
    """LLaVA-Video JSON: [{id, video: "x.mp4", conversations: [{from: human|gpt, value: "<video>\\n..."}]}]."""
    return _llava_records(json_file, videos_dir, "llava_video", allow_outside_root)


def read_jsonl(path: str, media_root: str | None = None, allow_outside_root: bool = False) -> Item:
    """Generic JSONL: messages / conversations / Alpaca fields, plus ``image(s)``, ``audio(s)`` and ``video(s)`` paths."""
    root = Path(media_root or Path(path).parent)
    for where, record in jsonl_records(path):
        try:
            if isinstance(record, SampleError):
                raise record
            item = _conversation(record, where, "jsonl", "", root, None, allow_outside_root)
        except SampleError as err:
            item = SampleError(err.reason, str(err) if where in str(err) else f"{where}: {err}")
        yield where, item


def read_alpaca(json_file: str) -> Item:
    """Alpaca-style JSON list of {instruction, input, output}: text-only conversations."""
    for k, record in enumerate(_load_json(json_file, list, "a JSON list of records")):
        where = f"{json_file}[{k}]"
        try:
            item = _conversation(record, where, "alpaca", "", Path("."), f"alpaca-{k}", media=False)
        except SampleError as err:
            item = err
        yield where, item


def read_caption_shards(urls: list[str]) -> Item:
    """Image-text shards as img2dataset writes them: ``key.jpg`` + ``key.txt`` (+ ``key.json``), read
    sample by sample as mmit's own shards are (``shard_members``: nothing extracted, member names that
    leave the shard refused, a corrupt or cut-short shard named)."""
    from mmit.data.shards import shard_members

    for url in urls:
        for where, files in shard_members(url):
            if isinstance(files, SampleError):
                yield where, files
                continue
            key = where[len(url) + 1 :]
            image_ext = next((e for e in IMAGE_EXTENSIONS if e in files), None)
            try:
                caption = files.get("txt", b"").decode("utf-8").strip()
            except UnicodeDecodeError:
                yield where, SampleError("not_utf8", f"{where}: caption is not UTF-8")
                continue
            if image_ext is None:
                yield where, SampleError("missing_media", f"{where}: no image file")
            elif not caption:
                yield where, SampleError("empty_answer", f"{where}: no caption")
            else:
                media = MediaRef("image", image_ext, data=files[image_ext])
                yield (
                    where,
                    Annotation(
                        f"shard-{Path(url).stem}-{key}",
                        "caption_shards",
                        "caption",
                        [media],
                        f"{Path(url).name}:{key}",
                        captions=[caption],
                    ),
                )


# --- Audio ---


def _read_csv(path: str | Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of a UTF-8 CSV with a header naming at least ``required``; raises SampleError."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SampleError("not_utf8", f"{path}: not UTF-8 at byte {err.start}") from err
    # strict: an unclosed quote is an error, not the rest of the file read into one caption
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    rows, done = [], 0  # done: the last line of the last row read whole
    try:
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise SampleError(
                "missing_field", f"{path}: the CSV header lacks column(s) {missing} (has {reader.fieldnames})"
            )
        done = reader.line_num
        for row in reader:
            rows.append(row)
            done = reader.line_num
    except csv.Error as err:  # also a field over csv's limit of 131,072 characters
        raise SampleError("bad_csv", f"{path}:{done + 1}: not CSV this reader can read ({err})") from err
    return rows


def _captioned_clip(
    where: str,
    source: str,
    id_prefix: str,
    audio_dir: Path,
    name: str,
    captions: list[str],
    allow_outside_root: bool = False,
):
    """(where, Annotation | SampleError) for one clip and its captions."""
    captions = [c for c in captions if c]
    if not captions:
        return where, SampleError("empty_answer", f"{where}: no caption for {name}")
    try:
        media = _media("audio", audio_dir, name, allow_outside_root)
    except SampleError as err:
        return where, SampleError(err.reason, f"{where}: {err}")
    return where, Annotation(f"{id_prefix}{name}", source, "caption", [media], name, captions=captions)


def read_clotho_captions(csv_file: str, audio_dir: str, allow_outside_root: bool = False) -> Item:
    """Clotho ``clotho_captions_<split>.csv``: ``file_name,caption_1,...,caption_5``; clips in ``audio_dir``."""
    rows = _read_csv(csv_file, ("file_name", "caption_1"))
    seen: set[str] = set()
    for k, row in enumerate(rows, start=2):  # line numbers: the header is line 1
        where, name = f"{csv_file}:{k}", _clean(row.get("file_name"))
        if not name:
            yield where, SampleError("missing_field", f"{where}: no file_name")
            continue
        if name in seen:
            yield where, SampleError("duplicate_id", f"{where}: {name} appears twice")
            continue
        seen.add(name)
        captions = [_clean(row.get(f"caption_{i}")) for i in range(1, 6)]
        yield _captioned_clip(where, "clotho", "clotho-", Path(audio_dir), name, captions, allow_outside_root)


def read_audiocaps(
    csv_file: str, audio_dir: str, audio_pattern: str = "{youtube_id}.wav", allow_outside_root: bool = False
) -> Item:
    """AudioCaps ``<split>.csv``: ``audiocap_id,youtube_id,start_time,caption``, one row per caption.

    Rows of one clip (same ``youtube_id`` and ``start_time``; validation and test have five)
    become one annotation. Clips are found by ``audio_pattern`` over the row's fields, e.g.
    ``Y{youtube_id}.wav`` or ``{youtube_id}_{start_time}.flac``, as your download named them.
    """
    by_clip: dict[tuple[str, str], list[str]] = {}
    first_line: dict[tuple[str, str], int] = {}
    for k, row in enumerate(_read_csv(csv_file, ("audiocap_id", "youtube_id", "start_time", "caption")), start=2):
        where, clip = f"{csv_file}:{k}", (_clean(row.get("youtube_id")), _clean(row.get("start_time")))
        if not clip[0]:
            yield where, SampleError("missing_field", f"{where}: no youtube_id")
            continue
        caption = _clean(row.get("caption"))
        if not caption:
            yield where, SampleError("empty_answer", f"{where}: empty caption")
            continue
        by_clip.setdefault(clip, []).append(caption)
        first_line.setdefault(clip, k)
    for (youtube_id, start), captions in by_clip.items():
        where = f"{csv_file}:{first_line[(youtube_id, start)]}"
        try:
            name = audio_pattern.format(youtube_id=youtube_id, start_time=start)
        except (ValueError, KeyError, IndexError) as err:
            yield where, SampleError("wrong_type", f"{where}: audio_pattern {audio_pattern!r} does not fit ({err})")
            continue
        yield _captioned_clip(where, "audiocaps", "audiocaps-", Path(audio_dir), name, captions, allow_outside_root)


def _audio_records(path: str, needed: tuple[str, ...]) -> Iterator[tuple[str, dict | SampleError]]:
    """JSONL records that name an ``audio`` file and every field in ``needed``, or their errors."""
    for where, record in jsonl_records(path):
        if isinstance(record, SampleError):
            yield where, SampleError(record.reason, f"{where}: {record}")
        elif not isinstance(record, dict):
            yield where, SampleError("not_an_object", f"{where}: expected an object, not {json_type(record)}")
        elif any(record.get(k) is not None and not isinstance(record[k], str) for k in ("audio", *needed)):
            key = next(k for k in ("audio", *needed) if record.get(k) is not None and not isinstance(record[k], str))
            yield where, _wrong(where, key, "a string", record[key])
        elif not _clean(record.get("audio")):
            yield where, SampleError("missing_field", f"{where}: needs an 'audio' path")
        elif any(not _clean(record.get(k)) for k in needed):
            empty = [k for k in needed if not _clean(record.get(k))]
            reason = "missing_field" if any(k not in record for k in empty) else "empty_answer"
            yield where, SampleError(reason, f"{where}: needs non-empty {empty}")
        else:
            yield where, record


def read_audio_caption_jsonl(path: str, audio_dir: str | None = None, allow_outside_root: bool = False) -> Item:
    """Audio captions as JSONL lines ``{"audio": "clip.wav", "caption": "..."}`` (several lines per clip allowed)."""
    by_clip: dict[str, list[str]] = {}
    for where, record in _audio_records(path, ("caption",)):
        if isinstance(record, SampleError):
            yield where, record
            continue
        by_clip.setdefault(record["audio"].strip(), []).append(_clean(record["caption"]))
    root = Path(audio_dir or Path(path).parent)
    for name in sorted(by_clip):
        yield _captioned_clip(
            f"{path}:{name}", "audio_caption_jsonl", "audiocaption-", root, name, by_clip[name], allow_outside_root
        )


def read_audio_qa_jsonl(path: str, audio_dir: str | None = None, allow_outside_root: bool = False) -> Item:
    """Questions about audio as JSONL lines ``{"audio", "question", "answer"}``, optionally with
    ``answers`` (all acceptable answers), ``answer_type`` (yes/no | number | other) and ``question_id``.
    The questions of one clip become one annotation."""
    by_clip: dict[str, list[QA]] = {}
    for where, record in _audio_records(path, ("question", "answer")):
        if isinstance(record, SampleError):
            yield where, record
            continue
        listed, answer_type, qid = record.get("answers"), record.get("answer_type"), record.get("question_id")
        if listed is not None and not (isinstance(listed, list) and all(isinstance(a, str) for a in listed)):
            yield where, SampleError("wrong_type", f"{where}: 'answers' must be a list of strings, not {listed!r:.60}")
            continue
        if answer_type is not None and not isinstance(answer_type, str):
            yield where, _wrong(where, "answer_type", "a string", answer_type)
            continue
        if qid is not None and not _is_id(qid):
            yield where, _wrong(where, "question_id", "an integer or a string", qid)
            continue
        answer = _clean(record["answer"])
        answers = [_clean(a) for a in listed or [] if _clean(a)] or [answer]
        qa = QA(_clean(record["question"]), answers, answer, answer_type or "other", str(where if qid is None else qid))
        by_clip.setdefault(record["audio"].strip(), []).append(qa)
    root = Path(audio_dir or Path(path).parent)
    for name in sorted(by_clip):
        where = f"{path}:{name}"
        try:
            media = _media("audio", root, name, allow_outside_root)
        except SampleError as err:
            yield where, SampleError(err.reason, f"{where}: {err}")
            continue
        yield where, Annotation(f"audioqa-{name}", "audio_qa_jsonl", "vqa", [media], name, qas=by_clip[name])


def _transcribed_clip(
    where: str, source: str, id_prefix: str, root: str | Path, name: str, text: str, allow_outside_root: bool = False
):
    try:
        media = _media("audio", root, name, allow_outside_root)
    except SampleError as err:
        return where, SampleError(err.reason, f"{where}: {err}")
    return where, Annotation(f"{id_prefix}{name}", source, "transcript", [media], name, transcript=text)


def read_transcript_jsonl(path: str, audio_dir: str | None = None, allow_outside_root: bool = False) -> Item:
    """Transcribed speech as JSONL lines ``{"audio": "clip.wav", "text": "what is said"}``."""
    root, seen = Path(audio_dir or Path(path).parent), set()
    for where, record in _audio_records(path, ("text",)):
        if isinstance(record, SampleError):
            yield where, record
            continue
        name = record["audio"].strip()
        if name in seen:
            yield where, SampleError("duplicate_id", f"{where}: {name} has a second transcript")
            continue
        seen.add(name)
        text = _clean(record["text"])
        yield _transcribed_clip(where, "transcript_jsonl", "transcript-", root, name, text, allow_outside_root)


# --- Video ---


def _video_name(root: str | Path, video: Any, pattern: str, ext: str) -> str:
    """The file of a video as an annotation names it (a name, with or without extension, or an id
    through ``pattern``): ``.ext`` is added to a name without a video extension, or another video
    extension where only that file exists (downloads of one dataset mix mp4, mkv and webm).
    Raises SampleError for a value that is no name or does not fit ``pattern``."""
    if isinstance(video, bool) or not isinstance(video, str | int):
        raise SampleError("wrong_type", f"the video must be a name or an integer id, not {json_type(video)}")
    try:
        name = pattern.format(video=video).strip()
    except (ValueError, KeyError, IndexError) as err:
        raise SampleError("wrong_type", f"video_pattern {pattern!r} does not fit {video!r} ({err})") from err
    if not name:
        raise SampleError("missing_field", "an empty video name")
    if Path(name).suffix[1:].lower() in VIDEO_EXTENSIONS:
        return name
    for other in dict.fromkeys([ext, *VIDEO_EXTENSIONS]):
        if os.path.isfile(os.path.join(root, f"{name}.{other}")):
            return f"{name}.{other}"
    return f"{name}.{ext}"  # missing: the media check names this file


def _optional_texts(record: dict, where: str, keys: tuple[str, ...]) -> SampleError | None:
    """A wrong_type error for the first of ``keys`` present with a non-string value."""
    wrong = next((key for key in keys if record.get(key) is not None and not isinstance(record[key], str)), None)
    return _wrong(where, wrong, "a string", record[wrong]) if wrong else None


def read_msrvtt_captions(
    annotations_file: str, videos_dir: str, split: str | None = None, ext: str = "mp4", allow_outside_root: bool = False
) -> Item:
    """MSR-VTT ``videodatainfo.json``: ``videos`` [{video_id, split?}] + ``sentences`` [{video_id, caption}]
    (twenty per video); videos ``<video_id>.<ext>`` in ``videos_dir``, only those of ``split`` if given."""
    data = _load_json(annotations_file, dict, "an MSR-VTT object with 'videos' and 'sentences'")
    by_video: dict[str, list[str]] = {}
    for k, sentence in enumerate(_items(data, "sentences", annotations_file)):
        where = f"{annotations_file}:sentences[{k}]"
        if not isinstance(sentence, dict):
            yield where, SampleError("not_an_object", f"{where}: expected an object, not {json_type(sentence)}")
            continue
        if "video_id" not in sentence or "caption" not in sentence:
            yield where, SampleError("missing_field", f"{where}: needs video_id and caption")
            continue
        if not isinstance(sentence["video_id"], str):
            yield where, _wrong(where, "video_id", "a string", sentence["video_id"])
            continue
        if not isinstance(sentence["caption"], str):
            yield where, _wrong(where, "caption", "a string", sentence["caption"])
            continue
        if not _clean(sentence["caption"]):
            yield where, SampleError("empty_answer", f"{where}: empty caption")
            continue
        by_video.setdefault(sentence["video_id"], []).append(_clean(sentence["caption"]))
    seen: set[str] = set()
    for k, video in enumerate(_items(data, "videos", annotations_file)):
        where = f"{annotations_file}:videos[{k}]"
        if not isinstance(video, dict):
            yield where, SampleError("not_an_object", f"{where}: expected an object, not {json_type(video)}")
            continue
        video_id = video.get("video_id")
        if not isinstance(video_id, str) or not video_id.strip():
            yield where, _wrong(where, "video_id", "a non-empty string", video_id)
            continue
        wrong = _optional_texts(video, where, ("split",))
        if wrong:
            yield where, wrong
            continue
        if video_id in seen:
            yield where, SampleError("duplicate_id", f"{where}: video {video_id} appears twice")
            continue
        seen.add(video_id)
        if video_id not in by_video or (split is not None and video.get("split") != split):
            continue  # a video without captions (or of another split) is simply not annotated here
        try:
            name = _video_name(videos_dir, video_id, "{video}", ext)
            media = _media("video", videos_dir, name, allow_outside_root)
        except SampleError as err:
            yield where, SampleError(err.reason, f"{where}: {err}")
            continue
        yield (
            where,
            Annotation(f"msrvtt-{video_id}", "msrvtt_captions", "caption", [media], name, captions=by_video[video_id]),
        )


VIDEO_NAME_FIELDS = ("video", "video_name", "video_id")  # MSRVTT-QA / MSVD-QA spell it in these ways


def read_video_qa(
    json_file: str,
    videos_dir: str,
    ext: str = "mp4",
    video_pattern: str = "{video}",
    allow_outside_root: bool = False,
    with_audio: bool = False,
) -> Item:
    """MSRVTT-QA / MSVD-QA JSON: a list of ``{"video" | "video_name" | "video_id", "question", "answer"}``,
    optionally with ``id``, ``answer_type`` (yes/no | number | other) and ``type`` (the question's
    kind, e.g. ``order``: asked as temporal ordering). MSRVTT-QA names ``"video": "video7010"``
    for ``video7010.mp4`` (``ext`` is added to a name without one); integer ids take
    ``video_pattern``, e.g. ``video{video}``. The questions of one video become one vqa annotation.
    ``with_audio``: questions that need the sound track too; the annotation (``av_qa``, id
    ``avqa-<name>``) has the file twice, as its video and as its audio (``mmit.data.audio`` decodes
    a clip's sound track), so a sample has one ``<video>`` and one ``<audio>``."""
    by_video: dict[str, list[QA]] = {}
    first: dict[str, str] = {}
    for k, record in enumerate(_load_json(json_file, list, "a JSON list of questions")):
        where = f"{json_file}[{k}]"
        if not isinstance(record, dict):
            yield where, SampleError("not_an_object", f"{where}: expected an object, not {json_type(record)}")
            continue
        field_name = next((key for key in VIDEO_NAME_FIELDS if record.get(key) is not None), None)
        if field_name is None or "question" not in record or "answer" not in record:
            yield (
                where,
                SampleError(
                    "missing_field", f"{where}: needs a video ({'/'.join(VIDEO_NAME_FIELDS)}), question and answer"
                ),
            )
            continue
        wrong = _optional_texts(record, where, ("question", "answer", "answer_type", "type"))
        if wrong:
            yield where, wrong
            continue
        if record.get("id") is not None and not _is_id(record["id"]):
            yield where, _wrong(where, "id", "an integer or a string", record["id"])
            continue
        question, answer = _clean(record["question"]), _clean(record["answer"])
        if not question or not answer:
            reason = "missing_field" if not question else "empty_answer"
            yield where, SampleError(reason, f"{where}: empty {'question' if not question else 'answer'}")
            continue
        try:
            name = _video_name(videos_dir, record[field_name], video_pattern, ext)
        except SampleError as err:
            yield where, SampleError(err.reason, f"{where}: {field_name!r}: {err}")
            continue
        answer_type = record.get("answer_type") or ("yes/no" if answer.lower() in ("yes", "no") else "other")
        qid = str(record["id"]) if record.get("id") is not None else f"{Path(json_file).name}[{k}]"
        qa = QA(question, [answer], answer, answer_type, qid, _clean(record.get("type")))
        by_video.setdefault(name, []).append(qa)
        first.setdefault(name, where)
    for name in sorted(by_video):
        where = f"{first[name]} (video {name})"
        try:
            media = _media("video", videos_dir, name, allow_outside_root)
        except SampleError as err:
            yield where, SampleError(err.reason, f"{where}: {err}")
            continue
        if with_audio:
            sound = MediaRef("audio", media.ext, path=media.path)
            yield where, Annotation(f"avqa-{name}", "av_qa", "vqa", [media, sound], name, qas=by_video[name])
            continue
        yield where, Annotation(f"videoqa-{name}", "video_qa", "vqa", [media], name, qas=by_video[name])


def format_seconds(value: float) -> str:
    """A time as events are told: 0.0, 1.25, 12.5 (at most two decimals, at least one)."""
    text = f"{value:.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _clause(sentence: str) -> str:
    return sentence.rstrip(" .")


def event_targets(video: str, events: list[tuple[float, float, str]]) -> tuple[str, list[QA]]:
    """A video's events (start, end, sentence; in time order) as a dense caption, one line per
    event (``0.0-2.5 s: A red square moves left.``), and questions about time: what happens
    between an event's start and end (``temporal``), and, for consecutive events that do not
    overlap, which of the two happens first (``order``; which one is named first is drawn from the
    video's name, so the answer is not always the first option)."""
    caption = "\n".join(f"{format_seconds(start)}-{format_seconds(end)} s: {text}" for start, end, text in events)
    qas = [
        QA(
            f"What happens between {format_seconds(s)} s and {format_seconds(e)} s?",
            [text],
            text,
            "other",
            f"{video}:{i}",
            "temporal",
        )
        for i, (s, e, text) in enumerate(events)
    ]
    for i, ((_, end, before), (start, _, after)) in enumerate(zip(events, events[1:])):
        if end > start or _clause(before).lower() == _clause(after).lower():
            continue
        a, b = (before, after) if zlib.crc32(f"{video}:{i}".encode()) % 2 else (after, before)
        question = f'Which happens first: "{_clause(a)}" or "{_clause(b)}"?'
        qas.append(QA(question, [_clause(before)], _clause(before), "other", f"{video}:order{i}", "order"))
    return caption, qas


def _number(value: Any) -> bool:
    """A JSON number that is a number: not a boolean, not NaN or infinite (which json.loads accepts)."""
    return is_number(value) and math.isfinite(value)


def _events(record: Any, where: str) -> list[tuple[float, float, str]]:
    """The events (start, end, sentence) of an ActivityNet Captions record in time order; raises SampleError.
    Times are clamped to [0, duration]: the official files have ends a little past the video's."""
    if not isinstance(record, dict):
        raise SampleError("not_an_object", f"{where}: expected an object, not {json_type(record)}")
    missing = [key for key in ("duration", "timestamps", "sentences") if key not in record]
    if missing:
        raise SampleError("missing_field", f"{where}: needs {missing}")
    duration, stamps, sentences = record["duration"], record["timestamps"], record["sentences"]
    if not _number(duration):
        raise _wrong(where, "duration", "a number of seconds", duration)
    if not duration > 0:
        raise SampleError("bad_timestamp", f"{where}: 'duration' must be positive, not {duration}")
    if not isinstance(stamps, list) or not all(
        isinstance(s, list) and len(s) == 2 and all(_number(t) for t in s) for s in stamps
    ):
        raise SampleError(
            "wrong_type", f"{where}: 'timestamps' must be a list of [start, end] numbers, not {stamps!r:.60}"
        )
    if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
        raise SampleError("wrong_type", f"{where}: 'sentences' must be a list of strings, not {sentences!r:.60}")
    if len(stamps) != len(sentences):
        raise SampleError("missing_field", f"{where}: {len(stamps)} timestamps for {len(sentences)} sentences")
    if not stamps:
        raise SampleError("empty_answer", f"{where}: no events")
    events = []
    for i, ((start, end), text) in enumerate(zip(stamps, sentences)):
        if not _clean(text):
            raise SampleError("empty_answer", f"{where}: sentence {i} is empty")
        if start > end or start >= duration:
            raise SampleError(
                "bad_timestamp", f"{where}: event {i} [{start}, {end}] is not within the video's {duration} s"
            )
        events.append((max(0.0, float(start)), min(float(end), float(duration)), _clean(text)))
    return sorted(events, key=lambda e: (e[0], e[1]))


def read_activitynet_captions(
    json_file: str,
    videos_dir: str,
    ext: str = "mp4",
    video_pattern: str = "{video}",
    allow_outside_root: bool = False,
) -> Item:
    """ActivityNet Captions ``train.json`` / ``val_1.json``: ``{"v_xxx": {"duration", "timestamps":
    [[start, end], ...], "sentences": [...]}}``; videos ``<key>.<ext>`` (or ``video_pattern``).

    One ``events`` annotation per video: ``captions`` holds the dense caption (the events in time
    order, each with its times) and ``qas`` the questions about time built from the events
    (:func:`event_targets`): what happens between two times, and which of two events comes first.
    """
    data = _load_json(json_file, dict, "an ActivityNet Captions object of video -> events")
    for key, record in data.items():
        where = f"{json_file}:{key}"
        try:
            events = _events(record, where)
            name = _video_name(videos_dir, key, video_pattern, ext)
            media = _media("video", videos_dir, name, allow_outside_root)
        except SampleError as err:
            yield where, SampleError(err.reason, str(err) if where in str(err) else f"{where}: {err}")
            continue
        caption, qas = event_targets(name, events)
        yield where, Annotation(f"anet-{key}", "activitynet_captions", "events", [media], name, [caption], qas)
