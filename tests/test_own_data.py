"""A newcomer's own data through the training config: the README's forms compose, every recipe takes
``data=files`` or ``data=shards``, and LLaVA's JSON with its image folder trains as it is."""

from __future__ import annotations

import json

import pytest
import yaml
from hydra.utils import instantiate
from PIL import Image

from mmit.data.sources import DataFiles, read_conversations
from mmit.factory import build_data, build_model
from mmit.paths import CONF_DIR

RECIPES = sorted(p.stem for p in (CONF_DIR / "recipe").glob("*.yaml"))


@pytest.mark.parametrize("data", ["files", "shards"])
def test_the_readme_form_of_named_eval_sets_composes(data, compose):
    cfg = compose(
        ["+recipe=text_tiny", f"data={data}", "data.source.train=[my.jsonl]", "data.source.eval={heldout: [val.jsonl]}"]
    )
    files = instantiate(cfg.data.source, _convert_="all")
    assert files.train == ["my.jsonl"] and files.eval == {"heldout": ["val.jsonl"]}
    no_eval = instantiate(compose(["+recipe=text_tiny", f"data={data}", "data.source.train=[my.jsonl]"]).data.source)
    assert no_eval.eval == {}


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("data", ["files", "shards"])
def test_every_recipe_takes_your_own_data(recipe, data, compose):
    cfg = compose(
        [f"+recipe={recipe}", f"data={data}", "data.source.train=[a.jsonl]", "data.source.eval={x: [b.jsonl]}"]
    )
    files = instantiate(cfg.data.source, _convert_="all")
    assert isinstance(files, DataFiles) and files.train == ["a.jsonl"] and files.eval == {"x": ["b.jsonl"]}


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_pick_their_data_through_the_group_only(recipe):
    """A recipe that set data.* keys would leak them into whichever data option the user picks."""
    assert "data" not in (yaml.safe_load((CONF_DIR / "recipe" / f"{recipe}.yaml").read_text()) or {})


def _llava_folder(root, n=6):
    """A folder of images and LLaVA-style JSON files whose image paths are relative to images/."""
    images = root / "images" / "sub"
    images.mkdir(parents=True)
    records = []
    for i in range(n):
        colour = ["red", "green", "blue"][i % 3]
        Image.new("RGB", (40, 30), colour).save(images / f"{i}.png")
        turns = [{"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": colour}]
        records.append({"id": f"r{i}", "image": f"sub/{i}.png", "conversations": turns})
    (root / "ann").mkdir()
    (root / "ann" / "train.json").write_text(json.dumps(records[:4]))
    (root / "ann" / "val.json").write_text(json.dumps(records[4:]))
    return root


def test_llava_json_with_an_images_dir_trains_as_it_is(tmp_path, compose):
    root = _llava_folder(tmp_path)
    cfg = compose(
        [
            "+recipe=vqa_tiny",
            "data=files",
            f"data.source.train=[{root}/ann/train.json]",
            f"data.source.eval={{heldout: [{root}/ann/val.json]}}",
            f"data.source.images_dir={root}/images",
        ]
    )
    built = build_model(cfg)
    data = build_data(cfg, built.tokenizer, list(built.model.slots.values()))
    assert len(data.train) == 4 and all(len(s.media) == 1 for s in data.train.samples)
    assert data.train.samples[0].media[0].path == str(root / "images" / "sub" / "0.png")
    assert len(data.eval["heldout"].tokens) == 2
    # the evaluation reads the same set through the same file paths, knowing their image folder
    files = instantiate(cfg.data.source, _convert_="all")
    assert len(read_conversations(files.eval["heldout"])) == 2


def test_without_an_images_dir_image_paths_are_relative_to_the_file(tmp_path):
    root = _llava_folder(tmp_path)
    (root / "images" / "train.json").write_text((root / "ann" / "train.json").read_text())
    assert len(read_conversations(DataFiles(train=[str(root / "images" / "train.json")]).train)) == 4
    with pytest.raises(
        ValueError, match=r"sub/0.png does not exist \(media paths are relative.*data.source.images_dir="
    ):
        read_conversations([root / "ann" / "train.json"])


def test_data_files_take_one_path_for_a_list_and_say_what_is_wrong(tmp_path):
    assert DataFiles(train="a.jsonl", eval={"x": "b.jsonl"}).eval == {"x": ["b.jsonl"]}
    with pytest.raises(ValueError, match=r"data.source.eval must map set names to files, e.g. \{heldout"):
        DataFiles(train=["a.jsonl"], eval=["b.jsonl"])
    with pytest.raises(FileNotFoundError, match="images_dir: .*nowhere is not a folder"):
        DataFiles(train=["a.jsonl"], images_dir=str(tmp_path / "nowhere"))
    # An empty list, and a folder of JSON files given where data=files reads files or shard folders
    # (were "no usable samples (skipped: {})" and "no shard-*.tar files in my_data", after the model was built)
    with pytest.raises(ValueError, match="data.source.train is an empty list: name the JSON / JSONL files"):
        DataFiles(train=[])
    with pytest.raises(ValueError, match=r"data.source.eval.heldout is an empty list"):
        DataFiles(train=["a.jsonl"], eval={"heldout": []})
    (tmp_path / "my_data").mkdir()
    (tmp_path / "my_data" / "train.json").write_text("[]")
    with pytest.raises(ValueError, match=r"my_data is a folder of data files \(train.json\), not of shards; list"):
        DataFiles(train=[str(tmp_path / "my_data")])


def test_jsonl_lines_in_a_json_file_are_told_to_be_named_jsonl(tmp_path):
    from mmit.data.sources import DataFileError, read_conversations

    lines = tmp_path / "lines.json"
    record = '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}'
    lines.write_text(f"{record}\n{record}\n")
    with pytest.raises(
        DataFileError, match=r"lines.json:2: bad JSON \(Extra data\); a .json file is read as one JSON list"
    ):
        read_conversations([str(lines)])
