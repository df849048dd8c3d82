"""The report's study as data: the grid of runs, the presets, and ``reproduce``, which runs it resumably.

    latentbench reproduce --preset quick --data-root ../shared/data      # whole grid, <= 15 min on 2 CPU cores
    latentbench reproduce --preset paper --datasets mnist                # the report's settings, 3 seeds
    latentbench reproduce --preset smoke                                 # synthetic stand-ins, seconds (tests)

The grid (``GRID``) is every (dataset, model) of the report; each model's hyper-parameters live in ONE
place, its recipe ``configs/<dataset>_<model>.toml`` (shipped inside the package as ``latentbench/recipes``,
a link to ``configs/``). A preset (``latentbench/presets/<name>.toml``) only layers budget overrides on top
(epochs, subsets, evaluation sizes) and says how many seeds each dataset gets. The resolved order of
overrides for one run is: recipe -> preset (all runs) -> preset dataset -> preset model -> ``--data-root`` /
``--device`` -> ``--set`` -> the study's own ``name``, ``out_dir`` and ``train.seed``.

The study folder (``--out``, default ``runs/study_<preset>``) holds ``study.json`` (the plan and the
command), ``runs/<dataset>_<model>_s<seed>/`` run directories and ``report.html`` / ``report.md``.
Re-running the same command skips finished runs (``run_info.json`` status ``finished``) and evaluations
(``metrics.json`` and the figures it lists present) and resumes interrupted runs from ``checkpoints/last.pt``; Ctrl-C stops after
saving, keeping every finished run. A run directory made with different settings is never mixed in: the
study stops and names the keys that differ.
"""

from __future__ import annotations

import json
import shlex
import time
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from latentbench.config import (ConfigError, EvalConfig, ModelConfig, RunConfig, apply_overrides, flatten,
                               from_dict, probe_hidden_width, probe_view_copies, read_toml)
from latentbench.io import RunFileError, atomic_write_json, check_writable, lock_holder, read_json, run_directory_lock

# The report's grid: dataset -> models, in the report's order. Each pair has the recipe <dataset>_<model>.toml.
GRID: dict[str, tuple[str, ...]] = {
    "mnist": ("autoencoder", "supervised", "contrastive"),
    "cifar10": ("autoencoder", "autoencoder_skip", "denoising", "supervised", "contrastive"),
}
DATASET_LABELS = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
PRESETS = ("smoke", "quick", "paper")

# Keys that may differ between the saved config of a run and the study's config without changing what the
# run computes (where the data lives, which device, how many threads, progress output).
NEUTRAL_KEYS = {"data.root", "data.download", "train.device", "train.threads", "train.log_every", "out_dir",
                "name", "train.amp", "train.compile"}
DONE_STATES = ("evaluated", "diverged")  # run states a re-run skips
STUDY_FILE = "study.json"  # the plan and its sessions; what marks a study folder

