"""Encoders, projectors and the media splice, on tiny models built here."""

import io
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from mmit.config_checks import check_config
from mmit.data.collate import Collator
from mmit.data.samples import IGNORE_INDEX, Conversation, MediaRef, Message, SampleError
from mmit.data.tokenize import tokenize_conversation
from mmit.factory import build_model
from mmit.generation import GenerationOptions, generate_answers
from mmit.models.encoders import (
    EfficientNetLite0Encoder,
    HFVisionEncoder,
    OpenClipEncoder,
    build_tiny_clip_dir,
)
from mmit.models.llm import load_tiny
from mmit.models.multimodal_lm import MultimodalLM
from mmit.models.projectors import attach_position_code, build_projector, place_word_code, place_words
from mmit.models.tuning import apply_tuning
from mmit.train import run
from mmit.training.checkpoint import latest_checkpoint, load_trainable, trainable_state
from mmit.training.loss import next_token_loss_sum
from mmit.training.packing import pack_batch


def _png(color, size=(40, 30)) -> MediaRef:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return MediaRef("image", "png", data=out.getvalue())


@pytest.fixture(scope="module")
def mm(build_tiny_multimodal):
    """A tiny LLM + tiny CLIP tower + MLP projector, wired as mmit does."""
    return build_tiny_multimodal()


def _batch(model, tokenizer, convs):
    slots = list(model.slots.values())
    samples = [tokenize_conversation(c, tokenizer, 512, slots=slots)[0] for c in convs]
    return Collator(tokenizer.pad_token_id, preprocess={"image": model.encoders["image"].preprocess})(samples)


IMAGE_CONV = Conversation(
    "img", [Message("user", "<image>\nWhat color?"), Message("assistant", "red")], media=[_png("red")]
)
TWO_IMAGES = Conversation(
    "two", [Message("user", "<image>\n<image>\nSame?"), Message("assistant", "no")], media=[_png("red"), _png("blue")]
)
TEXT_CONV = Conversation("txt", [Message("user", "Say hi"), Message("assistant", "hi")])


@pytest.mark.parametrize(
    "kind, options, tokens",
    [
        ("linear", {}, 16),
        ("mlp", {"depth": 2}, 16),
        ("mlp", {"input_norm": True}, 16),
        ("resampler", {"num_queries": 5, "heads": 4}, 5),
        ("vocab", {"embeddings": torch.randn(100, 64)}, 16),
    ],
)
def test_projector_shapes(kind, options, tokens):
    projector = build_projector(kind, 48, 64, **options)
    out = projector(torch.randn(3, 16, 48))
    assert out.shape == (3, tokens, 64) and projector.num_tokens(16) == tokens


def test_vocab_projector_gives_mixtures_of_the_llm_embeddings():
    vocab = torch.randn(50, 8)
    projector = build_projector("vocab", 6, 8, embeddings=vocab)
    assert "vocab" not in projector.state_dict()  # rebuilt from the LLM, never saved with the projector
    with torch.no_grad():
        projector.log_scale.fill_(20.0)  # a softmax this sharp picks one word embedding (unless two tie to 1e-7)
        out = projector(torch.randn(2, 3, 6))
    nearest = torch.cdist(out.reshape(-1, 8), vocab).min(dim=1).values
    assert torch.all(nearest < 1e-2)
    with pytest.raises(ValueError, match="width"):
        build_projector("vocab", 6, 9, embeddings=vocab)


def test_placeholders_expand_to_the_encoder_token_count(mm):
    model, tokenizer, slot = mm
    sample, _ = tokenize_conversation(TWO_IMAGES, tokenizer, 512, slots=[slot])
    positions = [i for i, t in enumerate(sample.input_ids) if t == slot.token_id]
    assert len(positions) == 2 * slot.count == 32
    assert all(sample.labels[i] == IGNORE_INDEX for i in positions)
    assert len(sample.media) == 2


