"""Typed run configuration: dataclasses per section, strict TOML loading, dotted ``--set`` overrides.

Every hyper-parameter of a run lives here, with its default and unit beside it; nothing else in the
package holds a default. Loading is strict: an unknown key, a wrong type or an out-of-range value raises
:class:`ConfigError` naming the key (and the nearest valid key for a typo).

    cfg = load_config("configs/mnist_supervised.toml", overrides=["train.epochs=5"])
    cfg.to_dict()  # plain JSON-able dict, saved as config.json in every run directory
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration problem a user can fix; the message says which key and how."""


@dataclass
class DataConfig:
    name: str = "mnist"  # registered dataset: mnist | cifar10 | imagefolder | synthetic
    root: str = ""  # data root; "" = $LATENTBENCH_DATA, else ./data
    val_fraction: float = 0.1  # share of the train split held out for validation (report: 10%)
    split_seed: int = 0  # seed of the train/validation split (fixed across training seeds on purpose)
    train_subset: int = 0  # use only this many training images (0 = all); for quick presets
    download: bool = True  # let torchvision download MNIST/CIFAR-10 when missing (needs internet)
    # imagefolder / synthetic only:
    channels: int = 0  # 0 = infer (imagefolder) / 1 (synthetic)
    image_size: int = 0  # square side in pixels; 0 = infer (imagefolder) / 28 (synthetic)
    synthetic_train: int = 2000  # synthetic dataset: training images
    synthetic_test: int = 500  # synthetic dataset: test images
    synthetic_classes: int = 10
    skip_bad_images: bool = False  # imagefolder: skip unreadable files (with a warning) instead of failing


@dataclass
class ModelConfig:
    encoder: str = "auto"  # auto = mlp for small grayscale images, conv otherwise
    latent_dim: int = 128  # the report's latent size
    mlp_hidden: list[int] = field(default_factory=lambda: [256, 128])  # report: 784-256-128-128
    mlp_decoder_hidden: list[int] = field(default_factory=list)  # decoder widths from z outwards; [] = mirror
    mlp_activation: str = "relu"  # MLP encoder/decoder hidden activation: relu | gelu | silu | leaky_relu
    mlp_batchnorm: bool = False  # BatchNorm1d after each hidden layer of the MLP encoder (not the decoder)
    conv_widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])  # four conv layers
    conv_strides: list[int] = field(default_factory=lambda: [1, 2, 2, 2])  # 32x32 -> 32, 16, 8, 4
    # the last map to z: flatten (the report's: every position its own weights) | avg (global average pool
    # first, as ResNets do: position-free, widths[-1] inputs to the linear)
    conv_pool: str = "flatten"
    # how a stride-2 block halves the map: stride (the 3x3 conv strides by 2) | maxpool (the conv keeps the
    # side, a 2x2 max pool halves it before BatchNorm: 4x the block's multiply-accumulates)
    conv_downsample: str = "stride"
    skips: bool = False  # decoder receives encoder feature maps (the report's 'autoencoder (skip)')
    classifier_hidden: int = 64  # report: 128-64-ReLU-Dropout-10
    classifier_dropout: float = 0.2
    channels_last: bool = True  # conv models in NHWC memory format (faster on CPU and GPU)


