"""Media files as untrusted input: a named path stays inside its data folder, and an image's size is
read from its header and checked against a pixel limit before any pixel is decoded. Images are
decoded upright: a camera's EXIF orientation tag (phones store portrait photos sideways with one)
is applied, as transformers' ``load_image`` does."""

from __future__ import annotations

import functools
import io
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mmit.data.samples import MediaRef, SampleError, json_type

# About 40 MP: a 7300 x 5500 photo. PIL only warns at 89 MP and refuses at 179 MP, while a 140 KB
# PNG of 12000 x 12000 (144 MP) decodes to 430 MB and costs gigabytes once converted and resized.
DEFAULT_MAX_PIXELS = 40_000_000

# The record fields that name media files, per kind (the plural first, as LLaVA-style data has it).
MEDIA_FIELDS = {"image": ("images", "image"), "audio": ("audios", "audio"), "video": ("videos", "video")}

_limit = {"max_pixels": DEFAULT_MAX_PIXELS}

# How images become pixels, recorded in feature-cache fingerprints so that a cache made by another
# decoding (before orientation tags were applied) is not reused.
IMAGE_DECODING = "rgb, exif orientation applied"
# Pixel modes wider than 8 bits a channel, which PIL's convert("RGB") clips rather than scales.
WIDE_MODES = {
    "I;16": "16-bit",
    "I;16B": "16-bit",
    "I;16L": "16-bit",
    "I;16N": "16-bit",
    "I": "32-bit integer",
    "F": "32-bit float",
}
_ORIENTATION = 0x0112  # the EXIF tag; 1 is upright, 2-8 a mirror and/or a quarter turn


def set_max_pixels(max_pixels: int) -> None:
    """The limit that training's decoders apply (``data.max_pixels``), process-wide like PIL's own."""
    if int(max_pixels) <= 0:
        raise ValueError(f"max_pixels must be positive, not {max_pixels}")
    _limit["max_pixels"] = int(max_pixels)


def pixel_limit() -> int:
    """The limit set by :func:`set_max_pixels` (default :data:`DEFAULT_MAX_PIXELS`)."""
    return _limit["max_pixels"]


@functools.lru_cache(maxsize=1024)
def _real_dir(path: str) -> str:
    return os.path.realpath(path)


def media_path(kind: str, root: str | os.PathLike, name: Any, allow_outside_root: bool = False) -> str:
    """The file ``name`` under ``root``; SampleError if it is no path, is missing, or (unless
    ``allow_outside_root``) is absolute or resolves outside ``root`` through ``..`` or a symlink."""
    if not isinstance(name, str):
        raise SampleError("wrong_type", f"a {kind} path must be a string, not {json_type(name)}")
    if not name.strip():
        raise SampleError("missing_field", f"an empty {kind} path")
    if "\0" in name:  # no file is named so; os.path would raise a bare ValueError
        raise SampleError("wrong_type", f"{kind} path {name!r} holds a NUL character")
    root = os.fspath(root)
    path = os.path.join(root, name)
    if not allow_outside_root:
        hint = "(a recipe source may set allow_outside_root: true)"
        if os.path.isabs(name):
            raise SampleError(
                "outside_root",
                f"{kind} path {name!r} is absolute: media outside the data folder {root} are refused {hint}",
            )
        # The folders are resolved once each (cached); the file itself only if it is a symlink.
        inside = _real_dir(os.path.abspath(root))
        parent, base = os.path.split(path)
        real = os.path.realpath(path) if os.path.islink(path) else os.path.join(_real_dir(parent), base)
        if real != inside and not real.startswith(inside.rstrip(os.sep) + os.sep):
            raise SampleError(
                "outside_root", f"{kind} file {name!r} resolves to {real}, outside its data folder {root} {hint}"
            )
    if not os.path.isfile(path):
        what = "is a folder, not a file" if os.path.isdir(path) else "does not exist"
        raise SampleError("missing_media", f"{kind} file {path} {what}")
    return path


def media_file(kind: str, root: str | os.PathLike, name: Any, allow_outside_root: bool = False) -> MediaRef:
    """A media file on disk, through :func:`media_path`; its extension (lowercase) names its format."""
    path = media_path(kind, root, name, allow_outside_root)
    return MediaRef(kind, os.path.splitext(path)[1][1:].lower(), path=path)


MEDIA_KINDS = {  # a file's extension -> the kind of media mmit.chat, mmit.demo and the API take it for
    **dict.fromkeys(("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"), "image"),
    **dict.fromkeys(("wav", "flac", "mp3", "ogg", "opus", "m4a"), "audio"),
    **dict.fromkeys(("mp4", "webm", "mkv", "avi", "mov"), "video"),
}


def media_ref(path: str | os.PathLike) -> MediaRef:
    """A media file a user names (``mmit.chat --image``, the web demo), its kind read from the extension."""
    path = Path(path)
    ext = path.suffix.lower().lstrip(".")
    if ext not in MEDIA_KINDS:
        raise ValueError(f"{path}: unknown media type {ext!r} (known: {', '.join(sorted(MEDIA_KINDS))})")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return MediaRef(MEDIA_KINDS[ext], ext, str(path))


