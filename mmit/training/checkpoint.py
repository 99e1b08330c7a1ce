"""Checkpoints as safetensors + JSON only: trained weights, peft adapter, optimizer, scheduler,
RNG and data position. Written to a temporary directory and renamed; ``latest`` is a
one-line file updated atomically after the rename, so it never names a partial checkpoint.

A checkpoint is never written from diverged weights: NaN / inf, or exploded (far larger than the
previous checkpoint's), so ``latest`` always names weights a rerun can resume from. On resume,
the run's new learning rates and weight decay are used rather than the checkpoint's, and
``write_run_config`` refuses config changes a checkpoint cannot honour (the model, the data and
its order), so ``config.yaml`` only ever says what the run used.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from mmit.data.samples import BAD_JSON, is_whole_number
from mmit.paths import PICKLE_SUFFIXES, atomic_dir, atomic_write_text

TRAINABLE = "trainable.safetensors"
ADAPTER_DIR = "adapter"

log = logging.getLogger(__name__)

# Trained weights count as exploded when one is larger than this, or when their norm grew more than
# EXPLODED_GROWTH times since the previous checkpoint (from at least 1.0, for zero-initialised ones
# such as LoRA's B matrices and BitFit's biases). Healthy training is orders of magnitude below both.
EXPLODED_MAX_ABS = 1e8
EXPLODED_GROWTH = 1000.0


class DivergedError(ValueError):
    """Training diverged (NaN / inf or exploded weights); the message names the checkpoint to resume from."""


class ResumeConfigError(ValueError):
    """A resumed run's config changes what its checkpoint fixes (the model, the data or its order)."""


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file; anything else (a pickle above all) is refused, never unpickled."""
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        raise ValueError(f"{path}: mmit loads only safetensors checkpoints and never unpickles a file")
    try:
        return load_file(path)
    except (SafetensorError, OSError) as error:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such checkpoint file") from None
        raise ValueError(f"{path}: not a safetensors file ({error}); mmit never unpickles checkpoints") from None


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on the CPU; a tensor sharded over processes (FSDP2) is gathered first,
    so under FSDP2 every process must call this, in the same order."""
    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    return tensor.detach().contiguous().cpu()


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint's weights file holds: every trained parameter, and the frozen ones that
    init_from set (``MultimodalLM.kept_from_init``), which a rebuilt run would not have otherwise."""
    kept = getattr(model, "kept_from_init", frozenset())
    return {n: full(p) for n, p in model.named_parameters() if p.requires_grad or n in kept}


def load_trainable(model: nn.Module, ckpt_dir: str | Path) -> None:
    """Load the trained weights of a checkpoint into a model built from the same config."""
    state = read_safetensors(Path(ckpt_dir) / TRAINABLE)
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    unknown = [n for n in state if n not in params]
    if missing or unknown:
        raise ValueError(
            f"{ckpt_dir}: checkpoint does not fit the model (missing {missing[:3]}..., unknown {unknown[:3]}...)"
        )
    # copy_ broadcasts: a scalar under every name would load as a model of constants
    reshaped = [
        f"{n} {list(t.shape)} (the model's {list(params[n].shape)})"
        for n, t in state.items()
        if t.shape != params[n].shape
    ]
    if reshaped:
        raise ValueError(
            f"{Path(ckpt_dir) / TRAINABLE}: tensors of another shape than the model's: {'; '.join(reshaped[:3])}"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)
    if hasattr(model, "kept_from_init"):  # frozen weights the run's init_from set: saved again if it is
        model.kept_from_init = frozenset(n for n in state if not params[n].requires_grad)


def load_matching(model: nn.Module, run_or_ckpt: str | Path) -> list[str]:
    """Start from another run (e.g. stage-1 projector): copy every trained tensor whose name
    and shape match this model; returns the names copied."""
    path = Path(run_or_ckpt)
    if path.is_file():
        state = read_safetensors(path)  # a bare weights file: safetensors only
        ckpt = path
    else:
        ckpt = path if (path / TRAINABLE).exists() else latest_checkpoint(path)
        if ckpt is None:
            raise FileNotFoundError(f"init_from: {path} is neither a checkpoint nor a run directory with one")
        state = read_safetensors(ckpt / TRAINABLE)
    params = dict(model.named_parameters())
    copied = [n for n, t in state.items() if n in params and params[n].shape == t.shape]
    if not copied:
        raise ValueError(f"init_from: no tensor of {ckpt} fits this model")
    misfits = [n for n, t in state.items() if n in params and params[n].shape != t.shape]
    if misfits:  # the same part built another way (another encoder feeding the projector): it starts afresh
        shown = "; ".join(f"{n} {list(state[n].shape)} here {list(params[n].shape)}" for n in misfits[:4])
        shown += "; ..." if len(misfits) > 4 else ""
        log.warning(
            "init_from: %d of %d tensors of %s have another shape here and start afresh: %s",
            len(misfits),
            len(state),
            ckpt,
            shown,
        )
    with torch.no_grad():
        for name in copied:
            params[name].copy_(state[name])
    return copied


def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, slots in sd["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = full(value)
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in [*tensors.items(), *meta["scalars"].items()]:
        index, key = flat.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    version, internal, gauss = random.getstate()
    return tensors, {"python": [version, list(internal), gauss]}


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


@dataclass
class Payload:
    """The tensors of a checkpoint, gathered whole (a collective under FSDP2)."""

    weights: dict[str, torch.Tensor]
    optimizer_tensors: dict[str, torch.Tensor]
    optimizer_meta: dict


def gather_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer) -> Payload:
    """Every process calls this under FSDP2; on one process it is a plain copy to the CPU."""
    return Payload(trainable_state(model), *_optimizer_to_files(optimizer))


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    data_state: dict,
    keep_last: int = 2,
    extra: dict | None = None,
    payload: Payload | None = None,
) -> Path:
    """Write ``checkpoints/step-NNNNNNN`` atomically, point ``latest`` at it, prune old ones.

    ``payload`` is what ``gather_checkpoint`` returned when the weights are sharded.
    """
    payload = payload or gather_checkpoint(model, optimizer)
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:07d}"
    broken = [name for name, t in payload.weights.items() if not torch.isfinite(t).all()]
    if broken:
        raise DivergedError(
            f"step {step}: not saving a checkpoint with NaN / inf weights ({broken[:3]}...). {divergence_advice(run_dir)}"
        )
    stats = weight_stats(payload.weights)
    previous = latest_checkpoint(run_dir)
    exploded = exploded_since(stats, read_state(previous).get("weights") if previous else None)
    if exploded:
        raise DivergedError(f"step {step}: not saving a checkpoint: {exploded}. {divergence_advice(run_dir)}")
    for stale in root.glob(".step-*.tmp-*"):  # left by a process killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    with atomic_dir(final) as tmp:
        save_file(payload.weights, tmp / TRAINABLE)
        llm = getattr(model, "llm", None)
        if hasattr(llm, "peft_config"):  # peft writes adapter_model.safetensors from the whole tensors
            adapter = {n.removeprefix("llm."): t for n, t in payload.weights.items() if n.startswith("llm.")}
            llm.save_pretrained(tmp / ADAPTER_DIR, state_dict=adapter)
        save_file(payload.optimizer_tensors, tmp / "optimizer.safetensors")
        rng_tensors, rng_meta = _rng_state()
        save_file(rng_tensors, tmp / "rng.safetensors")
        state = {
            "step": step,
            "optimizer": payload.optimizer_meta,
            "scheduler": scheduler.state_dict(),
            "data": data_state,
            "rng": rng_meta,
            "extra": extra or {},
            "weights": stats,
        }
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
    atomic_write_text(root / "latest", final.name + "\n")
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep_last]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``checkpoints/latest`` names, or None before the first one. The pointer may only
    name a ``step-NNNNNNN`` folder beside it: a crafted one cannot lead outside the run."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    name = pointer.read_text(errors="replace").strip()
    if not re.fullmatch(r"step-\d{7,}", name) or not (pointer.parent / name).is_dir():
        raise ValueError(f"{pointer}: 'latest' names {name[:80]!r}, not a checkpoint folder of this run")
    return pointer.parent / name


def read_state(ckpt_dir: Path) -> dict:
    """A checkpoint's state.json; ValueError naming it when it is not an object with a whole-number step."""
    path = Path(ckpt_dir) / "state.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing, so checkpoint {Path(ckpt_dir).name} cannot be resumed or loaded")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except BAD_JSON as err:
        raise ValueError(f"{path}: not a checkpoint state ({err})") from err
    step = state.get("step") if isinstance(state, dict) else None
    if not is_whole_number(step, 0):
        raise ValueError(f"{path}: a checkpoint state is an object with a whole-number 'step', not {step!r}")
    return state


