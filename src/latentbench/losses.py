"""Pure loss functions of tensors plus explicit hyper-parameters (no globals, no modules).

* :func:`reconstruction_loss` - mean L1 or squared error per pixel.
* :func:`sigmoid_bce` - binary cross-entropy of ``sigmoid(logits)``, computed from the logits in one pass.
* :func:`classification_loss` - cross-entropy with optional label smoothing.
* :func:`nt_xent` - SimCLR's normalised temperature-scaled cross-entropy (Chen et al. 2020, eq. 1),
  optionally with negatives gathered from every rank of a distributed run, and optionally decoupled (the
  positive left out of the denominator; Yeh et al. 2022).
* :func:`invariance_loss` - scale-free squared distance between the codes of two views of each image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean per-pixel loss between reconstruction ``x_hat`` and target ``x`` (both (B, C, H, W), in [0, 1]).

    ``l1``: |x_hat - x|; ``mse``: (x_hat - x)^2; ``l1+mse``: their sum (MSE's smooth start, L1's exact
    background); ``bce``: binary cross-entropy with pixel intensities as soft targets.
    """
    if kind == "l1":
        return F.l1_loss(x_hat, x)
    if kind == "mse":
        return F.mse_loss(x_hat, x)
    if kind == "l1+mse":
        return F.l1_loss(x_hat, x) + F.mse_loss(x_hat, x)
    if kind == "bce":
        return binary_cross_entropy(x_hat.float(), x.float())
    raise ValueError(f"unknown reconstruction loss '{kind}' (l1 | mse | l1+mse | bce)")


