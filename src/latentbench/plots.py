"""The report's figures as PNG files: reconstructions, latent interpolation, t-SNE pair, learning curves.

Every function takes plain tensors (pixels in [0, 1], CPU) and a path, draws with matplotlib's Agg
backend (no display needed) and writes the PNG atomically. Classes are coloured with a colour-blind-safe
palette: Okabe & Ito's eight colours plus grey and dark brown (:data:`PALETTE`).

:func:`tsne_map` computes a 2-D t-SNE map with openTSNE: PCA to 50 dimensions, exact nearest neighbours
(deterministic, and faster than Annoy at these sizes), FFT-accelerated gradients with 2 interpolation points
per interval from 3,000 points on (Barnes-Hut below, where FFT's fixed cost dominates), the standard 250
early-exaggeration iterations and ``iters`` (default 250) normal ones. Measured on 5,000 MNIST test images:
250 instead of openTSNE's 500 normal iterations halves the CPU time (15 s vs 31 s) at equal trustworthiness
(0.981 both), and 2 instead of openTSNE's 3 interpolation points take 6.9-7.6 s instead of 16.7-18.0 s, again
at equal trustworthiness (0.9877 vs 0.9884 at 5 neighbours; see docs/evaluation.md).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from latentbench.io import atomic_write_bytes  # noqa: E402

# Okabe & Ito (2008) "Color Universal Design" + neutral grey + dark brown: distinguishable under the common
# colour-vision deficiencies (matplotlib's 'tab10' is not).
PALETTE = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000",
           "#999999", "#8C510A")


def class_colors(n: int) -> list[str]:
    """``n`` colours: the palette, then (for more than 10 classes) evenly spaced 'cividis' colours."""
    if n <= len(PALETTE):
        return list(PALETTE[:n])
    extra = plt.get_cmap("cividis")(np.linspace(0, 1, n - len(PALETTE)))
    return list(PALETTE) + [matplotlib.colors.to_hex(c) for c in extra]


def save_figure(fig: plt.Figure, path: Path, dpi: int = 120) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def _show(ax: plt.Axes, image: torch.Tensor) -> None:
    """Draw one image (C, H, W) in [0, 1]; grayscale for one channel."""
    image = image.detach().float().clamp(0, 1).cpu()
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_image_rows(rows: Sequence[torch.Tensor], row_labels: Sequence[str], path: Path, title: str,
                    column_titles: Sequence[str] | None = None) -> None:
    """A grid of images: ``rows[r]`` is (n, C, H, W); each row labelled on the left."""
    n = rows[0].shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n + 0.8, 1.35 * len(rows) + 0.6), squeeze=False)
    for r, (images, label) in enumerate(zip(rows, row_labels)):
        for c in range(n):
            _show(axes[r][c], images[c])
        axes[r][0].set_ylabel(label, fontsize=10)
    if column_titles:
        for c, text in enumerate(column_titles):
            axes[0][c].set_title(text, fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def plot_reconstructions(x: torch.Tensor, x_hat: torch.Tensor, path: Path, title: str,
                         captions: Sequence[str] | None = None) -> None:
    """Originals (n, C, H, W) in the top row over their reconstructions in the bottom row."""
    plot_image_rows([x, x_hat], ["original", "reconstruction"], path, title, captions)


def plot_interpolation(x_a: torch.Tensor, x_b: torch.Tensor, frames: torch.Tensor, path: Path, title: str,
                       label_a: str, label_b: str) -> None:
    """A strip: original A, the decoded interpolation ``frames`` (steps, C, H, W), original B."""
    steps = frames.shape[0]
    images = torch.cat([x_a[None].cpu(), frames.cpu(), x_b[None].cpu()])
    alphas = [f"{a:.2f}" for a in np.linspace(0, 1, steps)] if steps > 1 else ["0.00"]
    captions = [f"input {label_a}", *[f"t={a}" for a in alphas], f"input {label_b}"]
    fig, axes = plt.subplots(1, steps + 2, figsize=(1.25 * (steps + 2) + 0.4, 2.0), squeeze=False)
    for i, image in enumerate(images):
        _show(axes[0][i], image)
        axes[0][i].set_title(captions[i], fontsize=8)
        if i in (0, steps + 1):
            for spine in axes[0][i].spines.values():
                spine.set_edgecolor("#0072B2")
                spine.set_linewidth(2)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


# FFT-interpolated gradients have a fixed cost per map whatever N; Barnes-Hut grows with N. Measured CPU
# seconds (exact neighbours, 250+250 iterations): 200 points bh 1.0 / fft 9.6; 5,000 MNIST test images bh 19.7
# / fft 15.0. Session 16 (Zen 3 host, 2 jobs, wall seconds, PCA-50 of MNIST test images, two runs each), FFT
# with 2 interpolation points: 1,000 bh 1.4-1.7 / fft 3.5-3.8; 2,000 bh 3.6-4.0 / fft 4.4-4.9; 3,000 bh
# 6.4-6.7 / fft 4.8-6.4; 5,000 bh 12.6-12.9 / fft 6.9-7.6 (3 points: 16.7-18.0); trustworthiness within 0.003
# of each other throughout.
FFT_FROM_POINTS = 3000
FFT_INTERPOLATION_POINTS = 2  # openTSNE's default 3 takes 2.3x the time here for no gain in trustworthiness


def tsne_map(features: torch.Tensor, perplexity: float, iters: int, seed: int, n_jobs: int = 2,
             pca_dims: int = 50) -> np.ndarray:
    """2-D openTSNE map (N, 2) of ``features`` (N, D), after centring and PCA to ``pca_dims`` dimensions."""
    from openTSNE import TSNE

    x = features.double().cpu()
    x = x - x.mean(0, keepdim=True)
    q = min(pca_dims, x.shape[0], x.shape[1])
    if x.shape[1] > q:
        torch.manual_seed(seed)
        _, _, v = torch.pca_lowrank(x, q=q, center=False, niter=4)
        x = x @ v
    perplexity = min(perplexity, max(1.0, (x.shape[0] - 1) / 3.0))  # openTSNE needs 3 * perplexity < N
    fft = x.shape[0] >= FFT_FROM_POINTS
    extra = {"n_interpolation_points": FFT_INTERPOLATION_POINTS} if fft else {}
    tsne = TSNE(n_components=2, perplexity=perplexity, n_iter=iters, neighbors="exact",
                negative_gradient_method="fft" if fft else "bh", initialization="pca", random_state=seed,
                n_jobs=n_jobs, verbose=False, **extra)
    return np.asarray(tsne.fit(np.ascontiguousarray(x.numpy())))


def plot_tsne(maps: dict[str, np.ndarray], y: torch.Tensor, class_names: Sequence[str], path: Path,
              title: str) -> None:
    """Side-by-side scatter plots of 2-D maps (one panel per entry of ``maps``), coloured by class."""
    labels = y.cpu().numpy()
    colors = class_colors(len(class_names))
    fig, axes = plt.subplots(1, len(maps), figsize=(6.2 * len(maps), 6.0), squeeze=False)
    size = max(1.0, min(12.0, 20000.0 / max(1, len(labels))))
    for ax, (name, points) in zip(axes[0], maps.items()):
        for k, cls in enumerate(class_names):
            mask = labels == k
            ax.scatter(points[mask, 0], points[mask, 1], s=size, c=colors[k], label=cls, linewidths=0,
                       alpha=0.85, rasterized=True)
        ax.set_title(name, fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center right", markerscale=max(1.0, 6.0 / math.sqrt(size)), frameon=False,
               title="class", fontsize=9)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    save_figure(fig, path)


def _wide_positive_range(values: list[float], ratio: float = 10.0) -> bool:
    """True when every value is positive and the largest is at least ``ratio`` times the smallest."""
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) >= ratio * min(finite)


def plot_curves(history: list[dict[str, float]], path: Path, title: str) -> None:
    """One panel per statistic logged for both train and validation in ``history`` (rundir.read_history rows)."""
    keys = [k[len("train_"):] for k in history[0] if k.startswith("train_")] if history else []
    stats = [k for k in keys if any(f"val_{k}" in row for row in history)] or keys or ["loss"]
    cols = min(3, len(stats))
    rows = math.ceil(len(stats) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.3 * rows), squeeze=False)
    for ax, stat in zip(axes.flat, stats):
        values = []
        for split, color, marker in (("train", PALETTE[4], "o"), ("val", PALETTE[5], "s")):
            points = [(row["epoch"], row[f"{split}_{stat}"]) for row in history if f"{split}_{stat}" in row]
            if points:
                values += [v for _, v in points]
                shown = marker if len(points) <= 40 else None
                ax.plot(*zip(*points), color=color, marker=shown, markersize=3, label=split)
        log = _wide_positive_range(values)
        if log:
            ax.set_yscale("log")  # errors that fall by orders of magnitude: the late epochs stay visible
        ax.set_title(stat + (" (log scale)" if log else ""), fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(stats):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
