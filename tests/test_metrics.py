"""Metrics and probes against trusted references (scikit-learn, slow loops written from the papers)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from latentbench import metrics, probes
from latentbench.models import ClassifierHead


def _clusters(n_per: int, classes: int, dim: int, spread: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=gen) * 5
    y = torch.arange(classes).repeat_interleave(n_per)
    z = centres[y] + spread * torch.randn(len(y), dim, generator=gen)
    perm = torch.randperm(len(y), generator=gen)
    return z[perm], y[perm]


# ------------------------------------------------------------------------------------------------ kNN
def test_knn_uniform_matches_sklearn_cosine():
    from sklearn.neighbors import KNeighborsClassifier

    gen = torch.Generator().manual_seed(1)
    bank, bank_y = torch.randn(300, 16, generator=gen), torch.randint(0, 5, (300,), generator=gen)
    query = torch.randn(120, 16, generator=gen)
    ours = metrics.knn_predict(bank, bank_y, query, k=7, temperature=0.1, num_classes=5, weighted=False, chunk=50)
    ref = KNeighborsClassifier(n_neighbors=7, metric="cosine", weights="uniform", algorithm="brute")
    ref.fit(bank.numpy(), bank_y.numpy())
    assert (ours.numpy() == ref.predict(query.numpy())).mean() == 1.0


def _knn_weighted_slow(bank, bank_y, query, k, t, classes):
    preds = []
    for q in query:
        sims = [float(torch.dot(q, b) / (q.norm() * b.norm())) for b in bank]
        order = sorted(range(len(bank)), key=lambda i: -sims[i])[:k]
        score = [0.0] * classes
        for i in order:
            score[int(bank_y[i])] += math.exp(sims[i] / t)
        preds.append(max(range(classes), key=lambda c: (score[c], -c)))
    return torch.tensor(preds)


def test_knn_weighted_matches_slow_loop():
    gen = torch.Generator().manual_seed(2)
    bank, bank_y = torch.randn(80, 6, generator=gen), torch.randint(0, 4, (80,), generator=gen)
    query = torch.randn(30, 6, generator=gen)
    ours = metrics.knn_predict(bank, bank_y, query, k=9, temperature=0.2, num_classes=4, chunk=7)
    assert torch.equal(ours, _knn_weighted_slow(bank, bank_y, query, 9, 0.2, 4))


def test_knn_separable_and_shuffled():
    z, y = _clusters(60, 5, 8, spread=0.5)
    q, qy = _clusters(20, 5, 8, spread=0.5, seed=0)
    assert metrics.knn_accuracy(z, y, q, qy, 20, 0.07, 5) == 1.0
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(3))]
    assert metrics.knn_accuracy(z, shuffled, q, qy, 20, 0.07, 5) < 0.45  # chance is 0.2


# ------------------------------------------------------------------------------------------ silhouette
def test_silhouette_matches_sklearn():
    from sklearn.metrics import silhouette_score

    z, y = _clusters(40, 4, 5, spread=3.0, seed=4)
    y[0] = 4  # a class with a single member scores 0, as in scikit-learn
    ours = metrics.silhouette(z, y, chunk=33)
    assert ours == pytest.approx(silhouette_score(z.numpy(), y.numpy()), abs=1e-6)


# --------------------------------------------------------------------------------- alignment/uniformity
def test_alignment_and_uniformity_match_direct_formula():
    gen = torch.Generator().manual_seed(5)
    a, b = torch.randn(50, 8, generator=gen), torch.randn(50, 8, generator=gen)
    na, nb = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    direct_align = sum(float(((na[i] - nb[i]) ** 2).sum()) for i in range(50)) / 50
    assert metrics.alignment(a, b) == pytest.approx(direct_align, rel=1e-5)
    pairs = [math.exp(-2 * float(((na[i] - na[j]) ** 2).sum())) for i in range(50) for j in range(i + 1, 50)]
    assert metrics.uniformity(a) == pytest.approx(math.log(sum(pairs) / len(pairs)), rel=1e-6)
    assert metrics.alignment(a, a) == pytest.approx(0.0, abs=1e-6)


def test_effective_rank_matches_direct_formula_and_bounds():
    gen = torch.Generator().manual_seed(6)
    z = torch.randn(200, 10, generator=gen) * torch.linspace(0.1, 3, 10)
    s = np.linalg.svd((z - z.mean(0)).double().numpy(), compute_uv=False)
    p = s / s.sum()
    assert metrics.effective_rank(z) == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-6)
    rank_one = torch.randn(100, 1, generator=gen) * torch.randn(1, 10, generator=gen)
    assert metrics.effective_rank(rank_one) == pytest.approx(1.0, abs=1e-3)
    isotropic = torch.linalg.qr(torch.randn(64, 64, generator=gen))[0]  # orthonormal: all singular values equal
    assert metrics.effective_rank(isotropic, center=False) == pytest.approx(64.0, rel=1e-4)


def test_pixel_errors_and_psnr():
    x = torch.rand(3, 1, 4, 4)
    mae, mse = metrics.pixel_errors(x, x)
    assert mae.abs().max() == 0 and mse.abs().max() == 0
    mae, mse = metrics.pixel_errors(x + 0.1, x)
    assert torch.allclose(mae, torch.full((3,), 0.1)) and torch.allclose(mse, torch.full((3,), 0.01))
    assert metrics.psnr(0.01) == pytest.approx(20.0)


# ---------------------------------------------------------------------------------------------- probes
def _split(z, y):
    n = len(y)
    a, b = int(0.6 * n), int(0.8 * n)
    return {"train": z[:a], "val": z[a:b], "test": z[b:]}, {"train": y[:a], "val": y[a:b], "test": y[b:]}


def test_logistic_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    z, y = _clusters(50, 3, 6, spread=4.0, seed=7)
    for c in (0.05, 1.0):
        model, _ = probes.fit_logistic(z.double(), y, 3, c, max_iter=500, tol=1e-9)
        ref = LogisticRegression(C=c, tol=1e-10, max_iter=5000).fit(z.numpy(), y.numpy())
        ours = model.weight.detach().numpy()
        # softmax parameters are defined up to a shared shift; sklearn's L2 penalty picks the zero-mean one
        assert np.allclose(ours, ref.coef_, atol=2e-3), (c, np.abs(ours - ref.coef_).max())
        assert (probes.predict(model, z.double()).numpy() == ref.predict(z.numpy())).mean() == 1.0


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_probes_separable_and_shuffled(kind):
    z, y = _clusters(80, 4, 16, spread=1.0, seed=8)
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(9))]
    accs = []
    for labels in (y, shuffled):
        zs, ys = _split(z, labels)
        if kind == "mlp":
            torch.manual_seed(0)
            result = probes.train_mlp_probe(ClassifierHead(16, 32, 4, 0.1), zs, ys, epochs=60, patience=15,
                                            lr=1e-2, weight_decay=0.0, batch_size=32, seed=0)
        else:
            result = probes.linear_probe(zs, ys, 4, [0.1, 1.0])
        accs.append(result.scores["test"])
    assert accs[0] == 1.0
    assert accs[1] < 0.5  # chance is 0.25


def test_mlp_probe_restores_best_epoch():
    z, y = _clusters(50, 3, 4, spread=2.0, seed=10)
    zs, ys = _split(z, y)
    torch.manual_seed(0)
    result = probes.train_mlp_probe(ClassifierHead(4, 8, 3, 0.0), zs, ys, epochs=6, patience=2, lr=1e-2,
                                    weight_decay=0.0, batch_size=16, seed=0)
    assert 1 <= result.best_epoch <= result.epochs <= 6
    assert result.scores["val"] == metrics.accuracy(probes.predict(result.model, zs["val"]), ys["val"])


def test_decoder_probe_learns_a_linear_map():
    gen = torch.Generator().manual_seed(11)
    z = torch.randn(600, 4, generator=gen)
    basis = torch.rand(4, 16, generator=gen)
    x = ((torch.sigmoid(z @ basis)) * 255).round().to(torch.uint8).view(-1, 1, 4, 4)
    zs = {"train": z[:400], "val": z[400:500], "test": z[500:]}
    xs = {"train": x[:400], "val": x[400:500], "test": x[500:]}
    decoder = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Sigmoid(), torch.nn.Unflatten(1, (1, 4, 4)))
    before = float(probes.decode_errors(decoder, zs["test"], xs["test"])[0].mean())
    result = probes.train_decoder_probe(decoder, zs, xs, epochs=30, patience=5, lr=3e-2, batch_size=32, seed=0)
    assert result.scores["test"] < 0.3 * before
    mae, mse = probes.decode_errors(result.model, zs["test"], xs["test"])
    assert float(mae.mean()) == pytest.approx(result.scores["test"])
    with torch.no_grad():
        ref = F.l1_loss(result.model(zs["test"]), xs["test"].float() / 255)
    assert float(mae.mean()) == pytest.approx(float(ref), rel=1e-5)


def test_standardize_uses_train_statistics():
    train = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    test = torch.tensor([[2.0, 7.0]])
    s_train, s_test = metrics.standardize(train, test)
    assert torch.allclose(s_train.mean(0), torch.zeros(2))
    assert torch.allclose(s_test, torch.tensor([[0.0, 2.0]]))  # constant column: std treated as 1


def test_predict_mean_matches_a_per_image_loop_over_views():
    """Test-time augmentation: the argmax of the mean softmax over views, image by image (small batches so the
    chunking is exercised); one view is plain prediction."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4))
    views = [torch.randn(37, 6) for _ in range(3)]
    got = probes.predict_mean(model, views, batch_size=8)
    with torch.no_grad():
        want = [int(sum(F.softmax(model(v[i:i + 1])[0], 0) for v in views).argmax()) for i in range(37)]
    assert got.tolist() == want
    assert torch.equal(probes.predict_mean(model, views[:1], batch_size=8), probes.predict(model, views[0]))
    # views that disagree are settled by their confidence, not by majority order: here view 2 wins
    head = torch.nn.Identity()
    confident = torch.tensor([[0.0, 9.0, 0.0]])
    unsure = torch.tensor([[1.0, 0.0, 0.0]])
    assert probes.predict_mean(head, [unsure, confident]).tolist() == [1]
    assert probes.predict_mean(head, []).numel() == 0
