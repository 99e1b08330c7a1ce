"""CUDA checks (``pytest -m gpu``; tools/gpu_check.sh runs them): tiny models give on the GPU what they give
on the CPU. Skipped where CUDA is unavailable, so CPU-only CI collects and skips them."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

CUDA = torch.device("cuda")
HAS_FLASH_ATTN = importlib.util.find_spec("flash_attn") is not None


@pytest.fixture(autouse=True)
def no_tf32():
    """fp32 on the GPU as on the CPU: cuDNN's convolutions (the CLIP patch embedding) default to TF32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _png(color: str):
    from mmit.data.samples import MediaRef

    out = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(out, format="PNG")
    return MediaRef("image", "png", data=out.getvalue())


def _conversations():
    from mmit.data.samples import Conversation, Message

    return [
        Conversation(
            "img", [Message("user", "<image>\nWhat color?"), Message("assistant", "red")], media=[_png("red")]
        ),
        Conversation("txt", [Message("user", "Say hi"), Message("assistant", "hi")]),
        Conversation(
            "two",
            [Message("user", "<image>\n<image>\nSame?"), Message("assistant", "no")],
            media=[_png("red"), _png("blue")],
        ),
    ]


@pytest.fixture(scope="module")
def mm_cuda(build_tiny_multimodal):
    """A tiny LLM + tiny CLIP tower + MLP projector on the GPU, wired as mmit does (as tests/models do)."""
    torch.manual_seed(0)
    model, tokenizer, slot = build_tiny_multimodal()
    return model.to(CUDA), tokenizer, slot


def _samples(model, tokenizer, slot):
    from mmit.data.collate import Collator
    from mmit.data.tokenize import tokenize_conversation

    collate = Collator(tokenizer.pad_token_id, preprocess={"image": model.encoders["image"].preprocess})
    samples = [tokenize_conversation(c, tokenizer, 512, slots=[slot])[0] for c in _conversations()]
    return collate, samples


def _losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in records if "train/loss" in r]


def test_training_losses_on_cuda_equal_the_cpu_ones(tmp_path_factory):
    """The tiny VQA recipe (encoder every step, LoRA, fp32): the same per-step losses on either device."""
    from hydra import compose, initialize_config_dir

    from mmit.paths import CONF_DIR
    from mmit.train import run

    root = tmp_path_factory.mktemp("cuda-vs-cpu")
    overrides = [
        "+recipe=vqa_tiny",
        f"data.source.overrides=['prepare.n_images=24','out_dir={root}/demo','prepare.out_dir={root}/demo-src']",
        "trainer.batch_size=4",
        "trainer.max_steps=5",
        "trainer.warmup_steps=1",
        "trainer.log_every=1",
        "trainer.eval_before=none",
        "trainer.eval_every=1000",
        "trainer.save_every=1000",
        "trainer.eval_batches=1",
        "trainer.generate_samples=1",
        "trainer.max_new_tokens=2",
        "trainer.precision=fp32",
        "trainer.tensorboard=false",
    ]
    losses, summaries = {}, {}
    for device in ("cpu", "cuda"):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[*overrides, f"trainer.device={device}"])
        summaries[device] = run(cfg, root / device)
        losses[device] = _losses(root / device)
    assert str(summaries["cuda"]["device"]).startswith("cuda") and summaries["cpu"]["device"] == "cpu"
    assert len(losses["cuda"]) == len(losses["cpu"]) == 5
    # fp32 both sides (TF32 off): only summation order differs; five updates keep that far below 1e-3.
    torch.testing.assert_close(
        torch.tensor(losses["cuda"]), torch.tensor(losses["cpu"]), rtol=2e-3, atol=2e-3, check_dtype=False
    )


def test_bf16_autocast_on_cuda_runs_and_is_finite(mm_cuda):
    from mmit.training.device import autocast
    from mmit.training.loss import next_token_loss_sum

    model, tokenizer, slot = mm_cuda
    collate, samples = _samples(model, tokenizer, slot)
    batch = collate(samples).to(CUDA)
    model.train()
    try:
        losses = {}
        for precision in ("fp32", "bf16"):
            model.zero_grad(set_to_none=True)
            with autocast(CUDA, precision):
                loss = next_token_loss_sum(model(batch), batch.labels, model.output_head) / batch.num_label_tokens
            loss.backward()
            grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
            assert grads and all(torch.isfinite(g).all() for g in grads), precision
            losses[precision] = loss.item()
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=5e-2)


ATTENTIONS = ["packed_sdpa", "sdpa", "eager"] + (["flash_attention_2"] if HAS_FLASH_ATTN else [])


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_packed_and_padded_batches_give_equal_losses_on_cuda(mm_cuda, attention):
    from mmit.models.attention import NAME
    from mmit.training.device import autocast
    from mmit.training.loss import next_token_loss_sum

    model, tokenizer, slot = mm_cuda
    collate, samples = _samples(model, tokenizer, slot)
    from mmit.training.packing import pack_batch

    padded = collate(samples)
    packed = pack_batch(padded, len(samples[0].input_ids) + len(samples[1].input_ids), tokenizer.pad_token_id).to(CUDA)
    padded = padded.to(CUDA)
    # flash-attention has no fp32 kernel: that one runs under bf16 autocast, with a bf16 tolerance.
    precision, tol = ("bf16", 2e-2) if attention == "flash_attention_2" else ("fp32", 1e-4)
    model.base_llm.set_attn_implementation(attention)
    try:
        with torch.no_grad(), autocast(CUDA, precision):
            padded_loss = next_token_loss_sum(model(padded), padded.labels, model.output_head)
            packed_loss = next_token_loss_sum(model(packed), packed.labels, model.output_head)
    finally:
        model.base_llm.set_attn_implementation(NAME)
    assert packed.num_label_tokens == padded.num_label_tokens
    assert torch.isfinite(padded_loss)
    torch.testing.assert_close(packed_loss.float(), padded_loss.float(), rtol=tol, atol=tol)


def test_generation_with_and_without_kv_cache_agree_on_cuda(mm_cuda):
    from mmit.generation import GenerationOptions, generate_answers

    model, tokenizer, _ = mm_cuda
    convs = _conversations()
    pre = {"image": model.encoders["image"].preprocess}
    cached = generate_answers(model, tokenizer, convs, GenerationOptions(8), preprocess=pre, use_cache=True)
    uncached = generate_answers(model, tokenizer, convs, GenerationOptions(8), preprocess=pre, use_cache=False)
    assert cached == uncached and len(cached) == 3
