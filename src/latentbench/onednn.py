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
constant weights). ``LATENTBENCH_ONEDNN_LINEAR=0`` in the environment switches it off.

    from latentbench import onednn
    onednn.enable(objective)   # returns how many layers were switched
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

ENV_SWITCH = "LATENTBENCH_ONEDNN_LINEAR"


def available() -> bool:
    """True when this torch has oneDNN and its fused linear op, and the environment does not switch it off."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "off", "no"):
        return False
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _product(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b.T (+ bias)`` for 2-D float32 CPU tensors, through oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(a.contiguous(), b.contiguous(), bias, "none", [], "")


class _LinearFunction(torch.autograd.Function):
    """y = x W^T + b with all three products (forward, dL/dx, dL/dW) in oneDNN; x is (M, in)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _product(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
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
        flat = x.reshape(-1, x.shape[-1])
        return _LinearFunction.apply(flat, self.weight, self.bias).view(*x.shape[:-1], self.out_features)


def enable(module: nn.Module) -> int:
    """Switch every plain ``nn.Linear`` inside ``module`` to :class:`OneDNNLinear`; return how many."""
    if not available():
        return 0
    count = 0
    for layer in module.modules():
        if type(layer) is nn.Linear:
            layer.__class__ = OneDNNLinear
            count += 1
    return count
