"""Exact resume: an interrupted and resumed run ends bit-identical to an uninterrupted one.

On CPU with ``train.deterministic = true``: 2 epochs + resume + 2 epochs == 4 epochs (every state_dict
tensor ``torch.equal``, optimizer state too, history.csv identical except its ``seconds`` column), for every
objective and both encoders; the same after a real SIGINT inside a step (the step finishes, ``last`` is saved
mid-epoch), after a KeyboardInterrupt that bypasses the handler (nothing torn is saved), with a one-cycle
schedule, and through the CLI. Plus: which config changes a resume refuses, and checkpoints saved on a GPU
loading on a CPU-only machine (simulated: no GPU here).
"""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import pytest
import torch

from latentbench import cli
from latentbench.config import ConfigError
from latentbench.data import BatchLoader
from latentbench.io import atomic_torch_save, safe_torch_load
from latentbench.rundir import RunPaths
from latentbench.status import run_status
from latentbench.train import Trainer, TrainingInterrupted, make_optimizer, train

STEPS_PER_EPOCH = 5  # 180 training images (200 minus 10% validation) in batches of 32, last one dropped


def small(tiny, objective: str, encoder: str, epochs: int, extra: list[str] | None = None):
    """A deterministic 16x16 synthetic run of about 0.1 s per epoch."""
    return tiny(objective, size=16, extra=[
        f'model.encoder="{encoder}"', "train.deterministic=true", "train.patience=0", f"train.epochs={epochs}",
        "data.synthetic_train=200", "data.synthetic_test=50", "train.batch_size=32",
        "model.conv_widths=[8, 8, 16, 16]", "model.mlp_hidden=[64, 32]", "model.latent_dim=16",
        "objective.proj_hidden=32", "objective.proj_dim=16", *(extra or [])])


def history_without_seconds(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def assert_identical_runs(a: Path, b: Path) -> None:
    """Bit-identical weights and optimizer state, identical history except the wall-clock column."""
    last_a, last_b = safe_torch_load(a / "checkpoints/last.pt"), safe_torch_load(b / "checkpoints/last.pt")
    weights_a, weights_b = last_a["objective"], last_b["objective"]
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), f"{key} differs"
    for p_id, state in last_a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, last_b["optimizer"]["state"][p_id][name]), f"optimizer {p_id}.{name} differs"
    assert (last_a.get("ema") is None) == (last_b.get("ema") is None)
    for key, value in (last_a.get("ema") or {}).items():  # train.ema_decay: the moving average resumes too
        assert torch.equal(value, last_b["ema"][key]), f"ema {key} differs"
    assert last_a["step"] == last_b["step"] and last_a["epoch"] == last_b["epoch"]
    rows_a, rows_b = history_without_seconds(a), history_without_seconds(b)
    assert len(rows_a) == last_a["epoch"] and rows_a == rows_b


def interrupt_at(monkeypatch, steps: list[int], how: str = "raise") -> list[int]:
    """Interrupt the training step with global index in ``steps`` (once each), after its forward pass.

    ``raise``: KeyboardInterrupt inside the step (its random numbers are drawn, nothing updated yet);
    ``sigint``: a real SIGINT, as Ctrl-C sends; ``update``: KeyboardInterrupt inside optimizer.step().
    """
    pending, fired = list(steps), []
    watch = Trainer._watch_loss

    def watch_and_interrupt(self, loss):
        watch(self, loss)
        if pending and self.step == pending[0]:
            fired.append(pending.pop(0))
            if how == "sigint":
                signal.raise_signal(signal.SIGINT)
            elif how == "update":
                step = self.optimizer.step

                def step_then_interrupt(*args, **kwargs):
                    self.optimizer.step = step
                    step(*args, **kwargs)
                    raise KeyboardInterrupt

                self.optimizer.step = step_then_interrupt
            else:
                raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_watch_loss", watch_and_interrupt)
    return fired


