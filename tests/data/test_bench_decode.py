"""tools/bench_decode.py (bench.decode): a tiny run times every side on the same images (no speed assertions)."""

import json

from bench.decode import main, photos
from PIL import Image


def test_every_side_reads_the_epoch_and_the_table_names_it(tmp_path, capsys):
    out = tmp_path / "decode.json"
    results = main(
        ["--images", "8", "--batch", "4", "--size", "64", "--workers", "1", "2", "--reps", "1"] + ["--json", str(out)]
    )
    rates = results["step_ms=0"]
    assert set(rates) == {"thread", "workers=1", "workers=2"} and all(r[0] > 0 for r in rates.values())
    assert json.loads(out.read_text())["startup_s"].keys() == {"1", "2"}
    table = capsys.readouterr().out
    assert "| 0 | workers=2 |" in table and "| 0 | thread |" in table


def test_photos_are_640x480_jpegs_with_a_photos_detail():
    import io

    images = photos(2)
    with Image.open(io.BytesIO(images[0])) as image:
        assert image.format == "JPEG" and image.size == (640, 480)
    assert min(len(b) for b in images) > 40_000 and images[0] != images[1]
