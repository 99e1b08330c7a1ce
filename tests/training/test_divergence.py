"""After a divergence the printed advice works: no exploded checkpoint is ever written, the advice
names the last good one, a rerun with a lower learning rate really uses it, and config.yaml only
ever says what the run used (changes a checkpoint cannot honour are refused)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import yaml
from transformers import get_cosine_schedule_with_warmup

from mmit.train import run
from mmit.training.checkpoint import latest_checkpoint, save_checkpoint

TEXT = [
    "+recipe=text_tiny",
    "data.source.n_train=48",
    "data.source.n_eval=4",
    "trainer.max_steps=10",
    "trainer.save_every=1",
    "trainer.keep_last=3",
    "trainer.eval_every=1000",
    "trainer.log_every=1",
    "trainer.warmup_steps=2",
    "trainer.generate_samples=0",
    "trainer.eval_batches=1",
    "trainer.precision=fp32",
    "trainer.tensorboard=false",
]


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def explode_after(monkeypatch):
    """explode_after(n): the n-th optimizer step leaves every trained weight near 1e30 (finite), as a
    far too high learning rate does a step or two before the loss turns NaN."""

    def install(n: int):
        real = torch.optim.AdamW.step
        calls = {"n": 0}

        def step(self, *args, **kwargs):
            out = real(self, *args, **kwargs)
            calls["n"] += 1
            if calls["n"] == n:
                with torch.no_grad():
                    for group in self.param_groups:
                        for p in group["params"]:
                            p.add_(1e30)
            return out

        monkeypatch.setattr(torch.optim.AdamW, "step", step)

    return install


def test_an_exploded_checkpoint_is_refused_and_the_advice_names_the_last_good_one(compose, tmp_path, explode_after):
    from mmit.training.checkpoint import DivergedError

    explode_after(5)
    with pytest.raises(DivergedError) as stopped:
        run(compose(TEXT), tmp_path / "run")
    advice = str(stopped.value)
    assert "step-0000004" in advice and "trainer.lr" in advice
    assert latest_checkpoint(tmp_path / "run").name == "step-0000004"
    assert not (tmp_path / "run" / "checkpoints" / "step-0000005").exists()


@pytest.mark.slow
def test_the_rerun_the_advice_asks_for_uses_the_lower_learning_rate(compose, tmp_path, explode_after, caplog):
    explode_after(5)
    run_dir = tmp_path / "run"
    with pytest.raises(Exception, match="step-0000004"):
        run(compose([*TEXT, "trainer.lr=3e-3"]), run_dir)
    explode_after(10_000)  # the rerun does not blow up
    with caplog.at_level(logging.INFO):
        summary = run(compose([*TEXT, "trainer.lr=1e-4"]), run_dir)
    assert summary["resumed_from_step"] == 4
    assert "trainer.lr" in caplog.text and "0.003" in caplog.text and "0.0001" in caplog.text
    # The learning rate each step logged is the new base rate on the run's schedule.
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = get_cosine_schedule_with_warmup(probe, 2, 10)
    factors = {}
    for step in range(1, 11):
        probe.step()
        schedule.step()
        factors[step] = schedule.get_last_lr()[0]
    logged = {r["step"]: r["lr"] for r in _records(run_dir) if "lr" in r}
    for step in range(5, 10):
        assert logged[step] == pytest.approx(1e-4 * factors[step], rel=1e-6), step
    # config.yaml says what the run uses now; what it used before is kept beside it.
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["lr"] == pytest.approx(1e-4)
    assert yaml.safe_load((run_dir / "config.step-0000004.yaml").read_text())["trainer"]["lr"] == pytest.approx(3e-3)


def test_a_nan_stop_names_the_last_good_checkpoint(compose, tmp_path, monkeypatch):
    from mmit.training import loop

    real = loop.next_token_loss_sum
    calls = {"n": 0}

    def nan_at_6(*args, **kwargs):
        loss = real(*args, **kwargs)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 6:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(loop, "next_token_loss_sum", nan_at_6)
    with pytest.raises(loop.NonFiniteLossError) as stopped:
        run(compose([*TEXT, "trainer.on_nonfinite=stop"]), tmp_path / "run")
    assert "step-0000005" in str(stopped.value) and "trainer.lr" in str(stopped.value)


@pytest.mark.slow
def test_a_resume_refuses_changes_the_checkpoint_cannot_honour(compose, tmp_path):
    from mmit.training.checkpoint import ResumeConfigError

    run_dir = tmp_path / "run"
    run(compose([*TEXT, "trainer.max_steps=2"]), run_dir)
    saved = (run_dir / "config.yaml").read_text()
    for change in ("trainer.batch_size=2", "peft.config.r=4", "data.source.n_train=40", "seed=1"):
        with pytest.raises(ResumeConfigError) as refused:
            run(compose([*TEXT, "trainer.max_steps=4", change]), run_dir)
        key = change.split("=")[0]
        assert key in str(refused.value) and "init_from" in str(refused.value)
        assert (run_dir / "config.yaml").read_text() == saved  # never rewritten to what did not run
    summary = run(compose([*TEXT, "trainer.max_steps=4", "trainer.log_every=2"]), run_dir)  # these it honours
    assert summary["resumed_from_step"] == 2


@pytest.mark.slow
def test_a_resume_on_edited_training_data_is_refused(compose, tmp_path, caplog):
    # The config is the same; the file it names is not. The run went on at a position of another order.
    from mmit.data.loader import DataChangedError

    data = tmp_path / "train.jsonl"
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    lines = [
        json.dumps({"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": w}]})
        for w in words
    ]
    data.write_text("\n".join(lines) + "\n")
    files = [*TEXT[3:], "data=files", f"data.source.train=[{data}]", "trainer.batch_size=2"]
    run_dir = tmp_path / "run"
    run(compose(["+recipe=text_tiny", *files, "trainer.max_steps=2"]), run_dir)
    data.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(
        DataChangedError, match=r"step-0000002: the training data differ .* \(10 samples then, 9 now\); .*init_from="
    ):
        run(compose(["+recipe=text_tiny", *files, "trainer.max_steps=4"]), run_dir)
    data.write_text("\n".join(lines) + "\n")  # the same data again: it resumes
    assert run(compose(["+recipe=text_tiny", *files, "trainer.max_steps=4"]), run_dir)["resumed_from_step"] == 2
    with caplog.at_level(logging.WARNING, logger="mmit.factory"):  # more than the data: said, not silent
        run(compose(["+recipe=text_tiny", *files, "trainer.batch_size=16", "trainer.max_steps=1"]), tmp_path / "big")
    assert "trainer.batch_size=16 is more than the 10 training samples: each step takes all 10" in caplog.text


def test_save_checkpoint_compares_the_weights_with_the_previous_checkpoint(tmp_path):
    from mmit.training.checkpoint import DivergedError

    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {})
    with torch.no_grad():
        model.weight.mul_(3.0)  # ordinary growth
    save_checkpoint(tmp_path, 2, model, optimizer, scheduler, {})
    with torch.no_grad():
        model.weight.mul_(1e6)  # exploded, still finite
    with pytest.raises(DivergedError, match="step-0000002"):
        save_checkpoint(tmp_path, 3, model, optimizer, scheduler, {})
    assert latest_checkpoint(tmp_path).name == "step-0000002"