CASES = [("autoencoder", "mlp"), ("autoencoder", "conv"), ("supervised", "mlp"), ("supervised", "conv"),
         ("contrastive", "mlp"), ("contrastive", "conv")]


@pytest.mark.parametrize("objective,encoder", CASES)
def test_two_plus_two_epochs_equal_four(tiny, tmp_path, objective, encoder):
    whole = train(small(tiny, objective, encoder, 4), tmp_path / "whole")
    split = train(small(tiny, objective, encoder, 2), tmp_path / "split")
    assert len(history_without_seconds(split)) == 2
    train(small(tiny, objective, encoder, 4), split, resume=True)
    assert_identical_runs(whole, split)


def test_resume_through_the_cli(tiny, tmp_path, capsys):
    whole = train(small(tiny, "contrastive", "conv", 4), tmp_path / "whole")
    split = train(small(tiny, "contrastive", "conv", 2), tmp_path / "split")
    assert cli.main(["train", "--resume", str(split), "--set", "train.epochs=4"]) == 0
    assert_identical_runs(whole, split)
    assert "completed 4 epochs" in capsys.readouterr().out


@pytest.fixture
def python_sigint_handler():
    """SIGINT handled by Python, as in a terminal, even when the test run inherited an ignored SIGINT (under
    nohup or a background CI job the trainer rightly leaves an ignored SIGINT alone)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("objective,encoder", [("contrastive", "conv"), ("supervised", "mlp")])
def test_ctrl_c_mid_epoch_then_resume_is_exact(tiny, tmp_path, monkeypatch, capsys, python_sigint_handler,
                                                objective, encoder):
    """A real SIGINT inside step 7 (after its augmentations/dropout drew random numbers and BatchNorm moved):
    the step finishes, 'last' is saved mid-epoch, and the resumed run ends bit-identical."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    whole = train(small(tiny, objective, encoder, 3), tmp_path / "whole")
    run = tmp_path / "split"
    fired = interrupt_at(monkeypatch, [6], how="sigint")  # global step index 6 = the 7th step
    with pytest.raises(TrainingInterrupted, match=r"interrupted at epoch 2, step 7; saved .*last\.pt.*--resume"):
        train(small(tiny, objective, encoder, 3), run)
    assert fired == [6]
    assert "finishing this step and saving 'last'" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler removed again
    saved = safe_torch_load(run / "checkpoints/last.pt")
    assert (saved["epoch"], saved["batch_in_epoch"], saved["step"]) == (1, 2, 7)
    assert saved["partial"]["_n"] == 2.0  # the epoch's running sums so far travel with the checkpoint
    monkeypatch.undo()

    def interrupt_before_first_step(self, epoch, start_batch=0):
        raise KeyboardInterrupt

    monkeypatch.setattr(BatchLoader, "set_epoch", interrupt_before_first_step)
    with pytest.raises(TrainingInterrupted, match="interrupted at epoch 2, step 7; saved"):
        train(small(tiny, objective, encoder, 3), run, resume=True)
    assert safe_torch_load(run / "checkpoints/last.pt")["partial"] == saved["partial"]  # not reset to {}
    monkeypatch.undo()
    train(small(tiny, objective, encoder, 3), run, resume=True)
    assert_identical_runs(whole, run)


