"""Exports load back in plain transformers / peft and compute what mmit computes."""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mmit.data.collate import Batch
from mmit.data.tokenize import MediaSlot, encode_prompt
from mmit.export import (
    MULTIMODAL_JSON,
    MULTIMODAL_WEIGHTS,
    ExportError,
    export_adapter,
    export_llava,
    export_loaded,
    export_merged,
    main,
)
from mmit.inference import load_run
from mmit.models.encoders import HFVisionEncoder, build_tiny_clip_dir
from mmit.models.llm import load_tiny
from mmit.models.multimodal_lm import MultimodalLM
from mmit.models.projectors import attach_position_code, build_projector
from mmit.models.tuning import apply_tuning

IMAGE_CHAT = [{"role": "user", "content": "<image>\nWhat color is the square?"}]
TEXT_CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def trained_run(tiny_vqa_run):
    """The shared tiny VQA run: tiny CLIP tower + MLP projector + tiny Llama with LoRA."""
    return tiny_vqa_run[0]


@pytest.fixture(scope="module")
def loaded(trained_run):
    loaded = load_run(trained_run, device="cpu", precision="fp32")
    # Two steps move the LoRA only a little; random B matrices give it a delta no test could miss.
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in loaded.model.llm.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return loaded


@pytest.fixture(scope="module")
def exported(loaded, tmp_path_factory):
    return export_loaded(loaded, tmp_path_factory.mktemp("export-out"))


def _image() -> Image.Image:
    image = Image.new("RGB", (40, 30), "red")
    image.paste((0, 90, 255), (5, 5, 20, 20))
    return image


def _mmit_logits(model: MultimodalLM, ids: list[int], pixels: torch.Tensor | None = None) -> torch.Tensor:
    input_ids = torch.tensor([ids])
    media = {} if pixels is None else {"image": pixels}
    with torch.no_grad():
        return model.logits(Batch(input_ids, torch.ones_like(input_ids), input_ids, ["x"], media))


