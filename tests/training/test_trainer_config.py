"""TrainerConfig sets the trainer's defaults; conf/trainer/default.yaml lists the same ones, and the
loop reads its config without changing it."""

from __future__ import annotations

import copy
import dataclasses
import math
import re

import pytest
from omegaconf import OmegaConf

import mmit.train
from mmit.config_checks import COMPONENTS, check_config
from mmit.factory import build_model, build_trainer_config
from mmit.paths import CONF_DIR
from mmit.training import distributed
from mmit.training.loop import TrainerConfig, eval_due, log_due, param_groups, save_due

DEFAULT_YAML = CONF_DIR / "trainer" / "default.yaml"


def test_the_yaml_lists_every_option_with_the_dataclass_default_in_its_order():
    listed = OmegaConf.to_container(OmegaConf.load(DEFAULT_YAML), resolve=False)
    assert listed.pop("_target_") == "mmit.training.loop.TrainerConfig"
    fields = {f.name: f for f in dataclasses.fields(TrainerConfig)}
    assert list(listed) == list(fields)
    defaults = dataclasses.asdict(TrainerConfig())
    interpolated = {key for key, value in listed.items() if isinstance(value, str) and value.startswith("${")}
    assert interpolated == {"seed"}  # the job's one seed, `seed:` in conf/train.yaml
    for key in fields.keys() - interpolated:
        assert listed[key] == defaults[key] and type(listed[key]) is type(defaults[key]), key


def test_the_composed_default_trainer_is_the_dataclass_default(compose):
    cfg = compose(["trainer.max_steps=200"])  # no recipe: the group's default.yaml as is
    assert build_trainer_config(cfg) == dataclasses.replace(TrainerConfig(), seed=cfg.seed)


def test_the_yaml_names_only_real_components_and_its_example_works(compose):
    text = DEFAULT_YAML.read_text()
    note = next(line for line in text.splitlines() if line.startswith("lr_per_component:"))
    named = re.findall(r"\w+", re.search(r"components: ([\w, ]+)", note).group(1))
    assert named == list(COMPONENTS)
    example = re.search(r"(\+\+trainer\.lr_per_component\.(\w+)=(\S+))", note)
    cfg = compose(["+recipe=vqa_tiny", example.group(1)])
    check_config(cfg)
    groups = param_groups(build_model(cfg).model, build_trainer_config(cfg))
    assert {g["component"]: g["lr"] for g in groups}[example.group(2)] == float(example.group(3))


def test_when_the_loop_logs_evaluates_and_saves():
    cfg = TrainerConfig(max_steps=10, log_every=4, eval_every=5, save_every=3)
    assert [s for s in range(1, 11) if log_due(s, cfg)] == [4, 8, 10]
    assert [s for s in range(1, 11) if eval_due(s, cfg)] == [5]  # step 10's evaluation is the final one
    assert [s for s in range(1, 11) if save_due(s, cfg)] == [3, 6, 9, 10]


@pytest.mark.slow
def test_a_run_sets_up_processes_once_and_leaves_the_trainer_config_as_given(compose, tmp_path, monkeypatch):
    setups, seen = [], {}
    real_setup, real_train = distributed.setup, mmit.train.train

    def counted_setup(device_name):
        setups.append(device_name)
        return real_setup(device_name)

    def watched_train(model, tokenizer, batches, eval_sets, cfg, *args, **kwargs):
        seen["given"] = copy.deepcopy(cfg)
        summary = real_train(model, tokenizer, batches, eval_sets, cfg, *args, **kwargs)
        seen["after"] = cfg
        return summary

    monkeypatch.setattr(distributed, "setup", counted_setup)
    monkeypatch.setattr(mmit.train, "train", watched_train)
    overrides = [
        "+recipe=text_tiny",
        "data.source.n_train=16",
        "data.source.n_eval=4",
        "trainer.max_steps=2",
        "trainer.eval_before=none",
        "trainer.generate_samples=0",
        "trainer.eval_batches=1",
        "trainer.tensorboard=false",
    ]
    summary = mmit.train.run(compose(overrides), tmp_path / "run")
    assert setups == ["auto"]
    assert seen["given"].precision == "auto" and summary["precision"] in ("bf16", "fp32")
    assert seen["after"] == seen["given"]


def test_the_learning_rate_schedules():
    import torch

    from mmit.training.loop import lr_scheduler

    def rates(**options) -> list[float]:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = lr_scheduler(optimizer, TrainerConfig(max_steps=100, warmup_steps=10, **options))
        out = []
        for _ in range(100):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return out

    cosine, constant, wsd = rates(), rates(lr_schedule="constant"), rates(lr_schedule="wsd")
    for schedule in (cosine, constant, wsd):  # the same linear warm-up
        assert schedule[:11] == pytest.approx([s / 10 for s in range(11)])
    assert cosine[55] == pytest.approx(0.5) and cosine[99] == pytest.approx(0.5 * (1 - math.cos(math.pi / 90)))
    assert constant[10:] == [1.0] * 90
    # wsd: stable to step 80, then 1 - sqrt down to 0 over the last 20 steps
    assert wsd[10:81] == [1.0] * 71 and wsd[85] == pytest.approx(0.5) and wsd[99] == pytest.approx(1 - 0.95**0.5)
    assert rates(lr_schedule="wsd", lr_decay_fraction=0.5)[60] == pytest.approx(1 - 0.2**0.5)


@pytest.mark.parametrize("field", ["on_nonfinite", "eval_before", "lr_schedule", "loss_weighting"])
def test_a_bad_choice_stops_before_anything_runs(field):
    from mmit.training.loop import TRAINER_CHOICES, check_choices

    allowed = ", ".join(TRAINER_CHOICES[field])  # the list the command line is checked against too
    with pytest.raises(ValueError, match=f"trainer.{field} must be one of {allowed}, not 'sometimes'"):
        check_choices(TrainerConfig(**{field: "sometimes"}))
