"""oneDNN linear layers: the same outputs and gradients as nn.Linear, the same state dict, a safe fallback."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentbench import onednn

pytestmark = pytest.mark.skipif(not onednn.available(), reason="this torch has no oneDNN linear op")


def twins(bias: bool = True) -> tuple[nn.Linear, nn.Linear]:
    torch.manual_seed(0)
    plain = nn.Linear(37, 19, bias=bias)
    fast = nn.Linear(37, 19, bias=bias)
    fast.load_state_dict(plain.state_dict())
    assert onednn.enable(fast) == 1
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
    assert onednn.enable(layer) == 0 and type(layer) is nn.Linear


def test_enable_counts_nested_layers_and_skips_subclasses():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 2)), nn.Conv2d(1, 1, 1))
    assert onednn.enable(model) == 2
    assert onednn.enable(model) == 0  # already switched


def test_compiled_module_falls_back_and_still_trains():
    plain, fast = twins()
    compiled = torch.compile(fast)
    x = torch.randn(8, 37)
    y = compiled(x)
    assert torch.allclose(y, plain(x), atol=1e-5)
    y.sum().backward()
    assert fast.weight.grad is not None
