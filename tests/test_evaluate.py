"""`latentbench eval` end to end on tiny synthetic runs: every key and figure, caching, --force, frozen encoder."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import tiny_config

from latentbench.cli import main
from latentbench.config import ConfigError, EvalConfig, load_config
from latentbench import embed, metrics, probes
from latentbench.data import ImageData
from latentbench.evaluate import (DECODER_PROBE_FILE, EMBEDDINGS_FILE, FIGURES, METRICS_FILE, STATE_FILE,
                                  choose_samples, evaluate, evaluate_run, group_e2e_flip, load_run, metric_groups,
                                  mirrored_codes, probe_view_codes, probe_view_copies, probe_view_kind, stage_line)
from latentbench.io import RunFileError, safe_torch_load
from latentbench.train import train

SPLITS = ("train", "val", "test")
REQUIRED_KEYS = [
    *(f"probe_mlp_{s}_acc" for s in SPLITS), *(f"probe_linear_{s}_acc" for s in SPLITS), "knn_val_acc",
    "knn_test_acc", *(f"recon_{s}_mae" for s in SPLITS), "recon_test_mse", "recon_test_psnr", "recon_is_probe",
    "silhouette", "alignment", "uniformity", "effective_rank", "tsne_trustworthiness", "pixel_knn_test_acc",
    "pixel_linear_test_acc", "pca_knn_test_acc", "pca_linear_test_acc", "probe_mlp_plain_val_acc",
    "probe_mlp_plain_test_acc",
]
FAST = ["eval.tsne_points=120", "eval.trust_points=100", "eval.alignment_points=100", "eval.silhouette_points=150",
        "eval.probe_epochs=2", "eval.decoder_probe_epochs=1", "eval.linear_max_iter=50"]


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory):
    """A trained (not yet evaluated) tiny MLP autoencoder run."""
    return train(tiny_config(tmp_path_factory.mktemp("ae"), "autoencoder", extra=FAST))


def _check_outputs(run_dir, objective: str) -> dict:
    m = json.loads((run_dir / METRICS_FILE).read_text())
    assert set(m) == {"run", "dataset", "objective", "metrics", "protocol", "figures", "seconds"}
    assert m["objective"] == objective and m["dataset"] == "synthetic"
    missing = [k for k in REQUIRED_KEYS if k not in m["metrics"]]
    assert not missing, missing
    assert all(isinstance(v, float) for v in m["metrics"].values())
    assert set(m["protocol"]) == set(m["metrics"]) and all(m["protocol"].values())
    for key, value in m["metrics"].items():
        if key.endswith("_acc") or key == "tsne_trustworthiness":
            assert 0.0 <= value <= 1.0, key
    assert m["figures"] == FIGURES
    for rel in FIGURES.values():
        png = run_dir / rel
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000, rel
    emb = safe_torch_load(run_dir / EMBEDDINGS_FILE)
    for split in SPLITS:
        assert emb["splits"][split]["z"].shape == (len(emb["splits"][split]["y"]), 128)
    state = json.loads((run_dir / STATE_FILE).read_text())
    assert len(state["samples"]["tsne"]) == 120 and state["samples"]["seed"] == 0
    return m


def test_cli_eval_writes_every_key_and_figure_then_skips_and_force_recomputes(ae_run, capsys):
    assert main(["eval", str(ae_run)]) == 0
    m = _check_outputs(ae_run, "autoencoder")
    assert m["metrics"]["recon_is_probe"] == 0.0 and "e2e_test_acc" not in m["metrics"]
    outputs = [ae_run / METRICS_FILE, ae_run / EMBEDDINGS_FILE, *(ae_run / rel for rel in FIGURES.values())]
    first = {p: p.stat().st_mtime_ns for p in outputs}

    capsys.readouterr()
    assert main(["eval", str(ae_run)]) == 0  # everything exists: nothing is recomputed or rewritten
    assert {p: p.stat().st_mtime_ns for p in outputs} == first
    assert "embeddings: cached" in capsys.readouterr().out

    assert main(["eval", str(ae_run), "--force"]) == 0
    assert all(p.stat().st_mtime_ns > first[p] for p in outputs)
    again = json.loads((ae_run / METRICS_FILE).read_text())["metrics"]
    for key in ("probe_mlp_test_acc", "probe_linear_test_acc", "knn_test_acc", "recon_test_mae", "silhouette"):
        assert again[key] == pytest.approx(m["metrics"][key], abs=1e-6), key  # seeded: the same numbers


def test_changed_eval_setting_recomputes_and_missing_figure_is_redrawn(ae_run):
    evaluate_run(ae_run, force=False, overrides=[])
    emb_time = (ae_run / EMBEDDINGS_FILE).stat().st_mtime_ns
    m = evaluate_run(ae_run, force=False, overrides=["eval.knn_k=3"])
    assert "k=3" in m["protocol"]["knn_test_acc"]
    assert (ae_run / EMBEDDINGS_FILE).stat().st_mtime_ns == emb_time  # same checkpoint: embeddings reused
    (ae_run / FIGURES["curves"]).unlink()
    before = (ae_run / METRICS_FILE).stat().st_mtime_ns
    evaluate_run(ae_run, force=False, overrides=["eval.knn_k=3"])
    assert (ae_run / FIGURES["curves"]).exists()
    assert json.loads((ae_run / METRICS_FILE).read_text())["metrics"] == m["metrics"]
    assert (ae_run / METRICS_FILE).stat().st_mtime_ns >= before


def test_only_runs_the_named_stages_keeps_the_others_and_refuses_unknown_names(ae_run, capsys):
    evaluate_run(ae_run, force=False, overrides=[])
    before = json.loads((ae_run / METRICS_FILE).read_text())
    figures = {rel: (ae_run / rel).stat().st_mtime_ns for rel in FIGURES.values()}
    notes = json.loads((ae_run / STATE_FILE).read_text())["figures"]
    assert set(notes) == set(FIGURES)
    capsys.readouterr()
    assert main(["eval", str(ae_run), "--force", "--only", "knn, probe_linear"]) == 0
    said = capsys.readouterr().out
    assert "knn:" in said and "probe_linear:" in said and "probe_mlp:" not in said and "t-SNE" not in said
    assert "embeddings: cached" in said  # --force with --only recomputes the stages, not the codes they read
    after = json.loads((ae_run / METRICS_FILE).read_text())
    assert after["metrics"] == before["metrics"]  # seeded: the same numbers, and every other key kept
    assert {rel: (ae_run / rel).stat().st_mtime_ns for rel in FIGURES.values()} == figures
    assert json.loads((ae_run / STATE_FILE).read_text())["figures"] == notes  # their descriptions kept too
    # a changed eval setting makes the old results stale: only the named stage is computed, the stale figures go
    m = evaluate_run(ae_run, force=False, overrides=["eval.knn_k=3"], only=["knn"])
    assert set(m["metrics"]) == {"knn_val_acc", "knn_test_acc"} and "k=3" in m["protocol"]["knn_test_acc"]
    assert not any((ae_run / rel).exists() for rel in FIGURES.values())
    full = evaluate_run(ae_run, force=False, overrides=["eval.knn_k=3"])  # the rest is filled in
    assert set(REQUIRED_KEYS) <= set(full["metrics"])
    assert full["metrics"]["knn_test_acc"] == m["metrics"]["knn_test_acc"]
    assert all((ae_run / rel).exists() for rel in FIGURES.values())
    for bad, message in ((["e2e"], "unknown stage.*'e2e'.*its stages are: probe_mlp"), ([], "no stage named")):
        with pytest.raises(ValueError, match=message):
            evaluate_run(ae_run, force=False, overrides=["eval.knn_k=3"], only=bad)
    capsys.readouterr()
    assert main(["eval", str(ae_run), "--only", "tsne"]) != 0
    assert "figures" in capsys.readouterr().err


def test_blind_eval_prints_no_test_number_but_writes_them(ae_run, capsys):
    capsys.readouterr()
    assert main(["eval", str(ae_run), "--force", "--blind", "--only", "knn,probe_linear,reconstruction"]) == 0
    said = capsys.readouterr().out
    assert "knn_val_acc=" in said and "probe_linear_val_acc=" in said and "recon_val_mae=" in said
    assert "_test_" not in said and "test number(s) withheld" in said
    written = json.loads((ae_run / METRICS_FILE).read_text())["metrics"]
    assert {"knn_test_acc", "probe_linear_test_acc", "recon_test_mae", "recon_test_psnr"} <= set(written)
    assert main(["eval", str(ae_run), "--force", "--only", "knn"]) == 0  # not blind: the test number is shown
    assert f"knn_test_acc={written['knn_test_acc']:.4f}" in capsys.readouterr().out


def test_stage_line_withholds_only_test_keys():
    scores = {"knn_val_acc": 0.5, "knn_test_acc": 0.25, "pixel_knn_test_acc": 0.125}
    assert stage_line("knn", ["knn_val_acc", "knn_test_acc"], scores, 1.0, blind=False) == \
        "knn: knn_val_acc=0.5000, knn_test_acc=0.2500 (1.0s)"
    assert stage_line("knn", ["knn_val_acc", "knn_test_acc"], scores, 1.0, blind=True) == \
        "knn: knn_val_acc=0.5000 (1.0s; 1 test number(s) withheld)"
    assert stage_line("baselines", ["pixel_knn_test_acc"], scores, 2.0, blind=True) == \
        "baselines: no validation number (2.0s; 1 test number(s) withheld)"


def test_eval_rejects_training_overrides_and_missing_checkpoint(ae_run, tmp_path):
    with pytest.raises(ConfigError, match="only eval"):
        evaluate_run(ae_run, force=False, overrides=["train.epochs=5"])
    with pytest.raises(RunFileError, match="no config.json|not a run directory"):
        evaluate_run(tmp_path, force=False, overrides=[])


@pytest.mark.parametrize("objective", ["supervised", "contrastive"])
def test_encoders_without_decoder_get_a_labelled_decoder_probe(tmp_path, objective):
    run_dir = train(tiny_config(tmp_path, objective, extra=FAST))
    m = evaluate_run(run_dir, force=False, overrides=[])
    _check_outputs(run_dir, objective)
    assert m["metrics"]["recon_is_probe"] == 1.0
    assert "DECODER PROBE" in m["protocol"]["recon_test_mae"]
    assert (run_dir / DECODER_PROBE_FILE).exists()
    if objective == "supervised":
        assert {f"e2e_{s}_acc" for s in SPLITS} <= set(m["metrics"])
    # the pixel baselines of a second run on the same data come from the shared cache: identical numbers
    other = evaluate_run(train(tiny_config(tmp_path, "autoencoder", extra=FAST)), force=False, overrides=[])
    for key in ("pixel_knn_test_acc", "pca_linear_test_acc", "tsne_pixel_trustworthiness"):
        assert other["metrics"][key] == m["metrics"][key]


def test_probing_leaves_encoder_weights_and_batchnorm_buffers_unchanged(tmp_path):
    """MoCo's check: conv encoder (BatchNorm) with skip decoder; every stage, augmented views included."""
    cfg = tiny_config(tmp_path, "autoencoder", channels=3, size=16, extra=[*FAST, "model.skips=true"])
    run = load_run(train(cfg))
    before = {k: v.clone() for k, v in run.objective.encoder.state_dict().items()}
    assert any("running_mean" in k for k in before)
    m = evaluate(run, force=True)
    after = run.objective.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert "skip" in m["protocol"]["recon_test_mae"]
    state = json.loads((run.paths.root / STATE_FILE).read_text())
    assert "skip maps are interpolated" in state["figures"]["interpolation"]


