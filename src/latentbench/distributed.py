"""torchrun / DistributedDataParallel plumbing: process-group setup, rank queries, differentiable collectives.

    torchrun --standalone --nproc_per_node=2 -m latentbench train configs/cifar10_contrastive.toml

Started by torchrun, every process reads RANK, WORLD_SIZE and LOCAL_RANK from the environment and joins
one process group: NCCL on GPUs, gloo on CPU. A plain ``latentbench train`` is a world of one and none
of this does anything. What lives here:

* :func:`init` / :func:`shutdown` - join the group torchrun described once per process (several runs in
  one process, as in a study, share it); a group made here is destroyed at exit.
* :func:`gather_with_grad` - every rank's ``(N, D)`` tensor concatenated in rank order, with gradients
  flowing back to each rank's part (SimCLR's global-batch negatives).
* :func:`convert_sync_batchnorm` - BatchNorm statistics over the global batch: PyTorch's
  ``nn.SyncBatchNorm`` on GPUs, :class:`CPUSyncBatchNorm` on CPU (``nn.SyncBatchNorm`` rejects CPU
  tensors in torch 2.x: "SyncBatchNorm expected input tensor to be on GPU or XPU").
* :func:`all_reduce_mean`, :func:`all_reduce_max`, :func:`broadcast_stats`, :func:`barrier` - small
  non-differentiable collectives for logging and for decisions every rank must share.

The two differentiable collectives are small ``autograd.Function``s over ``dist.all_gather`` and
``dist.all_reduce``, which gloo and NCCL both support (the backward of the gather all-reduces the
gradient and keeps this rank's rows, as lightly's GatherLayer does). Not used instead:
``torch.distributed.nn.functional`` (deprecated in torch 2.14, a FutureWarning on every call) and
``torch.distributed._functional_collectives`` (private API).
"""

from __future__ import annotations

import atexit
import gc
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # processes on this machine (torchrun's --nproc-per-node)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_OWNED_GROUP = False  # True when init() created the process group (so shutdown() may destroy it)


def env_info() -> DistInfo:
    """This process's place in the run: from torchrun's environment, else the live process group."""
    if "WORLD_SIZE" in os.environ:
        world = int(os.environ["WORLD_SIZE"])
        return DistInfo(int(os.environ.get("RANK", 0)), world, int(os.environ.get("LOCAL_RANK", 0)),
                        int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    if is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), dist.get_rank(), dist.get_world_size())
    return DistInfo()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init(device: torch.device) -> DistInfo:
    """Join the process group torchrun set up (no-op for a single process or an existing group).

    On CUDA, ``device`` must already be this rank's GPU (``cuda:LOCAL_RANK``); passing it as
    ``device_id`` binds the NCCL communicator to it, as the torch.distributed docs recommend.
    """
    global _OWNED_GROUP
    info = env_info()
    if info.enabled and not is_initialized():
        if not dist.is_available():
            raise ValueError("this PyTorch build has no torch.distributed; run without torchrun")
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend_for(device), **kwargs)
        _OWNED_GROUP = True
        atexit.register(shutdown)
    return info


def shutdown() -> None:
    """Destroy the process group if :func:`init` created it (registered to run at exit).

    No barrier here: after an error on one rank the others may be waiting inside a collective, and
    torchrun ends them once this process exits. A finished run meets the other ranks at a barrier
    first (see ``train.train``), so no collective is in flight when the group goes.

    ``gc.collect()`` first: DDP's reducer holds the group inside reference cycles, and a gloo group
    whose last reference only dies during interpreter finalisation aborts the process ("terminate
    called without an active exception"; seen in about 1 of 8 CPU runs without it).
    """
    global _OWNED_GROUP
    if _OWNED_GROUP and is_initialized():
        gc.collect()
        dist.destroy_process_group()
    _OWNED_GROUP = False


# ------------------------------------------------------------------------------ differentiable collectives
class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward: all-reduce (sum) the gradient and keep this rank's rows."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad.chunk(dist.get_world_size())[dist.get_rank()]


class _AllReduceSumWithGrad(torch.autograd.Function):
    """all_reduce (sum) forward and backward: every rank's output depends on every rank's input."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.contiguous().clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (N, D) from every rank in rank order -> (world*N, D); gradients flow back.

    Backward sums, over ranks, the gradient each rank's loss sends to each part, so with DDP's
    gradient averaging the update equals that of the mean loss over the global batch.
    """
    return _GatherWithGrad.apply(t)


def _all_reduce_sum_with_grad(t: torch.Tensor) -> torch.Tensor:
    return _AllReduceSumWithGrad.apply(t)


# ------------------------------------------------------------------------------------- batch norm
class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics span every rank's batch, for CPU (gloo) runs.

    Same parameters and buffers as ``BatchNorm{1,2,3}d``, so its state dict loads into the plain
    model. In training it all-reduces per-channel sums (two passes: mean, then centred squares, for
    accuracy), normalises with the biased global variance and updates the running statistics with the
    unbiased one, like ``nn.SyncBatchNorm``. Gradients flow through the all-reduces. Evaluation, or a
    world of one, is ordinary BatchNorm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not (self.training and is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        local_count = x.new_full((1,), x.numel() // x.shape[1])
        sums = _all_reduce_sum_with_grad(torch.cat([x.sum(dims), local_count]))  # (C + 1,)
        count = sums[-1].detach()  # a tensor, not a float: no host sync, no torch.compile graph break
        mean = sums[:-1] / count
        centred = x - mean.view(shape)
        var = _all_reduce_sum_with_grad(centred.pow(2).sum(dims)) / count
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * count / (count - 1).clamp_min(1), factor)
        return y


def _to_cpu_sync(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        out = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _to_cpu_sync(child))
    return out


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm layer of ``module`` made to use global-batch statistics (in place where possible)."""
    if device.type == "cpu":
        return _to_cpu_sync(module)
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def use_sync_batchnorm(setting: str, objective: str, device: torch.device, world_size: int) -> bool:
    """``on`` / ``off`` as set; ``auto``: on for the contrastive objective across several GPUs.

    SimCLR normalises over the global batch so a rank cannot tell its own views apart by their local
    batch statistics; on CPU, ``auto`` stays off (each sync is a gloo round trip per BN layer).
    """
    if world_size <= 1 or setting == "off":
        return False
    return setting == "on" or (objective == "contrastive" and device.type == "cuda")


def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


# --------------------------------------------------------------------------------- plain collectives
def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks (identity for one process); not differentiable."""
    if is_initialized():
        t = t.detach().clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """The elementwise maximum of a tensor over ranks (identity for one process); not differentiable."""
    if is_initialized():
        t = t.detach().clone()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def broadcast_stats(stats: dict[str, float], device: torch.device) -> dict[str, float]:
    """Rank 0's values of ``stats`` (same keys on every rank), so every rank logs and decides alike."""
    if not is_initialized() or not stats:
        return stats
    keys = sorted(stats)
    t = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    values = dict(zip(keys, t.tolist()))
    return {k: values[k] for k in stats}


@contextmanager
def local_only(objective: nn.Module) -> Iterator[None]:
    """Within the block, the contrastive objective contrasts within this rank's batch (no gather).

    Validation runs the full validation set on every rank; gathering identical batches from every
    rank would put each image's copies among its negatives.
    """
    gather = getattr(objective, "gather", None)
    if gather is not None:
        objective.gather = None
    try:
        yield
    finally:
        if gather is not None:
            objective.gather = gather
