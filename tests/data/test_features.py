"""The frozen-encoder feature cache: same features as the live encoder, resumable, refused when stale."""

import io
import json
import re

import pytest
import torch
from PIL import Image

from mmit.data.collate import Collator, decode_image
from mmit.data.features import FeatureCacheMismatch, FeatureStore, build_feature_cache
from mmit.data.samples import MediaRef, TokenizedSample
from mmit.models.encoders import tiny_clip_encoder

CONFIG = {"_target_": "mmit.models.encoders.tiny_clip_encoder", "layer": -2}


def _png(seed: int) -> MediaRef:
    generator = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(24, 36, 3, generator=generator) * 255).to(torch.uint8).numpy()
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="PNG")
    return MediaRef("image", "png", data=out.getvalue())


@pytest.fixture(scope="module")
def encoder():
    return tiny_clip_encoder().eval()


def test_cached_features_equal_the_live_encoder_and_duplicates_are_encoded_once(encoder, tmp_path):
    refs = [_png(i) for i in range(5)] + [_png(2), _png(0)]
    store = build_feature_cache(tmp_path, "image", encoder, CONFIG, refs, decode_image, batch_size=2)
    assert len(store) == 5 and store.manifest["shards"] == {"features-00000.safetensors": 5}
    with torch.no_grad():
        live = encoder(encoder.preprocess([decode_image(r) for r in refs]))
    cached = store.features(refs)
    assert cached.dtype == torch.bfloat16 and cached.shape == live.shape
    torch.testing.assert_close(cached.float(), live, atol=0.02 * live.abs().max().item(), rtol=0.02)


def test_an_interrupted_build_keeps_finished_shards_and_encodes_only_the_rest(encoder, tmp_path):
    refs = [_png(i) for i in range(7)]
    decoded = []

    def failing_decode(ref):
        if len(decoded) == 5:
            raise KeyboardInterrupt
        decoded.append(ref.sha256)
        return decode_image(ref)

    with pytest.raises(KeyboardInterrupt):
        build_feature_cache(tmp_path, "image", encoder, CONFIG, refs, failing_decode, batch_size=2, shard_items=2)
    assert len(FeatureStore(tmp_path)) == 4  # two whole shards; the half-done batch left nothing behind
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    decoded.clear()
    store = build_feature_cache(tmp_path, "image", encoder, CONFIG, refs, failing_decode, batch_size=2, shard_items=2)
    assert len(store) == 7 and len(decoded) == 3
    assert sorted(decoded) == sorted(r.sha256 for r in refs[4:])


def test_a_cache_from_another_encoder_or_preprocessing_is_refused(encoder, tmp_path):
    refs = [_png(1)]
    build_feature_cache(tmp_path, "image", encoder, CONFIG, refs, decode_image)
    pooled = tiny_clip_encoder(pool_to=2).eval()
    with pytest.raises(FeatureCacheMismatch, match="different encoder, preprocessing or decoding.*tokens"):
        build_feature_cache(tmp_path, "image", pooled, {**CONFIG, "pool_to": 2}, refs, decode_image)
    renormalised = tiny_clip_encoder().eval()
    renormalised.processor.image_mean = [0.0, 0.0, 0.0]  # same weights and config, other preprocessing
    with pytest.raises(FeatureCacheMismatch, match="preprocess_sha256"):
        build_feature_cache(tmp_path, "image", renormalised, CONFIG, refs, decode_image)
    other_weights = tiny_clip_encoder().eval()
    with torch.no_grad():
        next(other_weights.parameters()).add_(1.0)
    with pytest.raises(FeatureCacheMismatch, match="weights_sha256"):
        build_feature_cache(tmp_path, "image", other_weights, CONFIG, refs, decode_image)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["fingerprint"]["tokens"] == encoder.num_tokens


def test_a_damaged_or_outward_pointing_manifest_is_named(encoder, tmp_path):
    """A cache folder someone hands you: its manifest may not name files outside the folder, and a
    manifest that does not parse or lacks its parts is named, not a bare KeyError."""
    build_feature_cache(tmp_path, "image", encoder, CONFIG, [_png(1)], decode_image)
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    (name,) = manifest["shards"]
    bad = {
        "shards must be files in the cache's folder, not '../x.safetensors'": {
            **manifest,
            "shards": {"../x.safetensors": 1},
        },
        "a feature cache manifest has 'shards' and 'fingerprint' objects": {
            k: v for k, v in manifest.items() if k != "fingerprint"
        },
        "feature cache format 7": {**manifest, "format": 7},
    }
    for message, broken in bad.items():
        path.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=re.escape(f"{path}: {message}")):
            FeatureStore(tmp_path)
    path.write_text('{"format": 1, "shards": {"' + name)
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a feature cache manifest")):
        FeatureStore(tmp_path)


def test_a_cache_from_another_image_decoding_is_refused(encoder, tmp_path, monkeypatch):
    """Features made before EXIF orientation was applied (the same encoder, the old decoding)."""
    from mmit.data import features

    refs = [_png(1)]
    monkeypatch.setitem(features.DECODING, "image", "rgb as stored")
    build_feature_cache(tmp_path, "image", encoder, CONFIG, refs, decode_image)
    monkeypatch.undo()
    with pytest.raises(FeatureCacheMismatch, match="decoding: cache 'rgb as stored'"):
        build_feature_cache(tmp_path, "image", encoder, CONFIG, refs, decode_image)


def test_the_collator_hands_cached_features_instead_of_pixels(encoder, tmp_path):
    refs = [_png(i) for i in range(3)]
    store = build_feature_cache(tmp_path, "image", encoder, CONFIG, refs[:2], decode_image)
    samples = [TokenizedSample(str(i), [1, 2, 3], [-100, 2, 3], [refs[i]]) for i in range(3)]
    collate = Collator(0, preprocess={"image": encoder.preprocess}, features={"image": store})
    cached = collate(samples[:2])
    assert set(cached.features) == {"image"} and not cached.media
    assert cached.features["image"].shape == (2, encoder.num_tokens, encoder.output_dim)
    live = collate(samples[1:])  # one item missing from the cache: this batch runs the encoder
    assert set(live.media) == {"image"} and not live.features
