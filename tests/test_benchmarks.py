"""The benchmark scripts' own arithmetic (the scripts themselves are run by hand, not in the test suite)."""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
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
