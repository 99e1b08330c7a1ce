import pytest
import torch

from mmit.data.samples import Conversation, Message
from mmit.data.tokenize import encode_prompt, tokenize_conversation
from mmit.models.llm import LLMLoadError, build_tiny_llm_dir, convert_smollm2_gguf, load_pretrained


def test_tiny_preset_is_a_saved_directory_that_reloads_identically(tiny):
    directory = build_tiny_llm_dir()
    assert (directory / "model.safetensors").exists() and (directory / "tokenizer.json").exists()
    again = load_pretrained(str(directory))
    ids = torch.tensor([[1, 5, 9, 42]])
    torch.testing.assert_close(again.model(ids).logits, tiny.model(ids).logits)
    assert again.tokenizer.chat_template == tiny.tokenizer.chat_template


def test_uncached_hub_id_offline_fails_fast_with_advice():
    with pytest.raises(LLMLoadError, match=r"not in the local Hugging Face cache.*llm\.name_or_path"):
        load_pretrained("some-org/some-model-that-is-not-cached")


def test_missing_local_directory_is_named():
    with pytest.raises(LLMLoadError, match="does not exist"):
        load_pretrained("./no/such/model/dir")


def pickled_copy(directory, to):
    """A copy of a saved model directory with its weights as a pickle (pytorch_model.bin) only."""
    import shutil

    from safetensors.torch import load_file

    shutil.copytree(directory, to)
    (to / "model.safetensors").unlink()
    torch.save(load_file(directory / "model.safetensors"), to / "pytorch_model.bin")
    return to


def test_pickled_weights_are_never_loaded(tmp_path, monkeypatch):
    """An LLM, vision or audio encoder folder someone hands over with pytorch_model.bin only:
    refused, naming the file; transformers would otherwise torch.load it."""
    from mmit.models.audio import WhisperEncoder, build_tiny_whisper_dir
    from mmit.models.encoders import HFVisionEncoder, build_tiny_clip_dir
    from mmit.paths import pickled_files

    llm = pickled_copy(build_tiny_llm_dir(), tmp_path / "llm")
    clip = pickled_copy(build_tiny_clip_dir(), tmp_path / "clip")
    whisper = pickled_copy(build_tiny_whisper_dir(), tmp_path / "whisper")
    unpickled = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: unpickled.append(a))
    with pytest.raises(
        LLMLoadError, match=r"LLM .*llm: holds pickled weights \(pytorch_model\.bin\) and no safetensors"
    ):
        load_pretrained(str(llm))
    with pytest.raises(ValueError, match=r"vision encoder .*clip: holds pickled weights \(pytorch_model\.bin\)"):
        HFVisionEncoder(str(clip))
    with pytest.raises(ValueError, match=r"audio encoder .*whisper: holds pickled weights \(pytorch_model\.bin\)"):
        WhisperEncoder(str(whisper))
    assert unpickled == []
    # a Trainer checkpoint's own pickles beside safetensors weights are not blamed for another failure
    (tmp_path / "trainer").mkdir()
    for name in ("model.safetensors", "optimizer.pt", "training_args.bin", "rng_state.pth"):
        (tmp_path / "trainer" / name).write_bytes(b"x")
    assert pickled_files(tmp_path / "trainer") == [] and pickled_files("org/hub-id") == []


def test_tokenizer_without_template_needs_one(tmp_path, tiny):
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    import json

    cfg_path = tmp_path / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(LLMLoadError, match="no chat template"):
        load_pretrained(str(tmp_path))
    loaded = load_pretrained(str(tmp_path), chat_template="{{ messages[0]['content'] }}")
    assert loaded.tokenizer.chat_template == "{{ messages[0]['content'] }}"


@pytest.mark.slow
def test_smollm2_conversion_answers_and_masks():
    # Into the test session's own mmit cache (conftest), where the recipes' SmolLM2 tests read it:
    # converted once per session, whichever test comes first.
    directory = convert_smollm2_gguf()
    assert (directory / "model.safetensors").exists()
    loaded = load_pretrained(str(directory))
    model, tokenizer = loaded.model, loaded.tokenizer
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.hidden_size == 576
    assert getattr(model.config, "quantization_config", None) is None
    assert loaded.stored_dtype == torch.bfloat16 and model.dtype == torch.float32  # stored as published, loaded wide
    prompt = encode_prompt(tokenizer, [{"role": "user", "content": "What is the capital of France?"}])
    out = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True)
    assert "Paris" in answer
    # The mask on SmolLM2's own template (which inserts a default system prompt).
    conv = Conversation("s", [Message("user", "Hi"), Message("assistant", "Hello there")])
    sample, _ = tokenize_conversation(conv, tokenizer, 256)
    labelled = [t for t, lab in zip(sample.input_ids, sample.labels) if lab != -100]
    assert tokenizer.decode(labelled) == "Hello there<|im_end|>"