@dataclass
class ObjectiveConfig:
    name: str = "autoencoder"  # autoencoder | supervised | contrastive
    recon_loss: str = "l1"  # l1 | mse | l1+mse | bce; L1 is what the report's MAE measures
    noise_std: float = 0.0  # Gaussian input noise (pixels in [0,1]); > 0 makes it denoising
    mask_p: float = 0.0  # masking noise: probability of zeroing each input pixel in training (denoising)
    label_smoothing: float = 0.0  # supervised cross-entropy
    temperature: float = 0.5  # NT-Xent temperature (SimCLR's CIFAR value)
    decoupled: bool = False  # contrastive: leave the positive out of NT-Xent's denominator (DCL, Yeh et al.)
    proj_hidden: int = 512  # projection head hidden width
    proj_dim: int = 128  # projection head output
    recon_weight: float = 0.0  # contrastive: weight of the (denoising) reconstruction term
    # contrastive: the code the decoder reconstructs the clean image from: "image" (a third encoder pass over
    # the image with noise_std / mask_p) | "view" (the first view's code, that view corrupted by noise_std /
    # mask_p: the view is the corruption, as in input_augment = "color"; one encoder pass fewer)
    recon_from: str = "image"
    augment: str = "auto"  # view augmentation: auto | digits | color | none
    supervised_augment: str = "none"  # supervised training augmentation: none | crop_flip | digits
    recon_augment: str = "none"  # autoencoder: augment the training input, reconstruct the augmented image
    # autoencoder: the encoder sees an augmented view, the target stays the image (none | crop_flip | digits |
    # color | erase: one square zeroed by augment.erase_p / erase_scale, i.e. in-painting)
    input_augment: str = "none"
    input_augment_p: float = 1.0  # autoencoder: fraction of training images given the input_augment view
    input_augment_until: float = 1.0  # autoencoder: fraction of the epochs with the input view (then clean)
    latent_noise: float = 0.0  # autoencoder: Gaussian noise on z in training, in each dim's batch std
    # autoencoder: pull between the code of the training input and the code of an input_augment view (a
    # second, independent view where input_augment_p > 0 makes the input itself a view)
    invariance_weight: float = 0.0
    # autoencoder: fraction of the epochs after which only the decoder trains (the encoder and its BatchNorm
    # statistics frozen); 1 = never. With input_augment_until: views shape the code, then the decoder fits
    # clean images
    encoder_frozen_from: float = 1.0
    # autoencoder with encoder_frozen_from < 1: "continue" = one learning-rate schedule over all the epochs (the
    # encoder stops mid-cycle); "restart" = the encoder's epochs get a whole schedule of their own (annealed when
    # it freezes) and the decoder-only epochs a fresh one (warm-up and all)
    encoder_frozen_schedule: str = "continue"
    # autoencoder with model.skips: fraction of the epochs before which the decoder gets no skip maps (the
    # code must carry the image alone, as without skips); 0 = skips from the start
    skips_from: float = 0.0


@dataclass
class AugmentConfig:
    crop_scale: list[float] = field(default_factory=lambda: [0.2, 1.0])  # random resized crop area range
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333333])  # aspect ratio range
    flip_p: float = 0.5  # horizontal flip probability (colour images)
    jitter_p: float = 0.8  # probability of colour jitter per image
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    gray_p: float = 0.2  # probability of converting to grayscale
    digit_crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])
    rotation_deg: float = 15.0  # digits: uniform rotation in [-deg, deg]
    translate: float = 0.1  # digits: shift as a fraction of the image side
    stroke_p: float = 0.0  # digits: probability of a thicker or thinner stroke (3x3 dilation / erosion)
    erase_p: float = 0.0  # digits, crop_flip and color: probability of erasing a random square (cutout)
    erase_scale: list[float] = field(default_factory=lambda: [0.02, 0.15])  # erased area fraction range


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 128  # global batch (split across ranks under torchrun)
    optimizer: str = "adam"  # adam (the report's; AdamW when weight_decay > 0) | sgd (Nesterov momentum)
    lr: float = 1e-3  # peak learning rate (report: Adam 1e-3)
    momentum: float = 0.9  # sgd only: Nesterov momentum (one-cycle cycles it between 0.85 and 0.95)
    weight_decay: float = 0.0  # adam: decoupled (AdamW) when > 0; sgd: L2 added to the gradient
    schedule: str = "constant"  # constant | cosine | onecycle
    warmup_epochs: float = 0.0  # linear warm-up for cosine
    patience: int = 5  # early stopping: epochs without validation improvement (0 = off)
    monitor: str = "auto"  # validation stat to select on; auto = objective's own; last = the final epoch
    seed: int = 0
    device: str = "auto"  # auto (cuda if present, else cpu) | cpu | cuda | cuda:N | mps
    threads: int = 0  # torch CPU threads; 0 = number of usable cores
    max_steps: int = 0  # stop after this many optimizer steps (0 = no limit); tiny-budget mode
    deterministic: bool = False  # torch deterministic algorithms + seeded everything
    compile: bool = False  # torch.compile the objective (pays off only on long GPU runs)
    amp: str = "auto"  # auto (bf16 on supporting GPUs, never on CPU) | off | bf16 | fp16
    sync_batchnorm: str = "auto"  # auto (on for contrastive with >1 GPU rank) | on | off
    log_every: int = 50  # progress-bar refresh, in steps
    # also save `last` mid-epoch this often (0 = at epoch ends only), so a kill without warning (SIGKILL, the OOM
    # killer, a lost node) costs minutes, not the epoch; saving the 64-512 CIFAR-10 model takes well under a second
    save_every_minutes: float = 10.0
    # exponential moving average of the weights and BatchNorm statistics, updated after every step; validation,
    # best.pt and evaluation use the average (0 = off; 0.999 averages over ~1,000 steps)
    ema_decay: float = 0.0


