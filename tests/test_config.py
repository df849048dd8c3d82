"""Strict configuration: unknown keys (with the nearest valid key), wrong types, out-of-range values and
malformed overrides or files each give one clear message naming the key; through the CLI, exit status 2
and no traceback."""

from __future__ import annotations

import pytest

from latentbench import cli
from latentbench.config import ConfigError, RunConfig, flatten, load_config


def error_of(overrides: list[str], path=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


@pytest.mark.parametrize("override,message", [
    ("train.epohcs=3", "unknown config key 'train.epohcs'. Did you mean 'train.epochs'?"),
    ("trian.epochs=3", "unknown config key 'trian'. Did you mean 'train'?"),
    ("model.latent=64", "unknown config key 'model.latent'. Did you mean 'model.latent_dim'?"),
    ("objective.temprature=0.1", "Did you mean 'objective.temperature'?"),
])
def test_unknown_keys_suggest_the_nearest_valid_key(override, message):
    assert message in error_of([override])


def test_unknown_key_without_a_close_match_lists_the_valid_keys():
    err = error_of(["train.zzzz=1"])
    assert "Did you mean" not in err and "Valid keys here:" in err and "epochs" in err


def test_unknown_key_in_a_toml_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[train]\nepohcs = 3\n")
    assert "Did you mean 'train.epochs'?" in error_of([], path)


@pytest.mark.parametrize("override,message", [
    ('train.epochs="ten"', "train.epochs must be int, got str 'ten'"),
    ("train.epochs=ten", "train.epochs must be int, got str 'ten'"),
    ("train.epochs=2.5", "train.epochs must be int, got float 2.5"),
    ("train.epochs=true", "train.epochs must be int, got bool True"),
    ("train.lr=fast", "train.lr must be float, got str 'fast'"),
    ("train.deterministic=1", "train.deterministic must be bool, got int 1"),
    ("model.mlp_hidden=256", "model.mlp_hidden must be a list of int, got int 256"),
    ('model.mlp_hidden=[256, "x"]', "model.mlp_hidden[1] must be int, got str 'x'"),
    ("train=3", "'train' is a section; write it as [train] with keys under it"),
])
def test_wrong_types_name_the_key_and_the_expected_type(override, message):
    assert message in error_of([override])


@pytest.mark.parametrize("override,message", [
    ("train.lr=-0.1", "train.lr must be > 0, got -0.1"),
    ("train.lr=0", "train.lr must be > 0, got 0.0"),
    ("model.latent_dim=0", "model.latent_dim must be > 0, got 0"),
    ("train.batch_size=-8", "train.batch_size must be > 0, got -8"),
    ("train.epochs=0", "train.epochs must be > 0, got 0"),
    ("train.weight_decay=-1e-4", "train.weight_decay must be >= 0, got -0.0001"),
    ("data.val_fraction=1.0", "data.val_fraction must lie strictly between 0 and 1, got 1.0"),
    ("model.classifier_dropout=1.5", "model.classifier_dropout must lie in [0, 1], got 1.5"),
    ("train.lr=nan", "train.lr must be a finite number, got nan"),
    ("train.lr=inf", "train.lr must be a finite number, got inf"),
    ("objective.temperature=-inf", "objective.temperature must be a finite number, got -inf"),
    ('train.schedule="cosin"', "train.schedule = 'cosin' is not one of: constant, cosine, onecycle"),
    ('train.optimizer="lamb"', "train.optimizer = 'lamb' is not one of: adam, sgd"),
    ("train.momentum=1.5", "train.momentum must lie in [0, 1], got 1.5"),
    ("train.ema_decay=1.0", "train.ema_decay must lie in [0, 1) (0 = off; 1 would never move the average"),
    ("train.ema_decay=-0.5", "train.ema_decay must lie in [0, 1)"),
    ("objective.encoder_frozen_from=1.5", "objective.encoder_frozen_from must lie in [0, 1], got 1.5"),
    (["objective.encoder_frozen_from=0.8", 'objective.name="contrastive"'],
     "objective.encoder_frozen_from < 1 (decoder-only epochs) applies to the autoencoder objective only"),
    ('objective.encoder_frozen_schedule="restart"',
     'objective.encoder_frozen_schedule = "restart" restarts the learning-rate schedule when the encoder freezes; '
     'it needs objective.encoder_frozen_from < 1 (got 1.0)'),
    (['objective.encoder_frozen_schedule="restart"', "objective.encoder_frozen_from=0.5", 'train.schedule="constant"'],
     "and train.schedule \"onecycle\" or \"cosine\" (got 'constant')"),
    ('objective.encoder_frozen_schedule="again"',
     "objective.encoder_frozen_schedule = 'again' is not one of: continue, restart"),
    ("objective.skips_from=0.5",
     "objective.skips_from > 0 (epochs without the decoder's skip maps) applies to the autoencoder with"),
    ("objective.skips_from=-0.1", "objective.skips_from must lie in [0, 1], got -0.1"),
    (["model.skips=true", "objective.skips_from=1.0"],
     "objective.skips_from = 1.0 leaves none of the 20 epochs with the skip maps, which evaluation uses"),
    (["model.skips=true", "objective.skips_from=0.9", "train.epochs=5"],
     "objective.skips_from = 0.9 leaves none of the 5 epochs with the skip maps"),
    ('model.conv_pool="max"', "model.conv_pool = 'max' is not one of: flatten, avg"),
    ('model.conv_downsample="avgpool"', "model.conv_downsample = 'avgpool' is not one of: stride, maxpool"),
    ('objective.recon_from="code"', "objective.recon_from = 'code' is not one of: image, view"),
    ('objective.recon_from="view"', "objective.recon_from = 'view' chooses the code the contrastive"),
    (['objective.recon_from="view"', 'objective.name="contrastive"'],
     'needs objective.name = "contrastive" and objective.recon_weight > 0 (got \'contrastive\', 0.0)'),
    ("model.conv_widths=[8, 16]", "model.conv_widths must list 4 widths"),
    ("model.conv_strides=[1, 2, 2]", "model.conv_strides must list 4 strides of 1 or 2, the first 1"),
    ("model.conv_strides=[2, 2, 2, 2]", "model.conv_strides must list 4 strides of 1 or 2, the first 1"),
    ("model.conv_strides=[1, 3, 2, 2]", "model.conv_strides must list 4 strides of 1 or 2, the first 1"),
    ("augment.crop_scale=[0.9, 0.1]", "augment.crop_scale must be [low, high] with 0 < low <= high"),
])
def test_out_of_range_values_are_refused(override, message):
    assert message in error_of(override if isinstance(override, list) else [override])


def test_malformed_override_and_missing_or_invalid_files(tmp_path):
    assert "override 'train.epochs' must look like section.key=value" in error_of(["train.epochs"])
    assert f"config file '{tmp_path / 'nope.toml'}' does not exist" in error_of([], tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 3\n")
    assert f"config file '{bad}' is not valid TOML" in error_of([], bad)


def test_valid_overrides_are_typed():
    cfg = load_config(None, ["train.epochs=7", "train.lr=1", "data.name=cifar10", "model.mlp_hidden=[64, 32]"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.data.name, cfg.model.mlp_hidden) == (7, 1.0, "cifar10", [64, 32])
    assert isinstance(cfg.train.lr, float)
    assert set(flatten(cfg.to_dict())) == set(flatten(RunConfig().to_dict()))


@pytest.mark.parametrize("args,message", [
    (["--set", "train.epohcs=3"], "unknown config key 'train.epohcs'. Did you mean 'train.epochs'?"),
    (["--set", "train.lr=-0.1"], "train.lr must be > 0, got -0.1"),
    (["--set", "model.latent_dim=0"], "model.latent_dim must be > 0, got 0"),
    (["--set", "train.epochs=ten"], "train.epochs must be int, got str 'ten'"),
])
def test_cli_reports_config_errors_in_one_paragraph(capsys, args, message):
    assert cli.main(["train", *args]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("latentbench: error:") and message in err and "Traceback" not in err


def test_batch_larger_than_the_dataset(tmp_path, capsys):
    args = ["train", "--out", str(tmp_path)]
    for item in ['data.name="synthetic"', "data.synthetic_train=100", "data.synthetic_test=20", "data.image_size=8",
                 "train.batch_size=500", "train.threads=1"]:
        args += ["--set", item]
    assert cli.main(args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "train.batch_size = 500 is larger than the 90 training images; lower it" in err
    assert not list(tmp_path.rglob("*.pt"))


def test_mask_p_must_be_a_probability():
    assert "objective.mask_p must lie in [0, 1], got 1.5" in error_of(["objective.mask_p=1.5"])


def test_input_augment_accepts_the_colour_views_but_supervised_augment_does_not():
    assert load_config(None, ['objective.input_augment="color"']).objective.input_augment == "color"
    message = error_of(['objective.supervised_augment="color"'])
    assert "objective.supervised_augment = 'color' is not one of" in message


def test_invariance_weight_without_a_view_is_an_error_that_says_what_to_set():
    from latentbench.config import ConfigError, from_dict
    with pytest.raises(ConfigError, match="objective.input_augment"):
        from_dict({"objective": {"invariance_weight": 1.0}})
    objective = {"invariance_weight": 1.0, "input_augment": "digits", "input_augment_p": 0.0}
    cfg = from_dict({"objective": objective})
    assert cfg.objective.invariance_weight == 1.0