def load_training_state(ckpt_dir: Path, state: dict, optimizer: torch.optim.Optimizer, scheduler) -> None:
    """Optimizer, scheduler and RNG of a checkpoint (the weights go in first, with ``load_trainable``).

    Optimizer moments of sharded (FSDP2) parameters are sharded the same way as they load.
    """
    ckpt_dir = Path(ckpt_dir)
    # The run's own learning rates and weight decay, as its config set them, win over the checkpoint's:
    # rerunning with a lower trainer.lr after a divergence must really lower it.
    wanted = [
        (g.get("initial_lr", g["lr"]), g.get("weight_decay"), g.get("component", i))
        for i, g in enumerate(optimizer.param_groups)
    ]
    try:
        optimizer.load_state_dict(
            _optimizer_from_files(read_safetensors(ckpt_dir / "optimizer.safetensors"), state["optimizer"])
        )
        scheduler.load_state_dict(state["scheduler"])
        rng = read_safetensors(ckpt_dir / "rng.safetensors"), state["rng"]
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(
            f"{ckpt_dir}: its optimizer, scheduler or random state does not fit this run ({type(err).__name__}: {err})"
        ) from err
    for group in optimizer.param_groups:
        for param in group["params"]:
            if isinstance(param, DTensor):
                slots = optimizer.state.get(param, {})
                for key, value in slots.items():
                    if torch.is_tensor(value) and not isinstance(value, DTensor) and value.shape == param.shape:
                        slots[key] = distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
    _keep_run_rates(optimizer, scheduler, wanted, state["step"])
    _set_rng_state(*rng)


