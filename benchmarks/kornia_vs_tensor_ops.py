"""Kornia's batched augmentations against latentbench's own tensor ops, on the same batch and machine.

    .venv/bin/python benchmarks/kornia_vs_tensor_ops.py [--batch 128] [--rounds 15]

Kornia is not a dependency: install it by hand (``pip install kornia``) to rerun this comparison. Each
pipeline is timed alternately (ours, kornia, ours, ...) after a warm-up; the table gives median
milliseconds per batch and the ratio kornia / ours (> 1 means our tensor ops are faster). The outcome
decided that latentbench keeps its own ops (see docs/speed.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from latentbench.augment import augment
from latentbench.config import AugmentConfig


def kornia_pipelines(cfg: AugmentConfig, size: int) -> dict:
    import kornia.augmentation as K

    side_zoom = 1 / cfg.digit_crop_scale[0] ** 0.5  # our digit zoom: area in [0.5, 1] -> side up to 1/sqrt(0.5)
    return {
        "color": K.AugmentationSequential(
            K.RandomResizedCrop((size, size), scale=tuple(cfg.crop_scale), ratio=tuple(cfg.crop_ratio)),
            K.RandomHorizontalFlip(p=cfg.flip_p),
            K.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue, p=cfg.jitter_p),
            K.RandomGrayscale(p=cfg.gray_p),
        ),
        "digits": K.RandomAffine(degrees=cfg.rotation_deg, translate=(cfg.translate, cfg.translate),
                                 scale=(1.0, side_zoom), p=1.0),
        "crop_flip": K.AugmentationSequential(K.RandomCrop((size, size), padding=size // 8),
                                              K.RandomHorizontalFlip(p=cfg.flip_p)),
    }


def timed(fn, x: torch.Tensor) -> float:
    start = time.perf_counter()
    fn(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = AugmentConfig()
    shapes = {"color": (3, 32), "digits": (1, 28), "crop_flip": (3, 32)}
    print("| pipeline | batch | ours ms | kornia ms | kornia / ours |\n|---|---|---|---|---|")
    for kind, (channels, size) in shapes.items():
        x = torch.rand(args.batch, channels, size, size)
        ours = lambda t, k=kind: augment(t, k, cfg)  # noqa: E731
        theirs = kornia_pipelines(cfg, size)[kind]
        for _ in range(3):
            ours(x), theirs(x)
        t_ours, t_theirs = [], []
        for _ in range(args.rounds):
            t_ours.append(timed(ours, x))
            t_theirs.append(timed(theirs, x))
        a, b = statistics.median(t_ours) * 1e3, statistics.median(t_theirs) * 1e3
        print(f"| {kind} | {args.batch} | {a:.2f} | {b:.2f} | {b / a:.1f}x |")


if __name__ == "__main__":
    main()
