"""Losses against slow, obviously correct references."""

import math

import torch
import torch.nn.functional as F

from latentbench.losses import (
    binary_cross_entropy,
    classification_loss,
    nt_xent,
    reconstruction_loss,
    sigmoid_bce,
)


def nt_xent_reference(p1: torch.Tensor, p2: torch.Tensor, temperature: float,
                      decoupled: bool = False) -> torch.Tensor:
    """SimCLR (Chen et al. 2020), Algorithm 1, written as loops over the 2N augmented examples; with
    ``decoupled`` the positive is left out of the denominator (DCL, Yeh et al. 2022, eq. 6)."""
    z = [F.normalize(v, dim=0) for v in torch.cat([p1, p2])]
    n2 = len(z)
    n = n2 // 2

    def sim(i, j):
        return float(torch.dot(z[i], z[j]))

    def ell(i, j):
        numerator = math.exp(sim(i, j) / temperature)
        denominator = sum(math.exp(sim(i, k) / temperature) for k in range(n2)
                          if k != i and not (decoupled and k == j))
        return -math.log(numerator / denominator)

    total = sum(ell(k, k + n) + ell(k + n, k) for k in range(n))
    return torch.tensor(total / n2, dtype=torch.float64)


def test_nt_xent_matches_paper_loop():
    torch.manual_seed(0)
    for n, d, t in [(4, 8, 0.5), (7, 16, 0.1), (2, 3, 1.0)]:
        p1, p2 = torch.randn(n, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)
        assert torch.allclose(nt_xent(p1, p2, t), nt_xent_reference(p1, p2, t), atol=1e-9)


def test_decoupled_nt_xent_matches_loop_reference():
    torch.manual_seed(0)
    for n, d, t in [(4, 8, 0.5), (7, 16, 0.1), (2, 3, 1.0)]:
        p1, p2 = torch.randn(n, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)
        got = nt_xent(p1, p2, t, decoupled=True)
        assert torch.allclose(got, nt_xent_reference(p1, p2, t, decoupled=True), atol=1e-9)
        assert got < nt_xent(p1, p2, t)  # a smaller denominator: always lower than NT-Xent


def test_nt_xent_is_low_for_matching_views_and_high_for_unrelated():
    torch.manual_seed(0)
    p = torch.randn(32, 16)
    assert nt_xent(p, p + 0.01 * torch.randn_like(p), 0.1) < 0.5
    assert nt_xent(p, torch.randn_like(p), 0.1) > 2.0


def test_nt_xent_gradients_flow_to_both_views():
    p1, p2 = torch.randn(8, 4, requires_grad=True), torch.randn(8, 4, requires_grad=True)
    nt_xent(p1, p2, 0.5).backward()
    assert p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0


def test_reconstruction_loss_references():
    x, x_hat = torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4)
    assert torch.isclose(reconstruction_loss(x_hat, x, "l1"), (x_hat - x).abs().sum() / x.numel())
    assert torch.isclose(reconstruction_loss(x_hat, x, "mse"), ((x_hat - x) ** 2).sum() / x.numel())
    assert reconstruction_loss(x, x, "l1") == 0
    assert torch.isclose(reconstruction_loss(x_hat, x, "l1+mse"),
                         reconstruction_loss(x_hat, x, "l1") + reconstruction_loss(x_hat, x, "mse"))
    bce = -(x * torch.log(x_hat) + (1 - x) * torch.log(1 - x_hat)).mean()
    assert torch.isclose(reconstruction_loss(x_hat, x, "bce"), bce, atol=1e-5)



def test_binary_cross_entropy_matches_pytorch_in_value_and_gradients():
    """Against F.binary_cross_entropy of the clamped input, including pixels at exactly 0 and 1 (clamped,
    so no gradient) and soft targets; gradients to both the reconstruction and the target."""
    torch.manual_seed(0)
    x_hat = torch.rand(4, 1, 6, 6, dtype=torch.float64)
    x_hat[0, 0, 0, :3] = torch.tensor([0.0, 1.0, 1e-9])
    x = torch.rand(4, 1, 6, 6, dtype=torch.float64)
    x[1] = (x[1] > 0.5).double()  # hard targets beside soft ones
    a_hat, a = x_hat.clone().requires_grad_(), x.clone().requires_grad_()
    b_hat, b = x_hat.clone().requires_grad_(), x.clone().requires_grad_()
    ours = binary_cross_entropy(a_hat, a)
    theirs = F.binary_cross_entropy(b_hat.clamp(1e-6, 1 - 1e-6), b)
    assert torch.allclose(ours, theirs, rtol=1e-12)
    ours.backward()
    theirs.backward()
    assert torch.allclose(a_hat.grad, b_hat.grad, rtol=1e-9, atol=1e-12)
    assert torch.allclose(a.grad, b.grad, rtol=1e-9, atol=1e-12)
    assert a_hat.grad[0, 0, 0, :3].eq(0).all()  # clamped pixels get no gradient
    assert torch.autograd.gradcheck(lambda t: binary_cross_entropy(t, x), (x_hat.clamp(0.1, 0.9).requires_grad_(),))

