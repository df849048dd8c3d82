"""What the runs under a folder are doing, read from their own files: ``latentbench status``.

    latentbench status                 (the run directories under runs/)
    latentbench status runs/study_paper /scratch/long_runs

One row per run directory: its state, epochs done of its budget, the latest validation value of the
statistic the run selects on, the best one and its epoch, the training time so far, and what to do next;
for a run training now, which process holds it and about how long it has left at its recent pace. Below the
table, one line per study folder (``study.json``, written by ``latentbench reproduce``): how many of its
runs are evaluated, whether the study is running now, and otherwise the command that continues it.

The states are those :func:`latentbench.study.run_state` reads from the files (``new``, ``interrupted``,
``trained``, ``evaluated``, ``diverged``), refined by the run directory's lock (:mod:`latentbench.io`):
``training`` while a process holds it, and ``killed`` for a run whose ``run_info.json`` still says it is
running while no process holds its lock: it ended without a word (SIGKILL, a lost machine, a job or session
limit), and ``latentbench train --resume`` continues it from its last save (an epoch's end, or mid-epoch
every ``train.save_every_minutes``), which the line names.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from latentbench.io import LOCKS_WORK, RunFileError, lock_holder, read_json
from latentbench.study import STUDY_FILE, format_duration, run_state
from latentbench.rundir import format_time_left, read_history, seconds_left

COLUMNS = ("run", "state", "epoch", "val", "best", "trained", "next")
SEARCH_DEPTH = 4  # run directories as deep as runs/<study>/runs/<run>


def find_runs(folder: Path, depth: int = SEARCH_DEPTH) -> list[Path]:
    """Run directories (holding config.json) in ``folder`` or up to ``depth`` levels below it; the search
    does not descend into a run directory or a hidden folder."""
    found = []
    base = len(Path(folder).parts)
    for root, subdirs, files in os.walk(folder):
        if "config.json" in files:
            found.append(Path(root))
            subdirs.clear()
        elif len(Path(root).parts) - base >= depth:
            subdirs.clear()
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
    return found


@dataclass
class RunStatus:
    """One run directory's row; :meth:`cells` is how the table shows it."""

    path: Path
    state: str
    epochs_done: int
    epochs: int
    statistic: str  # what the run selects its best checkpoint on, e.g. 'acc' (val_acc); '' when unknown
    latest: float | None  # the statistic at the latest epoch
    best: float | None
    best_epoch: int | None
    train_seconds: float
    seconds_left: float | None  # for a run training now, at its recent pace
    next: str

    def cells(self) -> tuple[str, ...]:
        val = f"{self.statistic} {self.latest:.4f}" if self.latest is not None else "-"
        best = f"{self.best:.4f} @ {self.best_epoch}" if self.best is not None else "-"
        trained = format_duration(self.train_seconds) if self.train_seconds else "-"
        return str(self.path), self.state, f"{self.epochs_done}/{self.epochs}", val, best, trained, self.next


def _json_or_empty(path: Path) -> dict[str, Any]:
    try:
        value = read_json(path) if path.is_file() else {}
    except RunFileError:
        return {}
    return value if isinstance(value, dict) else {}


def _history(path: Path) -> list[dict[str, float]]:
    """history.csv's rows; [] when it is missing or unreadable (a status listing never fails on one run)."""
    try:
        return read_history(path)
    except (OSError, csv.Error, UnicodeDecodeError, ValueError, TypeError):
        return []


def _selected(info: dict[str, Any]) -> tuple[str, float | None]:
    """The statistic the run selects its best checkpoint on and its best value, from ``best_val_<stat>``."""
    for key, value in info.items():
        if key.startswith("best_val_"):
            finite = isinstance(value, (int, float)) and math.isfinite(value)  # +-inf before the first epoch
            return key[len("best_val_"):], value if finite else None
    return "", None