def test_choose_samples_picks_first_image_of_each_class_and_nested_subsets():
    ev = load_config(None, ["eval.tsne_points=50", "eval.silhouette_points=30", "eval.n_reconstructions=0"]).eval
    y = torch.tensor([3, 9, 4, 4, 9, 0, 1, 2, 5, 6, 7, 8] * 10)
    s = choose_samples(ev, y, num_classes=10, channels=1)
    assert s["interpolation"] == [2, 1]  # first 4, first 9
    assert len(s["reconstructions"]) == 5 and len(choose_samples(ev, y, 10, 3)["reconstructions"]) == 10
    assert set(s["silhouette"]) <= set(s["tsne"]) and len(s["tsne"]) == 50
    assert choose_samples(ev, y, 10, 1) == s  # seeded
    ev.interp_indices = [7, 8]
    assert choose_samples(ev, y, 10, 1)["interpolation"] == [7, 8]
    ev.interp_indices = [7, 999]
    with pytest.raises(ConfigError, match="interp_indices"):
        choose_samples(ev, y, 10, 1)


@pytest.mark.parametrize("channels, kind", [(1, "digits"), (3, "crop_flip")])
def test_probe_view_codes_are_seeded_augmented_codes_of_every_training_image(tmp_path, channels, kind):
    cfg = tiny_config(tmp_path, "autoencoder", channels=channels, size=16, extra=FAST)
    run_dir = train(cfg)
    auto = load_run(run_dir)
    assert probe_view_kind(auto) == ("digits" if channels == 1 else "none")  # colour: off unless asked for
    assert probe_view_copies(auto) == (EvalConfig().probe_views if channels == 1 else 0)
    run = load_run(run_dir, [f'eval.probe_view_augment="{kind}"', "eval.probe_views=2"])
    assert probe_view_kind(run) == kind and probe_view_copies(run) == 2
    before = {k: v.clone() for k, v in run.objective.encoder.state_dict().items()}
    codes = probe_view_codes(run, 2)
    n = len(run.splits.train.y)
    assert codes.shape == (2 * n, 128)
    assert torch.equal(codes, probe_view_codes(run, 2))  # drawn from eval.seed: the same views every time
    clean = run.objective.encoder(run.splits.train.x.float().div(255)).detach()
    assert not torch.allclose(codes[:n], clean, atol=1e-4)  # the views are not the images
    assert not torch.allclose(codes[:n], codes[n:], atol=1e-4)  # the two copies differ
    after = run.objective.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_probe_views_setting_controls_the_plain_probe_keys_and_protocol(ae_run):
    with_views = evaluate_run(ae_run, force=False, overrides=["eval.probe_views=3"])
    assert "3 augmented copies" in with_views["protocol"]["probe_mlp_test_acc"]
    assert "no views" in with_views["protocol"]["probe_mlp_plain_test_acc"]
    without = evaluate_run(ae_run, force=False, overrides=["eval.probe_views=0"])
    assert "probe_mlp_plain_test_acc" not in without["metrics"]
    assert "augmented" not in without["protocol"]["probe_mlp_test_acc"]
    with pytest.raises(ConfigError, match="probe_view_augment"):
        evaluate_run(ae_run, force=False, overrides=["eval.probe_view_augment=color"])


