"""Training into a folder that holds a run with another config: refused before anything is written,
with a message that says so and what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from mmit.training.checkpoint import ResumeConfigError, write_run_config


def _finished_run(run_dir, cfg, step):
    (run_dir / "checkpoints" / f"step-{step:07d}").mkdir(parents=True)
    (run_dir / "checkpoints" / f"step-{step:07d}" / "state.json").write_text(json.dumps({"step": step}))
    (run_dir / "checkpoints" / "latest").write_text(f"step-{step:07d}\n")
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


@pytest.mark.parametrize(("step", "state"), [(30, "finished at step 30 of 30"), (15, "stopped at step 15 of 30")])
def test_another_config_in_a_run_folder_is_refused_saying_the_folder_holds_a_run(compose, tmp_path, step, state):
    run_dir = tmp_path / "run"
    _finished_run(run_dir, compose(["+recipe=text_tiny"]), step)
    saved = (run_dir / "config.yaml").read_text()
    with pytest.raises(ResumeConfigError) as refused:
        write_run_config(run_dir, compose(["+recipe=text_tiny", "peft=full", "trainer.max_steps=60"]))
    message = str(refused.value)
    assert f"{run_dir} already holds a run with another config ({state};" in message
    assert "peft.method: 'lora' -> 'full'" in message and "choose a new folder (hydra.run.dir=...)" in message
    assert f"init_from={run_dir / 'checkpoints' / f'step-{step:07d}'}" in message
    assert "Nothing in the folder was changed" in message
    assert (run_dir / "config.yaml").read_text() == saved


def test_relative_paths_are_saved_from_the_folder_the_run_started_in(compose, tmp_path, monkeypatch):
    """A run's config.yaml names its data, init_from and local weights absolutely, so mmit.eval and
    mmit.chat find them from any folder; a hub id and the demo recipes' split names stay as written."""
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = compose(
        [
            "+recipe=text_tiny",
            "data=files",
            "data.source.train=[data/train.jsonl]",
            "data.source.eval={heldout: [./data/val.jsonl, ../elsewhere/val.jsonl]}",
            "data.source.images_dir='~/pictures'",
            "init_from=runs/old",
            "feature_cache=features",
            "trainer.benchmarks={pope: bench/pope}",
        ]
    )
    write_run_config(tmp_path / "run", cfg)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    source = saved["data"]["source"]
    assert source["train"] == [f"{tmp_path}/data/train.jsonl"]
    assert source["eval"] == {"heldout": [f"{tmp_path}/data/val.jsonl", f"{tmp_path.parent}/elsewhere/val.jsonl"]}
    assert source["images_dir"] == str(Path.home() / "pictures")
    assert saved["init_from"] == f"{tmp_path}/runs/old" and saved["feature_cache"] == f"{tmp_path}/features"
    assert saved["trainer"]["benchmarks"] == {"pope": f"{tmp_path}/bench/pope"}
    assert saved["llm"] == yaml.safe_load(OmegaConf.to_yaml(cfg.llm, resolve=True))  # the tiny preset: no path

    demo = compose(["+recipe=vqa_tiny"])
    write_run_config(tmp_path / "demo", demo)
    assert yaml.safe_load((tmp_path / "demo" / "config.yaml").read_text())["data"] == OmegaConf.to_container(
        demo.data, resolve=True
    )


@pytest.mark.parametrize("local", [True, False])
def test_weights_named_by_a_local_folder_are_saved_absolutely_and_a_hub_id_as_it_is(
    local, compose, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    if local:
        (tmp_path / "org" / "model").mkdir(parents=True)
    write_run_config(tmp_path / "run", compose(["+recipe=text_tiny", "llm=hf", "llm.name_or_path=org/model"]))
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["llm"]["name_or_path"]
    assert saved == (f"{tmp_path}/org/model" if local else "org/model")


def test_a_run_saved_with_relative_paths_resumes_from_its_folder(compose, tmp_path, monkeypatch):
    """Runs saved before paths were written absolutely name their data as typed: resumed from the same
    folder, the data is the same and nothing is refused or reported."""
    monkeypatch.chdir(tmp_path)
    cfg = compose(["+recipe=text_tiny", "data=files", "data.source.train=[train.jsonl]"])
    _finished_run(tmp_path / "run", cfg, 15)
    assert "- train.jsonl" in (tmp_path / "run" / "config.yaml").read_text()
    write_run_config(tmp_path / "run", cfg)
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["source"]["train"] == [
        f"{tmp_path}/train.jsonl"
    ]
    assert not list((tmp_path / "run").glob("config.step-*.yaml"))  # no change to keep a record of
    monkeypatch.chdir(tmp_path / "run")  # another folder: another data file, which a checkpoint cannot take
    with pytest.raises(  # the whole paths, which differ only at their ends
        ResumeConfigError, match=rf"data.source.train: \['{tmp_path}/train.jsonl'\] -> \['{tmp_path}/run/train.jsonl'\]"
    ):
        write_run_config(
            tmp_path / "run", compose(["+recipe=text_tiny", "data=files", "data.source.train=[train.jsonl]"])
        )