# Cost model for the up-front estimate: seconds per image on this project's 2-core reference CPU, measured with one
# training thread while other jobs shared the machine (load ~4), float32, batch 128. A training epoch costs n_train x
# TRAIN + n_val x TRAIN / 3 (the validation pass is forward only). Evaluation costs EVAL_FIXED + (train + val + test)
# x EMBED + n_train x PROBES (linear probe, kNN, latent statistics, pixel baselines) + the MLP probe's code-epochs x
# MLP_PROBE + n_train x decoder-probe epochs x DECODER_PROBE (encoders without a decoder) + t-SNE points x TSNE. The
# MLP probe sees n_train codes per epoch, and with probe views (eval.probe_views) it is fitted again on (1 + views) x
# n_train codes after encoding views x n_train more images; each fit runs min(eval.probe_epochs,
# PROBE_TYPICAL_BEST_EPOCH + eval.probe_patience) epochs (early stopping). Training (its TRAIN_COMPUTE_SHARE) and
# embedding costs scale with the model's multiply-accumulates per image against the default widths' (compute_scale).
# Early stopping and a faster machine make real runs shorter; the ETA printed during the study rescales the remaining
# estimate by how long the finished runs took against theirs.
# The conv rows were re-measured in sessions 5-6 (2 threads, idle, full-length recipes at widths 32-256,
# docs/results.md): autoencoder 704 s, supervised 466 s, contrastive + denoising 1,760 s for 20 epochs of
# 45,000 + 5,000 images, i.e. 7.5e-4 / 5.0e-4 / 1.9e-3 s per image; kept ~20% above that. Supervised
# re-measured in session 9 with its Nesterov SGD recipe: 378 s for 20 epochs (4.05e-4 s per image).
TRAIN_SECONDS_PER_IMAGE = {
    ("mlp", "autoencoder"): 4.3e-5, ("mlp", "supervised"): 1.6e-5, ("mlp", "contrastive"): 5.0e-5,
    ("conv", "autoencoder"): 9e-4, ("conv", "supervised"): 4.9e-4, ("conv", "contrastive"): 2.3e-3,
}
# The share of that per-image time that grows with the model's multiply-accumulates (compute_scale); the rest
# (batch assembly, augmentation, optimizer bookkeeping) does not. Measured with 1 thread on MNIST, encoder
# 784-1024-512-128 against 784-256-128-128 (5.6x the encoder's multiply-accumulates): supervised 2.7x the
# time per epoch, contrastive 1.55x (its augmentation dominates); autoencoder 784-512-256-128 (2.3x) 1.37x.
# CIFAR-10 supervised, widths 64-128-256-512 against 32-64-128-256 (3.9x): 2.9x with Adam (66 against 23 s
# per epoch, 2 threads), 3.4x with session 9's SGD (65 against 19 s); the other conv objectives are assumed
# to be like the Adam measurement.
TRAIN_COMPUTE_SHARE = {
    ("mlp", "autoencoder"): 0.3, ("mlp", "supervised"): 0.4, ("mlp", "contrastive"): 0.12,
    ("conv", "autoencoder"): 0.65, ("conv", "supervised"): 0.83, ("conv", "contrastive"): 0.65,
}
EVAL_FIXED_SECONDS = 4.0
# session 40 (Zen 3 host, the quick preset, 20,000 CIFAR-10 images): 13.2 s for the contrastive encoder (scale 1),
# 23-25.5 s for the autoencoders (scale 2.26), i.e. 0.51-0.66e-3 per image at scale 1 (the constant said 0.9e-3)
EMBED_SECONDS_PER_IMAGE = {"mlp": 2e-5, "conv": 0.65e-3}
# linear probe, kNN, latent statistics and pixel baselines per training code; session 40 (Zen 3 host, the quick
# preset's MNIST autoencoder): 6.5-9.8 s on 54,000 codes plus the pixel baselines once per dataset (30-41.5 s,
# shared by three runs): 3.1-4.4e-4 s per code. CIFAR-10 (session 39, 45,000 codes): linear probe and kNN 6 s
# plus its pixel baselines once; session 6's 1.5e-3 covered the MLP probe as well
PROBE_SECONDS_PER_IMAGE = {"mlp": 3.5e-4, "conv": 1.0e-3}
# the MLP probe's seconds per code per epoch at the report's 64 hidden units (one thread; probe_width_factor for
# wider ones): session 40, Zen 3 host, batch 128: the MNIST autoencoder's 256-unit probe 291 s for 77 epochs of
# 270,000 codes (four views) and 98 of 54,000 (plain), i.e. 11.2e-6 at 256 units, 7.5e-6 at 64; CIFAR-10
# (session 39, 64 units) 23 s for 69 epochs of 45,000 codes, 7.4e-6. Session 7's constant, per code and not per
# epoch, put this probe at a fifth of its time
MLP_PROBE_SECONDS_PER_CODE_EPOCH = 8e-6
# early stopping: the epoch the MLP probe keeps (the MNIST autoencoder's 57 with views and 78 without, CIFAR-10
# 49); a fit then runs eval.probe_patience epochs more, up to eval.probe_epochs
PROBE_TYPICAL_BEST_EPOCH = 60
# the MLP probe's cost per code grows with its hidden width about as (336 + hidden): measured (session 11, the
# MNIST autoencoder's codes with four views, 3 seeds) 64 -> 256 units: 1.48x the probe's seconds
PROBE_WIDTH_OFFSET = 336
# the decoder probe per training code and epoch; session 40 (Zen 3 host, the quick preset): the MNIST supervised
# and contrastive encoders' MLP decoders 45-47 s for 5 epochs of 54,000 codes (1.7e-4; the constant said 4e-5),
# the CIFAR-10 supervised encoder's conv decoder 19 s for 1 epoch of 4,500 (4.2e-3)
DECODER_PROBE_SECONDS_PER_IMAGE = {"mlp": 1.7e-4, "conv": 4e-3}
TSNE_SECONDS_PER_POINT = 5e-3
DATASET_SIZES = {"mnist": (60_000, 10_000), "cifar10": (50_000, 10_000)}  # (train + val, test) images


# ------------------------------------------------------------------------------------------ presets
def _package_file(folder: str, name: str) -> Path:
    return Path(str(resources.files("latentbench").joinpath(folder, name)))


def recipe_path(dataset: str, model: str) -> Path:
    """The recipe of one grid cell: ``configs/<dataset>_<model>.toml`` as shipped in the package."""
    path = _package_file("recipes", f"{dataset}_{model}.toml")
    if not path.is_file():
        raise ConfigError(f"the study's recipe '{path.name}' is missing from the package ({path}); "
                          "reinstall latentbench or restore configs/")
    return path


