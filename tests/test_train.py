"""The training loop and the CLI end to end on synthetic data: run directory contents, early stopping,
batching, seeding, max_steps."""

import csv
import dataclasses
import json

import pytest
import torch

from latentbench.cli import main
from latentbench.config import load_config
from latentbench.data import BatchLoader, ImageData, load_splits, split_train_val
from latentbench.io import safe_torch_load
from latentbench.rundir import RunPaths, read_history
from latentbench.runtime import cpu_name
from latentbench.train import (EarlyStopping, Trainer, averaged_weights, load_objective_weights, make_ema,
                               train)


def test_cli_trains_a_synthetic_run_end_to_end(tmp_path, capsys):
    code = main(["train", "--set", 'data.name="synthetic"', "--set", "data.synthetic_train=300",
                 "--set", "train.epochs=2", "--set", "train.batch_size=64", "--set", "train.threads=1",
                 "--set", 'objective.name="supervised"', "--out", str(tmp_path)])
    assert code == 0
    run = tmp_path / "synthetic_supervised_s0"
    for name in ("config.json", "run_info.json", "history.csv", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["epochs"] == 2 and config["objective"]["name"] == "supervised"
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "finished" and info["epochs_done"] == 2 and info["device"] == "cpu"
    assert info["precision"] == "float32" and info["torch"] == torch.__version__
    assert info["cpu"] == info["device_name"] == cpu_name() and info["cpu"]
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train_loss", "val_acc", "seconds", "lr"} <= set(rows[0])
    state = safe_torch_load(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 2 and "optimizer" in state and "rng" in state
    out = capsys.readouterr().out
    assert "epoch 2" in out
    epoch_lines = [line for line in out.splitlines() if "] epoch " in line]
    assert " left)" in epoch_lines[0] and " left" not in epoch_lines[1]  # the time left, until nothing is


def test_epochs_left_counts_the_step_budget(tiny, tmp_path):
    trainer = Trainer(tiny("supervised", extra=["train.epochs=5", "train.max_steps=12"]), RunPaths(tmp_path / "r"))
    assert len(trainer.loader) == 5  # 400 images less the validation split, full batches of 64
    assert trainer.epochs_left() == 3  # 12 steps = 2.4 epochs of 5: the third, partial epoch counts
    trainer.epoch, trainer.step = 2, 10
    assert trainer.epochs_left() == 1
    trainer.epoch, trainer.step = 3, 12
    assert trainer.epochs_left() == 0
    trainer.cfg.train.max_steps = 0  # the epoch budget alone
    assert trainer.epochs_left() == 2


@pytest.mark.parametrize("objective", ["autoencoder", "supervised", "contrastive"])
def test_training_lowers_the_training_loss(tiny, objective):
    cfg = tiny(objective, extra=["train.epochs=4", "train.patience=0"])
    history = read_history(train(cfg) / "history.csv")
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_early_stopping_stops_and_best_checkpoint_is_the_best_epoch(tiny):
    cfg = tiny("autoencoder", extra=["train.epochs=50", "train.patience=2", "train.lr=0.05"])
    run = train(cfg)
    history = read_history(run / "history.csv")
    assert len(history) < 50
    best = safe_torch_load(run / "checkpoints" / "best.pt")
    maes = [row["val_mae"] for row in history]
    assert best["epoch"] == maes.index(min(maes)) + 1 and best["value"] == pytest.approx(min(maes))
    info = json.loads((run / "run_info.json").read_text())
    assert "early stopping" in info["stop_reason"]


def test_monitor_last_keeps_the_final_epoch_as_the_best_checkpoint(tiny):
    cfg = tiny("contrastive", extra=["train.epochs=4", "train.patience=0", 'train.monitor="last"', "train.lr=0.05"])
    run = train(cfg)
    best = safe_torch_load(run / "checkpoints" / "best.pt")
    last = safe_torch_load(run / "checkpoints" / "last.pt")
    assert best["epoch"] == 4 == last["epoch"]
    assert all(torch.equal(best["objective"][k], last["objective"][k]) for k in last["objective"])
    assert json.loads((run / "run_info.json").read_text())["best_epoch"] == 4
    with pytest.raises(Exception, match="train.patience = 0"):
        train(tiny("contrastive", extra=["train.patience=3", 'train.monitor="last"', 'name="other"']))
    with pytest.raises(ValueError, match="choose one of: last, "):
        train(tiny("contrastive", extra=['train.monitor="acc"', 'name="third"']))


def test_max_steps_is_a_tiny_budget_mode(tiny):
    run = train(tiny("contrastive", extra=["train.max_steps=3", "train.epochs=10"]))
    info = json.loads((run / "run_info.json").read_text())
    assert info["steps"] == 3 and "max_steps" in info["stop_reason"]


def test_same_seed_same_weights_different_seed_different(tiny, tmp_path):
    def weights(seed, name):
        run = train(tiny("contrastive", extra=[f"train.seed={seed}", f'name="{name}"', "train.max_steps=4"]))
        return safe_torch_load(run / "checkpoints" / "last.pt")["objective"]

    a, b, c = weights(1, "a"), weights(1, "b"), weights(2, "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_early_stopping_modes():
    es = EarlyStopping("max", patience=2)
    assert es.update(0.5, 0) and not es.update(0.4, 1) and not es.should_stop
    assert not es.update(0.5, 2) and es.should_stop and es.best_epoch == 0
    assert EarlyStopping("min", 0).update(1.0, 0)


def test_batch_loader_covers_each_image_once_per_epoch_and_reshuffles():
    data = ImageData(torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1), torch.arange(100))
    loader = BatchLoader(data, 10, shuffle=True, drop_last=True, seed=0)
    loader.set_epoch(0)
    first = torch.cat([y for _, y in loader])
    assert sorted(first.tolist()) == list(range(100))
    loader.set_epoch(1)
    second = torch.cat([y for _, y in loader])
    assert not torch.equal(first, second)
    x, _ = next(iter(loader))
    assert x.dtype == torch.float32 and x.max() <= 1.0
    loader.set_epoch(1, start_batch=3)
    assert torch.equal(torch.cat([y for _, y in loader]), second[30:])


def test_batch_loader_shards_each_global_batch_across_ranks():
    data = ImageData(torch.zeros(64, 1, 2, 2, dtype=torch.uint8), torch.arange(64))
    whole = [y for _, y in BatchLoader(data, 16, True, True, seed=3)]
    parts = [[y for _, y in BatchLoader(data, 16, True, True, seed=3, rank=r, world_size=2)] for r in range(2)]
    for b, y in enumerate(whole):
        assert torch.equal(torch.cat([parts[0][b], parts[1][b]]), y)


def test_split_is_deterministic_disjoint_and_sized():
    data = ImageData(torch.zeros(1000, 1, 2, 2, dtype=torch.uint8), torch.arange(1000))
    train_a, val_a = split_train_val(data, 0.1, seed=0)
    train_b, val_b = split_train_val(data, 0.1, seed=0)
    assert len(val_a) == 100 and len(train_a) == 900
    assert torch.equal(val_a.y, val_b.y)
    assert not set(val_a.y.tolist()) & set(train_a.y.tolist())
    assert not torch.equal(split_train_val(data, 0.1, seed=1)[1].y, val_a.y)


def test_synthetic_dataset_spec_and_classes():
    cfg = load_config(None, ['data.name="synthetic"', "data.channels=3", "data.image_size=32",
                             "data.synthetic_train=200", "data.synthetic_test=50"])
    splits = load_splits(cfg.data)
    assert splits.spec.shape == (3, 32, 32) and splits.spec.num_classes == 10
    assert len(splits.train) == 180 and len(splits.val) == 20 and len(splits.test) == 50
    assert splits.train.x.dtype == torch.uint8 and len(splits.spec.mean) == 3


def test_only_train_runs_under_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["list"]) == 2
    assert "only 'train' runs under torchrun" in capsys.readouterr().err.replace("\n", " ")


def test_steps_csv_logs_the_training_loss_every_log_every_steps(tiny):
    run = train(tiny("supervised", extra=["train.log_every=2", "train.epochs=2"]))
    rows = read_history(run / "steps.csv")
    steps_per_epoch = read_history(run / "history.csv")[0]["step"]
    assert [r["step"] for r in rows] == list(range(2, 2 * int(steps_per_epoch) + 1, 2))
    assert all(r["loss"] > 0 and r["lr"] > 0 for r in rows)


def test_training_loop_tells_the_objective_each_epoch_including_after_resume(tiny, monkeypatch):
    from latentbench.objectives import AutoencoderObjective
    seen = []
    monkeypatch.setattr(AutoencoderObjective, "start_epoch",
                        lambda self, epoch, epochs: seen.append((epoch, epochs)))
    run = train(tiny("autoencoder", extra=["train.epochs=2", "train.patience=0"]))
    assert seen == [(0, 2), (1, 2)]
    train(tiny("autoencoder", extra=["train.epochs=3", "train.patience=0"]), run, resume=True)
    assert seen == [(0, 2), (1, 2), (2, 3)]  # the resumed run continues at epoch index 2 of 3


def learning_rates_used(monkeypatch) -> list[float]:
    """The learning rate each training step uses (read inside the step, before the optimizer's update)."""
    seen, watch = [], Trainer._watch_loss

    def watch_and_record(self, loss):
        watch(self, loss)
        seen.append(self.optimizer.param_groups[0]["lr"])

    monkeypatch.setattr(Trainer, "_watch_loss", watch_and_record)
    return seen


@pytest.mark.parametrize("epochs,frozen_from", [(8, 0.625), (5, 0.6), (4, 0.5), (3, 0.1)])
def test_a_restarted_schedule_splits_the_epochs_where_the_objective_freezes_the_encoder(tiny, epochs, frozen_from):
    from latentbench.objectives import build_objective
    from latentbench.train import schedule_phase, schedule_phases
    cfg = tiny("autoencoder", extra=[f"train.epochs={epochs}", 'train.schedule="onecycle"',
                                     f"objective.encoder_frozen_from={frozen_from}",
                                     'objective.encoder_frozen_schedule="restart"'])
    objective = build_objective(load_splits(cfg.data).spec, cfg)
    frozen = []
    for epoch in range(epochs):
        objective.start_epoch(epoch, epochs)
        frozen.append(objective.encoder_frozen)
    first_frozen = frozen.index(True)  # 0.6 x 5 is 3.0000000000000004 in floats: epoch 4, as the objective says
    assert schedule_phases(cfg) == [(0, first_frozen), (first_frozen, epochs)]
    assert [schedule_phase(cfg, e) for e in range(epochs)] == [schedule_phases(cfg)[f] for f in frozen]
    continued = dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective,
                                                                       encoder_frozen_schedule="continue"))
    assert schedule_phases(continued) == [(0, epochs)]


