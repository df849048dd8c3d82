"""Runs side by side, read from their ``metrics.json``: ``latentbench compare``.

    latentbench compare runs/pilot_s0 runs/pilot_s1 runs/pilot_s2 --blind --keys probe_linear,recon
    latentbench compare runs/study_paper --keys _test_ --json

One column per run directory (found as ``latentbench status`` finds them, so a study folder lists all its
runs), one row per metric, and for a metric that two or more runs hold, their mean and sample standard
deviation: the numbers a recipe is chosen on across seeds, without copying them out of JSON files by hand.
The last row is each run's training time (``run_info.json``).

``--blind`` leaves out every test-split metric (``*_test_*``, the keys ``latentbench eval --blind`` keeps out
of its progress lines), so a recipe can be chosen on validation without the test split in view; ``--keys``
keeps the metrics whose names contain one of the given parts. Runs not evaluated yet are named below the
table with the command that evaluates them.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentbench.evaluate import is_test_key
from latentbench.io import RunFileError
from latentbench.report import load_run
from latentbench.status import find_runs

TRAIN_SECONDS = "train_seconds"


@dataclass
class Row:
    """One metric across the runs: ``values[i]`` is run i's (None where it has none)."""

    key: str
    values: list[float | None]

    def present(self) -> list[float]:
        return [v for v in self.values if v is not None]

    def mean(self) -> float | None:
        return statistics.fmean(self.present()) if len(self.present()) >= 2 else None

    def std(self) -> float | None:
        """Sample standard deviation (n - 1), as the docs quote seeds' spreads."""
        return statistics.stdev(self.present()) if len(self.present()) >= 2 else None


@dataclass
class Comparison:
    """The runs compared (their labels and directories), the metric rows, and the runs left out."""

    labels: list[str]
    paths: list[Path]
    rows: list[Row]
    not_evaluated: list[Path] = field(default_factory=list)


def run_metrics(run_dir: Path) -> dict[str, float] | None:
    """A run's numeric metrics (as the report reads them) plus its training time; None when it has no
    ``metrics.json`` yet."""
    if not (run_dir / "metrics.json").is_file():
        return None
    run = load_run(run_dir, None)
    numbers = {k: float(v) for k, v in run.metrics.items() if not isinstance(v, bool)}
    if isinstance(run.info.get(TRAIN_SECONDS), (int, float)):
        numbers[TRAIN_SECONDS] = float(run.info[TRAIN_SECONDS])
    return numbers


def wanted(key: str, blind: bool, parts: list[str]) -> bool:
    """Whether ``key`` is shown: not a test metric under ``blind``, and containing one of ``parts`` (if any).
    The training time is always shown."""
    if key == TRAIN_SECONDS:
        return True
    if blind and is_test_key(key):
        return False
    return not parts or any(part in key for part in parts)


def labels(paths: list[Path]) -> list[str]:
    """Short unique names: each run directory's name, with as many parent folders as it takes to tell apart
    runs of the same name (seeds of one recipe in different pilot folders, say)."""
    depth = 1
    while depth < max((len(p.parts) for p in paths), default=1):
        names = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(names)) == len(names):
            return names
        depth += 1
    return [str(p) for p in paths]


def collect_runs(folders: list[Path]) -> list[Path]:
    """The run directories in ``folders`` (each a run directory or a folder of them), in the order given."""
    runs: list[Path] = []
    for folder in folders:
        if not folder.exists():
            raise RunFileError(f"'{folder}' does not exist; give run directories or folders that hold them")
        runs.extend(r for r in find_runs(folder) if r not in runs)
    if not runs:
        raise RunFileError(f"no run directory (a folder with config.json) in {', '.join(map(str, folders))}; "
                           f"give the folders that `latentbench train --out` wrote")
    return runs


def compare_runs(folders: list[Path], blind: bool = False, parts: list[str] | None = None) -> Comparison:
    """The metrics of every run directory under ``folders``, one row per metric name, sorted by name with the
    training time last."""
    runs = collect_runs(folders)
    evaluated = [(run, m) for run in runs if (m := run_metrics(run)) is not None]
    keys = sorted({k for _, m in evaluated for k in m if wanted(k, blind, parts or [])},
                  key=lambda k: (k == TRAIN_SECONDS, k))
    rows = [Row(k, [m.get(k) for _, m in evaluated]) for k in keys]
    paths = [run for run, _ in evaluated]
    return Comparison(labels(paths), paths, rows, [run for run in runs if run not in paths])


def format_value(key: str, value: float | None) -> str:
    """Accuracies in percent, times in seconds, anything else with four decimals."""
    if value is None:
        return "-"
    if key.endswith("_acc") or "_acc_" in key:
        return f"{100 * value:.2f}%"
    if key == TRAIN_SECONDS:
        return f"{value:,.0f} s"
    return f"{value:.4f}"


def format_table(cmp: Comparison) -> str:
    """Plain text columns: the metric, one column per run, then mean and std where two or more runs have it."""
    header = ["metric", *cmp.labels, "mean", "std"]
    lines = [header] + [[row.key, *(format_value(row.key, v) for v in row.values),
                         format_value(row.key, row.mean()), format_value(row.key, row.std())] for row in cmp.rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
            for line in lines]
    text += [f"not evaluated yet: {run} (latentbench eval {run})" for run in cmp.not_evaluated]
    return "\n".join(line.rstrip() for line in text)


def as_json(cmp: Comparison) -> str:
    """The comparison as one JSON object: runs (label and path), and per metric its values, mean and std."""
    obj: dict[str, Any] = {
        "runs": [{"label": label, "path": str(path)} for label, path in zip(cmp.labels, cmp.paths)],
        "metrics": {row.key: {"values": row.values, "mean": row.mean(), "std": row.std()} for row in cmp.rows},
        "not_evaluated": [str(run) for run in cmp.not_evaluated],
    }
    return json.dumps(obj, indent=1)
