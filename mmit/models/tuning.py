"""What happens to each component during training: frozen | lora | full.

Also the table of trainable and frozen parameters per component logged at start.
"""

from __future__ import annotations

from torch import nn

TUNING = ("frozen", "lora", "full")


def apply_tuning(module: nn.Module, mode: str, lora_config=None, name: str = "module") -> nn.Module:
    """Freeze, fully unfreeze, or add LoRA to ``module``. Returns the module to use.

    The LLM gets a peft wrapper (its adapter saves and loads with peft's own tools); any other
    component gets LoRA layers injected in place into its linear and convolution layers.
    """
    if mode not in TUNING:
        raise ValueError(f"{name}: tuning must be one of {TUNING}, not {mode!r}")
    if mode == "lora" and name == "llm":
        if lora_config is None:
            raise ValueError(f"{name}: tuning 'lora' needs a peft config (the `peft` config group)")
        from peft import get_peft_model

        return get_peft_model(module, lora_config)
    if mode == "lora":
        return inject_lora(module, rank=8)
    module.requires_grad_(mode == "full")
    if mode == "frozen":
        module.eval()
    return module


def inject_lora(module: nn.Module, rank: int = 8) -> nn.Module:
    """LoRA on every Linear / Conv2d of a non-LLM component; only the LoRA weights train."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = [n for n, m in module.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and n]
    if not targets:
        raise ValueError(f"{type(module).__name__} has no linear or convolution layer for LoRA")
    module.requires_grad_(False)
    module = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets), module)
    for param_name, param in module.named_parameters():
        param.requires_grad = "lora_" in param_name
    return module


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameter counts; tied weights are counted once."""
    trainable = frozen = 0
    for p in module.parameters():
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    return trainable, frozen


def parameter_table(components: dict[str, tuple[nn.Module, str]]) -> str:
    """A fixed-width table: component, tuning, trainable, frozen, trainable %."""
    rows = [("component", "tuning", "trainable", "frozen", "trainable %")]
    total_t = total_f = 0
    for name, (module, mode) in components.items():
        t, f = count_parameters(module)
        total_t, total_f = total_t + t, total_f + f
        rows.append((name, mode, f"{t:,}", f"{f:,}", f"{100 * t / max(t + f, 1):.2f}"))
    rows.append(("total", "", f"{total_t:,}", f"{total_f:,}", f"{100 * total_t / max(total_t + total_f, 1):.2f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