def _llava_vs_mmit(model: MultimodalLM, tokenizer, out_dir) -> float:
    """Export to LLaVA, load it with AutoProcessor, run image + prompt both ways: the max abs logit difference."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    export_llava(model, tokenizer, out_dir)
    llava = LlavaForConditionalGeneration.from_pretrained(out_dir).eval()
    processor = AutoProcessor.from_pretrained(out_dir)
    prompt = tokenizer.apply_chat_template(IMAGE_CHAT, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=_image(), text=prompt, return_tensors="pt")
    ids = encode_prompt(tokenizer, IMAGE_CHAT, list(model.slots.values()))
    pixels = model.encoders["image"].preprocess([_image()])
    assert inputs["input_ids"][0].tolist() == ids  # the processor expands <image> exactly as mmit does
    assert torch.equal(inputs["pixel_values"], pixels)
    ours = _mmit_logits(model, ids, pixels)
    with torch.no_grad():
        theirs = llava(**inputs).logits
    return float((theirs[..., : ours.shape[-1]] - ours).abs().max())


def _hand_built(
    encoder_tuning="frozen",
    projector_tuning="full",
    projector="mlp",
    path=None,
    vocab_size=512,
    position_code=False,
    output_norm=None,
    **encoder_options,
):
    """A MultimodalLM wired as mmit.factory does, with any LoRA layers given random (non-zero) B matrices."""
    llm = load_tiny(vocab_size=vocab_size)
    torch.manual_seed(0)
    encoder = apply_tuning(HFVisionEncoder(str(path or build_tiny_clip_dir()), **encoder_options), encoder_tuning)
    options = {"output_norm": output_norm} if output_norm else {}
    proj = build_projector(projector, encoder.output_dim, llm.model.config.hidden_size, **options)
    proj = apply_tuning(proj, projector_tuning)
    if position_code:
        attach_position_code(proj, encoder.num_tokens, llm.model.config.hidden_size)
    with torch.no_grad():
        for name, param in [*encoder.named_parameters(), *proj.named_parameters()]:
            if "lora_B" in name:
                param.normal_(0, 0.1)
    llm.tokenizer.add_tokens(["<image>"], special_tokens=True)
    slot = MediaSlot("<image>", llm.tokenizer.convert_tokens_to_ids("<image>"), proj.num_tokens(encoder.num_tokens))
    return MultimodalLM(llm.model, {"image": encoder}, {"image": proj}, {"image": slot}).eval(), llm.tokenizer


def test_adapter_reloads_with_peft(loaded, exported):
    from peft import PeftModel

    ids = encode_prompt(loaded.tokenizer, TEXT_CHAT)
    ours = _mmit_logits(loaded.model, ids)
    base = load_tiny().model.eval()
    with torch.no_grad():
        bare = base(input_ids=torch.tensor([ids])).logits
        assert (bare - ours).abs().max() > 1e-2  # the adapter does change the model
        reloaded = PeftModel.from_pretrained(base, exported["adapter"]).eval()
        theirs = reloaded(input_ids=torch.tensor([ids])).logits
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)

    info = json.loads((exported["adapter"] / MULTIMODAL_JSON).read_text())
    image = info["media"]["image"]
    assert image["placeholder"] == "<image>" and image["tokens_per_item"] == loaded.model.slots["image"].count
    assert image["encoder"]["layer"] == -2 and info["config"]["projector"]["kind"] == "mlp"
    weights = load_file(exported["adapter"] / MULTIMODAL_WEIGHTS)
    for name, tensor in loaded.model.projectors.state_dict().items():
        torch.testing.assert_close(weights[f"projectors.{name}"], tensor, rtol=0, atol=0)


def test_merged_llm_gives_mmit_logits_on_text(loaded, exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = AutoModelForCausalLM.from_pretrained(exported["merged"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(exported["merged"])
    base_tokenizer = load_tiny().tokenizer
    # The LLM's own vocabulary: no <image> token, and "<image>" in text is ordinary text again.
    assert "<image>" not in tokenizer.get_added_vocab() and len(tokenizer) == len(base_tokenizer)
    assert tokenizer("see <image> here")["input_ids"] == base_tokenizer("see <image> here")["input_ids"]
    prompt = tokenizer.apply_chat_template(TEXT_CHAT, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert ids == encode_prompt(loaded.tokenizer, TEXT_CHAT)
    with torch.no_grad():
        theirs = merged(input_ids=torch.tensor([ids])).logits
    ours = _mmit_logits(loaded.model, ids)
    assert float((theirs - ours).abs().max()) <= 1e-5


def test_llava_gives_mmit_logits_on_image_and_prompt(loaded, exported):
    from transformers import LlavaConfig

    config = LlavaConfig.from_pretrained(exported["llava"])
    assert (config.vision_feature_layer, config.vision_feature_select_strategy) == (-2, "default")
    assert config.image_token_id == loaded.model.slots["image"].token_id
    assert _llava_vs_mmit(loaded.model, loaded.tokenizer, exported["llava"]) <= 1e-4


@pytest.mark.parametrize(
    "options",
    [
        # CLS + patches of the last layer ("full"), with LoRA folded into the encoder and the projector
        dict(encoder_tuning="lora", projector_tuning="lora", layer=-1, tokens="all"),
        dict(siglip=True, layer=-2, tokens="patch"),  # no CLS token: "full" keeps every patch
        dict(vocab_size=400),  # <image> gets id 400, past the 400 embedding rows: LLaVA's get one more
    ],
    ids=["clip-all-lora", "siglip-patch", "image-token-past-the-vocabulary"],
)
def test_llava_maps_other_feature_selections(options, tmp_path):
    if options.pop("siglip", False):
        from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

        torch.manual_seed(0)
        config = SiglipVisionConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
        )
        SiglipVisionModel(config).save_pretrained(tmp_path / "siglip")
        SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "siglip")
        options["path"] = tmp_path / "siglip"
    model, tokenizer = _hand_built(**options)
    assert _llava_vs_mmit(model, tokenizer, tmp_path / "llava") <= 1e-4
    rows = model.base_llm.get_input_embeddings().num_embeddings
    config = json.loads((tmp_path / "llava" / "config.json").read_text())
    assert config["text_config"]["vocab_size"] == max(rows, model.slots["image"].token_id + 1)


@pytest.mark.parametrize(
    "options, reason",
    [
        (dict(pool_to=2), "cannot pool"),
        (dict(tokens="cls"), "tokens='cls'"),
        (dict(projector="resampler"), "this one is ResamplerProjector"),
        (dict(projector="linear"), "this one is LinearProjector"),
        (dict(position_code=True), "position_code adds a vector per image token"),
        (dict(output_norm=2.0), "output_norm rescales each projected token"),
    ],
)
def test_llava_refuses_what_it_cannot_express(options, reason, tmp_path):
    model, tokenizer = _hand_built(**options)
    with pytest.raises(ExportError, match=reason):
        export_llava(model, tokenizer, tmp_path / "llava")
    assert not (tmp_path / "llava").exists()


def test_adapter_and_merged_refuse_llms_they_cannot_hold(tmp_path):
    llm = load_tiny()
    plain = MultimodalLM(llm.model)  # peft=full: nothing for PeftModel to load
    with pytest.raises(ExportError, match="no peft adapter"):
        export_adapter(plain, tmp_path / "adapter")
    adapted = MultimodalLM(apply_tuning(load_tiny().model, "adapter", name="llm"))
    with pytest.raises(ExportError, match="bottleneck adapters"):
        export_merged(adapted, llm.tokenizer, tmp_path / "merged")
    export_merged(plain, llm.tokenizer, tmp_path / "merged")  # a fully tuned LLM is already "merged"
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    from peft import LoraConfig

    lora = MultimodalLM(apply_tuning(load_tiny().model, "lora", LoraConfig(r=2, target_modules=["q_proj"]), "llm"))
    frozen = next(n for n, p in lora.named_parameters() if not p.requires_grad)
    lora.kept_from_init = frozenset({frozen})  # a frozen LLM weight that init_from set
    with pytest.raises(ExportError, match="set by init_from"):
        export_adapter(lora, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


def test_cli_writes_every_format(trained_run, tmp_path, capsys):
    written = main([str(trained_run), "--out", str(tmp_path / "out"), "--format", "all"])
    assert set(written) == {"adapter", "merged", "llava"}
    out = tmp_path / "out"
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "merged" / "model.safetensors").is_file() and (out / "merged" / "tokenizer.json").is_file()
    assert (out / "llava" / "model.safetensors").is_file() and (out / "llava" / "processor_config.json").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "llava", "merged"]  # no temporary directories left
    assert "llava" in capsys.readouterr().out


def test_llava_processor_takes_image_items_in_its_chat_template(loaded, exported):
    """The standard transformers call: a chat whose content lists an image item and a text item."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(exported["llava"])
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is the square?"}]}]
    prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
    assert prompt == loaded.tokenizer.apply_chat_template(IMAGE_CHAT, add_generation_prompt=True, tokenize=False)
    assert "{%- set mmit" not in (loaded.tokenizer.chat_template or "")  # the run's own tokenizer is untouched
    inputs = processor(images=_image(), text=prompt, return_tensors="pt")
    ids = encode_prompt(loaded.tokenizer, IMAGE_CHAT, list(loaded.model.slots.values()))
    assert inputs["input_ids"][0].tolist() == ids
    llava = LlavaForConditionalGeneration.from_pretrained(exported["llava"]).eval()
    ours = _mmit_logits(loaded.model, ids, loaded.model.encoders["image"].preprocess([_image()]))
    with torch.no_grad():
        theirs = llava(**inputs).logits
    assert float((theirs[..., : ours.shape[-1]] - ours).abs().max()) <= 1e-4
    # Plain string contents (mmit's own form) go through the same template unchanged.
    assert processor.apply_chat_template(IMAGE_CHAT, add_generation_prompt=True) == prompt


