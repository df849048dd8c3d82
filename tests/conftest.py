"""Shared fixtures: tiny synthetic configs and trained runs, so every test runs in seconds on a CPU."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

from latentbench.config import RunConfig, load_config

REAL_DATA = Path(os.environ.get("LATENTBENCH_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))

torch.set_num_threads(1)

# `latentbench train` arguments for a synthetic run that trains in a second (tests that run the CLI)
SYNTHETIC = ['data.name="synthetic"', "data.synthetic_train=200", "data.synthetic_test=50", "data.image_size=16",
             "train.batch_size=32", "train.threads=1", "train.patience=0", "model.mlp_hidden=[32, 32]",
             "model.latent_dim=8"]


def wait_until(proc: subprocess.Popen, ready, timeout: float = 90.0, poll: float = 0.05) -> None:
    """Wait until ``ready()`` while ``proc`` (stderr piped as text) runs; fail with its stderr if it exits
    first, and kill it and fail if ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the process exited early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the process never got there in {timeout:.0f} s")
        time.sleep(poll)


def cli_args(out: Path, *extra: str, name: str = "run") -> list[str]:
    """``train --out OUT --set name=NAME --set ...``: the synthetic run above with ``extra`` overrides."""
    args = ["train", "--out", str(out), "--set", f'name="{name}"']
    for item in [*SYNTHETIC, *extra]:
        args += ["--set", item]
    return args


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
