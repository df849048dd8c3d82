"""`latentbench status`: each run directory's state from its files and its lock, on real training processes."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import cli_args, wait_until

from latentbench import cli
from latentbench.io import atomic_write_json, lock_holder, run_directory_lock
from latentbench.status import collect, find_runs, find_studies, format_table, run_status, study_line

def history_rows(run: Path) -> int:
    path = run / "history.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.is_file() else 0


def test_a_training_process_then_killed_then_resumed_to_the_end(tmp_path, capsys):
    """A real trainer is listed as training (its process, epochs, validation values, time left); after a
    SIGKILL, which leaves run_info.json saying 'running', as killed with the command that continues it; once
    resumed to the end, as trained."""
    out, run = tmp_path / "runs", tmp_path / "runs" / "run"
    proc = subprocess.Popen([sys.executable, "-m", "latentbench", *cli_args(out, "train.epochs=100000")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_until(proc, lambda: history_rows(run) >= 2)
        row = run_status(run)
        assert row.state == "training"
        assert f"process {proc.pid} on " in row.next and "left at the recent pace" in row.next
        done, budget = row.epochs_done, row.epochs
        assert done >= 2 and budget == 100000
        assert row.statistic == "mae" and row.latest > 0 and row.seconds_left > 0
        assert row.best_epoch >= 1 and row.best > 0  # run_info.json is rewritten after every epoch
        assert cli.main(["status", str(out)]) == 0
        shown = capsys.readouterr().out
        assert "training" in shown and f"process {proc.pid}" in shown and str(run) in shown
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert json.loads((run / "run_info.json").read_text())["status"] == "running"
    row = run_status(run)
    assert row.state == "killed" and row.epochs_done >= done
    assert "ended without a word" in row.next and f"latentbench train --resume {run}" in row.next
    assert f"saved at the end of epoch {row.epochs_done};" in row.next  # epochs of ~0.1 s: no save mid-epoch
    epochs = row.epochs_done + 1
    assert cli.main(["train", "--resume", str(run), "--set", f"train.epochs={epochs}"]) == 0
    row = run_status(run)
    assert (row.state, row.epochs_done, row.epochs) == ("trained", epochs, epochs)
    assert f"evaluate with: latentbench eval {run}" in row.next and row.train_seconds > 0


def _fake_run(folder: Path, status: str | None, checkpoint: bool = False, history: int = 0) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"train": {"epochs": 10}}))
    if status is not None:
        status, _, why = status.partition("-")
        atomic_write_json(folder / "run_info.json", {"status": status, "stop_reason": f"why {status} {why}",
                                                     "best_val_acc": 0.5, "best_epoch": 1, "train_seconds": 60.0,
                                                     "epochs_done": history, "updated": time.time() - 3600})
    if checkpoint:
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "last.pt").write_bytes(b"")
    if history:
        lines = ["epoch,step,seconds,val_acc", *(f"{e},{e * 10},60.0,0.{e}" for e in range(1, history + 1))]
        (folder / "history.csv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize("status, checkpoint, state, says", [
    ("interrupted", True, "interrupted", "stopped by Ctrl-C; continue with: latentbench train --resume"),
    ("interrupted-SIGTERM", True, "interrupted", "stopped by SIGTERM; continue with: latentbench train --resume"),
    ("diverged", True, "diverged", "why diverged"),
    ("running", True, "killed", "(last heard from 1h00m ago); saved at the end of epoch 3; continue with: "
                                "latentbench train --resume"),
    ("running", False, "killed", "before its first save; train it again"),
    (None, False, "new", "no epoch finished yet"),
])
def test_each_state_names_what_to_do_next(tmp_path, status, checkpoint, state, says):
    run = _fake_run(tmp_path / "run", status, checkpoint, history=3 if checkpoint else 0)
    row = run_status(run)
    assert row.state == state and says in row.next
    if checkpoint:
        assert (row.epochs_done, row.latest, row.best, row.best_epoch) == (3, 0.3, 0.5, 1)
        assert row.cells()[2:5] == ("3/10", "acc 0.3000", "0.5000 @ 1")


def test_a_killed_run_names_where_its_last_save_stands(tmp_path):
    run = _fake_run(tmp_path / "run", "running", checkpoint=True, history=54)
    info = json.loads((run / "run_info.json").read_text())
    atomic_write_json(run / "run_info.json", {**info, "batch_in_epoch": 120, "batches_per_epoch": 351})
    assert "; saved in epoch 55, after batch 120 of 351; continue with:" in run_status(run).next
    atomic_write_json(run / "run_info.json", {**info, "batch_in_epoch": 0, "batches_per_epoch": 351})
    assert "; saved at the end of epoch 54; continue with:" in run_status(run).next
    atomic_write_json(run / "run_info.json", {**info, "epochs_done": "?", "batch_in_epoch": None})  # damaged
    assert "ended without a word (last heard from 1h00m ago); saved; continue with:" in run_status(run).next


def test_a_held_lock_means_training_and_its_holder_is_named(tmp_path):
    run = _fake_run(tmp_path / "run", "running", checkpoint=True, history=3)
    with run_directory_lock(run):
        row = run_status(run)
        assert row.state == "training" and row.next.startswith(f"process {os.getpid()} on ")
        assert "~7 min left at the recent pace" in row.next  # 7 epochs x the median 60 s
    assert run_status(run).state == "killed"


def test_lock_holder_never_creates_the_file_and_is_free_after_release(tmp_path):
    assert lock_holder(tmp_path) is None and not (tmp_path / ".lock").exists()
    with run_directory_lock(tmp_path):
        assert lock_holder(tmp_path).startswith(f"process {os.getpid()} on ")
    assert lock_holder(tmp_path) is None


def test_a_trainer_waits_out_a_status_probe_instead_of_failing(tmp_path):
    """A probe holds a shared lock for an instant; a trainer starting in that instant must not be refused."""
    (tmp_path / ".lock").write_text("")
    probe = open(tmp_path / ".lock")
    fcntl.flock(probe, fcntl.LOCK_SH)
    threading.Timer(0.3, probe.close).start()  # closing drops the lock
    with run_directory_lock(tmp_path):
        assert "process" in (tmp_path / ".lock").read_text()


def test_without_locks_a_running_run_is_training_or_killed(tmp_path, monkeypatch):
    import latentbench.status

    run = _fake_run(tmp_path / "run", "running", checkpoint=True, history=3)
    monkeypatch.setattr(latentbench.status, "LOCKS_WORK", False)  # as on Windows
    row = run_status(run)
    assert row.state == "training or killed" and "if it was killed, continue with" in row.next


def test_damaged_files_never_stop_the_listing(tmp_path):
    run = _fake_run(tmp_path / "run", "running", checkpoint=True, history=2)
    (run / "run_info.json").write_text("{not json")
    (run / "history.csv").write_text("epoch,seconds\nnot,a number\n")
    row = run_status(run)
    assert row.state == "interrupted" and row.latest is None and row.best is None
    assert row.cells()[3:5] == ("-", "-")
    (run / "config.json").write_text(json.dumps({"train": [1, 2]}))  # valid JSON, wrong shape
    (run / "run_info.json").write_text(json.dumps({"status": "running", "epochs_done": "x", "best_epoch": None,
                                                   "best_val_acc": "y", "train_seconds": [], "updated": "z"}))
    (run / "history.csv").unlink()
    row = run_status(run)
    assert (row.state, row.epochs_done, row.epochs, row.best, row.train_seconds) == ("killed", 0, 0, None, 0.0)


def test_runs_are_found_at_depth_but_not_inside_runs_or_hidden_folders(tmp_path):
    deep = _fake_run(tmp_path / "study" / "runs" / "a" / "run_a", "interrupted", checkpoint=True)
    shallow = _fake_run(tmp_path / "run_b", None)
    _fake_run(shallow / "inside", None)  # a folder inside a run directory is no run of its own
    _fake_run(tmp_path / ".hidden" / "run_c", None)
    _fake_run(tmp_path / "1" / "2" / "3" / "4" / "too_deep", None)
    assert find_runs(tmp_path) == [shallow, deep]
    table = format_table(collect([tmp_path])).splitlines()
    assert table[0].split() == ["run", "state", "epoch", "val", "best", "trained", "next"]
    assert [line.split()[0] for line in table[1:]] == [str(shallow), str(deep)]


def test_json_output_for_scripts(tmp_path, capsys):
    run = _fake_run(tmp_path / "run", "interrupted", checkpoint=True, history=2)
    assert cli.main(["status", "--json", str(tmp_path)]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["path"] == str(run) and row["state"] == "interrupted"
    assert (row["epochs_done"], row["epochs"], row["train_seconds"]) == (2, 10, 60.0)
    assert (row["statistic"], row["latest"], row["best"], row["best_epoch"]) == ("acc", 0.2, 0.5, 1)


def test_no_runs_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["status", str(tmp_path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"no run directories (folders holding config.json) under '{tmp_path}'" in err
    assert cli.main(["status", str(tmp_path / "missing")]) == 2
    assert f"'{tmp_path / 'missing'}' is not a folder" in " ".join(capsys.readouterr().err.split())


def _evaluated(run: Path) -> Path:
    atomic_write_json(run / "run_info.json", {"status": "finished", "epochs_done": 10, "train_seconds": 60.0})
    (run / "figures").mkdir()
    (run / "figures" / "tsne.png").write_bytes(b"png")
    atomic_write_json(run / "metrics.json", {"metrics": {}, "figures": {"tsne": "figures/tsne.png"}})
    return run


def test_a_study_folder_gets_a_line_saying_how_far_it_is_and_how_to_go_on(tmp_path, capsys):
    study = tmp_path / "study"
    _evaluated(_fake_run(study / "runs" / "a", None))
    _fake_run(study / "runs" / "b", "interrupted", checkpoint=True, history=2)
    command = f"latentbench reproduce --preset smoke --out {study}"
    atomic_write_json(study / "study.json", {"preset": "smoke", "command": command, "runs": [
        {"name": n, "dir": f"runs/{n}"} for n in ("a", "b", "c")]})  # c: not started
    assert find_studies([tmp_path]) == [study] and find_studies([study]) == [study]
    assert run_status(study / "runs" / "a").next == f"evaluated; compare with: latentbench report {study}"
    assert study_line(study, collect([study])) == (f"study {study} (preset smoke): 1 of 3 runs done; not running; "
                                                  f"continue with: {command}")
    with run_directory_lock(study):  # as `latentbench reproduce` holds it while it works
        line = study_line(study, collect([study]))
        assert line.startswith(f"study {study} (preset smoke): 1 of 3 runs done; running now (process {os.getpid()}")
        with run_directory_lock(study / "runs" / "b"):
            assert ", 1 training; running now" in study_line(study, collect([study]))
    _evaluated(study / "runs" / "b")
    _evaluated(_fake_run(study / "runs" / "c", None))
    assert study_line(study, collect([study])).endswith(f"3 of 3 runs done; finished; write its report with: "
                                                        f"{command}")
    (study / "report.html").write_text("<html>")
    assert cli.main(["status", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (f"study {study} (preset smoke): 3 of 3 runs done; finished; "
                                                       f"report: {study / 'report.html'}")
    (study / "study.json").write_text("{ damaged")  # never stops the listing
    assert study_line(study, collect([study])) == f"study {study} (preset ?): 0 of 0 runs done; not running"
