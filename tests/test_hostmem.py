"""Host memory: with the heap kept, freeing and re-allocating a large tensor costs no page faults; the defaults
come back on request; the environment switch turns it off. The cases run in fresh interpreters, since the
setting is process-wide (and the training tests in this process turn it on)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from latentbench import hostmem

pytestmark = pytest.mark.skipif(hostmem._libc() is None, reason="needs Linux with glibc")

# In one fresh interpreter: glibc's defaults, then the heap kept, then released once (still kept), then the
# defaults restored. In each phase a 40 MB tensor (10,240 pages) is allocated, filled and freed 16 times,
# and each round's minor page faults are listed. 40 MB is above glibc's largest mmap threshold, so by
# default every round maps, faults in and unmaps fresh pages; with the heap kept, the first rounds grow the
# heap (one to seven of them, seen here: right after the switch glibc may place the block afresh a few
# times before it settles) and the later ones reuse it; the tests look at the last five.
PROBE = """
import json, resource
import torch
from latentbench import hostmem
def faults_of_one_round():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(10 * 1024 * 1024)  # 40 MB of float32
    x.fill_(1.0)
    del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
def phase():
    return {"faults": [faults_of_one_round() for _ in range(16)], "kept": hostmem.kept()}
result = {"default": phase()}
hostmem.keep_freed_memory()
result["kept"] = phase()
hostmem.release_free_memory()
result["released"] = phase()
hostmem.restore_defaults()
result["restored"] = phase()
print(json.dumps(result))
"""


def run_python(code: str, **env: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}, timeout=300)
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def phases() -> dict:
    result = json.loads(run_python(PROBE))
    if min(result["default"]["faults"]) < 1000:
        pytest.skip(f"this kernel/libc maps 40 MB blocks without per-page faults ({result['default']})")
    return result


def test_kept_heap_reuses_freed_memory_without_page_faults(phases):
    assert not phases["default"]["kept"] and phases["kept"]["kept"]
    one_round = min(phases["default"]["faults"])
    assert max(phases["kept"]["faults"][-5:]) < one_round / 100, phases


def test_release_hands_the_free_memory_back_and_keeps_the_setting(phases):
    one_round = min(phases["default"]["faults"])
    assert phases["released"]["kept"]
    assert phases["released"]["faults"][0] > one_round / 2, phases  # faulted in again after the release
    assert max(phases["released"]["faults"][-5:]) < one_round / 100, phases  # and kept from then on


def test_restore_defaults_gives_the_memory_back_again(phases):
    assert not phases["restored"]["kept"]
    assert phases["restored"]["faults"][0] > min(phases["default"]["faults"]) / 2, phases  # handed back


def test_environment_switch_turns_it_off():
    code = "from latentbench import hostmem; print(hostmem.keep_freed_memory(), hostmem.kept())"
    assert run_python(code, **{hostmem.ENV_SWITCH: "0"}) == "False False"
    assert run_python(code, **{hostmem.ENV_SWITCH: "1"}) == "True True"
