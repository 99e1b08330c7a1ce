"""Several processes, one run: torch.distributed set up from torchrun's environment.

    torchrun --nproc_per_node=N -m mmit.train +recipe=...

gloo on CPU, NCCL on GPU (one device per process: ``cuda:LOCAL_RANK``). Multi-node runs use
torchrun's rendezvous (``--nnodes``, ``--rdzv-endpoint``); nothing here depends on the node.
``trainer.batch_size`` is per process: a step sees ``batch_size x processes x grad_accum``
samples. Without torchrun everything here is a no-op on a single process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)

STRATEGIES = ("ddp",)


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
    """Join the process group torchrun describes (if any); returns this process's place and device."""
    from mmit.training.loop import pick_device

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
    """The model each process trains: itself on one process, else DDP around it."""
    if strategy not in STRATEGIES:
        raise ValueError(f"trainer.distributed must be one of {STRATEGIES}, not {strategy!r}")
    if not d.active:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # Inputs are already on the device; parameters a batch leaves unused get a zero
        # gradient in the loop (touch_all), so no process ever waits for a missing one.
        return DistributedDataParallel(model, device_ids=None, broadcast_buffers=False)
    raise AssertionError(strategy)


def touch_all(params: list[nn.Parameter]) -> torch.Tensor:
    """A zero that depends on every trainable parameter: added to the loss, it gives each one a
    gradient even when this process's batch had no image (or no audio), so collective gradient
    reduction never waits on a parameter that another process did use, and the optimizer
    treats such a parameter alike on one process or many (zero gradient, never a missing one)."""
    return sum(p.reshape(-1)[:1].sum() for p in params) * 0.0