def test_splice_puts_projected_features_exactly_at_placeholders(mm):
    model, tokenizer, slot = mm
    batch = _batch(model, tokenizer, [TEXT_CONV, TWO_IMAGES, IMAGE_CONV])
    assert batch.media["image"].shape[0] == 3  # only real images, no dummies for the text sample
    with torch.no_grad():
        embeds = model.embed(batch.input_ids, batch.media)
        features = model.projectors["image"](model.encoders["image"](batch.media["image"]))
        plain = model.base_llm.get_input_embeddings()(batch.input_ids.masked_fill(batch.input_ids == slot.token_id, 0))
    mask = batch.input_ids == slot.token_id
    torch.testing.assert_close(embeds[mask], features.reshape(-1, features.shape[-1]))
    torch.testing.assert_close(embeds[~mask], plain[~mask])
    # Row 1 holds images 0 and 1 (in order), row 2 holds image 2.
    torch.testing.assert_close(embeds[1][mask[1]], features[:2].reshape(-1, features.shape[-1]))
    torch.testing.assert_close(embeds[2][mask[2]], features[2])


def test_text_only_sample_gives_the_bare_llm_logits(mm):
    model, tokenizer, _ = mm
    batch = _batch(model, tokenizer, [TEXT_CONV])
    with torch.no_grad():
        ours = model.logits(batch)
        bare = model.llm(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    torch.testing.assert_close(ours, bare, rtol=1e-5, atol=1e-5)


def test_mixed_batch_row_equals_the_sample_alone(mm):
    model, tokenizer, _ = mm
    mixed = _batch(model, tokenizer, [TEXT_CONV, IMAGE_CONV])
    alone = _batch(model, tokenizer, [IMAGE_CONV])
    n = int(alone.attention_mask.sum())
    with torch.no_grad():
        torch.testing.assert_close(model.logits(mixed)[1, :n], model.logits(alone)[0, :n], rtol=1e-4, atol=1e-4)


def test_placeholder_count_must_match_media(mm):
    model, tokenizer, slot = mm
    bad = Conversation("bad", [Message("user", "What color?"), Message("assistant", "red")], media=[_png("red")])
    with pytest.raises(SampleError, match="0 <image> placeholders for 1 image"):
        tokenize_conversation(bad, tokenizer, 512, slots=[slot])
    with pytest.raises(SampleError, match="no image encoder"):
        tokenize_conversation(IMAGE_CONV, tokenizer, 512)


def test_truncation_never_keeps_part_of_an_image(mm):
    model, tokenizer, slot = mm
    conv = Conversation(
        "t",
        [
            Message("user", "Look: <image>"),
            Message("assistant", "ok"),
            Message("user", "And <image>?"),
            Message("assistant", "fine"),
        ],
        media=[_png("red"), _png("blue")],
    )
    full, _ = tokenize_conversation(conv, tokenizer, 512, slots=[slot])
    second = [i for i, t in enumerate(full.input_ids) if t == slot.token_id][slot.count]
    cut, truncated = tokenize_conversation(conv, tokenizer, second + 5, slots=[slot])
    assert truncated and len(cut.media) == 1
    assert cut.input_ids.count(slot.token_id) == slot.count


def test_generation_with_and_without_kv_cache_agree(mm):
    model, tokenizer, _ = mm
    convs = [IMAGE_CONV, TEXT_CONV, TWO_IMAGES]
    pre = {"image": model.encoders["image"].preprocess}
    cached = generate_answers(model, tokenizer, convs, GenerationOptions(8), preprocess=pre, use_cache=True)
    uncached = generate_answers(model, tokenizer, convs, GenerationOptions(8), preprocess=pre, use_cache=False)
    assert cached == uncached and len(cached) == 3


@pytest.mark.slow
def test_frozen_encoder_stays_unchanged_and_gradient_free_after_training(compose, tmp_path):
    out = tmp_path / "demo"
    cfg = compose(
        [
            "+recipe=vqa_tiny",
            "trainer.max_steps=6",
            "trainer.generate_samples=0",
            "trainer.eval_every=100",
            "trainer.save_every=6",
            f"data.source.overrides=['prepare.n_images=40','out_dir={out}','prepare.out_dir={out}-src']",
        ]
    )
    reference = {k: v.clone() for k, v in build_model(cfg).model.encoders["image"].state_dict().items()}
    run(cfg, tmp_path / "run")
    trained = load_file(latest_checkpoint(tmp_path / "run") / "trainable.safetensors")
    assert not any(name.startswith("encoders.") for name in trained)
    assert any(name.startswith("projectors.image.") for name in trained)
    rebuilt = build_model(cfg).model
    for name, tensor in rebuilt.encoders["image"].state_dict().items():
        torch.testing.assert_close(tensor, reference[name])  # the run changed nothing outside trainable
    assert all(not p.requires_grad for p in rebuilt.encoders["image"].parameters())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "vision_encoder     frozen          0" in summary["parameters"]


def test_hf_clip_loads_from_a_local_directory():
    directory = build_tiny_clip_dir()
    encoder = HFVisionEncoder(str(directory), layer=-1, tokens="all")
    pixels = encoder.preprocess([Image.new("RGB", (50, 20), "green")])
    assert pixels.shape == (1, 3, 32, 32)
    out = encoder(pixels)
    assert out.shape == (1, 17, 32) and encoder.num_tokens == 17  # CLS + 4x4 patches
    cls_only = HFVisionEncoder(str(directory), tokens="cls")(pixels)
    assert cls_only.shape == (1, 1, 32)
    pooled = HFVisionEncoder(str(directory), pool_to=2)(pixels)
    assert pooled.shape == (1, 4, 32)
    # the tiny tower has 2 layers: 3 hidden states (embeddings + 2), counted from 0 or back from -1
    assert HFVisionEncoder(str(directory), layer=-3).layer == -3
    for layer in (3, -4, 1.5):
        with pytest.raises(
            ValueError, match=rf"vision_encoder.layer={layer}: .* are 0 to 2 \(or -1 to -3 from the end\)"
        ):
            HFVisionEncoder(str(directory), layer=layer)


def test_open_clip_loads_a_local_checkpoint_file(tmp_path):
    import open_clip

    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
    }
    (tmp_path / "mmit-tiny-vit.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "mmit-tiny-vit.json")
    torch.manual_seed(0)
    model = open_clip.create_model("mmit-tiny-vit")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "tiny.safetensors")
    encoder = OpenClipEncoder("mmit-tiny-vit", pretrained=str(tmp_path / "tiny.safetensors"), layer=-2)
    torch.testing.assert_close(encoder.visual.conv1.weight, model.visual.conv1.weight)
    out = encoder(encoder.preprocess([Image.new("RGB", (32, 32), "red")]))
    assert out.shape == (1, 16, 32) and encoder.output_dim == 32
    assert OpenClipEncoder("mmit-tiny-vit", tokens="all").num_tokens == 17
    with pytest.raises(ValueError, match=r"vision_encoder.layer=2: mmit-tiny-vit's blocks are 0 to 1"):
        OpenClipEncoder("mmit-tiny-vit", layer=2)  # wrapped round to block 0 before
    torch.save(model.state_dict(), tmp_path / "tiny.pt")  # a pickle: open_clip would torch.load it
    with pytest.raises(ValueError, match=r"pretrained=.*tiny\.pt: mmit loads local weights from \.safetensors"):
        OpenClipEncoder("mmit-tiny-vit", pretrained=str(tmp_path / "tiny.pt"))


