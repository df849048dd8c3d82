"""The machine a run uses, and what is recorded about it.

Device choice (``train.device``), thread counts for training and for evaluation beside other work, seeds
and the RNG states a checkpoint carries, the mixed-precision dtype and CUDA flags, and the host facts that
``run_info.json`` records (CPU model, git revision, library versions). Shared by training, evaluation and
the benchmarks; nothing here knows about models or objectives.
"""

from __future__ import annotations

import functools
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import latentbench
from latentbench.config import ConfigError


# ----------------------------------------------------------------------------------------- devices, threads
def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU (MPS only when asked for)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device = '{name}' but no CUDA device is available; use 'auto' or 'cpu'")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("train.device = 'mps' but MPS is not available on this machine; use 'auto' or 'cpu'")
    return device


def usable_cpus() -> set[int]:
    """The CPU numbers this process may run on (all of them where the OS has no affinity call)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:
        return set(range(os.cpu_count() or 1))


def usable_cores() -> int:
    """How many CPUs this process may use (its affinity mask, which a cluster job or ``taskset`` narrows)."""
    return len(usable_cpus())


def configure_threads(threads: int, world_size: int = 1) -> int:
    """Set torch's intra-op threads: ``threads``, or for 0 this machine's usable cores shared evenly by the
    ``world_size`` processes that torchrun starts on it (at least one each); returns the number set."""
    n = threads or max(1, usable_cores() // world_size)
    torch.set_num_threads(n)
    return n


# ------------------------------------------------------------------------------------ seeds, RNG state
def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch (CPU and every GPU), and set *or clear* torch's deterministic flags.

    Clearing matters when several runs share one process (a study, the tests): a deterministic run must
    not leave the flags on for the next one.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    if torch.are_deterministic_algorithms_enabled() != deterministic:  # the call costs ~3 s (imports inductor)
        torch.use_deterministic_algorithms(deterministic, warn_only=False)
    torch.backends.cudnn.deterministic = deterministic


def rng_state() -> dict[str, Any]:
    """Every generator's state (Python, NumPy, torch CPU and each GPU) as checkpointable tensors and lists."""
    np_name, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_gauss, np_cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` returned (GPU states only where a GPU is present)."""
    random.setstate(_as_tuples(state["python"]))
    name, keys, pos, gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(obj: Any) -> Any:
    return tuple(_as_tuples(o) for o in obj) if isinstance(obj, (list, tuple)) else obj


# --------------------------------------------------------------------------------- precision, CUDA
def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``train.amp``; None = float32.

    Never on CPU, whatever the setting: CPU autocast speeds up little on most CPUs and changes the
    numerics. On CUDA, ``auto`` is bfloat16 where the GPU computes it natively (compute capability 8.0+,
    checked with ``including_emulation=False``; older GPUs would emulate it) and float32 elsewhere;
    ``fp16`` is float16 with a gradient scaler. Call it after ``torch.cuda.set_device``.
    """
    if device.type != "cuda" or setting == "off":
        return None
    if setting == "fp16":
        return torch.float16
    native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    if setting == "bf16" and not native_bf16:
        raise ConfigError(f"train.amp = 'bf16' but {torch.cuda.get_device_name(device)} has no native bfloat16 "
                          "(needs compute capability 8.0 or newer); use train.amp = 'fp16' or 'off'")
    return torch.bfloat16 if native_bf16 else None


def configure_cuda(deterministic: bool) -> None:
    """Fast CUDA defaults: cuDNN autotuning (fixed shapes) and TF32 matmuls, unless deterministic."""
    torch.backends.cudnn.benchmark = not deterministic
    torch.set_float32_matmul_precision("highest" if deterministic else "high")


# ------------------------------------------------------------------------------------- host facts
def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name with its family and model numbers where Linux gives them, e.g. 'AMD EPYC (family 25,
    model 17)', so that training times from hosts sold under one name can be told apart (two such hosts of
    this project trained 2x apart); elsewhere what :mod:`platform` knows."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        text = ""
    fields: dict[str, str] = {}
    for line in text.splitlines():  # one block per logical CPU: the first value of each key is enough
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name")
    if not name:
        return platform.processor() or platform.machine()
    numbers = [f"{label} {fields[key]}" for key, label in (("cpu family", "family"), ("model", "model"))
               if fields.get(key)]
    return f"{name} ({', '.join(numbers)})" if numbers else name


def missing_compiler(device: torch.device) -> str:
    """Why ``torch.compile`` cannot run here ('' when it can): on the CPU, inductor compiles C++ with ``$CXX``
    (default ``g++``; ``clang++`` on macOS), and a machine without it fails at the first step."""
    if device.type != "cpu" or sys.platform == "win32":  # Windows: inductor's own checks of MSVC apply
        return ""
    compiler = os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")
    if shutil.which(compiler.split()[0] if compiler.strip() else compiler) is None:  # e.g. CXX="ccache g++"
        return (f"the C++ compiler it needs on the CPU ('{compiler}', from $CXX or the default) is not installed "
                "(install g++ or clang++, or set CXX)")
    return ""


@functools.lru_cache(maxsize=1)
def git_revision() -> str:
    """The checkout's short commit hash for ``run_info.json``; ``'unknown'`` outside a git checkout."""
    try:
        root = Path(latentbench.__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def torchvision_version() -> str:
    """torchvision's version for ``run_info.json``; ``'not installed'`` where it is missing."""
    try:
        import torchvision

        return torchvision.__version__
    except ImportError:
        return "not installed"


# --------------------------------------------------------------------------- evaluation beside other work
def _cpu_times(cpus: set[int]) -> tuple[float, float]:
    """(total, idle) jiffies summed over ``cpus`` from /proc/stat (idle includes iowait)."""
    total = idle = 0.0
    with open("/proc/stat") as stat:
        for line in stat:
            name, *fields = line.split()
            if not name.startswith("cpu"):
                break  # the per-CPU lines come first
            if name[3:].isdigit() and int(name[3:]) in cpus:
                values = [float(v) for v in fields[:8]]  # user..steal; guest time is already in user
                total += sum(values)
                idle += values[3] + values[4]
    return total, idle


def cpus_busy_elsewhere(window: float = 0.25) -> float | None:
    """How many of this process's usable CPUs other processes keep busy, measured from /proc/stat over
    ``window`` seconds minus this process's own CPU time meanwhile; None where /proc/stat is unreadable.

    Unlike the load average, it does not count this process's own recent work: in a study, the training
    that just finished kept the 1-minute load average near 2 and every evaluation ran on one thread.
    """
    cpus = usable_cpus()
    try:
        total0, idle0 = _cpu_times(cpus)
        own0 = sum(os.times()[:2])
        time.sleep(window)
        total1, idle1 = _cpu_times(cpus)
        own1 = sum(os.times()[:2])
    except (OSError, ValueError):
        return None
    if total1 <= total0:
        return None
    busy = len(cpus) * (1.0 - (idle1 - idle0) / (total1 - total0))
    return max(0.0, busy - (own1 - own0) / window)


def eval_threads(requested: int) -> int:
    """``train.threads`` when set; for 0 (auto) the cores that other processes leave free (at least one).

    OpenMP threads spin while another process holds their core, so on a busy machine fewer threads are
    faster. Measured on the 2-core dev machine at load average ~3: the MNIST eval took 175 s on two threads
    and 78 s on one, with a third of the CPU time. Other processes' use is measured over a quarter second
    (:func:`cpus_busy_elsewhere`), else read from the load average.
    """
    if requested:
        return requested
    cores = usable_cores()
    busy = cpus_busy_elsewhere()
    if busy is None:
        try:
            busy = os.getloadavg()[0]  # runnable processes, averaged over the last minute
        except OSError:
            return cores
    return max(1, min(cores, round(cores - busy)))
