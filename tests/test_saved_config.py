"""A run folder is data, not code: its config.yaml rebuilds a model only through mmit's own
builders (mmit.eval, mmit.export, mmit.chat, the web demo and mmit.synth all load runs this way)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from safetensors.torch import save_file

from mmit.factory import build_model, resolved_yaml
from mmit.inference import load_run
from mmit.paths import CONF_DIR
from mmit.saved_config import check_saved_config

TEXT = ["+recipe=text_tiny", "data.source.n_train=16", "data.source.n_eval=4"]


def _write_run(tmp_path: Path, compose, edit=None) -> Path:
    cfg = yaml.safe_load(resolved_yaml(compose(TEXT)))
    if edit is not None:
        edit(cfg)
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run


def _writer(marker: Path) -> dict:
    """A block that, if instantiated, writes ``marker``: what an attacker would put in a run folder."""
    return {"_target_": "mmit.paths.atomic_write_text", "path": str(marker), "text": "pwned"}


def _set(path: str, value):
    def edit(cfg):
        *parents, last = path.split(".")
        node = cfg
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value(cfg) if callable(value) else value

    return edit


def _pickled_model(marker: Path) -> dict:
    """An LLM folder whose only weights are a pickle, which loading would unpickle."""
    folder = marker.parent / "model"
    folder.mkdir(exist_ok=True)
    (folder / "pytorch_model.bin").write_bytes(b"not safetensors")
    return {"_target_": "mmit.models.llm.load_pretrained", "name_or_path": str(folder)}


CRAFTED = {
    # where the config is changed -> the key the refusal must name
    "llm_target": (lambda m: _set("llm", _writer(m)), "llm._target_"),
    "nested_target": (lambda m: _set("trainer.lr_per_component", _writer(m)), "trainer.lr_per_component"),
    "peft_target": (lambda m: _set("peft.config", _writer(m)), "peft.config._target_"),
    "unknown_group": (lambda m: _set("extra", _writer(m)), "extra"),
    "positional_args": (lambda m: _set("llm._args_", [str(m)]), "llm._args_"),
    "unshipped_parameter": (
        lambda m: _set("peft.config", {"_target_": "peft.LoraConfig", "megatron_core": "os"}),
        "megatron_core",
    ),
    "remote_code": (
        lambda m: _set(
            "llm",
            {"_target_": "mmit.models.llm.load_pretrained", "name_or_path": str(m.parent), "trust_remote_code": True},
        ),
        "llm.trust_remote_code",
    ),
    "recipe_path": (
        lambda m: _set(
            "data.source",
            {"_target_": "mmit.data.build.recipe_data_files", "recipe": str(m.parent / "evil.yaml"), "overrides": []},
        ),
        "data.source.recipe",
    ),
    "recipe_override_target": (
        lambda m: _set(
            "data.source",
            {
                "_target_": "mmit.data.build.recipe_data_files",
                "recipe": "demo_vqa",
                "overrides": [f"prepare._target_=mmit.paths.atomic_write_text,path={m}"],
            },
        ),
        "data.source.overrides",
    ),
    "recipe_override_unknown_argument": (
        lambda m: _set(
            "data.source",
            {"_target_": "mmit.data.build.recipe_data_files", "recipe": "demo_vqa", "overrides": ["prepare.bogus=1"]},
        ),
        "data.source.overrides",
    ),
    "build_outside_the_cache": (
        lambda m: _set(
            "data.source",
            {
                "_target_": "mmit.data.build.recipe_data_files",
                "recipe": "demo_vqa",
                "overrides": [f"out_dir={m.parent}/demo"],
            },
        ),
        "data.source.overrides",
    ),
    "text_skills_out_dir": (lambda m: _set("data.source.out_dir", str(m.parent / "skills")), "data.source.out_dir"),
    "interpolation": (lambda m: _set("llm.dtype", "${oc.env:HOME}"), "llm.dtype"),
    "pickled_weights": (lambda m: _set("llm", lambda cfg: _pickled_model(m)), "llm.name_or_path"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_crafted_config_is_refused_with_its_file_and_key_and_runs_nothing(case, compose, tmp_path):
    from mmit.saved_config import UnsafeConfigError

    marker = tmp_path / "pwned.txt"
    edit, key = CRAFTED[case]
    run = _write_run(tmp_path, compose, edit(marker))
    with pytest.raises(UnsafeConfigError) as refused:
        load_run(run, checkpoint="none")
    assert str(run / "config.yaml") in str(refused.value) and key in str(refused.value)
    assert not marker.exists() and not (tmp_path / "skills").exists() and not (tmp_path / "demo").exists()


def test_a_run_whose_demo_data_set_an_argument_of_its_builder_loads(compose, tmp_path):
    """An override the recipe's own builder takes (the demo's question kinds) is what the build
    accepted; the run trained on it loads without being trusted."""
    from mmit.paths import CONF_DIR, cache_dir
    from mmit.saved_config import load_saved_config

    demo = yaml.safe_load((CONF_DIR / "data" / "demo_vqa.yaml").read_text())["source"]
    kinds = ["prepare.kinds=[exists,where]", f"prepare.out_dir={cache_dir()}/sources/k", f"out_dir={cache_dir()}/k"]
    run = _write_run(tmp_path, compose, _set("data.source", {**demo, "overrides": kinds}))
    assert list(load_saved_config(run / "config.yaml").data.source.overrides) == kinds


OLD_DEMO_TARGET = "mmit.build.recipe_data_files"  # the demo dataset's builder in runs saved by mmit 0.2.1


def test_a_run_saved_with_the_old_demo_dataset_builder_loads_under_its_new_name(compose, tmp_path):
    from hydra.utils import get_object

    from mmit.data.build import recipe_data_files
    from mmit.paths import CONF_DIR
    from mmit.saved_config import load_saved_config

    demo = yaml.safe_load((CONF_DIR / "data" / "demo_vqa.yaml").read_text())["source"]
    assert get_object(demo["_target_"]) is recipe_data_files
    run = _write_run(tmp_path, compose, _set("data.source", {**demo, "_target_": OLD_DEMO_TARGET}))
    cfg = load_saved_config(run / "config.yaml")  # checked as the shipped demo dataset: not refused
    assert cfg.data.source._target_ == demo["_target_"]
    assert cfg.data.source.recipe == "demo_vqa" and cfg.data.source.eval.seen == "val_seen"


def test_the_old_demo_dataset_builder_is_checked_as_the_new_one(compose, tmp_path, monkeypatch):
    from mmit.saved_config import UnsafeConfigError, load_saved_config

    evil = {"_target_": OLD_DEMO_TARGET, "recipe": str(tmp_path / "evil.yaml"), "overrides": []}
    run = _write_run(tmp_path, compose, _set("data.source", evil))
    with pytest.raises(UnsafeConfigError, match="data.source.recipe"):
        load_saved_config(run / "config.yaml")
    monkeypatch.setenv("MMIT_TRUSTED_RUNS", str(run))  # a trusted run is not checked, but renamed all the same
    assert load_saved_config(run / "config.yaml").data.source._target_ == "mmit.data.build.recipe_data_files"


OLD_TEXT_DEMO_TARGET = "mmit.data.text_skills.prepare_text_skills"  # before the demo data moved to mmit.data.demo


def test_a_run_saved_with_the_old_text_demo_module_loads_and_builds_under_the_new_one(compose, tmp_path):
    from hydra.utils import get_object, instantiate

    from mmit.data.demo.text import prepare_text_skills
    from mmit.saved_config import RENAMED_TARGETS, load_saved_config

    run = _write_run(tmp_path, compose, lambda cfg: cfg["data"]["source"].update(_target_=OLD_TEXT_DEMO_TARGET))
    cfg = load_saved_config(run / "config.yaml")  # checked as the shipped text demo: not refused
    assert cfg.data.source._target_ == "mmit.data.demo.text.prepare_text_skills"
    assert get_object(cfg.data.source._target_) is prepare_text_skills
    assert instantiate(cfg.data.source).train  # its data builds as before (into the test's cache)
    for new in RENAMED_TARGETS.values():  # every new name exists
        get_object(new)


def test_the_cli_tools_refuse_a_crafted_run_before_writing_anything(compose, tmp_path):
    from mmit.chat import main as chat_main
    from mmit.eval import main as eval_main
    from mmit.export import main as export_main
    from mmit.saved_config import UnsafeConfigError

    marker = tmp_path / "pwned.txt"
    run = _write_run(tmp_path, compose, _set("llm", _writer(marker)))
    for main, argv in (
        (eval_main, [str(run), "--checkpoint", "none", "--out", str(tmp_path / "eval")]),
        (export_main, [str(run), "--checkpoint", "none", "--out", str(tmp_path / "export")]),
        (chat_main, [str(run), "hello", "--checkpoint", "none"]),
    ):
        with pytest.raises((UnsafeConfigError, SystemExit), match="config.yaml"):
            main(argv)
    assert not marker.exists() and not (tmp_path / "eval").exists() and not (tmp_path / "export").exists()


def test_a_saved_config_of_mmits_own_builders_loads(compose, tmp_path):
    run = _write_run(tmp_path, compose)
    loaded = load_run(run, checkpoint="none")
    assert loaded.model.slots == {} and loaded.tokenizer.chat_template


def test_a_trusted_run_may_use_parameters_mmit_does_not_ship(compose, tmp_path, monkeypatch):
    """MMIT_TRUSTED_RUNS names run folders that are the user's own, like a recipe they wrote."""
    run = _write_run(tmp_path, compose, _set("peft.config.lora_dropout", 0.0))
    run_cfg = yaml.safe_load((run / "config.yaml").read_text())
    run_cfg["peft"]["config"]["bias"] = "none"  # a LoraConfig field no shipped config sets
    (run / "config.yaml").write_text(yaml.safe_dump(run_cfg))
    from mmit.saved_config import UnsafeConfigError

    with pytest.raises(UnsafeConfigError, match="peft.config.bias"):
        load_run(run, checkpoint="none")
    monkeypatch.setenv("MMIT_TRUSTED_RUNS", str(run))
    assert load_run(run, checkpoint="none").model is not None


