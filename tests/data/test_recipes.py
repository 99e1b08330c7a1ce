"""Build recipes over data_recipes/base.yaml: a three-line recipe builds, and every key, value and
reader argument is checked before anything is read or written (typos are refused, never ignored)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf
from PIL import Image

import mmit
from mmit.build import BuildError, build, compose_recipe
from mmit.data.audio import AudioPolicy
from mmit.data.build import recipe_data_files
from mmit.data.instructions import ShapingConfig
from mmit.data.manifest import build_fingerprint
from mmit.paths import RECIPES_DIR

SHIPPED = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml") if p.stem != "base")
REQUIRED = {
    "alpaca": ["alpaca_json=/data/a.json", "out_dir=/tmp/x"],
    "caption_shards": ["shards=[/data/a.tar]", "out_dir=/tmp/x"],
    "coco_vqav2": ["coco_root=/data/coco", "out_dir=/tmp/x"],
    "llava_instruct": ["llava_json=/data/l.json", "images_dir=/data", "out_dir=/tmp/x"],
}


@pytest.fixture
def llava(tmp_path):
    (tmp_path / "images").mkdir()
    records = []
    for i in range(12):
        Image.new("RGB", (16, 16), ["red", "blue"][i % 2]).save(tmp_path / "images" / f"{i}.png")
        turns = [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": ["red", "blue"][i % 2]}]
        records.append({"id": str(i), "image": f"{i}.png", "conversations": turns})
    (tmp_path / "train.json").write_text(json.dumps(records))
    return tmp_path


def _recipe(tmp_path, text: str):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    return str(path)


def test_a_three_line_recipe_builds_with_the_base_defaults(llava, tmp_path):
    path = _recipe(
        tmp_path,
        f"sources:\n  - {{_target_: mmit.data.annotations.read_llava, json_file: {llava}/train.json, "
        f"images_dir: {llava}/images}}\n",
    )
    assert len(open(path).read().splitlines()) <= 3
    cfg = compose_recipe(path, [f"out_dir={tmp_path / 'out'}", "num_workers=1"])
    assert cfg.name == "mine" and cfg.shard_size == 1000 and cfg.on_error == "raise"
    manifest = build(cfg)
    assert sum(s["samples"] for s in manifest["sets"].values()) == 12
    assert manifest["config"]["eval_fraction"] == 0.05  # the manifest records the defaults it used
    default_out = compose_recipe(path).out_dir
    assert default_out.endswith("datasets/mine")  # the mmit cache, under the recipe's name


def test_a_held_out_source_about_a_training_image_is_named_at_its_record_or_counted(llava, tmp_path):
    records = json.loads((llava / "train.json").read_text())
    (llava / "heldout.json").write_text(json.dumps([{**r, "id": f"h{r['id']}"} for r in records[:3]]))
    reader = "{{_target_: mmit.data.annotations.read_llava, json_file: {}, images_dir: {}/images}}"
    path = _recipe(
        tmp_path,
        f"sources:\n  - {reader.format(llava / 'train.json', llava)}\n"
        f"heldout_sources:\n  - {reader.format(llava / 'heldout.json', llava)}\n",
    )
    with pytest.raises(BuildError, match=rf"^{llava}/heldout.json\[0\]: held-out source names '0.png', which the"):
        build(compose_recipe(path, [f"out_dir={tmp_path / 'raise'}", "num_workers=1"]))
    manifest = build(compose_recipe(path, [f"out_dir={tmp_path / 'skip'}", "num_workers=1", "on_error=skip"]))
    assert manifest["skipped_annotations"] == {"heldout_overlap": 3} and "val_heldout_sources" not in manifest["sets"]


def test_a_split_left_empty_by_eval_fraction_is_said(llava, tmp_path, caplog):
    reader = (
        f"{{_target_: mmit.data.annotations.read_llava, json_file: {llava}/train.json, images_dir: {llava}/images}}"
    )
    path = _recipe(tmp_path, f"sources:\n  - {reader}\n")
    for fraction, empty, other in (("0.999", "training", "val"), ("0.001", "evaluation", "train")):
        caplog.clear()
        manifest = build(
            compose_recipe(path, [f"out_dir={tmp_path / fraction}", "num_workers=1", f"eval_fraction={fraction}"])
        )
        assert sum(s["samples"] for s in manifest["sets"].values()) == 12  # every sample is in the other split
        said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert said == [
            f"recipe 'mine': eval_fraction {fraction} put all 12 media files (a text-only record counts as one) "
            f"into {other}, so no {empty} set is written; {'lower' if empty == 'training' else 'raise'} "
            "eval_fraction or give it more files"
        ]
    caplog.clear()
    build(compose_recipe(path, [f"out_dir={tmp_path / 'none'}", "num_workers=1", "eval_fraction=0"]))
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # no evaluation set asked for


def test_the_base_defaults_are_the_dataclasses_defaults():
    base = yaml.safe_load((RECIPES_DIR / "base.yaml").read_text())
    shaping = {f.name: getattr(ShapingConfig(), f.name) for f in dataclasses.fields(ShapingConfig) if f.name != "seed"}
    assert base["shaping"] == shaping
    assert base["audio"] == dataclasses.asdict(AudioPolicy())


@pytest.mark.parametrize("recipe", SHIPPED)
def test_every_shipped_recipe_fits_the_schema(recipe):
    cfg = compose_recipe(recipe, REQUIRED.get(recipe, []))
    assert cfg.name == recipe


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("shard_sise=100", r"override 'shard_sise=100' .*unknown key 'shard_sise' \(did you mean 'shard_size'\?\)"),
        ("prepare.n_image=5", r"override 'prepare.n_image=5'.*unknown key 'prepare.n_image' \(did you mean 'n_images'"),
        ("shaping.num_choice=3", r"unknown key 'shaping.num_choice' \(did you mean 'num_choices'"),
        ("num_workers=abc", r"override 'num_workers=abc': num_workers must be a whole number >= 1, not 'abc'"),
        ("eval_fraction=2", r"eval_fraction must be a number in \[0, 1\), not 2"),
        ("shaping.num_choices=many", r"shaping.num_choices: Value 'many' of type 'str' could not be converted"),
        ("shaping.num_choices=10", r"override 'shaping.num_choices=10'.*num_choices must be between 2 and 8, not 10"),
        ("shaping.num_choices=1", r"num_choices must be between 2 and 8, not 1"),
        ("audio.long_clips=cut", r"override 'audio.long_clips=cut'.*long_clips must be one of"),
        ("on_error=ignore", r"on_error must be raise or skip, not 'ignore'"),
        ("templates=/no/such.yaml", r"templates names /no/such.yaml, which does not exist"),
        ("sources=[]", r"sources must be a list of annotation readers"),
        ("name=../../elsewhere", r"name must be a plain name \(no /, not hidden\), not '../../elsewhere'"),
        ("name=a/b", r"override 'name=a/b': name must be a plain name"),
    ],
)
def test_wrong_overrides_are_refused_naming_the_key(override, message):
    with pytest.raises(BuildError, match=message):
        compose_recipe("demo_vqa", [override])


def test_unknown_keys_list_the_valid_ones():
    with pytest.raises(BuildError, match="Valid keys: name, seed, out_dir, templates, eval_fraction, shard_size"):
        compose_recipe("demo_vqa", ["shard_sise=100"])


def test_wrong_keys_in_a_recipe_file_name_its_line(llava, tmp_path):
    source = f"sources:\n  - _target_: mmit.data.annotations.read_llava\n    json_file: {llava}/train.json\n"
    typo = _recipe(tmp_path, source + "shard_sise: 100\n")
    with pytest.raises(BuildError, match=r"mine.yaml, line 4: unknown key 'shard_sise' \(did you mean 'shard_size'"):
        compose_recipe(typo)
    reader = _recipe(tmp_path, source + "    image_dir: /data\n")
    with pytest.raises(
        BuildError, match=r"line 4: mmit.data.annotations.read_llava: unknown key 'sources\[0\].image_dir'"
    ):
        compose_recipe(reader)
    target = _recipe(tmp_path, source.replace("read_llava", "read_lava"))
    with pytest.raises(
        BuildError,
        match=r"line 2: sources\[0\]._target_ .mmit.data.annotations.read_lava. not found: .*did you mean mmit.data.annotations.read_llava",
    ):
        compose_recipe(target)
    twice = _recipe(tmp_path, source + "shard_size: 100\nseed: 1\nshard_size: 10\n")
    with pytest.raises(BuildError, match=r"mine.yaml, line 6: shard_size is set twice \(also line 4\)"):
        compose_recipe(twice)  # YAML would keep the second silently
    # A key of the recipe's own is a parameter where the recipe uses it.
    param = _recipe(tmp_path, source.replace(f"{llava}/train.json", "${my_json}") + f"my_json: {llava}/train.json\n")
    assert compose_recipe(param).sources[0].json_file == f"{llava}/train.json"


@pytest.mark.parametrize(
    ("arguments", "line", "message"),
    [
        ("questions_file: {d}/q.json, annotations_file: {d}/a.json", 2, "sources[0] (read_vqav2) needs images_dir"),
        (
            "questions_file: 5, annotations_file: a.json, images_dir: .",
            2,
            "sources[0].questions_file (read_vqav2) must be a text, not 5",
        ),
        (
            "questions_file: [q.json], annotations_file: a.json, images_dir: .",
            2,
            "questions_file (read_vqav2) must be a text, not ['q.json']",
        ),
        (
            "questions_file: q.json, annotations_file: a.json, images_dir: ., image_pattern: 5",
            2,
            "image_pattern (read_vqav2) must be a text, not 5",
        ),
        (
            "questions_file: q.json, annotations_file: a.json, images_dir: ., allow_outside_root: 'false'",
            2,
            "allow_outside_root (read_vqav2) must be true or false, not 'false'",
        ),
    ],
)
def test_a_reader_argument_missing_or_of_the_wrong_type_is_named_with_its_line(tmp_path, arguments, line, message):
    # A number where a path goes was a TypeError in pathlib; 0 opened stdin; 'false' turned a check off.
    recipe = _recipe(
        tmp_path, f"sources:\n  - {{_target_: mmit.data.annotations.read_vqav2, {arguments.format(d=tmp_path)}}}\n"
    )
    with pytest.raises(BuildError) as caught:
        compose_recipe(recipe)
    assert f"mine.yaml, line {line}: " in str(caught.value) and message in str(caught.value)


def test_a_list_given_as_a_mapping_and_an_unset_parameter_are_named(llava, tmp_path):
    reader = f"{{_target_: mmit.data.annotations.read_llava, json_file: {llava}/train.json}}"
    mapping = _recipe(tmp_path, f"sources:\n  - {reader}\nheldout_sources: {reader}\n")
    with pytest.raises(BuildError, match=r"mine.yaml, line 3: heldout_sources must be a list$"):
        compose_recipe(mapping)  # was "the overrides do not fit (Cannot merge DictConfig with ListConfig)"
    with pytest.raises(BuildError, match=r"override 'sources\[0\].json_file=x': one item of a list cannot be set"):
        compose_recipe(_recipe(tmp_path, f"sources:\n  - {reader}\n"), ["sources[0].json_file=x"])
    with pytest.raises(BuildError, match=r"override 'shaping=\[1\]': shaping must be a mapping$"):
        compose_recipe("demo_vqa", ["shaping=[1]"])
    with pytest.raises(BuildError, match=r"override 'shaping.held_out_tasks.a=1': one item of a list"):
        compose_recipe("demo_vqa", ["shaping.seed=1", "shaping.held_out_tasks.a=1"])  # the override that misfits
    unset = _recipe(
        tmp_path, "sources:\n  - {_target_: mmit.data.annotations.read_llava, json_file: '${root}/train.json'}\n"
    )
    with pytest.raises(
        BuildError, match=r"line 2: sources\[0\].json_file uses \$\{root\}, which is not set: pass root="
    ):
        compose_recipe(unset)
    assert compose_recipe(unset, [f"root={llava}"]).sources[0].json_file == f"{llava}/train.json"


def test_a_required_recipe_value_stays_required(tmp_path):
    with pytest.raises(BuildError, match=r"needs values for \['coco_root', 'out_dir'\]"):
        compose_recipe("coco_vqav2")
    # null written into a path read "None/annotations/..." (a file-not-found naming a folder "None")
    for value, hint in (("null", ""), ("~", r" \(~ is YAML's null: write the folder's full path\)")):
        with pytest.raises(
            BuildError,
            match=rf"override 'coco_root={value}': coco_root is null, and the recipe writes it into "
            rf"'\$\{{coco_root\}}/annotations/captions_train2014.json'; give it a value \(coco_root=...\){hint}$",
        ):
            compose_recipe("coco_vqav2", [f"coco_root={value}", "out_dir=/tmp/x"])
    reader = "{_target_: mmit.data.annotations.read_llava, json_file: '${root}/train.json'}"
    with pytest.raises(BuildError, match=r"mine.yaml, line 1: root is null, and the recipe writes it into"):
        compose_recipe(_recipe(tmp_path, f"root: null\nsources:\n  - {reader}\n"))


def test_base_is_not_a_recipe():
    with pytest.raises(BuildError, match="holds the defaults of every recipe; it is not one"):
        compose_recipe("base")


@pytest.mark.slow
def test_the_command_line_prints_one_line_for_a_typo():
    run = subprocess.run(
        [sys.executable, "-m", "mmit.build", "demo_vqa", "shard_sise=100"], capture_output=True, text=True, timeout=300
    )
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert run.stderr.strip().startswith("mmit.build: override 'shard_sise=100'") and len(run.stderr.splitlines()) == 1


def _thin_fingerprint(recipe: str, overrides: list[str]) -> tuple[str, dict]:
    """The fingerprint and manifest config of a build made before recipes had a base (mmit 0.2.0)."""
    cfg = OmegaConf.merge(OmegaConf.load(RECIPES_DIR / f"{recipe}.yaml"), OmegaConf.from_dotlist(overrides))
    text = f"mmit {mmit.__version__}\n{OmegaConf.to_yaml(cfg, resolve=True)}"
    return hashlib.sha256(text.encode()).hexdigest(), OmegaConf.to_container(cfg, resolve=True)


def test_a_build_stamped_before_the_base_is_still_used(tmp_path):
    out = tmp_path / "cache" / "datasets" / "demo"
    overrides = [f"out_dir={out}", "prepare.n_images=30", f"prepare.out_dir={tmp_path / 'src'}", "num_workers=1"]
    build(compose_recipe("demo_vqa", overrides))
    thin, config = _thin_fingerprint("demo_vqa", overrides)
    assert thin != build_fingerprint(compose_recipe("demo_vqa", overrides))
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "config": config}))
    (out / "build.json").write_text(json.dumps({"fingerprint": thin}))
    shards = {p: p.stat().st_mtime_ns for p in out.rglob("*.tar")}

    files = recipe_data_files("demo_vqa", overrides)  # the earlier build is read, not built again
    assert files.train == [str(out / "train")]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.tar")} == shards
    assert json.loads((out / "build.json").read_text())["fingerprint"] == build_fingerprint(
        compose_recipe("demo_vqa", overrides)
    )
    # Other settings are still another build.
    (out / "manifest.json").write_text(json.dumps({**manifest, "config": {**config, "shard_size": 7}}))
    (out / "build.json").write_text(json.dumps({"fingerprint": thin}))
    with pytest.raises(BuildError, match="holds a build of a different recipe"):
        build(compose_recipe("demo_vqa", overrides))


def test_an_edited_template_file_is_another_build(tmp_path, monkeypatch):
    monkeypatch.setenv("MMIT_CACHE", str(tmp_path / "cache"))  # a stale build in the mmit cache is rebuilt
    out = tmp_path / "cache" / "datasets" / "demo"
    templates = tmp_path / "vision.yaml"
    templates.write_text((RECIPES_DIR / "templates" / "vision.yaml").read_text())
    overrides = [
        f"out_dir={out}",
        f"templates={templates}",
        "prepare.n_images=30",
        f"prepare.out_dir={tmp_path / 'src'}",
        "num_workers=1",
    ]
    recipe_data_files("demo_vqa", overrides)
    before = json.loads((out / "manifest.json").read_text())
    assert before["templates"] == {str(templates): hashlib.sha256(templates.read_bytes()).hexdigest()}
    assert "vqayn-01" in before["sets"]["train"]["by_template"]

    templates.write_text(templates.read_text().replace("{id: vqayn-01,", "{id: vqayn-01b,"))
    recipe_data_files("demo_vqa", overrides)  # the same recipe and settings, another wording: built again
    after = json.loads((out / "manifest.json").read_text())["sets"]["train"]["by_template"]
    assert "vqayn-01b" in after and "vqayn-01" not in after


def test_held_out_wordings_are_needed_only_for_the_sets_they_word(llava, tmp_path):
    from mmit.data.recipes import recipe_templates
    from mmit.data.templates import TemplateError

    (tmp_path / "mine_templates.yaml").write_text(
        "vqa_short:\n  - {id: s1, text: '{question}'}\ncaption_brief:\n  - {id: c1, text: 'Describe.'}\n"
        "  - {id: c2, text: 'Say what you see.', held_out: true}\n"
    )
    source = f"sources:\n  - {{_target_: mmit.data.annotations.read_llava, json_file: {llava}/train.json}}\n"
    recipe = _recipe(tmp_path, source + f"templates: {tmp_path}/mine_templates.yaml\n")
    with pytest.raises(TemplateError, match=r"line 1: task 'vqa_short' has no held-out template"):
        recipe_templates(compose_recipe(recipe))  # eval_fraction 0.05: val_heldout_templates words it
    for settings in (["eval_fraction=0"], ["shaping.held_out_tasks=[vqa_short]"]):  # no set words it so
        assert set(recipe_templates(compose_recipe(recipe, settings))) == {"vqa_short", "caption_brief"}
