"""A tiny run end to end: loss goes down, checkpoints are safe files, the adapter reloads."""

import json
import platform
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from mmit.data.collate import Collator
from mmit.data.sources import read_conversations
from mmit.data.tokenize import tokenize_conversation
from mmit.factory import build_model
from mmit.models.llm import load_tiny
from mmit.models.multimodal_lm import MultimodalLM
from mmit.train import run
from mmit.training.checkpoint import latest_checkpoint, load_trainable

# A small, learnable task: few distinct answers, many repeats.
OVERRIDES = [
    "+recipe=text_tiny",
    "data.source.n_train=64",
    "data.source.n_eval=16",
    "data.source.max_turns=1",
    "trainer.max_steps=40",
    "trainer.lr=1e-2",
    "trainer.warmup_steps=2",
    "trainer.eval_every=20",
    "trainer.save_every=20",
    "trainer.log_every=1",
    "trainer.generate_samples=4",
    "trainer.precision=fp32",
    "trainer.vqa_normalisation=lmms_eval",
    "peft.config.r=8",
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from hydra import compose, initialize_config_dir

    from mmit.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=OVERRIDES)
    run_dir = tmp_path_factory.mktemp("run")
    summary = run(cfg, run_dir)
    return cfg, run_dir, summary


@pytest.mark.slow
def test_loss_goes_down(trained_run):
    _, run_dir, summary = trained_run
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["train/loss"] for r in records if "train/loss" in r]
    # Length-grouped batches make single steps noisy: compare the first and last quarters.
    quarter = len(train_losses) // 4
    assert sum(train_losses[-quarter:]) < 0.85 * sum(train_losses[:quarter])
    for name in ("seen", "heldout"):
        assert summary["after"][f"eval/{name}/loss"] < 0.9 * summary["before"][f"eval/{name}/loss"]
        assert 0.0 <= summary["after"][f"eval/{name}/exact_match"] <= 1.0


@pytest.mark.slow
def test_run_directory_holds_only_safe_files(trained_run):
    _, run_dir, _ = trained_run
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "summary.md",
        "summary.json",
        "answers_before.json",
        "answers_after.json",
    ):
        assert (run_dir / name).exists(), name
    during = json.loads((run_dir / "answers_step-0000020.json").read_text())  # the in-loop evaluation at step 20
    after = json.loads((run_dir / "answers_after.json").read_text())
    assert during.keys() == after.keys() and [len(v) for v in during.values()] == [len(v) for v in after.values()]
    assert not (run_dir / "answers_step-0000040.json").exists()  # the last step's is answers_after.json
    ckpt = latest_checkpoint(run_dir)
    assert ckpt.name == "step-0000040"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", "step-0000020", "step-0000040"]
    suffixes = {p.suffix for p in ckpt.rglob("*") if p.is_file()}
    assert suffixes <= {".safetensors", ".json", ".md"}, suffixes  # peft adds a README.md model card
    assert (ckpt / "adapter" / "adapter_model.safetensors").exists()
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 40 and set(state["data"]) == {"epoch", "index", "samples", "data"}
    assert "| eval/heldout/loss |" in (run_dir / "summary.md").read_text()
    assert json.loads((run_dir / "summary.json").read_text())["vqa_normalisation"] == "lmms_eval"


def _heldout_batch(run_dir, tokenizer):
    """A few held-out samples, from the data config saved (resolved) in the run directory."""
    import yaml

    from mmit.data.demo.text import prepare_text_skills

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["trainer"]["max_steps"] == 40
    source = {k: v for k, v in cfg["data"]["source"].items() if k != "_target_"}
    convs = read_conversations(prepare_text_skills(**source).eval["heldout"])[:4]
    return Collator(tokenizer.pad_token_id)([tokenize_conversation(c, tokenizer, 512)[0] for c in convs])


def _logits(model, batch):
    model = model if isinstance(model, MultimodalLM) else MultimodalLM(model)
    with torch.no_grad():
        return model.eval().logits(batch)


@pytest.mark.slow
def test_saved_adapter_reproduces_trained_logits(trained_run):
    cfg, run_dir, _ = trained_run
    ckpt = latest_checkpoint(run_dir)
    # The run's own model: rebuilt from the config, trained weights loaded from safetensors.
    rebuilt = build_model(cfg)
    load_trainable(rebuilt.model, ckpt)
    # The same through plain peft, as another tool would load it.
    base = load_tiny(**{k: v for k, v in cfg.llm.items() if k != "_target_"})
    peft_model = PeftModel.from_pretrained(base.model, ckpt / "adapter")
    untrained = load_tiny(**{k: v for k, v in cfg.llm.items() if k != "_target_"}).model

    batch = _heldout_batch(run_dir, base.tokenizer)
    ours, via_peft, before = _logits(rebuilt.model, batch), _logits(peft_model, batch), _logits(untrained, batch)
    torch.testing.assert_close(ours, via_peft, rtol=1e-4, atol=1e-4)
    assert (ours - before).abs().max() > 1e-2  # the adapter really changed the model