def _keep_run_rates(optimizer: torch.optim.Optimizer, scheduler, wanted: list[tuple], step: int) -> None:
    """Put the run's base learning rates and weight decay back after loading a checkpoint's, and say so."""
    lambdas = getattr(scheduler, "lr_lambdas", None)
    for i, (group, (base, decay, name)) in enumerate(zip(optimizer.param_groups, wanted)):
        old_base, old_decay = group.get("initial_lr", group["lr"]), group.get("weight_decay")
        if old_base != base:
            log.warning(
                "resumed %s: base learning rate %r (the checkpoint had %r), from step %d on",
                name,
                base,
                old_base,
                step + 1,
            )
            group["initial_lr"] = base
            if hasattr(scheduler, "base_lrs"):
                scheduler.base_lrs[i] = base
            if lambdas is not None:
                group["lr"] = base * lambdas[i](scheduler.last_epoch)
        if decay is not None and old_decay != decay:
            log.warning("resumed %s: weight decay %r (the checkpoint had %r)", name, decay, old_decay)
            group["weight_decay"] = decay
    if hasattr(scheduler, "_last_lr"):
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def weight_stats(weights: dict[str, torch.Tensor]) -> dict[str, float]:
    """The trained weights' overall L2 norm and largest magnitude (in float64: exploded values overflow float32)."""
    squares = sum((t.detach().double().pow(2).sum().item() for t in weights.values()), 0.0)
    largest = max((t.detach().abs().max().item() for t in weights.values() if t.numel()), default=0.0)
    return {"norm": math.sqrt(squares), "max_abs": float(largest)}


def exploded_since(stats: dict[str, float], previous: dict[str, float] | None) -> str | None:
    """Why these weights count as exploded (see EXPLODED_MAX_ABS, EXPLODED_GROWTH), or None."""
    if not math.isfinite(stats["norm"]) or stats["max_abs"] > EXPLODED_MAX_ABS:
        return f"the trained weights exploded (largest magnitude {stats['max_abs']:.3g})"
    if previous and stats["norm"] > EXPLODED_GROWTH * max(previous.get("norm", 0.0), 1.0):
        return (
            f"the trained weights exploded (norm {stats['norm']:.3g}, "
            f"{stats['norm'] / max(previous['norm'], 1e-30):.3g}x the previous checkpoint's {previous['norm']:.3g})"
        )
    return None


def divergence_advice(run_dir: Path) -> str:
    """What to do after a divergence: the checkpoint a rerun resumes from, and what to change."""
    try:
        ckpt = latest_checkpoint(run_dir)
    except ValueError:
        ckpt = None
    change = "lower trainer.lr, check the data, or use trainer.precision=fp32"
    if ckpt is None:
        return f"No checkpoint was saved before this: {change}, then run again (training starts over)."
    step = read_state(ckpt)["step"]
    return (
        f"The last good checkpoint is {ckpt} (step {step}; its weights were checked: finite and not exploded). "
        f"To resume from it, {change} and run the same command again: a new trainer.lr or "
        f"trainer.weight_decay is used from step {step + 1} on."
    )


# What a checkpoint fixes: the model it holds weights for, and the data position it holds (the
# data, its order and how it is cut into batches). A resumed run cannot change these.
RESUME_FIXED = (
    "llm",
    "vision_encoder",
    "audio_encoder",
    "video",
    "projector",
    "peft",
    "tuning",
    "data",
    "seed",
    "trainer.batch_size",
    "trainer.grad_accum",
    "trainer.group_by_length",
    "trainer.pack_length",
    "trainer.seed",
)
RESUME_OVERRIDDEN = {"init_from": "ignored: the checkpoint's weights are loaded instead"}


