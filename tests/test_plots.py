"""The t-SNE map: both gradient paths keep separated clusters apart, with the settings plots.py states."""

from __future__ import annotations

import numpy as np
import openTSNE
import pytest
import torch
from sklearn.manifold import trustworthiness

from latentbench import plots


def blobs(per_class: int = 100, classes: int = 3, dims: int = 60, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    centres = 12.0 * torch.randn(classes, dims, generator=gen)
    y = torch.arange(classes).repeat_interleave(per_class)
    return centres[y] + torch.randn(len(y), dims, generator=gen), y


def leave_one_out_1nn_accuracy(points: np.ndarray, y: torch.Tensor) -> float:
    d = torch.cdist(torch.as_tensor(points), torch.as_tensor(points))
    d.fill_diagonal_(float("inf"))
    return (y[d.argmin(1)] == y).float().mean().item()


@pytest.mark.parametrize("fft_from", [10**9, 100], ids=["barnes-hut", "fft"])
def test_tsne_map_keeps_separated_clusters_apart_on_both_gradient_paths(monkeypatch, fft_from):
    monkeypatch.setattr(plots, "FFT_FROM_POINTS", fft_from)
    made = []
    real = openTSNE.TSNE

    def spy(**kwargs):
        made.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(openTSNE, "TSNE", spy)
    x, y = blobs()
    points = plots.tsne_map(x, perplexity=30.0, iters=250, seed=0, n_jobs=1)
    assert points.shape == (300, 2) and np.isfinite(points).all()
    assert leave_one_out_1nn_accuracy(points, y) == 1.0
    assert trustworthiness(x.numpy(), points, n_neighbors=5) > 0.9
    (kwargs,) = made
    fft = fft_from <= len(y)
    assert kwargs["negative_gradient_method"] == ("fft" if fft else "bh")
    assert kwargs.get("n_interpolation_points") == (plots.FFT_INTERPOLATION_POINTS if fft else None)
    assert kwargs["neighbors"] == "exact" and kwargs["n_iter"] == 250
