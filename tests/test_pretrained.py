"""A trained encoder loaded outside latentbench, without its dataset, gives the codes evaluation scored."""

import json

import pytest
import torch
from conftest import tiny_config

from latentbench import embed
from latentbench.data import DatasetSpec, load_splits
from latentbench.evalrun import load_run
from latentbench.io import RunFileError, safe_torch_load
from latentbench.pretrained import load_encoder, load_objective
from latentbench.train import train


@pytest.fixture(scope="module")
def contrastive_run(tmp_path_factory):
    """A tiny colour contrastive run: per-channel statistics that differ from channel to channel."""
    return train(tiny_config(tmp_path_factory.mktemp("pre"), "contrastive", channels=3, size=32))


def _reference_codes(run_dir):
    """The codes evaluation computes: the run loaded with its dataset (the statistics from the images)."""
    run = load_run(run_dir)
    images = run.splits.test.x[:50]
    with torch.inference_mode():
        return images, run.objective.encoder(embed.pixels(images, torch.device("cpu"))), run.splits.spec


def test_the_encoder_loads_without_its_dataset_and_gives_the_evaluated_codes(contrastive_run, monkeypatch):
    images, z_ref, spec = _reference_codes(contrastive_run)
    state = safe_torch_load(contrastive_run / "checkpoints" / "best.pt")
    assert DatasetSpec.from_dict(state["dataset"]) == spec  # saved with the weights
    assert len(set(spec.mean)) == 3  # the statistics matter: they differ per channel

    def no_data(*args, **kwargs):
        raise AssertionError("the dataset was loaded")

    monkeypatch.setattr("latentbench.pretrained.load_splits", no_data)
    encoder = load_encoder(contrastive_run)
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    with torch.inference_mode():
        z = encoder(embed.pixels(images, torch.device("cpu")))
    assert z.shape == (50, 128)
    torch.testing.assert_close(z, z_ref)
    objective = load_objective(contrastive_run, checkpoint="last")  # the whole model: the heads come with it
    assert objective.projector is not None and not objective.training


def test_an_older_run_without_the_saved_statistics_recomputes_them_from_its_data(contrastive_run, tmp_path):
    images, z_ref, spec = _reference_codes(contrastive_run)
    old = tmp_path / "old_run"
    (old / "checkpoints").mkdir(parents=True)
    for name in ("config.json", "history.csv"):
        (old / name).write_bytes((contrastive_run / name).read_bytes())
    info = json.loads((contrastive_run / "run_info.json").read_text())
    for key in ("mean", "std"):
        del info["dataset"][key]
    (old / "run_info.json").write_text(json.dumps(info))
    state = safe_torch_load(contrastive_run / "checkpoints" / "best.pt")
    del state["dataset"]
    torch.save(state, old / "checkpoints" / "best.pt")
    with torch.inference_mode():
        z = load_encoder(old)(embed.pixels(images, torch.device("cpu")))
    torch.testing.assert_close(z, z_ref)
    assert load_splits(load_run(old).cfg.data).spec == spec


def test_missing_checkpoints_and_bad_names_are_clear_errors(contrastive_run, tmp_path):
    with pytest.raises(ValueError, match="checkpoint must be one of best, last"):
        load_encoder(contrastive_run, checkpoint="final")
    only_last = tmp_path / "only_last"
    (only_last / "checkpoints").mkdir(parents=True)
    (only_last / "config.json").write_bytes((contrastive_run / "config.json").read_bytes())
    (only_last / "checkpoints" / "last.pt").write_bytes((contrastive_run / "checkpoints" / "last.pt").read_bytes())
    with pytest.raises(RunFileError, match=r"holds no best.pt .*it has last.pt \(checkpoint='last'\)"):
        load_encoder(only_last)
    assert load_encoder(only_last, checkpoint="last") is not None
    with pytest.raises(RunFileError, match="not a run directory"):
        load_encoder(tmp_path / "nothing_here")
