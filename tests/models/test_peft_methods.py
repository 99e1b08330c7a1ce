"""Every LLM tuning method of the `peft` config group, on the tiny vision model built from its config:
what trains, what a step changes, the start as the untuned model, the checkpoint round trip,
and (prompt tuning) generation reading the same soft prompt as training."""

import copy
import io
import re

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from mmit.data.collate import Batch, Collator
from mmit.data.samples import Conversation, MediaRef, Message
from mmit.data.tokenize import encode_prompt, tokenize_conversation
from mmit.factory import build_model
from mmit.generation import generate_answers, prompt_and_reference
from mmit.train import run
from mmit.training.checkpoint import TRAINABLE, latest_checkpoint, load_trainable, trainable_state
from mmit.training.loss import next_token_loss_sum


def _lora(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


# Which LLM parameters each method trains, and how many on the tiny Llama (hidden 64, MLP 128,
# 2 layers). The projector trains in every case (tuning.projector=full), the encoder in none.
INTENDED = {
    "frozen": (lambda n: False, 0),
    "full": (lambda n: True, 115_008),
    "lora": (_lora, 2 * (4 * (64 * 16 + 16 * 64) + 2 * (64 * 16 + 16 * 128) + (128 * 16 + 16 * 64))),
    "dora": (lambda n: _lora(n) or ".lora_magnitude_vector." in n, 34_816 + 2 * (4 * 64 + 2 * 128 + 64)),
    "ia3": (lambda n: ".ia3_l." in n, 2 * (64 + 64 + 128)),  # keys, values, down_proj's input
    "prompt_tuning": (lambda n: n == "llm.soft_prompt.embeddings", 20 * 64),
    "bitfit": (lambda n: n.endswith(".bias"), 2 * (4 * 64 + 2 * 128 + 64)),  # zero biases on every linear
    "adapter": (lambda n: ".mlp.adapter." in n, 2 * (64 * 64 + 64 + 64 * 64 + 64)),
}
IDENTITY_AT_START = ["frozen", "full", "lora", "dora", "ia3", "bitfit", "adapter"]


def _png(color) -> MediaRef:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(out, format="PNG")
    return MediaRef("image", "png", data=out.getvalue())


CONVS = [
    Conversation("img", [Message("user", "<image>\nWhat color?"), Message("assistant", "red")], media=[_png("red")]),
    Conversation("txt", [Message("user", "Say the sum of two and three"), Message("assistant", "5")]),
]


def _build(method: str, *overrides: str):
    from hydra import compose, initialize_config_dir

    from mmit.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["+recipe=vqa_tiny", f"peft={method}", *overrides])
    torch.manual_seed(0)  # the random starts (projector, LoRA, adapters), as `mmit.train.run` seeds them
    return build_model(cfg)


@pytest.fixture
def build():
    return _build


@pytest.fixture(scope="module")
def untuned():
    return _build("frozen")


def _batch(built) -> Batch:
    model, tokenizer = built.model, built.tokenizer
    slots = list(model.slots.values())
    samples = [tokenize_conversation(c, tokenizer, 512, slots=slots)[0] for c in CONVS]
    return Collator(tokenizer.pad_token_id, preprocess={"image": model.encoders["image"].preprocess})(samples)


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.eval().logits(batch)


def _train_steps(model, batch, steps: int = 2) -> None:
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    for _ in range(steps):
        loss = next_token_loss_sum(model(batch), batch.labels, model.output_head) / batch.num_label_tokens
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("method", INTENDED)
def test_only_the_methods_parameters_train(method, build):
    model = build(method).model
    intended, count = INTENDED[method]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    llm = {n for n in trainable if n.startswith("llm.")}
    assert llm == {n for n, _ in model.named_parameters() if n.startswith("llm.") and intended(n)}
    assert sum(p.numel() for n, p in model.named_parameters() if n in llm) == count
    assert trainable - llm == {n for n, _ in model.named_parameters() if n.startswith("projectors.")}


