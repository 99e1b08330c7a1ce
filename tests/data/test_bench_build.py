"""tools/bench_build.py (bench.build): a tiny run of each image case measures both sides (no speed assertions)."""

from bench.build import as_photos, main
from PIL import Image


def test_each_case_decodes_and_builds_the_same_images(tmp_path, capsys):
    rows = main(["--images", "12", "--repeat", "1", "--workers", "1", "--cases", "demo", "photo"])
    assert [r["case"] for r in rows] == ["demo", "photo"]
    for row in rows:
        assert row["images"] == 12 and row["samples"] > row["records"] >= 12  # several conversations per record
        assert row["written_mb"] * 1e3 > row["images"] * row["mean_image_kb"]  # every image stored
        assert min(row["decode_s"], row["check_s"], row["build_s"], row["paired"], row["paired_check"]) > 0
    # Photos carry a photo's detail: far larger files than the flat drawn scenes.
    assert rows[1]["mean_image_kb"] > 20 * rows[0]["mean_image_kb"]
    table = capsys.readouterr().out
    assert (
        "| 640x480 JPEG, photo-like | 1 | " in table
        and "overhead beyond decoding" in table
        and "build's own check" in table
    )


def test_photos_are_640x480_jpegs_that_the_annotations_name(tmp_path):
    from mmit.data.demo.scenes import write_demo_scenes

    scenes = write_demo_scenes(tmp_path / "scenes", n_images=3, image_size=64)
    images = as_photos(scenes, tmp_path / "photos")
    jpegs = sorted(images.glob("*.jpg"))
    assert len(jpegs) == 3
    with Image.open(jpegs[0]) as image:
        assert image.format == "JPEG" and image.size == (640, 480)
    captions = (tmp_path / "photos" / "annotations" / scenes.captions_file.name).read_text()
    assert ".png" not in captions and jpegs[0].name in captions