def test_a_resumed_epoch_records_its_whole_time(tiny, tmp_path, monkeypatch, python_sigint_handler):
    """history.csv's ``seconds`` for an epoch interrupted and resumed counts both parts: the checkpoint carries
    the epoch's seconds so far (here made 1,000 s longer, as a long first part would be), so the row and the
    time-left estimate built on it see the epoch's real pace, not just the part after the resume."""
    run = tmp_path / "split"
    interrupt_at(monkeypatch, [6], how="sigint")  # the 2nd of 5 steps in epoch 2
    with pytest.raises(TrainingInterrupted):
        train(small(tiny, "supervised", "conv", 3), run)
    monkeypatch.undo()
    saved = safe_torch_load(run / "checkpoints/last.pt")
    first_epoch = saved["history"][0]["seconds"]
    assert 0 < saved["epoch_seconds"] <= saved["elapsed"] - first_epoch + 1e-3
    saved["epoch_seconds"] += 1000.0
    saved["elapsed"] += 1000.0
    atomic_torch_save(run / "checkpoints/last.pt", saved)
    train(small(tiny, "supervised", "conv", 3), run, resume=True)
    with open(run / "history.csv", newline="") as handle:
        seconds = [float(row["seconds"]) for row in csv.DictReader(handle)]
    assert seconds[0] == pytest.approx(first_epoch, abs=1e-3)  # finished before the interruption: unchanged
    assert saved["epoch_seconds"] <= seconds[1] < 1060.0  # both parts of epoch 2 (1,000 s + the first part)
    assert seconds[2] < 60.0  # a whole epoch after the resume: nothing carried into it
    ended = safe_torch_load(run / "checkpoints/last.pt")
    assert ended["epoch_seconds"] == 0.0 and ended["elapsed"] == pytest.approx(sum(seconds), abs=0.05)


class Killed(BaseException):
    """Ends a run the way SIGKILL does: no handler runs, nothing more is saved, run_info.json says running."""


def test_a_kill_after_a_timed_mid_epoch_save_resumes_exactly(tiny, tmp_path, monkeypatch):
    """``train.save_every_minutes``: ``last`` is also written between steps, with the epoch's running sums; a
    process killed right after such a save resumes from it and ends bit-identical to an uninterrupted run.
    With the default 10 minutes a run of seconds saves at its epoch ends only."""
    saves: list[tuple[int, int]] = []
    save_last, save_mid_epoch = Trainer.save_last, Trainer._save_mid_epoch

    def record(self):
        save_last(self)
        saves.append((self.epoch, self.batch_in_epoch))

    def save_then_die(self):
        save_mid_epoch(self)  # last.pt, then run_info.json
        if (self.epoch, self.batch_in_epoch) == kill_at:
            raise Killed

    monkeypatch.setattr(Trainer, "save_last", record)
    monkeypatch.setattr(Trainer, "_save_mid_epoch", save_then_die)
    kill_at = None
    whole = train(small(tiny, "supervised", "conv", 2), tmp_path / "whole")
    assert saves == [(1, 0), (2, 0)]  # the default: epoch ends only
    saves.clear()
    kill_at, run, often = (1, 3), tmp_path / "killed", ["train.save_every_minutes=1e-9"]  # after every step
    with pytest.raises(Killed):
        train(small(tiny, "supervised", "conv", 2, often), run)
    assert saves == [(0, 1), (0, 2), (0, 3), (0, 4), (1, 0), (1, 1), (1, 2), (1, 3)]  # not after the last step
    saved = safe_torch_load(run / "checkpoints/last.pt")
    assert (saved["epoch"], saved["batch_in_epoch"], saved["step"]) == (1, 3, STEPS_PER_EPOCH + 3)
    assert saved["partial"]["_n"] == 3.0 and saved["elapsed"] > 0  # the epoch so far: its sums and its time
    assert json.loads((run / "run_info.json").read_text())["status"] == "running"  # as after a real kill
    row = run_status(run)
    assert row.state == "killed" and f"saved in epoch 2, after batch 3 of {STEPS_PER_EPOCH};" in row.next
    kill_at = None
    train(small(tiny, "supervised", "conv", 2, often), run, resume=True)
    assert_identical_runs(whole, run)


