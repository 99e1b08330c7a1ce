"""A transformers LLaVA checkpoint as mmit's LLM, vision encoder and projector: ``+model=llava init_from=DIR``.

``DIR`` is a ``LlavaForConditionalGeneration`` directory (``config.json`` with ``model_type: llava``,
safetensors weights, its tokenizer and image processor), as llava-hf publishes them and as
``mmit.export`` writes them. Each of the three builders reads only its own tensors from it:

- ``load_llava_llm`` (``llm=llava``): the language model as a plain causal LM, with the tokenizer;
- ``llava_vision_encoder`` (``vision_encoder=llava``): the CLIP / SigLIP tower as an
  ``HFVisionEncoder`` whose layer and tokens are the checkpoint's ``vision_feature_layer`` and
  ``vision_feature_select_strategy``;
- ``load_llava_projector`` (``projector=llava``, called by ``mmit.factory``): LLaVA-1.5's
  Linear-GELU-Linear into mmit's ``mlp`` projector of depth 2.

A checkpoint mmit cannot compute exactly (several feature layers, a projector other than
Linear-GELU-Linear with biases, code of its own) is refused, naming the file and the key.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mmit.data.samples import BAD_JSON
from mmit.models import attention
from mmit.models.encoders import HFVisionEncoder, ImageEncoder
from mmit.models.llm import LLMLoadError, LoadedLLM, _dtype
from mmit.paths import is_plain_file_name

log = logging.getLogger(__name__)

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.ckpt")
# Tokens a tower puts before its patches: CLIP's class token; SigLIP has none.
VISION_TOWERS = {"clip_vision_model": 1, "siglip_vision_model": 0}
# Checkpoints saved by transformers 4.x name the parts without the ``model.`` level.
OLD_PREFIXES = (
    ("language_model.lm_head.", "lm_head."),
    ("language_model.model.", "model.language_model."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
)
LLM_PREFIX, TOWER_PREFIX, PROJECTOR_PREFIX = (
    "model.language_model.",
    "model.vision_tower.",
    "model.multi_modal_projector.",
)


class LlavaImportError(ValueError):
    """The directory is not a LLaVA checkpoint mmit can compute exactly; the message names the file."""


@dataclass(frozen=True)
class LlavaCheckpoint:
    path: Path
    config: object  # transformers' LlavaConfig
    files: dict[str, Path]  # tensor name (transformers 5 naming) -> the safetensors file holding it
    stored_names: dict[str, str]  # tensor name (transformers 5 naming) -> its name in the file

    @property
    def image_tokens(self) -> str:
        """mmit's ``tokens`` for the checkpoint's feature selection."""
        return "all" if self.config.vision_feature_select_strategy == "full" and self.extra_tokens else "patch"

    @property
    def extra_tokens(self) -> int:
        return VISION_TOWERS[self.config.vision_config.model_type]

    def tensors(self, prefix: str, dtype: torch.dtype | None = None):
        """(name without ``prefix``, tensor) for every tensor under ``prefix``, read one at a time."""
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for name, file in self.files.items():
            if name.startswith(prefix):
                by_file.setdefault(file, []).append(name)
        for file, names in by_file.items():
            with safe_open(file, framework="pt") as handle:
                for name in names:
                    tensor = handle.get_tensor(self.stored_names[name])
                    yield name[len(prefix) :], tensor if dtype is None else tensor.to(dtype)


def is_llava_checkpoint(path: str | Path) -> bool:
    """A directory whose ``config.json`` says ``model_type: llava``."""
    config = Path(path).expanduser() / CONFIG
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == "llava"
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def _canonical(name: str) -> str:
    if name.startswith(("model.", "lm_head.")):
        return name
    for old, new in OLD_PREFIXES:
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def _weight_files(path: Path) -> dict[str, Path]:
    """Stored tensor name -> safetensors file; pickled weights are refused, never read."""
    from safetensors import safe_open

    index = path / WEIGHTS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
        except (*BAD_JSON, AttributeError) as err:
            raise LlavaImportError(f"{index}: not a weights index ({err})") from err
        files = weight_map.values() if isinstance(weight_map, dict) else [weight_map]
        odd = [f for f in files if not is_plain_file_name(f)]
        if odd:  # "../x.safetensors" or "/abs/y.safetensors" would read weights from outside the checkpoint
            raise LlavaImportError(f"{index}: weight_map must name files in the checkpoint's folder, not {odd[0]!r}")
        return {name: path / file for name, file in weight_map.items()}
    single = path / WEIGHTS
    if single.is_file():
        with safe_open(single, framework="pt") as handle:
            return dict.fromkeys(handle.keys(), single)
    pickled = [name for name in PICKLED_WEIGHTS if (path / name).is_file()]
    if pickled:
        raise LlavaImportError(
            f"{path / pickled[0]}: pickled weights; mmit reads safetensors only. Convert them where you trust the "
            "file: LlavaForConditionalGeneration.from_pretrained(DIR).save_pretrained(NEW_DIR) writes safetensors"
        )
    raise LlavaImportError(f"{path}: no {WEIGHTS} or {WEIGHTS_INDEX}")


def read_llava(path: str | Path) -> LlavaCheckpoint:
    """The checkpoint's config and where each tensor is, checked against what mmit can compute."""
    from transformers import LlavaConfig

    path = Path(path).expanduser().resolve() if path else None
    if path is None or not path.is_dir():
        raise LlavaImportError(
            f"{path}: not a directory; init_from must name a local LlavaForConditionalGeneration directory "
            "(for a hub model: `hf download llava-hf/llava-1.5-7b-hf --local-dir DIR`)"
        )
    config_file = path / CONFIG
    if not config_file.is_file():
        raise LlavaImportError(f"{config_file}: missing; a LLaVA checkpoint has a config.json")
    try:
        raw = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LlavaImportError(f"{config_file}: not readable JSON ({err})") from err
    if not isinstance(raw, dict) or raw.get("model_type") != "llava":
        found = raw.get("model_type") if isinstance(raw, dict) else None
        raise LlavaImportError(
            f"{config_file}: model_type is {found!r}, not 'llava' (LlavaForConditionalGeneration); "
            "LLaVA-NeXT's tiles and other variants are not what mmit's encoder and projector compute"
        )
    nodes = {
        "the top level": raw,
        "text_config": raw.get("text_config") or {},
        "vision_config": raw.get("vision_config") or {},
    }
    remote = [where for where, node in nodes.items() if "auto_map" in node]
    if remote:
        raise LlavaImportError(
            f"{config_file}: auto_map at {', '.join(remote)} asks for the checkpoint's own code "
            "(trust_remote_code); mmit builds LLaVA from transformers' classes only"
        )
    try:
        config = LlavaConfig.from_pretrained(path)
    except (ValueError, TypeError) as err:  # transformers checks each field's type
        raise LlavaImportError(f"{config_file}: not a valid LlavaConfig ({err})") from err
    problems = []
    tower = config.vision_config.model_type
    if tower not in VISION_TOWERS:
        problems.append(f"vision_config.model_type is {tower!r}; mmit's encoder takes {sorted(VISION_TOWERS)}")
    if not isinstance(config.vision_feature_layer, int):
        problems.append(
            f"vision_feature_layer is {config.vision_feature_layer} (several layers, concatenated); "
            "mmit's encoder takes one layer"
        )
    if config.vision_feature_select_strategy == "default" and not VISION_TOWERS.get(tower, 1):
        problems.append(
            f"vision_feature_select_strategy is 'default' on a {tower}, which drops its first patch "
            "(SigLIP has no class token); mmit keeps either every token or every patch"
        )
    if config.projector_hidden_act != "gelu":
        problems.append(
            f"projector_hidden_act is {config.projector_hidden_act!r}; mmit's mlp projector is exact 'gelu'"
        )
    if not config.multimodal_projector_bias:
        problems.append("multimodal_projector_bias is false; mmit's mlp projector has biases")
    if problems:
        raise LlavaImportError(f"{config_file}: mmit cannot compute this LLaVA exactly: " + "; ".join(problems))
    stored = _weight_files(path)
    names = {_canonical(name): name for name in stored}
    files = {name: stored[original] for name, original in names.items()}
    return LlavaCheckpoint(path, config, files, names)


