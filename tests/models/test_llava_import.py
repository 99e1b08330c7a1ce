"""transformers LLaVA checkpoints in: ``+model=llava init_from=DIR`` computes what the LLaVA computes, and trains."""

import json

import pytest
import torch
from PIL import Image

from mmit.data.collate import Batch
from mmit.data.tokenize import encode_prompt
from mmit.export import export_llava
from mmit.factory import build_model
from mmit.inference import compose_config
from mmit.models.llava_import import LlavaImportError, LlavaVisionEncoder, read_llava
from mmit.models.llm import build_tiny_tokenizer

IMAGE_CHAT = [{"role": "user", "content": "<image>\nWhat color is the square?"}]


def _image() -> Image.Image:
    image = Image.new("RGB", (40, 30), "red")
    image.paste((0, 90, 255), (5, 5, 20, 20))
    return image


def tiny_llava_dir(path, tower="clip", strategy="default", names="saved", tie=False, seed=0, **changes):
    """A random LlavaForConditionalGeneration from configs (tiny CLIP or SigLIP tower, tiny Llama),
    saved with a tokenizer that has <image> and the tower's image processor."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    tokenizer = build_tiny_tokenizer()
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    tower_spec = dict(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2
    )
    vision_config = CLIPVisionConfig(**tower_spec) if tower == "clip" else SiglipVisionConfig(**tower_spec)
    text_config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),  # a row for <image>: LLaVA looks it up before replacing it
        max_position_embeddings=256,
        initializer_range=0.1,
        tie_word_embeddings=tie,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    extra = 1 if tower == "clip" else 0
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=image_token,
        image_seq_length=16 + extra - (strategy == "default"),
        vision_feature_select_strategy=strategy,
        vision_feature_layer=-2,
        tie_word_embeddings=tie,
    )
    torch.manual_seed(seed)
    llava = LlavaForConditionalGeneration(config).eval()
    llava.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if tower == "clip":
        processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    processor.save_pretrained(path)
    if names == "hub":  # as llava-hf's checkpoints name them (transformers 4.x): vision_tower.vision_model.*
        from safetensors.torch import load_file, save_file

        state = load_file(path / "model.safetensors")
        assert any(name.startswith("language_model.model.") for name in state)  # how 5.x saves LLaVA, too
        hub = {name.replace("vision_tower.", "vision_tower.vision_model.", 1): t for name, t in state.items()}
        save_file(hub, path / "model.safetensors", metadata={"format": "pt"})
    elif names == "module":  # the in-memory names of transformers 5: model.language_model.*, lm_head.*
        from safetensors.torch import save_file

        state = {name: t.clone().contiguous() for name, t in llava.state_dict().items()}
        if tie:
            del state["lm_head.weight"]
        save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    _edit_config(path, **changes)
    return path, llava


def _edit_config(path, **changes):
    if changes:
        config = json.loads((path / "config.json").read_text())
        config.update(changes)
        (path / "config.json").write_text(json.dumps(config))


def _mmit_logits(model, ids, pixels):
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        return model.eval().logits(Batch(input_ids, torch.ones_like(input_ids), input_ids, ["x"], {"image": pixels}))


def _imported(path, *overrides):
    """As ``python -m mmit.train +recipe=vqa_tiny +model=llava init_from=PATH`` builds it (values checked)."""
    return build_model(compose_config(["+recipe=vqa_tiny", "+model=llava", f"init_from={path}", *overrides]))


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(strategy="full"),  # CLS + patches: mmit's tokens=all
        dict(tower="siglip", strategy="full"),  # no CLS: every token is a patch
        dict(names="hub"),  # vision_tower.vision_model.*, as llava-hf's checkpoints on the hub
        dict(names="module", tie=True),  # model.language_model.*, a tied output layer
    ],
    ids=["clip-default", "clip-full", "siglip-full", "hub-names", "module-names-tied"],
)
def test_a_llava_built_from_configs_imports_with_its_logits(options, tmp_path):
    path, llava = tiny_llava_dir(tmp_path / "llava", **options)
    built = _imported(path)
    model, tokenizer = built.model, built.tokenizer
    encoder = model.encoders["image"]
    assert isinstance(encoder, LlavaVisionEncoder)
    assert encoder.layer == -2 and encoder.tokens == ("all" if options == dict(strategy="full") else "patch")
    slot = model.slots["image"]
    assert slot.token_id == llava.config.image_token_id and slot.count == llava.config.image_seq_length
    ids = encode_prompt(tokenizer, IMAGE_CHAT, [slot])
    pixels = encoder.preprocess([_image()])
    ours = _mmit_logits(model, ids, pixels)
    with torch.no_grad():
        theirs = llava(input_ids=torch.tensor([ids]), pixel_values=pixels).logits
    difference = float((theirs - ours).abs().max())
    print(f"LLaVA -> mmit ({options}): max abs logit difference {difference:.2e}")
    assert difference <= 1e-5


def test_export_then_import_gives_the_same_logits(compose, tmp_path):
    """mmit -> LlavaForConditionalGeneration -> mmit: the same model, to 1e-5 in fp32."""
    from transformers import LlavaConfig

    torch.manual_seed(0)
    original = build_model(compose(["+recipe=vqa_tiny", "peft=full"]))
    with torch.no_grad():  # a projector and LLM far from their initialisation
        for param in original.model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    export_llava(original.model, original.tokenizer, tmp_path / "llava")
    imported = _imported(tmp_path / "llava")

    ids = encode_prompt(original.tokenizer, IMAGE_CHAT, list(original.model.slots.values()))
    assert encode_prompt(imported.tokenizer, IMAGE_CHAT, list(imported.model.slots.values())) == ids
    pixels = original.model.encoders["image"].preprocess([_image()])
    assert torch.equal(imported.model.encoders["image"].preprocess([_image()]), pixels)
    ours, theirs = _mmit_logits(original.model, ids, pixels), _mmit_logits(imported.model, ids, pixels)
    vocab = ours.shape[-1]  # the LLaVA has one more row, for <image> (id 512 of a 512-row vocabulary)
    difference = float((theirs[..., :vocab] - ours).abs().max())
    print(f"export -> import: max abs logit difference {difference:.2e}")
    assert difference <= 1e-5

    export_llava(imported.model, imported.tokenizer, tmp_path / "again")  # and out again, the same LLaVA
    first, second = LlavaConfig.from_pretrained(tmp_path / "llava"), LlavaConfig.from_pretrained(tmp_path / "again")
    assert first.to_diff_dict() == second.to_diff_dict()


@pytest.mark.slow
def test_a_tiny_llava_trains_through_mmit_train(tmp_path):
    from mmit.inference import load_run
    from mmit.train import run

    path, _ = tiny_llava_dir(tmp_path / "llava")
    out = tmp_path / "demo"
    cfg = compose_config(
        [
            "+recipe=vqa_tiny",
            "+model=llava",
            f"init_from={path}",
            "trainer.max_steps=3",
            "trainer.batch_size=4",
            "trainer.eval_every=1000",
            "trainer.save_every=3",
            "trainer.generate_samples=2",
            "trainer.eval_batches=1",
            "trainer.precision=fp32",
            "feature_cache=auto",  # as +recipe=vqa has it: the frozen LLaVA tower encodes each image once
            f"data.source.overrides=['prepare.n_images=40','out_dir={out}','prepare.out_dir={out}-src']",
        ]
    )
    summary = run(cfg, tmp_path / "run")
    assert summary["steps"] == 3
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    # The run folder rebuilds from its saved config (mmit's own builders only) with the trained projector.
    loaded = load_run(tmp_path / "run", device="cpu", precision="fp32")
    assert isinstance(loaded.model.encoders["image"], LlavaVisionEncoder)
    fresh = read_llava(path)
    start = dict(fresh.tensors("model.multi_modal_projector."))["linear_1.weight"]
    assert not torch.equal(loaded.model.projectors["image"].mlp[0].weight, start)  # trained, then reloaded


def test_the_preset_replaces_the_recipes_model():
    cfg = compose_config(["+recipe=vqa", "+model=llava", "init_from=/somewhere/llava"])
    assert cfg.llm._target_ == "mmit.models.llava_import.load_llava_llm" and cfg.llm.name_or_path == "/somewhere/llava"
    assert cfg.vision_encoder._target_ == "mmit.models.llava_import.llava_vision_encoder"
    assert (cfg.vision_encoder.layer, cfg.vision_encoder.pool_to) == (None, None)  # not the recipe's 14 and 3
    assert cfg.projector.kind == "mlp" and cfg.projector.depth == 2 and cfg.projector.llava == "/somewhere/llava"
    # the checkpoint's projector as trained: not the recipe's position code and rescaling
    assert (cfg.projector.position_code, cfg.projector.output_norm) == ("none", False)


@pytest.mark.parametrize(
    "changes, reason",
    [
        (dict(model_type="llama"), "model_type is 'llama', not 'llava'"),
        (dict(vision_feature_layer=[-2, -5]), "several layers"),
        (dict(projector_hidden_act="gelu_pytorch_tanh"), "exact 'gelu'"),
        (dict(multimodal_projector_bias=False), "has biases"),
        (dict(auto_map={"AutoModel": "modeling_mine.Mine"}), "trust_remote_code"),
    ],
)
def test_what_mmit_cannot_compute_is_refused_naming_the_file(changes, reason, tmp_path):
    path, _ = tiny_llava_dir(tmp_path / "llava", **changes)
    with pytest.raises(LlavaImportError, match=reason) as err:
        read_llava(path)
    assert str(path / "config.json") in str(err.value)


def test_siglip_without_a_class_token_cannot_drop_one(tmp_path):
    path, _ = tiny_llava_dir(tmp_path / "llava", tower="siglip", strategy="default")
    with pytest.raises(LlavaImportError, match="drops its first patch"):
        read_llava(path)


def test_pickled_weights_are_refused_not_read(tmp_path):
    path, _ = tiny_llava_dir(tmp_path / "llava")
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(LlavaImportError, match="pytorch_model.bin: pickled weights; mmit reads safetensors only"):
        read_llava(path)


def test_a_weights_index_pointing_outside_the_checkpoint_is_refused(tmp_path):
    path, _ = tiny_llava_dir(tmp_path / "llava")
    (path / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    index = path / "model.safetensors.index.json"
    for target in ("../elsewhere.safetensors", str(tmp_path / "elsewhere.safetensors")):
        index.write_text(json.dumps({"weight_map": {"lm_head.weight": target}}))
        with pytest.raises(LlavaImportError, match="weight_map must name files in the checkpoint's folder"):
            read_llava(path)
    index.write_text('{"weight_map": ')
    with pytest.raises(LlavaImportError, match="model.safetensors.index.json: not a weights index"):
        read_llava(path)


def test_a_llava_as_init_from_needs_the_preset(compose, tmp_path):
    path, _ = tiny_llava_dir(tmp_path / "llava")
    with pytest.raises(LlavaImportError, match=r"add \+model=llava after the recipe"):
        build_model(compose(["+recipe=vqa_tiny", f"init_from={path}"]))


def test_settings_that_change_the_llavas_features_are_refused(tmp_path):
    path, _ = tiny_llava_dir(tmp_path / "llava")
    with pytest.raises(Exception, match=r"vision_encoder.pool_to=2 would change what the LLaVA's projector"):
        _imported(path, "vision_encoder.pool_to=2")
    with pytest.raises(Exception, match=r"LLaVA's projector is Linear-GELU-Linear"):
        _imported(path, "projector.depth=3")
