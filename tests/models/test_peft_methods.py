"""Every LLM tuning method of the `peft` config group, on the tiny vision model built from its config:
what trains, what a step changes, the start as the untuned model, the checkpoint round trip,
and (prompt tuning) generation reading the same soft prompt as training."""

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


def _build(method: str):
    from hydra import compose, initialize_config_dir

    from mmit.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["+recipe=vqa_tiny", f"peft={method}"])
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