@dataclass
class EvalConfig:
    probe_epochs: int = 100  # MLP probe: max epochs (early stopping on validation; it stops at 30-60)
    # patience 5 stopped too early (MNIST AE probe val 96.97% -> 97.35% with 10); 20 with 4 views: session 8
    probe_patience: int = 20
    probe_lr: float = 1e-3
    probe_weight_decay: float = 0.0
    probe_hidden: int = 0  # MLP probe hidden width; 0 = model.classifier_hidden (the report's 64)
    linear_c: float = 1.0  # inverse L2 strength of the logistic-regression probe
    knn_k: int = 20
    knn_temperature: float = 0.07
    decoder_probe_epochs: int = 10  # decoder trained on frozen z for encoders without a decoder
    tsne_points: int = 5000  # test images in the t-SNE maps
    tsne_perplexity: float = 30.0
    silhouette_points: int = 5000
    n_reconstructions: int = 0  # 0 = 5 for 1-channel data, 10 otherwise (the report's figures)
    interp_steps: int = 10
    interp_classes: list[int] = field(default_factory=lambda: [4, 9])  # report: a 4 and a 9
    interp_indices: list[int] = field(default_factory=list)  # explicit test indices (override classes)
    batch_size: int = 1024  # inference batch
    seed: int = 0
    # added by the evaluation (issue 3):
    probe_batch_size: int = 128  # MLP and decoder probes' minibatch (the report's batch size)
    probe_standardize: bool = True  # MLP probe sees z standardised by train mean/std (scale-free across encoders)
    linear_max_iter: int = 300  # L-BFGS iterations of the logistic-regression probes (converges in ~100)
    alignment_points: int = 5000  # test images (two augmented views each) for alignment; uniformity on the same
    trust_points: int = 2000  # t-SNE points scored by trustworthiness (its cost is quadratic)
    tsne_iters: int = 250  # openTSNE iterations after early exaggeration (its default 500: 2x slower, same trust)
    pca_dims: int = 128  # the pixel-PCA baseline's dimensions (= the report's latent size)
    # added in session 7: the MLP probe's training codes include codes of mildly augmented training images
    # augmented copies of each training image in the MLP probe's training set (0 = off). MNIST AE probe,
    # mean val over seeds 0-2 (session 8), copies / patience: 2 / 10 97.82%, 2 / 20 97.84%, 4 / 10 97.75%,
    # 4 / 20 97.85%
    probe_views: int = 4
    probe_view_augment: str = "auto"  # auto (digits for 1 channel, none otherwise) | digits | crop_flip | none
    probe_view_rotation_deg: float = 5.0  # digits views: rotation in [-deg, deg]
    probe_view_translate: float = 0.05  # digits views: shift as a fraction of the side (1.4 px on MNIST)
    # added in session 12: colour images, supervised runs: also score the end-to-end head on each image and its
    # mirror image (mean of the two softmax outputs), reported beside the plain accuracy as e2e_*_acc_flip
    flip_tta: bool = True