def test_efficientnet_lite0_gives_spatial_tokens_from_the_offline_weights():
    encoder = EfficientNetLite0Encoder().eval()
    pixels = encoder.preprocess([Image.new("RGB", (300, 200), "red"), Image.new("RGB", (64, 64), "blue")])
    assert pixels.shape == (2, 3, 224, 224) and abs(float(pixels[0, 0, 0, 0]) - (220 - 127) / 128) < 0.3
    with torch.no_grad():
        out = encoder(pixels)
        pooled = EfficientNetLite0Encoder(pool_to=4)(pixels)
    assert out.shape == (2, 49, 1280) and encoder.num_tokens == 49 and encoder.output_dim == 1280
    assert pooled.shape == (2, 16, 1280)
    assert not torch.allclose(out[0], out[1])  # real weights tell red from blue


def test_efficientnet_lite0_image_size_sets_the_grid_and_pools_exact_thirds():
    encoder = EfficientNetLite0Encoder(layer=14, image_size=288).eval()
    image = Image.new("RGB", (288, 288), "white")
    image.paste((255, 0, 0), (0, 0, 96, 288))  # red in the left third only
    pixels = encoder.preprocess([image])
    assert pixels.shape == (1, 3, 288, 288) and encoder.num_tokens == 81
    with torch.no_grad():
        grid = encoder(pixels)[0].reshape(9, 9, -1)
        pooled = EfficientNetLite0Encoder(layer=14, image_size=288, pool_to=3).eval()(pixels)[0].reshape(3, 3, -1)
    # 9 cells a side average into 3 exact columns of 3 (no column shared between two tokens)
    torch.testing.assert_close(pooled[1, 0], grid[3:6, 0:3].mean(dim=(0, 1)), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="multiple of 32"):
        EfficientNetLite0Encoder(image_size=300)
    for layer in (16, -1, True, 1.5):  # a bool is not a block index (True once meant block 1)
        with pytest.raises(ValueError, match=rf"vision_encoder.layer={layer}: EfficientNet-Lite0's blocks are 0 to 15"):
            EfficientNetLite0Encoder(layer=layer)


