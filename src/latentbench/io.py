"""File I/O that never loses finished work: atomic writes (temp file + fsync + rename) and safe loading.

Every checkpoint, cache, metrics and config file of a run directory goes through these functions, so a
kill at any moment leaves the previous version of the file intact and loadable; :func:`run_directory_lock`
keeps a second trainer out of a run directory that one is writing.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch


class RunFileError(RuntimeError):
    """A run-directory file is missing, unreadable or corrupt; the message names the file."""


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_read_umask()  # what open() would give; mkstemp alone makes files private (0600)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _write_failed(path: Path, err: OSError) -> RunFileError:
    reason = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        reason = "the disk is full"
    return RunFileError(
        f"could not write '{path}': {reason}. The previous version of the file, if any, is untouched. "
        "Free some space (or choose another --out) and resume the run (latentbench train --resume RUN_DIR)."
    )


def _atomic_write(path: Path, write) -> None:
    """Write to a temp file in the same folder, flush + fsync it, then rename it over ``path``.

    Any failure (disk full, Ctrl-C, kill) leaves ``path`` as it was; OSErrors become a RunFileError that
    names the file.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), _FILE_MODE)
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _write_failed(path, err) from err
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def atomic_torch_save(path: Path, obj: Any) -> None:
    _atomic_write(path, lambda handle: torch.save(obj, handle))


def safe_torch_load(path: Path) -> Any:
    """Load a tensor file with ``weights_only=True`` onto the CPU; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise RunFileError(f"'{path}' does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a corrupt file
        found = [line.strip() for line in str(err).splitlines() if "unsupported global" in line.lower()][:1]
        if found:  # a well-formed pickle that names a class or function: refuse, never unpickle it
            raise RunFileError(
                f"'{path}' holds Python objects besides tensors and plain data ({found[0]}); "
                "latentbench loads files with torch.load(weights_only=True) and never unpickles arbitrary "
                "objects. It was not written by latentbench; do not load it unless you trust its source."
            ) from None
        raise RunFileError(
            f"'{path}' is corrupt or truncated and cannot be loaded ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}). Delete it, or resume from another "
            "checkpoint of the run."
        ) from None


def read_json(path: Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunFileError(f"'{path}' does not exist") from None
    except json.JSONDecodeError as err:
        raise RunFileError(f"'{path}' is not valid JSON ({err}); delete it and re-run the stage") from None


def remove_stale_temp(path: Path) -> None:
    """Delete temp files that a killed process left while writing ``path`` atomically."""
    path = Path(path)
    if path.parent.is_dir():
        for leftover in path.parent.glob(f"{_temp_prefix(path)}*.tmp"):
            leftover.unlink(missing_ok=True)


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Fail before any work when the disk holding ``folder`` has less than ``needed`` bytes free."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise RunFileError(
            f"only {free / 2**20:.1f} MiB are free on the disk holding '{folder}', but {what} need about "
            f"{needed / 2**20:.1f} MiB; free some space or choose another --out"
        )


def check_writable(folder: Path) -> None:
    """Fail before any work when ``folder`` cannot be created or written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise RunFileError(
            f"cannot write to output folder '{folder}' ({err.strerror}); choose another with --out "
            "or fix its permissions"
        ) from None


LOCK_NAME = ".lock"
try:
    import fcntl  # POSIX
except ImportError:  # Windows: no run-directory lock, so no telling a live run from a killed one
    fcntl = None
LOCKS_WORK = fcntl is not None
LOCK_WAIT_SECONDS = 1.0  # a `latentbench status` probe holds the lock for microseconds; a trainer, for hours


def _flock_within(handle, operation: int, seconds: float) -> bool:
    """Take ``flock(operation)`` on ``handle``, trying for up to ``seconds``; False if it stays held."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(handle, operation | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def lock_holder(folder: Path) -> str | None:
    """Who trains into ``folder`` now (what the holder wrote in its lock file, e.g. 'process 4242 on host1
    (since ...)'), or None when no process holds the lock. A non-blocking shared ``flock`` released at once,
    so it never waits and never creates the file; where ``fcntl`` is missing (Windows), None."""
    if not LOCKS_WORK:
        return None
    try:
        handle = open(Path(folder) / LOCK_NAME)
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "another process"
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None


@contextmanager
def run_directory_lock(folder: Path, in_use: str | None = None) -> Iterator[None]:
    """Hold ``folder/.lock`` while the block runs, so that a second process cannot train into the same run
    directory (two writers would interleave its checkpoints and history). An advisory ``fcntl.flock``: the OS
    drops it when the process ends, however it ends, so a killed run leaves no stale lock. The file names its
    holder for the error message and is removed on release; where ``fcntl`` is missing (Windows), no lock.
    ``in_use`` replaces the error's advice when the folder is busy (``{holder}`` stands for the holder)."""
    if not LOCKS_WORK:
        yield
        return
    path = Path(folder) / LOCK_NAME
    while True:
        handle = open(path, "a+")
        if not _flock_within(handle, fcntl.LOCK_EX, LOCK_WAIT_SECONDS):
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            if in_use:
                raise RunFileError(in_use.format(holder=holder))
            raise RunFileError(f"run directory '{folder}' is in use by {holder}; wait for that run to end, or stop "
                               f"it (Ctrl-C saves 'last') and continue with 'latentbench train --resume {folder}'")
        try:  # the holder before us may have removed the file between our open and our lock: lock the new one
            same = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})")
        handle.flush()
        yield
    finally:
        path.unlink(missing_ok=True)  # before the unlock: a waiting process then finds the file gone and retries
        handle.close()
