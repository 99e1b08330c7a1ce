"""Models and batches for B1-B6, built through mmit's own code: LLM shapes (random weights), mmit's
text-only and image+text models, the same weights as a plain LLaVA, batches, losses and one training step."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from bench.plan import Plan

LABEL_FRACTION = 0.25  # labelled (assistant) share of the tokens in the text benchmarks


# --- LLM and vision tower shapes --------------------------------------------------------------


def llama(hidden: int, layers: int, heads: int, kv_heads: int, mlp: int, vocab: int, positions: int, **extra) -> dict:
    """A LlamaConfig's sizes (head_dim 64 unless given; tied embeddings)."""
    return dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=extra.pop("head_dim", 64),
        intermediate_size=mlp,
        vocab_size=vocab,
        max_position_embeddings=positions,
        tie_word_embeddings=True,
        **extra,
    )


# SmolLM2-135M-Instruct (mmit's llm=smollm2_135m) as a Llama config; weights are random here.
SMOLLM2_135M = llama(576, 30, 9, 3, mlp=1536, vocab=49152, positions=8192, rms_norm_eps=1e-5)
PUBLISHED_DTYPE = torch.bfloat16  # the dtype SmolLM2 (and most hub LLMs) is published in: config.json's "dtype"
# Qwen2.5-0.5B's shape as a Llama (no QKV bias): the 0.5B-class LLM of the GPU runs.
LLM_05B_CLASS = llama(896, 24, 14, 2, mlp=4864, vocab=151936, positions=8192)
TINY_LLM = llama(64, 2, 4, 2, mlp=128, vocab=2048, positions=1024, head_dim=16)
# B1, B2 and B4's towers: at the sizes users train, SmolLM2-135M beside ViT-B/32 (CPU: 49 patches at
# 224 px) or ViT-B/16 (GPU: 196 patches).
VIT_B32 = dict(
    image_size=224, patch_size=32, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12
)
VIT_B16 = dict(
    image_size=224, patch_size=16, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12
)
VIT_TINY = dict(
    image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
)


def build_llm(shape: dict, seed: int = 0):
    """A random-weight Llama with the given shape (sdpa attention, as mmit loads LLMs)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(LlamaConfig(**shape), attn_implementation="sdpa")


def lora_config():
    """The peft config of ``peft=lora`` (conf/peft/lora.yaml), instantiated as mmit's factory does."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from mmit.paths import CONF_DIR

    return instantiate(OmegaConf.load(CONF_DIR / "peft" / "lora.yaml").config, _convert_="all")


def text_model(shape: dict, tuning: str, device: str, frozen_dtype: str = "auto"):
    """mmit's text-only model (MultimodalLM without encoders) with the LLM tuned as ``peft=<tuning>``,
    its frozen weights kept as ``frozen_dtype=auto`` keeps a checkpoint published in bf16 (SmolLM2 is)."""
    from mmit.models.multimodal_lm import MultimodalLM
    from mmit.models.tuning import apply_tuning, narrow_frozen, resolve_frozen_dtype

    llm = apply_tuning(build_llm(shape), tuning, lora_config() if tuning == "lora" else None, name="llm")
    dtype = resolve_frozen_dtype(frozen_dtype, PUBLISHED_DTYPE)
    if dtype is not None:
        narrow_frozen(llm, dtype)
    return MultimodalLM(llm).to(device).train()


def text_batch(batch: int, seq: int, vocab: int, device: str, seed: int = 0):
    """Full rows of random tokens; the last quarter of each row is labelled (the answer)."""
    from mmit.data.collate import Batch
    from mmit.data.samples import IGNORE_INDEX

    ids = torch.randint(vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))
    labels = torch.full_like(ids, IGNORE_INDEX)
    answer = max(2, round(seq * LABEL_FRACTION))
    labels[:, seq - answer :] = ids[:, seq - answer :]
    return Batch(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, ids=[]).to(device)