def test_sigmoid_bce_matches_bce_with_logits_in_value_and_gradients():
    """Against F.binary_cross_entropy_with_logits in float64, with logits far into both tails (where
    sigmoid rounds to 0 or 1), hard and soft targets, a channels_last layout, and gradients to both."""
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 6, 6, dtype=torch.float64) * 4
    logits[0, 0, 0, :4] = torch.tensor([-60.0, 60.0, -800.0, 800.0])
    x = torch.rand(4, 3, 6, 6, dtype=torch.float64)
    x[1] = (x[1] > 0.5).double()
    for layout in (torch.contiguous_format, torch.channels_last):
        a, a_x = (logits.clone(memory_format=layout).requires_grad_(),
                  x.clone(memory_format=layout).requires_grad_())
        b, b_x = logits.clone().requires_grad_(), x.clone().requires_grad_()
        ours, x_hat = sigmoid_bce(a, a_x)
        theirs = F.binary_cross_entropy_with_logits(b, b_x)
        assert torch.allclose(ours, theirs, rtol=1e-13)
        assert torch.equal(x_hat, torch.sigmoid(logits)) and not x_hat.requires_grad
        ours.backward()
        theirs.backward()
        assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-15)
        assert torch.allclose(a_x.grad, b_x.grad, rtol=1e-10, atol=1e-15)
    small = (torch.randn(2, 5, dtype=torch.float64).requires_grad_(), torch.rand(2, 5, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda t, y: sigmoid_bce(t, y)[0], small)
    # away from the clamp it is the BCE of the probabilities (the `bce` reconstruction loss)
    p = torch.sigmoid(logits[1:])
    assert torch.allclose(sigmoid_bce(logits[1:], x[1:])[0], binary_cross_entropy(p, x[1:]), rtol=1e-10)


def test_classification_loss_reference():
    logits, y = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    manual = -sum(torch.log_softmax(logits[i], 0)[y[i]] for i in range(5)) / 5
    assert torch.isclose(classification_loss(logits, y), manual)
    smooth = classification_loss(logits, y, 0.1)
    target = torch.full((5, 3), 0.1 / 3)
    target[torch.arange(5), y] += 0.9
    assert torch.isclose(smooth, -(target * torch.log_softmax(logits, 1)).sum(1).mean())


def _invariance_reference(z_a, z_b):
    """The definition written out: mean over pairs of the squared distance / total variance of all codes."""
    codes = torch.cat([z_a, z_b]).double()
    mean = codes.mean(0)
    spread = sum(((c - mean) ** 2).sum() for c in codes) / len(codes)
    return sum(((a.double() - b.double()) ** 2).sum() for a, b in zip(z_a, z_b)) / len(z_a) / spread


def test_invariance_loss_matches_the_definition_and_ignores_scale():
    from latentbench.losses import invariance_loss
    torch.manual_seed(0)
    z_a, z_b = torch.randn(32, 8), torch.randn(32, 8)
    assert torch.allclose(invariance_loss(z_a, z_b).double(), _invariance_reference(z_a, z_b), rtol=1e-5)
    assert torch.allclose(invariance_loss(10 * z_a, 10 * z_b), invariance_loss(z_a, z_b), rtol=1e-5)
    assert invariance_loss(z_a, z_a).item() == 0.0
    unrelated = invariance_loss(torch.randn(20_000, 8), torch.randn(20_000, 8)).item()
    assert abs(unrelated - 2.0) < 0.05
    close = invariance_loss(z_a, z_a + 0.1 * torch.randn_like(z_a)).item()
    assert close < 0.05