@pytest.mark.parametrize("how", ["raise", "update"])
def test_interrupt_inside_a_step_keeps_the_previous_checkpoint(tiny, tmp_path, monkeypatch, how):
    """A KeyboardInterrupt that bypasses the handler (another thread, torchrun) inside a step, after the forward
    pass or inside optimizer.step(): nothing torn is saved; resume replays from the end of epoch 1."""
    whole = train(small(tiny, "supervised", "conv", 3), tmp_path / "whole")
    run = tmp_path / "split"
    interrupt_at(monkeypatch, [7], how=how)
    with pytest.raises(TrainingInterrupted, match="inside a training step at epoch 2.*kept the previous checkpoint"):
        train(small(tiny, "supervised", "conv", 3), run)
    assert safe_torch_load(run / "checkpoints/last.pt")["step"] == STEPS_PER_EPOCH  # end of epoch 1, not torn
    monkeypatch.undo()
    train(small(tiny, "supervised", "conv", 3), run, resume=True)
    assert_identical_runs(whole, run)


SGD = ['train.optimizer="sgd"', "train.lr=0.05", "train.weight_decay=5e-4"]


@pytest.mark.parametrize("objective,extra,step", [
    ("autoencoder", ['train.schedule="onecycle"'], 8),
    ("supervised", ['train.schedule="onecycle"', *SGD], 7),  # one-cycle also cycles SGD's momentum
    ("autoencoder", ['train.schedule="onecycle"', "train.ema_decay=0.9"], 8),
])
def test_scheduled_runs_resume_exactly(tiny, tmp_path, monkeypatch, objective, extra, step):
    whole = train(small(tiny, objective, "conv", 3, extra), tmp_path / "whole")
    run = tmp_path / "split"
    interrupt_at(monkeypatch, [step])
    with pytest.raises(TrainingInterrupted):
        train(small(tiny, objective, "conv", 3, extra), run)
    monkeypatch.undo()
    train(small(tiny, objective, "conv", 3, extra), run, resume=True)
    assert_identical_runs(whole, run)
    saved = safe_torch_load(run / "checkpoints/last.pt")["optimizer"]
    if SGD[0] in extra:  # Nesterov SGD's own state, not Adam's
        assert all("momentum_buffer" in state for state in saved["state"].values())
        assert saved["param_groups"][0]["nesterov"] and saved["param_groups"][0]["weight_decay"] == 5e-4


RESTART = ['train.schedule="onecycle"', "objective.encoder_frozen_from=0.5",
           'objective.encoder_frozen_schedule="restart"']


@pytest.mark.parametrize("step,how", [
    (7, "sigint"),   # mid-epoch in the encoder's schedule (epochs 1-2)
    (10, "raise"),   # first step of the decoder-only epoch: resumes from the encoder schedule's last checkpoint
    (12, "sigint"),  # mid-epoch in the decoder-only schedule
])
def test_a_schedule_restarted_at_the_freeze_resumes_exactly(tiny, tmp_path, monkeypatch, python_sigint_handler,
                                                             step, how):
    whole = train(small(tiny, "autoencoder", "conv", 3, RESTART), tmp_path / "whole")
    run = tmp_path / "split"
    interrupt_at(monkeypatch, [step], how=how)
    with pytest.raises(TrainingInterrupted):
        train(small(tiny, "autoencoder", "conv", 3, RESTART), run)
    monkeypatch.undo()
    train(small(tiny, "autoencoder", "conv", 3, RESTART), run, resume=True)
    assert_identical_runs(whole, run)
    assert safe_torch_load(run / "checkpoints/last.pt")["scheduler_phase"] == [2, 3]


def test_resume_refuses_a_longer_budget_for_a_scheduled_run(tiny, tmp_path):
    run = train(small(tiny, "autoencoder", "mlp", 1, ['train.schedule="cosine"']), tmp_path / "run")
    with pytest.raises(ConfigError, match="cannot change train.epochs from 1 to 3 .*'cosine' learning-rate schedule"):
        train(small(tiny, "autoencoder", "mlp", 3, ['train.schedule="cosine"']), run, resume=True)


