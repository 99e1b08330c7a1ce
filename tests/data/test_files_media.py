"""data=files reads a record's media (``image`` / ``images`` / ``audio`` / ``audios``, relative to
the file's folder) and never drops them silently: a model without that encoder refuses them
(on_error=raise, naming file and line) or skips and counts them."""

from __future__ import annotations

import io
import json
from collections import Counter

import pytest
from PIL import Image

from mmit.data.sources import DataFileError, read_conversations
from mmit.factory import build_data, build_model


def _png(color="red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def files(tmp_path):
    (tmp_path / "red.png").write_bytes(_png())
    image = {"messages": [{"role": "user", "content": "<image>\nColour?"}, {"role": "assistant", "content": "red"}]}
    text = {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]}
    records = [{**text, "id": f"t{i}"} for i in range(6)] + [{**image, "id": "img", "image": "red.png"}]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_images_in_data_files_are_read(files):
    convs = {c.id: c for c in read_conversations([files])}
    assert convs["img"].media[0].kind == "image" and convs["img"].media[0].read() == _png()
    assert convs["t0"].media == []


def test_odd_paths_and_json_in_data_files_are_named_or_counted(files):
    """A NUL in an image path, an integer of 5,000 digits, nesting 100,000 deep: each a named error
    under on_error=raise, one skip under on_error=skip, never a bare ValueError or RecursionError."""
    good = files.read_text()
    messages = [{"role": "user", "content": "<image>\nColour?"}, {"role": "assistant", "content": "red"}]
    odd = [
        ("wrong_type", json.dumps({"id": "nul", "image": "red\u0000.png", "messages": messages})),
        ("bad_json", '{"id": ' + "9" * 5000 + "}"),
        ("bad_json", "[" * 100_000),
    ]
    for reason, line in odd:
        files.write_text(good + line + "\n")
        with pytest.raises(DataFileError, match=rf"{files}:8"):
            read_conversations([files], on_error="raise")
        skipped = Counter()
        assert len(read_conversations([files], on_error="skip", skipped=skipped)) == 7
        assert skipped == Counter({reason: 1})


def test_a_text_only_model_refuses_or_counts_image_records(files, compose):
    cfg = compose(["+recipe=text_tiny", "data=files", f"data.source.train=[{files}]"])
    built = build_model(cfg)
    with pytest.raises(DataFileError, match=f"{files}:7: .*image.*no image encoder"):
        build_data(cfg, built.tokenizer, list(built.model.slots.values()))
    cfg = compose(["+recipe=text_tiny", "data=files", f"data.source.train=[{files}]", "data.on_error=skip"])
    data = build_data(cfg, built.tokenizer, list(built.model.slots.values()))
    assert len(data.train) == 6 and data.skipped()["train"] == {"no_encoder": 1}


def test_a_vision_model_trains_on_image_records_from_data_files(files, compose):
    cfg = compose(["llm=tiny", "vision_encoder=tiny", "projector=mlp", "data=files", f"data.source.train=[{files}]"])
    built = build_model(cfg)
    data = build_data(cfg, built.tokenizer, list(built.model.slots.values()))
    with_image = [s for s in data.train.samples if s.media]
    assert len(data.train) == 7 and len(with_image) == 1 and with_image[0].media[0].read() == _png()


def test_text_tiny_composes_with_data_files(files, compose):
    from hydra.utils import instantiate

    cfg = compose(["+recipe=text_tiny", "data=files", f"data.source.train=[{files}]"])
    assert instantiate(cfg.data.source).train == [str(files)]
    assert cfg.trainer.max_steps == 30  # the rest of the recipe still applies
    skills = compose(["+recipe=text_tiny"])
    assert skills.data.source.n_train == 400  # and without data=files it is still the small text demo


def test_metrics_of_a_run_killed_before_its_first_checkpoint_are_not_repeated(tmp_path):
    from mmit.training.tracking import MetricsLog, read_metrics

    killed = MetricsLog(tmp_path, tensorboard=False, resume_step=0)
    killed.log({"step": 0, "eval/x/loss": 1.0})
    killed.log({"step": 3, "train/loss": 0.5})
    killed.close()
    again = MetricsLog(tmp_path, tensorboard=False, resume_step=0)  # no checkpoint: training starts over
    again.log({"step": 0, "eval/x/loss": 1.0})
    again.close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0]
    resumed = MetricsLog(tmp_path, tensorboard=False, resume_step=2)
    resumed.close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0]


def test_skips_by_reason_reach_the_run_summary(tmp_path, compose):
    bad = tmp_path / "train.jsonl"
    good = {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]}
    lines = [json.dumps({**good, "id": f"g{i}"}) for i in range(4)] + ['{"meta": 5, ' + json.dumps(good)[1:], "{oops"]
    bad.write_text("\n".join(lines) + "\n")
    cfg = compose(["+recipe=text_tiny", "data=files", f"data.source.train=[{bad}]", "data.on_error=skip"])
    built = build_model(cfg)
    data = build_data(cfg, built.tokenizer, list(built.model.slots.values()))
    assert len(data.train) == 4 and data.skipped()["train"] == Counter({"wrong_type": 1, "bad_json": 1})
