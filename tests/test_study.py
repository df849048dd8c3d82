"""The study: presets as data, the plan, resumability (skip / resume / Ctrl-C) and the smoke pipeline end to end."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from latentbench import study
from latentbench.config import ConfigError, EvalConfig, RunConfig, load_config
from latentbench.io import RunFileError, atomic_write_json
from latentbench.study import (GRID, PRESETS, config_differences, estimate_seconds, load_preset, parse_preset,
                               plan_study, recipe_path, reproduce, run_state)
from latentbench.train import Trainer, TrainingInterrupted

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- plan
@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_plans_valid_configs_for_the_whole_grid(name, tmp_path):
    preset = load_preset(name)
    plan = plan_study(preset, tmp_path)  # loads and validates every run's config
    cells = {(r.dataset, r.model) for r in plan}
    assert cells == {(d, m) for d, models in GRID.items() for m in models}
    assert len({r.run_dir for r in plan}) == len(plan)
    assert all(r.run_dir.parent == tmp_path / "runs" for r in plan)
    assert all(estimate_seconds(r) > 0 for r in plan)


def test_paper_is_the_recipes_unchanged_with_three_mnist_seeds(tmp_path):
    plan = plan_study(load_preset("paper"), tmp_path)
    assert sorted(r.seed for r in plan if r.dataset == "mnist") == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert sorted(r.seed for r in plan if r.dataset == "cifar10") == [0] * 5
    for r in plan:
        recipe = load_config(recipe_path(r.dataset, r.model), [f"train.seed={r.seed}"]).to_dict()
        assert config_differences(recipe, r.config.to_dict()) == []  # every value is the recipe's
        assert r.config.data.train_subset == 0 and r.config.data.name == r.dataset


def test_quick_is_cheaper_than_paper(tmp_path):
    cost = {name: sum(estimate_seconds(r) for r in plan_study(load_preset(name), tmp_path))
            for name in ("smoke", "quick", "paper")}
    assert cost["smoke"] < cost["quick"] <= 15 * 60 < cost["paper"]


@pytest.mark.parametrize("name", PRESETS)
def test_runs_that_end_on_decoder_only_epochs_reach_them(name, tmp_path):
    """A recipe that freezes the encoder for its last epochs (the CIFAR-10 skip autoencoder) must still get
    some decoder-only epochs when a preset shortens it, or its decoder never fits clean images."""
    plan = plan_study(load_preset(name), tmp_path)
    staged = [r for r in plan if r.config.objective.encoder_frozen_from < 1]
    assert staged, "no recipe uses objective.encoder_frozen_from any more: drop this test"
    for r in staged:
        epochs, frozen_from = r.config.train.epochs, r.config.objective.encoder_frozen_from
        decoder_only = [e for e in range(epochs) if e >= frozen_from * epochs]
        assert 0 < len(decoder_only) < epochs, (r.dataset, r.model, epochs, frozen_from)
        # a decoder kept from its skip maps until then gets them exactly in the decoder-only epochs
        skips_from = r.config.objective.skips_from
        assert skips_from in (0.0, frozen_from), (r.dataset, r.model, skips_from, frozen_from)


def test_recipes_are_read_from_configs_in_one_place():
    for dataset, models in GRID.items():
        for model in models:
            assert recipe_path(dataset, model).resolve() == (REPO / "configs" / f"{dataset}_{model}.toml").resolve()


def test_overrides_seeds_and_dataset_selection(tmp_path):
    preset = load_preset("smoke")
    plan = plan_study(preset, tmp_path, datasets=["MNIST"], seeds=3, user_overrides=["train.epochs=1"])
    assert {r.dataset for r in plan} == {"mnist"} and len(plan) == 9
    assert all(r.config.train.epochs == 1 for r in plan)  # --set wins over the preset
    assert [r.config.train.seed for r in plan[:3]] == [0, 1, 2]
    assert "--set train.epochs=1" in plan[0].command() and 'name="mnist_autoencoder_s0"' in plan[0].command()
    with pytest.raises(ConfigError, match="unknown dataset 'svhn'"):
        plan_study(preset, tmp_path, datasets=["svhn"])
    with pytest.raises(ConfigError, match="train.epochs must be > 0"):
        plan_study(preset, tmp_path, user_overrides=["train.epochs=0"])
    with pytest.raises(ConfigError, match="unknown preset 'fast'"):
        load_preset("fast")
    with pytest.raises(ConfigError, match="unknown key 'mnist.epochs'"):
        parse_preset("bad", {"mnist": {"epochs": 3}})
    with pytest.raises(ConfigError, match="not in the grid"):
        parse_preset("bad", {"mnist": {"models": {"denoising": []}}})


# -------------------------------------------------------------------------------------- resumability
class Calls:
    """Counting stand-ins for training and evaluation (training is real; evaluation writes a stub)."""

    def __init__(self, fail_eval_at: int = 0):
        self.trained: list[tuple[str, bool]] = []
        self.evaluated: list[str] = []
        self.fail_eval_at = fail_eval_at

    def train(self, cfg, run_dir, resume, splits):
        self.trained.append((run_dir.name, resume))
        return study._default_train(cfg, run_dir, resume, splits)

    def evaluate(self, run_dir: Path, splits, eval_settings) -> dict:
        self.eval_settings = eval_settings
        if self.fail_eval_at and len(self.evaluated) + 1 == self.fail_eval_at:
            atomic_write_json(run_dir / "metrics.json", {"metrics": {}, "figures": {"tsne": "figures/tsne.png"}})
            raise KeyboardInterrupt  # metrics.json of a half-done evaluation: its figure is missing
        self.evaluated.append(run_dir.name)
        atomic_write_json(run_dir / "eval_state.json", {"eval": dataclasses.asdict(eval_settings)})
        (run_dir / "figures").mkdir(exist_ok=True)
        (run_dir / "figures" / "tsne.png").write_bytes(b"png")
        atomic_write_json(run_dir / "metrics.json", {"run": run_dir.name, "metrics": {}, "protocol": {},
                                                    "figures": {"tsne": "figures/tsne.png"}, "seconds": {}})
        return {}


def quiet_reproduce(out: Path, calls: Calls, **kw):
    return reproduce("smoke", out=out, train_fn=calls.train, evaluate_fn=calls.evaluate, log=lambda _: None,
                     report=False, **kw)


def test_ctrl_c_in_training_then_resume_then_skip_everything(tmp_path, monkeypatch):
    out = tmp_path / "study"
    original = Trainer.train_epoch

    def interrupt_fourth_run(self, progress):  # Ctrl-C during the 2nd epoch of the 4th run
        if self.cfg.name == "mnist_supervised_s1" and self.epoch == 1:
            raise KeyboardInterrupt
        return original(self, progress)

    monkeypatch.setattr(Trainer, "train_epoch", interrupt_fourth_run)
    first = Calls()
    with pytest.raises(TrainingInterrupted, match="Continue with: latentbench reproduce --preset smoke"):
        quiet_reproduce(out, first, datasets=["mnist"], seeds=2)
    runs = out / "runs"
    assert [name for name, _ in first.trained] == ["mnist_autoencoder_s0", "mnist_autoencoder_s1",
                                                   "mnist_supervised_s0", "mnist_supervised_s1"]
    assert first.evaluated == ["mnist_autoencoder_s0", "mnist_autoencoder_s1", "mnist_supervised_s0"]
    assert run_state(runs / "mnist_supervised_s1") == "interrupted"
    assert json.loads((out / "study.json").read_text())["status"] == "interrupted"
    kept = {p: p.stat().st_mtime_ns for p in runs.glob("*/checkpoints/last.pt") if "supervised_s1" not in str(p)}

    monkeypatch.setattr(Trainer, "train_epoch", original)
    second = Calls(fail_eval_at=2)  # and a Ctrl-C during an evaluation
    with pytest.raises(TrainingInterrupted):
        quiet_reproduce(out, second, datasets=["mnist"], seeds=2)
    assert second.trained[0] == ("mnist_supervised_s1", True)  # resumed, not restarted
    history = (runs / "mnist_supervised_s1" / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 2  # header + epoch 1 (before Ctrl-C) + epoch 2 (after resume)
    assert run_state(runs / "mnist_contrastive_s0") == "trained"  # trained, its evaluation interrupted

    third = Calls()
    quiet_reproduce(out, third, datasets=["mnist"], seeds=2)
    assert ("mnist_contrastive_s0", False) not in third.trained  # only evaluated again
    assert "mnist_contrastive_s0" in third.evaluated
    assert all(run_state(runs / f"mnist_{m}_s{s}") == "evaluated" for m in GRID["mnist"] for s in (0, 1))
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # finished runs were never touched again

    fourth = Calls()
    quiet_reproduce(out, fourth, datasets=["mnist"], seeds=2)
    assert fourth.trained == [] and fourth.evaluated == []
    assert json.loads((out / "study.json").read_text())["status"] == "finished"
    assert len(json.loads((out / "study.json").read_text())["sessions"]) == 4


def test_a_diverged_run_is_reported_and_skipped_not_fatal(tmp_path):
    from latentbench.train import TrainingDiverged

    calls = Calls()

    def diverge_supervised(cfg, run_dir, resume, splits):
        if "supervised" in run_dir.name:
            atomic_write_json(run_dir / "run_info.json", {"status": "diverged"})
            raise TrainingDiverged("the loss became nan")
        return calls.train(cfg, run_dir, resume, splits)

    out = tmp_path / "study"
    lines: list[str] = []
    reproduce("smoke", out=out, datasets=["mnist"], train_fn=diverge_supervised, evaluate_fn=calls.evaluate,
              log=lines.append, report=False)
    assert calls.evaluated == ["mnist_autoencoder_s0", "mnist_contrastive_s0"]
    assert json.loads((out / "study.json").read_text())["status"] == "finished with diverged runs"
    assert any("diverged: mnist_supervised_s0" in line for line in lines)
    again = Calls()
    reproduce("smoke", out=out, datasets=["mnist"], train_fn=again.train, evaluate_fn=again.evaluate,
              log=lines.append, report=False)
    assert again.trained == [] and again.evaluated == []


def test_changed_settings_are_refused_not_mixed(tmp_path):
    out = tmp_path / "study"
    calls = Calls()
    quiet_reproduce(out, calls, datasets=["mnist"], seeds=1, extra_overrides=["train.max_steps=2"])
    with pytest.raises(ConfigError, match=r"different settings .*train.max_steps: 2 -> 3"):
        quiet_reproduce(out, Calls(), datasets=["mnist"], seeds=1, extra_overrides=["train.max_steps=3"])
    # where the data lives or which device runs it does not change what a run computes
    quiet_reproduce(out, Calls(), datasets=["mnist"], seeds=1, extra_overrides=["train.max_steps=2"],
                    data_root=str(tmp_path), device="cpu")


def test_changed_evaluation_settings_re_evaluate_every_run_without_retraining(tmp_path):
    out = tmp_path / "study"
    trained = Calls()
    quiet_reproduce(out, trained, datasets=["mnist"], seeds=1, extra_overrides=["train.max_steps=2"])
    assert trained.eval_settings.probe_patience == EvalConfig().probe_patience
    # a new evaluation default (or an eval.* override) is not another training: evaluate again, train nothing
    again = Calls()
    quiet_reproduce(out, again, datasets=["mnist"], seeds=1,
                    extra_overrides=["train.max_steps=2", "eval.probe_patience=3"])
    assert again.trained == [] and sorted(again.evaluated) == sorted(name for name, _ in trained.trained)
    assert again.eval_settings.probe_patience == 3
    settled = Calls()
    quiet_reproduce(out, settled, datasets=["mnist"], seeds=1,
                    extra_overrides=["train.max_steps=2", "eval.probe_patience=3"])
    assert settled.trained == [] and settled.evaluated == []


# ---------------------------------------------------------------------------------------- end to end
def test_smoke_preset_end_to_end_and_rerun_skips_everything(tmp_path):
    pytest.importorskip("latentbench.evaluate")
    from latentbench.cli import main as cli_main

    out = tmp_path / "smoke"
    # (~40 s on an idle 2-core CPU; its speed is not asserted here: timed tests fail on a loaded machine)
    assert cli_main(["reproduce", "--preset", "smoke", "--out", str(out)]) == 0
    plan = plan_study(load_preset("smoke"), out)
    page = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    for title in ("Table 1 - MNIST", "Table 2 - CIFAR-10", "Table 3 - CIFAR-10"):
        assert title in page and title in md
    for run in plan:
        assert run_state(run.run_dir) == "evaluated"
        metrics = json.loads((run.run_dir / "metrics.json").read_text())
        for fig in ("reconstructions", "interpolation", "tsne", "curves"):
            assert (run.run_dir / metrics["figures"][fig]).is_file()
        assert run.name in page
    groups = {(r.dataset, r.model) for r in plan}
    assert page.count("data:image/png;base64,") >= 4 * len(groups)
    assert "not run" not in md and "finished, not evaluated" not in md

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*") if p.is_file()}
    stamps.update({p: p.stat().st_mtime_ns for p in out.glob("runs/*/checkpoints/*.pt")})
    calls = Calls()
    reproduce("smoke", out=out, train_fn=calls.train, evaluate_fn=calls.evaluate, log=lambda _: None)
    assert calls.trained == [] and calls.evaluated == []
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # a run evaluated by hand with other settings is evaluated again, and only that one
    state_file = plan[0].run_dir / "eval_state.json"
    original = state_file.read_text()
    saved = json.loads(original)
    saved["eval"]["tsne_points"] = 17
    state_file.write_text(json.dumps(saved))
    calls = Calls()
    reproduce("smoke", out=out, train_fn=calls.train, evaluate_fn=calls.evaluate, log=lambda _: None)
    assert calls.trained == [] and calls.evaluated == [plan[0].run_dir.name]

    # a run evaluated by an older latentbench (its eval settings lack today's probe_views) is evaluated again
    state_file.write_text(original)  # the stub evaluate_fn above left the hand-made settings in place
    saved = json.loads((plan[1].run_dir / "eval_state.json").read_text())
    del saved["eval"]["probe_views"]
    (plan[1].run_dir / "eval_state.json").write_text(json.dumps(saved))
    calls = Calls()
    reproduce("smoke", out=out, train_fn=calls.train, evaluate_fn=calls.evaluate, log=lambda _: None)
    assert calls.trained == [] and calls.evaluated == [plan[1].run_dir.name]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision's image decoding
def test_train_subset_is_random_not_the_first_images_of_a_class_sorted_folder(tmp_path):
    """The quick preset trains CIFAR-10 on ``data.train_subset`` images; the JPEG copy is sorted by class."""
    import torch
    from PIL import Image

    from latentbench.data import load_splits

    for split, n in (("train", 30), ("test", 5)):
        for cls in ("a", "b", "c"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("L", (8, 8), color=i).save(folder / f"{i}.png")
    cfg = load_config(None, ['data.name="imagefolder"', f'data.root="{tmp_path}"', "data.train_subset=9"]).data
    splits = load_splits(cfg)
    assert len(splits.train) == 9 and set(splits.train.y.tolist()) == {0, 1, 2}
    assert torch.equal(load_splits(cfg).train.x, splits.train.x)  # the same subset every time


def test_a_key_added_later_counts_as_its_default_in_an_older_run():
    wanted = RunConfig().to_dict()
    older = RunConfig().to_dict()
    del older["objective"]["latent_noise"]  # a run saved before the option existed
    assert config_differences(older, wanted) == []
    wanted["objective"]["latent_noise"] = 0.3
    assert config_differences(older, wanted) == ["objective.latent_noise: 0.0 -> 0.3"]


@pytest.mark.parametrize("kind,channels,size,widths", [
    ("mlp", 1, 28, {"mlp_hidden": [1024, 512]}),
    ("mlp", 1, 28, {"mlp_hidden": [256, 128], "mlp_decoder_hidden": [64, 512]}),
    ("conv", 3, 32, {"conv_widths": [64, 128, 256, 512]}),
    ("conv", 3, 32, {"conv_widths": [8, 16, 24, 40], "latent_dim": 32}),
    ("conv", 3, 32, {"conv_widths": [8, 16, 24, 40], "conv_strides": [1, 1, 2, 2]}),
    ("conv", 3, 32, {"conv_widths": [8, 16, 24, 40], "conv_strides": [1, 2, 1, 2]}),
    ("conv", 3, 32, {"conv_widths": [8, 16, 24, 40], "conv_pool": "avg"}),
    ("conv", 3, 32, {"conv_widths": [8, 16, 24, 40], "conv_downsample": "maxpool"}),
    ("conv", 3, 28, {"conv_widths": [8, 16, 24, 40], "conv_downsample": "maxpool", "conv_strides": [1, 2, 1, 2]}),
])
def test_model_macs_match_torchs_flop_counter_on_the_built_models(kind, channels, size, widths):
    import dataclasses

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from latentbench.config import ModelConfig
    from latentbench.data import DatasetSpec
    from latentbench.models import build_encoder_decoder
    model = dataclasses.replace(ModelConfig(), encoder=kind, **widths)
    spec = DatasetSpec("x", channels, size, size, tuple("0123456789"), (0.5,) * channels, (0.5,) * channels)
    encoder, decoder = build_encoder_decoder(spec, model)
    counted = []
    inputs = ((encoder, torch.rand(1, channels, size, size)), (decoder, torch.rand(1, model.latent_dim)))
    for net, x in inputs:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net.eval()(x)
        counted.append(counter.get_total_flops() // 2)  # a multiply-accumulate is two flops
    assert study.model_macs(model, kind, channels, size) == tuple(counted)


def test_the_estimate_scales_with_the_model_width(tmp_path):
    narrow = study.plan_study(load_preset("paper"), tmp_path, ["cifar10"], None,
                              ["model.conv_widths=[32,64,128,256]"])
    wide = study.plan_study(load_preset("paper"), tmp_path, ["cifar10"], None,
                            ["model.conv_widths=[64,128,256,512]"])
    for a, b in zip(narrow, wide):
        ratio = study.compute_scale(b.config, "cifar10") / study.compute_scale(a.config, "cifar10")
        assert 3.0 < ratio < 4.5  # twice the channels: about four times the multiply-accumulates
        assert estimate_seconds(b) > 1.5 * estimate_seconds(a)  # evaluation's probes and t-SNE do not scale


def test_a_trained_run_is_estimated_at_its_evaluation_alone(tmp_path):
    for run in study.plan_study(load_preset("paper"), tmp_path, ["mnist"], 1, []):
        evaluation = estimate_seconds(run, "trained")
        assert 0 < evaluation < estimate_seconds(run, "new")
        assert estimate_seconds(run, "interrupted") == estimate_seconds(run, "new")
        training = estimate_seconds(run, "new") - evaluation
        half = run.config.train.epochs // 2
        left = estimate_seconds(run, "interrupted", epochs_done=half) - evaluation
        assert left == pytest.approx(training * (1 - half / run.config.train.epochs))  # only the epochs left


def test_a_wider_mlp_probe_raises_the_evaluation_estimate_as_measured(tmp_path):
    plans = {h: study.plan_study(load_preset("paper"), tmp_path, ["mnist"], 1, [f"eval.probe_hidden={h}"])
             for h in (64, 256)}
    assert study.probe_width_factor(plans[64][0].config) == 1.0
    assert abs(study.probe_width_factor(plans[256][0].config) - 1.48) < 0.01  # session 11's measured ratio
    for narrow, wide in zip(plans[64], plans[256]):
        assert estimate_seconds(wide, "trained") > estimate_seconds(narrow, "trained")


def test_the_mlp_probe_estimate_counts_the_epochs_early_stopping_leaves_and_the_view_codes(tmp_path):
    def probe_seconds(*overrides):
        run = study.plan_study(load_preset("paper"), tmp_path, ["mnist"], 1, list(overrides))[0]
        return study.mlp_probe_seconds(run.config, 54_000, study.probe_view_copies(run.config.eval, 1))

    typical = study.PROBE_TYPICAL_BEST_EPOCH
    # below the typical stopping point the cap is eval.probe_epochs; above it, best epoch + patience
    assert probe_seconds("eval.probe_epochs=20") == pytest.approx(2 * probe_seconds("eval.probe_epochs=10"))
    assert probe_seconds(f"eval.probe_epochs={typical + 60}", "eval.probe_patience=10") == pytest.approx(
        probe_seconds(f"eval.probe_epochs={typical + 10}", "eval.probe_patience=10"))
    assert probe_seconds(f"eval.probe_epochs={typical + 60}", "eval.probe_patience=0") == pytest.approx(
        probe_seconds(f"eval.probe_epochs={typical + 60}", "eval.probe_patience=60"))  # 0 = no early stop
    # four views: a plain fit on 54,000 codes and one on 5 x 54,000
    assert probe_seconds("eval.probe_views=4") == pytest.approx(6 * probe_seconds("eval.probe_views=0"))
    # session 40's measurement it was fitted to: 291 s for the MNIST autoencoder's 256-unit probe with views
    assert 250 < probe_seconds("eval.probe_views=4", "eval.probe_hidden=256") < 350


def test_a_sigterm_stopped_run_stops_the_study_with_the_signals_exit_status(tmp_path, capsys, monkeypatch):
    """A trainer stopped by SIGTERM (exit status 143) stops the study the same way, and the CLI exits 143."""
    def stopped_by_sigterm(cfg, run_dir, resume, splits):
        raise TrainingInterrupted("stopped by SIGTERM at epoch 1, step 3", exit_code=143)

    with pytest.raises(TrainingInterrupted, match="study interrupted during mnist_autoencoder_s0") as caught:
        reproduce("smoke", out=tmp_path / "study", datasets=["mnist"], train_fn=stopped_by_sigterm,
                  log=lambda _: None, report=False)
    assert caught.value.exit_code == 143
    assert json.loads((tmp_path / "study" / "study.json").read_text())["status"] == "interrupted"
    from latentbench.cli import main

    monkeypatch.setattr(study, "reproduce", lambda *a, **k: stopped_by_sigterm(None, None, False, None))
    assert main(["reproduce", "--preset", "smoke", "--out", str(tmp_path / "cli")]) == 143
    assert "stopped by SIGTERM" in capsys.readouterr().err


def test_announce_gives_the_plan_its_cost_and_how_to_watch_it(tmp_path):
    spec = load_preset("smoke")
    plan = study.plan_study(spec, tmp_path / "study", ["mnist"], 1, [])
    lines: list[str] = []
    study.announce(spec, plan, {r.name: "new" for r in plan}, study.Eta({r.name: 90.0 for r in plan}),
                   tmp_path / "study", lines.append)
    assert f"{len(plan)} runs (MNIST: {len(GRID['mnist'])} models x 1 seed(s)); 0 already done" in lines[1]
    assert f"remaining {len(plan)}: ~{study.format_duration(90.0 * len(plan))}" in lines[2]
    assert lines[3] == f"  progress, from another terminal: latentbench status {tmp_path / 'study'}"
    lines.clear()
    study.announce(spec, plan, {r.name: "evaluated" for r in plan}, study.Eta({r.name: 0.0 for r in plan}),
                   tmp_path / "study", lines.append)
    assert len(lines) == 3 and f"{len(plan)} already done" in lines[1]  # nothing left to watch


def test_a_second_study_on_a_busy_folder_is_refused_before_any_work(tmp_path):
    from latentbench.io import run_directory_lock

    out, calls = tmp_path / "study", Calls()
    out.mkdir()
    with run_directory_lock(out):  # as a running `latentbench reproduce` holds it
        with pytest.raises(RunFileError, match="in use by process .*another latentbench reproduce.*another --out"):
            quiet_reproduce(out, calls, datasets=["mnist"], seeds=1, extra_overrides=["train.max_steps=2"])
        assert calls.trained == [] and not (out / "study.json").exists()
        lines: list[str] = []
        run_dir = out / "runs" / f"mnist_{GRID['mnist'][0]}_s0"
        run_dir.mkdir(parents=True)
        with run_directory_lock(run_dir):  # and its trainer holds the run's
            reproduce("smoke", out=out, datasets=["mnist"], log=lines.append, dry_run=True)
        assert any(line.startswith("  this study is running now (process ") for line in lines)
        assert any(line.startswith(f"  {run_dir.name} [training]: being trained now by process ") for line in lines)
    quiet_reproduce(out, calls, datasets=["mnist"], seeds=1, extra_overrides=["train.max_steps=2"])
    assert len(calls.trained) == len(GRID["mnist"]) and not (out / ".lock").exists()  # released at the end


def _record_training(run, epochs_done: int, seconds: float) -> None:
    run.run_dir.mkdir(parents=True, exist_ok=True)
    (run.run_dir / "run_info.json").write_text(json.dumps({"status": "interrupted", "epochs_done": epochs_done,
                                                          "train_seconds": seconds}))


def test_the_estimate_follows_the_pace_of_the_training_already_done_in_the_folder(tmp_path):
    """A study resumed on a machine 2.5x slower than the reference says so and scales what is left."""
    spec = load_preset("paper")
    plan = study.plan_study(spec, tmp_path / "study", ["cifar10"], 1, [])
    def pace():
        return study.observed_pace(plan, {r.name: study.training_progress(r) for r in plan})

    assert pace() == (0.0, 0.0)
    first, second = plan[0], plan[1]
    half = second.config.train.epochs // 2  # each recipe has its own length
    assert second.config.train.epochs == 2 * half, "the test needs an even epoch count for its second run"
    _record_training(first, first.config.train.epochs, 2.5 * study.estimate_parts(first)[0])  # all, 2.5x
    _record_training(second, half, 2.5 * study.estimate_parts(second)[0] / 2)  # half of them
    actual, predicted = pace()
    assert actual / predicted == pytest.approx(2.5)
    (second.run_dir / "run_info.json").write_text("{ damaged")  # unreadable: left out, not an error
    assert pace()[0] / pace()[1] == pytest.approx(2.5)
    _record_training(second, half, 2.5 * study.estimate_parts(second)[0] / 2)

    states = {r.name: "new" for r in plan} | {first.name: "trained", second.name: "interrupted"}
    estimates = {r.name: estimate_seconds(r, states[r.name], study.training_progress(r)[0]) for r in plan}
    eta = study.Eta(estimates, *pace())
    lines: list[str] = []
    study.announce(spec, plan, states, eta, tmp_path / "study", lines.append, dry_run=True)
    model = sum(estimates.values())
    assert (f"~{study.format_duration(2.5 * model)} at the pace of the training done here so far (2.5x the "
            f"reference 2-core CPU's time, which would take ~{study.format_duration(model)}") in lines[2]
    lines.clear()
    study.describe_plan(plan, states, eta, lines.append)
    row = next(line for line in lines if line.startswith(f"  {second.name} [interrupted]"))
    assert row.endswith(f", ~{study.format_duration(2.5 * estimates[second.name])}")


def test_a_dry_run_says_what_each_run_would_do_and_writes_nothing(tmp_path):
    out = tmp_path / "study"
    lines: list[str] = []
    calls = Calls()
    reproduce("smoke", out=out, datasets=["mnist"], train_fn=calls.train, evaluate_fn=calls.evaluate,
              log=lines.append, dry_run=True)
    assert not out.exists() and calls.trained == [] and calls.evaluated == []
    names = [f"mnist_{m}_s0" for m in GRID["mnist"]]
    for name in names:
        block = next(i for i, line in enumerate(lines) if line.startswith(f"  {name} [new]: train, then evaluate, ~"))
        assert lines[block + 1].strip().startswith("latentbench train ") and f"eval {out / 'runs' / name}" in \
            lines[block + 1]
    assert lines[-1].startswith("dry run: nothing was trained or written")

    quiet_reproduce(out, Calls(), datasets=["mnist"], seeds=1, extra_overrides=["train.max_steps=2"])
    runs = out / "runs"
    (runs / names[1] / "metrics.json").unlink()  # trained, not evaluated: the eval command alone
    info = json.loads((runs / names[2] / "run_info.json").read_text())
    (runs / names[2] / "run_info.json").write_text(json.dumps({**info, "status": "interrupted"}))
    lines.clear()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    reproduce("smoke", out=out, datasets=["mnist"], extra_overrides=["train.max_steps=2"], log=lines.append,
              dry_run=True)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # not even study.json rewritten
    assert f"  {names[0]} [evaluated]: nothing (done)" in lines
    block = {line.split(" [")[0].strip(): i for i, line in enumerate(lines) if " [" in line}
    assert lines[block[names[1]] + 1].strip() == f"latentbench eval {runs / names[1]}"
    assert lines[block[names[2]]].startswith(f"  {names[2]} [interrupted]: resume training, then evaluate")
    assert lines[block[names[2]] + 1].strip() == (f"latentbench train --resume {runs / names[2]} && "
                                                   f"latentbench eval {runs / names[2]}")
    with pytest.raises(ConfigError, match="different settings"):  # a changed setting is refused, as for real
        reproduce("smoke", out=out, datasets=["mnist"], extra_overrides=["train.max_steps=3"], log=lines.append,
                  dry_run=True)
