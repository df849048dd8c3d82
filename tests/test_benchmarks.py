"""The benchmark scripts' own arithmetic and the prepared GPU check's plan (the benchmarks themselves are run by
hand, not in the test suite)."""

import importlib.util
import json
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("variant", ["union", "phases"])
@pytest.mark.parametrize("c_in,c_out,side", [(5, 3, 4), (4, 7, 5)])
def test_subpixel_rewrites_equal_the_transposed_convolution(variant, c_in, c_out, side):
    bench = _load("transposed_conv")
    torch.manual_seed(0)
    x = torch.randn(2, c_in, side, side, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(c_in, c_out, 4, 4, dtype=torch.float64, requires_grad=True)
    expected = F.conv_transpose2d(x, weight, stride=2, padding=1)
    got = getattr(bench, variant)(x, weight)
    assert got.shape == expected.shape == (2, c_out, 2 * side, 2 * side)
    torch.testing.assert_close(got, expected)
    grad_out = torch.randn_like(expected)
    grads_expected = torch.autograd.grad(expected, (x, weight), grad_out)
    grads_got = torch.autograd.grad(got, (x, weight), grad_out)
    for g, e in zip(grads_got, grads_expected):
        torch.testing.assert_close(g, e)


def test_throughput_report_models_are_the_reports_encoders_whatever_the_recipes_say():
    throughput = _load("throughput")
    report = throughput.parse_args([])
    recipe = throughput.parse_args(["--models", "recipe"])
    for case in throughput.CASES:
        model = throughput.make_config(case, report.set).model
        assert model.latent_dim == 128
        if case.startswith("mnist"):
            assert list(model.mlp_hidden) == [256, 128]
        else:
            assert (list(model.conv_widths), model.conv_downsample) == ([32, 64, 128, 256], "stride")
    # the recipes' own encoders differ (max pools since sessions 33-34): the pin above is what keeps them apart
    assert throughput.make_config("cifar10_supervised", recipe.set).model.conv_downsample == "maxpool"


def test_gpu_check_smoke_runs_the_training_and_evaluation_stages_and_returns_their_files(tmp_path):
    """The prepared GPU check on synthetic data, on the CPU: every command of the plan it would run on a GPU
    (config keys, run names, evaluation stages) works, and the run files come back in one archive."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--smoke", "--out", str(out),
                           "--only", "supervised_wide,supervised_eval"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [summary[s]["returncode"] for s in ("supervised_wide", "supervised_eval")] == [0, 0]
    assert set(summary) == {"supervised_wide", "supervised_eval"}
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = set(tar.getnames())
        metrics = json.load(tar.extractfile("supervised_wide/metrics.json"))
        config = json.load(tar.extractfile("supervised_wide/config.json"))
    assert {"supervised_wide/history.csv", "supervised_wide/run_info.json"} <= names
    assert not any(name.endswith(".pt") for name in names)  # checkpoints stay behind
    assert config["model"]["conv_widths"] == [64, 128, 256, 512]  # twice the recipe's widths, with its max pools
    assert config["model"]["conv_downsample"] == "maxpool"
    assert "e2e" in json.dumps(metrics)


def test_gpu_check_caps_a_stage_with_sigterm_and_skips_what_the_budget_cannot_hold(tmp_path):
    bench = _load("gpu_check")
    # a stand-in for latentbench, which takes SIGTERM as Ctrl-C: saves, says so, exits 143
    stopper = ("import signal, sys, time\n"
               "def stop(signum, frame):\n"
               "    print('stopped by SIGTERM; saved', flush=True)\n"
               "    sys.exit(143)\n"
               "signal.signal(signal.SIGTERM, stop)\n"
               "time.sleep(60)\n")
    stage = bench.Stage("sleeper", [sys.executable, "-c", stopper], cap_s=1)
    with open(tmp_path / "log", "w") as log:
        result = bench.run_stage(stage, 1.0, log, env=None)
    assert result["capped"] and result["returncode"] == 143 and result["seconds"] < 30
    assert "stopped by SIGTERM; saved" in (tmp_path / "log").read_text()

    code = bench.main(["--smoke", "--out", str(tmp_path / "out"), "--budget", "5", "--only", "supervised_wide"])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert code == 0 and "skipped" in summary["supervised_wide"]  # 5 s left, under its 120 s minimum


def test_gpu_check_caps_a_stage_started_from_a_background_shell_without_waiting_for_the_kill(tmp_path):
    """``nohup cmd &`` (and non-interactive job runners) start commands with SIGINT ignored, which a child
    inherits: a cap by Ctrl-C went unheard until the kill 30 s later (CI run in the background, session 36)."""
    bench = _load("gpu_check")
    stage = bench.Stage("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], cap_s=1)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # what the background shell hands down
    try:
        with open(tmp_path / "log", "w") as log:
            result = bench.run_stage(stage, 1.0, log, env=None)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert result["capped"] and result["returncode"] == -signal.SIGTERM and result["seconds"] < 30


def test_gpu_check_packs_and_unpacks_the_data_archives(tmp_path, monkeypatch):
    bench = _load("gpu_check")
    root = tmp_path / "data"
    (root / "MNIST" / "raw").mkdir(parents=True)
    (root / "MNIST" / "raw" / "train-labels-idx1-ubyte").write_bytes(b"\x00\x01")
    (root / "cifar10-jpeg" / "train" / "cat").mkdir(parents=True)
    (root / "cifar10-jpeg" / "train" / "cat" / "0001.jpg").write_bytes(b"\xff\xd8jpeg")
    monkeypatch.setattr(bench, "ROOT", tmp_path / "repo")
    assert bench.main(["--pack", str(root)]) == 0
    bench.unpack(tmp_path / "repo" / ".gpu_data", tmp_path / "unpacked")
    assert (tmp_path / "unpacked" / "MNIST" / "raw" / "train-labels-idx1-ubyte").read_bytes() == b"\x00\x01"
    assert (tmp_path / "unpacked" / "cifar10-jpeg" / "train" / "cat" / "0001.jpg").read_bytes() == b"\xff\xd8jpeg"
    with pytest.raises(SystemExit, match="has no cifar10-jpeg, MNIST/raw"):  # a wrong data root is named, not half-packed
        bench.main(["--pack", str(root / "MNIST")])
