"""Training throughput of latentbench against the naive reference, alternating in one run; prints Markdown.

    LATENTBENCH_DATA=../shared/data .venv/bin/python benchmarks/throughput.py            # full (~10 min, 2 cores)
    LATENTBENCH_DATA=../shared/data .venv/bin/python benchmarks/throughput.py --quick    # ~3 min
    ... throughput.py --cases cifar10_contrastive --rounds 7 --no-tsne --no-memory
    ... throughput.py --compile --cases mnist_autoencoder,cifar10_autoencoder           # torch.compile payback

For every dataset x objective of the report (the recipes in ``configs/``) it builds latentbench's real
``Trainer`` (uint8 data on the device, batched augmentation, channels_last, foreach Adam) and the
reference of ``naive_reference.py`` (torchvision datasets, per-sample PIL transforms, DataLoader with 2
workers, plain Adam, the same model classes), warms both up, then times a fixed number of steps of each
in alternation (latentbench, reference, latentbench, ...) and reports the ratio of the median images/s.
Also: FLOPs per image (``torch.utils.flop_counter.FlopCounterMode`` on one step), achieved GFLOP/s
against the machine's measured fp32 matmul peak (the best median of big ``torch.mm`` timings), peak memory
(resident set on CPU: each side in a fresh subprocess; allocated device memory on CUDA) and t-SNE seconds
for 5,000 points (openTSNE vs scikit-learn, with the trustworthiness of both maps).

On a shared machine the load average is printed with the table: other processes on the same cores slow
multi-threaded CPU work unevenly, so compare the ratios (measured side by side), not absolute numbers.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from naive_reference import NaiveRun  # noqa: E402

from latentbench import hostmem, onednn, plots  # noqa: E402
from latentbench.config import EvalConfig, RunConfig, load_config  # noqa: E402
from latentbench.data import Splits, load_splits  # noqa: E402
from latentbench.rundir import RunPaths  # noqa: E402
from latentbench.runtime import cpu_name, usable_cores  # noqa: E402
from latentbench.train import Trainer  # noqa: E402

CASES = ["mnist_autoencoder", "mnist_supervised", "mnist_contrastive",
         "cifar10_autoencoder", "cifar10_supervised", "cifar10_contrastive"]
TARGETS = {"mnist": 5.0, "cifar10_contrastive": 3.0, "cifar10": 1.5}  # the speed-up targets
STEPS = {"mnist": 100, "cifar10": 16}  # timed steps per round (full run); --quick divides them
TSNE_POINTS = 5000
# The report's architectures (its MLP 784-256-128-128 for MNIST; the narrow four-conv encoder for CIFAR-10,
# strided as every table before session 35 measured it), which the targets refer to; --models recipe
# keeps the configs' own encoders instead (max pools in the autoencoder and supervised recipes since 33-34).
REPORT_MODELS = ["model.mlp_hidden=[256, 128]", "model.conv_widths=[32, 64, 128, 256]",
                 'model.conv_downsample="stride"']


def target_for(case: str) -> float:
    return TARGETS.get(case, TARGETS[case.split("_")[0]])


# ------------------------------------------------------------------------------------------- machine
def machine(device: torch.device) -> str:
    parts = [f"{cpu_name()}, {usable_cores()} usable cores, torch {torch.__version__} "
             f"({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads"]
    if device.type == "cuda":
        parts.append(torch.cuda.get_device_name(device))
    return "; ".join(parts)


def load_average() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


class OtherLoad:
    """Share of the machine's CPU time that *other* processes used while this one was measuring.

    Busy time of all cores from /proc/stat minus this process's and its reaped children's CPU time, over
    the elapsed core-seconds; ~0% on an idle machine. (Linux only; None elsewhere.)
    """

    def __enter__(self) -> "OtherLoad":
        self.start = self._sample()
        return self

    def __exit__(self, *exc) -> None:
        end = self._sample()
        self.share = None
        if self.start and end:
            wall = end[0] - self.start[0]
            busy = end[1] - self.start[1]
            mine = end[2] - self.start[2]
            self.share = max(0.0, (busy - mine) / (wall * usable_cores()))

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        tick = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        t = os.times()
        return time.monotonic(), (sum(fields[:8]) - idle) / tick, t.user + t.system + t.children_user + t.children_system


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, sizes=(1024, 2048, 4096), repeats: int = 5) -> tuple[float, int]:
    """Best median fp32 ``torch.mm`` GFLOP/s over a few square sizes, and the size that gave it."""
    best = (0.0, 0)
    for n in sizes:
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        torch.mm(a, b)
        times = []
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            torch.mm(a, b)
            sync(device)
            times.append(time.perf_counter() - start)
        best = max(best, (2 * n**3 / statistics.median(times) / 1e9, n))
    return best


def conv_peak(device: torch.device, repeats: int = 5) -> float:
    """Median GFLOP/s of one big 3x3 convolution (oneDNN on CPU, cuDNN on GPU), channels_last fp32.

    On AMD CPUs MKL's sgemm (behind ``torch.mm``) may take a narrower vector path than oneDNN's
    convolutions, so the conv rate can exceed the "matmul peak"; both are printed.
    """
    x = torch.randn(64, 256, 16, 16, device=device).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
    torch.nn.functional.conv2d(x, w, padding=1)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        torch.nn.functional.conv2d(x, w, padding=1)
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * 64 * 16 * 16 * 256 * 256 * 9 / statistics.median(times) / 1e9


# --------------------------------------------------------------------------------------------- runs
class _Quiet:
    def update(self, n: int) -> None:
        pass

    def set_postfix(self, **kwargs) -> None:
        pass


class LatentbenchRun:
    """latentbench's own ``Trainer`` (the code path of ``latentbench train``), driven step-exactly."""

    def __init__(self, cfg: RunConfig, splits: Splits, run_dir: Path):
        cfg.train.log_every = 10**9
        self.trainer = Trainer(cfg, RunPaths(run_dir), splits)

    def _train(self, n: int) -> None:
        t = self.trainer
        goal = t.step + n
        while t.step < goal:
            t.cfg.train.max_steps = goal
            t.train_epoch(_Quiet())
            if t.batch_in_epoch >= len(t.loader):
                t.epoch, t.batch_in_epoch = t.epoch + 1, 0

    def steps(self, n: int, warmup: int = 0) -> float:
        self._train(warmup)
        sync(self.trainer.device)
        start = time.perf_counter()
        self._train(n)  # train_epoch ends with a host sync (its float() of the running sums)
        return time.perf_counter() - start

    def flops_per_image(self) -> float:
        from torch.utils.flop_counter import FlopCounterMode

        t = self.trainer
        batch = next(iter(t.loader))
        model = copy.deepcopy(t.objective).train()
        for layer in model.modules():  # the counter knows aten's matmuls, not oneDNN's fused linear op
            if isinstance(layer, onednn.OneDNNLinear):
                layer.__class__ = torch.nn.Linear
        counter = FlopCounterMode(display=False)
        with counter:
            loss, _ = model(batch)
            loss.backward()
        return counter.get_total_flops() / batch[0].shape[0]


