"""What happens to each component during training: frozen | lora | full, and for the LLM also the
other efficient-tuning methods of the literature (dora, ia3, prompt_tuning, bitfit, adapter).

Also the table of trainable and frozen parameters per component logged at start.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

TUNING = ("frozen", "lora", "full")  # any component
LLM_TUNING = (*TUNING, "dora", "ia3", "prompt_tuning", "bitfit", "adapter")  # the LLM (`peft=...`)
PEFT_WRAPPED = ("lora", "dora", "ia3")  # the LLM gets peft's wrapper; its adapter saves with peft's tools


@dataclass
class SoftPromptConfig:
    """Prompt tuning (Lester et al., 2021): learned embeddings read before every sequence."""

    num_virtual_tokens: int = 20
    init_text: str | None = None  # start from this text's token embeddings (repeated); None: random vocabulary rows
    seed: int = 0  # picks the vocabulary rows when init_text is None


@dataclass
class BitFitConfig:
    """BitFit (Ben Zaken et al., 2022): only bias terms train.

    An LLM with bias parameters trains exactly those. A bias-free LLM (the Llama family) gets
    zero-initialised biases on ``target_modules``, so it computes the same function at the start.
    """

    target_modules: list[str] | str = "all-linear"  # names of linear layers, or every linear but the output head


@dataclass
class AdapterConfig:
    """Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2021) in every decoder layer."""

    bottleneck: int = 64
    after: list[str] = field(default_factory=lambda: ["mlp"])  # sub-layers followed by an adapter; Houlsby: + self_attn


def apply_tuning(module: nn.Module, mode: str, config=None, name: str = "module", tokenizer=None) -> nn.Module:
    """Freeze, fully unfreeze, or add trainable weights of the given method to ``module``.
    Returns the module to use.

    With LoRA, DoRA or IA3 the LLM gets a peft wrapper (its adapter saves and loads with peft's
    own tools); any other component gets LoRA layers injected in place into its linear and
    convolution layers. ``config`` is the peft config (lora, dora, ia3) or ours (the rest);
    ``tokenizer`` is needed only by a soft prompt initialised from text.
    """
    allowed = LLM_TUNING if name == "llm" else TUNING
    if mode not in allowed:
        raise ValueError(f"{name}: tuning must be one of {allowed}, not {mode!r}")
    if name == "llm" and mode in PEFT_WRAPPED:
        if config is None:
            raise ValueError(f"{name}: tuning {mode!r} needs a peft config (the `peft` config group)")
        if mode == "dora" and not getattr(config, "use_dora", False):
            raise ValueError(f"{name}: tuning 'dora' needs a LoraConfig with use_dora=True")
        from peft import get_peft_model

        return get_peft_model(module, config)
    if mode == "lora":
        return inject_lora(module, rank=8)
    if mode == "prompt_tuning":
        return add_soft_prompt(module, config or SoftPromptConfig(), tokenizer)
    if mode == "bitfit":
        return add_bitfit(module, config or BitFitConfig())
    if mode == "adapter":
        return add_adapters(module, config or AdapterConfig())
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


# --- prompt tuning ---------------------------------------------------------------------------


class SoftPrompt(nn.Module):
    """Learned input embeddings that ``MultimodalLM.prepare_inputs`` puts before every sequence.

    It lives on the LLM (``llm.soft_prompt``) rather than in a peft wrapper, because
    MultimodalLM calls the decoder itself and a wrapper's forward would never run.
    """

    def __init__(self, init: torch.Tensor):
        super().__init__()
        self.embeddings = nn.Parameter(init.detach().clone())

    @property
    def num_tokens(self) -> int:
        return self.embeddings.shape[0]

    def forward(self, batch_size: int) -> torch.Tensor:
        """(batch_size, num_tokens, hidden)."""
        return self.embeddings.unsqueeze(0).expand(batch_size, -1, -1)


def add_soft_prompt(llm: nn.Module, config: SoftPromptConfig, tokenizer=None) -> nn.Module:
    """Freeze the LLM and give it a soft prompt started from real token embeddings."""
    table = llm.get_input_embeddings().weight
    n = config.num_virtual_tokens
    if config.init_text:
        if tokenizer is None:
            raise ValueError("a soft prompt initialised from init_text needs the tokenizer")
        ids = tokenizer(config.init_text, add_special_tokens=False)["input_ids"]
        ids = torch.tensor((ids * math.ceil(n / len(ids)))[:n])
    else:
        ids = torch.randint(table.shape[0], (n,), generator=torch.Generator().manual_seed(config.seed))
    llm.requires_grad_(False)
    llm.soft_prompt = SoftPrompt(table[ids.to(table.device)])
    return llm


# --- BitFit ----------------------------------------------------------------------------------


def target_linears(model: nn.Module, targets: list[str] | str) -> list[nn.Linear]:
    """Linear layers named (last name part) in ``targets``; "all-linear": all but the output head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found = [
        m
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and m is not head and (targets == "all-linear" or n.rsplit(".", 1)[-1] in targets)
    ]
    if not found:
        raise ValueError(f"{type(model).__name__} has no linear layer among {targets}")
    return found