def binary_cross_entropy(x_hat: torch.Tensor, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean binary cross-entropy of ``x_hat`` clamped to [eps, 1 - eps] against soft targets ``x`` in [0, 1].

    Value and gradients equal ``F.binary_cross_entropy(x_hat.clamp(eps, 1 - eps), x)``; computed with
    ``log`` in a few vectorised passes because PyTorch's CPU kernel goes through the scalar ``log1p``
    (an MNIST batch, 128x784, sigmoid + loss forward and backward with 2 threads: 444 us here against 824 us
    with ``F.binary_cross_entropy``; ``tests/test_losses.py`` checks the equality).
    """
    return _ClampedBCE.apply(x_hat, x, eps)


class _ClampedBCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_hat: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
        p = x_hat.clamp(eps, 1 - eps)
        q = 1 - p
        log_p, log_q = torch.log(p), torch.log(q)
        ctx.save_for_backward(x_hat, x, p, q, log_p, log_q)
        return -(log_q + x * (log_p - log_q)).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x_hat, x, p, q, log_p, log_q = ctx.saved_tensors
        scale = grad / x_hat.numel()
        grad_x_hat = grad_x = None
        if ctx.needs_input_grad[0]:  # zero where the clamp is active, as clamp's own gradient
            grad_x_hat = torch.where(p == x_hat, (p - x) / (p * q), 0.0) * scale
        if ctx.needs_input_grad[1]:
            grad_x = (log_q - log_p) * scale
        return grad_x_hat, grad_x, None


def sigmoid_bce(logits: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean binary cross-entropy of ``x_hat = sigmoid(logits)`` against soft targets ``x`` in [0, 1], and
    ``x_hat`` itself (detached: for metrics and figures).

    The value is ``mean(softplus(l) - x * l)``, i.e. ``F.binary_cross_entropy_with_logits(logits, x)``, and
    the gradient to the logits is ``(x_hat - x) / n``: one sigmoid, one log and three reductions forward,
    one fused product backward, instead of a sigmoid, a clamped BCE on probabilities and the backward of
    both (PyTorch's own kernel goes through the scalar ``log1p``). ``softplus(l)`` is evaluated as
    ``relu(l) - log(max(x_hat, 1 - x_hat))``: that ``max`` is ``sigmoid(|l|)`` in [0.5, 1], where ``log`` is
    exact, so no clamp is needed even where ``x_hat`` rounds to 0 or 1 (PyTorch's BCE on probabilities
    clamps its logs at -100 there). ``tests/test_losses.py`` checks value and gradients in float64.
    """
    return _SigmoidBCE.apply(logits, x)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sum of ``a * b`` over all elements; one pass when both share a dense memory layout."""
    if a.shape == b.shape and a.stride() == b.stride() and a.is_contiguous():
        return torch.dot(a.view(-1), b.view(-1))
    return (a * b).sum()


class _SigmoidBCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_hat = torch.sigmoid(logits)
        log_big = torch.maximum(x_hat, 1 - x_hat).log_()  # log(sigmoid(|l|))
        total = logits.clamp_min(0).sum() - _dot(x, logits) - log_big.sum()
        ctx.save_for_backward(logits, x, x_hat)
        ctx.mark_non_differentiable(x_hat)
        return total / logits.numel(), x_hat

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _grad_x_hat: torch.Tensor | None):
        logits, x, x_hat = ctx.saved_tensors
        scale = grad / logits.numel()
        grad_logits = (x_hat - x).mul_(scale) if ctx.needs_input_grad[0] else None
        grad_x = logits * -scale if ctx.needs_input_grad[1] else None
        return grad_logits, grad_x


def classification_loss(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of ``logits`` (B, K) against integer labels ``y`` (B,)."""
    return F.cross_entropy(logits, y, label_smoothing=label_smoothing)


def nt_xent(p1: torch.Tensor, p2: torch.Tensor, temperature: float, gather=None, rank: int = 0,
            decoupled: bool = False) -> torch.Tensor:
    """NT-Xent over 2N views: ``p1[i]`` and ``p2[i]`` (each (N, D)) are the two views of image i.

    For each of the 2N views the positive is its partner and the other 2N-2 views are negatives;
    the loss is the mean over all 2N anchors of ``-log softmax(sim / temperature)[positive]``.

    ``gather``: an optional function ``(N, D) -> (world*N, D)`` that concatenates every rank's
    projections (with gradients), and ``rank`` this process's index in it; the local anchors are then
    contrasted with the global batch, as SimCLR does at scale. The mean of the ranks' losses equals
    the one-process loss on the concatenated batch, and with DDP's gradient averaging so does the
    update (tested in tests/test_distributed.py). Similarities are computed in float32 even under AMP.

    ``decoupled``: the decoupled contrastive loss (DCL, Yeh et al. 2022, eq. 6): the positive's term leaves
    the denominator, which then sums over the 2N-2 negatives only, i.e. ``-sim+/t + log sum_neg exp(sim/t)``.
    In NT-Xent the positive's share of the denominator scales each anchor's whole gradient by
    ``1 - softmax[positive]``, so anchors whose views already agree stop learning from their negatives; DCL
    removes that factor. Its value can be negative.
    """
    at_least_fp32 = torch.promote_types(p1.dtype, torch.float32)  # float32 even under AMP; float64 stays
    z = F.normalize(torch.cat([p1, p2]).to(at_least_fp32), dim=1)  # (2N, D): local anchors
    n = p1.shape[0]
    if gather is None:
        keys, offset, world_n = z, 0, n
    else:
        g1, g2 = gather(z[:n]), gather(z[n:])  # (M, D) each, M = world*N, rank order
        world_n = g1.shape[0]
        offset = rank * n
        keys = torch.cat([g1, g2])  # (2M, D): every rank's views; this rank's rows sit at offset
    logits = z @ keys.T / temperature  # (2N, 2M)
    local = torch.arange(n, device=z.device)
    self_index = torch.cat([local + offset, local + offset + world_n])
    positive = torch.cat([local + offset + world_n, local + offset])
    rows = torch.arange(2 * n, device=z.device)
    logits = logits.index_put((rows, self_index), logits.new_tensor(float("-inf")))  # no self-pairs
    if not decoupled:
        return F.cross_entropy(logits, positive)
    positive_logit = logits[rows, positive]
    negatives = logits.index_put((rows, positive), logits.new_tensor(float("-inf")))
    return (torch.logsumexp(negatives, dim=1) - positive_logit).mean()


def invariance_loss(z_a: torch.Tensor, z_b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean squared distance between paired codes ``z_a[i]`` and ``z_b[i]`` (each (N, D)), divided by the
    codes' total variance (the sum over dimensions of the variance over all 2N codes).

    Dividing by the spread makes the penalty blind to the codes' scale: shrinking every code does not lower
    it, so an encoder can only lower it by mapping the two views of an image closer than other images lie.
    0 when the views' codes coincide; about 2 when they are unrelated draws from the same distribution.
    """
    z_a, z_b = z_a.float(), z_b.float()
    spread = torch.cat([z_a, z_b]).var(dim=0, unbiased=False).sum()
    return (z_a - z_b).pow(2).sum(dim=1).mean() / (spread + eps)