def _untuned_logits(untuned, tuned, batch) -> torch.Tensor:
    """The untuned model's logits, with the tuned model's projector (whose random start differs)."""
    untuned.model.projectors.load_state_dict(tuned.model.projectors.state_dict())
    return _logits(untuned.model, batch)


@pytest.mark.parametrize("method", IDENTITY_AT_START)
def test_method_starts_as_the_untuned_model(method, build, untuned):
    tuned = build(method)
    batch = _batch(tuned)
    expected = _untuned_logits(untuned, tuned, batch)
    torch.testing.assert_close(_logits(tuned.model, batch), expected, rtol=1e-5, atol=1e-5)


def test_soft_prompt_changes_the_output_and_keeps_positions_in_line(build, untuned):
    tuned = build("prompt_tuning")
    batch = _batch(tuned)
    with torch.no_grad():
        hidden = tuned.model.eval()(batch)
    assert hidden.shape[:2] == batch.input_ids.shape  # one state per input token, as the labels expect
    assert not torch.allclose(_logits(tuned.model, batch), _untuned_logits(untuned, tuned, batch))


@pytest.mark.parametrize("method", [m for m in INTENDED if m != "frozen"])
def test_training_changes_exactly_the_trainable_parameters_and_the_checkpoint_reloads(method, build, tmp_path):
    built = build(method)
    model, batch = built.model, _batch(built)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # Two steps: LoRA's A and an adapter's down projection get no gradient until B / up have
    # moved from their zero start.
    _train_steps(model, batch)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {n for n, p in model.named_parameters() if p.requires_grad}
    for name, p in model.named_parameters():
        if name not in changed:
            assert torch.equal(p, before[name]), name  # bitwise unchanged

    save_file(trainable_state(model), tmp_path / TRAINABLE)
    fresh = build(method).model
    untrained = _logits(fresh, batch)
    load_trainable(fresh, tmp_path)
    trained = _logits(model, batch)
    torch.testing.assert_close(_logits(fresh, batch), trained, rtol=0, atol=0)
    assert (trained - untrained).abs().max() > 1e-3


def test_generation_reads_the_soft_prompt_like_training(build):
    built = build("prompt_tuning")
    model, tokenizer = built.model.eval(), built.tokenizer
    with torch.no_grad():  # a trained-looking prompt, far from its initial token embeddings
        model.soft_prompt.embeddings.normal_(0, 1, generator=torch.Generator().manual_seed(1))
    pre = {"image": model.encoders["image"].preprocess}
    together = generate_answers(model, tokenizer, CONVS, batch_size=2, preprocess=pre)
    alone = [generate_answers(model, tokenizer, [c], batch_size=1, preprocess=pre)[0] for c in CONVS]
    assert together == alone  # the prompt goes before the left padding, positions follow the mask

    # Greedy decoding by hand through the training forward (no cache, no padding).
    conv = CONVS[1]
    ids = encode_prompt(tokenizer, prompt_and_reference(conv)[0])
    start = len(ids)
    for _ in range(32):
        x = torch.tensor([ids])
        logits = model.logits(Batch(x, torch.ones_like(x), torch.full_like(x, -100), [conv.id]))
        ids.append(int(logits[0, -1].argmax()))
        if ids[-1] == tokenizer.eos_token_id:
            break
    assert tokenizer.decode(ids[start:], skip_special_tokens=True).strip() == alone[1]


def test_every_method_has_a_config_and_a_test():
    from mmit.models.tuning import LLM_TUNING
    from mmit.paths import CONF_DIR

    assert {p.stem for p in (CONF_DIR / "peft").glob("*.yaml")} == set(LLM_TUNING) == set(INTENDED)


