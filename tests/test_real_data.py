"""The real datasets under LATENTBENCH_DATA (../shared/data here): shapes, splits, labels. Marked `data`."""

import pytest
import torch

from conftest import has_cifar, has_mnist, real_data_root
from latentbench.config import load_config
from latentbench.data import load_splits

pytestmark = pytest.mark.data


@pytest.mark.skipif(not has_mnist(), reason="MNIST not found under LATENTBENCH_DATA")
def test_mnist_loads_with_a_10_percent_validation_split():
    splits = load_splits(load_config(None, [f'data.root="{real_data_root()}"', "data.download=false"]).data)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (54000, 6000, 10000)
    assert splits.spec.shape == (1, 28, 28) and splits.spec.num_classes == 10
    assert splits.spec.mean[0] == pytest.approx(0.1307, abs=2e-3)
    assert torch.equal(splits.test.y.bincount(), torch.tensor([980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]))


@pytest.mark.skipif(not has_cifar(), reason="CIFAR-10 (JPEG copy) not found under LATENTBENCH_DATA")
def test_cifar10_jpeg_copy_loads_in_label_order():
    cfg = load_config(None, [f'data.root="{real_data_root()}"', 'data.name="cifar10"', "data.download=false"])
    splits = load_splits(cfg.data)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (45000, 5000, 10000)
    assert splits.spec.shape == (3, 32, 32)
    assert splits.spec.class_names[:3] == ("airplane", "automobile", "bird")
    assert torch.equal(splits.test.y.bincount(), torch.full((10,), 1000))
