"""``python -m mmit.show --tokens``: the table of tokens per part, per set and task."""

import io
import json
import re

import pytest
from PIL import Image

from mmit.data.samples import Conversation, MediaRef, Message
from mmit.data.shard_writer import Storage, write_shard
from mmit.show import main, parse_args

HINT = "Answer the question using a single word or phrase."


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def build(tmp_path):
    """A one-set build: two VQA conversations about an image and a caption, with its manifest."""
    (tmp_path / "templates.yaml").write_text(
        'vqa_short:\n  - {id: s1, text: "Question: {question}"}\ncaption_brief:\n  - {id: c1, text: "Caption it."}\n'
    )
    image = MediaRef("image", "png", data=png())
    convs = [
        Conversation(
            f"vqa-{i}",
            [Message("user", f"<image>\nQuestion: What colour is square {i}?\n{HINT}"), Message("assistant", "red")],
            {"tasks": ["vqa_short"], "templates": ["s1"]},
            [image],
        )
        for i in range(2)
    ]
    convs.append(
        Conversation(
            "cap-0",
            [Message("user", "<image>\nCaption it."), Message("assistant", "A red square.")],
            {"tasks": ["caption_brief"], "templates": ["c1"]},
            [image],
        )
    )
    (tmp_path / "train").mkdir()
    stats = write_shard(tmp_path / "train" / "shard-000000.tar", convs, {}, Storage())
    manifest = {
        "recipe": "test",
        "seed": 0,
        "mmit_version": "test",
        "skipped_annotations": {},
        "config": {"templates": str(tmp_path / "templates.yaml"), "shaping": {"short_answer_hint": HINT}},
        "sets": {"train": {"samples": stats["samples"], "shards": ["shard-000000.tar"], "by_task": stats["by_task"]}},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_tokens_prints_the_table_of_parts(build, capsys):
    main([str(build), "--samples", "0", "--tokens", "llm=tiny", "vision_encoder=tiny", "projector=mlp"])
    out = capsys.readouterr().out
    image_tokens = int(re.search(r"image (\d+) tokens each", out).group(1))
    assert "data.system_prompt=model_default" in out
    assert "train: 3 conversations, 0 longer than data.max_length=" in out
    header = next(line for line in out.splitlines() if line.startswith("task"))
    assert header.split() == [
        "task",
        "n",
        "system",
        "template",
        "hint",
        "media",
        "question",
        "format",
        "answer",
        "total",
    ]
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if cells and cells[0] in ("caption_brief", "vqa_short", "all"):
            rows[cells[0]] = dict(zip(header.split()[2:], map(float, cells[3:])))
            assert cells[2] == "mean"
    assert rows["vqa_short"]["media"] == rows["all"]["media"] == image_tokens
    assert rows["vqa_short"]["hint"] > 0 and rows["caption_brief"]["hint"] == 0
    assert rows["vqa_short"]["template"] > 0 and rows["caption_brief"]["question"] == 0
    assert rows["all"]["system"] == 0  # the tiny template has no default system prompt
    share = next(line for line in out.splitlines() if line.split()[:1] == ["share"])
    assert share.split()[-1] == "100.0%"


def test_tokens_reports_the_system_prompt_setting(build, capsys, tiny):
    main([str(build), "--samples", "0", "--tokens", "--llm", "tiny", "data.system_prompt=none"])
    out = capsys.readouterr().out
    assert "data.system_prompt=none" in out and "image: no encoder configured, 1 token each" in out
    mean = next(line for line in out.splitlines() if line.startswith("all")).split()
    empty_turn = tiny.tokenizer("<|im_start|>system\n<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert float(mean[3]) == len(empty_turn)
    assert float(mean[6]) == 1  # the image placeholder alone


def test_overrides_need_tokens(build):
    with pytest.raises(SystemExit):
        parse_args([str(build), "llm=tiny"])
    assert parse_args([str(build), "--tokens", "llm=tiny"]).overrides == ["llm=tiny"]


def test_a_damaged_build_manifest_is_named(tmp_path, capsys):
    from mmit.show import main

    manifest = tmp_path / "manifest.json"
    for text in ('{"recipe": "r"}', "[1]", "{"):
        manifest.write_text(text)
        with pytest.raises(SystemExit, match=f"mmit.show: {manifest}: not a build manifest"):
            main([str(tmp_path)])


def test_a_folder_without_shard_sets_is_named(build, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (build / "train" / "shard-000000.tar").unlink()  # a build folder whose set folder holds no shards
    sheet = tmp_path / "s.png"
    for folder, extra in ((empty, []), (empty, ["--sheet", str(sheet)]), (build, ["--sheet", str(sheet)])):
        with pytest.raises(SystemExit) as stopped:
            main([str(folder), *extra])
        assert (
            str(stopped.value)
            == f"mmit.show: {folder} holds no shard sets (shard-*.tar files, in it or in its folders)"
        )
    assert not sheet.exists()


def test_a_sheet_without_images_is_not_written(tmp_path):
    (tmp_path / "text").mkdir()
    write_shard(
        tmp_path / "text" / "shard-000000.tar",
        [Conversation("t-0", [Message("user", "Hi?"), Message("assistant", "Hello.")], {}, [])],
        {},
        Storage(),
    )
    sheet = tmp_path / "s.png"
    message = f"mmit.show: no contact sheet written to {sheet}: {tmp_path / 'text'} holds no images to draw"
    with pytest.raises(SystemExit) as stopped:
        main([str(tmp_path / "text"), "--sheet", str(sheet)])
    assert str(stopped.value) == message and not sheet.exists()


@pytest.mark.parametrize(
    ("option", "value", "wanted"),
    [("--samples", "-1", "0"), ("--token-samples", "-1", "0"), ("--sheet-count", "0", "1")],
)
def test_counts_below_their_least_are_refused_naming_the_option(build, capsys, option, value, wanted):
    with pytest.raises(SystemExit):
        parse_args([str(build), option, value])
    assert f"error: argument {option}: must be {wanted} or more, not {value}\n" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("config", "why"),
    [
        ({"shaping": 5}, "config.shaping is 5, not a mapping"),
        ({"templates": [5]}, "config.templates is [5], not a file name or a list of them"),
        ({"shaping": {"short_answer_hint": 5}}, "config.shaping's answer-format hints [5] are not all text"),
    ],
)
def test_tokens_name_a_manifest_config_not_as_built(build, capsys, config, why):
    manifest = build / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "config": config}))
    for folder in (build / "train", build):  # a set's folder reads its build's manifest
        with pytest.raises(SystemExit) as stopped:
            main([str(folder), "--samples", "0", "--tokens", "--llm", "tiny"])
        assert str(stopped.value) == f"mmit.show: {manifest}: not a build manifest as mmit.build writes it ({why})"
    assert capsys.readouterr().out == ""  # checked before anything is printed


