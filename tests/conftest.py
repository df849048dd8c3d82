"""Shared fixtures: tiny synthetic configs and trained runs, so every test runs in seconds on a CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from latentbench.config import RunConfig, load_config

REAL_DATA = Path(os.environ.get("LATENTBENCH_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))

torch.set_num_threads(1)


def tiny_config(tmp_path: Path, objective: str = "autoencoder", channels: int = 1, size: int = 28,
                extra: list[str] | None = None) -> RunConfig:
    """A synthetic run that trains in about a second: 2 epochs of 400 images, batch 64, one thread."""
    overrides = [
        'data.name="synthetic"', f"data.channels={channels}", f"data.image_size={size}",
        "data.synthetic_train=400", "data.synthetic_test=200", f'objective.name="{objective}"',
        "train.epochs=2", "train.batch_size=64", "train.threads=1", f'out_dir="{tmp_path}"',
        "eval.tsne_points=200", "eval.silhouette_points=200", "eval.probe_epochs=3",
        "eval.decoder_probe_epochs=2", "eval.batch_size=256",
        *(extra or []),
    ]
    return load_config(None, overrides)


@pytest.fixture
def tiny(tmp_path):
    """Factory: ``tiny(objective, channels=1, size=28, extra=[...]) -> RunConfig``."""

    def make(objective: str = "autoencoder", channels: int = 1, size: int = 28, extra: list[str] | None = None):
        return tiny_config(tmp_path, objective, channels, size, extra)

    return make


def real_data_root() -> Path:
    return REAL_DATA.resolve()


def has_mnist() -> bool:
    return (real_data_root() / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def has_cifar() -> bool:
    return (real_data_root() / "cifar10-jpeg" / "train").is_dir()