@dataclass
class RunConfig:
    name: str = ""  # run directory name; "" = <dataset>_<objective>_s<seed>
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def run_name(self) -> str:
        return self.name or f"{self.data.name}_{self.objective.name}_s{self.train.seed}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def probe_view_kind(requested: str, channels: int) -> str:
    """``eval.probe_view_augment`` resolved for images of ``channels`` channels. ``auto``: mild digit warps for
    grayscale images, none for colour ones (on CIFAR-10 contrastive codes pad-and-crop + flip views cost the
    MLP probe 0.5-0.7 pt of validation accuracy in two of three runs; docs/evaluation.md)."""
    if requested != "auto":
        return requested
    return "digits" if channels == 1 else "none"


def probe_hidden_width(cfg: RunConfig) -> int:
    """The MLP probe's hidden width: ``eval.probe_hidden``, or the model's classifier width when it is 0."""
    return cfg.eval.probe_hidden or cfg.model.classifier_hidden


def probe_view_copies(ev: EvalConfig, channels: int) -> int:
    """How many augmented copies of each training image the MLP probe trains on (0 when the views are off)."""
    return ev.probe_views if probe_view_kind(ev.probe_view_augment, channels) != "none" else 0


TRAINING_AUGMENTS = ("none", "crop_flip", "digits")  # training-input augmentations (not contrastive views)
CHOICES: dict[str, tuple[str, ...]] = {
    "objective.recon_loss": ("l1", "mse", "l1+mse", "bce"),
    "objective.augment": ("auto", "digits", "color", "none"),
    "objective.supervised_augment": TRAINING_AUGMENTS,
    "objective.recon_augment": TRAINING_AUGMENTS,
    "objective.input_augment": (*TRAINING_AUGMENTS, "color", "erase"),  # corruptions: SimCLR's views fit too
    "objective.recon_from": ("image", "view"),
    "objective.encoder_frozen_schedule": ("continue", "restart"),
    "model.mlp_activation": ("relu", "gelu", "silu", "leaky_relu"),
    "model.conv_pool": ("flatten", "avg"),
    "model.conv_downsample": ("stride", "maxpool"),
    "train.schedule": ("constant", "cosine", "onecycle"),
    "train.optimizer": ("adam", "sgd"),
    "train.amp": ("auto", "off", "bf16", "fp16"),
    "train.sync_batchnorm": ("auto", "on", "off"),
    "eval.probe_view_augment": ("auto", "digits", "crop_flip", "none"),
}

POSITIVE = {
    "model.latent_dim", "train.batch_size", "train.epochs", "train.lr", "eval.knn_k",
    "eval.batch_size", "eval.interp_steps", "objective.temperature", "objective.proj_dim",
    "objective.proj_hidden", "model.classifier_hidden", "data.synthetic_train", "data.synthetic_test",
    "eval.probe_epochs", "eval.knn_temperature", "eval.tsne_perplexity",
    "eval.probe_batch_size", "eval.linear_c", "eval.linear_max_iter", "eval.tsne_iters", "eval.pca_dims",
    "eval.probe_lr",
}
# Keys that change where a run trains, how fast or how it reports, not what it learns: runs that differ only in
# them (and the seed) are seeds of one recipe (the report), and a resume may change them (train.py)
RUN_SETTINGS = frozenset({
    "name", "out_dir", "data.root", "data.download", "train.device", "train.threads", "train.log_every",
    "train.save_every_minutes", "train.compile", "train.amp", "train.deterministic",
})