def add_bitfit(llm: nn.Module, config: BitFitConfig) -> nn.Module:
    """Train the LLM's biases only; a bias-free LLM first gets zero biases on the target layers."""
    llm.requires_grad_(False)
    biases = [p for n, p in llm.named_parameters() if n.rsplit(".", 1)[-1] == "bias"]
    if not biases:
        for linear in target_linears(llm, config.target_modules):
            w = linear.weight
            linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=w.dtype, device=w.device))
            biases.append(linear.bias)
    for bias in biases:
        bias.requires_grad_(True)
    return llm


# --- bottleneck adapters ---------------------------------------------------------------------


class BottleneckAdapter(nn.Module):
    """x + up(relu(down(x))); ``up`` starts at zero, so the adapter starts as the identity."""

    def __init__(self, hidden: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)
        self.up = nn.Linear(bottleneck, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.relu(self.down(x)))


def _run_adapter(sublayer: nn.Module, args, output):
    """Forward hook: the sub-layer's output (before the decoder layer's residual add) goes through its adapter."""
    if isinstance(output, tuple):  # attention returns (output, weights)
        return (sublayer.adapter(output[0]), *output[1:])
    return sublayer.adapter(output)


def add_adapters(llm: nn.Module, config: AdapterConfig) -> nn.Module:
    """Freeze the LLM and add an adapter after each named sub-layer of every decoder layer.

    Each adapter is a child of its sub-layer (``...layers.3.mlp.adapter.down.weight``) and runs
    in a forward hook, so the pretrained weights keep their names and the model's own code.
    """
    llm.requires_grad_(False)
    embeddings = llm.get_input_embeddings()
    w = embeddings.weight
    for i, layer in enumerate(llm.get_decoder().layers):
        for name in config.after:
            sublayer = getattr(layer, name, None)
            if sublayer is None:
                raise ValueError(f"decoder layer {i} ({type(layer).__name__}) has no sub-layer {name!r}")
            sublayer.adapter = BottleneckAdapter(embeddings.embedding_dim, config.bottleneck).to(w.device, w.dtype)
            sublayer.register_forward_hook(_run_adapter)
    return llm


# --- frozen weights in 16 bits ---------------------------------------------------------------


