"""Template files are checked whole when they are read: a user's own file with a mistake stops
with the file, line and template named, and data needing a task no file words names the file that does."""

from __future__ import annotations

import pytest

from mmit.data.annotations import QA, Annotation
from mmit.data.demo.text import TASK_FIELDS
from mmit.data.instructions import TEMPLATE_FIELDS, ShapingConfig, shape_annotation
from mmit.data.recipes import load_template_files
from mmit.data.samples import MediaRef
from mmit.data.templates import TemplateError, load_templates
from mmit.paths import RECIPES_DIR

GOOD_TASK = 'vqa_short:\n  - {id: s1, text: "{question}"}\n  - {id: s2, text: "Q: {question}", held_out: true}\n'


@pytest.mark.parametrize("path", sorted((RECIPES_DIR / "templates").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_file_passes_its_readers_checks(path):
    fields = TASK_FIELDS if path.name == "text_skills.yaml" else TEMPLATE_FIELDS
    templates = load_templates(path, fields)
    assert templates and all(
        any(t.held_out for t in ts) and any(not t.held_out for t in ts) for ts in templates.values()
    )


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("vqa_short:\n  - {id: s1, txt: '{question}'}\n", 2, "unknown key 'txt' (did you mean 'text'?)"),
        ("vqa_short:\n  - {id: s1}\n", 2, "text must be a non-empty text (quote it), not missing"),
        ("vqa_short:\n  - {id: 7, text: '{question}'}\n", 2, "id must be a non-empty text (quote it), not 7"),
        ("vqa_short:\n  - {id: s1, text: '   '}\n", 2, "text must be a non-empty text"),
        ("vqa_short:\n  - {id: s1, text: '{question}', held_out: 'false'}\n", 2, "held_out must be true or false"),
        ("vqa_short:\n  - {id: s1, text: '{question}', letter_only: 1}\n", 2, "letter_only must be true or false"),
        (
            "vqa_short:\n  - {id: s1, text: '{question} Give a letter.', letter_only: true}\n",
            2,
            "('s1'): letter_only is for a wording that lists {options}",
        ),
        ("vqa_short:\n  - {id: s1, text: '{question}', id: s2}\n", 2, "'id' appears twice (also line 2)"),
        ("vqa_short:\n  - just a wording\n", 2, "a template is a mapping"),
        ("vqa_short: {id: s1, text: '{question}'}\n", 1, "task 'vqa_short' needs a list of templates"),
        ("vqa_short: []\n", 1, "task 'vqa_short' needs a list of templates"),
        (GOOD_TASK + "vqa_short:\n  - {id: s3, text: '{question}'}\n", 4, "'vqa_short' appears twice (also line 1)"),
        (GOOD_TASK.replace("s2", "s1"), 3, "id 's1' is used twice (also line 2)"),
        ("vqa_shrot:\n  - {id: s1, text: '{question}'}\n", 1, "unknown task 'vqa_shrot' (did you mean 'vqa_short'?)"),
        (
            "vqa_short:\n  - {id: s1, text: 'What is shown?'}\n",
            2,
            "shows no fields; a vqa_short template shows exactly {question}",
        ),
        (
            "vqa_multiple_choice:\n  - {id: m1, text: '{question}'}\n",
            2,
            "a vqa_multiple_choice template shows exactly {options}, {question}",
        ),
        (
            "caption_brief:\n  - {id: c1, text: 'Describe {question}.'}\n",
            2,
            "a caption_brief template shows exactly no fields",
        ),
        (
            "vqa_short:\n  - {id: s1, text: '{question.__class__}'}\n",
            2,
            "field {question.__class__} is not a plain {name}",
        ),
        ("vqa_short:\n  - {id: s1, text: '{question!r}'}\n", 2, "field {question!r} is not a plain {name}"),
        ("vqa_short:\n  - {id: s1, text: 'Pick {}'}\n", 2, "field {} is not a plain {name}"),
        ("vqa_short:\n  - {id: s1, text: '{question'}\n", 2, "expected '}' before end of string"),
        (
            "vqa_short:\n  - {id: s1, text: '{question}', held_out: true}\n",
            1,
            "task 'vqa_short' has no training template (held_out: false)",
        ),
        (
            "vqa_short:\n  - {id: s1, text: '{question}'}\n",
            1,
            "task 'vqa_short' has no held-out template (held_out: true)",
        ),
    ],
)
def test_a_mistake_in_a_template_file_is_named_with_its_line(tmp_path, text, line, message):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(TemplateError) as caught:
        load_templates(path, TEMPLATE_FIELDS, held_out=TEMPLATE_FIELDS)
    assert str(caught.value).startswith(f"{path}, line {line}:")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"vqa_short: [\n", "not valid YAML"),
        (b"\xff\xfe vqa_short", "not UTF-8 text"),
        (b"- a list\n", "expected a mapping of task -> list of templates"),
        (b"", "expected a mapping of task -> list of templates"),
        (b"1: [{id: a, text: b}]\n", "key 1 is not a name"),
    ],
)
def test_a_file_that_is_not_a_template_file_is_named(tmp_path, content, message):
    path = tmp_path / "mine.yaml"
    path.write_bytes(content)
    with pytest.raises(TemplateError, match=message) as caught:
        load_templates(path)
    assert str(caught.value).startswith(str(path))
    with pytest.raises(TemplateError, match="no such template file"):
        load_templates(tmp_path / "absent.yaml")