def make_config(case: str, overrides: list[str]) -> RunConfig:
    return load_config(ROOT / "configs" / f"{case}.toml", overrides)


# ------------------------------------------------------------------------------------------- memory
def peak_rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(side: str, case: str, overrides: list[str]) -> None:
    """Run a few steps of one side in this fresh process; print its peak resident memory as JSON."""
    cfg = make_config(case, overrides)
    if side == "latentbench":
        with tempfile.TemporaryDirectory() as tmp:
            LatentbenchRun(cfg, load_splits(cfg.data), Path(tmp)).steps(3, warmup=1)
        print(json.dumps({"peak_mb": peak_rss_mb()}))
        return
    run = NaiveRun(cfg)
    iterator = iter(run.loader())
    for _ in range(4):
        run.step(next(iterator))
    workers = [peak_rss_mb(w.pid) for w in iterator._workers]
    print(json.dumps({"peak_mb": peak_rss_mb(), "workers_mb": workers}))


def measure_memory(side: str, case: str, overrides: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--memory-child", side, "--cases", case, *sum((["--set", o] for o in overrides), [])]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------- cases
@dataclass
class CaseResult:
    case: str
    batch: int
    lb_ips: list[float] = field(default_factory=list)
    ref_ips: list[float] = field(default_factory=list)
    flops_per_image: float = 0.0
    memory: dict = field(default_factory=dict)
    other_load: float | None = None

    @property
    def lb(self) -> float:
        return statistics.median(self.lb_ips)

    @property
    def ref(self) -> float:
        return statistics.median(self.ref_ips) if self.ref_ips else float("nan")

    def row(self, peak: float) -> str:
        gflops = self.flops_per_image * self.lb / 1e9
        mem = self.memory
        lb_mem = f"{mem['latentbench']['peak_mb']:.0f}" if "peak_mb" in mem.get("latentbench", {}) else "-"
        ref = mem.get("reference", {})
        ref_mem = (f"{ref['peak_mb']:.0f} + {'+'.join(f'{w:.0f}' for w in ref.get('workers_mb', []))}"
                   if "peak_mb" in ref else "-")
        if "device_mb" in mem:
            lb_mem, ref_mem = f"{mem['device_mb'][0]:.0f}", f"{mem['device_mb'][1]:.0f}"
        ratio = self.lb / self.ref
        ok = "yes" if ratio >= target_for(self.case) else "**no**"
        return (f"| {self.case} | {self.lb:,.0f} | {self.ref:,.0f} | **{ratio:.1f}x** | {target_for(self.case):g}x "
                f"{ok} | {self.flops_per_image / 1e6:.1f} | {gflops:.0f} | {100 * gflops / peak:.0f}% | "
                f"{lb_mem} | {ref_mem} | {_percent(self.other_load)} |")


def wait_for_quiet(limit_s: float, threshold: float = 0.15) -> None:
    """Wait (up to ``limit_s``) until other processes use less than ``threshold`` of the CPU over 3 s."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        with OtherLoad() as other:
            time.sleep(3)
        if other.share is None or other.share < threshold:
            return
        print(f"  waiting: other processes use {100 * other.share:.0f}% of the CPU", file=sys.stderr, flush=True)


def _percent(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.0f}%"


def bench_case(case: str, splits: dict, args, device: torch.device, tmp: Path) -> CaseResult:
    cfg = make_config(case, args.set)
    dataset = cfg.data.name
    if dataset not in splits:
        splits[dataset] = load_splits(cfg.data)
    steps = max(2, STEPS[dataset] // (3 if args.quick else 1)) if not args.steps else args.steps
    lb = LatentbenchRun(cfg, splits[dataset], tmp / case)
    ref = NaiveRun(make_config(case, args.set), device=str(device), workers=args.workers)
    result = CaseResult(case, cfg.train.batch_size)
    result.flops_per_image = lb.flops_per_image()
    lb.steps(0, warmup=max(3, steps // 4))
    wait_for_quiet(args.wait_quiet)
    with OtherLoad() as other:
        for _ in range(args.rounds):
            hostmem.keep_freed_memory()  # latentbench's setting for its own steps (Trainer turns it on)
            time.sleep(args.settle)
            result.lb_ips.append(steps * result.batch / lb.steps(steps))
            hostmem.restore_defaults()  # the reference runs with glibc's defaults, as a plain script would
            time.sleep(args.settle)
            result.ref_ips.append(steps * result.batch / ref.steps(steps, warmup=2))
            print(f"  {case}: latentbench {result.lb_ips[-1]:,.0f} img/s, reference {result.ref_ips[-1]:,.0f} "
                  f"img/s (load {load_average()})", file=sys.stderr, flush=True)
    result.other_load = other.share
    if device.type == "cuda":
        result.memory["device_mb"] = _cuda_peaks(lb, ref, device)
    elif not args.no_memory:
        result.memory = {side: measure_memory(side, case, args.set) for side in ("latentbench", "reference")}
    return result


def _cuda_peaks(lb: LatentbenchRun, ref: NaiveRun, device: torch.device) -> tuple[float, float]:
    peaks = []
    for run in (lb, ref):
        torch.cuda.reset_peak_memory_stats(device)
        run.steps(3, warmup=0) if run is lb else run.steps(3, warmup=1)
        peaks.append(torch.cuda.max_memory_allocated(device) / 2**20)
    return peaks[0], peaks[1]


# --------------------------------------------------------------------------------------------- t-SNE
def tsne_bench(points: int, seed: int = 0) -> dict:
    """latentbench's t-SNE map (``plots.tsne_map``: the settings ``latentbench eval`` uses) vs scikit-learn's
    TSNE with its defaults, on the same MNIST test images (784-d pixels), timed and scored alike."""
    from sklearn.manifold import TSNE, trustworthiness
    from torchvision.datasets import MNIST

    from latentbench.data import resolve_root

    test = MNIST(str(resolve_root("")), train=False, download=False)
    gen = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(test.data), generator=gen)[:points]
    pixels = test.data[index].reshape(points, -1).float() / 255
    x = pixels.numpy()
    jobs = usable_cores()
    ev = EvalConfig()
    start = time.perf_counter()
    fast = plots.tsne_map(pixels, ev.tsne_perplexity, ev.tsne_iters, seed, n_jobs=jobs)
    t_fast = time.perf_counter() - start
    start = time.perf_counter()
    slow = TSNE(perplexity=ev.tsne_perplexity, init="pca", random_state=seed, n_jobs=jobs).fit_transform(x)
    t_slow = time.perf_counter() - start
    k = 10
    return {"points": points, "opentsne_s": t_fast, "sklearn_s": t_slow,
            "opentsne_trust": trustworthiness(x, fast, n_neighbors=k),
            "sklearn_trust": trustworthiness(x, slow, n_neighbors=k), "k": k,
            "settings": TSNE_SETTINGS}


# What plots.tsne_map does with the evaluation's defaults (docs/evaluation.md: the measurements behind each).
TSNE_SETTINGS = (f"PCA to 50 dimensions, exact neighbours, 250 early-exaggeration + {EvalConfig().tsne_iters} "
                 f"iterations, FFT gradients with {plots.FFT_INTERPOLATION_POINTS} interpolation points from "
                 f"{plots.FFT_FROM_POINTS:,} points (Barnes-Hut below)")


# ------------------------------------------------------------------------------------------ compile
def compile_case(case: str, splits: dict, args, tmp: Path) -> str:
    """Eager vs torch.compile'd latentbench training: compile seconds, per-step speed-up, 20-epoch payback."""
    cfg_eager, cfg_comp = make_config(case, args.set), make_config(case, [*args.set, "train.compile=true"])
    dataset = cfg_eager.data.name
    if dataset not in splits:
        splits[dataset] = load_splits(cfg_eager.data)
    eager = LatentbenchRun(cfg_eager, splits[dataset], tmp / f"{case}_eager")
    comp = LatentbenchRun(cfg_comp, splits[dataset], tmp / f"{case}_compiled")
    eager.steps(0, warmup=5)
    wait_for_quiet(args.wait_quiet)
    with OtherLoad() as other:
        first = comp.steps(3)  # includes compilation (forward and backward graphs)
        steps = args.compile_steps
        t_eager, t_comp = [], []
        for _ in range(args.rounds):
            t_eager.append(eager.steps(steps) / steps)
            t_comp.append(comp.steps(steps) / steps)
    e, c = statistics.median(t_eager), statistics.median(t_comp)
    compile_s = first - 3 * c
    per_epoch = len(eager.trainer.loader)
    epochs = cfg_eager.train.epochs
    saved = epochs * per_epoch * (e - c) - compile_s
    payback = compile_s / (e - c) if e > c else float("inf")
    return (f"| {case} | {compile_s:.1f} | {e * 1e3:.1f} | {c * 1e3:.1f} | {e / c:.2f}x | "
            f"{payback:,.0f} | {epochs * per_epoch:,} | {saved:+.0f} s | {_percent(other.share)} |")


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a third of the steps, 3 rounds, 2,000 t-SNE points")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated config names from configs/")
    parser.add_argument("--rounds", type=int, default=0, help="alternating rounds (default 5, quick 3)")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per round (default per dataset)")
    parser.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    parser.add_argument("--settle", type=float, default=1.0, metavar="SECONDS",
                        help="pause before each timed block, so that neither side starts while the other's "
                             "threads or worker processes are still winding down")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--models", choices=("report", "recipe"), default="report",
                        help="report: the report's encoders, strided 32-64-128-256 convs (default; what the "
                             "targets refer to); recipe: the encoders in configs/")
    parser.add_argument("--set", action="append", default=[], help="config override for both sides")
    parser.add_argument("--no-tsne", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--tsne-points", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="measure torch.compile instead of the reference")
    parser.add_argument("--compile-steps", type=int, default=50, help="timed steps per round for --compile")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before each case wait up to this long for other processes to leave the CPU idle")
    parser.add_argument("--json", default="", help="also write the results to this file")
    parser.add_argument("--memory-child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.set = [*(REPORT_MODELS if args.models == "report" else []), *args.set, f'train.device="{args.device}"']
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if args.memory_child:
        memory_child(args.memory_child, cases[0], args.set)
        return
    device = torch.device(args.device)
    torch.set_num_threads(usable_cores())
    command = "python benchmarks/throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
    wait_for_quiet(args.wait_quiet)
    load_before = load_average()
    peak, peak_n = matmul_peak(device)
    conv = conv_peak(device)
    splits: dict = {}
    lines = [f"Machine: {machine(device)}.", f"Command: `{command}`; load average before: {load_before}.",
             f"Measured fp32 matmul peak: {peak:.0f} GFLOP/s (torch.mm {peak_n}x{peak_n}); one big 3x3 "
             f"convolution: {conv:.0f} GFLOP/s.", ""]
    results = {"machine": machine(device), "matmul_peak_gflops": peak, "conv_gflops": conv, "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        if args.compile:
            lines += ["| case | compile s | eager ms/step | compiled ms/step | speed-up | steps to pay back | "
                      "steps in 20 epochs | net over 20 epochs | CPU used by others |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for case in cases:
                lines.append(compile_case(case, splits, args, Path(tmp)))
                print(lines[-1], file=sys.stderr, flush=True)
        else:
            lines += ["| case | latentbench img/s | reference img/s | speed-up | target | MFLOP/img | "
                      "latentbench GFLOP/s | of matmul peak | peak MB latentbench | peak MB reference (main + "
                      "workers) | CPU used by others |", "|---|---|---|---|---|---|---|---|---|---|---|"]
            for case in cases:
                r = bench_case(case, splits, args, device, Path(tmp))
                results["cases"][case] = {"latentbench_ips": r.lb_ips, "reference_ips": r.ref_ips,
                                          "ratio": r.lb / r.ref, "flops_per_image": r.flops_per_image,
                                          "memory": r.memory, "other_load": r.other_load}
                lines.append(r.row(peak))
    if not args.compile and not args.no_tsne:
        points = args.tsne_points or (2000 if args.quick else TSNE_POINTS)
        t = tsne_bench(points)
        results["tsne"] = t
        lines += ["", f"t-SNE of {t['points']:,} MNIST test images (784-d pixels): latentbench (openTSNE) "
                  f"{t['opentsne_s']:.1f} s (trustworthiness@{t['k']} {t['opentsne_trust']:.4f}) vs "
                  f"scikit-learn {t['sklearn_s']:.1f} s ({t['sklearn_trust']:.4f}); latentbench's settings: "
                  f"{TSNE_SETTINGS}."]
    lines.append(f"\nLoad average after: {load_average()} (1 / 5 / 15 min; {usable_cores()} cores).")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