def resolve_frozen_dtype(setting: str, stored: torch.dtype | None) -> torch.dtype | None:
    """The dtype frozen LLM weights are kept in, or None to keep them as loaded.

    ``auto``: the checkpoint's own dtype when it is a 16-bit one (hub LLMs are mostly published in
    bf16), so keeping them there loses nothing; ``float32``: as loaded; ``bfloat16`` / ``float16``.
    """
    choices = {"auto": None, "float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if setting not in choices:
        raise ValueError(f"frozen_dtype must be one of {sorted(choices)}, not {setting!r}")
    if setting == "auto":
        return stored if stored in (torch.bfloat16, torch.float16) else None
    return choices[setting]


_workspace = threading.local()
WORKSPACE_MAX = 16 * 2**20  # elements: larger weights (vocabulary-sized output heads) are widened into new tensors


def _widened(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight`` in ``dtype``, as a view of this thread's one reused buffer (one widened weight at a time).

    A new tensor for every call would be allocated and paged in again each time: on a CPU that made a
    LoRA step of SmolLM2-135M ~8% slower than with fp32 weights; with the buffer it is within noise.
    """
    if weight.dtype == dtype:
        return weight
    n = weight.numel()
    if n > WORKSPACE_MAX:
        return weight.to(dtype)
    buffers = _workspace.__dict__.setdefault("buffers", {})
    buffer = buffers.get((weight.device, dtype))
    if buffer is None or buffer.numel() < n:
        buffer = buffers[weight.device, dtype] = torch.empty(n, dtype=dtype, device=weight.device)
    return buffer[:n].view(weight.shape).copy_(weight)


class _NarrowLinearFunction(torch.autograd.Function):
    """``F.linear`` with a frozen weight stored narrower than the compute dtype.

    The weight is widened for each call and saved for backward as stored: autograd on the widened
    copy would keep a full-width copy of every layer alive until backward, as large as the weights.
    The widened weight lives only during its matmul, so every layer can share one buffer.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight)
        on = x.device.type
        dtype = torch.get_autocast_dtype(on) if torch.is_autocast_enabled(on) else x.dtype
        return F.linear(x.to(dtype), _widened(weight, dtype), None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weight,) = ctx.saved_tensors
        grad_bias = grad.flatten(0, -2).sum(0) if ctx.needs_input_grad[2] else None  # BitFit trains biases
        return grad @ _widened(weight, grad.dtype), None, grad_bias


class NarrowFrozenLinear(nn.Linear):
    """A frozen ``nn.Linear`` whose weight is stored in 16 bits and computed in the input's dtype."""

    wide_dtype: torch.dtype = torch.float32  # what the weight was loaded in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _NarrowLinearFunction.apply(x, self.weight, self.bias)


class NarrowFrozenEmbedding(nn.Embedding):
    """A frozen ``nn.Embedding`` stored in 16 bits; its output comes back in the dtype it was loaded in."""

    wide_dtype: torch.dtype = torch.float32

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids).to(self.wide_dtype)


_NARROW = {nn.Linear: NarrowFrozenLinear, nn.Embedding: NarrowFrozenEmbedding}
NARROW_CLASSES = tuple(_NARROW.values())


def narrow_frozen(llm: nn.Module, dtype: torch.dtype) -> int:
    """Keep the LLM's frozen linear and embedding weights in ``dtype``; returns how many were narrowed.

    Trainable weights (LoRA, adapters, biases under BitFit, everything under full tuning) stay as they
    are; a weight shared by two modules (tied embeddings and output head) is narrowed once. Each
    module's class changes in place, as ``torch.nn.utils.parametrize`` does, so names, hooks and
    peft's wrappers around it stay. ``widen_frozen`` undoes it.
    """
    loaded = {id(p): p.dtype for p in llm.parameters()}  # before a tied weight is narrowed by its first module
    narrowed = 0
    for module in llm.modules():
        kind = _NARROW.get(type(module))
        if kind is None or module.weight.requires_grad:
            continue
        module.__class__ = kind
        module.wide_dtype = loaded[id(module.weight)]
        if module.weight.dtype != dtype:
            module.weight.data = module.weight.data.to(dtype)
            narrowed += 1
    return narrowed


def widen_frozen(llm: nn.Module) -> bool:
    """Undo ``narrow_frozen`` in place (before folding LoRA into the weights, say); True if anything was narrow."""
    plain = {narrow: wide for wide, narrow in _NARROW.items()}
    found = False
    for module in llm.modules():
        if type(module) in plain:
            module.weight.data = module.weight.data.to(module.wide_dtype)
            module.__class__ = plain[type(module)]
            found = True
    return found


# --- reporting -------------------------------------------------------------------------------


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