def test_bitfit_trains_exactly_the_biases_a_model_already_has(tiny):
    from transformers import LlamaConfig, LlamaForCausalLM

    from mmit.models.tuning import BitFitConfig, apply_tuning

    config = LlamaConfig(**{**tiny.model.config.to_dict(), "attention_bias": True})
    llm = apply_tuning(LlamaForCausalLM(config), "bitfit", BitFitConfig(), name="llm")
    trainable = [n for n, p in llm.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * 4 and all(n.endswith("_proj.bias") and ".self_attn." in n for n in trainable)


def test_soft_prompt_starts_from_the_init_text(tiny):
    from mmit.models.llm import load_tiny
    from mmit.models.tuning import SoftPromptConfig, apply_tuning

    llm = apply_tuning(load_tiny().model, "prompt_tuning", SoftPromptConfig(5, "the answer"), "llm", tiny.tokenizer)
    ids = tiny.tokenizer("the answer", add_special_tokens=False)["input_ids"]
    assert len(ids) < 5  # repeated to fill the prompt
    expected = tiny.model.get_input_embeddings().weight[(ids * 5)[:5]]
    torch.testing.assert_close(llm.soft_prompt.embeddings, expected, rtol=0, atol=0)


def test_houlsby_adapters_after_attention_and_mlp_start_as_the_identity(tiny):
    from mmit.models.llm import load_tiny
    from mmit.models.tuning import AdapterConfig, apply_tuning

    llm = apply_tuning(load_tiny().model, "adapter", AdapterConfig(8, ["self_attn", "mlp"]), name="llm")
    trainable = [n for n, p in llm.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * 2 * 4  # layers x sub-layers x (down, up) x (weight, bias)
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        torch.testing.assert_close(llm(ids).logits, tiny.model(ids).logits, rtol=0, atol=0)


def test_llm_only_methods_are_refused_for_other_components():
    from mmit.models.projectors import build_projector
    from mmit.models.tuning import apply_tuning

    with pytest.raises(ValueError, match="tuning must be one of"):
        apply_tuning(build_projector("mlp", 32, 64), "adapter", name="projector")


@pytest.mark.parametrize("method", ["prompt_tuning", "adapter"])
def test_a_tiny_run_trains_and_reloads(method, compose, tmp_path):
    cfg = compose(
        [
            "+recipe=text_tiny",
            f"peft={method}",
            "data.source.n_train=32",
            "data.source.n_eval=4",
            "trainer.max_steps=4",
            "trainer.batch_size=4",
            "trainer.eval_every=100",
            "trainer.eval_batches=1",
            "trainer.save_every=4",
            "trainer.generate_samples=2",
            "trainer.max_new_tokens=4",
            "trainer.precision=fp32",
        ]
    )
    summary = run(cfg, tmp_path)
    assert summary["steps"] == 4 and re.search(rf"^llm +{method} ", summary["parameters"], re.M)
    ckpt = latest_checkpoint(tmp_path)
    assert not (ckpt / "adapter").exists()  # our own methods: everything is in trainable.safetensors
    rebuilt = build_model(cfg).model
    load_trainable(rebuilt, ckpt)
    trained = {n for n, p in rebuilt.named_parameters() if p.requires_grad}
    assert trained and all(INTENDED[method][0](n) for n in trained)


# --- frozen weights kept in bf16 (frozen_dtype) --------------------------------------------------


def _frozen_llm_weights(model) -> dict[str, torch.Tensor]:
    return {
        n: p
        for n, p in model.llm.named_parameters()
        if not p.requires_grad and n.endswith("weight") and ("_proj." in n or "embed_tokens" in n)
    }


@pytest.mark.parametrize("method", INTENDED)
def test_frozen_weights_in_bf16_compute_what_the_rounded_fp32_model_computes(method, build):
    narrow = build(method, "frozen_dtype=bfloat16").model
    wide = build(method, "frozen_dtype=float32").model
    frozen = _frozen_llm_weights(narrow)
    assert (method == "full") == (not frozen)
    assert all(p.dtype == torch.bfloat16 for p in frozen.values())
    assert all(p.dtype == torch.float32 for p in narrow.parameters() if p.requires_grad)
    with torch.no_grad():  # the reference: the same bf16 values, held in fp32 by ordinary modules
        for name, p in _frozen_llm_weights(wide).items():
            p.copy_(frozen[name].float())
    batch = _batch(build(method))
    torch.testing.assert_close(_logits(narrow, batch), _logits(wide, batch), rtol=1e-5, atol=1e-5)

    grads = []
    for model in (narrow, wide):
        model.train()
        next_token_loss_sum(model(batch), batch.labels, model.output_head).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_backward_keeps_the_narrow_weights_not_wide_copies(build):
    model = build("lora", "frozen_dtype=bfloat16").model.train()
    batch = _batch(build("lora"))
    frozen = _frozen_llm_weights(model)
    shapes = {tuple(p.shape) for p in frozen.values()}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        loss = next_token_loss_sum(model(batch), batch.labels, model.output_head)
    wide_copies = [t for t in saved if t.dtype == torch.float32 and tuple(t.shape) in shapes and not t.requires_grad]
    narrow_kept = {t.data_ptr() for t in saved if t.dtype == torch.bfloat16}
    assert not wide_copies  # no fp32 copy of a frozen weight waits for backward
    assert narrow_kept <= {p.data_ptr() for p in frozen.values()}  # what is kept is the stored weight itself
    loss.backward()


def test_auto_keeps_frozen_weights_in_the_checkpoints_own_dtype(tiny, tmp_path):
    from hydra import compose, initialize_config_dir

    from mmit.paths import CONF_DIR

    published = tmp_path / "bf16-llm"
    copy.deepcopy(tiny.model).to(torch.bfloat16).save_pretrained(published)  # as most hub LLMs are published
    tiny.tokenizer.save_pretrained(published)
    built = {}
    for name, path in (("bf16", published), ("fp32", tiny.source)):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=["+recipe=text_tiny", "llm=hf", f"llm.name_or_path={path}"])
        built[name] = build_model(cfg).model
    assert {p.dtype for p in _frozen_llm_weights(built["bf16"]).values()} == {torch.bfloat16}
    assert {p.dtype for p in built["fp32"].parameters()} == {torch.float32}
    head = built["bf16"].output_head
    assert head.weight is built["bf16"].base_llm.get_input_embeddings().weight  # still tied, narrowed once
    ids = torch.tensor([[1, 2, 3]])
    assert built["bf16"].base_llm.get_input_embeddings()(ids).dtype == torch.float32  # computed at full width


def test_bad_frozen_dtype_is_refused():
    from mmit.models.tuning import resolve_frozen_dtype

    with pytest.raises(ValueError, match="frozen_dtype must be one of"):
        resolve_frozen_dtype("int8", None)
    assert resolve_frozen_dtype("auto", torch.float16) == torch.float16
    assert resolve_frozen_dtype("auto", torch.float32) is None


@pytest.mark.parametrize("frozen_dtype", ["float32", "bfloat16"])
def test_export_folds_lora_into_full_width_weights_and_leaves_the_model_narrow(frozen_dtype, build):
    from mmit.export import merged_llm
    from mmit.models.tuning import NARROW_CLASSES

    built = build("lora", f"frozen_dtype={frozen_dtype}")
    model, batch = built.model, _batch(built)
    _train_steps(model, batch)
    merged = merged_llm(model)
    assert {p.dtype for p in merged.parameters()} == {torch.float32}
    assert not any(isinstance(m, NARROW_CLASSES) for m in merged.modules())
    assert all(p.dtype == getattr(torch, frozen_dtype) for p in _frozen_llm_weights(model).values())  # untouched
    text = Collator(built.tokenizer.pad_token_id)([tokenize_conversation(CONVS[1], built.tokenizer, 512)[0]])
    with torch.no_grad():
        expected = model.eval().logits(text)
        got = merged.eval()(input_ids=text.input_ids, attention_mask=text.attention_mask).logits
    real = text.attention_mask.bool()  # the collator pads the row to a multiple of 8
    torch.testing.assert_close(got[real], expected[real], rtol=1e-4, atol=1e-4)


def test_frozen_weights_in_bf16_under_bf16_autocast(build):
    built = build("lora", "frozen_dtype=bfloat16")
    model, batch = built.model.train(), _batch(built)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = next_token_loss_sum(model(batch), batch.labels, model.output_head) / batch.num_label_tokens
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and ".lora_B." in n]
    assert grads and all(g is not None and g.dtype == torch.float32 and g.abs().sum() > 0 for g in grads)
