"""The one training loop for every objective, and the run directory it writes.

    latentbench train configs/mnist_supervised.toml --set train.epochs=5
    latentbench train --resume runs/mnist_supervised_s0

Per epoch: training steps (Adam/AdamW or Nesterov SGD, optional cosine or one-cycle schedule), a validation
pass on the held-out split, early stopping on the objective's validation statistic, ``best`` and ``last``
checkpoints and one row of ``history.csv``. A checkpoint holds everything needed to continue exactly:
weights, optimizer, scheduler, epoch and batch position, early-stopping state, every RNG state and the
config. Ctrl-C or SIGTERM saves ``last`` (mid-epoch) and exits; a NaN/inf loss stops the run, names the
epoch and step, and leaves the last good checkpoint in place. Under torchrun the objective is wrapped in
DistributedDataParallel and only rank 0 writes files.

Run directory: config.json, run_info.json, history.csv, checkpoints/{last,best}.pt (file names in
:mod:`latentbench.rundir`; device, threads, seeds and host facts in :mod:`latentbench.runtime`).
"""

from __future__ import annotations

import math
import platform
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import latentbench
from latentbench import distributed, hostmem, onednn
from latentbench.config import RUN_SETTINGS, ConfigError, RunConfig, flatten, load_saved_config, save_config
from latentbench.data import BatchLoader, Splits, load_splits
from latentbench.io import (RunFileError, atomic_torch_save, atomic_write_json, check_free_space,
                            check_writable, read_json, remove_stale_temp, run_directory_lock, safe_torch_load)
from latentbench.objectives import Objective, build_objective
from latentbench.rundir import RunPaths, run_dir_for, time_left, write_history
from latentbench.runtime import (amp_dtype, configure_cuda, configure_threads, cpu_name, git_revision, missing_compiler,
                                 resolve_device, rng_state, seed_everything, set_rng_state, torchvision_version)


STOP_CHECK_STEPS = 10  # under torchrun: steps between the ranks' checks for a stop signal


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and step."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C or SIGTERM: ``last`` was saved; the run can be resumed. ``exit_code`` is the shell's
    convention for the signal (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Terminated(KeyboardInterrupt):
    """SIGTERM outside training (loading data, evaluating, writing a report): stops like Ctrl-C, and what was
    finished is kept; the CLI exits with status 143. Raised by :func:`sigterm_as_interrupt`."""

    exit_code = 128 + signal.SIGTERM


def sigterm_as_interrupt(signum, frame) -> None:
    """The CLI's SIGTERM handler (the default one would end the process without a word or a saved state);
    during training the trainer puts its step-boundary stop in its place (:meth:`Trainer._stop_at_step_boundary`)."""
    raise Terminated


# ------------------------------------------------------------------------------------------- pieces
def make_optimizer(params, cfg: RunConfig, device: torch.device | None) -> torch.optim.Optimizer:
    """The configured optimizer. With a ``device``, one fused kernel per step on CUDA and CPU (on 2 CPU cores
    ~3x faster than foreach for 2.1M params, benchmarks/README.md) and foreach elsewhere (MPS); with None,
    torch's defaults (the per-parameter loop on CPU), as the naive reference in ``benchmarks/`` trains."""
    t = cfg.train
    opts: dict[str, Any] = {"lr": t.lr}
    if device is not None:
        opts.update({"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True})
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, momentum=t.momentum, nesterov=True, weight_decay=t.weight_decay, **opts)
    if t.weight_decay > 0:
        return torch.optim.AdamW(params, weight_decay=t.weight_decay, **opts)
    return torch.optim.Adam(params, **opts)


def schedule_phases(cfg: RunConfig) -> list[tuple[int, int]]:
    """The epoch ranges ``[start, end)`` that each get a whole learning-rate schedule: all the epochs, or with
    ``objective.encoder_frozen_schedule = "restart"`` the encoder's epochs, then the decoder-only ones (the
    first of them as the objective counts it: ``epoch >= encoder_frozen_from * epochs``)."""
    epochs, o = cfg.train.epochs, cfg.objective
    if o.encoder_frozen_schedule == "restart":
        frozen = next((e for e in range(epochs) if e >= o.encoder_frozen_from * epochs), epochs)
        if 0 < frozen < epochs:
            return [(0, frozen), (frozen, epochs)]
    return [(0, epochs)]


def schedule_phase(cfg: RunConfig, epoch: int) -> tuple[int, int]:
    """The phase of :func:`schedule_phases` that ``epoch`` (0-based) trains in (the last one past the end)."""
    phases = schedule_phases(cfg)
    return next((p for p in phases if p[0] <= epoch < p[1]), phases[-1])


def make_scheduler(opt: torch.optim.Optimizer, cfg: RunConfig, steps_per_epoch: int,
                   phase: tuple[int, int] | None = None):
    """The learning-rate schedule of the epochs ``phase`` (default: all of them), cut at ``train.max_steps``."""
    t = cfg.train
    start, end = phase or (0, t.epochs)
    total = (end - start) * steps_per_epoch
    if t.max_steps:
        total = min(total, t.max_steps - start * steps_per_epoch)
    total = max(1, total)
    if t.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=t.lr, total_steps=total, pct_start=0.25)
    if t.schedule == "cosine":
        warmup = int(t.warmup_epochs * steps_per_epoch)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1 + math.cos(math.pi * progress))

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return None