def labelled_loss(model, batch) -> torch.Tensor:
    """mmit's training loss: the output head at labelled positions only."""
    from mmit.training.loss import next_token_loss_sum

    return next_token_loss_sum(model(batch), batch.labels, model.output_head)


def full_logits_loss(model, batch) -> torch.Tensor:
    """The usual way: logits at every position, then cross-entropy that ignores unlabelled ones."""
    from mmit.data.samples import IGNORE_INDEX

    logits = model.logits(batch)[:, :-1]
    targets = batch.labels[:, 1:]
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )


LOSSES = {"labelled": labelled_loss, "full": full_logits_loss}


def precision_for(device: str) -> str:
    """What ``trainer.precision=auto`` picks on this machine (bf16 on CUDA and AMX CPUs, else fp32)."""
    from mmit.training.loop import resolve_precision

    return resolve_precision("auto", torch.device(device))


def training_step(model, batch, loss_name: str, precision: str, device: str, optimizer=None) -> float:
    """Forward and backward (and an AdamW update when given one), as mmit's loop does them."""
    from mmit.training.distributed import clip_grad_norm
    from mmit.training.loop import autocast

    with autocast(torch.device(device), precision):
        loss = LOSSES[loss_name](model, batch) / max(batch.num_label_tokens, 1)
    loss.backward()
    if optimizer is not None:
        clip_grad_norm(model, 1.0)
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return float(loss.detach())


def make_optimizer(model):
    from mmit.training.loop import TrainerConfig, param_groups

    return torch.optim.AdamW(param_groups(model, TrainerConfig()), weight_decay=0.0)


# --- B1, B2 and B4: a CLIP tower, a Llama and mmit's model of them ---------------------------


def save_b4_models(plan: Plan) -> tuple[Path, Path]:
    """A random CLIP vision tower (+ image processor) and a random Llama (+ mmit's tiny BPE tokenizer)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from mmit.models.llm import build_tiny_tokenizer

    clip_dir, llm_dir = plan.tmp / "b4-vision", plan.tmp / "b4-llm"
    side = plan.b4_vision["image_size"]
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(**plan.b4_vision)).save_pretrained(clip_dir)
    CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}).save_pretrained(
        clip_dir
    )
    tokenizer = build_tiny_tokenizer(512)
    config = LlamaConfig(
        **plan.b4_llm,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(1)
    LlamaForCausalLM(config).save_pretrained(llm_dir)
    tokenizer.save_pretrained(llm_dir)
    return clip_dir, llm_dir


def build_mmit_b4(clip_dir: Path, llm_dir: Path):
    """The model exactly as ``python -m mmit.train`` builds it: Hydra config -> mmit.factory.build_model."""
    from hydra import compose, initialize_config_dir

    from mmit.factory import build_model
    from mmit.paths import CONF_DIR

    overrides = [
        "llm=hf",
        f"llm.name_or_path={llm_dir}",
        "vision_encoder=hf_clip",
        f"vision_encoder.name_or_path={clip_dir}",
        "projector=mlp",
        "peft=lora",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    return build_model(cfg), cfg


def naive_llava(mmit_model, device: str):
    """The same weights as a transformers ``LlavaForConditionalGeneration`` (mmit.export.build_llava),
    LoRA on its language model as peft=lora puts it on mmit's LLM, the projector trained."""
    from peft import LoraConfig, get_peft_model

    from mmit.export import build_llava

    llava, _ = build_llava(mmit_model)
    llava.requires_grad_(False)
    mine = lora_config()
    targets = [n for n, m in llava.named_modules() if isinstance(m, nn.Linear) and ".language_model." in n]
    config = LoraConfig(
        r=mine.r, lora_alpha=mine.lora_alpha, lora_dropout=mine.lora_dropout, target_modules=targets, bias="none"
    )
    llava = get_peft_model(llava, config)
    for p in llava.base_model.model.model.multi_modal_projector.parameters():
        p.requires_grad_(True)
    return llava.to(device).train()