@dataclass
class Preset:
    """A study budget: description, seeds per dataset and override lists per scope (all / dataset / model)."""

    name: str
    description: str
    overrides: list[str] = field(default_factory=list)
    seeds: dict[str, int] = field(default_factory=dict)
    dataset_overrides: dict[str, list[str]] = field(default_factory=dict)
    model_overrides: dict[tuple[str, str], list[str]] = field(default_factory=dict)


def _str_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of 'key=value' strings, got {value!r}")
    return list(value)


def parse_preset(name: str, tree: dict[str, Any]) -> Preset:
    """Validate a preset's TOML tree: top-level ``description``/``overrides``, one table per dataset."""
    known_top = {"description", "overrides", *GRID}
    for key in tree:
        if key not in known_top:
            raise ConfigError(f"preset '{name}': unknown key '{key}'; expected one of {', '.join(sorted(known_top))}")
    preset = Preset(name, str(tree.get("description", "")), _str_list(tree.get("overrides", []), f"{name}.overrides"))
    for dataset in GRID:
        table = tree.get(dataset, {})
        for key in table:
            if key not in {"seeds", "overrides", "models"}:
                raise ConfigError(f"preset '{name}': unknown key '{dataset}.{key}'; expected seeds, overrides, models")
        seeds = table.get("seeds", 1)
        if not isinstance(seeds, int) or seeds < 1:
            raise ConfigError(f"preset '{name}': {dataset}.seeds must be a positive integer, got {seeds!r}")
        preset.seeds[dataset] = seeds
        preset.dataset_overrides[dataset] = _str_list(table.get("overrides", []), f"{name}.{dataset}.overrides")
        for model, values in table.get("models", {}).items():
            if model not in GRID[dataset]:
                raise ConfigError(f"preset '{name}': {dataset}.models.{model} is not in the grid; "
                                  f"choose one of {', '.join(GRID[dataset])}")
            preset.model_overrides[(dataset, model)] = _str_list(values, f"{name}.{dataset}.models.{model}")
    return preset


def load_preset(name: str) -> Preset:
    """A packaged preset by name (``smoke``, ``quick``, ``paper``) or a path to a preset TOML file."""
    path = Path(name)
    if not (path.suffix == ".toml" and path.is_file()):
        path = _package_file("presets", f"{name}.toml")
        if not path.is_file():
            raise ConfigError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)} "
                              "or give a preset .toml file")
    try:
        tree = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"preset file '{path}' is not valid TOML: {err}") from None
    return parse_preset(path.stem, tree)


# --------------------------------------------------------------------------------------------- plan
@dataclass
class PlannedRun:
    """One cell x seed of the study, with everything needed to (re)create its config."""

    dataset: str
    model: str
    seed: int
    overrides: list[str]  # applied on top of the recipe
    config: RunConfig

    @property
    def name(self) -> str:
        return f"{self.dataset}_{self.model}_s{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out_dir) / self.config.name

    @property
    def recipe(self) -> str:
        return f"configs/{self.dataset}_{self.model}.toml"

    def command(self) -> str:
        """The equivalent stand-alone commands (the recipe path as in a source checkout)."""
        sets = " ".join(f"--set {shlex.quote(o)}" for o in [*self.overrides, f'name="{self.config.name}"'])
        out = shlex.quote(self.config.out_dir)
        return (f"latentbench train {self.recipe} {sets} --out {out} && "
                f"latentbench eval {shlex.quote(str(self.run_dir))}")


def select_datasets(datasets: list[str] | None) -> list[str]:
    chosen = list(GRID) if not datasets else [d.strip().lower().replace("-", "") for d in datasets if d.strip()]
    for d in chosen:
        if d not in GRID:
            raise ConfigError(f"unknown dataset '{d}' for the study; choose from {', '.join(GRID)} (comma-separated)")
    return [d for d in GRID if d in chosen]  # grid order, no duplicates


def plan_study(preset: Preset, out: Path, datasets: list[str] | None = None, seeds: int | None = None,
               user_overrides: list[str] | None = None) -> list[PlannedRun]:
    """Expand the grid into runs; each run's config is loaded (and validated) now, before any training."""
    if seeds is not None and seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    plan = []
    for dataset in select_datasets(datasets):
        for model in GRID[dataset]:
            for seed in range(seeds or preset.seeds.get(dataset, 1)):
                overrides = [*preset.overrides, *preset.dataset_overrides.get(dataset, []),
                             *preset.model_overrides.get((dataset, model), []), *(user_overrides or []),
                             f"train.seed={seed}"]
                name = f"{dataset}_{model}_s{seed}"
                own = [f'name="{name}"', f'out_dir="{out / "runs"}"']
                tree = apply_overrides(read_toml(recipe_path(dataset, model)), overrides + own)
                try:
                    cfg = from_dict(tree)
                except ConfigError as err:
                    raise ConfigError(f"study run {name} (preset '{preset.name}'): {err}") from None
                plan.append(PlannedRun(dataset, model, seed, overrides, cfg))
    return plan