def test_probe_hidden_sets_the_mlp_probe_width_and_its_protocol(ae_run, monkeypatch):
    from latentbench import probes
    widths = []
    real = probes.train_mlp_probe

    def spy(head, *args, **kwargs):
        widths.append(head.net[0].out_features)
        return real(head, *args, **kwargs)

    monkeypatch.setattr(probes, "train_mlp_probe", spy)
    wide = evaluate_run(ae_run, force=False, overrides=["eval.probe_hidden=96", "eval.probe_views=0"])
    assert widths and set(widths) == {96}
    assert "-96-ReLU" in wide["protocol"]["probe_mlp_test_acc"]
    widths.clear()
    default = evaluate_run(ae_run, force=False, overrides=["eval.probe_hidden=0", "eval.probe_views=0"])
    assert widths == [64]  # the model's classifier_hidden, the report's width
    assert "-64-ReLU" in default["protocol"]["probe_mlp_test_acc"]
    with pytest.raises(ConfigError, match="probe_hidden"):
        evaluate_run(ae_run, force=False, overrides=["eval.probe_hidden=-1"])


def test_learning_curves_use_a_log_scale_for_errors_that_fall_by_orders_of_magnitude(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from latentbench import plots

    scales = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: scales.update(
        {ax.get_title(): ax.get_yscale() for ax in fig.axes}) or plt.close(fig))
    history = [{"epoch": e, "train_mae": 0.2 / e, "val_mae": 0.21 / e, "train_acc": 0.5 + e / 400,
                "val_acc": 0.5 + e / 410} for e in range(1, 151)]
    plots.plot_curves(history, tmp_path / "curves.png", "t")
    assert scales == {"mae (log scale)": "log", "acc": "linear"}
    assert plots._wide_positive_range([0.1, 2.0]) and not plots._wide_positive_range([-1.0, 20.0])


