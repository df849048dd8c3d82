"""runtime.py: thread counts beside other work, the CPU's name, device choice, seeds and RNG state."""

import os
import platform
import random
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from latentbench import runtime as rt


def test_auto_threads_leave_busy_cores_alone(monkeypatch):
    monkeypatch.setattr(rt, "usable_cores", lambda: 4)
    for busy, threads in ((0.2, 4), (1.4, 3), (2.6, 1), (9.0, 1)):
        monkeypatch.setattr(rt, "cpus_busy_elsewhere", lambda busy=busy: busy)
        assert rt.eval_threads(0) == threads
    assert rt.eval_threads(3) == 3  # an explicit train.threads wins
    monkeypatch.setattr(rt, "cpus_busy_elsewhere", lambda: None)  # no /proc/stat: the load average
    monkeypatch.setattr(rt.os, "getloadavg", lambda: (2.6, 0.0, 0.0))
    assert rt.eval_threads(0) == 1
    monkeypatch.setattr(rt.os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert rt.eval_threads(0) == 4


def test_cpus_busy_elsewhere_leaves_out_this_process_own_cpu_time(monkeypatch):
    stat = iter([(1000.0, 500.0), (1050.0, 510.0)])  # 2 CPUs, 80% busy over the window: 1.6 CPUs
    own = iter([(3.0, 1.0, 0, 0, 0), (3.08, 1.02, 0, 0, 0)])  # of which this process used 0.1 s in 0.25 s
    monkeypatch.setattr(rt.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(rt, "_cpu_times", lambda cpus: next(stat))
    monkeypatch.setattr(rt.os, "times", lambda: next(own))
    monkeypatch.setattr(rt.time, "sleep", lambda seconds: None)
    assert rt.cpus_busy_elsewhere(0.25) == pytest.approx(1.6 - 0.4)


def test_cpus_busy_elsewhere_reads_this_machine():
    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat on this system")
    busy = rt.cpus_busy_elsewhere(0.05)
    assert busy is not None and 0.0 <= busy <= len(os.sched_getaffinity(0))


def test_cpu_name_keeps_family_and_model_so_hosts_of_one_name_differ(tmp_path):
    block = "processor\t: {n}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(block.format(n=0) + "\n" + block.format(n=1))
    assert rt.cpu_name(cpuinfo) == "AMD EPYC (family 25, model 17)"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\n")
    assert rt.cpu_name(cpuinfo) == "Some CPU"
    cpuinfo.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")  # no model name (some ARM kernels)
    assert rt.cpu_name(cpuinfo) == (platform.processor() or platform.machine())
    assert rt.cpu_name(tmp_path / "missing") == (platform.processor() or platform.machine())


def test_resolve_device_auto_is_cuda_only_when_present_and_a_missing_device_is_a_clear_error():
    assert rt.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert rt.resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is available; use 'auto' or 'cpu'"):
            rt.resolve_device("cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="MPS is not available"):
            rt.resolve_device("mps")


def test_configure_threads_splits_the_usable_cores_between_processes(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(rt, "usable_cores", lambda: 8)
    try:
        assert rt.configure_threads(0) == 8 and torch.get_num_threads() == 8
        assert rt.configure_threads(0, world_size=3) == 2  # torchrun: 8 cores // 3 processes
        assert rt.configure_threads(0, world_size=16) == 1  # never zero
        assert rt.configure_threads(3, world_size=4) == 3  # an explicit train.threads wins
    finally:
        torch.set_num_threads(before)


def test_a_saved_rng_state_replays_the_same_draws_from_python_numpy_and_torch():
    rt.seed_everything(123, deterministic=False)
    state = rt.rng_state()
    first = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    rt.seed_everything(999, deterministic=False)  # move every generator elsewhere
    rt.set_rng_state(state)
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == first
    rt.seed_everything(123, deterministic=False)  # the same seed gives the same draws
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == first


def test_seed_everything_sets_and_clears_the_deterministic_flags():
    try:
        rt.seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        rt.seed_everything(0, deterministic=False)  # the next run in the same process is not left deterministic
        assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("setting", ["auto", "off", "fp16", "bf16"])
def test_never_mixed_precision_on_the_cpu(setting):
    assert rt.amp_dtype(setting, torch.device("cpu")) is None  # bfloat16 is emulated on CPUs, ~300x slower


def test_missing_compiler_names_the_compiler_torch_compile_needs(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-latentbench")
    reason = rt.missing_compiler(torch.device("cpu"))
    if os.name != "nt":
        assert "'no-such-compiler-latentbench'" in reason and "install g++ or clang++" in reason
    assert rt.missing_compiler(torch.device("cuda")) == ""  # on a GPU inductor writes Triton kernels
    monkeypatch.setenv("CXX", f"{sys.executable} --extra-word")  # e.g. "ccache g++": the first word must exist
    assert rt.missing_compiler(torch.device("cpu")) == ""


def test_git_revision_is_the_checkouts_short_hash_and_torchvision_version_is_read():
    import latentbench

    root = Path(latentbench.__file__).resolve().parents[2]
    if (root / ".git").exists() and shutil.which("git"):
        assert re.fullmatch(r"[0-9a-f]{7,40}", rt.git_revision()), rt.git_revision()
    else:  # an installed copy outside a checkout
        assert rt.git_revision() == "unknown"
    import torchvision

    assert rt.torchvision_version() == torchvision.__version__
