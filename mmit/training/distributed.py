"""Several processes, one run: torch.distributed set up from torchrun's environment.

    torchrun --nproc_per_node=N -m mmit.train +recipe=... hydra.run.dir=runs/<name> [trainer.distributed=fsdp2]

gloo on CPU, NCCL on GPU (one device per process: ``cuda:LOCAL_RANK``). Multi-node runs use
torchrun's rendezvous (``--nnodes``, ``--rdzv-endpoint``); nothing here depends on the node.
``trainer.batch_size`` is per process: a step sees ``batch_size x processes x grad_accum``
samples. Without torchrun everything here is a no-op on a single process.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from mmit.training.device import pick_device

log = logging.getLogger(__name__)

STRATEGIES = ("ddp", "fsdp2")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup(device_name: str) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes (if any); returns this process's place and device.

    Once per process: ``mmit.train`` calls it and hands the result to the loop.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist(), pick_device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    log.info("process %d of %d on %s (%s)", rank, world_size, device, dist.get_backend())
    return Dist(rank, world_size, local_rank), device


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def sum_across(d: Dist, value: float, device: torch.device) -> float:
    """The sum of ``value`` over all processes (the value itself on one)."""
    if not d.active:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def gather_objects(d: Dist, value) -> list:
    """Every process's ``value``, in rank order (``[value]`` on one)."""
    if not d.active:
        return [value]
    out = [None] * d.world_size
    dist.all_gather_object(out, value)
    return out


def wrap(model: nn.Module, d: Dist, strategy: str) -> nn.Module:
    """The module each process calls: the model itself on one process, DDP around it, or the
    model sharded in place by FSDP2 (every decoder layer a unit of its own, then the rest)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"trainer.distributed must be one of {STRATEGIES}, not {strategy!r}")
    if not d.active:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # Inputs are already on the device; parameters a batch leaves unused get a zero
        # gradient in the loop (touch_all), so no process ever waits for a missing one.
        return DistributedDataParallel(model, device_ids=None, broadcast_buffers=False)
    from torch.distributed.fsdp import fully_shard

    for layer in model.base_llm.get_decoder().layers:
        fully_shard(layer)
    # The root stays gathered after forward: the loss applies the output head outside forward.
    # Encoders and projectors are small and some batches do not use them: they stay whole on
    # every process, their gradients averaged by all_reduce_replicated, as DDP would.
    fully_shard(model, reshard_after_forward=False, ignored_params=set(replicated_params(model)))
    return model


def replicated_params(model: nn.Module) -> list[nn.Parameter]:
    """Parameters FSDP2 leaves whole on every process: the encoders' and projectors'."""
    return [p for part in (model.encoders, model.projectors) for p in part.parameters()]


def all_reduce_replicated(model: nn.Module, d: Dist) -> None:
    """Average the gradients of the parameters FSDP2 does not manage, over all processes."""
    for p in replicated_params(model):
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= d.world_size


@contextmanager
def gradient_sync(train_model: nn.Module, d: Dist, sync: bool):
    """Gradient accumulation: reduce gradients over processes only on the last micro-batch."""
    if not d.active or sync:
        if hasattr(train_model, "set_requires_gradient_sync"):
            train_model.set_requires_gradient_sync(True)
        yield
    elif hasattr(train_model, "no_sync"):  # DDP
        with train_model.no_sync():
            yield
    else:  # FSDP2
        train_model.set_requires_gradient_sync(False)
        yield


@contextmanager
def whole(model: nn.Module, sharded: bool):
    """Evaluation and generation outside ``forward`` under FSDP2: the root's parameters
    (embeddings, projectors, output head) gathered for the duration; every process must enter."""
    if not sharded:
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def touch_all(model: nn.Module) -> torch.Tensor:
    """A zero that depends on every trainable parameter: added to the loss, it gives each one a
    gradient even when this process's batch had no image (or no audio), so collective gradient
    reduction never waits on a parameter that another process did use, and the optimizer
    treats such a parameter alike on one process or many (zero gradient, never a missing one).
    Under FSDP2 the decoder layers' parameters (sharded DTensors here) are used by every batch."""
    params = [p for p in model.parameters() if p.requires_grad and not isinstance(p, DTensor)]
    return sum(p.reshape(-1)[:1].sum() for p in params) * 0.0


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Clip the trainable gradients to ``max_norm`` together; returns their total norm before.

    Under FSDP2 sharded (DTensor) and whole gradients are measured apart, then combined.
    """
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    if not grads:
        return 0.0
    norms = []
    for group in ([g for g in grads if isinstance(g, DTensor)], [g for g in grads if not isinstance(g, DTensor)]):
        if group:
            norm = torch.nn.utils.get_total_norm(group)
            norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    total = torch.linalg.vector_norm(torch.stack(norms))
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(scale.to(g.device) if not isinstance(g, DTensor) else scale.item())
    return float(total)