def test_the_encoder_schedule_anneals_before_the_freeze_and_the_decoder_gets_a_fresh_one(tiny, monkeypatch):
    base = ["train.epochs=3", "train.patience=0", 'train.schedule="onecycle"', "train.lr=0.01",
            "objective.encoder_frozen_from=0.5"]  # 3 epochs: the encoder trains in epochs 1-2, the decoder alone in 3
    lrs = {}
    for how in ("continue", "restart"):
        seen = learning_rates_used(monkeypatch)
        train(tiny("autoencoder", extra=[*base, f'objective.encoder_frozen_schedule="{how}"', f'name="{how}"']))
        monkeypatch.undo()
        lrs[how] = seen
    steps = len(lrs["restart"]) // 3  # per epoch
    first, last_encoder_step, first_decoder_step = 0, 2 * steps - 1, 2 * steps
    for how in ("continue", "restart"):
        assert lrs[how][first] == pytest.approx(0.01 / 25)  # one-cycle's start: max_lr / div_factor
    # restart: the encoder's one-cycle ends at its floor (start / 1e4); the decoder's starts over and peaks again
    assert lrs["restart"][last_encoder_step] == pytest.approx(0.01 / 25 / 1e4, rel=0.05)
    assert lrs["restart"][first_decoder_step] == pytest.approx(0.01 / 25)
    assert max(lrs["restart"][first_decoder_step:]) > 0.8 * 0.01  # a 5-step cycle peaks between two steps
    # continue: one cycle over all three epochs, still well above its floor when the encoder freezes
    assert lrs["continue"][last_encoder_step] > 100 * lrs["restart"][last_encoder_step]
    assert max(lrs["continue"][first_decoder_step:]) < lrs["continue"][last_encoder_step]


