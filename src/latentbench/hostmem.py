"""Host memory: keep the memory a CPU training step frees for the next step, instead of handing it back to
the operating system and faulting it in again.

PyTorch allocates CPU tensors with the C library's ``malloc``. glibc serves requests of 32 MB and more
(and, once its heap top passes the trim threshold, smaller ones too) with fresh ``mmap`` pages that it
returns on ``free``, so every step of a conv model pays page faults to get the same memory back: a
CIFAR-10 contrastive + denoising step (batch 128, two views) took ~25,000 minor page faults, and the first
convolution over the 256 views (a 33.5 MB output) 13.9 ms instead of 1.3 ms for half the batch. With
:func:`keep_freed_memory` glibc serves every request from its heap and never trims it: no page faults after
the first steps. On the 2-core AMD EPYC host (Zen 4), a CIFAR-10 contrastive step took 339-342 ms instead of
375-378 ms and an autoencoder step 166-168 instead of 172-178 ms (median of 4 blocks, ``docs/speed.md``),
for 100-400 MB more resident memory while training; MNIST's MLPs allocate small blocks the heap already
reuses: no change. :func:`release_free_memory` gives the free memory back when a training or an evaluation
ends.

This is what PyTorch's CUDA caching allocator does on the GPU, and what swapping in jemalloc or tcmalloc
(``LD_PRELOAD``) does for CPU training; here it needs no extra library. Linux with glibc only; elsewhere,
or with ``LATENTBENCH_KEEP_HEAP=0`` in the environment, nothing changes. The setting is process-wide.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform

ENV_SWITCH = "LATENTBENCH_KEEP_HEAP"

# mallopt(3) parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4

# glibc's defaults in steady state: the mmap threshold rises dynamically to at most 32 MB on 64-bit (and the
# trim threshold follows at twice it); at most 65,536 mmap'd chunks.
DEFAULT_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
DEFAULT_MMAP_MAX = 65536
NEVER_TRIM = 2**31 - 1  # bytes, the largest value mallopt takes: trim only past 2 GiB of free heap top

_state = {"kept": False}


@functools.cache  # platform.libc_ver() reads the interpreter's binary: once is enough
def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


def switched_off() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "off", "no")


def available() -> bool:
    """True on Linux with glibc, unless the environment switches it off."""
    return not switched_off() and _libc() is not None


def _mallopt(libc: ctypes.CDLL, settings: list[tuple[int, int]]) -> bool:
    ok = True
    for param, value in settings:
        ok = bool(libc.mallopt(param, value)) and ok
    return ok


def keep_freed_memory() -> bool:
    """Serve every allocation from the heap and never trim it; True when the setting is (already) on."""
    if _state["kept"]:
        return True
    libc = _libc() if not switched_off() else None
    if libc is None:
        return False
    _state["kept"] = _mallopt(libc, [(M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM)])
    return _state["kept"]


def release_free_memory() -> bool:
    """Hand the heap's free memory back to the system now (``malloc_trim``), keeping the settings: called when
    a training or an evaluation ends, so that a notebook or a study does not hold one stage's peak memory
    through the next. False where there is no glibc."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def restore_defaults() -> bool:
    """Back to glibc's steady-state defaults (mmap above 32 MB, trim above 64 MB of free heap top) and the
    kept free memory handed back to the system (``malloc_trim``), e.g. for a comparison run in the same
    process that should allocate as a plain script does."""
    libc = _libc()
    if libc is None:
        return False
    _state["kept"] = False
    ok = _mallopt(libc, [(M_MMAP_MAX, DEFAULT_MMAP_MAX), (M_MMAP_THRESHOLD, DEFAULT_MMAP_THRESHOLD_MAX),
                         (M_TRIM_THRESHOLD, 2 * DEFAULT_MMAP_THRESHOLD_MAX)])
    return release_free_memory() and ok


def kept() -> bool:
    """Whether :func:`keep_freed_memory` is in effect in this process."""
    return _state["kept"]
