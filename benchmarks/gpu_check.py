"""The one prepared GPU check: what a session with a lent GPU runs, in a single call of under 10 minutes.

Here, once, on a machine that holds the offline data (writes .gpu_data/, git-ignored, about 31 MB):
    .venv/bin/python benchmarks/gpu_check.py --pack ../shared/data
On the GPU machine (its own python3 holds PyTorch; nothing needs installing; carry .gpu_data):
    python3 benchmarks/gpu_check.py --data-archives .gpu_data --out "$OUT" --budget 540
Here, to check the script itself on synthetic data in seconds (tests/test_benchmarks.py does):
    .venv/bin/python benchmarks/gpu_check.py --smoke --out /tmp/gpu_check

The stages run in priority order, each under a time cap and all under ``--budget`` seconds, so that what
finished always comes back (a capped training run gets SIGTERM, saves its history and stops):

  env              the GPU, PyTorch and CUDA versions
  smoke            20 steps of the supervised recipe: the CUDA path (autocast, channels_last, fused
                   optimizer, on-device data and augmentation) runs end to end
  supervised_wide  configs/cifar10_supervised.toml (max pools) at twice its widths, 64-128-256-512, 80
                   epochs (issue 8: whether width still pays; ~4x the recipe's ~3.2 h on a 2-core Zen 3 host)
  supervised_eval  its end-to-end accuracy (plain and flip test-time augmentation)
  throughput       benchmarks/throughput.py --device cuda --quick (issue 5: images/second on a GPU)
  contrastive_wide configs/cifar10_contrastive.toml at widths 64-128-256-512 (issue 8: the contrastive
                   row; twice the width gained 1.8 pt of linear probe at 5 epochs on the CPU)
  contrastive_eval its linear probe and kNN

Everything lands in ``--out``: ``gpu_check.log`` (every command and all its output), ``summary.json`` (per
stage: command, return code, seconds, whether it was capped) and ``runs.tar.gz`` (each run directory's
config, run_info, history and metrics: no checkpoints, which would exceed what a device call returns).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHIVES = {"cifar10-jpeg.tar.gz": ["cifar10-jpeg"], "mnist.tar.gz": ["MNIST/raw"]}
RUN_FILES = ("config.json", "run_info.json", "history.csv", "metrics.json")
SMOKE_DATA = ['data.name="synthetic"', "data.channels=3", "data.image_size=32", "data.synthetic_train=256",
              "data.synthetic_test=128", "train.device=cpu", "train.threads=1"]
SMOKE_TRAIN = ["train.epochs=1", "train.max_steps=2", "train.batch_size=64"]  # smoke stage: its own 20 steps
SMOKE_EVAL = ["eval.batch_size=128", "eval.probe_epochs=2", "eval.probe_views=0"]
SMOKE_CAP_S = 240  # smoke: the caps only catch a hang (a busy CPU took 91 s for the 36 s eval stage, imports and all)


@dataclass
class Stage:
    name: str
    argv: list[str]
    cap_s: float  # at most this long; less when the budget runs short
    min_s: float = 10.0  # skipped when less than this is left of the budget


def latentbench(*args: str) -> list[str]:
    return [sys.executable, "-m", "latentbench", *args]


def with_sets(argv: list[str], sets: list[str]) -> list[str]:
    return argv + [part for s in sets for part in ("--set", s)]


def plan(runs: Path, smoke: bool) -> list[Stage]:
    """The stages in priority order. ``smoke``: the same commands on synthetic data, a few steps each, on
    the CPU, each capped at :data:`SMOKE_CAP_S` at least (the GPU caps fit the device time, not a CPU)."""
    data = SMOKE_DATA if smoke else []
    short = SMOKE_TRAIN if smoke else []
    evals = SMOKE_EVAL if smoke else []
    env_probe = ("import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda); "
                 "print('device', torch.cuda.get_device_name(0) "
                 "if torch.cuda.is_available() else 'none (CPU)')")
    throughput = [sys.executable, str(ROOT / "benchmarks" / "throughput.py")]

    def train(name: str, config: str, sets: list[str]) -> list[str]:  # the run directory: runs/<name>
        return with_sets(latentbench("train", config, "--out", str(runs)), data + [f'name="{name}"'] + sets)

    def evaluate(name: str, only: str) -> list[str]:
        return with_sets(latentbench("eval", str(runs / name), "--only", only), evals)

    stages = [
        Stage("env", [sys.executable, "-c", env_probe], cap_s=60),
        Stage("smoke", train("smoke", "configs/cifar10_supervised.toml",
                             ["train.epochs=1", "train.max_steps=20"] + short[2:]), cap_s=120),
        Stage("supervised_wide", train("supervised_wide", "configs/cifar10_supervised.toml",
                                       ["model.conv_widths=[64,128,256,512]"] + short), cap_s=270, min_s=120),
        Stage("supervised_eval", evaluate("supervised_wide", "e2e,e2e_flip"), cap_s=60),
        Stage("throughput", throughput + (["--help"] if smoke else
                                          ["--device", "cuda", "--quick", "--no-tsne", "--no-memory",
                                           "--workers", "8", "--json", str(runs / "throughput.json")]),
              cap_s=120, min_s=60),
        Stage("contrastive_wide", train("contrastive_wide", "configs/cifar10_contrastive.toml",
                                        ["model.conv_widths=[64,128,256,512]"] + short),
              cap_s=240, min_s=120),
        Stage("contrastive_eval", evaluate("contrastive_wide", "probe_linear,knn"), cap_s=90),
    ]
    if smoke:
        stages = [dataclasses.replace(stage, cap_s=max(stage.cap_s, SMOKE_CAP_S)) for stage in stages]
    return stages


def run_stage(stage: Stage, seconds: float, log, env: dict[str, str]) -> dict:
    """Run ``stage.argv`` from the repository root for at most ``seconds``; SIGTERM at the cap (latentbench
    takes it as Ctrl-C: the trainer saves and stops), a kill 30 s later. Not SIGINT: a shell that starts a
    command in the background (``nohup ... &``, a non-interactive job runner) leaves SIGINT ignored in it, so
    the trainer would keep training until the kill and lose the epoch in flight."""
    log.write(f"\n===== {stage.name}: {' '.join(stage.argv)}  (cap {seconds:.0f} s)\n")
    log.flush()
    start = time.monotonic()
    proc = subprocess.Popen(stage.argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    capped = False
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        capped = True
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    seconds = round(time.monotonic() - start, 1)
    log.write(f"===== {stage.name}: rc {proc.returncode}, {seconds} s{' (capped)' if capped else ''}\n")
    log.flush()
    return {"command": " ".join(stage.argv), "returncode": proc.returncode, "seconds": seconds,
            "capped": capped}


def unpack(archives: Path, into: Path) -> None:
    for name in ARCHIVES:
        with tarfile.open(archives / name) as tar:
            tar.extractall(into, filter="data")


def pack(data_root: Path, archives: Path) -> None:
    """``data_root`` (MNIST/raw and cifar10-jpeg, as in ../shared/data) -> one .tar.gz per dataset in
    ``archives``."""
    missing = [m for members in ARCHIVES.values() for m in members if not (data_root / m).is_dir()]
    if missing:
        raise SystemExit(f"gpu_check: '{data_root}' has no {', '.join(missing)}; "
                         "point --pack at the data root")
    archives.mkdir(parents=True, exist_ok=True)
    for name, members in ARCHIVES.items():
        with tarfile.open(archives / name, "w:gz") as tar:
            for member in members:
                tar.add(data_root / member, arcname=member)
        print(f"{archives / name}: {(archives / name).stat().st_size / 1e6:.1f} MB")


def bundle_runs(runs: Path, target: Path) -> None:
    """The small files of every run directory under ``runs`` (and the benchmark's JSON) into one archive."""
    with tarfile.open(target, "w:gz") as tar:
        for path in sorted(runs.rglob("*")):
            if path.is_file() and (path.name in RUN_FILES or path.parent == runs):
                tar.add(path, arcname=str(path.relative_to(runs)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="the log, summary.json and runs.tar.gz go here ($OUT on the GPU)")
    p.add_argument("--budget", type=float, default=540, help="seconds for all stages together")
    p.add_argument("--data-archives", type=Path,
                   help="a folder written by --pack (unpacked into a temporary data root)")
    p.add_argument("--smoke", action="store_true", help="synthetic data, a few steps per stage, on the CPU")
    p.add_argument("--only", default="", help="comma-separated stage names (default: all)")
    p.add_argument("--pack", type=Path, metavar="DATA_ROOT",
                   help="write the data archives to .gpu_data and exit")
    args = p.parse_args(argv)
    if args.pack:
        pack(args.pack, ROOT / ".gpu_data")
        return 0
    if args.out is None:
        p.error("--out is required")
    deadline = time.monotonic() + args.budget
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    python_path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": python_path, "PYTHONUNBUFFERED": "1"}
    stages = plan(work / "runs", args.smoke)
    wanted = {s for s in args.only.split(",") if s}
    unknown = wanted - {s.name for s in stages}
    if unknown:  # before the data is unpacked, and leaving no temporary folder behind
        shutil.rmtree(work, ignore_errors=True)
        p.error(f"unknown stage(s) {sorted(unknown)}; the stages: {', '.join(s.name for s in stages)}")
    if args.data_archives:
        unpack(args.data_archives, work / "data")
        env["LATENTBENCH_DATA"] = str(work / "data")
    summary: dict[str, dict] = {}
    with open(args.out / "gpu_check.log", "w") as log:
        for stage in stages:
            if wanted and stage.name not in wanted:
                continue
            left = deadline - time.monotonic()
            if left < stage.min_s:
                summary[stage.name] = {"skipped": f"{left:.0f} s of the budget left, "
                                                  f"under its {stage.min_s:.0f} s"}
            else:
                summary[stage.name] = run_stage(stage, min(stage.cap_s, left), log, env)
            (args.out / "summary.json").write_text(json.dumps(summary, indent=1))  # a kill loses none
    if (work / "runs").is_dir():
        bundle_runs(work / "runs", args.out / "runs.tar.gz")
    shutil.rmtree(work, ignore_errors=True)  # the unpacked data and the checkpoints: what matters is in --out
    failed = [name for name, r in summary.items()
              if r.get("returncode") not in (0, None) and not r.get("capped")]
    print(json.dumps(summary, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
