"""The video path: frames through the shared image encoder, pooled per frame, marked in time, spliced."""

import numpy as np
import pytest
import torch
from PIL import Image

from mmit.data.samples import Conversation, MediaRef, Message
from mmit.data.video import Clip, write_clip
from mmit.models.video import FrameCode, TemporalProjector, VideoEncoder, sinusoidal


def _clip(frames: int, shade: int = 0) -> Clip:
    pictures = [Image.new("RGB", (32, 32), ((60 * i + shade) % 256, 20 * i % 256, 200)) for i in range(frames)]
    return Clip(pictures, [i / 4 for i in range(frames)], list(range(frames)), frames / 4)


@pytest.fixture(scope="module")
def tiny_encoder():
    from mmit.models.encoders import tiny_clip_encoder
    from mmit.models.tuning import apply_tuning

    return apply_tuning(tiny_clip_encoder(), "frozen")


def test_a_clip_is_its_frames_encoded_one_by_one_and_pooled_in_frame_order(tiny_encoder):
    video = VideoEncoder(tiny_encoder, frames=3, pool_to=2)
    assert video.num_tokens == 3 * 4 and video.output_dim == tiny_encoder.output_dim
    clips = [_clip(3), _clip(3, shade=90)]
    pixels = video.preprocess(clips)
    assert pixels.shape[:2] == (2, 3)
    with torch.no_grad():
        out = video(pixels)
        alone = tiny_encoder(tiny_encoder.preprocess([clips[1].frames[2]]))  # the second clip's last frame
    assert out.shape == (2, 12, tiny_encoder.output_dim)
    side = int(tiny_encoder.num_tokens**0.5)
    grid = alone.transpose(1, 2).reshape(1, -1, side, side)
    pooled = torch.nn.functional.adaptive_avg_pool2d(grid, 2).flatten(2).transpose(1, 2)[0]
    torch.testing.assert_close(out[1, 8:12], pooled, atol=1e-5, rtol=1e-5)


def test_frame_codes_learned_start_at_zero_sinusoidal_differ_per_frame_none_is_identity():
    features = torch.randn(2, 3 * 4, 16)
    learned, fixed, none = FrameCode(3, 16, "learned"), FrameCode(3, 16, "sinusoidal"), FrameCode(3, 16, "none")
    torch.testing.assert_close(learned(features), features)  # training starts from the image projector's view
    assert learned.code.requires_grad and list(fixed.parameters()) == [] and torch.equal(none(features), features)
    shifted = fixed(features) - features
    torch.testing.assert_close(shifted[:, 0], shifted[:, 3])  # the same code on every token of a frame
    assert not torch.allclose(shifted[:, 0], shifted[:, 4])  # another frame, another code
    code = sinusoidal(5, 16)
    torch.testing.assert_close(code.pow(2).mean(dim=1), torch.ones(5))  # unit root-mean-square rows
    with pytest.raises(ValueError, match="video.temporal must be one of"):
        FrameCode(3, 16, "rotary")


def test_frames_in_another_order_give_other_tokens_with_a_frame_code():
    projector = TemporalProjector(torch.nn.Identity(), FrameCode(2, 8, "sinusoidal"))
    features = torch.randn(1, 2, 8)
    swapped = features.flip(1)
    assert not torch.allclose(projector(features).flip(1), projector(swapped))


def test_the_factory_shares_the_image_encoder_and_projector_with_video(compose):
    from mmit.factory import build_model

    cfg = compose(["+recipe=vqa_tiny", "+video={frames: 4, pool_to: 2, temporal: learned}"])
    built = build_model(cfg)
    model = built.model
    assert set(model.encoders) == {"image", "video"} and set(model.slots) == {"image", "video"}
    assert model.encoders["video"].image_encoder is model.encoders["image"]
    assert model.projectors["video"].projector is model.projectors["image"]
    assert model.slots["video"].count == 4 * 4 and model.slots["video"].placeholder == "<video>"
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and "projectors" in n]
    assert "projectors.video.frame_code.code" in trainable  # shared weights listed once, under image
    assert not any(n.startswith("projectors.video.projector.") for n in trainable)
    assert "frame code (video)" in built.table


def test_a_video_sample_trains_and_its_tokens_come_from_its_frames(compose, tmp_path):
    from mmit.data.collate import collator_for
    from mmit.data.tokenize import tokenize_conversation
    from mmit.factory import build_model
    from mmit.training.loss import next_token_loss_sum

    built = build_model(compose(["+recipe=vqa_tiny", "+video={frames: 4, pool_to: 2, temporal: learned}"]))
    model, tokenizer = built.model, built.tokenizer
    paths = []
    for n, colour in enumerate(((255, 0, 0), (0, 0, 255))):
        frames = [np.full((32, 32, 3), colour, np.uint8) * (k % 2) for k in range(6)]
        paths.append(tmp_path / f"clip{n}.mp4")
        write_clip(paths[-1], frames, fps=4)
    convs = [
        Conversation(
            f"c{n}",
            [Message("user", "<video>\nWhat happens?"), Message("assistant", "It blinks.")],
            media=[MediaRef("video", "mp4", path=str(path))],
        )
        for n, path in enumerate(paths)
    ]
    samples = [tokenize_conversation(c, tokenizer, 256, slots=list(model.slots.values()))[0] for c in convs]
    batch = collator_for(model, tokenizer)(samples)
    assert batch.media["video"].shape[:2] == (2, 4)
    model.train()
    loss = next_token_loss_sum(model(batch), batch.labels, model.output_head)
    loss.backward()
    assert model.projectors["video"].frame_code.code.grad.abs().sum() > 0  # the frame code learns
    with torch.no_grad():
        own = model.embed(batch.input_ids, batch.media)
        other = model.embed(batch.input_ids, {"video": batch.media["video"].flip(0)})
    at = batch.input_ids == model.slots["video"].token_id
    assert not torch.allclose(own[at], other[at]) and torch.equal(own[~at], other[~at])


