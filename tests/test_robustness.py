"""Nothing lost, nothing unclear: kills during saves, unsafe or broken checkpoints, NaN losses, full disks,
unwritable or occupied output folders, and the determinism switch. Each test fails without its handling.

User-facing cases go through the real CLI (``cli.main`` in-process, or ``python -m latentbench`` in a
subprocess for the kill test) and check the exit status and the one-paragraph message, never a traceback.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import SYNTHETIC, cli_args, wait_until

import latentbench.io
from latentbench import cli
from latentbench.config import ConfigError
from latentbench.io import RunFileError, atomic_write_text, run_directory_lock, safe_torch_load
from latentbench.rundir import RunPaths
from latentbench.train import Trainer, TrainingDiverged, TrainingInterrupted, train


def run_cli(capsys, args: list[str]) -> tuple[int, str]:
    """Exit status and stderr with whitespace normalised (messages are wrapped at 100 columns)."""
    code = cli.main(args)
    return code, " ".join(capsys.readouterr().err.split())


def assert_user_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert err.startswith("latentbench: error:") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


# ---------------------------------------------------------------------------------- kill during save
def _kill_when(proc: subprocess.Popen, ready, timeout: float = 90.0) -> None:
    wait_until(proc, ready, timeout, poll=0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("attempts", [2, pytest.param(6, marks=pytest.mark.slow)])
def test_sigkill_during_saves_never_leaves_a_partial_checkpoint(tmp_path, attempts):
    """SIGKILL a real training process repeatedly, alternately at a random moment once it has saved and as soon
    as it starts rewriting last.pt (its temp file appears). Every time last.pt must be absent or loadable, and
    the next process resumes from it. The model is large (about 50 MB per checkpoint) so saves take a while."""
    out, run = tmp_path / "runs", tmp_path / "runs" / "kill"
    checkpoints = run / "checkpoints"
    base = [sys.executable, "-m", "latentbench", *cli_args(
        out, "train.epochs=100000", "model.mlp_hidden=[1024, 1024]", "model.latent_dim=64",
        "data.synthetic_train=100", name="kill")]
    rng = random.Random(0)
    torn, resumed = 0, 0
    for attempt in range(attempts):
        resume = (checkpoints / "last.pt").exists()
        resumed += resume
        cmd = base + (["--resume", str(run)] if resume else [])
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        started = time.monotonic()
        before = (checkpoints / "last.pt").stat().st_mtime_ns if resume else 0

        def temp_files() -> list[Path]:
            return list(checkpoints.glob(".last.pt.*.tmp")) if checkpoints.is_dir() else []

        if attempt % 2:  # kill in the middle of rewriting last.pt
            _kill_when(proc, lambda: bool(temp_files()))
            torn += bool(temp_files())  # the temp file was still there: the kill hit the save
        else:  # kill at a random moment once training is under way
            def saved_again() -> bool:
                last = checkpoints / "last.pt"
                return last.exists() and last.stat().st_mtime_ns > before

            _kill_when(proc, saved_again)
            time.sleep(rng.uniform(0.0, 0.5))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        assert time.monotonic() - started < 120
        if (checkpoints / "last.pt").exists():
            state = safe_torch_load(checkpoints / "last.pt")  # never a partial file
            assert state["epoch"] >= 1 and all(torch.isfinite(v).all() for v in state["objective"].values())
    assert torn >= 1, "no kill landed inside a save; the test proves nothing"
    assert resumed >= attempts // 2
    epoch = safe_torch_load(checkpoints / "last.pt")["epoch"]
    args = cli_args(out, "train.epochs=100000", "model.mlp_hidden=[1024, 1024]", "model.latent_dim=64",
                    "data.synthetic_train=100", name="kill")
    code = cli.main(["train", "--resume", str(run), *args[1:], "--set", f"train.epochs={epoch + 1}"])
    assert code == 0
    assert safe_torch_load(checkpoints / "last.pt")["epoch"] == epoch + 1
    assert not list(run.rglob("*.tmp"))  # the resumed run cleared the killed writes' temp files
    rows = (run / "history.csv").read_text().splitlines()
    assert len(rows) == epoch + 2  # header + one row per epoch


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_text(path, "old\n")

    def write_half_then_die(handle):
        handle.write(b"ne")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        latentbench.io._atomic_write(path, write_half_then_die)
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["metrics.json"]


def test_atomic_files_get_normal_permissions(tmp_path):
    path = tmp_path / "config.json"
    atomic_write_text(path, "{}\n")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


# --------------------------------------------------------------------------------------- safe loading
class Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_checkpoints_load_with_weights_only_and_refuse_pickled_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    torch.save({"objective": {}, "payload": Payload()}, evil)
    with pytest.raises(RunFileError, match=r"evil\.pt' holds Python objects besides tensors.*weights_only=True"):
        safe_torch_load(evil)
    assert not (tmp_path / "PWNED").exists()


def test_every_training_checkpoint_is_weights_only_loadable(tmp_path):
    run = train(cli_cfg(tmp_path, "objective.name=\"contrastive\"", "train.epochs=1"), tmp_path / "run")
    for name in ("last.pt", "best.pt"):
        state = torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert state["config"]["objective"]["name"] == "contrastive"


def cli_cfg(tmp_path: Path, *extra: str):
    from latentbench.config import load_config

    return load_config(None, [*SYNTHETIC, f'out_dir="{tmp_path}"', *extra])


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint_gives_an_error_naming_the_file(tmp_path, capsys, damage):
    out = tmp_path / "runs"
    assert cli.main(cli_args(out, "train.epochs=1")) == 0
    last = out / "run" / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00not a checkpoint" * 50,
                      "empty": b""}[damage])
    code, err = run_cli(capsys, ["train", "--resume", str(out / "run"), "--set", "train.epochs=2"])
    assert_user_error(code, err, f"'{last}' is corrupt or truncated", "Delete it")


def test_damaged_config_json_falls_back_to_the_checkpoint_copy(tmp_path, capsys):
    out = tmp_path / "runs"
    assert cli.main(cli_args(out, "train.epochs=1")) == 0
    config = out / "run" / "config.json"
    good = json.loads(config.read_text())
    config.write_text('{"train": {"epochs": ')
    code, err = run_cli(capsys, ["train", "--resume", str(out / "run"), "--set", "train.epochs=2"])
    assert code == 0, err
    assert f"latentbench: warning: '{config}' is not valid JSON" in err and "using the copy of the config" in err
    good["train"]["epochs"] = 2
    assert json.loads(config.read_text()) == good  # repaired
    (out / "run" / "checkpoints" / "last.pt").unlink()
    config.write_text("[1, 2")
    code, err = run_cli(capsys, ["train", "--resume", str(out / "run")])
    assert_user_error(code, err, f"'{config}' is not valid JSON")


def test_resume_of_a_folder_that_is_no_run(tmp_path, capsys):
    code, err = run_cli(capsys, ["train", "--resume", str(tmp_path)])
    assert_user_error(code, err, f"'{tmp_path}' is not a run directory (no config.json)")


# ------------------------------------------------------------------------------------------- NaN loss
def test_nan_loss_stops_names_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    from latentbench import objectives

    calls = {"train": 0}
    real = objectives.reconstruction_loss

    def poisoned(x_hat, x, kind):
        loss = real(x_hat, x, kind)
        if torch.is_grad_enabled():
            calls["train"] += 1
            if calls["train"] >= 8:  # the 8th training step: epoch 2, batch 3 (5 steps per epoch)
                return loss * float("nan")
        return loss

    monkeypatch.setattr(objectives, "reconstruction_loss", poisoned)
    out = tmp_path / "runs"
    code, err = run_cli(capsys, cli_args(out, "train.epochs=3"))
    last = out / "run" / "checkpoints" / "last.pt"
    assert_user_error(code, err, "the training loss became NaN or infinite at epoch 2, step 8 (batch 3 of 5 in the "
                      f"epoch); training stopped. The last good checkpoint '{last}' is kept unchanged.")
    state = safe_torch_load(last)
    assert state["epoch"] == 1 and state["step"] == 5
    assert all(torch.isfinite(v).all() for v in state["objective"].values())
    assert all(torch.isfinite(v).all() for v in safe_torch_load(last.with_name("best.pt"))["objective"].values())
    info = json.loads((out / "run" / "run_info.json").read_text())
    assert info["status"] == "diverged" and "epoch 2, step 8" in info["stop_reason"]


def test_huge_learning_rate_diverges_in_the_first_epoch(tmp_path, capsys):
    code, err = run_cli(capsys, cli_args(tmp_path, "train.lr=1e30", "train.epochs=2"))
    assert_user_error(code, err, "NaN or infinite at epoch 1", "No checkpoint had been saved yet",
                      "Lower train.lr (now 1e+30)")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_nan_is_checked_before_an_epoch_end_save(tiny, tmp_path, monkeypatch):
    """The NaN check is deferred (no GPU sync per step) but always runs before anything is saved."""
    from latentbench import objectives

    real = objectives.reconstruction_loss
    monkeypatch.setattr(objectives, "reconstruction_loss",
                        lambda x_hat, x, kind: real(x_hat, x, kind) * (float("inf") if torch.is_grad_enabled() else 1))
    with pytest.raises(TrainingDiverged, match="epoch 1, step 1 "):
        train(tiny("autoencoder", extra=["train.log_every=1000"]), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


# ------------------------------------------------------------------------------ output folder, disk
def test_output_folder_under_a_file_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "somefile"
    blocker.write_text("not a folder")
    code, err = run_cli(capsys, cli_args(blocker / "sub"))
    assert_user_error(code, err, f"cannot write to output folder '{blocker / 'sub' / 'run'}' (Not a directory)")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write to a read-only folder")
def test_read_only_output_folder_fails_before_training(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, err = run_cli(capsys, cli_args(locked))
    finally:
        locked.chmod(0o700)
    assert_user_error(code, err, "cannot write to output folder")


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "runs"
    assert cli.main(cli_args(out, "train.epochs=1")) == 0
    last = out / "run" / "checkpoints" / "last.pt"
    before = last.read_bytes()
    real_save = torch.save

    def fill_the_disk(obj, handle, *args, **kwargs):
        real_save(obj, handle, *args, **kwargs)  # the bytes go out, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(latentbench.io.torch, "save", fill_the_disk)
    code, err = run_cli(capsys, ["train", "--resume", str(out / "run"), "--set", "train.epochs=2"])
    assert_user_error(code, err, "could not write", "the disk is full. The previous version of the file, if any, "
                      "is untouched")
    assert last.read_bytes() == before
    assert not list((out / "run").rglob("*.tmp"))


def test_too_little_free_space_fails_before_training(tmp_path, capsys, monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(latentbench.io.shutil, "disk_usage", lambda p: SimpleNamespace(total=10**9, used=10**9, free=4096))
    code, err = run_cli(capsys, cli_args(tmp_path, "train.epochs=1"))
    assert_user_error(code, err, "only 0.0 MiB are free on the disk holding", "its checkpoints need about")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_cli_turns_a_raw_disk_full_oserror_into_a_message(capsys, monkeypatch):
    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/run/figures/tsne.png")

    monkeypatch.setattr(cli, "cmd_train", full)
    code, err = run_cli(capsys, ["train"])
    assert_user_error(code, err, "the disk is full (writing '/data/run/figures/tsne.png')")


def test_cli_keeps_the_traceback_of_unexpected_oserrors(monkeypatch):
    def bug(args):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(cli, "cmd_train", bug)
    with pytest.raises(OSError):
        cli.main(["train"])


def test_latentbench_debug_reraises_user_errors(monkeypatch, capsys):
    monkeypatch.setenv("LATENTBENCH_DEBUG", "1")
    with pytest.raises(ConfigError, match="train.epohcs"):
        cli.main(["train", "--set", "train.epohcs=3"])
    monkeypatch.setenv("LATENTBENCH_DEBUG", "0")
    assert cli.main(["train", "--set", "train.epohcs=3"]) == 2


def test_an_existing_run_is_never_overwritten_without_resume(tmp_path, capsys):
    out = tmp_path / "runs"
    assert cli.main(cli_args(out, "train.epochs=1")) == 0
    files = {p: p.read_bytes() for p in (out / "run").rglob("*") if p.is_file()}
    code, err = run_cli(capsys, cli_args(out, "train.epochs=2"))
    assert_user_error(code, err, f"run directory '{out / 'run'}' already holds a trained run; resume it with "
                      f"'latentbench train --resume {out / 'run'}'")
    assert {p: p.read_bytes() for p in (out / "run").rglob("*") if p.is_file()} == files


def test_a_run_directory_in_use_by_another_trainer_is_refused_and_left_alone(tmp_path, capsys):
    out = tmp_path / "runs"
    assert cli.main(cli_args(out, "train.epochs=1")) == 0
    assert not (out / "run" / ".lock").exists()  # released and removed when the run ended
    files = {p: p.read_bytes() for p in (out / "run").rglob("*") if p.is_file()}
    with run_directory_lock(out / "run"):  # another trainer holds it (flock: one holder per open file)
        for args in (["train", "--resume", str(out / "run")], cli_args(out, "train.epochs=1")):
            code, err = run_cli(capsys, args)
            assert_user_error(code, err, f"run directory '{out / 'run'}' is in use by process {os.getpid()} on",
                              f"continue with 'latentbench train --resume {out / 'run'}'")
        assert {p: p.read_bytes() for p in (out / "run").rglob("*") if p.is_file() and p.name != ".lock"} == files
    assert cli.main(["train", "--resume", str(out / "run"), "--set", "train.epochs=2"]) == 0  # free again


def test_a_killed_trainer_leaves_no_stale_lock(tmp_path):
    """The OS drops the lock with the process, however it ends; the next run takes it over."""
    folder = tmp_path / "run"
    folder.mkdir()
    code = ("import time\nfrom latentbench.io import run_directory_lock\n"
            f"with run_directory_lock({str(folder)!r}):\n    print('held', flush=True)\n    time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunFileError, match=f"in use by process {holder.pid} on"):
        with run_directory_lock(folder):
            pass
    holder.kill()
    holder.wait()
    assert (folder / ".lock").exists()  # a kill -9 leaves the file, but not the lock
    with run_directory_lock(folder):
        assert f"process {os.getpid()} on" in (folder / ".lock").read_text()
    assert not (folder / ".lock").exists()


def test_sigterm_saves_last_at_a_step_boundary_and_exits_143(tmp_path, capsys):
    """What a cluster scheduler sends before its time limit: the trainer finishes the step, saves 'last'
    (mid-epoch), records the run as interrupted and exits with 128 + SIGTERM; --resume continues it."""
    out, run = tmp_path / "runs", tmp_path / "runs" / "term"
    args = cli_args(out, "train.epochs=100000", "data.synthetic_train=4000", name="term")
    proc = subprocess.Popen([sys.executable, "-m", "latentbench", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wait_until(proc, (run / "history.csv").is_file)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "SIGTERM: finishing this step and saving 'last'" in err
    # between two steps ("at epoch E, step S") or, when the signal lands while the epoch is being closed
    # (history.csv, which the wait above watches, is written then), after its validation ("after epoch E")
    assert re.search(r"stopped by SIGTERM (at|after) epoch \d+", err) and f"latentbench train --resume {run}" in err
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "interrupted" and "SIGTERM" in info["stop_reason"]
    saved = safe_torch_load(run / "checkpoints" / "last.pt")
    epoch = saved["epoch"] + 1
    assert cli.main(["train", "--resume", str(run), "--set", f"train.epochs={epoch}"]) == 0
    assert safe_torch_load(run / "checkpoints" / "last.pt")["epoch"] == epoch


def test_sigterm_during_validation_stops_after_the_epoch_with_last_saved(tiny, tmp_path, monkeypatch,
                                                                        default_sigterm):
    """The other step boundary the subprocess test above can hit: the signal lands while the epoch is being
    closed (validation), so the run stops "after epoch E" with that whole epoch in 'last'."""
    trainer = Trainer(tiny("supervised", extra=["train.epochs=5"]), RunPaths(tmp_path / "run"))
    validate = trainer.validate

    def validate_then_signal():
        stats = validate()
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # the trainer's handler, for the whole fit
        os.kill(os.getpid(), signal.SIGTERM)
        return stats

    monkeypatch.setattr(trainer, "validate", validate_then_signal)
    with pytest.raises(TrainingInterrupted, match=r"stopped by SIGTERM after epoch 1; saved") as stopped:
        trainer.fit()
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert safe_torch_load(trainer.paths.last)["epoch"] == 1


@pytest.fixture
def default_sigterm():
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("this test process has its own SIGTERM handler")
    yield
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the CLI put the default back


def test_sigterm_outside_training_stops_like_ctrl_c_with_status_143(tmp_path, capsys, monkeypatch, default_sigterm):
    """SIGTERM during `eval` (any command outside the training loop) stops it as Ctrl-C would, not on the spot."""
    import latentbench.evaluate

    out = tmp_path / "runs"
    assert cli.main(cli_args(out, "train.epochs=1")) == 0
    monkeypatch.setattr(latentbench.evaluate, "evaluate", lambda *a, **k: signal.raise_signal(signal.SIGTERM))
    capsys.readouterr()
    assert cli.main(["eval", str(out / "run")]) == 128 + signal.SIGTERM
    assert "latentbench: stopped by SIGTERM; finished work is kept on disk." in capsys.readouterr().err


def test_sigterm_during_a_studys_evaluation_records_the_study_as_interrupted(tmp_path, capsys, monkeypatch,
                                                                            default_sigterm):
    from latentbench import study

    monkeypatch.setattr(study, "_default_evaluate", lambda *a, **k: signal.raise_signal(signal.SIGTERM))
    out = tmp_path / "study"
    code = cli.main(["reproduce", "--preset", "smoke", "--datasets", "mnist", "--out", str(out)])
    assert code == 128 + signal.SIGTERM
    assert json.loads((out / "study.json").read_text())["status"] == "interrupted"
    assert "study interrupted during mnist_autoencoder_s0" in capsys.readouterr().err


def test_resume_without_a_checkpoint_says_so(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(cli_cfg(tmp_path).to_dict()))
    code, err = run_cli(capsys, ["train", "--resume", str(run)])
    assert_user_error(code, err, f"nothing to resume: '{run / 'checkpoints' / 'last.pt'}' does not exist")


# -------------------------------------------------------------------------------------- determinism
@pytest.fixture
def restore_determinism():
    flags = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic)
    yield
    torch.use_deterministic_algorithms(flags[0])
    torch.backends.cudnn.deterministic = flags[1]


def test_deterministic_flag_sets_torch_and_is_recorded(tmp_path, capsys, restore_determinism):
    torch.use_deterministic_algorithms(False)
    assert cli.main([*cli_args(tmp_path, "train.epochs=1", name="det"), "--deterministic"]) == 0
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert json.loads((tmp_path / "det" / "run_info.json").read_text())["deterministic"] is True
    assert json.loads((tmp_path / "det" / "config.json").read_text())["train"]["deterministic"] is True
    assert cli.main(cli_args(tmp_path, "train.epochs=1", name="free")) == 0
    assert not torch.are_deterministic_algorithms_enabled()  # one run's flags do not leak into the next
    assert json.loads((tmp_path / "free" / "run_info.json").read_text())["deterministic"] is False


def test_deterministic_runs_repeat_bit_for_bit(tmp_path, restore_determinism):
    runs = [train(cli_cfg(tmp_path, 'objective.name="contrastive"', "train.epochs=1", "train.deterministic=true"),
                  tmp_path / name) for name in ("a", "b")]
    a, b = (safe_torch_load(r / "checkpoints" / "last.pt")["objective"] for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
