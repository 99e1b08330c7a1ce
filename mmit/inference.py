"""A trained run (or a base model) ready to answer: shared by eval, the chat CLI and the web demo.

``load_run`` rebuilds the model from the run's own ``config.yaml`` (checked first: a run folder is
data, so only mmit's own builders may be named there; ``mmit.saved_config``) and loads a
checkpoint's trained weights (safetensors) into it; ``load_base`` composes a config from overrides and loads
no trained weights (the zero-shot baseline). ``ChatSession`` keeps a conversation with its
media and answers through ``mmit.generation.generate``: the same chat template and media
splice as training.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

from mmit.data.samples import MediaRef, is_unicode
from mmit.generation import ANSWER_BATCH, GenerationOptions, Prompt, generate
from mmit.models.multimodal_lm import MultimodalLM

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: MultimodalLM
    tokenizer: object
    cfg: DictConfig
    device: torch.device
    precision: str  # bf16 | fp32
    checkpoint: Path | None  # None: no trained weights (a base model)
    source: str = ""

    @property
    def preprocess(self) -> dict:
        return {kind: encoder.preprocess for kind, encoder in self.model.encoders.items()}

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None

    def generate(
        self, prompts: list[Prompt], options: GenerationOptions, batch_size: int = ANSWER_BATCH, **kwargs
    ) -> list[str]:
        return generate(
            self.model,
            self.tokenizer,
            prompts,
            options,
            batch_size=batch_size,
            autocast_dtype=self.autocast_dtype,
            preprocess=self.preprocess,
            **kwargs,
        )


def resolve_checkpoint(run_dir: Path, checkpoint: str | None) -> Path | None:
    """``latest`` (default), ``none``, a step number, or a checkpoint directory."""
    from mmit.training.checkpoint import TRAINABLE, latest_checkpoint

    if checkpoint in (None, "latest"):
        found = latest_checkpoint(run_dir)
        if found is None:
            raise FileNotFoundError(f"{run_dir} has no checkpoint yet (checkpoints/latest is missing)")
        return found
    if checkpoint == "none":
        return None
    path = run_dir / "checkpoints" / f"step-{int(checkpoint):07d}" if checkpoint.isdigit() else Path(checkpoint)
    if not (path / TRAINABLE).is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint (no {TRAINABLE})")
    return path


def load_model(cfg: DictConfig, checkpoint: Path | None, device: str, precision: str) -> LoadedModel:
    """The model ``cfg`` builds, with ``checkpoint``'s trained weights (None: as built)."""
    from mmit.factory import build_model
    from mmit.training.checkpoint import load_trainable
    from mmit.training.device import pick_device, resolve_precision

    # Seeded as training was, so any component that is random and untrained (a frozen random
    # projector, say) is the same one the run trained with.
    random.seed(cfg.get("seed", 0))
    torch.manual_seed(cfg.get("seed", 0))
    built = build_model(cfg)
    if checkpoint is not None:
        load_trainable(built.model, checkpoint)
        log.info("loaded trained weights from %s", checkpoint)
    torch_device = pick_device(device)
    built.model.to(torch_device).eval()
    return LoadedModel(
        built.model,
        built.tokenizer,
        cfg,
        torch_device,
        resolve_precision(precision, torch_device),
        checkpoint,
        built.source,
    )


def read_run_config(run_dir: str | Path) -> DictConfig:
    """A training run's config as :func:`load_run` builds it: read and checked before anything is built
    (only mmit's own builders), its ``init_from`` dropped (the checkpoint holds every trained weight)."""
    from mmit.saved_config import load_saved_config, run_config

    cfg = load_saved_config(run_config(run_dir))
    cfg.init_from = None
    return cfg


def load_run(
    run_dir: str | Path,
    checkpoint: str | None = "latest",
    device: str = "auto",
    precision: str | None = None,
    cfg: DictConfig | None = None,
) -> LoadedModel:
    """The model of a training run, with the trained weights of one of its checkpoints.

    ``precision``: None runs it as the run's in-loop evaluation did (its ``trainer.precision``),
    so offline and in-loop scores of one checkpoint agree. ``cfg``: the run's config where the
    caller has read it already (:func:`read_run_config`)."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir) if cfg is None else cfg
    precision = precision or cfg.trainer.get("precision", "auto")
    return load_model(cfg, resolve_checkpoint(run_dir, checkpoint), device, precision)


def load_base(overrides: list[str], device: str = "auto", precision: str = "auto") -> LoadedModel:
    """A model composed from config overrides (e.g. ``+recipe=vqa``) with no training at all."""
    return load_model(compose_config(overrides), None, device, precision)


def compose_config(overrides: list[str]) -> DictConfig:
    """The training config ``python -m mmit.train <overrides>`` would compose, its values checked."""
    from hydra import compose, initialize_config_dir

    from mmit.config_checks import check_config
    from mmit.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    check_config(cfg)
    return cfg


@dataclass
class ChatSession:
    """A multi-turn conversation with a loaded model; media attach to the user turn they came with."""

    loaded: LoadedModel
    options: GenerationOptions = field(default_factory=GenerationOptions)
    system: str | None = None
    chat: list[dict[str, str]] = field(default_factory=list)
    media: list[MediaRef] = field(default_factory=list)

    def reset(self) -> None:
        self.chat, self.media = [], []

    def ask(self, text: str, media: list[MediaRef] = ()) -> str:
        """Add a user turn (with a placeholder per attached item unless the text has them) and answer it."""
        media = list(media)
        if not is_unicode(text):  # a command line's undecodable bytes reach Python as lone surrogates
            raise ValueError("the message is not UTF-8 text")
        for ref in media:
            if ref.kind not in self.loaded.model.slots:
                have = ", ".join(self.loaded.model.slots) or "none (text only)"
                raise ValueError(f"this model has no {ref.kind} encoder (its media: {have})")
        content = text
        for kind, slot in self.loaded.model.slots.items():
            given, attached = text.count(slot.placeholder), sum(ref.kind == kind for ref in media)
            if given == 0:
                content = "\n".join([slot.placeholder] * attached + [content])
            elif given != attached:
                raise ValueError(
                    f"the message has {given} {slot.placeholder} placeholder(s) for {attached} attached {kind} file(s)"
                    + ("" if attached else f" (attach one with --{kind} PATH, or /{kind} PATH in the chat)")
                )
        chat = self.chat if self.chat or not self.system else [{"role": "system", "content": self.system}]
        chat = [*chat, {"role": "user", "content": content}]
        answer = self.loaded.generate([Prompt(chat, [*self.media, *media])], self.options)[0]
        self.chat = [*chat, {"role": "assistant", "content": answer}]
        self.media += media
        return answer