def _stage1(compose, tmp_path) -> tuple[list[str], MultimodalLM]:
    """The tiny recipe's overrides and a model whose projector moved from its initial weights, saved
    as a checkpoint in ``tmp_path / "stage1"``."""
    out = tmp_path / "demo"
    overrides = ["+recipe=vqa_tiny", f"data.source.overrides=['prepare.n_images=40','out_dir={out}']"]
    stage1 = build_model(compose(overrides)).model
    with torch.no_grad():
        for p in stage1.projectors.parameters():
            p.add_(1.0)
    (tmp_path / "stage1").mkdir()
    save_file(trainable_state(stage1), tmp_path / "stage1" / "trainable.safetensors")
    return overrides, stage1


def test_init_from_copies_matching_trained_weights(compose, tmp_path):
    overrides, stage1 = _stage1(compose, tmp_path)
    stage2 = build_model(compose([*overrides, f"init_from={tmp_path / 'stage1'}"])).model
    for a, b in zip(stage1.projectors.parameters(), stage2.projectors.parameters()):
        torch.testing.assert_close(a, b)
    assert not stage2.kept_from_init  # a trained projector is saved anyway


def test_a_frozen_projector_from_init_from_is_kept_in_the_runs_checkpoints(compose, tmp_path):
    overrides, stage1 = _stage1(compose, tmp_path)
    frozen = [*overrides, "tuning.projector=frozen"]
    stage2 = build_model(compose([*frozen, f"init_from={tmp_path / 'stage1'}"])).model
    assert {n for n in stage2.kept_from_init} == {f"projectors.{n}" for n, _ in stage1.projectors.named_parameters()}
    (tmp_path / "stage2").mkdir()
    save_file(trainable_state(stage2), tmp_path / "stage2" / "trainable.safetensors")
    rebuilt = build_model(compose(frozen)).model  # as load_run builds a run: without init_from
    load_trainable(rebuilt, tmp_path / "stage2")
    for a, b in zip(stage1.projectors.parameters(), rebuilt.projectors.parameters()):
        torch.testing.assert_close(a, b)
    assert rebuilt.kept_from_init == stage2.kept_from_init  # and saved again from the reloaded run