def _load_into(module: nn.Module, checkpoint: LlavaCheckpoint, prefix: str, rename=None, optional=()) -> None:
    """Copy the checkpoint's tensors under ``prefix`` into ``module``, one tensor at a time; every
    tensor of the module must come from the checkpoint (bar ``optional``), and every tensor read must fit."""
    target = module.state_dict()
    filled = set()
    for name, tensor in checkpoint.tensors(prefix):
        name = rename(name) if rename else name
        if name not in target or target[name].shape != tensor.shape:
            shape = tuple(target[name].shape) if name in target else None
            raise LlavaImportError(
                f"{checkpoint.path}: tensor {prefix}{name} {tuple(tensor.shape)} does not fit "
                f"{type(module).__name__} built from {CONFIG} ({shape or 'no such tensor'})"
            )
        with torch.no_grad():
            target[name].copy_(tensor)
        filled.add(name)
    missing = sorted(set(target) - filled - set(optional))
    if missing:
        raise LlavaImportError(f"{checkpoint.path}: no tensor for {prefix}{missing[0]} ({len(missing)} missing)")


# --- the language model ----------------------------------------------------------------------


def load_llava_llm(
    name_or_path: str | None,
    dtype: str = "float32",
    chat_template: str | None = None,
    attn_implementation: str | None = attention.NAME,
) -> LoadedLLM:
    """The checkpoint's language model as a transformers causal LM (``AutoModelForCausalLM``), with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.initialization import no_init_weights

    if not name_or_path:
        raise LLMLoadError("llm=llava reads the LLaVA checkpoint named by init_from=DIR, and init_from is not set")
    checkpoint = read_llava(name_or_path)
    text_config = checkpoint.config.text_config
    stored_dtype = text_config.dtype or checkpoint.config.dtype
    if isinstance(stored_dtype, str):
        stored_dtype = getattr(torch, stored_dtype, None)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(
            text_config, dtype=_dtype(dtype), attn_implementation=attn_implementation, trust_remote_code=False
        )
    head = next(name for name, module in model.named_modules() if module is model.get_output_embeddings())
    base = f"{model.base_model_prefix}."

    def rename(name: str) -> str:
        return base + name

    _load_into(model, checkpoint, LLM_PREFIX, rename, optional=[f"{head}.weight"])
    if any(name.startswith("lm_head.") for name in checkpoint.files):
        _load_into(model, checkpoint, "lm_head.", lambda name: f"{head}.{name}", optional=set(model.state_dict()))
    elif not getattr(model.config, "tie_word_embeddings", False):
        raise LlavaImportError(f"{checkpoint.path}: no lm_head.weight, and the text config does not tie it")
    model.tie_weights()
    model.eval()
    if (checkpoint.path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(checkpoint.path)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint.path, trust_remote_code=False)
    if tokenizer.chat_template is None:
        if chat_template is None:
            raise LLMLoadError(
                f"{checkpoint.path}: the tokenizer has no chat template of its own (a LLaVA processor's template takes "
                "lists of image and text items, mmit's prompts are strings); set llm.chat_template "
                "(e.g. LLaVA-1.5's \"{% for m in messages %}{{ m['role'] | upper }}: {{ m['content'] }} {% endfor %}"
                '{% if add_generation_prompt %}ASSISTANT:{% endif %}")'
            )
        tokenizer.chat_template = chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    source = str(checkpoint.path)
    log.info(
        "LLM from LLaVA %s: %s, %.1fM parameters",
        source,
        type(model).__name__,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return LoadedLLM(model=model, tokenizer=tokenizer, source=source, stored_dtype=stored_dtype)


# --- the vision tower ------------------------------------------------------------------------


class LlavaVisionEncoder(HFVisionEncoder):
    """An ``HFVisionEncoder`` whose tower and image processor come from a LLaVA checkpoint."""

    def __init__(self, checkpoint: LlavaCheckpoint, tokens: str):
        ImageEncoder.__init__(self, tokens, None)  # the tower is not on disk on its own: skip from_pretrained
        from transformers import AutoImageProcessor, AutoModel
        from transformers.initialization import no_init_weights

        vision_config = checkpoint.config.vision_config
        with no_init_weights():
            tower = AutoModel.from_config(vision_config, dtype=torch.float32, trust_remote_code=False)
        # Checkpoints name the tower's tensors with or without "vision_model." (transformers 4.x / 5.x)
        nested = any(name.startswith("vision_model.") for name in tower.state_dict())

        def rename(name: str) -> str:
            bare = name.removeprefix("vision_model.")
            return f"vision_model.{bare}" if nested else bare

        unused_head = [name for name in tower.state_dict() if rename(name).startswith(rename("head."))]
        _load_into(tower, checkpoint, TOWER_PREFIX, rename, optional=unused_head)  # SigLIP's pooling head
        self.vision = getattr(tower, "vision_model", tower)
        self.processor = AutoImageProcessor.from_pretrained(checkpoint.path, trust_remote_code=False)
        self.layer = checkpoint.config.vision_feature_layer
        self.patches_per_side = vision_config.image_size // vision_config.patch_size
        self.source = str(checkpoint.path)
        self._finish_init(vision_config.image_size)


def llava_vision_encoder(
    name_or_path: str | None, layer: int | None = None, tokens: str | None = None, pool_to: int | None = None
) -> LlavaVisionEncoder:
    """The checkpoint's vision tower, selecting its features as the LLaVA does. ``layer`` and ``tokens``
    are null (the checkpoint's); a value must agree with it. LLaVA does not pool: ``pool_to`` stays null."""
    if not name_or_path:
        raise LlavaImportError(
            "vision_encoder=llava reads the LLaVA checkpoint named by init_from=DIR, which is not set"
        )
    checkpoint = read_llava(name_or_path)
    config_file = checkpoint.path / CONFIG
    ours = {"layer": checkpoint.config.vision_feature_layer, "tokens": checkpoint.image_tokens, "pool_to": None}
    given = {"layer": layer, "tokens": tokens, "pool_to": pool_to}
    differ = [
        f"vision_encoder.{key}={given[key]!r}" for key in ours if given[key] is not None and given[key] != ours[key]
    ]
    if differ:
        raise LlavaImportError(
            f"{', '.join(differ)} would change what the LLaVA's projector was trained on ({config_file}: "
            f"vision_feature_layer={ours['layer']}, vision_feature_select_strategy="
            f"{checkpoint.config.vision_feature_select_strategy!r}, no pooling); leave them null. "
            "A recipe's encoder settings are undone by putting +model=llava after +recipe=..."
        )
    return LlavaVisionEncoder(checkpoint, ours["tokens"])


# --- the projector ---------------------------------------------------------------------------


def load_llava_projector(projector: nn.Module, name_or_path: str | None) -> None:
    """Copy LLaVA's ``multi_modal_projector`` (linear_1, GELU, linear_2) into mmit's ``mlp`` projector of depth 2."""
    from mmit.models.projectors import MLPProjector

    if not name_or_path:
        raise LlavaImportError("projector=llava reads the LLaVA checkpoint named by init_from=DIR, which is not set")
    checkpoint = read_llava(name_or_path)
    layers = list(projector.mlp) if isinstance(projector, MLPProjector) else []
    if [type(layer) for layer in layers] != [nn.Linear, nn.GELU, nn.Linear] or layers[1].approximate != "none":
        raise LlavaImportError(
            f"{checkpoint.path}: LLaVA's projector is Linear-GELU-Linear; mmit's must be projector=mlp depth=2 "
            f"input_norm=false, not {type(projector).__name__} {layers}"
        )
    layer_names = {"linear_1": "mlp.0", "linear_2": "mlp.2"}

    def rename(name: str) -> str:
        layer, _, rest = name.partition(".")
        return f"{layer_names.get(layer, layer)}.{rest}"

    _load_into(projector, checkpoint, PROJECTOR_PREFIX, rename)


# --- the run's start -------------------------------------------------------------------------


def llava_parts(cfg) -> list[str]:
    """The config groups that read the LLaVA checkpoint (``llm``, ``vision_encoder``, ``projector``)."""
    parts = []
    for group in ("llm", "vision_encoder"):
        target = str((cfg.get(group) or {}).get("_target_", ""))
        if target.startswith(f"{__name__}."):
            parts.append(group)
    if (cfg.get("projector") or {}).get("llava"):
        parts.append("projector")
    return parts


def check_llava_start(cfg) -> list[str]:
    """``init_from`` names a LLaVA checkpoint: the parts built from it, or an error when none is."""
    parts = llava_parts(cfg)
    if not parts:
        raise LlavaImportError(
            f"init_from={cfg.init_from} is a LLaVA checkpoint ({CONFIG}: model_type llava), not an mmit run: add "
            "+model=llava after the recipe, which builds the LLM, vision encoder and projector from it"
        )
    return parts