@dataclass
class EarlyStopping:
    mode: str  # min | max
    patience: int
    best: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record this epoch's value; True when it is the best so far."""
        better = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
        if better:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "patience": self.patience, "best": self.best, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs}


def make_ema(objective: nn.Module, decay: float) -> AveragedModel | None:
    """A copy of ``objective`` that follows its weights and BatchNorm statistics as an exponential moving
    average (``train.ema_decay``; each step moves it ``1 - decay`` of the way), or None when ``decay`` is 0."""
    if not decay:
        return None
    return AveragedModel(objective, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def averaged_weights(ema_state: dict[str, Any]) -> dict[str, Any]:
    """The objective's state dict inside an :class:`AveragedModel`'s (its ``module.`` entries)."""
    prefix = "module."
    return {k[len(prefix):]: v for k, v in ema_state.items() if k.startswith(prefix)}


def load_objective_weights(objective: nn.Module, checkpoint: Path, state: dict[str, Any] | None = None,
                           averaged: bool = False) -> dict[str, Any]:
    """Load ``checkpoint``'s weights into ``objective`` (``state``: the file's already-loaded contents); with
    ``averaged``, a ``last.pt``'s moving average of the weights where the run kept one (``train.ema_decay``)."""
    state = safe_torch_load(checkpoint) if state is None else state
    try:
        weights = averaged_weights(state["ema"]) if averaged and state.get("ema") else state["objective"]
        objective.load_state_dict(weights)
    except (KeyError, RuntimeError, TypeError) as err:
        raise RunFileError(f"'{checkpoint}' does not match this run's model ({str(err).splitlines()[0]})") from None
    return state


# Keys a resumed run may change: where and how it runs, how long, and evaluation. Any other change (data,
# model, objective, optimizer, seed) would make the continuation a different experiment.
RESUME_MAY_CHANGE = RUN_SETTINGS | {"train.epochs", "train.max_steps", "train.patience", "train.sync_batchnorm"}
SCHEDULE_LENGTH_KEYS = ("train.epochs", "train.max_steps")  # a cosine/one-cycle schedule is laid out over these


def check_resume_config(saved: dict[str, Any], cfg: RunConfig, checkpoint: Path) -> None:
    """Refuse to resume ``checkpoint`` (trained with config ``saved``) under a config that changes the experiment."""
    new = flatten(cfg.to_dict())
    old = {**flatten(RunConfig().to_dict()), **flatten(saved)}  # a key newer than the run: it ran the default
    changed = sorted(k for k in new if k in old and old[k] != new[k])
    fixed = [k for k in changed if k not in RESUME_MAY_CHANGE and not k.startswith("eval.")]
    if fixed:
        what = "; ".join(f"{k} = {new[k]!r} (trained with {old[k]!r})" for k in fixed)
        raise ConfigError(
            f"cannot resume from '{checkpoint}' with a changed config: {what}. A resumed run continues the same "
            "experiment; only train.epochs, train.max_steps, train.patience, device/thread/precision settings and "
            "eval.* may change. Start a new run for a different setting (--set name=NEW_NAME)."
        )
    length = [k for k in changed if k in SCHEDULE_LENGTH_KEYS]
    if length and cfg.train.schedule != "constant":
        what = ", ".join(f"{k} from {old[k]!r} to {new[k]!r}" for k in length)
        raise ConfigError(
            f"cannot change {what} when resuming from '{checkpoint}': its '{cfg.train.schedule}' learning-rate "
            "schedule is laid out over the original number of steps, so a longer run would not follow the "
            "schedule it started with. Resume with the original value, or start a new run with the longer budget "
            "(train.schedule = 'constant' runs may be extended)."
        )


# --------------------------------------------------------------------------------------------- trainer
@dataclass
class Trainer:
    cfg: RunConfig
    paths: RunPaths
    splits: Splits | None = None
    started: float = field(default_factory=time.time)  # when the run first started (kept across resumes)
    device: torch.device = field(init=False)
    dist: distributed.DistInfo = field(init=False)

    def __post_init__(self) -> None:
        t = self.cfg.train
        self.device = resolve_device(t.device)
        if self.device.type == "cuda" and distributed.env_info().enabled:
            self.device = torch.device("cuda", distributed.env_info().local_rank)
            torch.cuda.set_device(self.device)
        self.dist = distributed.init(self.device)
        if self.device.type == "cuda":
            configure_cuda(t.deterministic)
        self.threads = configure_threads(t.threads, self.dist.local_world_size)  # ranks of a machine share its cores
        seed_everything(t.seed + self.dist.rank, t.deterministic)
        self.splits = self.splits or load_splits(self.cfg.data)
        self.spec = self.splits.spec
        if t.batch_size > len(self.splits.train):
            raise ConfigError(f"train.batch_size = {t.batch_size} is larger than the {len(self.splits.train)} "
                              "training images; lower it")
        self.objective: Objective = build_objective(self.spec, self.cfg).to(self.device)
        self.conv = self.cfg.model.channels_last and any(isinstance(m, nn.Conv2d) for m in self.objective.modules())
        if self.conv:
            self.objective = self.objective.to(memory_format=torch.channels_last)
        if self.device.type == "cpu":
            onednn.enable(self.objective)  # Linear layers through oneDNN on AVX-512 CPUs (see onednn.py)
            hostmem.keep_freed_memory()  # each step reuses the last one's memory without page faults
        self.step_module: nn.Module = self._wrap(self.objective)
        if t.batch_size % self.dist.world_size:
            raise ConfigError(f"train.batch_size = {t.batch_size} is the global batch and must split evenly over the "
                              f"{self.dist.world_size} processes; choose a multiple of {self.dist.world_size}")
        # The whole split moves to the device once, as uint8; batches are then indexed on the device, so
        # the loop makes no host-to-device copies. For such a one-off copy a plain .to() is right: staging
        # it through pin_memory() first costs an extra host copy (PyTorch's pin_memory/non_blocking guide).
        self.train_data = self.splits.train.to(self.device)
        self.val_data = self.splits.val.to(self.device)
        self.loader = BatchLoader(self.train_data, t.batch_size, shuffle=True, drop_last=True, seed=t.seed,
                                  rank=self.dist.rank, world_size=self.dist.world_size, channels_last=self.conv)
        if len(self.loader) == 0:
            raise ConfigError(f"train.batch_size = {t.batch_size} leaves no full batch; lower it")
        self.optimizer = make_optimizer(self.objective.parameters(), self.cfg, self.device)
        self.ema = make_ema(self.objective, t.ema_decay)  # after _wrap: it copies the converted layers
        self.scheduler_phase = schedule_phase(self.cfg, 0)  # the epochs the scheduler's schedule spans
        self.scheduler = make_scheduler(self.optimizer, self.cfg, len(self.loader), self.scheduler_phase)
        monitor = t.monitor if t.monitor != "auto" else self.objective.monitor
        mode = self.objective.mode if t.monitor == "auto" else ("max" if "acc" in monitor or monitor == "last"
                                                                else "min")
        if monitor == "last" and t.patience:
            raise ConfigError(f"train.monitor = 'last' keeps the final epoch, so nothing can stop early: set "
                              f"train.patience = 0 (it is {t.patience})")
        self.monitor = monitor
        self.early = EarlyStopping(mode, t.patience)
        self.amp = amp_dtype(t.amp, self.device)
        # float16 gradients underflow without loss scaling; bfloat16 has float32's range and needs none
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.history: list[dict[str, Any]] = []
        self.step_log: list[dict[str, Any]] = []  # one row every train.log_every steps (steps.csv)
        self.partial: dict[str, float] = {}  # running train sums of an interrupted epoch
        self._sums: dict[str, torch.Tensor] = {}
        self.elapsed = 0.0
        self._interrupt_requested = False  # set by the first Ctrl-C or SIGTERM; acted on at the next step boundary
        self._stop_signal = signal.SIGINT  # which of the two asked
        self._in_step = False  # a step is in flight: BatchNorm buffers, RNGs or weights may be half-way
        self._bad_step = torch.full((), -1, dtype=torch.long, device=self.device)  # first non-finite loss
        self._saved_at = time.monotonic()  # when ``last`` was last written (train.save_every_minutes)
        self._epoch_start: float | None = None  # perf_counter at the start of the epoch not yet in ``elapsed``
        self._epoch_carried = 0.0  # seconds the epoch in flight ran before an interruption (its history row's)

    # -- setup -------------------------------------------------------------------------------------
    def _wrap(self, objective: Objective) -> nn.Module:
        """DDP around the objective under torchrun (global-batch BN and NT-Xent negatives), then compile.

        BatchNorm layers are converted in place, so ``self.objective`` (what checkpoints save and
        validation runs) shares every parameter and buffer with the wrapped module. DDP broadcasts rank
        0's weights at construction (ranks were seeded differently) and averages gradients, so every
        rank holds identical weights after every step.
        """
        module: nn.Module = objective
        t = self.cfg.train
        self.sync_bn = (distributed.use_sync_batchnorm(t.sync_batchnorm, self.cfg.objective.name, self.device,
                                                       self.dist.world_size)
                        and distributed.has_batchnorm(objective))
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            if self.sync_bn:
                module = distributed.convert_sync_batchnorm(module, self.device)
            if hasattr(objective, "gather"):
                objective.gather, objective.rank = distributed.gather_with_grad, self.dist.rank
            ids = [self.device.index] if self.device.type == "cuda" else None
            module = DDP(module, device_ids=ids)
        if t.compile:
            missing = missing_compiler(self.device)
            if missing:
                print(f"latentbench: warning: train.compile is on but {missing}; training without torch.compile",
                      file=sys.stderr, flush=True)
            else:
                module = torch.compile(module)  # after DDP, so DDP's optimizer splits graphs at bucket boundaries
        return module

    @property
    def evaluated(self) -> Objective:
        """The weights validation, ``best.pt`` and evaluation use: the moving average when the run keeps one."""
        return self.ema.module if self.ema is not None else self.objective

    # -- checkpoints -------------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        return {
            "format": 1,
            "objective": self.objective.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scheduler_phase": list(self.scheduler_phase),
            "scaler": self.scaler.state_dict(),  # fp16 loss scale; {} when disabled
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "early_stopping": self.early.state_dict(),
            "partial": dict(self.partial),
            "rng": rng_state(),
            "history": self.history,
            "step_log": self.step_log,
            "elapsed": self.elapsed + self._unbooked_seconds(),
            "epoch_seconds": self._epoch_carried + self._unbooked_seconds(),  # 0 between epochs
            "config": self.cfg.to_dict(),
            "dataset": self.spec.to_dict(),
        }

    def save_last(self) -> None:
        if self.dist.is_main:
            atomic_torch_save(self.paths.last, self.checkpoint())
            self._saved_at = time.monotonic()

    def _unbooked_seconds(self) -> float:
        """Training seconds of the epoch in flight, which ``elapsed`` gets only when the epoch ends."""
        return 0.0 if self._epoch_start is None else time.perf_counter() - self._epoch_start

    def _save_due(self) -> bool:
        """Whether ``train.save_every_minutes`` have passed since ``last`` was written (rank 0 decides alone:
        only it writes, and every rank is at the same step boundary)."""
        minutes = self.cfg.train.save_every_minutes
        return bool(minutes) and self.dist.is_main and time.monotonic() - self._saved_at >= 60 * minutes

    def _save_mid_epoch(self) -> None:
        """Save ``last`` between two steps, with the epoch's running sums, as Ctrl-C does: a kill that gives
        no warning (SIGKILL, the OOM killer, a lost machine) then costs minutes, not the whole epoch. Never
        a diverged state: after a NaN the regular check stops the run on every rank at the same step."""
        if 0 <= int(self._bad_step) < self.step:
            return
        self.partial = {k: float(v) for k, v in self._sums.items()}
        self.save_last()
        atomic_write_json(self.paths.info, _run_info(self, "running"))  # `latentbench status` sees it alive

    def save_best(self) -> None:
        if self.dist.is_main:
            atomic_torch_save(self.paths.best, {"format": 1, "objective": self.evaluated.state_dict(),
                                                "epoch": self.epoch, "monitor": self.monitor,
                                                "value": self.early.best, "config": self.cfg.to_dict(),
                                                "dataset": self.spec.to_dict()})

    def restore(self, path: Path) -> None:
        """Continue exactly where the checkpoint ``path`` (a ``last.pt``) left off."""
        state = safe_torch_load(path)
        if not isinstance(state, dict) or "optimizer" not in state:
            raise RunFileError(f"'{path}' is not a full training checkpoint (it holds no optimizer state); "
                               "a run can only be resumed from its checkpoints/last.pt")
        if "config" in state:
            check_resume_config(state["config"], self.cfg, path)
        load_objective_weights(self.objective, path, state)
        try:
            self._restore_schedule_and_optimizer(state)
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
            if state.get("scaler"):  # a no-op when this run does not use fp16
                self.scaler.load_state_dict(state["scaler"])
            self.epoch, self.batch_in_epoch, self.step = state["epoch"], state["batch_in_epoch"], state["step"]
            es = state["early_stopping"]
            self.early.best, self.early.best_epoch, self.early.bad_epochs = es["best"], es["best_epoch"], es["bad_epochs"]
            self.partial = dict(state.get("partial", {}))
            self.history = list(state["history"])
            self.step_log = list(state.get("step_log", []))
            self.elapsed = float(state.get("elapsed", 0.0))
            self._epoch_carried = float(state.get("epoch_seconds", 0.0)) if self.batch_in_epoch else 0.0
            set_rng_state(state["rng"])
        except (KeyError, ValueError, TypeError, RuntimeError) as err:
            raise RunFileError(f"'{path}' is damaged or from an incompatible version ({type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else 'no detail'})") from None

    def _restore_schedule_and_optimizer(self, state: dict[str, Any]) -> None:
        """The optimizer's state, and the schedule of the phase the checkpoint's epoch trains in: the saved one
        when it is that phase's (built before the optimizer's state, which then restores the saved learning
        rate), else a fresh one, as :meth:`train_epoch` starts it at a phase's first epoch."""
        phase = schedule_phase(self.cfg, state["epoch"])
        saved_phase = tuple(state.get("scheduler_phase") or (0, self.cfg.train.epochs))  # older checkpoints
        if self.scheduler is not None and saved_phase == phase != self.scheduler_phase:
            self._start_schedule(phase)
        self._restore_optimizer(state["optimizer"])
        if self.scheduler is None:
            return
        if saved_phase != phase:
            self._start_schedule(phase)
        elif state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])

    def _start_schedule(self, phase: tuple[int, int]) -> None:
        self.scheduler = make_scheduler(self.optimizer, self.cfg, len(self.loader), phase)
        self.scheduler_phase = phase

    def _restore_optimizer(self, saved: dict[str, Any]) -> None:
        """Load optimizer state saved on any device; keep *this* device's kernel choice (fused/foreach).

        ``load_state_dict`` copies the saving machine's flags: a GPU checkpoint says ``fused=True``, which a
        CPU or older build may not support, and its ``step`` counters must sit where the kernels expect them.
        """
        flags = [{k: g.get(k) for k in ("fused", "foreach", "capturable")} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(saved)
        for group, own in zip(self.optimizer.param_groups, flags):
            group.update(own)
            on_device = bool(own["fused"] or own["capturable"])
            for param in group["params"]:
                step = self.optimizer.state.get(param, {}).get("step")
                if torch.is_tensor(step):
                    self.optimizer.state[param]["step"] = step.to(param.device if on_device else "cpu", torch.float32)

    # -- loop --------------------------------------------------------------------------------------
    def _autocast(self):
        if self.amp is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp)

    def _watch_loss(self, loss: torch.Tensor) -> None:
        """Remember the first step whose loss is NaN/inf, on the device (no GPU sync every step)."""
        ok = torch.isfinite(loss.detach()) | (self._bad_step >= 0)
        self._bad_step = torch.where(ok, self._bad_step, self.step)

    def _raise_if_diverged(self) -> None:
        """Stop on a non-finite loss of a completed step; checked before anything is saved."""
        bad = int(self._bad_step)
        if not 0 <= bad < self.step:
            return
        first_in_epoch = self.step - self.batch_in_epoch
        kept = (f"The last good checkpoint '{self.paths.last}' is kept unchanged." if self.paths.last.exists()
                else "No checkpoint had been saved yet.")
        raise TrainingDiverged(
            f"the training loss became NaN or infinite at epoch {self.epoch + 1}, step {bad + 1} (batch "
            f"{bad - first_in_epoch + 1} of {len(self.loader)} in the epoch); training stopped. {kept} Lower "
            f"train.lr (now {self.cfg.train.lr:g}) or check the data, and start a new run."
        )

    def train_epoch(self, progress) -> dict[str, float]:
        """One epoch from ``batch_in_epoch`` on; a Ctrl-C takes effect between steps (see :meth:`fit`)."""
        self.step_module.train()
        self.objective.start_epoch(self.epoch, self.cfg.train.epochs)
        phase = schedule_phase(self.cfg, self.epoch)
        if self.scheduler is not None and phase != self.scheduler_phase:
            self._start_schedule(phase)  # objective.encoder_frozen_schedule = "restart": a new phase starts
        if self.ema is not None:
            self.ema.module.start_epoch(self.epoch, self.cfg.train.epochs)  # validated like the live model
        sums: dict[str, torch.Tensor] = {k: torch.tensor(v, device=self.device) for k, v in self.partial.items()}
        self._sums = sums  # a Ctrl-C before the first step keeps the restored partial sums
        self.loader.set_epoch(self.epoch, self.batch_in_epoch)
        for batch in self.loader:
            self._in_step = True
            with self._autocast():
                loss, stats = self.step_module(batch)
            self._watch_loss(distributed.all_reduce_mean(loss.detach()))  # under DDP: NaN on any rank stops all
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()  # the scaler is a pass-through unless train.amp = "fp16"
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.scheduler is not None:
                self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.objective)
            for k, v in stats.items():
                sums[k] = sums.get(k, torch.zeros((), device=self.device)) + v.float()
            sums["_n"] = sums.get("_n", torch.zeros((), device=self.device)) + 1
            self.step += 1
            self.batch_in_epoch += 1
            self.partial, self._sums = {}, sums
            self._in_step = False
            progress.update(1)
            if self.step % self.cfg.train.log_every == 0:
                self._raise_if_diverged()
                value = loss.item()
                progress.set_postfix(loss=f"{value:.4f}")
                self.step_log.append({"step": self.step, "epoch": self.epoch + 1, "loss": value,
                                      "lr": self.optimizer.param_groups[0]["lr"]})
            if self.cfg.train.max_steps and self.step >= self.cfg.train.max_steps:
                break
            if self._save_due() and self.batch_in_epoch < len(self.loader):  # the epoch's end saves anyway
                self._save_mid_epoch()
            if self._stop_agreed():
                raise KeyboardInterrupt  # at a step boundary (the same one on every rank): everything is consistent
        self._raise_if_diverged()
        self._sums = {}
        n = float(sums.pop("_n", torch.tensor(1.0)))
        return {f"train_{k}": float(distributed.all_reduce_mean(v)) / n for k, v in sums.items()}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Statistics over the whole validation split, identical on every rank.

        Under torchrun every rank evaluates the full split with its own (identical, DDP-synchronised)
        weights and without gathering across ranks, so the numbers equal a one-process run's; rank 0's
        values are then broadcast so early stopping and ``best`` decisions cannot diverge.
        """
        model = self.evaluated
        model.eval()
        loader = BatchLoader(self.val_data, self.cfg.eval.batch_size, shuffle=False, drop_last=False,
                             channels_last=self.conv)
        totals: dict[str, torch.Tensor] = {}
        count = 0
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), distributed.local_only(model):
            torch.manual_seed(12345)  # fixed views for contrastive validation
            for x, y in loader:
                with self._autocast():
                    _, stats = model((x, y))
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + v.float() * x.shape[0]
                count += x.shape[0]
        stats = {f"val_{k}": float(v) / count for k, v in totals.items()}
        return distributed.broadcast_stats(stats, self.device)

    def _stop_reason(self) -> str | None:
        t = self.cfg.train
        if t.max_steps and self.step >= t.max_steps:
            return f"reached train.max_steps = {t.max_steps}"
        if self.early.should_stop:
            return (f"early stopping: val_{self.monitor} did not improve for {t.patience} epochs "
                    f"(best {self.early.best:.5g} at epoch {self.early.best_epoch + 1})")
        if self.epoch >= t.epochs:
            return f"completed {t.epochs} epochs"
        return None

    def fit(self) -> str:
        """Train until the epoch budget, max_steps or early stopping; return why it stopped."""
        from tqdm import tqdm

        quiet = not sys.stderr.isatty() or not self.dist.is_main
        with self._stop_at_step_boundary():
            reason = self._stop_reason()
            while reason is None:
                start = self._epoch_start = time.perf_counter()
                desc = f"epoch {self.epoch + 1}/{self.cfg.train.epochs}"
                with tqdm(total=len(self.loader), initial=self.batch_in_epoch, desc=desc, disable=quiet,
                          leave=False, dynamic_ncols=True) as progress:
                    try:
                        train_stats = self.train_epoch(progress)
                    except KeyboardInterrupt:
                        self._book_epoch_seconds(start)
                        raise self._save_interrupted() from None
                val_stats = self.validate()
                seconds = self._book_epoch_seconds(start)
                self._epoch_carried = 0.0
                self._end_epoch(train_stats, val_stats, seconds)
                reason = self._stop_reason()
                if reason is None and self._stop_agreed(now=True):  # a stop during validation: 'last' is saved
                    raise self._interrupted(f"after epoch {self.epoch}; saved '{self.paths.last}'. "
                                            f"Continue with: latentbench train --resume {self.paths.root}")
        return reason

    def _book_epoch_seconds(self, start: float) -> float:
        """Move the seconds since ``start`` into ``elapsed`` and into the epoch's own count; return the epoch's
        seconds so far, including those it ran before an interruption (a resumed epoch's row is then its whole
        time, not the part after the resume, and the time-left estimate stays right)."""
        seconds = time.perf_counter() - start
        self.elapsed += seconds
        self._epoch_carried += seconds
        self._epoch_start = None
        return self._epoch_carried

    def _save_interrupted(self) -> TrainingInterrupted:
        """Ctrl-C inside an epoch: save ``last`` mid-epoch when it came between two steps.

        Inside a step (a KeyboardInterrupt that bypassed the handler of :meth:`_stop_at_step_boundary`)
        the forward pass has already moved BatchNorm statistics and drawn random numbers, and the optimizer
        may have updated part of the weights: nothing is saved then, and ``last`` stays as it was.
        """
        where = f"epoch {self.epoch + 1}, step {self.step}"
        resume = f"Continue with: latentbench train --resume {self.paths.root}"
        if self._in_step:
            if not self.paths.last.exists():
                return self._interrupted(f"inside a training step at {where}; nothing had been saved yet, so "
                                         "start the run again")
            return self._interrupted(f"inside a training step at {where}; kept the previous checkpoint "
                                     f"'{self.paths.last}'. {resume}")
        self._raise_if_diverged()
        self.partial = {k: float(v) for k, v in self._sums.items()}
        self.save_last()
        return self._interrupted(f"at {where}; saved '{self.paths.last}'. {resume}")

    def _interrupted(self, details: str) -> TrainingInterrupted:
        """``'interrupted <details>'`` after Ctrl-C, ``'stopped by SIGTERM <details>'`` after SIGTERM."""
        if self._stop_signal == signal.SIGTERM:
            return TrainingInterrupted(f"stopped by SIGTERM {details}", exit_code=128 + signal.SIGTERM)
        return TrainingInterrupted(f"interrupted {details}")

    @contextmanager
    def _stop_at_step_boundary(self):
        """The first Ctrl-C (SIGINT) or SIGTERM finishes the step in flight, saves ``last`` and stops. SIGTERM is
        what a cluster scheduler (SLURM, Kubernetes) or ``kill`` sends before it kills a job: the run then loses
        at most one step, not the epoch since its last checkpoint.

        Installed in the main thread, for SIGINT where it has a Python handler (not ignored) and for SIGTERM
        where it has the default one or the CLI's (a handler someone else installed stays). In one process a second signal
        stops at once (a KeyboardInterrupt inside a step keeps the previous ``last``, see
        :meth:`_save_interrupted`). Under torchrun the ranks agree on the step to stop at
        (:meth:`_stop_agreed`), and a second signal changes nothing: torchrun's agent forwards SIGTERM after
        a Ctrl-C, and a rank that left early would leave the others waiting in a collective.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum, frame):
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            if self._interrupt_requested:
                if self.dist.enabled:
                    return
                raise KeyboardInterrupt
            self._interrupt_requested, self._stop_signal = True, signum
            if self.dist.enabled:
                print(f"\nlatentbench: {name} (rank {self.dist.rank}): all ranks stop at the next agreed step "
                      "and save 'last'", file=sys.stderr, flush=True)
                return
            again = "press Ctrl-C again to stop at once" if signum == signal.SIGINT else f"a second {name} stops it"
            print(f"\nlatentbench: {name}: finishing this step and saving 'last' ({again})", file=sys.stderr,
                  flush=True)

        ours = signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, sigterm_as_interrupt)
        wanted = [signal.SIGTERM] if ours else []
        if callable(signal.getsignal(signal.SIGINT)):
            wanted.append(signal.SIGINT)
        previous = {signum: signal.signal(signum, on_signal) for signum in wanted}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _stop_agreed(self, now: bool = False) -> bool:
        """Whether to stop at this step boundary. In one process: whether a stop signal came. Under torchrun
        every rank must stop at the same step, so every ``STOP_CHECK_STEPS`` steps (and at ``now``) the ranks
        all-reduce their flags: a signal that reached any rank stops them all there. All ranks call this at
        the same steps; a check is one all-reduce of two numbers (and one host sync on a GPU)."""
        if not self.dist.enabled:
            return self._interrupt_requested
        if not now and self.step % STOP_CHECK_STEPS:
            return False
        flags = torch.tensor([float(self._interrupt_requested), float(self._stop_signal == signal.SIGTERM)],
                             device=self.device)
        flags = distributed.all_reduce_max(flags)
        if flags[0] > 0:
            self._interrupt_requested = True
            self._stop_signal = signal.SIGTERM if flags[1] > 0 else signal.SIGINT
        return bool(flags[0] > 0)

    def _monitored(self, val_stats: dict[str, float]) -> float:
        """The value the best checkpoint is selected on; with ``train.monitor = 'last'`` the epoch number, so
        every epoch is the best so far and ``best.pt`` is the final epoch."""
        if self.monitor == "last":
            return float(self.epoch + 1)
        key = f"val_{self.monitor}"
        if key not in val_stats:
            raise ValueError(f"train.monitor = '{self.monitor}' is not a validation statistic of this objective; "
                             f"choose one of: last, {', '.join(k[4:] for k in val_stats)}")
        return val_stats[key]

    def _end_epoch(self, train_stats: dict[str, float], val_stats: dict[str, float], seconds: float) -> None:
        improved = self.early.update(self._monitored(val_stats), self.epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        row = {"epoch": self.epoch + 1, "step": self.step, "seconds": round(seconds, 3), "lr": lr,
               **train_stats, **val_stats}
        self.history.append(row)
        self.epoch += 1
        self.batch_in_epoch = 0
        if improved:
            self.save_best()
        self.save_last()
        if self.dist.is_main:
            write_history(self.paths.history, self.history)
            write_history(self.paths.steps, self.step_log)
            atomic_write_json(self.paths.info, _run_info(self, "running"))  # progress for `latentbench status`
            shown = " ".join(f"{k}={v:.4f}" for k, v in row.items() if k.startswith(("train_loss", "val_")))
            left = time_left(self.history, self.epochs_left())
            print(f"[{self.cfg.run_name()}] epoch {row['epoch']}: {shown} ({seconds:.1f}s{left})"
                  + (" *" if improved else ""), flush=True)

    def epochs_left(self) -> int:
        """Epochs still to run on the budget (``train.epochs``, or fewer under ``train.max_steps``); early
        stopping may end the run sooner."""
        t = self.cfg.train
        left = max(0, t.epochs - self.epoch)
        if t.max_steps:
            left = min(left, math.ceil(max(0, t.max_steps - self.step) / len(self.loader)))
        return left


# ----------------------------------------------------------------------------------------- run info
def _run_info(trainer: Trainer, status: str, reason: str = "") -> dict[str, Any]:
    cpu = cpu_name()
    return {
        "status": status,
        "stop_reason": reason,
        "latentbench": latentbench.__version__,
        "git_revision": git_revision(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision_version(),
        "platform": platform.platform(),
        "device": str(trainer.device),
        "device_name": torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else cpu,
        "cpu": cpu,
        "precision": str(trainer.amp).replace("torch.", "") if trainer.amp else "float32",
        "matmul_precision": torch.get_float32_matmul_precision(),
        "threads": trainer.threads,
        "host_heap_kept": hostmem.kept(),  # glibc keeps freed memory for reuse (hostmem.py)
        "world_size": trainer.dist.world_size,
        "backend": distributed.backend_for(trainer.device) if trainer.dist.enabled else "none",
        "sync_batchnorm": trainer.sync_bn,
        "batch_size": trainer.cfg.train.batch_size,
        "batch_per_process": trainer.cfg.train.batch_size // trainer.dist.world_size,
        "seed": trainer.cfg.train.seed,
        "deterministic": trainer.cfg.train.deterministic,
        "compile": trainer.cfg.train.compile,
        "epochs_done": trainer.epoch,
        "batch_in_epoch": trainer.batch_in_epoch,  # > 0: ``last`` was saved mid-epoch, this far into the next
        "batches_per_epoch": len(trainer.loader),
        "steps": trainer.step,
        "best_epoch": trainer.early.best_epoch + 1,
        f"best_val_{trainer.monitor}": trainer.early.best,
        "train_seconds": round(trainer.elapsed + trainer._unbooked_seconds(), 2),  # with the epoch in flight
        "started": trainer.started,
        "updated": time.time(),
        "dataset": {"name": trainer.spec.name, "shape": list(trainer.spec.shape),
                    "classes": list(trainer.spec.class_names), "train": len(trainer.splits.train),
                    "val": len(trainer.splits.val), "test": len(trainer.splits.test),
                    "mean": list(trainer.spec.mean), "std": list(trainer.spec.std)},
    }


def train(cfg: RunConfig, run_dir: Path | None = None, resume: bool = False, splits: Splits | None = None) -> Path:
    """Train ``cfg`` into ``run_dir`` (default ``out_dir/run_name``); with ``resume``, continue from ``last``."""
    paths = RunPaths(run_dir or run_dir_for(cfg))
    info = distributed.env_info()
    if resume and not paths.last.exists():
        raise RunFileError(f"nothing to resume: '{paths.last}' does not exist (the run never finished an epoch "
                           "or a Ctrl-C save); start it again without --resume")
    if info.is_main:
        check_writable(paths.root)
    with run_directory_lock(paths.root) if info.is_main else nullcontext():  # one writer per run directory
        return _train_in(paths, cfg, resume, splits)


def _train_in(paths: RunPaths, cfg: RunConfig, resume: bool, splits: Splits | None) -> Path:
    """:func:`train`'s work once the run directory is this process's."""
    if distributed.env_info().is_main:
        if not resume and paths.last.exists():
            raise RunFileError(
                f"run directory '{paths.root}' already holds a trained run; resume it with "
                f"'latentbench train --resume {paths.root}', or choose another name (--set name=...) or --out"
            )
        for leftover in (paths.last, paths.best, paths.history, paths.config, paths.info):
            remove_stale_temp(leftover)  # half-written temp files of a killed run
    trainer = Trainer(cfg, paths, splits)
    if resume:
        trainer.restore(paths.last)
        trainer.started = _started(paths, trainer.started)
    if trainer.dist.is_main:
        check_free_space(paths.root, checkpoint_bytes(trainer), "its checkpoints")
        save_config(cfg, paths.config)
        atomic_write_json(paths.info, _run_info(trainer, "running"))
        write_history(paths.history, trainer.history)  # a kill between last.pt and history.csv left it behind
    try:
        reason = trainer.fit()
    except TrainingInterrupted as err:
        _finish(trainer, "interrupted", str(err))
        raise
    except TrainingDiverged as err:
        _finish(trainer, "diverged", str(err))
        raise
    finally:
        hostmem.release_free_memory()  # the steps' memory, kept in the heap while they ran
    distributed.barrier()  # under torchrun: every rank has finished its last collective
    _finish(trainer, "finished", reason)
    return paths.root


def _started(paths: RunPaths, default: float) -> float:
    """When the run first started (from run_info.json); metadata never blocks a resume."""
    try:
        return float(read_json(paths.info).get("started") or default)
    except (RunFileError, AttributeError, TypeError, ValueError):
        return default


def checkpoint_bytes(trainer: Trainer) -> int:
    """Disk the checkpoints need at worst: ``last`` (weights + two Adam moments, and the moving average if
    kept) and ``best``, plus a temp copy of ``last`` while it is rewritten, plus 1 MiB of config and history."""
    weights = sum(p.numel() * p.element_size() for p in trainer.objective.parameters())
    buffers = sum(b.numel() * b.element_size() for b in trainer.objective.buffers())
    average = weights + buffers if trainer.ema is not None else 0
    return 2 * (3 * weights + buffers + average) + (weights + buffers) + 2**20


def _finish(trainer: Trainer, status: str, reason: str) -> None:
    if trainer.dist.is_main:
        atomic_write_json(trainer.paths.info, _run_info(trainer, status, reason))
        if status == "finished":
            print(f"[{trainer.cfg.run_name()}] {reason}; {trainer.elapsed:.1f}s of training. "
                  f"Run directory: {trainer.paths.root}", flush=True)


def resume_config(run_dir: Path, overrides: list[str] | None = None) -> RunConfig:
    """The saved config of ``run_dir`` with optional overrides (e.g. more epochs)."""
    from latentbench.config import apply_overrides, from_dict

    paths = RunPaths(run_dir)
    if not paths.config.exists() and not paths.last.exists():
        raise RunFileError(f"'{run_dir}' is not a run directory (no config.json)")
    try:
        cfg = load_saved_config(paths.config)
    except RunFileError as err:  # missing or damaged config.json: the checkpoint holds a copy
        if not paths.last.exists():
            raise
        state = safe_torch_load(paths.last)
        if not isinstance(state, dict) or "config" not in state:
            raise
        cfg = from_dict(state["config"])
        print(f"latentbench: warning: {err}; using the copy of the config saved in '{paths.last}' "
              "(config.json is rewritten)", file=sys.stderr, flush=True)
    return from_dict(apply_overrides(cfg.to_dict(), list(overrides or []))) if overrides else cfg