@pytest.mark.slow
def test_training_streams_shards(compose, tmp_path):
    out = tmp_path / "demo"
    cfg = compose(
        [
            "+recipe=vqa_tiny",
            "trainer.max_steps=4",
            "trainer.generate_samples=0",
            "trainer.save_every=4",
            "data.stream=true",
            "data.shuffle_buffer=16",
            f"data.source.overrides=['prepare.n_images=40','out_dir={out}','prepare.out_dir={out}-src']",
        ]
    )
    summary = run(cfg, tmp_path / "run")
    assert summary["train_samples"].startswith("streamed from") and summary["steps"] == 4
    state = json.loads((latest_checkpoint(tmp_path / "run") / "state.json").read_text())
    assert state["data"] == {"epoch": 0, "index": 4}


@pytest.mark.parametrize("attention", ["packed_sdpa", "sdpa", "eager"])
def test_packed_rows_give_each_sample_its_unpacked_logits_and_loss(mm, attention, monkeypatch):
    from mmit.models import attention as packed_sdpa

    model, tokenizer, slot = mm
    model.base_llm.set_attn_implementation(attention)
    lengths = []  # query lengths of packed_sdpa's per-sample calls
    real_sdpa = packed_sdpa.sdpa_attention_forward
    monkeypatch.setattr(
        packed_sdpa, "sdpa_attention_forward", lambda *a, **k: lengths.append(a[1].shape[2]) or real_sdpa(*a, **k)
    )
    collate = Collator(tokenizer.pad_token_id, preprocess={"image": model.encoders["image"].preprocess})
    samples = [tokenize_conversation(c, tokenizer, 512, slots=[slot])[0] for c in (IMAGE_CONV, TEXT_CONV, TWO_IMAGES)]
    padded = collate(samples)
    first, second, third = (len(s.input_ids) for s in samples)
    packed = pack_batch(padded, first + second, tokenizer.pad_token_id)
    assert packed.position_ids[0, first] == 0  # the second sample starts afresh
    # The spans packing records (no device sync) are those the positions imply, padding included.
    assert packed.spans == packed_sdpa.sample_spans(packed.position_ids)
    assert packed.spans[0][:2] == [(0, first), (first, first + second)] and packed.spans[1][0] == (0, third)
    assert packed.to("cpu").spans == packed.spans
    with torch.no_grad():
        padded_logits, packed_logits = model.logits(padded), model.logits(packed)
        padded_loss = next_token_loss_sum(model(padded), padded.labels, model.output_head)
        packed_loss = next_token_loss_sum(model(packed), packed.labels, model.output_head)
    where = {0: (0, 0), 1: (0, first), 2: (1, 0)}
    for i, sample in enumerate(samples):
        row, start = where[i]
        n = len(sample.input_ids)
        torch.testing.assert_close(packed_logits[row, start : start + n], padded_logits[i, :n], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(packed_loss, padded_loss, atol=1e-4, rtol=1e-5)
    assert packed.num_label_tokens == padded.num_label_tokens
    if attention == "packed_sdpa":  # the packed forwards ran each sample (and the row's padded tail) alone
        spans = [e - s for row in packed_sdpa.sample_spans(packed.position_ids) for s, e in row]
        assert len(spans) == 5 and lengths.count(spans[0]) >= 2 * len(model.base_llm.get_decoder().layers)
    model.base_llm.set_attn_implementation("packed_sdpa")


def test_gradient_checkpointing_gives_the_same_gradients(tiny):
    model = MultimodalLM(apply_tuning(load_tiny().model, "full")).train()
    samples = [tokenize_conversation(c, tiny.tokenizer, 512)[0] for c in (TEXT_CONV, TEXT_CONV)]
    batch = Collator(tiny.tokenizer.pad_token_id)(samples)

    def grads():
        model.zero_grad()
        next_token_loss_sum(model(batch), batch.labels, model.output_head).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain = grads()
    model.base_llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.base_llm.is_gradient_checkpointing
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys() and plain
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


def test_packed_sdpa_runs_each_sample_alone_and_matches_masked_sdpa(monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    from mmit.models import attention

    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3], [*range(7), 0, 1, 2, 3, 4]])
    spans = attention.sample_spans(positions)
    assert spans == [[(0, 5), (5, 8), (8, 12)], [(0, 7), (7, 12)]]
    config = LlamaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64
    )
    config.vocab_size = 100
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    ids = torch.randint(100, (2, 12))
    calls = []
    real_sdpa = attention.sdpa_attention_forward
    monkeypatch.setattr(
        attention, "sdpa_attention_forward", lambda *a, **k: calls.append(a[1].shape[2]) or real_sdpa(*a, **k)
    )
    results = {}
    for implementation in ("packed_sdpa", "sdpa"):
        model.set_attn_implementation(implementation)
        model.zero_grad()
        extra = {"packed_spans": spans} if implementation == "packed_sdpa" else {}
        logits = model(input_ids=ids, position_ids=positions, use_cache=False, **extra).logits
        logits.square().mean().backward()
        results[implementation] = (logits.detach(), [p.grad.clone() for p in model.parameters()])
    # Five samples in two layers, each on its own span of the row; sdpa's one masked call per layer is not counted.
    assert calls == [5, 3, 4, 7, 5] * 2
    torch.testing.assert_close(results["packed_sdpa"][0], results["sdpa"][0], atol=1e-5, rtol=1e-5)
    for packed, masked in zip(results["packed_sdpa"][1], results["sdpa"][1], strict=True):
        torch.testing.assert_close(packed, masked, atol=1e-5, rtol=1e-5)