def test_tokens_name_a_set_folders_damaged_build_manifest(build, capsys):
    manifest = build / "manifest.json"
    manifest.write_text('{"sets": \n')
    with pytest.raises(SystemExit) as stopped:
        main([str(build / "train"), "--samples", "0", "--tokens", "--llm", "tiny"])
    assert str(stopped.value) == (
        f"mmit.show: {manifest}: not a build manifest as mmit.build writes it"
        " (JSONDecodeError: Expecting value: line 2 column 1 (char 10))"
    )
    assert capsys.readouterr().out == ""


def test_set_picks_the_sets_printed_and_drawn(build, tmp_path, capsys):
    import shutil

    shutil.copytree(build / "train", build / "val_seen")
    sheet = tmp_path / "s.png"
    main([str(build), "--set", "val_seen", "--samples", "1", "--sheet", str(sheet)])
    out = capsys.readouterr().out
    assert "=== val_seen" in out and "=== train" not in out
    assert f"from val_seen, each with a question and its answer: {sheet}" in out and sheet.is_file()
    main([str(build), "--set", "train", "val_seen", "--samples", "0"])
    assert capsys.readouterr().out.count("=== ") == 2
    with pytest.raises(SystemExit) as stopped:
        main([str(build), "--set", "trian", "--sheet", str(tmp_path / "t.png")])
    assert str(stopped.value) == (
        f"mmit.show: --set trian: {build} has no such set (did you mean 'train'?); its sets: train, val_seen"
    )
    assert not (tmp_path / "t.png").exists()
