"""What happens to each component during training: frozen | lora | full.

Also the table of trainable and frozen parameters per component logged at start.
"""

from __future__ import annotations

from torch import nn

TUNING = ("frozen", "lora", "full")


def apply_tuning(module: nn.Module, mode: str, lora_config=None, name: str = "module") -> nn.Module:
    """Freeze, fully unfreeze, or wrap ``module`` with peft (LoRA). Returns the module to use."""
    if mode not in TUNING:
        raise ValueError(f"{name}: tuning must be one of {TUNING}, not {mode!r}")
    if mode == "lora":
        if lora_config is None:
            raise ValueError(f"{name}: tuning 'lora' needs a peft config (the `peft` config group)")
        from peft import get_peft_model

        return get_peft_model(module, lora_config)
    module.requires_grad_(mode == "full")
    if mode == "frozen":
        module.eval()
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
