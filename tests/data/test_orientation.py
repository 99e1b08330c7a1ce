"""Media are decoded as they are meant to be seen: a photo's EXIF orientation tag is applied (phones
store portrait photos sideways with one), in training's decoding and in a build's resizing, which
re-encodes without the tag."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mmit.data.media import decode_image, resize_image
from mmit.data.samples import MediaRef

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _sideways_jpeg(orientation: int) -> bytes:
    """Stored 80 x 40, left half red and right half blue, with an EXIF orientation tag."""
    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, :40], pixels[:, 40:] = RED, BLUE
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=95, exif=exif)
    return out.getvalue()


def _near(pixel, colour) -> bool:
    return max(abs(int(a) - b) for a, b in zip(pixel, colour, strict=True)) < 40


@pytest.mark.parametrize(
    "orientation, top, bottom",
    [
        (6, RED, BLUE),  # "rotate 90 degrees clockwise to display": the stored left side comes on top
        (8, BLUE, RED),  # "rotate 90 degrees counter-clockwise": the stored right side comes on top
    ],
)
def test_a_tagged_photo_is_decoded_upright(orientation, top, bottom):
    image = decode_image(MediaRef("image", "jpg", data=_sideways_jpeg(orientation)))
    assert image.size == (40, 80) and image.mode == "RGB"
    assert _near(image.getpixel((20, 5)), top) and _near(image.getpixel((20, 75)), bottom)


def test_an_untagged_or_upright_photo_is_left_as_stored():
    image = decode_image(MediaRef("image", "jpg", data=_sideways_jpeg(1)))
    assert image.size == (80, 40) and _near(image.getpixel((5, 20)), RED)


def test_resizing_in_a_build_keeps_the_photo_upright():
    """resize_max re-encodes as PNG, which has no orientation tag: the turn is applied first."""
    data, ext = resize_image(_sideways_jpeg(6), max_side=20)
    image = Image.open(io.BytesIO(data))
    assert ext == "png" and image.size == (10, 20)
    assert _near(image.getpixel((5, 2)), RED) and _near(image.getpixel((5, 17)), BLUE)
    assert decode_image(MediaRef("image", "png", data=data)).size == (10, 20)  # not turned twice


@pytest.mark.parametrize("degrees, top, bottom", [(90, BLUE, RED), (-90, RED, BLUE)])
def test_a_clip_with_a_display_rotation_gives_upright_frames(tmp_path, degrees, top, bottom):
    """Stored 64 x 32, left half red and right half blue, with a display rotation of ``degrees``
    counter-clockwise (a phone's portrait video): a quarter turn left puts the stored right side on
    top, a quarter turn right the left side."""
    av = pytest.importorskip("av")
    if not hasattr(av.video.stream.VideoStream, "set_display_rotation"):
        pytest.skip("this PyAV cannot write a display rotation")
    from mmit.data.video import VideoSampling, check_video, decode_video

    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :32], pixels[:, 32:] = RED, BLUE
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(degrees)
        for index in range(4):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    clip = decode_video(out.getvalue(), "phone.mp4", VideoSampling(frames=2))
    info = check_video(out.getvalue(), "phone.mp4")
    assert (info.width, info.height) == (32, 64)  # as shown
    for image in clip.frames:
        assert image.size == (32, 64)
        assert _near(image.getpixel((16, 8)), top) and _near(image.getpixel((16, 56)), bottom)
