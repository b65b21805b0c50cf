"""Data-parallel training under `torchrun`: process-group set-up, and the few collectives the trainer needs.

Launch with `torchrun --nproc_per_node N script.py` (or `python -m torch.distributed.run ...`): it sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, which `init_distributed` reads. The backend is NCCL when
CUDA is available and gloo otherwise. Without those variables everything runs as one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank among `world_size` processes and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0, the only process that writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def default_device(local_rank: int = 0) -> torch.device:
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def init_distributed(backend: str | None = None, timeout: timedelta | None = None) -> DistributedContext:
    """Join the process group torchrun describes in the environment (once), or return the single-process context.
    `timeout`: how long to wait for the master and the other ranks, here and in every collective after (torch's
    default when None)."""
    if dist.is_available() and dist.is_initialized():
        return context()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size == 1:
        return DistributedContext(device=default_device(local_rank))
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world_size} but {missing} are not set; launch with torchrun --nproc_per_node {world_size}")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if timeout is not None:
        dist.init_process_group(backend, init_method="env://", timeout=timeout)
    else:
        dist.init_process_group(backend, init_method="env://")
    return context()


def context() -> DistributedContext:
    """The current process's context (single-process when no group is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistributedContext(device=default_device())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if dist.get_backend() == "nccl" else torch.device("cpu")
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, device)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_object(obj, ctx: DistributedContext) -> list:
    """`[obj of rank 0, obj of rank 1, ...]`; `[obj]` in a single process."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def mean_over_ranks(value: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """The average of a tensor over all ranks (itself in a single process)."""
    if not ctx.distributed:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / ctx.world_size


def barrier(ctx: DistributedContext) -> None:
    if ctx.distributed:
        dist.barrier()
