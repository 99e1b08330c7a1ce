"""Faults and scale: kill -9 then resume (bitwise), NaN losses, pickles refused, 2 processes (DDP, FSDP2)."""

import json
import os
import pickle
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmit.train import run
from mmit.training.checkpoint import latest_checkpoint, load_matching, load_trainable, read_safetensors, save_checkpoint
from mmit.training.loop import NonFiniteLossError

TEXT = [
    "+recipe=text_tiny",
    "data.source.n_train=96",
    "data.source.n_eval=8",
    "trainer.max_steps=24",
    "trainer.save_every=4",
    "trainer.eval_every=1000",
    "trainer.log_every=1",
    "trainer.generate_samples=0",
    "trainer.eval_batches=1",
    "trainer.precision=fp32",
    "trainer.deterministic=true",
    "trainer.tensorboard=false",
]


def _losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def _train_command(run_dir: Path, overrides: list[str], processes: int = 1) -> list[str]:
    launcher = [sys.executable, "-m", "mmit.train"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "-m", "mmit.train"]
    return [*launcher, *overrides, f"hydra.run.dir={run_dir}"]


@pytest.mark.slow
def test_kill_9_then_resume_gives_bitwise_the_uninterrupted_weights(compose, tmp_path):
    reference = tmp_path / "reference"
    run(compose(TEXT), reference)

    killed = tmp_path / "killed"
    kill_after = random.randint(6, 18)  # a step between checkpoints, mid-run
    proc = subprocess.Popen(_train_command(killed, TEXT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (killed / "metrics.jsonl").exists() and max(_losses(killed), default=0) >= kill_after:
            break
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no cleanup of any kind
    proc.wait()
    interrupted_at = max(_losses(killed), default=0)
    assert 0 < interrupted_at < 24, f"the run was not interrupted mid-way (step {interrupted_at})"
    ckpt = latest_checkpoint(killed)
    assert ckpt is not None and (ckpt / "state.json").exists()  # `latest` names a complete checkpoint

    subprocess.run(_train_command(killed, TEXT), check=True, capture_output=True, timeout=300)
    summary = json.loads((killed / "summary.json").read_text())
    assert 0 < summary["resumed_from_step"] <= interrupted_at
    final, expected = (
        load_file(latest_checkpoint(killed) / "trainable.safetensors"),
        load_file(latest_checkpoint(reference) / "trainable.safetensors"),
    )
    assert final.keys() == expected.keys()
    for name in expected:
        assert torch.equal(final[name], expected[name]), name  # bitwise
    # The data position came back too: every step saw the same batch, so the losses agree, and
    # the log holds each step once (what the killed run logged past its checkpoint was dropped).
    assert _losses(killed) == _losses(reference)
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in steps if s] == sorted(s for s in steps if s)


@pytest.fixture
def nan_at(monkeypatch):
    """nan_at(steps): the loss of those (1-based) optimizer steps becomes NaN."""
    import mmit.training.loop as loop

    real = loop.next_token_loss_sum

    def install(steps):
        calls = {"n": 0}

        def patched(*args, **kwargs):
            loss = real(*args, **kwargs)
            if not torch.is_grad_enabled():  # evaluation
                return loss
            calls["n"] += 1  # one micro-batch per step here
            return loss * float("nan") if calls["n"] in steps else loss

        monkeypatch.setattr(loop, "next_token_loss_sum", patched)

    return install


@pytest.mark.slow
def test_nan_loss_skips_the_update_and_is_counted(compose, tmp_path, nan_at):
    nan_at({3, 4})
    summary = run(compose([*TEXT, "trainer.max_steps=8"]), tmp_path / "run")
    assert summary["skipped_steps"] == 2
    weights = load_file(latest_checkpoint(tmp_path / "run") / "trainable.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert "updates skipped for a NaN" in (tmp_path / "run" / "summary.md").read_text()


def test_nan_loss_stops_when_asked_and_keeps_the_last_good_checkpoint(compose, tmp_path, nan_at):
    nan_at({6})
    with pytest.raises(NonFiniteLossError, match="step 6: non-finite loss"):
        run(compose([*TEXT, "trainer.on_nonfinite=stop"]), tmp_path / "run")
    assert latest_checkpoint(tmp_path / "run").name == "step-0000004"


def test_too_many_nan_steps_in_a_row_stop_the_run(compose, tmp_path, nan_at):
    nan_at({2, 3, 4})
    with pytest.raises(NonFiniteLossError, match="3 in a row"):
        run(compose([*TEXT, "trainer.max_nonfinite_skips=2"]), tmp_path / "run")


def test_a_nan_checkpoint_is_never_written(tmp_path):
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    with pytest.raises(ValueError, match="NaN / inf weights"):
        save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {})
    assert latest_checkpoint(tmp_path) is None and not (tmp_path / "checkpoints").exists()


class _Exploit:
    """Unpickling this creates a file: proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_malicious_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weight": _Exploit(marker)})
    model = torch.nn.Linear(2, 2)
    for name in ("evil.pt", "evil.bin"):
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(ValueError, match="never unpickles"):
            load_matching(model, tmp_path / name)  # init_from=<a pickle file>
    fake = tmp_path / "run" / "checkpoints" / "step-0000001"  # a pickle dressed as a checkpoint
    fake.mkdir(parents=True)
    (fake / "trainable.safetensors").write_bytes(payload)
    (fake.parent / "latest").write_text("step-0000001\n")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_matching(model, tmp_path / "run")
    with pytest.raises(ValueError, match="not a safetensors file"):
        read_safetensors(fake / "trainable.safetensors")
    assert not marker.exists()


def test_a_checkpoint_of_other_shapes_is_refused_not_broadcast(tmp_path):
    """copy_ broadcasts: a handed checkpoint with a scalar under every name would load as a model of
    constants. The weights file and the tensor are named instead."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    ckpt = tmp_path / "step-0000001"
    ckpt.mkdir()
    save_file({n: torch.tensor(7.0) for n, _ in model.named_parameters()}, ckpt / "trainable.safetensors")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(
        ValueError, match=r"trainable\.safetensors: tensors of another shape .*0\.weight \[\] \(the model's \[4, 3\]\)"
    ):
        load_trainable(model, ckpt)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def test_a_damaged_checkpoint_state_is_named(tmp_path):
    from mmit.training.checkpoint import read_state

    for text in ("{", '{"step": "3"}', "[3]", '{"step": -1}'):
        (tmp_path / "state.json").write_text(text)
        with pytest.raises(ValueError, match=f"{tmp_path / 'state.json'}: "):
            read_state(tmp_path)
    (tmp_path / "state.json").write_text('{"step": 3}')
    assert read_state(tmp_path) == {"step": 3}
    (tmp_path / "state.json").unlink()
    with pytest.raises(
        FileNotFoundError, match=rf"{tmp_path / 'state.json'}: missing, so checkpoint {tmp_path.name} cannot"
    ):
        read_state(tmp_path)


def test_init_from_copies_what_fits_and_names_what_does_not(tmp_path, caplog):
    """A stage-1 projector built on another encoder: its first layer has another input width."""
    stage1 = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.GELU(), torch.nn.Linear(4, 4))
    stage2 = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.GELU(), torch.nn.Linear(4, 4))
    save_file({n: p.detach().clone() for n, p in stage1.named_parameters()}, tmp_path / "stage1.safetensors")
    before = stage2[0].weight.detach().clone()
    with caplog.at_level("WARNING", logger="mmit.training.checkpoint"):
        copied = load_matching(stage2, tmp_path / "stage1.safetensors")
    assert sorted(copied) == ["0.bias", "2.bias", "2.weight"]  # a bias fits whatever feeds its layer
    assert torch.equal(stage2[2].weight, stage1[2].weight) and torch.equal(stage2[0].weight, before)
    assert "init_from: 1 of 4 tensors of" in caplog.text
    assert "0.weight [4, 6] here [4, 3]" in caplog.text


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
@pytest.mark.slow
def test_two_processes_match_one_and_survive_mixed_batches(strategy, compose, tmp_path):
    from mmit.factory import instantiate_source

    demo = tmp_path / "demo"
    vqa = [
        "+recipe=vqa_tiny",
        f"data.source.overrides=['prepare.n_images=24','out_dir={demo}','prepare.out_dir={demo}-src']",
    ]
    shards = instantiate_source(compose(vqa).data.source).train[0]  # build the image shards once
    text = tmp_path / "text.jsonl"
    with open(text, "w") as f:
        for i in range(40):
            f.write(json.dumps({"instruction": f"Say {i % 5}.", "output": str(i % 5)}) + "\n")
    # Image and text-only samples mixed: with one sample per process, often one process has an
    # image and the other none; the projector's gradient must still be reduced (no hang).
    common = [
        "+recipe=vqa_tiny",
        "data=files",
        f"data.source.train=[{shards},{text}]",
        "trainer.max_steps=8",
        "trainer.save_every=8",
        "trainer.log_every=1",
        "trainer.generate_samples=0",
        "trainer.group_by_length=0",
        "trainer.precision=fp32",
        "trainer.tensorboard=false",
        "trainer.lr=1e-3",
    ]
    if strategy == "fsdp2":  # FSDP2 shards layers whose frozen weights are bf16 and LoRA weights fp32
        common.append("frozen_dtype=bfloat16")
    one = tmp_path / "one"
    run(compose([*common, "trainer.batch_size=2"]), one)
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        _train_command(two, [*common, "trainer.batch_size=1", f"trainer.distributed={strategy}"], processes=2),
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((two / "summary.json").read_text())
    assert summary["processes"] == 2
    one_losses, two_losses = _losses(one), _losses(two)
    assert one_losses.keys() == two_losses.keys() == set(range(1, 9))
    for step in one_losses:  # the same global batches, gradients reduced over the two processes
        assert two_losses[step] == pytest.approx(one_losses[step], rel=1e-5), step
    # Only the first process wrote the run directory; the checkpoint holds one data position per process.
    state = json.loads((latest_checkpoint(two) / "state.json").read_text())
    assert len(state["data"]["per_rank"]) == 2