NON_NEGATIVE = {
    "train.weight_decay", "objective.noise_std", "objective.latent_noise", "objective.recon_weight",
    "objective.invariance_weight",
    "train.max_steps", "train.save_every_minutes",
    "train.patience", "train.threads", "data.train_subset", "train.warmup_epochs",
    "objective.label_smoothing", "eval.decoder_probe_epochs", "eval.tsne_points",
    "eval.probe_patience", "eval.probe_weight_decay", "eval.probe_hidden", "eval.silhouette_points",
    "eval.n_reconstructions",
    "eval.alignment_points", "eval.trust_points", "eval.probe_views", "eval.probe_view_rotation_deg",
    "eval.probe_view_translate",
}
UNIT_INTERVAL = {
    "data.val_fraction", "model.classifier_dropout", "augment.flip_p", "augment.jitter_p",
    "augment.gray_p", "objective.label_smoothing", "augment.stroke_p", "augment.erase_p", "objective.mask_p",
    "objective.input_augment_p", "objective.input_augment_until", "objective.encoder_frozen_from",
    "objective.skips_from",
    "train.momentum",
}


def _section_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"list of {typing.get_args(tp)[0].__name__}"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a {_type_name(tp)}, got {type(value).__name__} {value!r}")
        return [_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _all_keys() -> list[str]:
    return list(flatten(RunConfig().to_dict()))


def _unknown_key(key: str, valid: list[str]) -> ConfigError:
    section, _, leaf = key.rpartition(".")
    close = difflib.get_close_matches(leaf, valid, n=1, cutoff=0.5)
    elsewhere = [k for k in _all_keys() if k.rpartition(".")[2] == leaf]
    if close:
        hint = f" Did you mean '{section + '.' if section else ''}{close[0]}'?"
    elif elsewhere:
        hint = f" Did you mean '{elsewhere[0]}'?"
    else:
        hint = ""
    return ConfigError(f"unknown config key '{key}'.{hint} Valid keys here: {', '.join(sorted(valid))}.")


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    types_ = _section_types(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in types_:
            raise _unknown_key(full, list(types_))
        tp = types_[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"'{full}' is a section; write it as [{full}] with keys under it")
            kwargs[key] = _build(tp, value, f"{full}.")
        else:
            kwargs[key] = _coerce(full, value, tp)
    return cls(**kwargs)


def _check_ranges(cfg: RunConfig) -> None:
    flat = flatten(cfg.to_dict())
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            raise ConfigError(f"{key} = {flat[key]!r} is not one of: {', '.join(allowed)}")
    for key in POSITIVE:
        if flat[key] <= 0:
            raise ConfigError(f"{key} must be > 0, got {flat[key]!r}")
    for key in NON_NEGATIVE:
        if flat[key] < 0:
            raise ConfigError(f"{key} must be >= 0, got {flat[key]!r}")
    for key in UNIT_INTERVAL:
        if not 0.0 <= flat[key] <= 1.0:
            raise ConfigError(f"{key} must lie in [0, 1], got {flat[key]!r}")
    if not 0.0 <= cfg.train.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay must lie in [0, 1) (0 = off; 1 would never move the average off the "
                          f"initial weights), got {cfg.train.ema_decay!r}")
    if not 0.0 < cfg.data.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must lie strictly between 0 and 1, got {cfg.data.val_fraction}")
    for key in ("augment.crop_scale", "augment.crop_ratio", "augment.digit_crop_scale", "augment.erase_scale"):
        lo_hi = flat[key]
        if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
            raise ConfigError(f"{key} must be [low, high] with 0 < low <= high, got {lo_hi}")
    if any(w <= 0 for w in cfg.model.mlp_hidden + cfg.model.mlp_decoder_hidden + cfg.model.conv_widths):
        raise ConfigError("model.mlp_hidden, model.mlp_decoder_hidden and model.conv_widths must hold positive widths")
    if cfg.objective.invariance_weight > 0 and cfg.objective.input_augment == "none":
        raise ConfigError("objective.invariance_weight > 0 needs a view to compare with: set "
                          "objective.input_augment (e.g. \"digits\"), and objective.input_augment_p = 0 to "
                          "reconstruct from clean images only")
    if cfg.objective.encoder_frozen_from < 1 and cfg.objective.name != "autoencoder":
        raise ConfigError(f"objective.encoder_frozen_from < 1 (decoder-only epochs) applies to the "
                          f"autoencoder objective only, not to objective.name = {cfg.objective.name!r}: "
                          f"leave it at 1")
    if cfg.objective.encoder_frozen_schedule == "restart" and not (cfg.objective.encoder_frozen_from < 1
                                                                   and cfg.train.schedule != "constant"):
        raise ConfigError(f"objective.encoder_frozen_schedule = \"restart\" restarts the learning-rate schedule "
                          f"when the encoder freezes; it needs objective.encoder_frozen_from < 1 (got "
                          f"{cfg.objective.encoder_frozen_from}) and train.schedule \"onecycle\" or \"cosine\" "
                          f"(got {cfg.train.schedule!r}): set them, or leave it at \"continue\"")
    if cfg.objective.recon_from != "image" and not (cfg.objective.name == "contrastive"
                                                    and cfg.objective.recon_weight > 0):
        raise ConfigError(f"objective.recon_from = {cfg.objective.recon_from!r} chooses the code the "
                          f"contrastive objective's reconstruction term decodes; it needs objective.name = "
                          f"\"contrastive\" and objective.recon_weight > 0 (got {cfg.objective.name!r}, "
                          f"{cfg.objective.recon_weight}): leave it at \"image\"")
    if cfg.objective.skips_from > 0 and not (cfg.objective.name == "autoencoder" and cfg.model.skips):
        skips = str(cfg.model.skips).lower()
        raise ConfigError(f"objective.skips_from > 0 (epochs without the decoder's skip maps) applies to the "
                          f"autoencoder with model.skips = true only (objective.name = "
                          f"{cfg.objective.name!r}, model.skips = {skips}): leave it at 0")
    if cfg.train.epochs - 1 < cfg.objective.skips_from * cfg.train.epochs:
        highest = (cfg.train.epochs - 1) / cfg.train.epochs
        raise ConfigError(f"objective.skips_from = {cfg.objective.skips_from} leaves none of the "
                          f"{cfg.train.epochs} epochs with the skip maps, which evaluation uses: lower it "
                          f"(at most {highest:g}) or set model.skips = false")
    if len(cfg.model.conv_widths) != 4:
        raise ConfigError(f"model.conv_widths must list 4 widths (four conv layers), got {cfg.model.conv_widths}")
    strides = cfg.model.conv_strides
    if len(strides) != 4 or strides[0] != 1 or any(s not in (1, 2) for s in strides):
        raise ConfigError(f"model.conv_strides must list 4 strides of 1 or 2, the first 1 (the decoder mirrors "
                          f"blocks 2-4 and the first block sees the whole image), got {strides}")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value (e.g. train.epochs=5)")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # bare words are strings: --set data.name=cifar10
    return key.split("."), value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Merge ``key.sub=value`` strings into a nested dict; validation happens in :func:`from_dict`."""
    for text in overrides:
        path, value = _parse_override(text)
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
        node[path[-1]] = value
    return tree


def from_dict(tree: dict[str, Any]) -> RunConfig:
    cfg = _build(RunConfig, tree)
    _check_ranges(cfg)
    return cfg


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist; see configs/ for recipes")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file '{path}' is not valid TOML: {err}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    tree = read_toml(path) if path else {}
    return from_dict(apply_overrides(tree, list(overrides or [])))


def save_config(cfg: RunConfig, path: Path) -> None:
    from latentbench.io import atomic_write_text

    atomic_write_text(path, json.dumps(cfg.to_dict(), indent=2) + "\n")


def load_saved_config(path: Path) -> RunConfig:
    """A run directory's config.json; a damaged file gives an error naming it."""
    from latentbench.io import read_json

    tree = read_json(path)
    if not isinstance(tree, dict):
        raise ConfigError(f"'{path}' does not hold a config (expected a JSON object)")
    try:
        return from_dict(tree)
    except ConfigError as err:
        raise ConfigError(f"'{path}': {err}") from None