def test_a_literal_brace_and_a_task_of_its_own_load_without_a_fields_table(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "my_task:\n  - {id: a, text: 'Say {{x}} for {word}'}\n  - {id: b, text: '{word}', held_out: true}\n"
    )
    (train, held_out) = load_templates(path)["my_task"]
    assert train.render({"word": "hi"}) == "Say {x} for hi" and held_out.held_out and not train.held_out
    with pytest.raises(TemplateError, match="unknown task 'my_task'"):
        load_template_files(str(path))  # a build words only its own tasks
    path.write_text("vqa_short:\n  - {id: a, text: '{question}'}\n")
    assert [t.id for t in load_templates(path)["vqa_short"]] == ["a"]  # held-out wordings: a build's need
    # A task held out whole, or a build keeping no images for evaluation, words no set with them.
    assert [t.id for t in load_template_files(str(path))["vqa_short"]] == ["a"]
    with pytest.raises(TemplateError, match="no held-out template"):
        load_template_files(str(path), held_out=["vqa_short"])


def test_data_needing_a_task_no_file_words_names_the_shipped_file_that_does():
    ann = Annotation(
        "c1", "test", "vqa", [MediaRef("audio", "wav", path="c1.wav")], "c1.wav", qas=[QA("Pitch?", ["high"], "high")]
    )
    templates = load_template_files(str(RECIPES_DIR / "templates" / "vision.yaml"))
    with pytest.raises(TemplateError) as caught:
        shape_annotation(ann, templates, ShapingConfig(), {"other": ["high", "low"]}, "train")
    message = str(caught.value)
    assert "templates for task 'audio_qa'" in message and "vqa_yesno" in message
    assert "${recipes_dir:}/templates/audio.yaml" in message


def test_token_parts_leave_out_a_named_template_file_that_does_not_load(tmp_path, caplog):
    from mmit.data.token_parts import recipe_wording

    broken, good = tmp_path / "broken.yaml", tmp_path / "good.yaml"
    broken.write_text("vqa_short: a wording\n")
    good.write_text(GOOD_TASK)
    wording = recipe_wording({"config": {"templates": [str(broken), str(good)]}})
    assert wording.templates == {"s1": "{question}", "s2": "Q: {question}"}
    assert f"{broken}, line 1: task 'vqa_short' needs a list of templates" in caplog.text


@pytest.mark.slow
def test_a_build_stopped_by_missing_templates_leaves_its_folder_free_for_the_fixed_recipe(tmp_path):
    import json
    import math
    import struct
    import wave

    from mmit.data.build import build
    from mmit.data.recipes import compose_recipe

    with open(tmp_path / "qa.jsonl", "w") as f:
        for i in range(4):
            with wave.open(str(tmp_path / f"c{i}.wav"), "wb") as clip:
                clip.setnchannels(1), clip.setsampwidth(2), clip.setframerate(16000)
                tone = (int(8000 * math.sin(2 * math.pi * (300 + 50 * i) * t / 16000)) for t in range(4000))
                clip.writeframes(b"".join(struct.pack("<h", v) for v in tone))
            f.write(json.dumps({"audio": f"c{i}.wav", "question": "Which pitch?", "answer": f"p{i}"}) + "\n")
    recipe = tmp_path / "mine.yaml"
    source = f"sources:\n  - {{_target_: mmit.data.annotations.read_audio_qa_jsonl, path: {tmp_path}/qa.jsonl}}\n"
    recipe.write_text(source)
    settings = [f"out_dir={tmp_path}/out", "eval_fraction=0.5", "num_workers=1"]
    with pytest.raises(TemplateError, match="templates for task 'audio_qa'"):
        build(compose_recipe(str(recipe), settings))
    recipe.write_text(
        source + 'templates: ["${recipes_dir:}/templates/vision.yaml", "${recipes_dir:}/templates/audio.yaml"]\n'
    )
    manifest = build(compose_recipe(str(recipe), settings))
    assert manifest["sets"]["train"]["samples"] + manifest["sets"]["val_seen"]["samples"] == 4