@pytest.mark.slow
def test_a_short_last_batch_with_fewer_rows_than_processes_completes_and_matches(compose, tmp_path):
    # 9 samples in global batches of 4: the epoch's last batch has one row, so the second process
    # has none and steps on a stand-in without loss; the losses equal one process's.
    common = [*TEXT, "data.source.n_train=9", "trainer.max_steps=3", "trainer.save_every=3"]
    one = tmp_path / "one"
    run(compose([*common, "trainer.batch_size=4"]), one)
    two = tmp_path / "two"
    result = subprocess.run(
        _train_command(two, [*common, "trainer.batch_size=2", "trainer.distributed=ddp"], processes=2),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one_losses, two_losses = _losses(one), _losses(two)
    assert one_losses.keys() == two_losses.keys() == {1, 2, 3}
    for step in one_losses:
        assert two_losses[step] == pytest.approx(one_losses[step], rel=1e-5), step


def test_tar_member_names_never_escape(tmp_path):
    """Shards from elsewhere are read in memory; what mmit writes has names of its own making."""
    import io
    import re
    import tarfile

    from PIL import Image

    from mmit.data.annotations import read_caption_shards
    from mmit.data.samples import Conversation, MediaRef, Message, SampleError
    from mmit.data.shards import TarWriter, encode_sample

    png = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(png, format="PNG")
    evil = tmp_path / "in" / "evil.tar"
    evil.parent.mkdir()
    with tarfile.open(evil, "w") as tar:
        for name, data in (("../../escaped.png", png.getvalue()), ("../../escaped.txt", b"a red square")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    [(where, refused)] = list(read_caption_shards([str(evil)]))  # an img2dataset shard, crafted
    assert isinstance(refused, SampleError) and refused.reason == "bad_member_name", refused
    assert where == f"{evil}:../../escaped" and "'../../escaped.png' leaves the shard's own names" in str(refused)
    assert not list(tmp_path.rglob("escaped*"))  # nothing was extracted anywhere

    media = [MediaRef("image", "png", data=png.getvalue())]
    conv = Conversation("../../x", [Message("user", "<image>\nhi"), Message("assistant", "ok")], {}, media)
    out = tmp_path / "out" / "shard-000000.tar"
    out.parent.mkdir()
    with TarWriter(out) as tar:
        for name, data in encode_sample("shard-000000-000000", [conv], conv.media):
            tar.add(name, data)
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert names and all(re.fullmatch(r"shard-\d{6}-\d{6}\.[\w.]+", n) for n in names), names
