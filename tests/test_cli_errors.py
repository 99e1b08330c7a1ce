"""Mistakes show early and in one line: config values are checked before any model is built, the
commands print ``prog: message`` for a user's error (a bug keeps its traceback), and no command
prints transformers' deprecation warning."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from PIL import Image

from mmit.cli import user_errors
from mmit.config_checks import ConfigError, check_config
from mmit.paths import CONF_DIR

RECIPES = sorted(p.stem for p in (CONF_DIR / "recipe").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_passes_the_checks(recipe, compose):
    check_config(compose([f"+recipe={recipe}"]))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.lr=abc", "trainer.lr='abc': must be a number"),
        ("trainer.lr=0", "trainer.lr=0: must be > 0"),
        ("trainer.batch_size=0", "trainer.batch_size=0: must be >= 1"),
        ("trainer.max_steps=1.5", "trainer.max_steps=1.5: must be a whole number"),
        ("trainer.gradient_checkpointing=maybe", "trainer.gradient_checkpointing='maybe': must be true or false"),
        ("trainer.precision=fp16", "trainer.precision='fp16': must be one of auto, bf16, fp32"),
        ("trainer.lr_schedule=linear", "trainer.lr_schedule='linear': must be one of cosine, constant, wsd"),
        ("trainer.lr_decay_fraction=1.5", "trainer.lr_decay_fraction=1.5: must be between 0 and 1"),
        ("trainer.device=gpu", "trainer.device='gpu': must be auto, cpu, cuda, cuda:N or mps"),
        ("++trainer.lr_per_component.projector=1e-3", "trainer.lr_per_component.projector: not a component"),
        ("trainer.generate_samples={seen: -1}", "trainer.generate_samples={'seen': -1}: must be >= 0"),
        (
            "trainer.max_new_tokens={default: 12, caption_brief: abc}",
            "must be a whole number or a mapping of whole numbers",
        ),
        ("trainer.max_new_tokens={default: 12, caption_brief: 0}", "must be >= 1"),
        ("tuning.vision_encoder=half", "tuning.vision_encoder='half': must be one of frozen, lora, full"),
        ("peft.method=qlora", "peft.method='qlora': must be one of adapter, bitfit"),
        ("data.max_length=-5", "data.max_length=-5: must be a whole number >= 1"),
        ("data.overlength=cut", "data.overlength='cut': must be one of truncate, drop, raise"),
        ("frozen_dtype=int8", "frozen_dtype='int8': must be one of auto, float32"),
        ("+projector_align.image_words=two", "projector_align.image_words='two': must be one of one, several"),
        ("+projector_align.steps=0", "projector_align.steps=0: must be a whole number >= 1"),
        ("+projector_align.batch_size=8.5", "projector_align.batch_size=8.5: must be a whole number >= 1"),
        ("+projector_align.lr=0", "projector_align.lr=0: must be a number > 0"),
        ("peft.config.r=1.5", "peft.config.r=1.5: must be a whole number >= 1"),
        ("peft.config.lora_alpha=0", "peft.config.lora_alpha=0: must be a number > 0"),
        ("peft.config.lora_dropout=-1", "peft.config.lora_dropout=-1: must be a number from 0 to below 1"),
        ("trainer.seed=-1", "trainer.seed=-1: must be >= 0"),
        ("llm.seed=1.5", "llm.seed=1.5: must be a whole number >= 0"),
        ("data.source.seed=-2", "data.source.seed=-2: must be a whole number >= 0"),
        ("trainer.pack_length=1.5", "trainer.pack_length=1.5: must be a whole number or null"),
        ("trainer.pack_length=64", "trainer.pack_length=64 is shorter than data.max_length=512"),
        ("vision_encoder=tiny", "vision_encoder is set but no projector is"),
    ],
)
def test_bad_values_are_named_before_anything_is_built(override, message, compose):
    with pytest.raises(ConfigError, match="the config cannot work") as refused:
        check_config(compose(["+recipe=text_tiny", override]))
    assert message in str(refused.value)


def test_a_projector_depth_below_one_is_named(compose):
    with pytest.raises(ConfigError, match=r"projector.depth=0: must be a whole number >= 1"):
        check_config(compose(["+recipe=vqa_tiny", "projector.depth=0"]))


def test_a_key_the_encoder_does_not_take_is_named_with_how_to_drop_it(compose):
    with pytest.raises(ConfigError) as refused:
        check_config(compose(["+recipe=vqa_tiny", "vision_encoder=hf_clip", "+vision_encoder.image_size=288"]))
    assert (
        "vision_encoder.image_size=288: HFVisionEncoder takes no 'image_size' "
        "(it takes name_or_path, layer, tokens, pool_to, trust_remote_code); drop it with ~vision_encoder.image_size"
    ) in str(refused.value)
    with pytest.raises(ConfigError, match="llm.max_len=3: load_smollm2_135m_instruct takes no 'max_len'"):
        check_config(compose(["+recipe=text", "+llm.max_len=3"]))


def test_swapping_the_main_jobs_encoder_leaves_none_of_its_settings_behind(compose):
    """+recipe=vqa's EfficientNet settings (block 14, 288 px, 3x3) belong to its encoder option, so
    another encoder on the command line, or +model=llava, starts from that encoder's own."""
    cfg = compose(["+recipe=vqa", "vision_encoder=hf_clip", "vision_encoder.name_or_path=/models/clip"])
    assert dict(cfg.vision_encoder) == {
        "_target_": "mmit.models.encoders.HFVisionEncoder",
        "name_or_path": "/models/clip",
        **{"layer": -2, "tokens": "patch", "pool_to": None},
    }
    check_config(cfg)
    check_config(compose(["+recipe=vqa", "+model=llava", "init_from=/somewhere/llava"]))
    main = compose(["+recipe=vqa"]).vision_encoder
    assert (main.layer, main.pool_to, main.image_size) == (14, 3, 288)