def test_a_crafted_latest_pointer_cannot_leave_the_checkpoints_folder(compose, tmp_path):
    run = _write_run(tmp_path, compose)
    (run / "checkpoints").mkdir()
    for pointer in ("..", "../..", "/etc", "step-0000001/../../.."):
        (run / "checkpoints" / "latest").write_text(pointer + "\n")
        with pytest.raises((FileNotFoundError, ValueError), match="latest"):
            load_run(run)
    assert (run / "config.yaml").exists()


def test_init_from_reads_weights_only_never_the_other_runs_config(compose, tmp_path):
    reference = build_model(compose(TEXT)).model
    name, param = next((n, p) for n, p in reference.named_parameters() if p.requires_grad)
    marker = tmp_path / "pwned.txt"
    other = _write_run(tmp_path, compose, _set("llm", _writer(marker)))
    step = other / "checkpoints" / "step-0000001"
    step.mkdir(parents=True)
    save_file({name: torch.full_like(param, 0.5)}, step / "trainable.safetensors")
    (other / "checkpoints" / "latest").write_text("step-0000001\n")
    model = build_model(compose([*TEXT, f"init_from={other}"])).model
    assert torch.equal(dict(model.named_parameters())[name].detach(), torch.full_like(param, 0.5))
    assert not marker.exists()


@pytest.mark.parametrize(
    "overrides",
    [[f"+recipe={p.stem}"] for p in sorted((CONF_DIR / "recipe").glob("*.yaml"))]
    + [["+recipe=vqa", "vision_encoder=hf_clip"], ["+recipe=vqa", "+model=llava", "init_from=/somewhere/llava"]],
    ids=lambda o: " ".join(o),
)
def test_every_shipped_recipe_saves_a_config_its_run_folder_can_load(overrides, compose):
    saved = yaml.safe_load(resolved_yaml(compose(overrides)))  # as the run writes config.yaml
    check_saved_config(OmegaConf.create(saved), "runs/x/config.yaml")  # refusing raises, naming the key


def test_a_config_without_its_llm_or_trainer_section_is_named(compose, tmp_path):
    from mmit.saved_config import UnsafeConfigError

    run = _write_run(tmp_path, compose, lambda cfg: cfg)
    config = run / "config.yaml"
    for text, missing in (("", "llm or trainer"), ("trainer: {max_steps: 2}\n", "llm")):
        config.write_text(text)
        with pytest.raises(UnsafeConfigError, match=rf"{config}: no {missing} section, which every run's config"):
            load_run(run, checkpoint="none")
