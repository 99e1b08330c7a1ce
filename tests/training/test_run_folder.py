"""Training into a folder that holds a run with another config: refused before anything is written,
with a message that says so and what to do."""

from __future__ import annotations

import json

import pytest
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