def _bf16_base(root):
    """A tiny Llama stored in bf16, as most hub LLMs are: a directory and the same model as a hub id in a cache."""
    import shutil

    tiny = load_tiny()
    folder = root / "models" / "tiny-bf16"
    tiny.model.to(torch.bfloat16).save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    snapshot = root / "hub" / "models--mmit-test--tiny-bf16" / "snapshots" / ("0" * 40)
    shutil.copytree(folder, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    return folder


@pytest.mark.parametrize("given", ["directory", "hub id"])
def test_the_adapter_names_the_base_the_user_gave_and_its_dtype(given, compose, tmp_path, monkeypatch):
    import huggingface_hub
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from mmit.export import BASE_MODEL_JSON
    from mmit.factory import build_model

    folder = _bf16_base(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    name = "models/tiny-bf16" if given == "directory" else "mmit-test/tiny-bf16"  # a relative directory, or an id
    cfg = compose(["llm=hf", f"llm.name_or_path={name}", "llm.attn_implementation=sdpa"])
    model = build_model(cfg).model.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for param_name, param in model.llm.named_parameters():
            if "lora_B" in param_name:
                param.normal_(0, 0.05)
    export_adapter(model, tmp_path / "adapter", cfg)
    tokenizer = load_tiny().tokenizer
    export_merged(model, tokenizer, tmp_path / "merged")

    expected = str(folder.resolve()) if given == "directory" else name
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == expected
    info = json.loads((tmp_path / "adapter" / BASE_MODEL_JSON).read_text())
    assert info["name_or_path"] == expected and info["dtype"] == "float32"

    # As a user would: the adapter folder alone, in the recorded dtype, from another directory.
    monkeypatch.chdir(tmp_path / "adapter")
    ids = torch.tensor([encode_prompt(tokenizer, TEXT_CHAT)])
    with torch.no_grad():
        reloaded = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter", dtype=getattr(torch, info["dtype"]))
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
        theirs, reference = reloaded.eval()(input_ids=ids).logits, merged(input_ids=ids).logits
        assert float((theirs - reference).abs().max()) <= 1e-5
        default = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter").eval()  # the checkpoint's bf16
        assert default.base_model.model.dtype == torch.bfloat16