def test_a_learned_position_code_starts_at_zero_and_marks_each_image_position_the_same_in_every_frame():
    projector = build_projector("mlp", 48, 64)
    features = torch.randn(3, 16, 48)
    before = projector(features)
    code = attach_position_code(projector, 16, 64)
    assert torch.equal(projector(features), before)  # zero at the start
    with torch.no_grad():
        code.code.copy_(torch.randn(16, 64))
        clip = projector(torch.cat([features, features], dim=1))  # two frames of the same picture
        moved = projector(features) - before
    assert torch.allclose(clip[:, :16], clip[:, 16:])
    assert torch.allclose(moved, code.code.expand(3, -1, -1))
    resampler = build_projector("resampler", 48, 64, num_queries=5, heads=4)
    assert attach_position_code(resampler, 16, 64).code.shape == (5, 64)  # one per output token
    with pytest.raises(ValueError, match="not whole images of 16"):
        projector(torch.randn(1, 20, 48))


def test_the_factory_trains_the_position_code_with_the_projector_and_checks_video_frames(compose):
    placed = ["+recipe=vqa_tiny", "projector.position_code=learned"]
    model = build_model(compose(placed)).model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "projectors.image.position_code.code" in trainable
    assert model.projectors["image"].position_code.code.shape[0] == model.slots["image"].count
    # the projector's own weights keep their names: runs with and without the code start from each other
    plain = {n for n, _ in build_model(compose(["+recipe=vqa_tiny"])).model.named_parameters()}
    assert {n for n, _ in model.named_parameters()} - plain == {"projectors.image.position_code.code"}
    lora = build_model(compose([*placed, "tuning.projector=lora"])).model
    assert lora.projectors["image"].position_code.code.requires_grad  # a new weight, trained beside the LoRA
    with pytest.raises(
        ValueError, match="position_code='sinusoidal': must be one of none, learned, words, word_tokens"
    ):
        check_config(compose(["+recipe=vqa_tiny", "projector.position_code=sinusoidal"]))
    side = int(model.encoders["image"].num_tokens ** 0.5)
    video = build_model(compose([*placed, f"+video={{frames: 2, pool_to: {side}}}"])).model
    assert video.projectors["video"].projector is video.projectors["image"]
    with pytest.raises(ValueError, match="video.pool_to"):
        build_model(compose([*placed, "+video={frames: 2, pool_to: 1}"]))


