"""oneDNN matrix products for ``nn.Linear`` layers trained on the CPU.

PyTorch computes a CPU ``nn.Linear`` with MKL's sgemm. On AMD CPUs MKL takes a narrower (AVX2) code path,
while oneDNN, which PyTorch already uses for convolutions, runs its AVX-512 kernels. Measured on the 2-core
AMD EPYC (Zen 5) this project is developed on, one thread, fp32: a 128x784 @ 784x256 product at 112 GFLOP/s
with MKL and 223 GFLOP/s with oneDNN; an MNIST MLP-autoencoder training step 6.6 ms -> 3.0 ms
(benchmarks/README.md).

:func:`enable` turns every ``nn.Linear`` of a module into a :class:`OneDNNLinear` (a subclass with the same
parameters and state dict, so checkpoints do not change) whose forward, input gradient and weight gradient
are oneDNN products. Float32 CPU tensors only; anything else (CUDA, float64, a torch without the op) takes
the ordinary ``F.linear``, and so does code traced by ``torch.compile`` (inductor accepts this op only with
constant weights).

It is on where it pays: CPUs with AVX-512 (PyTorch's CPU capability). On an AVX2-only CPU both libraries use
the same vector width and MKL is the faster one: on a 2-core AMD EPYC (Zen 3, session 16), eager MNIST
training steps, alternating blocks, oneDNN vs MKL: autoencoder 11.47 vs 9.80 ms, supervised 7.65 vs 6.54 ms.
``LATENTBENCH_ONEDNN_LINEAR`` in the environment overrides the choice: ``0`` off, ``1`` on, ``auto`` (the
default) on with AVX-512 only.

    from latentbench import onednn
    onednn.enable(objective)   # returns how many layers were switched
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

ENV_SWITCH = "LATENTBENCH_ONEDNN_LINEAR"


def supported() -> bool:
    """True when this torch has oneDNN and its fused linear op."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def wide_vectors() -> bool:
    """True on a CPU where PyTorch dispatches AVX-512 kernels (where oneDNN outruns MKL's AVX2 path)."""
    return torch.backends.cpu.get_cpu_capability().upper().startswith("AVX512")


def available() -> bool:
    """True when oneDNN linear products are to be used: supported by this torch, and switched on by
    ``LATENTBENCH_ONEDNN_LINEAR`` (``1``), or left at ``auto`` on an AVX-512 CPU."""
    switch = os.environ.get(ENV_SWITCH, "auto").strip().lower()
    if switch in ("0", "false", "off", "no"):
        return False
    if switch in ("1", "true", "on", "yes"):
        return supported()
    return supported() and wide_vectors()


def _product(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b.T (+ bias)`` for 2-D float32 CPU tensors, through oneDNN.

    ``a`` and ``b`` may be transposed views of contiguous tensors: oneDNN reads the strides, which is
    faster than copying (the backward products below, 128x256 @ 256x784 with 2 threads: 121 us for the
    view, 225 us with a ``.contiguous()`` copy first).
    """
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


class _LinearFunction(torch.autograd.Function):
    """y = x W^T + b with all three products (forward, dL/dx, dL/dW) in oneDNN; x is (M, in)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x, weight = x.contiguous(), weight.contiguous()  # no-ops for the usual inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _product(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors  # both contiguous (see forward)
        grad = grad.contiguous()  # an incoming gradient can be an expanded (stride-0) view
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _product(grad, weight.t())  # (M, out) @ (out, in)
        if ctx.needs_input_grad[1]:
            grad_w = _product(grad.t(), x.t())  # (out, M) @ (M, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b


def _eligible(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.dim() >= 1 and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling())  # inductor lowers this op only for constant (frozen) weights


class OneDNNLinear(nn.Linear):
    """An ``nn.Linear`` whose float32 CPU products run in oneDNN; same parameters and state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _eligible(x, self.weight):
            return F.linear(x, self.weight, self.bias)
        if x.dim() == 2:  # the usual case; no view, so an in-place ReLU after it needs no CopySlices
            return _LinearFunction.apply(x, self.weight, self.bias)
        flat = x.reshape(-1, x.shape[-1])
        return _LinearFunction.apply(flat, self.weight, self.bias).view(*x.shape[:-1], self.out_features)


# Below this many weights MKL's own call is faster: per product (forward, dL/dx, dL/dW), batch 128, 2 threads,
# oneDNN vs MKL in us: 784x256 127/117/131 vs 249/243/243; 256x128 30/29/39 vs 43/43/44; 128x128 22/21/30 vs
# 23/23/24 (even); 128x64 17/16/22 vs 14/13/14; 64x10 13/12/14 vs 5/3/5.
MIN_WEIGHTS = 128 * 128 + 1


def enable(module: nn.Module, min_weights: int = MIN_WEIGHTS) -> int:
    """Switch every plain ``nn.Linear`` of at least ``min_weights`` weights inside ``module`` to
    :class:`OneDNNLinear`; return how many."""
    if not available():
        return 0
    count = 0
    for layer in module.modules():
        if type(layer) is nn.Linear and layer.in_features * layer.out_features >= min_weights:
            layer.__class__ = OneDNNLinear
            count += 1
    return count
