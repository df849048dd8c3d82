"""Trained encoders for use outside latentbench: a run directory's model, rebuilt without loading its dataset.

    from latentbench.pretrained import load_encoder
    encoder = load_encoder("runs/cifar10_contrastive_s0")     # frozen, eval mode, on the CPU
    z = encoder(x)            # x: float (B, C, H, W) pixels in [0, 1], as the run trained on -> z (B, 128)

The encoders normalise their input with the training split's per-channel mean and std themselves; those
statistics are not weights (non-persistent buffers), so every checkpoint and ``run_info.json`` records the
dataset's description (:class:`latentbench.data.DatasetSpec`), and the model is rebuilt from the saved
config and that description. Runs trained before it was recorded fall back to loading their dataset once to
recompute it (the same split seed gives the same statistics). For contrastive runs this is the encoder's
code ``z``, never the projection head's output; :func:`load_objective` gives the whole trained model
(decoder, classifier or projection head included).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentbench.config import RunConfig
from latentbench.data import DatasetSpec, load_splits
from latentbench.io import RunFileError, read_json, safe_torch_load
from latentbench.objectives import Objective, build_objective
from latentbench.rundir import RunPaths
from latentbench.train import load_objective_weights, resume_config

CHECKPOINTS = ("best", "last")


def checkpoint_path(paths: RunPaths, which: str) -> Path:
    """``best.pt`` or ``last.pt`` of the run; a clear error when the run has none yet."""
    if which not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {which!r}")
    path = paths.best if which == "best" else paths.last
    if not path.exists():
        other = paths.last if which == "best" else paths.best
        hint = f"; it has {other.name} (checkpoint={other.stem!r})" if other.exists() else \
            "; train it first with 'latentbench train'"
        raise RunFileError(f"'{paths.root}' holds no {path.name} under '{paths.checkpoints}'{hint}")
    return path


def saved_spec(paths: RunPaths, state: dict[str, Any]) -> DatasetSpec | None:
    """The dataset description saved with the weights, else in ``run_info.json``; None for older runs."""
    if isinstance(state.get("dataset"), dict):
        return DatasetSpec.from_dict(state["dataset"])
    if paths.info.exists():
        data = read_json(paths.info).get("dataset", {})
        if {"mean", "std", "shape", "classes"} <= set(data):
            channels, height, width = data["shape"]
            return DatasetSpec(data["name"], channels, height, width, tuple(data["classes"]),
                               tuple(data["mean"]), tuple(data["std"]))
    return None


def trained_objective(spec: DatasetSpec, cfg: RunConfig, checkpoint: Path,
                      state: dict[str, Any] | None = None) -> Objective:
    """The objective of ``cfg`` for ``spec`` with ``checkpoint``'s weights (its average where the run kept one),
    in eval mode on the CPU; ``state``: the file's contents when already loaded. Evaluation builds on it too."""
    objective = build_objective(spec, cfg)
    load_objective_weights(objective, checkpoint, state, averaged=True)  # best.pt holds the average already
    return objective.eval()


def load_objective(run_dir: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu",
                   data_root: str | None = None) -> Objective:
    """The run's whole trained model (encoder and heads), frozen and in eval mode on ``device``.

    ``checkpoint``: ``best`` (what evaluation scores; with ``train.ema_decay`` the moving average) or ``last``
    (the final step's weights, averaged where the run kept an average). ``data_root`` is only read for runs
    that predate the saved dataset description.
    """
    paths = RunPaths(Path(run_dir))
    cfg = resume_config(paths.root)  # first: a folder that is no run directory is told so
    path = checkpoint_path(paths, checkpoint)
    state = safe_torch_load(path)
    spec = saved_spec(paths, state)
    if spec is None:  # an older run: its dataset's statistics, recomputed once
        spec = load_splits(dataclasses.replace(cfg.data, root=str(data_root)) if data_root else cfg.data).spec
    objective = trained_objective(spec, cfg, path, state)
    objective.requires_grad_(False)
    return objective.to(device)


def load_encoder(run_dir: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu",
                 data_root: str | None = None) -> nn.Module:
    """The run's encoder alone: pixels in [0, 1], float (B, C, H, W) -> codes ``z`` (B, latent_dim)."""
    return load_objective(run_dir, checkpoint, device, data_root).encoder