def test_files_without_training_files_say_what_to_set(compose):
    with pytest.raises(ConfigError, match=r"data.source.train is not set: .*'data.source.train=\[train.jsonl\]'"):
        check_config(compose(["+recipe=text_tiny", "data=files"]))


def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback(monkeypatch):
    @user_errors("mmit.x")
    def missing():
        raise FileNotFoundError("data file x.jsonl does not exist")

    with pytest.raises(SystemExit) as stopped:
        missing()
    assert stopped.value.code == "mmit.x: data file x.jsonl does not exist"  # Python prints it, exit status 1

    @user_errors("mmit.x")
    def bug():
        return {}["key"]

    with pytest.raises(KeyError):
        bug()
    monkeypatch.setenv("MMIT_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError):
        missing()


def _run(*args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "default"}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _last_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("mmit.")]


@pytest.mark.slow
def test_a_bad_value_stops_training_at_once_in_one_message(tmp_path):
    out = _run("mmit.train", "+recipe=text_tiny", "trainer.lr=abc", "hydra.run.dir=run", cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().endswith("mmit.train: the config cannot work:\n  trainer.lr='abc': must be a number")
    assert "LLM" not in out.stderr and not (tmp_path / "run" / "config.yaml").exists()  # nothing was built
    (tmp_path / "afile").write_text("mine")  # Hydra would make the run folder there: a traceback of its own
    for run_dir in ("afile", "afile/run"):
        out = _run("mmit.train", "+recipe=text_tiny", f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert out.returncode == 1 and "Traceback" not in out.stderr
        assert _last_lines(out.stderr) == [f"mmit.train: hydra.run.dir={run_dir}: afile is a file, not a folder"]
    assert (tmp_path / "afile").read_text() == "mine"


@pytest.mark.slow
def test_chat_and_eval_print_user_errors_in_one_line_without_warnings(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "red.png")
    chat = _run("mmit.chat", "--base", "+recipe=text_tiny", "--image", "red.png", "--", "Colour?", cwd=tmp_path)
    assert chat.returncode == 1 and "Traceback" not in chat.stderr
    assert _last_lines(chat.stderr) == ["mmit.chat: this model has no image encoder (its media: none (text only))"]
    assert "FutureWarning" not in chat.stderr and "is_gradient_checkpointing" not in chat.stderr
    missing = _run("mmit.eval", "nowhere", cwd=tmp_path)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert _last_lines(missing.stderr) == ["mmit.eval: nowhere is not a run directory (no config.yaml)"]
    base = _run("mmit.eval", "--base", "+recipe=text_tiny", "trainer.lr=abc", "--out", "x", cwd=tmp_path)
    assert (
        base.returncode == 1 and "trainer.lr='abc': must be a number" in base.stderr and "Traceback" not in base.stderr
    )


def test_eval_and_chat_check_their_command_line_before_loading_torch(tmp_path):
    """--help and a mistake in the command line answer at once: the modules that bring torch,
    transformers and matplotlib load only once the command goes on to build a model."""
    probe = "import sys, mmit.eval, mmit.chat; print(sorted(m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "[]", loaded.stderr
    Image.new("RGB", (8, 8), "red").save(tmp_path / "red.png")
    for command, status, message in (
        (["mmit.eval", "nowhere", "--sets", "oops"], 1, "mmit.eval: --sets takes NAME=PATH, not 'oops'"),
        (["mmit.eval", "nowhere", "--images-dir", "."], 1, "mmit.eval: --images-dir goes with --sets"),
        (["mmit.eval", "nowhere", "--max-new-tokens", "0"], 2, "argument --max-new-tokens: must be 1 or more, not 0"),
        (["mmit.eval", "nowhere", "--max-samples", "-1"], 2, "argument --max-samples: must be 0 or more, not -1"),
        (["mmit.chat", "nowhere", "hi"], 1, "mmit.chat: nowhere is not a run directory (no config.yaml)"),
        (
            ["mmit.chat", "nowhere", "--audio", "red.png", "hi"],
            1,
            "mmit.chat: --audio red.png is an image file, not audio",
        ),
        (["mmit.chat", "nowhere", "--image", "red.png"], 1, "mmit.chat: --image / --audio / --video go with a prompt"),
        (
            ["mmit.chat", "nowhere", "--video", "red.png", "hi"],
            1,
            "mmit.chat: --video red.png is an image file, not video",
        ),
    ):
        out = _run(*command, cwd=tmp_path)
        assert out.returncode == status and message in out.stderr and "Traceback" not in out.stderr, out.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        ({"n_train": 0}, "data.source.n_train=0: must be a whole number >= 1"),
        ({"n_eval": 1.5}, "data.source.n_eval=1.5: must be a whole number >= 1"),
        ({"max_turns": -1}, "data.source.max_turns=-1: must be a whole number >= 1"),
        ({"eval_fraction": 0}, "data.source.eval_fraction=0: must be between 0 and 1"),
        ({"eval_fraction": "half"}, "data.source.eval_fraction='half': must be between 0 and 1"),
    ],
)
def test_the_text_demos_sizes_are_named(override, message, tmp_path):
    """They ended in "no usable samples", a randrange error or 1,000 failed draws."""
    from mmit.data.demo.text import prepare_text_skills

    with pytest.raises(ValueError, match=re.escape(message)):
        prepare_text_skills(**override, out_dir=str(tmp_path))
    assert not any(tmp_path.iterdir())  # refused before anything is written


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"hidden_size": 0}, "llm.hidden_size=0: must be a whole number >= 1"),
        ({"num_layers": 1.5}, "llm.num_layers=1.5: must be a whole number >= 1"),
        ({"num_heads": 3}, "llm.hidden_size=64: must be a multiple of llm.num_heads=3"),
        ({"vocab_size": 10}, "llm.vocab_size=10: the tiny tokenizer needs at least 259"),
        ({"initializer_range": 0}, "llm.initializer_range=0: must be a number > 0"),
    ],
)
def test_the_tiny_llms_sizes_are_named(spec, message):
    """They ended in ZeroDivisionError, IndexError or transformers' own field errors."""
    from mmit.models.llm import build_tiny_llm_dir

    with pytest.raises(ValueError, match=re.escape(message)):
        build_tiny_llm_dir(**spec)