def media_names(record: dict, kind: str) -> list[str]:
    """The paths a record names for ``kind`` under the first present field (one path or a list)."""
    for key in MEDIA_FIELDS[kind]:
        value = record.get(key)
        if value is None or value == "" or value == []:
            continue
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise SampleError("wrong_type", f"{key!r} must be a path or a list of paths, not {json_type(value)}")
    return []


# The raster formats Pillow may open. Without a list it picks a decoder by the bytes, whatever the
# file's name, and some (EPS, PS) run Ghostscript on the file: an image someone hands you is data.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG's opener also gives cameras' MPO


@contextmanager
def open_image(data: bytes, where: str, max_pixels: int | None = None) -> Iterator[Any]:
    """The image, opened lazily (only its header is read), once its pixel count is within
    ``max_pixels`` (default: :func:`pixel_limit`); SampleError if it is not an image or is too large."""
    from PIL import Image

    limit = max_pixels or pixel_limit()
    Image.init()  # registers every plugin (once): open() looks each of IMAGE_FORMATS up by name
    try:
        with warnings.catch_warnings():  # PIL warns from 89 MP; the limit below is what decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as err:
        raise SampleError("too_many_pixels", f"{where}: image is too large to decode ({err})") from err
    except Exception as err:  # PIL raises many types for broken files
        why = "not an image file" if "cannot identify image file" in str(err) else str(err)  # not a BytesIO's address
        raise SampleError(
            "undecodable_media",
            f"{where}: image does not decode, or is in none of the formats mmit reads ({', '.join(IMAGE_FORMATS)}): {why}",
        ) from err
    with image:
        width, height = image.size
        if width * height > limit:
            raise SampleError(
                "too_many_pixels",
                f"{where}: image of {width} x {height} = {width * height / 1e6:.1f} MP is over max_pixels "
                f"({limit / 1e6:g} MP); refused before decoding",
            )
        if image.mode in WIDE_MODES:  # convert("RGB") clips them: a 16-bit grey PNG decodes all white
            bits = WIDE_MODES[image.mode]
            how = " (numpy.asarray(im) // 257 as uint8)" if bits == "16-bit" else ", scaled to 0-255"
            raise SampleError(
                "undecodable_media",
                f"{where}: a {bits} image (PIL mode {image.mode}); mmit reads 8 bits a channel: convert it first{how}",
            )
        yield image


def upright(image):
    """The image as it is meant to be seen: its EXIF orientation applied (the same image when it is
    upright or has no tag)."""
    from PIL import ImageOps

    try:
        orientation = image.getexif().get(_ORIENTATION, 1)
    except Exception:  # an unreadable EXIF block says nothing about orientation; the pixels stand as stored
        return image
    return image if orientation in (None, 1) else ImageOps.exif_transpose(image)


def check_image(data: bytes, where: str, max_pixels: int | None = None) -> None:
    """Raise SampleError unless the bytes are an image within the pixel limit that decodes. The size
    comes from the header, before decoding. All of the compressed data is decoded; a JPEG at 1/8
    scale (``draft``): libjpeg still decodes every block's coefficients, which is where a truncated
    or broken file fails, and skips most of the inverse DCT, upsampling and colour conversion, which
    cannot fail: about a third of a photo's decode time saved."""
    with open_image(data, where, max_pixels) as image:
        try:
            if image.format == "JPEG":
                image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
        except Exception as err:
            raise SampleError("undecodable_media", f"{where}: image does not decode ({err})") from err


def resize_image(data: bytes, max_side: int, where: str = "image", max_pixels: int | None = None) -> tuple[bytes, str]:
    """Shrink so the longer side is ``max_side``; re-encode as PNG (lossless, deterministic). A JPEG
    is decoded straight at the smallest scale (1/2, 1/4, 1/8) that is still at least that large,
    so its full-size pixels are never held."""
    from PIL import Image

    with open_image(data, where, max_pixels) as image:
        scale = min(1.0, max_side / max(image.size))
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        if image.format == "JPEG" and scale < 1.0:
            image.draft(image.mode, size)
        turned = upright(image)  # before re-encoding as PNG, which keeps no orientation tag
        if turned.size != image.size:  # a quarter turn: width and height trade places
            size = size[::-1]
        image = turned.convert("RGB")
        if image.size != size:
            image = image.resize(size, Image.Resampling.BICUBIC)
        out = io.BytesIO()
        image.save(out, format="PNG", optimize=False)
    return out.getvalue(), "png"


def decode_image(ref: MediaRef):
    """An RGB image for an encoder, upright, refused from its header above :func:`pixel_limit`."""
    return decode_image_bytes(ref.read(), ref.path or f"in-memory {ref.ext} image")


def decode_image_bytes(data: bytes, where: str, draft: tuple[int, int] | None = None):
    """An upright RGB image from encoded bytes, refused from its header above :func:`pixel_limit`;
    ``draft``: a size a JPEG may be decoded down to (still at least that large), for thumbnails."""
    with open_image(data, where) as image:
        if draft and image.format == "JPEG":
            image.draft("RGB", draft)
        try:
            return upright(image).convert("RGB")
        except Exception as err:  # a header that reads over data that does not (a truncated file)
            raise SampleError("undecodable_media", f"{where}: image does not decode ({err})") from err
