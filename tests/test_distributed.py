"""torchrun / DDP on CPU with gloo: 2 processes x batch 64 must train exactly like 1 process x batch 128.

One ``torchrun --standalone --nproc_per_node=2`` launch of this file (see ``_rank_main``) runs every
distributed check once, for the whole module, and leaves each rank's results in a JSON file:

* ``latentbench train`` through the CLI's ``main``, which joins the gloo group from torchrun's
  environment exactly as ``torchrun -m latentbench train`` does (the slow test runs that command itself,
  then ``latentbench eval`` and ``report`` on its run directory);
* the cross-rank NT-Xent (gathered negatives) and :class:`CPUSyncBatchNorm`, forward and gradients,
  against the one-process computation on the concatenated batch;
* the training loop (``latentbench.train.train``) for each objective; the one-process reference runs the
  same configs in the pytest process, and histories (per-step train loss, validation statistics) and
  final weights must agree to float tolerance;
* which rank wrote files or printed (only rank 0 may).

Making the two settings comparable: every epoch is one optimizer step (180 training images, global
batch 128, drop_last), so each history row is one step's loss. Dropout is 0 (its masks would come from
per-rank RNG streams); views are un-augmented (``objective.augment = "none"``) for the same reason -
the gathered negatives still make the 2x64 loss differ from two separate 64-batches, which the
NT-Xent check asserts. BatchNorm uses global statistics (``train.sync_batchnorm = "on"``), without which
2x64 normalises with different statistics than 1x128; PyTorch's ``nn.SyncBatchNorm`` rejects CPU
tensors, so this exercises latentbench's gloo version.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_config, wait_until
from latentbench import distributed, hostmem
from latentbench.distributed import CPUSyncBatchNorm
from latentbench.losses import nt_xent
from latentbench.rundir import read_history
from latentbench.train import train

WORLD = 2
TIMEOUT_S = 120
_SMALL_CONV = ["model.conv_widths=[8,8,16,16]", "model.latent_dim=16", "objective.proj_hidden=32",
               "objective.proj_dim=16"]
# name -> (objective, channels, image side, overrides): MLP paths without BatchNorm, conv paths with it.
CASES = {
    "autoencoder": ("autoencoder", 1, 28, []),
    "supervised": ("supervised", 1, 28, ["model.classifier_dropout=0.0"]),
    "supervised_conv_bn": ("supervised", 3, 16, ["model.classifier_dropout=0.0", 'train.sync_batchnorm="on"',
                                                 *_SMALL_CONV]),
    "contrastive": ("contrastive", 3, 16, ['objective.augment="none"', 'train.sync_batchnorm="on"', *_SMALL_CONV]),
}
# Weights left out of the comparison: the contrastive encoder's last bias feeds the projector's
# bias-free Linear + BatchNorm, which subtracts any constant shift of z, so its gradient is exactly zero
# and Adam turns float noise (~1e-8) into +-lr steps that differ between any two summation orders; that
# BatchNorm's running mean follows the shift. Training-mode outputs do not change; in evaluation mode
# the running mean lags the shift (momentum 0.1), which can move validation statistics by ~1e-4.
ZERO_GRADIENT = {"contrastive": {"encoder.fc.bias", "projector.net.1.running_mean"}}
COMMON = ["data.synthetic_train=200", "train.batch_size=128", "train.epochs=3", "train.patience=0"]
# The run made through the CLI: contrastive, MLP encoder, BatchNorm in the projector (synced), 2 steps.
CLI_SETS = ['data.name="synthetic"', "data.synthetic_train=200", "data.synthetic_test=200", "train.epochs=2",
            "train.batch_size=128", 'objective.name="contrastive"', 'objective.augment="none"',
            'train.sync_batchnorm="on"', 'model.encoder="conv"', "model.conv_widths=[8,16,16,32]", "train.patience=0", "train.threads=1", "eval.probe_epochs=2",
            "eval.decoder_probe_epochs=1", "eval.tsne_points=100", "eval.tsne_iters=10",
            "eval.silhouette_points=100", "eval.alignment_points=100", "eval.trust_points=100", 'name="tr"']


def case_config(root: Path, name: str):
    objective, channels, size, extra = CASES[name]
    return tiny_config(root, objective, channels, size, [*COMMON, *extra, f'name="{name}"'])


# ------------------------------------------------------------------------------ what each rank runs
def views(seed: int = 0, n: int = 8, d: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


def bn_input(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, 4, 4, generator=g) * 3 + 1, torch.randn(8, 3, 4, 4, generator=g)


def bn_layer() -> torch.nn.BatchNorm2d:
    layer = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
        layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    return layer


def _rank_nt_xent(rank: int) -> dict:
    p1, p2 = views()
    n = p1.shape[0] // WORLD
    a = p1[rank * n:(rank + 1) * n].clone().requires_grad_()
    b = p2[rank * n:(rank + 1) * n].clone().requires_grad_()
    loss = nt_xent(a, b, 0.5, gather=distributed.gather_with_grad, rank=rank)
    loss.backward()
    local = nt_xent(a.detach(), b.detach(), 0.5)
    return {"loss": loss.item(), "local_loss": local.item(), "grad1": a.grad.tolist(), "grad2": b.grad.tolist()}


def _rank_sync_bn(rank: int) -> dict:
    x_all, w_all = bn_input()
    n = x_all.shape[0] // WORLD
    x = x_all[rank * n:(rank + 1) * n].clone().requires_grad_()
    layer = distributed.convert_sync_batchnorm(torch.nn.Sequential(bn_layer()), torch.device("cpu"))[0]
    assert isinstance(layer, CPUSyncBatchNorm)
    y = layer(x)
    (y * w_all[rank * n:(rank + 1) * n]).sum().backward()
    return {"y": y.tolist(), "x_grad": x.grad.tolist(), "weight_grad": layer.weight.grad.tolist(),
            "bias_grad": layer.bias.grad.tolist(), "running_mean": layer.running_mean.tolist(),
            "running_var": layer.running_var.tolist()}


def _rank_main(out: Path) -> None:
    """What each process of the torchrun launch in :func:`world` runs; results go to ``out/rank{R}.json``."""
    import latentbench.io as lio
    from latentbench.cli import main as cli_main

    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    writes: list[str] = []
    real_write = lio._atomic_write

    def recording_write(path, write):  # every run-directory file goes through io._atomic_write
        writes.append(str(path))
        return real_write(path, write)

    lio._atomic_write = recording_write
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        # first, so that latentbench itself joins the process group from torchrun's environment
        cli_rc = cli_main(["train", "--out", str(out / "cli"), *[a for s in CLI_SETS for a in ("--set", s)]])
        result: dict = {"cli_rc": cli_rc, "backend": str(distributed.dist.get_backend()),
                        "nt_xent": _rank_nt_xent(rank), "sync_bn": _rank_sync_bn(rank)}
        for name in CASES:
            train(case_config(out / "ddp", name))
    lio._atomic_write = real_write
    result.update(writes=writes, stdout=printed.getvalue(), cli_run=str(out / "cli" / "tr"),
                  run_dirs={name: str(out / "ddp" / name) for name in CASES})
    (out / f"rank{rank}.json").write_text(json.dumps(result))


def torchrun(args: list[str], timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 ARGS`` on CPU, one thread per process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    torchrun([__file__, str(out)])
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


def single_process_run(root: Path, name: str) -> Path:
    return train(case_config(root, name))


# ------------------------------------------------------------------------------------------- tests
def test_cross_rank_nt_xent_equals_one_process_loss_and_gradients(world):
    ranks = world
    p1, p2 = (v.requires_grad_() for v in views())
    full = nt_xent(p1, p2, 0.5)
    full.backward()
    losses = [r["nt_xent"]["loss"] for r in ranks]
    assert sum(losses) / WORLD == pytest.approx(full.item(), rel=1e-6)
    # each rank's backward sums every rank's loss gradient into its own rows; DDP then averages over ranks
    grad1 = torch.tensor(sum((r["nt_xent"]["grad1"] for r in ranks), [])) / WORLD
    grad2 = torch.tensor(sum((r["nt_xent"]["grad2"] for r in ranks), [])) / WORLD
    torch.testing.assert_close(grad1, p1.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad2, p2.grad, rtol=1e-5, atol=1e-7)
    # without the gather each rank contrasts 4 images instead of 8: a different loss
    local = sum(r["nt_xent"]["local_loss"] for r in ranks) / WORLD
    assert abs(local - full.item()) > 1e-2


def test_cpu_sync_batchnorm_equals_batchnorm_on_the_global_batch(world):
    ranks = world
    x_all, w_all = bn_input()
    x_all.requires_grad_()
    layer = bn_layer()
    y = layer(x_all)
    (y * w_all).sum().backward()
    torch.testing.assert_close(torch.tensor(sum((r["sync_bn"]["y"] for r in ranks), [])), y.detach())
    torch.testing.assert_close(torch.tensor(sum((r["sync_bn"]["x_grad"] for r in ranks), [])), x_all.grad,
                               rtol=1e-5, atol=1e-6)
    weight_grad = sum(torch.tensor(r["sync_bn"]["weight_grad"]) for r in ranks)
    bias_grad = sum(torch.tensor(r["sync_bn"]["bias_grad"]) for r in ranks)
    torch.testing.assert_close(weight_grad, layer.weight.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bias_grad, layer.bias.grad, rtol=1e-5, atol=1e-6)
    for r in ranks:  # both ranks keep the global running statistics (unbiased variance)
        torch.testing.assert_close(torch.tensor(r["sync_bn"]["running_mean"]), layer.running_mean)
        torch.testing.assert_close(torch.tensor(r["sync_bn"]["running_var"]), layer.running_var)


def test_sync_batchnorm_state_dict_loads_into_plain_batchnorm():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    model[1].running_mean.fill_(0.25)
    synced = distributed.convert_sync_batchnorm(model, torch.device("cpu"))
    assert isinstance(synced[1], CPUSyncBatchNorm) and synced[1].running_mean is model[1].running_mean
    plain = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    plain.load_state_dict(synced.state_dict())
    assert plain[1].running_mean.eq(0.25).all()


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_train_like_one(world, tmp_path, name):
    ranks = world
    two = Path(ranks[0]["run_dirs"][name])
    one = single_process_run(tmp_path, name)
    rows_two, rows_one = read_history(two / "history.csv"), read_history(one / "history.csv")
    assert len(rows_one) == len(rows_two) == 3 and [r["step"] for r in rows_two] == [1, 2, 3]
    keys = [k for k in rows_one[0] if k.startswith(("train_", "val_"))]
    assert "train_loss" in keys and "val_loss" in keys
    for a, b in zip(rows_one, rows_two):
        for k in keys:
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (name, a["epoch"], k)
    assert rows_one[0]["train_loss"] != pytest.approx(rows_one[-1]["train_loss"], rel=1e-3)  # it did train
    w_one = torch.load(one / "checkpoints" / "last.pt", weights_only=True)["objective"]
    w_two = torch.load(two / "checkpoints" / "last.pt", weights_only=True)["objective"]
    assert w_one.keys() == w_two.keys()
    for k in set(w_one) - ZERO_GRADIENT.get(name, set()):  # Adam: float noise in a ~0 gradient moves ~lr
        torch.testing.assert_close(w_two[k].float(), w_one[k].float(), rtol=1e-4, atol=1e-4, msg=lambda m, k=k: f"{name}: {k}: {m}")
    info = json.loads((two / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["backend"] == "gloo" and info["batch_per_process"] == 64
    assert info["sync_batchnorm"] == ("sync_batchnorm" in " ".join(CASES[name][3]))
    assert json.loads((one / "run_info.json").read_text())["world_size"] == 1


def test_only_rank_zero_writes_or_prints(world):
    ranks = world
    assert ranks[1]["writes"] == [] and ranks[1]["stdout"] == ""
    written = {Path(p).name for p in ranks[0]["writes"]}
    assert {"config.json", "run_info.json", "history.csv", "last.pt", "best.pt"} <= written
    assert ranks[0]["stdout"].count("epoch 1:") == len(CASES) + 1  # + the CLI run


def test_run_info_records_device_and_precision_and_never_amp_on_cpu(tiny, tmp_path):
    run = train(tiny("autoencoder", extra=['train.amp="bf16"', "train.epochs=1"]))
    info = json.loads((run / "run_info.json").read_text())
    assert info["device"] == "cpu" and info["precision"] == "float32" and info["world_size"] == 1
    assert info["backend"] == "none" and info["sync_batchnorm"] is False
    assert info["host_heap_kept"] is hostmem.available()  # a CPU run keeps freed memory (hostmem.py)


def test_sync_batchnorm_policy():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert distributed.use_sync_batchnorm("auto", "contrastive", gpu, 2)
    assert not distributed.use_sync_batchnorm("auto", "supervised", gpu, 2)
    assert not distributed.use_sync_batchnorm("auto", "contrastive", cpu, 2)
    assert distributed.use_sync_batchnorm("on", "autoencoder", cpu, 2)
    assert not distributed.use_sync_batchnorm("on", "contrastive", gpu, 1)
    assert not distributed.use_sync_batchnorm("off", "contrastive", gpu, 8)


def test_batch_loader_gives_each_rank_a_contiguous_share_of_every_global_batch():
    from latentbench.data import BatchLoader, ImageData

    data = ImageData(torch.arange(8, dtype=torch.uint8).view(8, 1, 1, 1), torch.zeros(8, dtype=torch.long))

    def pixels(rank: int = 0, world: int = 1) -> torch.Tensor:
        loader = BatchLoader(data, 4, shuffle=True, drop_last=True, seed=3, rank=rank, world_size=world)
        return torch.cat([x.flatten() for x, _ in loader])

    whole, rank0, rank1 = pixels(), pixels(0, 2), pixels(1, 2)
    assert not torch.equal(whole, torch.arange(8.0) / 255)  # shuffled
    # rank 0 holds the first half of every global batch of 4, rank 1 the second half
    assert torch.equal(torch.cat([rank0[:2], rank1[:2], rank0[2:], rank1[2:]]), whole)
    with pytest.raises(ValueError, match="divisible"):
        BatchLoader(data, 5, shuffle=False, drop_last=True, rank=0, world_size=2)


def test_compile_option_wraps_the_step_module(tiny, tmp_path):
    from latentbench.rundir import RunPaths
    from latentbench.train import Trainer

    trainer = Trainer(tiny("supervised", extra=["train.compile=true"]), RunPaths(tmp_path / "run"))
    assert type(trainer.step_module).__name__ == "OptimizedModule"
    assert trainer.step_module._orig_mod is trainer.objective


def test_compile_without_a_cxx_compiler_trains_eagerly_and_says_so(tiny, tmp_path, monkeypatch, capsys):
    from latentbench.rundir import RunPaths
    from latentbench.train import Trainer

    monkeypatch.setenv("CXX", "no-such-compiler-for-latentbench")
    trainer = Trainer(tiny("supervised", extra=["train.compile=true"]), RunPaths(tmp_path / "run"))
    assert trainer.step_module is trainer.objective  # not wrapped: the first step would fail to compile
    assert "no-such-compiler-for-latentbench" in capsys.readouterr().err


def test_torchrun_cli_run_dir_is_a_single_process_run_dir(world, tmp_path):
    """Same files, same checkpoint layout (no DDP 'module.' prefixes), same numbers as one process."""
    from latentbench.config import load_config

    assert [r["cli_rc"] for r in world] == [0, 0] and world[0]["backend"] == "gloo"
    run = Path(world[0]["cli_run"])
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "finished" and info["world_size"] == WORLD and info["epochs_done"] == 2
    assert info["device"] == "cpu" and info["precision"] == "float32" and info["sync_batchnorm"] is True
    with contextlib.redirect_stdout(io.StringIO()):
        one = train(load_config(None, [*CLI_SETS, f'out_dir="{tmp_path}"']))
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())  # noqa: E731
    assert files(run) == files(one)
    assert json.loads((run / "config.json").read_text()) == {**json.loads((one / "config.json").read_text()),
                                                             "out_dir": str(run.parent)}
    for name in ("last.pt", "best.pt"):
        a = torch.load(one / "checkpoints" / name, weights_only=True)["objective"]
        b = torch.load(run / "checkpoints" / name, weights_only=True)["objective"]
        assert [(k, v.shape) for k, v in a.items()] == [(k, v.shape) for k, v in b.items()]
    for a, b in zip(read_history(one / "history.csv"), read_history(run / "history.csv")):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-3)  # see ZERO_GRADIENT


def test_sigterm_under_torchrun_stops_every_rank_at_one_step_and_saves_last(tmp_path):
    """SIGTERM to torchrun's agent (as a scheduler sends it), which forwards it to the ranks: they agree on one
    step boundary, rank 0 saves 'last' there and records the run as interrupted, and it resumes. Before it,
    rank 0 alone saves 'last' mid-epoch every few steps (train.save_every_minutes), the other rank training
    on without waiting for it."""
    import signal

    from latentbench import cli
    from latentbench.io import safe_torch_load
    from latentbench.train import STOP_CHECK_STEPS

    sets = [*CLI_SETS, "train.epochs=100000", "data.synthetic_train=4000", "train.batch_size=32", 'name="term"',
            "train.save_every_minutes=0.001"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}", "-m",
           "latentbench", "train", "--out", str(tmp_path), *[a for s in sets for a in ("--set", s)]]
    agent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    run = tmp_path / "term"
    wait_until(agent, (run / "history.csv").is_file, TIMEOUT_S)

    def saved_mid_epoch() -> bool:
        try:
            return json.loads((run / "run_info.json").read_text()).get("batch_in_epoch", 0) > 0
        except (OSError, ValueError):
            return False

    wait_until(agent, saved_mid_epoch, TIMEOUT_S)
    agent.send_signal(signal.SIGTERM)
    err = agent.communicate(timeout=TIMEOUT_S)[1]
    assert "all ranks stop at the next agreed step" in err, err[-4000:]
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "interrupted" and info["stop_reason"].startswith("stopped by SIGTERM"), err[-4000:]
    saved = safe_torch_load(run / "checkpoints" / "last.pt")
    assert saved["step"] % STOP_CHECK_STEPS == 0 or saved["batch_in_epoch"] == 0  # an agreed boundary
    assert f"step {saved['step']};" in info["stop_reason"] or saved["batch_in_epoch"] == 0
    epochs = saved["epoch"] + 1
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["train", "--resume", str(run), "--set", f"train.epochs={epochs}"]) == 0
    assert safe_torch_load(run / "checkpoints" / "last.pt")["epoch"] == epochs


@pytest.mark.slow
def test_torchrun_command_trains_then_eval_and_report_run_once(tmp_path):
    """The literal ``torchrun ... -m latentbench train``; then ``latentbench eval`` and ``report`` without torchrun."""
    done = torchrun(["-m", "latentbench", "train", "--out", str(tmp_path), *[a for s in CLI_SETS for a in ("--set", s)]])
    assert done.stdout.count("epoch 1:") == 1 and done.stdout.count("epoch 2:") == 1  # rank 0 alone prints
    run = tmp_path / "tr"
    assert json.loads((run / "run_info.json").read_text())["world_size"] == WORLD
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    evaluated = subprocess.run([sys.executable, "-m", "latentbench", "eval", str(run)], capture_output=True,
                               text=True, timeout=600, env=env)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["metrics"]
    reported = subprocess.run([sys.executable, "-m", "latentbench", "report", str(tmp_path)], capture_output=True,
                              text=True, timeout=300, env=env)
    assert reported.returncode == 0, reported.stderr[-3000:]
    assert "report.html" in reported.stdout


if __name__ == "__main__":  # one process of the torchrun launch in ``world``
    _rank_main(Path(sys.argv[1]))
