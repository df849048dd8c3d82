"""Pure metric functions of tensors: kNN accuracy, reconstruction error, latent-space statistics.

Nothing here trains, reads files or holds a default; every hyper-parameter is an argument. Each function
states its input shapes and the paper it follows, and is tested against a slow obviously-correct
reference or scikit-learn (tests/test_metrics.py).

  * :func:`knn_predict` - cosine-similarity kNN with a uniform or ``exp(sim / T)``-weighted vote
    (Wu et al. 2018, "Unsupervised feature learning via non-parametric instance discrimination").
  * :func:`silhouette` - mean silhouette coefficient with Euclidean distances (Rousseeuw 1987).
  * :func:`alignment`, :func:`uniformity` - Wang & Isola 2020, "Understanding contrastive representation
    learning through alignment and uniformity on the hypersphere" (alpha = 2, t = 2).
  * :func:`effective_rank` - Roy & Vetterli 2007: exp of the entropy of the normalised singular values.
  * :func:`pixel_errors` - per-image MAE and MSE of reconstructions in [0, 1]; :func:`psnr`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from latentbench import onednn


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``pred`` (N,) equal to ``y`` (N,); 0.0 for empty inputs."""
    if y.numel() == 0:
        return 0.0
    return float((pred.to(y.device) == y).float().mean())


# ------------------------------------------------------------------------------------------------ kNN
def _matmul_t(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T``; on the CPU through oneDNN (measured 2x MKL's throughput on the AMD EPYC dev machine:
    1024x784 @ 784x54000 at 96 vs 48 GFLOP/s, one thread)."""
    if a.device.type == "cpu" and a.dtype == b.dtype == torch.float32 and onednn.available():
        return torch.ops.mkldnn._linear_pointwise(a.contiguous(), b.contiguous(), None, "none", [], "")
    return a @ b.T


def knn_predict(bank_z: torch.Tensor, bank_y: torch.Tensor, query_z: torch.Tensor, k: int, temperature: float,
                num_classes: int, weighted: bool = True, chunk: int = 1024) -> torch.Tensor:
    """Class predictions (Q,) for ``query_z`` (Q, D) from the ``k`` most cosine-similar rows of ``bank_z`` (N, D).

    ``weighted``: each neighbour votes ``exp(sim / temperature)`` for its label (instance-discrimination kNN);
    otherwise every neighbour votes 1 (scikit-learn's ``weights="uniform"``). Ties go to the lower class index.
    Queries are processed in chunks so memory stays at ``chunk * N`` similarities.
    """
    k = min(k, bank_z.shape[0])
    bank = F.normalize(bank_z.float(), dim=1)
    labels = bank_y.to(bank.device)
    preds = []
    for q in query_z.float().split(chunk):
        sim = _matmul_t(F.normalize(q.to(bank.device), dim=1), bank)  # (q, N) cosine similarities
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.exp(top_sim / temperature) if weighted else torch.ones_like(top_sim)
        scores = torch.zeros(q.shape[0], num_classes, device=bank.device, dtype=votes.dtype)
        scores.scatter_add_(1, labels[top_idx], votes)
        preds.append(scores.argmax(1))
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def knn_accuracy(bank_z: torch.Tensor, bank_y: torch.Tensor, query_z: torch.Tensor, query_y: torch.Tensor, k: int,
                 temperature: float, num_classes: int, weighted: bool = True) -> float:
    return accuracy(knn_predict(bank_z, bank_y, query_z, k, temperature, num_classes, weighted), query_y)


# --------------------------------------------------------------------------------------- reconstruction
def pixel_errors(x_hat: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean absolute and mean squared error (each (B,)) of ``x_hat`` vs ``x`` (B, C, H, W) in [0, 1]."""
    diff = (x_hat.float() - x.float()).flatten(1)
    return diff.abs().mean(1), diff.pow(2).mean(1)


def psnr(mse: float, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of a mean squared error on pixels in [0, ``peak``]."""
    return float("inf") if mse <= 0 else 10.0 * math.log10(peak * peak / mse)


# ------------------------------------------------------------------------------------ latent statistics
def silhouette(z: torch.Tensor, y: torch.Tensor, chunk: int = 1024) -> float:
    """Mean silhouette coefficient of points ``z`` (N, D) labelled ``y`` (N,), Euclidean distance.

    For point i: a = mean distance to the other members of its class, b = smallest mean distance to the
    members of another class, s = (b - a) / max(a, b); points alone in their class score 0 (as scikit-learn).
    """
    z = z.double()
    classes, y_idx = torch.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError("silhouette needs at least two classes")
    one_hot = F.one_hot(y_idx, len(classes)).double()  # (N, K)
    counts = one_hot.sum(0)  # (K,)
    sums = torch.cat([torch.cdist(c, z) @ one_hot for c in z.split(chunk)])  # (N, K): distance sums per class
    own = counts[y_idx]
    a = sums.gather(1, y_idx[:, None]).squeeze(1) / (own - 1).clamp_min(1)
    mean_other = sums / counts
    mean_other.scatter_(1, y_idx[:, None], float("inf"))
    b = mean_other.min(1).values
    s = (b - a) / torch.maximum(a, b).clamp_min(1e-12)
    s = torch.where(own > 1, s, torch.zeros_like(s))
    return float(s.mean())


def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2.0) -> float:
    """Wang & Isola's alignment: mean ``||f(x) - f(x')||^alpha`` over positive pairs, on L2-normalised z.

    ``z1[i]`` and ``z2[i]`` (each (N, D)) are the codes of two augmented views of image i; lower is better.
    """
    a, b = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    return float((a - b).norm(dim=1).pow(alpha).mean())


def uniformity(z: torch.Tensor, t: float = 2.0) -> float:
    """Wang & Isola's uniformity: ``log mean_{i<j} exp(-t ||f(x_i) - f(x_j)||^2)`` on L2-normalised z (N, D).

    Lower (more negative) is more uniform on the hypersphere.
    """
    u = F.normalize(z.double(), dim=1)
    sq = torch.pdist(u).pow(2)
    return float(torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel()))


def effective_rank(z: torch.Tensor, center: bool = True, eps: float = 1e-12) -> float:
    """Roy & Vetterli's effective rank of ``z`` (N, D): ``exp(H(p))`` with ``p_k = s_k / sum(s)``.

    ``s`` are the singular values of ``z`` (of ``z - mean`` when ``center``, so an offset shared by every
    code does not count as a direction); the result lies in [1, min(N, D)].
    """
    m = z.double()
    if center:
        m = m - m.mean(0, keepdim=True)
    s = torch.linalg.svdvals(m)
    p = s / (s.sum() + eps)
    entropy = -(p * torch.log(p + eps)).sum()
    return float(torch.exp(entropy))


def standardize(train: torch.Tensor, *others: torch.Tensor, eps: float = 1e-6) -> list[torch.Tensor]:
    """Scale every tensor by the per-column mean and std of ``train`` (columns constant in train -> std 1)."""
    mean = train.mean(0, keepdim=True)
    std = train.std(0, keepdim=True)
    std = torch.where(std > eps, std, torch.ones_like(std))
    return [(t - mean) / std for t in (train, *others)]
