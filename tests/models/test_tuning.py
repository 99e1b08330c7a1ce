import pytest
from peft import LoraConfig

from mmit.models.llm import load_tiny
from mmit.models.tuning import apply_tuning, count_parameters, parameter_table


@pytest.mark.parametrize("mode", ["frozen", "full", "lora"])
def test_tuning_modes_choose_the_trainable_parameters(mode):
    llm = load_tiny().model
    total = sum(p.numel() for p in llm.parameters())
    tuned = apply_tuning(llm, mode, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), name="llm")
    trainable, frozen = count_parameters(tuned)
    names = [n for n, p in tuned.named_parameters() if p.requires_grad]
    if mode == "frozen":
        assert trainable == 0 and frozen == total
    elif mode == "full":
        assert frozen == 0 and trainable == total
    else:
        assert names and all("lora_" in n for n in names)
        # r=4 on q and v of 2 layers, hidden 64: 2 layers * 2 modules * (64*4 + 4*64)
        assert trainable == 2 * 2 * (64 * 4 + 4 * 64) and frozen == total


def test_unknown_mode_and_missing_lora_config_are_clear():
    llm = load_tiny().model
    with pytest.raises(ValueError, match="tuning must be one of"):
        apply_tuning(llm, "half", name="llm")
    with pytest.raises(ValueError, match="needs a peft config"):
        apply_tuning(llm, "lora", None, name="llm")


def test_parameter_table_rows():
    llm = apply_tuning(load_tiny().model, "full")
    table = parameter_table({"llm": (llm, "full")})
    lines = table.splitlines()
    assert lines[0].split() == ["component", "tuning", "trainable", "frozen", "trainable", "%"]
    assert lines[2].split()[:2] == ["llm", "full"] and lines[2].split()[-1] == "100.00"
    assert lines[-1].startswith("total")


@pytest.mark.parametrize("component", ["projector", "encoder"])
def test_lora_on_other_components_trains_only_injected_weights(component):
    import torch
    from torch import nn

    from mmit.models.encoders import tiny_clip_encoder
    from mmit.models.projectors import build_projector

    module = build_projector("mlp", 32, 64) if component == "projector" else tiny_clip_encoder()
    inputs = torch.randn(2, 16, 32) if component == "projector" else torch.randn(2, 3, 32, 32)
    before = module(inputs).detach()
    tuned = apply_tuning(module, "lora", name=component)
    names = [n for n, p in tuned.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    torch.testing.assert_close(tuned(inputs), before)  # LoRA starts as the identity
    tuned(inputs).sum().backward()
    assert all(p.grad is None for n, p in tuned.named_parameters() if "lora_" not in n)
    assert any(isinstance(m, nn.Module) and "lora_A" in n for n, m in tuned.named_modules())
