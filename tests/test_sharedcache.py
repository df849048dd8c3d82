"""The cache that the runs of one folder share: keys from the data and the settings, damaged entries replaced."""

from pathlib import Path
from types import SimpleNamespace

import torch

from latentbench.data import ImageData
from latentbench.io import atomic_write_json, read_json
from latentbench.sharedcache import SHARED_CACHE, cached, data_fingerprint, shared_cache_path


def _splits(seed: int) -> SimpleNamespace:
    g = torch.Generator().manual_seed(seed)
    part = lambda n: ImageData(torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=g),  # noqa: E731
                               torch.randint(0, 3, (n,), generator=g))
    return SimpleNamespace(train=part(6), val=part(3), test=part(3))


def _run(root: Path, seed: int = 0) -> SimpleNamespace:
    return SimpleNamespace(splits=_splits(seed), device=torch.device("cpu"),
                           paths=SimpleNamespace(root=root / "runs" / "some_run_s0"))


def test_the_key_follows_the_images_and_the_settings_not_the_run(tmp_path):
    run, twin, other = _run(tmp_path), _run(tmp_path), _run(tmp_path, seed=1)
    twin.paths.root = tmp_path / "runs" / "another_run_s1"
    path = shared_cache_path(run, "baselines", {"knn_k": 20}, ".json")
    assert path.parent == tmp_path / "runs" / SHARED_CACHE and path.name.startswith("baselines-")
    assert shared_cache_path(twin, "baselines", {"knn_k": 20}, ".json") == path  # same data, same settings
    assert shared_cache_path(run, "baselines", {"knn_k": 200}, ".json") != path
    assert shared_cache_path(other, "baselines", {"knn_k": 20}, ".json") != path
    assert data_fingerprint(run.splits) == data_fingerprint(twin.splits) != data_fingerprint(other.splits)
    one_label = _splits(0)
    one_label.test.y[0] = (one_label.test.y[0] + 1) % 3
    assert data_fingerprint(one_label) != data_fingerprint(run.splits)  # labels count, not just pixels


def test_cached_computes_once_then_loads_and_replaces_a_damaged_entry(tmp_path):
    path = tmp_path / SHARED_CACHE / "kind-0123.json"
    calls = []

    def compute():
        calls.append(1)
        return {"value": len(calls)}

    assert cached(path, read_json, compute, atomic_write_json) == ({"value": 1}, False)
    assert cached(path, read_json, compute, atomic_write_json) == ({"value": 1}, True)
    assert len(calls) == 1
    path.write_text("{ not json")  # a damaged entry: recomputed and replaced, never an error
    assert cached(path, read_json, compute, atomic_write_json) == ({"value": 2}, False)
    assert read_json(path) == {"value": 2}
    assert cached(path, read_json, compute, atomic_write_json, force=True) == ({"value": 3}, False)


def test_a_cache_that_cannot_be_written_only_costs_the_sharing(tmp_path):
    def refuse(path, value):
        raise PermissionError(13, "Permission denied", str(path))

    value, hit = cached(tmp_path / SHARED_CACHE / "kind.json", read_json, lambda: {"value": 7}, refuse)
    assert (value, hit) == ({"value": 7}, False)
    assert not (tmp_path / SHARED_CACHE / "kind.json").exists()
