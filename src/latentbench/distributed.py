"""torchrun / DistributedDataParallel plumbing: process-group setup, rank queries, differentiable gather.

Started with ``torchrun --nproc_per_node=N -m latentbench train CONFIG``, every process reads RANK,
WORLD_SIZE and LOCAL_RANK from the environment; a plain ``latentbench train`` is a world of one and
none of this does anything. NCCL is used on GPUs, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def init(device: torch.device) -> DistInfo:
    """Join the process group torchrun set up (no-op for a single process)."""
    info = env_info()
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return info


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (N, D) from every rank in rank order; gradients flow back to each rank's part."""
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(t), dim=0)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks (identity for one process)."""
    if dist.is_available() and dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's decision, made known to every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())