def _int(value: Any) -> int:
    """A count from a run file; 0 for anything that is not a number."""
    return int(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0


def last_save(info: dict[str, Any]) -> str:
    """Where ``last`` stands, from ``run_info.json``: ``'saved at the end of epoch 54'`` or, after a save
    mid-epoch, ``'saved in epoch 55, after batch 120 of 351'``."""
    epochs, batch, batches = (_int(info.get(k)) for k in ("epochs_done", "batch_in_epoch", "batches_per_epoch"))
    if batch and batches:
        return f"saved in epoch {epochs + 1}, after batch {batch} of {batches}"
    return f"saved at the end of epoch {epochs}" if epochs else "saved"


def next_step(state: str, run_dir: Path, info: dict[str, Any], holder: str | None, left: float | None) -> str:
    """What the run is doing or what to run next, as one line."""
    resume = f"continue with: latentbench train --resume {run_dir}"
    if state == "training":
        return f"{holder}" + (f"; {format_time_left(left)} at the recent pace" if left else "")
    if state == "training or killed":
        return f"no lock on this system to tell which; if it was killed, {resume}"
    if state == "killed":
        updated = info.get("updated")
        ago = format_duration(max(0.0, time.time() - updated)) if isinstance(updated, (int, float)) else ""
        when = f" (last heard from {ago} ago)" if ago else ""
        if not (run_dir / "checkpoints" / "last.pt").is_file():
            return f"ended without a word{when} before its first save; train it again"
        return f"ended without a word{when}; {last_save(info)}; {resume}"
    if state == "interrupted":
        by = "SIGTERM" if "SIGTERM" in str(info.get("stop_reason", "")) else "Ctrl-C"
        return f"stopped by {by}; {resume}"
    if state == "trained":
        partly = "partly evaluated (no figures yet); complete" if (run_dir / "metrics.json").is_file() else "evaluate"
        return f"{info.get('stop_reason') or 'finished'}; {partly} with: latentbench eval {run_dir}"
    if state == "evaluated":
        study = run_dir.parent.parent  # a study's runs live in STUDY/runs/: its report covers the whole study
        folder = study if run_dir.parent.name == "runs" and (study / STUDY_FILE).is_file() else run_dir.parent
        return f"evaluated; compare with: latentbench report {folder}"
    if state == "diverged":
        return str(info.get("stop_reason") or "diverged")
    return "no epoch finished yet"


def run_status(run_dir: Path) -> RunStatus:
    """The row of one run directory, from its files and its lock; never raises on damaged files."""
    run_dir = Path(run_dir)
    info = _json_or_empty(run_dir / "run_info.json")
    config = _json_or_empty(run_dir / "config.json")
    history = _history(run_dir / "history.csv")
    train_section = config.get("train")
    epochs = _int(train_section.get("epochs") if isinstance(train_section, dict) else None)
    epochs_done = _int(history[-1].get("epoch", len(history)) if history else info.get("epochs_done"))
    holder = lock_holder(run_dir)
    state = run_state(run_dir)
    if holder:
        state = "training"
    elif info.get("status") == "running" and state in ("new", "interrupted"):
        state = "killed" if LOCKS_WORK else "training or killed"
    stat, best = _selected(info)
    if stat == "last":  # selects the final epoch: no value to show
        best = None
    latest = history[-1].get(f"val_{stat}") if history and stat else None
    best_epoch = (_int(info.get("best_epoch")) or None) if best is not None else None
    left = seconds_left(history, max(0, epochs - epochs_done)) if state == "training" else None
    seconds = info.get("train_seconds")
    return RunStatus(run_dir, state, epochs_done, epochs, stat, latest, best, best_epoch,
                     float(seconds) if isinstance(seconds, (int, float)) else 0.0, left,
                     next_step(state, run_dir, info, holder, left))


def collect(folders: list[Path]) -> list[RunStatus]:
    """Every run directory in or under ``folders`` (:func:`find_runs`), in path order."""
    dirs: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise RunFileError(f"'{folder}' is not a folder; give a run directory or a folder of them "
                               "(default: runs)")
        dirs += [d for d in find_runs(folder) if d not in dirs]
    if not dirs:
        where = ", ".join(f"'{f}'" for f in folders)
        raise RunFileError(f"no run directories (folders holding config.json) under {where}; train into one "
                           "first, or name the folder your runs are in")
    return [run_status(d) for d in sorted(dirs)]


def find_studies(folders: list[Path], depth: int = 2) -> list[Path]:
    """Study folders (holding ``study.json``) among ``folders`` or up to ``depth`` levels below them."""
    found: list[Path] = []
    for folder in folders:
        base = len(Path(folder).parts)
        for root, subdirs, files in os.walk(folder):
            if STUDY_FILE in files and Path(root) not in found:
                found.append(Path(root))
            if "config.json" in files or len(Path(root).parts) - base >= depth:
                subdirs.clear()
            subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d != "runs")
    return found


def study_line(folder: Path, rows: list[RunStatus]) -> str:
    """One line on the study in ``folder``: its runs done (evaluated or diverged) of those planned, what is
    training, and whether the study runs now (its folder's lock) or how to continue it."""
    doc = _json_or_empty(folder / STUDY_FILE)
    planned = [r for r in doc.get("runs", []) if isinstance(r, dict) and isinstance(r.get("dir"), str)]
    by_path = {row.path.resolve(): row.state for row in rows}
    states = [by_path.get((folder / r["dir"]).resolve(), "new") for r in planned]
    done = sum(s in ("evaluated", "diverged") for s in states)
    training = sum(s == "training" for s in states)
    head = f"study {folder} (preset {doc.get('preset', '?')}): {done} of {len(planned)} runs done"
    if training:
        head += f", {training} training"
    holder = lock_holder(folder)
    command = doc.get("command")
    if holder:
        return f"{head}; running now ({holder})"
    if done == len(planned) and planned:
        report = folder / "report.html"
        return f"{head}; finished" + (f"; report: {report}" if report.is_file() else
                                      f"; write its report with: {command or 'latentbench report ' + str(folder)}")
    if training:
        return f"{head}; its study process holds no lock (an older latentbench, or a run trained by hand)"
    return f"{head}; not running" + (f"; continue with: {command}" if command else "")


def as_json(rows: list[RunStatus]) -> str:
    """The rows as a JSON list, the columns under their names (``path`` a string, seconds a number)."""
    return json.dumps([{**asdict(row), "path": str(row.path)} for row in rows], indent=1)


def format_table(rows: list[RunStatus]) -> str:
    """Plain text columns, left-aligned, the last column unpadded."""
    cells = [COLUMNS, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(line, widths)), line[-1]]).rstrip()
                     for line in cells)
