"""oneDNN linear layers: the same outputs and gradients as nn.Linear, the same state dict, a safe fallback."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentbench import onednn

pytestmark = pytest.mark.skipif(not onednn.supported(), reason="this torch has no oneDNN linear op")


@pytest.fixture(autouse=True)
def switched_on(monkeypatch):
    """These tests check the oneDNN path itself, whatever this CPU's default (``auto``) would pick."""
    monkeypatch.setenv(onednn.ENV_SWITCH, "1")


def twins(bias: bool = True) -> tuple[nn.Linear, nn.Linear]:
    torch.manual_seed(0)
    plain = nn.Linear(37, 19, bias=bias)
    fast = nn.Linear(37, 19, bias=bias)
    fast.load_state_dict(plain.state_dict())
    assert onednn.enable(fast, min_weights=0) == 1
    return plain, fast


@pytest.mark.parametrize("shape", [(8, 37), (2, 5, 37), (37,)])
@pytest.mark.parametrize("bias", [True, False])
def test_outputs_and_gradients_match_nn_linear(shape, bias):
    plain, fast = twins(bias)
    x = torch.randn(shape)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = plain(xa), fast(xb)
    assert ya.shape == yb.shape and torch.allclose(ya, yb, atol=1e-5)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    assert torch.allclose(xa.grad, xb.grad, atol=1e-5)
    for p, q in zip(plain.parameters(), fast.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-4)


def test_state_dict_and_type_are_kept():
    plain, fast = twins()
    assert isinstance(fast, nn.Linear) and type(fast) is onednn.OneDNNLinear
    assert plain.state_dict().keys() == fast.state_dict().keys()


def test_other_dtypes_fall_back_to_f_linear():
    plain, fast = twins()
    x = torch.randn(4, 37, dtype=torch.float64)
    assert torch.allclose(plain.double()(x), fast.double()(x))


def test_frozen_input_needs_no_input_gradient():
    _, fast = twins()
    fast(torch.randn(4, 37)).sum().backward()
    assert fast.weight.grad is not None and fast.bias.grad is not None


def test_environment_switch_turns_it_off(monkeypatch):
    monkeypatch.setenv(onednn.ENV_SWITCH, "0")
    layer = nn.Linear(3, 2)
    assert onednn.enable(layer, min_weights=0) == 0 and type(layer) is nn.Linear


@pytest.mark.parametrize("capability,expected",
                         [("AVX512", 1), ("AVX512_BF16", 1), ("AVX2", 0), ("DEFAULT", 0)])
def test_auto_uses_onednn_only_on_avx512_cpus(monkeypatch, capability, expected):
    monkeypatch.setenv(onednn.ENV_SWITCH, "auto")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    layer = nn.Linear(3, 2)
    assert onednn.enable(layer, min_weights=0) == expected
    monkeypatch.delenv(onednn.ENV_SWITCH)  # unset means auto too
    assert onednn.available() == bool(expected)


def test_enable_counts_nested_layers_and_skips_subclasses():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 2)), nn.Conv2d(1, 1, 1))
    assert onednn.enable(model, min_weights=0) == 2
    assert onednn.enable(model, min_weights=0) == 0  # already switched


def test_compiled_module_falls_back_and_still_trains():
    plain, fast = twins()
    compiled = torch.compile(fast)
    x = torch.randn(8, 37)
    y = compiled(x)
    assert torch.allclose(y, plain(x), atol=1e-5)
    y.sum().backward()
    assert fast.weight.grad is not None


@pytest.mark.parametrize("make_input", [
    lambda: torch.randn(37, 8).t(),  # a transposed (non-contiguous) input
    lambda: torch.randn(8, 74)[:, ::2],  # a strided slice
])
def test_non_contiguous_inputs_and_expanded_gradients_match_nn_linear(make_input):
    plain, fast = twins()
    x = make_input()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    plain(xa).sum().backward()  # sum's backward hands the layer an expanded (stride-0) gradient
    fast(xb).sum().backward()
    assert torch.allclose(xa.grad, xb.grad, atol=1e-5)
    for p, q in zip(plain.parameters(), fast.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-4)


def test_training_sized_products_match_nn_linear():
    """The sizes of the MNIST encoder's first layer, where oneDNN picks its blocked kernels."""
    torch.manual_seed(1)
    plain = nn.Linear(784, 256)
    fast = nn.Linear(784, 256)
    fast.load_state_dict(plain.state_dict())
    assert onednn.enable(fast) == 1
    x = torch.rand(128, 784)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(128, 256)
    plain(xa).backward(g)
    fast(xb).backward(g)
    assert torch.allclose(xa.grad, xb.grad, atol=1e-4)
    for p, q in zip(plain.parameters(), fast.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-3)


def test_small_layers_stay_with_the_default_kernel():
    model = nn.Sequential(nn.Linear(784, 256), nn.Linear(256, 128), nn.Linear(128, 128), nn.Linear(128, 64))
    assert onednn.enable(model) == 2
    assert [type(m) is onednn.OneDNNLinear for m in model] == [True, True, False, False]