def test_load_run_takes_a_studys_evaluation_settings_then_the_overrides(ae_run):
    saved = load_run(ae_run).ev
    wanted = dataclasses.replace(saved, probe_patience=saved.probe_patience + 7, knn_k=3)
    run = load_run(ae_run, ["eval.knn_k=5"], None, wanted)
    assert run.ev.probe_patience == saved.probe_patience + 7 and run.ev.knn_k == 5
    assert run.cfg.train == load_run(ae_run).cfg.train  # only the eval section is replaced


def test_flip_tta_scores_the_supervised_head_on_each_image_and_its_mirror(tmp_path):
    """Colour supervised runs get e2e_*_acc_flip: the head's mean softmax over the codes of each image and of
    its mirror image (encoded here by reversing the columns by index); off by setting, and never on digits."""
    cfg = tiny_config(tmp_path, "supervised", channels=3, size=16, extra=FAST)
    run = load_run(train(cfg))
    assert "e2e_flip" in [stage for stage, _, _ in metric_groups(run)]
    test = run.splits.test
    reversed_columns = torch.arange(test.x.shape[3] - 1, -1, -1)
    by_index = ImageData(test.x.index_select(3, reversed_columns), test.y)
    want_z = embed.encode(run.objective.encoder, by_index, 64, run.device, run.channels_last)["z"]
    z_mirror = mirrored_codes(run, "test")
    assert torch.allclose(z_mirror, want_z, atol=1e-5)
    plain = embed.encode(run.objective.encoder, test, 64, run.device, run.channels_last)["z"]
    assert not torch.allclose(z_mirror, plain, atol=1e-3)  # the synthetic images are not symmetric
    emb = embed.extract(run.objective.encoder, run.splits, 256, run.device, run.channels_last)
    scores, how = group_e2e_flip(run, emb, None)
    assert set(scores) == set(how) == {"e2e_val_acc_flip", "e2e_test_acc_flip"}
    want = metrics.accuracy(probes.predict_mean(run.objective.classifier, [emb["test"]["z"], want_z]), test.y)
    assert scores["e2e_test_acc_flip"] == pytest.approx(want)
    assert "mirror" in how["e2e_test_acc_flip"]
    off = load_run(run.paths.root, ["eval.flip_tta=false"])
    assert "e2e_flip" not in [stage for stage, _, _ in metric_groups(off)]
    digits = load_run(train(tiny_config(tmp_path / "digits", "supervised", extra=FAST)))
    assert "e2e_flip" not in [stage for stage, _, _ in metric_groups(digits)]


def test_an_unfinished_run_is_scored_with_a_note_that_says_so(tmp_path, capsys):
    run = train(tiny_config(tmp_path, "autoencoder", extra=FAST))
    info = json.loads((run / "run_info.json").read_text())
    evaluate_run(run, only=["knn"])  # a status probe on every evaluation, never an error
    assert "note:" not in capsys.readouterr().out  # a finished run: no note
    (run / "run_info.json").write_text(json.dumps({**info, "status": "interrupted"}))
    evaluate_run(run, only=["knn"])
    said = capsys.readouterr().out
    assert "note: this run is interrupted at epoch 2 of 2, so these are the scores of its best.pt (epoch " in said
    assert "evaluate again when it has finished" in said
