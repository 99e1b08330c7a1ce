"""Every recipe composes and instantiates; standard Hydra behaviour works on the entry point."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mmit.factory import build_data, build_model, build_trainer_config
from mmit.paths import CONF_DIR
from mmit.training.loop import TrainerConfig

RECIPES = sorted(p.stem for p in (CONF_DIR / "recipe").glob("*.yaml"))
REPO = Path(__file__).resolve().parents[1]


def test_recipes_exist():
    assert {"text", "text_tiny", "vqa", "vqa_tiny", "caption_align"} <= set(RECIPES)


def small_data(cfg, tmp_path) -> list[str]:
    """Overrides that shrink a recipe's data so that instantiating it is quick."""
    if cfg.data.source._target_.endswith("prepare_text_skills"):
        return ["data.source.n_train=16", "data.source.n_eval=4"]
    out = tmp_path / "demo"
    recipe = cfg.data.source.recipe
    if recipe in ("demo_audio", "demo_video", "demo_av"):
        size = "'prepare.n_clips=16','prepare.n_heldout_clips=6'"
    elif recipe == "demo_compare":
        size = "'prepare.n_pairs=20','prepare.n_heldout_pairs=6'"
    else:
        size = "'prepare.n_images=60'"
    return [f"data.source.overrides=[{size},'out_dir={out}','prepare.out_dir={out}-src']"]


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.slow
def test_every_recipe_composes_and_instantiates(recipe, compose, tmp_path):
    cfg = compose([f"+recipe={recipe}"])
    cfg = compose([f"+recipe={recipe}", *small_data(cfg, tmp_path)])
    assert OmegaConf.to_yaml(cfg, resolve=True)
    built = build_model(cfg)
    assert "llm" in built.table and built.tokenizer.chat_template
    media = set()
    if cfg.get("vision_encoder"):
        media |= {"image", "video"} if cfg.get("video") else {"image"}
        assert "vision_encoder" in built.table
    if cfg.get("audio_encoder"):
        media.add("audio")
        assert "audio_encoder" in built.table
    assert set(built.model.slots) == media
    data = build_data(cfg, built.tokenizer, list(built.model.slots.values()))
    assert len(data.train) > 0 and len(data.eval) >= 2
    trainer = build_trainer_config(cfg)
    assert isinstance(trainer, TrainerConfig) and trainer.max_steps > 0


def test_stage_one_builds_the_main_jobs_encoder_and_projector(compose):
    """+recipe=caption_align feeds +recipe=vqa init_from=<its run>: every projector tensor must fit."""
    stage1, stage2 = compose(["+recipe=caption_align"]), compose(["+recipe=vqa"])
    assert stage1.vision_encoder == stage2.vision_encoder
    assert stage1.projector == stage2.projector
    assert stage1.peft.method == "frozen" and stage2.peft.method == "lora"


def test_command_line_overrides_beat_the_recipe(compose):
    cfg = compose(["+recipe=text", "llm=tiny", "peft=full", "trainer.max_steps=3"])
    assert cfg.llm._target_.endswith("load_tiny") and cfg.peft.method == "full" and cfg.trainer.max_steps == 3


def _mmit_train(*args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mmit.train", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_cfg_job_prints_the_composed_config_from_any_directory(tmp_path):
    out = _mmit_train("+recipe=text", "--cfg", "job", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    cfg = OmegaConf.create(out.stdout)
    assert cfg.llm._target_ == "mmit.models.llm.load_smollm2_135m_instruct"
    assert cfg.trainer.max_steps == 120
    assert not (tmp_path / "runs").exists()  # --cfg runs nothing


@pytest.mark.slow
def test_multirun_sweep_runs_each_job_in_its_own_directory(tmp_path):
    out = _mmit_train(
        "-m",
        "+recipe=text_tiny",
        "trainer.lr=1e-3,2e-3",
        "trainer.max_steps=2",
        "trainer.generate_samples=0",
        "data.source.n_train=16",
        "data.source.n_eval=4",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for job, lr in (("0", 0.001), ("1", 0.002)):
        resolved = OmegaConf.load(tmp_path / "sweep" / job / "config.yaml")
        assert resolved.trainer.lr == lr
        assert (tmp_path / "sweep" / job / "summary.md").exists()


def test_packaging_lists_every_config_folder():
    import tomllib

    packages = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    for root, prefix in ((REPO / "conf", "mmit.conf"), (REPO / "data_recipes", "mmit.data_recipes")):
        for folder in [root, *(p for p in root.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
            name = ".".join([prefix, *folder.relative_to(root).parts])
            assert name in packages, f"{folder} is missing from pyproject's packages ({name})"
    for init in (REPO / "mmit").rglob("__init__.py"):  # mmit's own subpackages
        name = ".".join(["mmit", *init.parent.relative_to(REPO / "mmit").parts])
        assert name in packages, f"{init.parent} is missing from pyproject's packages ({name})"
    shipped = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["*"]
    for path in [*(REPO / "conf").rglob("*.*"), *(REPO / "data_recipes").rglob("*.*")]:
        if "__pycache__" not in path.parts:
            assert f"*{path.suffix}" in shipped, f"{path} would not ship: add *{path.suffix} to package-data"


def test_importing_mmit_makes_openmp_wait_passively_unless_the_user_chose():
    def policy(env):
        code = "import mmit, os; print(os.environ['OMP_WAIT_POLICY'])"
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip()

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert policy(env) == "PASSIVE"
    assert policy({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
