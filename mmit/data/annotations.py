"""Readers for the annotation formats people have, in their official layouts.

Each reader yields ``(location, Annotation | SampleError)``: one annotation per image (all of
its captions, or all of its question-answer pairs) or per conversation. Errors are yielded,
not raised, so the builder's ``on_error`` policy decides; a location names the file and
record.
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmit.data.samples import MediaRef, Message, SampleError, conversation_from_record
from mmit.data.sources import jsonl_records

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")


@dataclass
class QA:
    question: str
    answers: list[str]  # all human answers (VQAv2 has ten)
    answer: str  # the consensus answer used as the target
    answer_type: str = "other"  # yes/no | number | other
    question_id: str = ""


@dataclass
class Annotation:
    """An annotated item before templates.

    ``group`` is the media identity used for splits: the image name as the annotation gives it
    (relative to its folder), so all annotations of one image share a split wherever the data lives.
    """

    id: str
    source: str
    kind: str  # caption | vqa | conversation
    media: list[MediaRef]
    group: str
    captions: list[str] = field(default_factory=list)
    qas: list[QA] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    detailed: bool = False  # captions are long descriptions (caption_detailed task)


Item = Iterator[tuple[str, "Annotation | SampleError"]]


def _load_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise SampleError("not_utf8", f"{path}: not UTF-8 at byte {err.start}") from err
    except json.JSONDecodeError as err:
        raise SampleError("bad_json", f"{path}:{err.lineno}: bad JSON ({err.msg})") from err


def _image(path: Path) -> MediaRef:
    if not path.is_file():
        raise SampleError("missing_media", f"image file {path} does not exist")
    return MediaRef("image", path.suffix.lstrip(".").lower(), path=str(path))


def _clean(text: Any) -> str:
    return text.strip() if isinstance(text, str) else ""


def read_coco_captions(annotations_file: str, images_dir: str, detailed: bool = False) -> Item:
    """COCO ``captions_<split>.json``: ``images`` [{id, file_name}] + ``annotations`` [{image_id, caption}]."""
    data = _load_json(annotations_file)
    by_image: dict[int, list[str]] = {}
    for k, ann in enumerate(data.get("annotations", [])):
        where = f"{annotations_file}:annotations[{k}]"
        if "image_id" not in ann or "caption" not in ann:
            yield where, SampleError("missing_field", f"{where}: needs image_id and caption")
            continue
        caption = _clean(ann["caption"])
        if not caption:
            yield where, SampleError("empty_answer", f"{where}: empty caption")
            continue
        by_image.setdefault(ann["image_id"], []).append(caption)
    seen: set = set()
    for k, image in enumerate(data.get("images", [])):
        where = f"{annotations_file}:images[{k}]"
        image_id = image.get("id")
        if image_id in seen:
            yield where, SampleError("duplicate_id", f"{where}: image id {image_id} appears twice")
            continue
        seen.add(image_id)
        if image_id not in by_image:
            continue  # an image without captions is simply not annotated
        try:
            media = _image(Path(images_dir) / image["file_name"])
        except (SampleError, KeyError) as err:
            yield where, err if isinstance(err, SampleError) else SampleError("missing_field", f"{where}: no file_name")
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


def read_vqav2(
    questions_file: str,
    annotations_file: str,
    images_dir: str,
    image_pattern: str = "COCO_{data_subtype}_{image_id:012d}.jpg",
) -> Item:
    """VQAv2 questions + annotations (ten answers each); images found by the COCO name pattern."""
    questions = _load_json(questions_file)
    annotations = _load_json(annotations_file)
    subtype = questions.get("data_subtype", "")
    by_qid = {ann.get("question_id"): ann for ann in annotations.get("annotations", [])}
    per_image: dict[int, list[QA]] = {}
    for k, q in enumerate(questions.get("questions", [])):
        where = f"{questions_file}:questions[{k}]"
        qid = q.get("question_id")
        if qid not in by_qid or "image_id" not in q or not _clean(q.get("question")):
            yield where, SampleError("missing_field", f"{where}: question {qid} lacks text, image or annotation")
            continue
        ann = by_qid[qid]
        answers = [_clean(a.get("answer")) for a in ann.get("answers", [])]
        answers = [a for a in answers if a]
        target = _clean(ann.get("multiple_choice_answer")) or (Counter(answers).most_common(1)[0][0] if answers else "")
        if not target:
            yield where, SampleError("empty_answer", f"{where}: question {qid} has no answer")
            continue
        per_image.setdefault(q["image_id"], []).append(
            QA(_clean(q["question"]), answers or [target], target, ann.get("answer_type", "other"), str(qid))
        )
    for image_id in sorted(per_image):
        where = f"{questions_file}:image {image_id}"
        name = image_pattern.format(data_subtype=subtype, image_id=image_id)
        try:
            media = _image(Path(images_dir) / name)
        except SampleError as err:
            yield where, err
            continue
        yield where, Annotation(f"vqa-{image_id}", "vqav2", "vqa", [media], name, qas=per_image[image_id])


def read_caption_jsonl(path: str, images_dir: str, image_pattern: str = "{image_id}", detailed: bool = True) -> Item:
    """Captions as JSONL lines ``{"image_id" | "image", "caption"}`` (e.g. long descriptions)."""
    by_image: dict[str, list[str]] = {}
    for where, record in jsonl_records(path):
        if isinstance(record, SampleError):
            yield where, record
            continue
        name = record.get("image") or (
            image_pattern.format(image_id=record["image_id"]) if "image_id" in record else None
        )
        caption = _clean(record.get("caption"))
        if not name or not caption:
            yield (
                where,
                SampleError("missing_field" if not name else "empty_answer", f"{where}: needs an image and a caption"),
            )
            continue
        by_image.setdefault(name, []).append(caption)
    for name in sorted(by_image):
        where = f"{path}:{name}"
        try:
            media = _image(Path(images_dir) / name)
        except SampleError as err:
            yield where, err
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
    record: Any, where: str, source: str, id_prefix: str, names: list[str], root: Path, default_id: str | None = None
) -> Annotation:
    """A conversation record and its images as an Annotation; raises SampleError."""
    conv = conversation_from_record(record, default_id=default_id or where)
    media = [_image(root / name) for name in names]
    group = names[0] if names else f"text:{conv.id}"
    return Annotation(f"{id_prefix}{conv.id}", source, "conversation", media, group, messages=conv.messages)


def _image_names(record: Any, keys: tuple[str, ...]) -> list[str]:
    """The image paths a record names under the first present key (one name or a list)."""
    value = next((record[k] for k in keys if isinstance(record, dict) and record.get(k)), [])
    return [value] if isinstance(value, str) else list(value)


def read_llava(json_file: str, images_dir: str | None = None) -> Item:
    """LLaVA instruct JSON: [{id, image?, conversations: [{from: human|gpt, value}]}] with ``<image>``."""
    for k, record in enumerate(_load_json(json_file)):
        where = f"{json_file}[{k}]"
        names = _image_names(record, ("image",))
        try:
            item = _conversation(record, where, "llava", "llava-", names, Path(images_dir or "."))
        except SampleError as err:
            item = err
        yield where, item


def read_jsonl(path: str, media_root: str | None = None) -> Item:
    """Generic JSONL: messages / conversations / Alpaca fields, plus ``image`` or ``images`` paths."""
    for where, record in jsonl_records(path):
        try:
            if isinstance(record, SampleError):
                raise record
            names = _image_names(record, ("images", "image"))
            item = _conversation(record, where, "jsonl", "", names, Path(media_root or Path(path).parent))
        except SampleError as err:
            item = err
        yield where, item


def read_alpaca(json_file: str) -> Item:
    """Alpaca-style JSON list of {instruction, input, output}: text-only conversations."""
    for k, record in enumerate(_load_json(json_file)):
        where = f"{json_file}[{k}]"
        try:
            item = _conversation(record, where, "alpaca", "", [], Path("."), default_id=f"alpaca-{k}")
        except SampleError as err:
            item = err
        yield where, item


def read_caption_shards(urls: list[str]) -> Item:
    """Image-text shards as img2dataset writes them: ``key.jpg`` + ``key.txt`` (+ ``key.json``)."""
    for url in urls:
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(url) as tar:
            for info in tar:
                if not info.isfile():
                    continue
                name = Path(info.name).name
                key, _, ext = name.partition(".")
                members.setdefault(key, {})[ext.lower()] = tar.extractfile(info).read()
        for key in sorted(members):
            files, where = members[key], f"{url}:{key}"
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
