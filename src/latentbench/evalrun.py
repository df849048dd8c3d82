"""The trained run as evaluation sees it: config, data, the frozen objective with its best weights, where to write.

:func:`load_run` rebuilds a run directory's objective from its saved config (only ``eval.*``, the data root
and the device may change at evaluation time) and loads its best (else last) checkpoint. Every evaluation
stage (:mod:`latentbench.evaluate`, :mod:`latentbench.figures`) takes the :class:`EvalRun` it returns and
gives back ``Scores``: ``({key: value}, {key: how it was measured})``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from latentbench import hostmem
from latentbench.config import ConfigError, EvalConfig, RunConfig, apply_overrides, from_dict
from latentbench.data import Splits, load_splits
from latentbench.io import RunFileError
from latentbench.objectives import Objective
from latentbench.pretrained import trained_objective
from latentbench.rundir import RunPaths
from latentbench.runtime import configure_threads, eval_threads, resolve_device
from latentbench.train import resume_config

# keys besides eval.* that `eval --set` accepts: where the data and the device are on this machine
EVAL_OVERRIDABLE = ("eval.", "data.root", "train.device", "train.threads")

Scores = tuple[dict[str, float], dict[str, str]]  # (metrics, protocol)


@dataclass
class EvalRun:
    """A trained run loaded for evaluation: config, data, the objective with its best weights, where to write."""

    cfg: RunConfig
    paths: RunPaths
    splits: Splits
    objective: Objective
    device: torch.device
    channels_last: bool
    checkpoint: Path
    checkpoint_id: str
    threads: int

    @property
    def ev(self) -> EvalConfig:
        return self.cfg.eval

    @property
    def name(self) -> str:
        return self.cfg.run_name()

    def out(self, relative: str) -> Path:
        return self.paths.root / relative


def file_fingerprint(path: Path) -> str:
    """The first 16 hex digits of the sha256 of a file (a checkpoint's identity for the eval caches)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def eval_config(run_dir: Path, overrides: list[str], eval_settings: EvalConfig | None = None) -> RunConfig:
    """The run's saved config, its ``eval`` section replaced by ``eval_settings`` when given, with ``eval.*``
    (and data-root / device) overrides applied."""
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        if not key.startswith(EVAL_OVERRIDABLE):
            raise ConfigError(f"eval --set '{text}': only eval.* keys (and data.root, train.device, train.threads) "
                              "can be changed at evaluation time; the rest of the config belongs to the trained run")
    cfg = resume_config(run_dir)
    if eval_settings is not None:
        cfg = dataclasses.replace(cfg, eval=eval_settings)
    return from_dict(apply_overrides(cfg.to_dict(), overrides)) if overrides else cfg


def load_run(run_dir: Path, overrides: list[str] | None = None, splits: Splits | None = None,
             eval_settings: EvalConfig | None = None) -> EvalRun:
    """Rebuild the run's objective from its config and load its best (else last) checkpoint, in eval mode.

    ``eval_settings`` (a study's) replace the run's saved ``eval`` section before ``overrides`` apply.
    """
    paths = RunPaths(Path(run_dir))
    cfg = eval_config(paths.root, list(overrides or []), eval_settings)
    checkpoint = paths.best if paths.best.exists() else paths.last
    if not checkpoint.exists():
        raise RunFileError(f"'{paths.root}' holds no checkpoint ({paths.best.name} or {paths.last.name} under "
                           f"'{paths.checkpoints}'); train it first with 'latentbench train'")
    device = resolve_device(cfg.train.device)
    threads = configure_threads(eval_threads(cfg.train.threads))
    if device.type == "cpu":
        hostmem.keep_freed_memory()  # batches of 1,024 images: no page faults to get freed memory back
    splits = splits or load_splits(cfg.data)
    objective = trained_objective(splits.spec, cfg, checkpoint).to(device)
    conv = cfg.model.channels_last and any(isinstance(m, nn.Conv2d) for m in objective.modules())
    if conv:
        objective = objective.to(memory_format=torch.channels_last)
    return EvalRun(cfg, paths, splits, objective, device, conv, checkpoint, file_fingerprint(checkpoint), threads)


def say(run: EvalRun, text: str) -> None:
    """One progress line of an evaluation, prefixed with the run's name."""
    print(f"[{run.name}] eval: {text}", flush=True)