@pytest.mark.slow
def test_resume_continues_from_the_latest_checkpoint(trained_run, compose, tmp_path):
    cfg, run_dir, _ = trained_run
    longer = compose(OVERRIDES[:-1] + ["peft.config.r=8", "trainer.max_steps=45"])
    summary = run(longer, run_dir)
    assert summary["resumed_from_step"] == 40 and summary["steps"] == 45
    assert latest_checkpoint(run_dir).name == "step-0000045"


FAST_PATHS = [
    "trainer.pack_length=384",
    "trainer.gradient_checkpointing=true",
    "trainer.prefetch=0",
    "trainer.release_memory=true",
    "feature_cache=auto",
]


PLAIN = ["feature_cache=null", "trainer.pack_length=0"]  # the fast paths are the defaults: turned off


@pytest.mark.parametrize("fast_paths", [PLAIN, FAST_PATHS])
@pytest.mark.slow
def test_vqa_runs_report_official_vqa_accuracy(compose, tmp_path, fast_paths):
    out = tmp_path / "demo"
    cfg = compose(
        [
            "+recipe=vqa_tiny",
            "trainer.max_steps=2",
            "trainer.generate_samples=6",
            "trainer.eval_batches=1",
            f"data.source.overrides=['prepare.n_images=40','out_dir={out}','prepare.out_dir={out}-src']",
            *fast_paths,
        ]
    )
    summary = run(cfg, tmp_path / "run")
    assert summary["final_train_loss"] == summary["final_train_loss"]  # finite, not NaN
    if fast_paths == FAST_PATHS:
        assert summary["feature_cache_hits"] > 0 and summary["feature_cache_misses"] == 0
        from mmit.data.features import FeatureStore

        cache = summary["feature_cache"]["image"]
        assert len(FeatureStore(Path(cache["dir"]).expanduser())) == cache["items"] >= 40
        assert cache["encoded_now"] <= 40  # each of the 40 demo images encoded at most once, for all splits
    assert 0.0 <= summary["after"]["eval/seen/vqa_accuracy"] <= 1.0
    assert "eval/heldout_tasks/vqa_accuracy" not in summary["after"]  # detailed captions are not VQA


def test_pack_length_shorter_than_samples_is_refused(compose):
    from mmit.factory import build_trainer_config

    with pytest.raises(ValueError, match="pack_length=64 is shorter than data.max_length"):
        build_trainer_config(compose(["+recipe=vqa_tiny", "trainer.pack_length=64"]))


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_heap_memory_goes_back_to_the_os():
    from mmit.training.device import release_freed_memory

    def rss_kib() -> int:
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS"))

    # Many mid-sized blocks from the heap (below glibc's mmap threshold); every other one freed, so
    # the free space is in holes that plain free() cannot give back.
    blocks = [bytearray(60_000) for _ in range(4000)]
    del blocks[::2]
    before = rss_kib()
    assert release_freed_memory()
    assert before - rss_kib() > 50_000  # of the ~117 MiB in holes, most returns


@pytest.mark.slow
def test_decode_workers_train_exactly_as_the_prefetch_thread(compose, tmp_path, monkeypatch):
    from mmit.data import collate

    pools, real_pool = [], collate.decode_pool
    monkeypatch.setattr(
        collate, "decode_pool", lambda fns, workers: pools.append((sorted(fns), workers)) or real_pool(fns, workers)
    )
    out = tmp_path / "demo"
    losses = {}
    for workers in (0, 2):
        cfg = compose(
            [
                "+recipe=vqa_tiny",
                "trainer.max_steps=3",
                "trainer.log_every=1",
                "trainer.eval_before=none",
                "trainer.generate_samples=0",
                "trainer.eval_batches=1",
                "feature_cache=null",  # the images are decoded every step
                f"trainer.decode_workers={workers}",
                f"data.source.overrides=['prepare.n_images=40','out_dir={out}','prepare.out_dir={out}-src']",
            ]
        )
        run(cfg, tmp_path / f"run{workers}")
        rows = [json.loads(line) for line in (tmp_path / f"run{workers}" / "metrics.jsonl").read_text().splitlines()]
        losses[workers] = [r["train/loss"] for r in rows if "train/loss" in r]
    assert pools == [(["image"], 2)]  # only the run with workers made a pool
    assert len(losses[0]) == 3 and losses[2] == losses[0]


@pytest.mark.slow
def test_the_video_pipeline_trains_reads_its_clips_from_the_cache_and_reports_grounding(compose, tmp_path):
    out = tmp_path / "demo"
    cfg = compose(
        [
            "+recipe=video_qa_tiny",
            "trainer.max_steps=4",
            "trainer.eval_every=4",
            "trainer.generate_samples=4",
            f"data.source.overrides=['prepare.n_clips=16','prepare.n_heldout_clips=6','out_dir={out}','prepare.out_dir={out}-src']",
        ]
    )
    summary = run(cfg, tmp_path / "run")
    assert summary["feature_cache_hits"] > 0 and summary["feature_cache_misses"] == 0
    video_cache = summary["feature_cache"]["video"]
    assert video_cache["items"] >= 16 and "video-" in video_cache["dir"]  # a folder of its own, keyed by sampling
    tasks = summary["grounding"]["heldout_templates"]
    video_tasks = {task: g for task, g in tasks.items() if task.startswith("video_")}
    assert video_tasks and any("dependence" in g for g in video_tasks.values())  # answered with swapped clips too
