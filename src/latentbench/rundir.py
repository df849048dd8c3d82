"""A run directory's files, by name, and the per-epoch history every stage reads.

    config.json  run_info.json  history.csv  steps.csv  checkpoints/{last,best}.pt

``history.csv`` has one row per epoch (train and validation statistics, seconds, step); the time a run has
left is estimated from it (:func:`seconds_left`) for the epoch line and ``latentbench status``. Writes are
atomic (:mod:`latentbench.io`), so a killed process never leaves half a file.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from latentbench.config import RunConfig
from latentbench.io import atomic_write_text


class RunPaths:
    """Where each file of the run directory ``root`` lives; nothing is created here."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.config = self.root / "config.json"
        self.info = self.root / "run_info.json"
        self.history = self.root / "history.csv"
        self.steps = self.root / "steps.csv"  # training loss every train.log_every steps
        self.checkpoints = self.root / "checkpoints"
        self.last = self.checkpoints / "last.pt"
        self.best = self.checkpoints / "best.pt"


def run_dir_for(cfg: RunConfig) -> Path:
    """The run directory a config trains into when none is given: ``out_dir/`` + the config's run name."""
    return Path(cfg.out_dir) / cfg.run_name()


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``path`` atomically with one CSV row per dict; the columns are every key, in first-seen order
    (a statistic first logged in a later epoch leaves the earlier rows' cell empty)."""
    if not rows:
        return
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_history(path: Path) -> list[dict[str, float]]:
    """The rows of a history (or steps) CSV as floats; empty cells are left out of their row."""
    with open(path, newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]


def seconds_left(history: list[dict[str, Any]], epochs_left: int) -> float | None:
    """``epochs_left`` times the median of the last three epochs' seconds (robust to one slow epoch on a
    shared machine); None when nothing is left or no epoch has been timed."""
    recent = sorted(float(row["seconds"]) for row in history[-3:] if "seconds" in row)
    if not epochs_left or not recent:
        return None
    return recent[len(recent) // 2] * epochs_left


def format_time_left(seconds: float) -> str:
    """``'~7.0 h left'``, ``'~25 min left'``, ``'~90 s left'``."""
    shown = f"{seconds:.0f} s" if seconds < 120 else (f"{seconds / 60:.0f} min" if seconds < 7200
                                                      else f"{seconds / 3600:.1f} h")
    return f"~{shown} left"


def time_left(history: list[dict[str, Any]], epochs_left: int) -> str:
    """``'; ~7.0 h left'`` for the epoch line (:func:`seconds_left`); ``''`` when nothing is left."""
    seconds = seconds_left(history, epochs_left)
    return "" if seconds is None else f"; {format_time_left(seconds)}"