# ----------------------------------------------------------------------------------------- estimates
def _split_sizes(cfg: RunConfig, dataset: str) -> tuple[int, int, int]:
    """(train, val, test) image counts the run will see, without loading the data."""
    d = cfg.data
    if d.name == "synthetic":
        total, test = d.synthetic_train, d.synthetic_test
    else:
        total, test = DATASET_SIZES.get(d.name, DATASET_SIZES[dataset])
    val = max(1, round(total * d.val_fraction))
    train = total - val
    return (min(train, d.train_subset) if d.train_subset else train), val, test


def _image_shape(cfg: RunConfig, dataset: str) -> tuple[int, int]:
    """(channels, side) of the run's images, without loading the data."""
    if cfg.data.name == "synthetic":
        return cfg.data.channels or 1, cfg.data.image_size or 28
    return (1, 28) if dataset == "mnist" else (3, 32)


def _encoder_kind(cfg: RunConfig, dataset: str) -> str:
    if cfg.model.encoder != "auto":
        return "mlp" if cfg.model.encoder == "mlp" else "conv"
    channels, size = _image_shape(cfg, dataset)
    return "mlp" if channels == 1 and size <= 32 else "conv"


def _mlp_macs(widths: list[int]) -> int:
    return sum(a * b for a, b in zip(widths[:-1], widths[1:]))


def model_macs(model: ModelConfig, kind: str, channels: int, size: int) -> tuple[int, int]:
    """Multiply-accumulates per image of the encoder and of its decoder, counted from the widths (the layers
    of models.py: MLP layers, or 3x3 convs with the model's strides + a linear to z, mirrored by transposed
    convs: 4x4 where they double the side, 3x3 where they keep it)."""
    if kind == "mlp":
        pixels = channels * size * size
        decoder_hidden = model.mlp_decoder_hidden or model.mlp_hidden[::-1]
        return (_mlp_macs([pixels, *model.mlp_hidden, model.latent_dim]),
                _mlp_macs([model.latent_dim, *decoder_hidden, pixels]))
    chans, side, encoder = [channels, *model.conv_widths], size, 0
    for c_in, c_out, stride in zip(chans[:-1], chans[1:], model.conv_strides):
        conv_side = side if model.conv_downsample == "maxpool" else (side - 1) // stride + 1
        side = (side - 1) // stride + 1
        encoder += conv_side * conv_side * c_in * c_out * 9  # the max pool's comparisons are not counted
    positions = 1 if model.conv_pool == "avg" else side * side  # the average's additions are not counted
    to_latent = positions * model.conv_widths[-1] * model.latent_dim
    decoder = side * side * model.latent_dim * model.conv_widths[-1]  # z to the last map: every position
    up_chans = [*model.conv_widths[:0:-1], channels]
    for c_in, c_out, stride in zip(up_chans[:-1], up_chans[1:], model.conv_strides[:0:-1]):
        decoder += side * side * c_in * c_out * (16 if stride == 2 else 9)
        side *= stride
    return encoder + to_latent, decoder


def _has_decoder(cfg: RunConfig) -> bool:
    o = cfg.objective
    return o.name == "autoencoder" or (o.name == "contrastive" and o.recon_weight > 0)


def compute_scale(cfg: RunConfig, dataset: str) -> float:
    """How much more compute per image this run's model needs than the default widths the cost model was
    measured with (1.0 for the report's widths)."""
    kind, (channels, size) = _encoder_kind(cfg, dataset), _image_shape(cfg, dataset)
    counted = [model_macs(model, kind, channels, size) for model in (cfg.model, ModelConfig())]
    ours, reference = ((enc + dec if _has_decoder(cfg) else enc) for enc, dec in counted)
    return ours / reference


def probe_width_factor(cfg: RunConfig) -> float:
    """How much more the MLP probe costs per code than the report's 64-unit probe the constants assume."""
    report_width = ModelConfig().classifier_hidden
    return (PROBE_WIDTH_OFFSET + probe_hidden_width(cfg)) / (PROBE_WIDTH_OFFSET + report_width)


def mlp_probe_seconds(cfg: RunConfig, n_train: int, views: int) -> float:
    """The MLP probe's rough wall time on ``n_train`` training codes: one fit on them, and with ``views``
    augmented copies of each a second fit on (1 + views) x n_train codes; each runs the epochs early stopping
    typically leaves (see the cost model above)."""
    ev = cfg.eval
    epochs = ev.probe_epochs
    if ev.probe_patience:
        epochs = min(epochs, PROBE_TYPICAL_BEST_EPOCH + ev.probe_patience)
    codes = n_train + (n_train * (1 + views) if views else 0)
    return codes * epochs * MLP_PROBE_SECONDS_PER_CODE_EPOCH * probe_width_factor(cfg)