def config_changes(old: Any, new: Any, key: str = "") -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (old, new) for every value that differs between two plain configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        changes = {}
        for name in sorted(set(old) | set(new), key=str):
            changes.update(config_changes(old.get(name), new.get(name), f"{key}.{name}" if key else str(name)))
        return changes
    return {} if old == new else {key: (old, new)}


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# As mmit.config_checks names them (DataFiles' target, BUILT_GROUPS), which this module cannot import:
# config_checks reads the loop's TrainerConfig, and the loop imports this module.
DATA_FILES = "mmit.data.sources.DataFiles"
WEIGHT_GROUPS = ("llm", "vision_encoder", "audio_encoder")


def anchored(config: dict, cwd: Path | None = None) -> dict:
    """A plain resolved config with the relative paths it names written from ``cwd`` (default: the
    working folder): the data files of ``data=files`` / ``data=shards`` and their ``images_dir``,
    ``init_from``, a ``feature_cache`` folder, ``trainer.benchmarks`` folders, and weights named by a
    local folder (a ``name_or_path`` that exists here; a hub id is left as it is). A run's
    ``config.yaml`` then names the same files wherever ``mmit.eval``, ``mmit.chat`` or a resume reads it.
    """
    cwd = Path.cwd() if cwd is None else Path(cwd)
    out = copy.deepcopy(config)

    def absolute(value: Any) -> Any:  # a path, a list of paths, or a mapping of names to either
        if isinstance(value, dict):
            return {name: absolute(v) for name, v in value.items()}
        if isinstance(value, list):
            return [absolute(v) for v in value]
        if not isinstance(value, str):
            return value
        return os.path.normpath(cwd / Path(value).expanduser())  # an absolute value stays as it is

    def anchor(node: Any, key: str) -> None:
        if isinstance(node, dict) and node.get(key) is not None:
            node[key] = absolute(node[key])

    source = (out.get("data") or {}).get("source")
    if isinstance(source, dict) and source.get("_target_") == DATA_FILES:
        for key in ("train", "eval", "images_dir"):
            anchor(source, key)
    anchor(out, "init_from")
    if out.get("feature_cache") != "auto":
        anchor(out, "feature_cache")
    anchor(out.get("trainer"), "benchmarks")
    for group in WEIGHT_GROUPS:
        name = (out.get(group) or {}).get("name_or_path")
        if isinstance(name, str) and (cwd / Path(name).expanduser()).exists():
            anchor(out[group], "name_or_path")
    return out


def write_run_config(run_dir: Path, cfg) -> None:
    """Write the run's resolved ``config.yaml``, its relative paths written from the working folder
    (``anchored``). When the run resumes a checkpoint, compare with the config that trained it first
    (its relative paths read from here too): a change to what the checkpoint fixes (RESUME_FIXED) is
    refused and nothing is written; any other change is reported and used from the next step, and
    the config the run used until the checkpoint is kept as ``config.<checkpoint>.yaml``."""
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    new = anchored(OmegaConf.to_container(cfg, resolve=True))
    path, text = run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(new))
    ckpt = latest_checkpoint(run_dir) if cfg.trainer.get("resume", True) else None
    if ckpt is not None and path.exists():
        changes = config_changes(anchored(yaml.safe_load(path.read_text()) or {}), new)
        fixed = [k for k in changes if any(k == f or k.startswith(f"{f}.") for f in RESUME_FIXED)]
        step = read_state(ckpt)["step"]
        if fixed:
            listed = "; ".join(f"{k}: {_short(changes[k][0])} -> {_short(changes[k][1])}" for k in fixed)
            planned = (yaml.safe_load(path.read_text()) or {}).get("trainer", {}).get("max_steps")
            state = "finished" if isinstance(planned, int) and step >= planned else "stopped"
            raise ResumeConfigError(
                f"{run_dir} already holds a run with another config ({state} at step {step}"
                f"{f' of {planned}' if isinstance(planned, int) else ''}; {path.name} says what it used), and "
                f"training there would resume it from {ckpt.name}. The new config changes what a checkpoint "
                f"fixes (the model, the data and its order): {listed}. To train the new config, choose a new "
                f"folder (hydra.run.dir=...), if you like starting from this run's weights: init_from={ckpt}. "
                "To continue the run in the folder, use its own config. Nothing in the folder was changed."
            )
        for key, (old, new) in changes.items():
            effect = RESUME_OVERRIDDEN.get(key, f"used from step {step + 1} on")
            log.warning("resuming %s at step %d: %s changed from %r to %r (%s)", run_dir, step, key, old, new, effect)
        history = run_dir / f"config.{ckpt.name}.yaml"
        if changes and not history.exists():
            atomic_write_text(history, path.read_text())
    atomic_write_text(path, text)