def test_packed_video_samples_give_the_unpacked_loss(compose, tmp_path):
    from mmit.data.collate import collator_for
    from mmit.data.tokenize import tokenize_conversation
    from mmit.factory import build_model
    from mmit.training.loss import next_token_loss_sum
    from mmit.training.packing import pack_batch

    built = build_model(compose(["+recipe=vqa_tiny", "+video={frames: 3, pool_to: 2, temporal: learned}"]))
    model, tokenizer = built.model, built.tokenizer
    convs = []
    for n in range(3):
        path = tmp_path / f"clip{n}.mp4"
        write_clip(path, [np.full((32, 32, 3), 60 * n + 20 * k, np.uint8) for k in range(5)], fps=5)
        convs.append(
            Conversation(
                f"v{n}",
                [
                    Message("user", "<video>\nWhat happens?" + " Look closely." * n),
                    Message("assistant", "It brightens."),
                ],
                media=[MediaRef("video", "mp4", path=str(path))],
            )
        )
    convs.append(Conversation("t", [Message("user", "Say hi."), Message("assistant", "Hi.")]))
    samples = [tokenize_conversation(c, tokenizer, 256, slots=list(model.slots.values()))[0] for c in convs]
    padded = collator_for(model, tokenizer)(samples)
    packed = pack_batch(padded, sum(len(s.input_ids) for s in samples), tokenizer.pad_token_id)
    assert packed.input_ids.shape[0] < padded.input_ids.shape[0]  # the four samples share rows
    model.eval()
    with torch.no_grad():
        padded_loss = next_token_loss_sum(model(padded), padded.labels, model.output_head)
        packed_loss = next_token_loss_sum(model(packed), packed.labels, model.output_head)
    torch.testing.assert_close(packed_loss, padded_loss, atol=1e-4, rtol=1e-5)
    assert packed.num_label_tokens == padded.num_label_tokens


def test_a_clips_frames_and_sound_track_train_together(compose, tmp_path):
    from mmit.data.collate import collator_for
    from mmit.data.tokenize import tokenize_conversation
    from mmit.factory import build_model
    from mmit.training.loss import next_token_loss_sum

    overrides = ["+recipe=vqa_tiny", "audio_encoder=tiny", "+video={frames: 3, pool_to: 2, temporal: learned}"]
    built = build_model(compose(overrides))
    model, tokenizer = built.model, built.tokenizer
    assert set(model.slots) == {"image", "audio", "video"}
    tone = (0.3 * np.sin(2 * np.pi * 330 * np.arange(16000) / 16000)).astype(np.float32)
    path = tmp_path / "both.mp4"
    write_clip(path, [np.full((32, 32, 3), 30 * k, np.uint8) for k in range(4)], fps=4, audio=tone)
    conv = Conversation(
        "both",
        [Message("user", "<audio>\n<video>\nWhat do you see and hear?"), Message("assistant", "A tone.")],
        media=[MediaRef("audio", "mp4", path=str(path)), MediaRef("video", "mp4", path=str(path))],
    )
    sample, _ = tokenize_conversation(conv, tokenizer, 512, slots=list(model.slots.values()))
    batch = collator_for(model, tokenizer)([sample])
    assert set(batch.media) == {"audio", "video"}
    model.train()
    next_token_loss_sum(model(batch), batch.labels, model.output_head).backward()
    assert model.projectors["audio"].mlp[0].weight.grad.abs().sum() > 0  # the sound track reached the loss
    assert model.projectors["video"].frame_code.code.grad.abs().sum() > 0  # and so did the frames


def test_the_feature_cache_keys_clips_by_their_sampling(compose):
    from types import SimpleNamespace

    from mmit.factory import build_model, prepare_feature_caches

    folders = {}
    for name, video in (("uniform", "{frames: 4, fps: null}"), ("fps", "{frames: 4, fps: 2.0}")):
        cfg = compose(["+recipe=vqa_tiny", f"+video={video}"])
        model = build_model(cfg).model
        data = SimpleNamespace(train=SimpleNamespace(samples=[]), eval={})
        stores = prepare_feature_caches(cfg, model, data)
        folders[name] = stores["video"].root.name
        assert stores["image"].root.name != folders[name]
    assert folders["uniform"].startswith("video-") and folders["uniform"] != folders["fps"]