def test_output_norm_makes_every_projected_token_as_long_as_a_typical_word(compose):
    projector = build_projector("mlp", 48, 64, output_norm=2.5)
    lengths = projector(torch.randn(3, 16, 48) * 40).norm(dim=-1)
    torch.testing.assert_close(lengths, torch.full((3, 16), 2.5))
    model = build_model(compose(["+recipe=vqa_tiny", "projector.output_norm=true"])).model
    words = model.base_llm.get_input_embeddings().weight.detach().float().norm(dim=1)
    assert model.projectors["image"].output_norm == pytest.approx(float(words.median()))
    assert not build_model(compose(["+recipe=vqa_tiny"])).model.projectors["image"].output_norm


def test_place_words_name_each_grid_cell_by_the_third_of_the_picture_it_lies_in():
    assert place_words(9) == [
        ("top", "left"), ("top", "middle"), ("top", "right"),
        ("middle", "left"), ("middle", "middle"), ("middle", "right"),
        ("bottom", "left"), ("bottom", "middle"), ("bottom", "right"),
    ]  # fmt: skip
    four = place_words(16)  # centres at 1/8, 3/8, 5/8, 7/8 of the side
    assert [c for _, c in four[:4]] == ["left", "middle", "middle", "right"]
    assert [r for r, _ in four[::4]] == ["top", "middle", "middle", "bottom"]
    assert place_words(1) == [("middle", "middle")]
    with pytest.raises(ValueError, match="square grid; this projector gives 5 tokens"):
        place_words(5)


def test_a_words_position_code_starts_as_the_llms_words_for_each_place(compose):
    model = build_model(compose(["+recipe=vqa_tiny", "projector.position_code=words"]))
    code = model.model.projectors["image"].position_code.code
    assert code.requires_grad
    embeddings = model.model.base_llm.get_input_embeddings().weight.detach().float()

    def word(w):
        return embeddings[model.tokenizer(" " + w, add_special_tokens=False)["input_ids"]].mean(0)

    names = place_words(code.shape[0])
    for cell in (0, len(names) - 1):
        row, column = names[cell]
        torch.testing.assert_close(code[cell].detach(), word(row) + word(column))
    assert torch.equal(place_word_code(code.shape[0], model.tokenizer, embeddings), code.detach())
    resampler = ["+recipe=vqa_tiny", "projector.position_code=words", "projector=resampler", "projector.num_queries=5"]
    with pytest.raises(ValueError, match="square grid; this projector gives 5 tokens"):
        build_model(compose(resampler))


def test_word_tokens_put_each_places_words_after_its_image_token(compose):
    placed = ["+recipe=vqa_tiny", "projector.position_code=word_tokens"]
    model = build_model(compose(placed)).model
    projector = model.projectors["image"]
    cells = model.encoders["image"].num_tokens
    assert model.slots["image"].count == 2 * cells == projector.num_tokens(cells)
    features = torch.randn(2, 2 * cells, model.encoders["image"].output_dim)  # two images in a row
    with torch.no_grad():
        out = projector(features)
        plain = projector.mlp(features)
    assert out.shape[1] == 4 * cells
    torch.testing.assert_close(out[:, 0::2], plain)  # the image tokens, unchanged
    code = projector.position_code.code.detach()
    torch.testing.assert_close(out[:, 1::2], code.repeat(2, 1).expand(2, -1, -1))  # each cell's words after it
    words = build_model(compose(["+recipe=vqa_tiny", "projector.position_code=words"])).model
    torch.testing.assert_close(code, words.projectors["image"].position_code.code.detach())
    side = int(cells**0.5)
    with pytest.raises(ValueError, match="word_tokens is for images"):
        build_model(compose([*placed, f"+video={{frames: 2, pool_to: {side}}}"]))


def test_the_position_code_leaves_audio_alone_and_says_so(compose, caplog):
    with caplog.at_level("INFO", logger="mmit.factory"):
        model = build_model(
            compose(["+recipe=av_qa_tiny", "projector.position_code=learned", "video.pool_to=null"])
        ).model
    assert hasattr(model.projectors["image"], "position_code")
    assert not hasattr(model.projectors["audio"], "position_code")
    assert "applies to images and video; the audio projector has none" in caplog.text