def estimate_parts(run: PlannedRun) -> tuple[float, float]:
    """(training, evaluation): rough wall times of a whole run on the reference 2-core CPU (see the cost model
    above)."""
    cfg = run.config
    kind = _encoder_kind(cfg, run.dataset)
    n_train, n_val, n_test = _split_sizes(cfg, run.dataset)
    epochs = cfg.train.epochs
    if cfg.train.max_steps:
        epochs = min(epochs, cfg.train.max_steps * cfg.train.batch_size / max(1, n_train))
    scale = compute_scale(cfg, run.dataset)
    share = TRAIN_COMPUTE_SHARE[(kind, cfg.objective.name)]
    per_image = TRAIN_SECONDS_PER_IMAGE[(kind, cfg.objective.name)] * (1 - share + share * scale)
    train = epochs * (n_train + n_val / 3) * per_image
    views = probe_view_copies(cfg.eval, _image_shape(cfg, run.dataset)[0])
    evaluation = (EVAL_FIXED_SECONDS
                  + (n_train * (1 + views) + n_val + n_test) * EMBED_SECONDS_PER_IMAGE[kind] * scale
                  + n_train * PROBE_SECONDS_PER_IMAGE[kind] + cfg.eval.tsne_points * TSNE_SECONDS_PER_POINT
                  + mlp_probe_seconds(cfg, n_train, views))
    if not _has_decoder(cfg):
        evaluation += n_train * cfg.eval.decoder_probe_epochs * DECODER_PROBE_SECONDS_PER_IMAGE[kind]
    return train, evaluation


def estimate_seconds(run: PlannedRun, state: str = "new", epochs_done: int = 0) -> float:
    """Rough wall time of what a run in ``state`` still needs on the reference 2-core CPU: the training epochs
    it has not done (none once it is trained), then its evaluation."""
    train, evaluation = estimate_parts(run)
    if state == "trained":
        return evaluation
    epochs = max(1, run.config.train.epochs)
    return train * max(0.0, 1.0 - min(epochs_done, epochs) / epochs) + evaluation


def training_progress(run: PlannedRun) -> tuple[int, float]:
    """(epochs done, seconds of training recorded) from the run's ``run_info.json``; (0, 0.0) for a new run or
    an unreadable file."""
    try:
        info = read_json(run.run_dir / "run_info.json") if (run.run_dir / "run_info.json").is_file() else {}
    except RunFileError:
        return 0, 0.0
    epochs, seconds = info.get("epochs_done"), info.get("train_seconds")
    if not isinstance(epochs, int) or not isinstance(seconds, (int, float)) or epochs <= 0 or seconds <= 0:
        return 0, 0.0
    return epochs, float(seconds)


def observed_pace(plan: list[PlannedRun], progress: dict[str, tuple[int, float]]) -> tuple[float, float]:
    """(seconds recorded, seconds the cost model gives for the same epochs) over the training already done in
    the study folder (``progress``: run name -> :func:`training_progress`), finished or not: how much slower
    (or faster) this machine trains than the reference CPU. (0, 0) before any epoch."""
    actual = predicted = 0.0
    for run in plan:
        epochs_done, seconds = progress[run.name]
        if epochs_done:
            epochs = max(1, run.config.train.epochs)
            actual += seconds
            predicted += estimate_parts(run)[0] * min(epochs_done, epochs) / epochs
    return (actual, predicted) if actual > 0 and predicted > 0 else (0.0, 0.0)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@dataclass
class Eta:
    """Remaining-time estimate: the cost model, rescaled by how long the work measured so far took (the
    training already in the study folder, see :func:`observed_pace`, then each run this session finishes)."""

    estimates: dict[str, float]
    actual: float = 0.0  # seconds taken ...
    predicted: float = 0.0  # ... against the seconds the cost model gave for the same work

    def record(self, name: str, seconds: float) -> None:
        self.actual += seconds
        self.predicted += self.estimates[name]

    def remaining(self, pending: list[str]) -> float:
        return self.pace() * sum(self.estimates[n] for n in pending)

    def pace(self) -> float:
        """Seconds taken per second the cost model gave (1.0 before anything is measured)."""
        return self.actual / self.predicted if self.predicted > 0 and self.actual > 0 else 1.0


# ------------------------------------------------------------------------------------------- state
def evaluation_complete(run_dir: Path) -> bool:
    """``metrics.json`` is written after every metric group, so it alone does not mean done: the figures
    (drawn last) must exist too."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return False
    try:
        figures = read_json(path).get("figures", {})
    except RunFileError:
        return False
    return bool(figures) and all((run_dir / rel).is_file() for rel in figures.values())


def run_state(run_dir: Path) -> str:
    """``evaluated`` | ``trained`` | ``interrupted`` | ``diverged`` | ``new`` from the run's own files."""
    info_path, last = run_dir / "run_info.json", run_dir / "checkpoints" / "last.pt"
    try:
        status = read_json(info_path).get("status") if info_path.is_file() else None
    except RunFileError:
        status = None  # unreadable metadata: the checkpoint decides
    if status == "finished":
        return "evaluated" if evaluation_complete(run_dir) else "trained"
    if status == "diverged":
        return "diverged"
    return "interrupted" if last.is_file() else "new"