def test_ema_matches_a_loop_reference_over_weights_and_batchnorm_statistics():
    """train.ema_decay: the first update copies the model; each later one moves every parameter and
    BatchNorm statistic ``1 - decay`` of the way to the model's (the step counter is copied as it is)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    decay, ema = 0.8, make_ema(model, 0.8)
    reference: dict[str, torch.Tensor] = {}
    for step in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(8, 4))  # training mode: BatchNorm's running statistics move too
        ema.update_parameters(model)
        for name, value in model.state_dict().items():
            value = value.detach().clone()
            if step == 0 or not value.is_floating_point():
                reference[name] = value
            else:
                reference[name] = decay * reference[name] + (1 - decay) * value
    averaged = averaged_weights(ema.state_dict())
    assert averaged.keys() == reference.keys()
    for name, value in reference.items():
        if value.is_floating_point():
            torch.testing.assert_close(averaged[name], value, rtol=1e-6, atol=1e-6, msg=name)
    assert make_ema(model, 0.0) is None


def test_ema_run_validates_and_keeps_the_average(tiny, tmp_path):
    """With train.ema_decay the history's validation numbers and best.pt are the average's, not the live
    weights'; evaluation's loader takes the average from last.pt too."""
    extra = ["train.epochs=3", "train.patience=0", 'train.monitor="last"', "train.lr=0.01"]
    run = train(tiny("autoencoder", extra=[*extra, "train.ema_decay=0.9", 'name="ema"']))
    last = safe_torch_load(run / "checkpoints" / "last.pt")
    best = safe_torch_load(run / "checkpoints" / "best.pt")
    average = averaged_weights(last["ema"])
    assert all(torch.equal(best["objective"][k], average[k]) for k in average)
    assert not all(torch.equal(last["objective"][k], average[k]) for k in average)

    plain = Trainer(tiny("autoencoder", extra=[*extra, 'name="plain"']), RunPaths(tmp_path / "plain"))
    val_loss = read_history(run / "history.csv")[-1]["val_loss"]
    load_objective_weights(plain.objective, run / "checkpoints" / "best.pt")
    assert plain.validate()["val_loss"] == pytest.approx(val_loss, rel=1e-5)
    load_objective_weights(plain.objective, run / "checkpoints" / "last.pt")
    assert plain.validate()["val_loss"] != pytest.approx(val_loss, rel=1e-3)
    load_objective_weights(plain.objective, run / "checkpoints" / "last.pt", averaged=True)
    assert plain.validate()["val_loss"] == pytest.approx(val_loss, rel=1e-5)