def test_resume_refuses_a_different_experiment(tiny, tmp_path, capsys):
    run = train(small(tiny, "autoencoder", "mlp", 1), tmp_path / "run")
    before = (run / "checkpoints/last.pt").read_bytes()
    code = cli.main(["train", "--resume", str(run), "--set", "train.lr=0.1", "--set", "model.latent_dim=8"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "Traceback" not in err
    assert "model.latent_dim = 8 (trained with 16); train.lr = 0.1 (trained with 0.001)" in err
    assert (run / "checkpoints/last.pt").read_bytes() == before


def test_resume_refuses_a_setting_newer_than_the_run(tiny, tmp_path, capsys):
    """A run saved before a key existed ran its default: resuming with another value changes the experiment."""
    run = train(small(tiny, "autoencoder", "mlp", 1), tmp_path / "run")
    state = safe_torch_load(run / "checkpoints/last.pt")
    del state["config"]["train"]["ema_decay"]
    atomic_torch_save(run / "checkpoints/last.pt", state)
    saved = json.loads((run / "config.json").read_text())
    del saved["train"]["ema_decay"]
    (run / "config.json").write_text(json.dumps(saved))
    code = cli.main(["train", "--resume", str(run), "--set", "train.epochs=2", "--set", "train.ema_decay=0.9"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "train.ema_decay = 0.9 (trained with 0.0)" in err


def test_resume_of_a_finished_run_restores_a_lagging_history(tiny, tmp_path):
    """A kill between writing last.pt and history.csv leaves the history one epoch behind; resume repairs it."""
    run = train(small(tiny, "autoencoder", "mlp", 2), tmp_path / "run")
    rows = history_without_seconds(run)
    lines = (run / "history.csv").read_text().splitlines()
    (run / "history.csv").write_text("\n".join(lines[:-1]) + "\n")
    train(small(tiny, "autoencoder", "mlp", 2), run, resume=True)
    assert history_without_seconds(run) == rows


def fake_gpu_checkpoint(path: Path) -> None:
    """Rewrite ``path`` as a GPU run could have saved it: CUDA-only Adam flags (capturable, for CUDA graphs)
    and every storage tagged cuda:0.

    No GPU here, so the storages' location tags are forged at save time; without ``map_location`` torch
    then refuses to load the file on a CPU-only machine, exactly as with a real GPU checkpoint.
    """
    state = safe_torch_load(path)
    for group in state["optimizer"]["param_groups"]:
        group.update(fused=None, foreach=None, capturable=True)
    from torch import serialization

    original = serialization.location_tag
    serialization.location_tag = lambda storage: "cuda:0"
    try:
        atomic_torch_save(path, state)
    finally:
        serialization.location_tag = original


@pytest.mark.skipif(torch.cuda.is_available(), reason="simulates a CPU-only machine")
def test_gpu_checkpoint_resumes_on_cpu(tiny, tmp_path):
    run = train(small(tiny, "supervised", "mlp", 1), tmp_path / "run")
    last = run / "checkpoints/last.pt"
    fake_gpu_checkpoint(last)
    with pytest.raises(RuntimeError, match="CUDA"):  # the forgery works: a plain load fails on this machine
        torch.load(last, weights_only=True)
    assert safe_torch_load(last)["objective"]  # map_location="cpu"
    trainer = Trainer(small(tiny, "supervised", "mlp", 2), RunPaths(run))
    trainer.restore(last)
    group = trainer.optimizer.param_groups[0]
    own = make_optimizer(trainer.objective.parameters(), trainer.cfg, trainer.device).param_groups[0]
    assert all(group[k] == own[k] for k in ("fused", "foreach", "capturable"))  # this machine's kernels
    assert all(s["step"].device.type == "cpu" for s in trainer.optimizer.state.values())
    train(small(tiny, "supervised", "mlp", 2), run, resume=True)
    assert safe_torch_load(last)["epoch"] == 2
