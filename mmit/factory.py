"""Config -> objects. The one module that calls ``hydra.utils.instantiate``."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mmit.data.sources import DataFiles, read_conversations
from mmit.data.tokenize import TokenizedDataset
from mmit.models.llm import LoadedLLM
from mmit.models.multimodal_lm import MultimodalLM
from mmit.models.tuning import apply_tuning, parameter_table
from mmit.training.loop import EvalSet, TrainerConfig


@dataclass
class BuiltModel:
    model: MultimodalLM
    tokenizer: object
    source: str
    table: str  # trainable vs frozen parameters per component


@dataclass
class BuiltData:
    train: TokenizedDataset
    eval: dict[str, EvalSet]
    files: DataFiles
    skipped: dict[str, Counter] = field(default_factory=dict)  # per set, per reason
    truncated: dict[str, int] = field(default_factory=dict)


def build_model(cfg: DictConfig) -> BuiltModel:
    """LLM (+ tuning) wrapped as the multimodal model."""
    loaded: LoadedLLM = instantiate(cfg.llm)
    method = cfg.peft.method
    peft_config = instantiate(cfg.peft.config, _convert_="all") if method == "lora" else None
    llm = apply_tuning(loaded.model, method, peft_config, name="llm")
    model = MultimodalLM(llm)
    table = parameter_table({"llm": (model.llm, method)})
    return BuiltModel(model, loaded.tokenizer, loaded.source, table)


def build_data(cfg: DictConfig, tokenizer) -> BuiltData:
    """Read, validate and tokenize the training set and every evaluation set."""
    files: DataFiles = instantiate(cfg.data.source, _convert_="all")
    if not isinstance(files, DataFiles):
        raise TypeError(f"data.source must produce a DataFiles, got {type(files).__name__}")
    d = cfg.data
    skipped: dict[str, Counter] = {}

    def load(name: str, paths: list[str]) -> tuple[TokenizedDataset, list]:
        skipped[name] = Counter()
        convs = read_conversations(paths, on_error=d.on_error, skipped=skipped[name])
        tokens = TokenizedDataset(convs, tokenizer, d.max_length, d.overlength, d.on_error, name=name)
        skipped[name].update(tokens.skipped)
        kept = {s.id for s in tokens.samples}
        return tokens, [c for c in convs if c.id in kept]

    train, _ = load("train", files.train)
    eval_sets = {name: EvalSet(*load(name, paths)) for name, paths in files.eval.items()}
    truncated = {"train": train.truncated, **{n: e.tokens.truncated for n, e in eval_sets.items()}}
    return BuiltData(train, eval_sets, files, skipped, truncated)


def build_trainer_config(cfg: DictConfig) -> TrainerConfig:
    return instantiate(cfg.trainer, _convert_="all")


def resolved_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