def config_differences(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Keys (other than :data:`NEUTRAL_KEYS`) whose values differ: ``key: saved -> wanted``.

    A key that a run saved by an older latentbench lacks counts as its default value (the option did not
    exist yet, so the run behaved as the default does).
    """
    defaults = flatten(RunConfig().to_dict())
    a, b = flatten(saved), flatten(wanted)
    a.update({k: defaults[k] for k in b.keys() - a.keys() if k in defaults})
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k not in NEUTRAL_KEYS and a.get(k) != b.get(k)]


def check_same_settings(run: PlannedRun) -> None:
    """Refuse a run directory trained with other settings. The ``eval`` section is not compared: the study
    evaluates every run with its own evaluation settings (:func:`evaluated_as_planned` re-evaluates)."""
    path = run.run_dir / "config.json"
    if not path.is_file():
        return
    trained = {k: v for k, v in read_json(path).items() if k != "eval"}
    wanted = {k: v for k, v in run.config.to_dict().items() if k != "eval"}
    diffs = config_differences(trained, wanted)
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise ConfigError(
            f"the run directory '{run.run_dir}' was made with different settings than this study asks for "
            f"({shown}). The study will not mix them: choose another --out, or delete that run directory to "
            "redo it with the new settings."
        )


# ------------------------------------------------------------------------------------------ running
def _default_evaluate(run_dir: Path, splits, eval_settings: EvalConfig) -> dict:
    """``latentbench eval RUN_DIR`` on the study's already decoded dataset, with the study's evaluation
    settings (they may differ from those saved with the run); it skips finished stages."""
    from latentbench.evaluate import evaluate, load_run

    return evaluate(load_run(run_dir, None, splits, eval_settings))


def _default_train(cfg: RunConfig, run_dir: Path, resume: bool, splits) -> Path:
    from latentbench.train import train

    return train(cfg, run_dir=run_dir, resume=resume, splits=splits)


class _SplitsCache:
    """Decode a dataset once per study (CIFAR-10 JPEG decoding takes a while); keeps the latest one only."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.splits = None

    def get(self, cfg: RunConfig):
        from latentbench.data import load_splits

        key = json.dumps({k: v for k, v in vars(cfg.data).items() if k != "download"}, sort_keys=True, default=str)
        if key != self.key:
            self.key, self.splits = None, None  # free the previous dataset first
            self.splits, self.key = load_splits(cfg.data), key
        return self.splits


def reproduce_command(preset: str, datasets: list[str] | None, seeds: int | None, out: Path | None,
                      data_root: str | None, device: str | None, extra_overrides: list[str]) -> str:
    parts = ["latentbench", "reproduce", "--preset", preset]
    if datasets:
        parts += ["--datasets", ",".join(datasets)]
    if seeds:
        parts += ["--seeds", str(seeds)]
    if out:
        parts += ["--out", str(out)]
    if data_root:
        parts += ["--data-root", str(data_root)]
    if device:
        parts += ["--device", device]
    for o in extra_overrides:
        parts += ["--set", o]
    return " ".join(shlex.quote(p) for p in parts)


def _write_study(path: Path, preset: Preset, plan: list[PlannedRun], command: str, state: dict[str, Any]) -> None:
    atomic_write_json(path, {
        "preset": preset.name,
        "description": preset.description,
        "command": command,
        "datasets": sorted({r.dataset for r in plan}, key=list(GRID).index),
        "runs": [{"name": r.name, "dataset": r.dataset, "model": r.model, "seed": r.seed,
                  "dir": str(Path("runs") / r.name), "recipe": r.recipe, "overrides": r.overrides,
                  "command": r.command()} for r in plan],
        **state,
    })


def _previous_sessions(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        return list(read_json(path).get("sessions", []))
    except RunFileError:
        return []


def announce(spec: Preset, plan: list[PlannedRun], states: dict[str, str], eta: Eta, out: Path,
             say: Callable[[str], None], dry_run: bool = False) -> None:
    """The preset, the number of runs and the estimated cost, before anything starts: the cost model's, scaled
    by the pace of the training already done in the folder where there is some."""
    todo = [r.name for r in plan if states[r.name] not in DONE_STATES]
    per_dataset = ", ".join(f"{DATASET_LABELS[d]}: {len(GRID[d])} models x "
                            f"{sum(1 for r in plan if r.dataset == d) // len(GRID[d])} seed(s)"
                            for d in dict.fromkeys(r.dataset for r in plan))
    say(f"latentbench reproduce: preset '{spec.name}' - {spec.description}")
    say(f"  {len(plan)} runs ({per_dataset}); {len(plan) - len(todo)} already done; study folder {out}")
    model = sum(eta.estimates[n] for n in todo)
    if eta.pace() != 1.0 and todo:
        say(f"  estimated time for the remaining {len(todo)}: ~{format_duration(eta.remaining(todo))} at the pace "
            f"of the training done here so far ({eta.pace():.2g}x the reference 2-core CPU's time, which would "
            f"take ~{format_duration(model)}; refined as runs finish)")
    else:
        say(f"  estimated time for the remaining {len(todo)}: ~{format_duration(model)} on a 2-core CPU "
            "(refined as runs finish)")
    holder = lock_holder(out) if dry_run and out.is_dir() else None
    if holder:
        say(f"  this study is running now ({holder}); a second one on this folder would be refused")
    if todo and (holder or not dry_run):
        say(f"  progress, from another terminal: latentbench status {out}")


def describe_plan(plan: list[PlannedRun], states: dict[str, str], eta: Eta, say: Callable[[str], None]) -> None:
    """One block per run for ``reproduce --dry-run``: what it would do next, about how long, and the
    stand-alone commands that do the same (to run the grid's cells as separate jobs on a cluster)."""
    next_step = {"new": "train, then evaluate", "interrupted": "resume training, then evaluate",
                 "trained": "evaluate", "evaluated": "nothing (done)", "diverged": "nothing (diverged; kept)"}
    for run in plan:
        state = states[run.name]
        cost = "" if state in DONE_STATES else f", ~{format_duration(eta.remaining([run.name]))}"
        holder = lock_holder(run.run_dir) if run.run_dir.is_dir() else None
        if holder:
            say(f"  {run.name} [training]: being trained now by {holder}{cost}")
            continue
        say(f"  {run.name} [{state}]: {next_step.get(state, state)}{cost}")
        where = shlex.quote(str(run.run_dir))
        commands = {"new": run.command(), "trained": f"latentbench eval {where}",
                    "interrupted": f"latentbench train --resume {where} && latentbench eval {where}"}
        if state in commands:
            say(f"      {commands[state]}")
    say("dry run: nothing was trained or written; run the same command without --dry-run to start")


def evaluated_as_planned(run: PlannedRun) -> bool:
    """Whether the run's last evaluation used the study's evaluation settings (``eval_state.json``); a run
    evaluated by hand with other settings (``latentbench eval RUN --set eval.tsne_points=500``) is evaluated
    again, and ``latentbench eval`` then redoes only what the changed settings touch. So is a run evaluated
    by an older latentbench whose eval settings lack a key of today's (a new evaluation option may change the
    numbers even at its default). Without the file there is nothing to compare, and the metrics stand."""
    from latentbench.evaluate import STATE_FILE  # lazy: planning a study needs no torch

    path = run.run_dir / STATE_FILE
    if not path.is_file():
        return True
    try:
        saved = read_json(path).get("eval", {})
    except RunFileError:
        return False
    wanted = run.config.to_dict()["eval"]
    if set(wanted) - set(saved):
        return False
    return not config_differences({"eval": saved}, {"eval": wanted})


def study_state(run: PlannedRun) -> str:
    """:func:`run_state`, except that a run evaluated with other settings than the study's counts as
    trained."""
    state = run_state(run.run_dir)
    return "trained" if state == "evaluated" and not evaluated_as_planned(run) else state


def run_one(run: PlannedRun, state: str, tag: str, splits: Callable[[], Any], train_fn: Callable[..., Path],
            evaluate_fn: Callable[[Path, Any, EvalConfig], dict], say: Callable[[str], None]) -> bool:
    """Train (or resume) and evaluate one run as its ``state`` requires; False when its training diverged."""
    from latentbench.train import TrainingDiverged

    if state in ("new", "interrupted"):
        verb = "resuming from its last checkpoint" if state == "interrupted" else "training"
        say(f"{tag}: {verb} (up to {run.config.train.epochs} epochs)")
        try:
            train_fn(run.config, run.run_dir, state == "interrupted", splits())
        except TrainingDiverged as err:
            say(f"{tag}: diverged ({err}); continuing with the next run")
            return False
    say(f"{tag}: evaluating")
    evaluate_fn(run.run_dir, splits(), run.config.eval)
    return True


class StudyRecord:
    """``study.json``: the plan and its command, and one entry per session (start, seconds, how it ended), so
    that the report can tell the study's whole wall time across interruptions."""

    def __init__(self, path: Path, spec: Preset, plan: list[PlannedRun], command: str) -> None:
        self.path, self.spec, self.plan, self.command = path, spec, plan, command
        self.sessions = _previous_sessions(path)
        self.started = time.time()

    def save(self, status: str) -> None:
        now = time.time()
        session = {"started": self.started, "ended": now, "seconds": round(now - self.started, 1),
                   "status": status}
        _write_study(self.path, self.spec, self.plan, self.command, {
            "status": status, "sessions": [*self.sessions, session],
            "wall_seconds": round(sum(s["seconds"] for s in self.sessions) + session["seconds"], 1)})


def run_plan(plan: list[PlannedRun], states: dict[str, str], eta: Eta, record: StudyRecord,
             train_fn: Callable[..., Path], evaluate_fn: Callable[[Path, Any, EvalConfig], dict],
             say: Callable[[str], None]) -> list[str]:
    """Train and evaluate, in order, every run not done yet, saving ``study.json`` after each; returns the
    names of the runs that diverged (now or earlier). A Ctrl-C or an error is recorded in ``study.json``
    with the run it stopped, and a Ctrl-C becomes :class:`TrainingInterrupted` naming the command that
    continues."""
    from latentbench.train import TrainingInterrupted

    cache = _SplitsCache()
    diverged = [name for name, state in states.items() if state == "diverged"]
    current = ""
    try:
        for i, run in enumerate(plan, 1):
            current, state, tag = run.name, states[run.name], f"[{i}/{len(plan)}] {run.name}"
            if state in DONE_STATES:
                say(f"{tag}: " + ("finished and evaluated earlier; skipped" if state == "evaluated" else
                                  f"diverged earlier; skipped (delete {run.run_dir} to try again)"))
                continue
            t0 = time.perf_counter()
            if not run_one(run, state, tag, lambda: cache.get(run.config), train_fn, evaluate_fn, say):
                diverged.append(run.name)
                continue
            took = time.perf_counter() - t0
            eta.record(run.name, took)
            pending = [r.name for r in plan[i:] if states[r.name] not in DONE_STATES]
            elapsed = format_duration(time.time() - record.started)
            left = format_duration(eta.remaining(pending))
            say(f"{tag}: done in {format_duration(took)}; elapsed {elapsed}, "
                f"about {left} left ({len(pending)} run(s))")
            record.save("running")
    except (KeyboardInterrupt, TrainingInterrupted) as err:
        record.save("interrupted")
        raise TrainingInterrupted(f"study interrupted during {current}; every finished run is kept in "
                                  f"{record.path.parent}. Continue with: {record.command}",
                                  exit_code=getattr(err, "exit_code", 130)) from None
    except Exception:
        record.save(f"failed during {current}")
        raise
    return diverged


def reproduce(preset: str = "quick", datasets: list[str] | None = None, seeds: int | None = None,
              out: Path | None = None, data_root: str | None = None, device: str | None = None,
              extra_overrides: list[str] | None = None, *, report: bool = True, dry_run: bool = False,
              log: Callable[[str], None] | None = None,
              train_fn: Callable[..., Path] | None = None,
              evaluate_fn: Callable[[Path, Any, EvalConfig], dict] | None = None) -> Path:
    """Run (or continue) the study of ``preset`` into ``out`` and build its report; returns the study folder.

    ``train_fn(cfg, run_dir, resume, splits)`` and ``evaluate_fn(run_dir, splits, eval_settings)`` default to
    the package's training and evaluation; tests swap them to count calls. ``dry_run`` says what the study
    would do (each run's state, estimated time and stand-alone command) and writes nothing.
    """
    say = log or (lambda text: print(text, flush=True))
    spec = load_preset(preset)
    folder = Path(out) if out else Path("runs") / f"study_{spec.name}"
    user = [*([f'data.root="{data_root}"'] if data_root else []), *([f'train.device="{device}"'] if device else []),
            *(extra_overrides or [])]
    plan = plan_study(spec, folder, datasets, seeds, user)
    for run in plan:
        check_same_settings(run)
    states = {r.name: study_state(r) for r in plan}
    progress = {r.name: training_progress(r) for r in plan}
    estimates = {r.name: estimate_seconds(r, states[r.name], progress[r.name][0]) for r in plan}
    eta = Eta(estimates, *observed_pace(plan, progress))
    if dry_run:
        announce(spec, plan, states, eta, folder, say, dry_run=True)
        describe_plan(plan, states, eta, say)
        return folder
    check_writable(folder)
    command = reproduce_command(preset, datasets, seeds, out, data_root, device, list(extra_overrides or []))
    busy = (f"the study folder '{folder}' is in use by {{holder}}, another latentbench reproduce: two studies "
            "in one folder would train the same runs twice and stop each other; wait for it to end (latentbench "
            f"status {folder}), or give this one another --out")
    with run_directory_lock(folder, in_use=busy):
        record = StudyRecord(folder / STUDY_FILE, spec, plan, command)
        announce(spec, plan, states, eta, folder, say)
        record.save("running")
        diverged = run_plan(plan, states, eta, record, train_fn or _default_train,
                            evaluate_fn or _default_evaluate, say)
        record.save("finished" if not diverged else "finished with diverged runs")
        if report:
            from latentbench.report import build_report

            html, md = build_report(folder)
            say(f"report: {html} and {md}")
    say(f"study {'finished' if not diverged else 'finished; diverged: ' + ', '.join(diverged)} in "
        f"{format_duration(time.time() - record.started)} (this session)")
    return folder
