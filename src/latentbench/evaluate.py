"""A trained run directory -> ``metrics.json`` + ``figures/*.png``: the same evaluation for every objective.

    latentbench eval runs/mnist_autoencoder_s0 [--force] [--set eval.knn_k=200] [--only probe_linear,e2e]

Stages, each skipped when its outputs already exist (``--force`` recomputes all of them):
  1. embeddings: ``z`` of train / val / test from the frozen encoder (``embeddings.pt``, see embed.py);
  2. metrics, in groups that each add keys to ``metrics.json`` (written after every group, so an
     interrupted eval keeps what it finished): MLP probe, linear probe, kNN, the supervised run's own
     classifier (on colour images also with flip test-time augmentation), reconstruction (the run's decoder,
     or a decoder probe trained on frozen ``z``, saved as ``decoder_probe.pt``), latent-space statistics, and
     raw-pixel / PCA baselines;
  3. figures: t-SNE pair (+ trustworthiness), reconstructions, interpolation, learning curves.
  ``--only STAGES`` runs a subset of 2. and 3. and keeps the rest of ``metrics.json``.

The subsample indices and seeds are saved in ``eval_state.json`` together with the checkpoint's
fingerprint and the eval config: when the checkpoint or the eval config changes, everything downstream
is recomputed. Nothing here trains or changes the encoder (checked at the end of every call).

What depends on the data alone (the pixel / PCA baselines and the pixel-space t-SNE map) is computed once
per folder of runs and shared (:mod:`latentbench.sharedcache`). Loading the run is :mod:`latentbench.evalrun`,
drawing the figures :mod:`latentbench.figures`; this module owns the stages, the metric groups and
``metrics.json``.

``metrics.json``::

    {"run", "dataset", "objective", "metrics": {KEY: float}, "protocol": {KEY: "how it was measured"},
     "figures": {"reconstructions": "figures/reconstructions.png", ...}, "seconds": {STAGE: float}}
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from latentbench import config as config_module
from latentbench import embed, hostmem, metrics, probes
from latentbench.augment import augment, view_kind
from latentbench.config import AugmentConfig, ConfigError, EvalConfig, probe_hidden_width
from latentbench.data import ImageData
from latentbench.evalrun import EvalRun, Scores, load_run, say
from latentbench.figures import FIGURES, figure_curves, figure_images, figure_tsne
from latentbench.io import atomic_torch_save, atomic_write_json, read_json, safe_torch_load
from latentbench.models import ClassifierHead, build_encoder_decoder
from latentbench.sharedcache import cached, shared_cache_path

METRICS_FILE = "metrics.json"
EMBEDDINGS_FILE = "embeddings.pt"
STATE_FILE = "eval_state.json"
DECODER_PROBE_FILE = "decoder_probe.pt"


# ------------------------------------------------------------------------------------------ subsamples
def _first_of_class(y: torch.Tensor, cls: int, num_classes: int) -> int:
    if not 0 <= cls < num_classes:
        raise ConfigError(f"eval.interp_classes: class {cls} is not one of this dataset's classes 0..{num_classes - 1}")
    hits = (y == cls).nonzero()
    if len(hits) == 0:
        raise ConfigError(f"eval.interp_classes: the test set holds no image of class {cls}; choose another class "
                          "or set eval.interp_indices")
    return int(hits[0])


def _take(perm: torch.Tensor, count: int) -> list[int]:
    """The first ``count`` indices of ``perm`` (0 = all), sorted."""
    return sorted(perm[:count or len(perm)].tolist())


def choose_samples(ev: EvalConfig, test_y: torch.Tensor, num_classes: int, channels: int) -> dict[str, Any]:
    """Test-set indices of every subsample (nested prefixes of one seeded permutation) and the interpolation pair."""
    n = len(test_y)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(ev.seed))
    n_rec = ev.n_reconstructions or (5 if channels == 1 else 10)
    if ev.interp_indices:
        pair = list(ev.interp_indices)
        if len(pair) != 2 or not all(0 <= i < n for i in pair):
            raise ConfigError(f"eval.interp_indices must be two test-image indices in [0, {n - 1}], got {pair}")
    else:
        if len(ev.interp_classes) != 2:
            raise ConfigError(f"eval.interp_classes must name two classes, got {ev.interp_classes}")
        pair = [_first_of_class(test_y, c, num_classes) for c in ev.interp_classes]
    tsne = _take(perm, min(ev.tsne_points, n) if ev.tsne_points else n)
    return {
        "seed": ev.seed,
        "tsne": tsne,
        "trust": tsne[: ev.trust_points or len(tsne)],
        "silhouette": _take(perm, min(ev.silhouette_points, n)),
        "alignment": _take(perm, min(ev.alignment_points, n)),
        "reconstructions": perm[: min(n_rec, n)].tolist(),
        "interpolation": pair,
    }


# ------------------------------------------------------------------------------------------ metric groups
def _on(emb: dict[str, dict[str, torch.Tensor]], key: str, device: torch.device) -> dict[str, torch.Tensor]:
    return {split: emb[split][key].to(device) for split in embed.SPLITS}


def probe_view_kind(run: EvalRun) -> str:
    """The probe views' augmentation for this run's images (see :func:`config.probe_view_kind`)."""
    return config_module.probe_view_kind(run.ev.probe_view_augment, run.splits.spec.channels)


def probe_view_copies(run: EvalRun) -> int:
    """How many augmented copies of the training images the MLP probe trains on (0 when the views are off)."""
    return config_module.probe_view_copies(run.ev, run.splits.spec.channels)


def probe_view_codes(run: EvalRun, copies: int) -> torch.Tensor:
    """Codes (copies * N, D) of ``copies`` augmented views of every training image, in the images' order.

    The encoder stays frozen and in eval mode (``torch.inference_mode``); the views are drawn from a generator
    seeded by ``eval.seed``, so the same run always gets the same views.
    """
    ev, encoder, kind = run.ev, run.objective.encoder.eval(), probe_view_kind(run)
    cfg = AugmentConfig(digit_crop_scale=[1.0, 1.0], rotation_deg=ev.probe_view_rotation_deg,
                        translate=ev.probe_view_translate, stroke_p=0.0, erase_p=0.0)
    devices = [run.device] if run.device.type == "cuda" else []
    codes = []
    with torch.random.fork_rng(devices=devices), torch.inference_mode():
        torch.manual_seed(ev.seed + 1)
        for _ in range(copies):
            for chunk in run.splits.train.x.split(ev.batch_size):
                view = augment(embed.pixels(chunk, run.device), kind, cfg)
                if run.channels_last:
                    view = view.contiguous(memory_format=torch.channels_last)
                codes.append(encoder(view).float().cpu())
    return torch.cat(codes)  # a new, ordinary tensor: cat runs outside inference_mode


def _probe_views_protocol(run: EvalRun) -> str:
    ev, kind = run.ev, probe_view_kind(run)
    what = (f"rotation +-{ev.probe_view_rotation_deg} deg, shift +-{ev.probe_view_translate:g} of the side"
            if kind == "digits" else "pad-4 random crop and horizontal flip")
    return (f"; its training set also holds the codes of {ev.probe_views} augmented copies of every training "
            f"image ({kind}: {what}; drawn once, seed {ev.seed + 1}; selection and scores on the clean "
            "images)")


def _fit_mlp_probe(run: EvalRun, z: dict[str, torch.Tensor],
                   y: dict[str, torch.Tensor]) -> probes.ProbeResult:
    ev, m, spec = run.ev, run.cfg.model, run.splits.spec
    torch.manual_seed(ev.seed)  # the probe's initial weights
    hidden = probe_hidden_width(run.cfg)
    head = ClassifierHead(z["train"].shape[1], hidden, spec.num_classes, m.classifier_dropout)
    return probes.train_mlp_probe(head, z, y, ev.probe_epochs, ev.probe_patience, ev.probe_lr,
                                  ev.probe_weight_decay, ev.probe_batch_size, ev.seed)


def _mlp_protocol(run: EvalRun, result: probes.ProbeResult, dims: int, views: str) -> str:
    ev, m, spec = run.ev, run.cfg.model, run.splits.spec
    scaled = " (standardised by train mean/std)" if ev.probe_standardize else ""
    decay = f" wd {ev.probe_weight_decay}" if ev.probe_weight_decay else ""
    hidden = probe_hidden_width(run.cfg)
    return (f"MLP {dims}-{hidden}-ReLU-Dropout({m.classifier_dropout})-{spec.num_classes} "
            f"on frozen z{scaled}, Adam lr {ev.probe_lr}{decay}, batch {ev.probe_batch_size}, "
            f"up to {ev.probe_epochs} epochs with early stopping on val accuracy "
            f"(patience {ev.probe_patience}; kept epoch {result.best_epoch} of {result.epochs}), "
            f"seed {ev.seed}{views}")


def group_probe_mlp(run: EvalRun, emb, samples) -> Scores:
    """The report's classifier probe; with ``eval.probe_views`` also one fit on the clean codes alone
    (``probe_mlp_plain_*``)."""
    ev = run.ev
    z, y = _on(emb, "z", run.device), _on(emb, "y", run.device)
    copies = probe_view_copies(run)
    views = probe_view_codes(run, copies).to(run.device) if copies else None
    if ev.probe_standardize:
        others = [z["val"], z["test"]] + ([views] if views is not None else [])
        train, val, test, *rest = metrics.standardize(z["train"], *others)
        z, views = {"train": train, "val": val, "test": test}, (rest[0] if rest else None)
    dims = z["train"].shape[1]
    out, how = {}, {}
    if views is not None:
        plain = _fit_mlp_probe(run, z, y)
        for s in ("val", "test"):
            out[f"probe_mlp_plain_{s}_acc"] = plain.scores[s]
            protocol = _mlp_protocol(run, plain, dims, "")
            how[f"probe_mlp_plain_{s}_acc"] = f"{s} accuracy of the {protocol} (no views)"
        z = {**z, "train": torch.cat([z["train"], views])}
        y = {**y, "train": y["train"].repeat(1 + copies)}
    result = _fit_mlp_probe(run, z, y)
    how_views = _probe_views_protocol(run) if views is not None else ""
    n_clean = len(emb["train"]["y"])
    train_acc = metrics.accuracy(probes.predict(result.model, z["train"][:n_clean]), y["train"][:n_clean])
    scores = {**result.scores, "train": train_acc}
    for s in embed.SPLITS:
        out[f"probe_mlp_{s}_acc"] = scores[s]
        how[f"probe_mlp_{s}_acc"] = f"{s} accuracy of the {_mlp_protocol(run, result, dims, how_views)}"
    return out, how


def _linear_protocol(c: float, iters: int, what: str) -> str:
    return (f"multinomial logistic regression (L2, C={c:g}, bias unpenalised; L-BFGS, {iters} iterations) on "
            f"{what} standardised by train mean/std; fit on train")


def group_probe_linear(run: EvalRun, emb, samples) -> Scores:
    ev = run.ev
    z, y = _on(emb, "z", run.device), _on(emb, "y", run.device)
    z = dict(zip(embed.SPLITS, metrics.standardize(z["train"], z["val"], z["test"])))
    result = probes.linear_probe(z, y, run.splits.spec.num_classes, [ev.linear_c], ev.linear_max_iter)
    how = _linear_protocol(result.extra["c"], result.epochs, "frozen z")
    return ({f"probe_linear_{s}_acc": result.scores[s] for s in embed.SPLITS},
            {f"probe_linear_{s}_acc": f"{s} accuracy of {how}" for s in embed.SPLITS})


def _knn_protocol(ev: EvalConfig, what: str, bank: str = "train") -> str:
    return (f"kNN on {what}: cosine similarity, k={ev.knn_k}, vote weighted by exp(sim/T) with T={ev.knn_temperature}, "
            f"bank = the {bank} split")


def group_knn(run: EvalRun, emb, samples) -> Scores:
    ev, k = run.ev, run.splits.spec.num_classes
    z, y = _on(emb, "z", run.device), _on(emb, "y", run.device)
    out, how = {}, {}
    for split in ("val", "test"):
        out[f"knn_{split}_acc"] = metrics.knn_accuracy(z["train"], y["train"], z[split], y[split], ev.knn_k,
                                                        ev.knn_temperature, k)
        how[f"knn_{split}_acc"] = f"{split} accuracy of " + _knn_protocol(ev, "frozen z")
    return out, how


def group_e2e(run: EvalRun, emb, samples) -> Scores:
    classifier = run.objective.classifier
    z, y = _on(emb, "z", run.device), _on(emb, "y", run.device)
    return ({f"e2e_{s}_acc": metrics.accuracy(probes.predict(classifier, z[s]), y[s]) for s in embed.SPLITS},
            {f"e2e_{s}_acc": f"{s} accuracy of the supervised run's own classifier head (trained end to end with "
                             f"the encoder; best checkpoint by val accuracy)" for s in embed.SPLITS})


def mirrored_codes(run: EvalRun, split: str) -> torch.Tensor:
    """Codes (N, D) of the horizontal mirror image of every image of ``split`` (frozen encoder, eval mode)."""
    data = getattr(run.splits, split)
    mirrored = ImageData(data.x.flip(3), data.y)
    return embed.encode(run.objective.encoder, mirrored, run.ev.batch_size, run.device, run.channels_last)["z"]


def group_e2e_flip(run: EvalRun, emb, samples) -> Scores:
    """The supervised head's accuracy with flip test-time augmentation: the mean of its softmax outputs on each
    image and on its mirror image (colour images, where a mirror image keeps its label)."""
    classifier, out, how = run.objective.classifier, {}, {}
    for split in ("val", "test"):
        views = [emb[split]["z"].to(run.device), mirrored_codes(run, split).to(run.device)]
        out[f"e2e_{split}_acc_flip"] = metrics.accuracy(probes.predict_mean(classifier, views), emb[split]["y"])
        how[f"e2e_{split}_acc_flip"] = (f"{split} accuracy of the supervised run's own classifier head with "
                                        "horizontal-flip test-time augmentation (mean of its softmax on the image "
                                        "and on its mirror image; best checkpoint by val accuracy)")
    return out, how


def uses_flip_tta(run: EvalRun) -> bool:
    """Flip test-time augmentation applies to supervised runs on colour images when ``eval.flip_tta`` is on."""
    return (run.ev.flip_tta and run.splits.spec.channels == 3
            and getattr(run.objective, "classifier", None) is not None)


# -- reconstruction
def decoder_probe_arch(run: EvalRun) -> nn.Module:
    """The decoder models.build_encoder_decoder gives for this run's model config, without skip connections."""
    return build_encoder_decoder(run.splits.spec, dataclasses.replace(run.cfg.model, skips=False))[1]


def fit_decoder_probe(run: EvalRun, emb) -> tuple[nn.Module, dict[str, float], str]:
    """Train a decoder on frozen z (L1, Adam, early stopping on val MAE), save it; return it, MAEs, protocol."""
    ev = run.ev
    z = _on(emb, "z", run.device)
    x = {s: getattr(run.splits, s).x.to(run.device) for s in embed.SPLITS}
    torch.manual_seed(ev.seed)  # the probe's initial weights
    result = probes.train_decoder_probe(decoder_probe_arch(run), z, x, ev.decoder_probe_epochs, ev.probe_patience,
                                        ev.probe_lr, ev.probe_batch_size, ev.seed)
    how = (f"DECODER PROBE: this run has no decoder, so a {type(result.model).__name__} (the architecture the "
           f"autoencoder uses, no skips) was trained on frozen z with L1 loss, Adam lr {ev.probe_lr}, batch "
           f"{ev.probe_batch_size}, up to {ev.decoder_probe_epochs} epochs, early stopping on val MAE (kept epoch "
           f"{result.best_epoch} of {result.epochs})")
    atomic_torch_save(run.out(DECODER_PROBE_FILE), {"checkpoint": run.checkpoint_id, "protocol": how,
                                                    "decoder": result.model.state_dict()})
    return result.model, result.scores, how


def load_decoder(run: EvalRun, emb) -> tuple[nn.Module, bool, str]:
    """The decoder that makes this run's reconstructions: its own, or the saved decoder probe of this checkpoint
    (trained now when missing; the reconstruction group rewrites it whenever it runs)."""
    if run.objective.decoder is not None:
        return run.objective.decoder.eval(), False, "the run's own decoder"
    path = run.out(DECODER_PROBE_FILE)
    if path.exists():
        saved = safe_torch_load(path)
        if saved.get("checkpoint") == run.checkpoint_id:
            decoder = decoder_probe_arch(run)
            decoder.load_state_dict(saved["decoder"])
            return decoder.to(run.device).eval(), True, saved["protocol"]
    decoder, _, how = fit_decoder_probe(run, emb)
    return decoder, True, how


def group_reconstruction(run: EvalRun, emb, samples) -> Scores:
    pixels_note = "mean over pixels in [0,1] and images"
    if run.objective.decoder is not None:
        mae = {s: float(emb[s]["recon_mae"].mean()) for s in embed.SPLITS}
        mse = float(emb["test"]["recon_mse"].mean())
        skips = getattr(run.objective.decoder, "use_skips", False)
        how = f"the run's own decoder, decoder(z{', encoder skip maps' if skips else ''}), clean input"
        is_probe = 0.0
    else:
        decoder, mae, how = fit_decoder_probe(run, emb)
        errors = probes.decode_errors(decoder, emb["test"]["z"].to(run.device), run.splits.test.x.to(run.device))
        mse = float(errors[1].mean())
        is_probe = 1.0
    out = {**{f"recon_{s}_mae": mae[s] for s in embed.SPLITS}, "recon_test_mse": mse,
           "recon_test_psnr": metrics.psnr(mse), "recon_is_probe": is_probe}
    protocol = {**{f"recon_{s}_mae": f"{s} mean |x_hat - x| ({pixels_note}); {how}" for s in embed.SPLITS},
                "recon_test_mse": f"test mean (x_hat - x)^2 ({pixels_note}); {how}",
                "recon_test_psnr": "10 log10(1 / recon_test_mse) in dB (test set, peak 1)",
                "recon_is_probe": f"1.0 = reconstructions come from a decoder probe on frozen z, 0.0 = the run's own "
                                  f"decoder; here: {how}"}
    return out, protocol


# -- latent statistics
def _views_kind(run: EvalRun) -> str:
    kind = view_kind(run.cfg.objective.augment, run.splits.spec.channels)
    return kind if kind != "none" else view_kind("auto", run.splits.spec.channels)


def encode_views(run: EvalRun, index: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes of two independently augmented views of the test images ``index`` (encoder in eval mode)."""
    kind, encoder = _views_kind(run), run.objective.encoder.eval()
    devices = [run.device] if run.device.type == "cuda" else []
    z1, z2 = [], []
    with torch.random.fork_rng(devices=devices), torch.inference_mode():
        torch.manual_seed(seed)
        for chunk in torch.tensor(index, dtype=torch.long).split(run.ev.batch_size):
            x = embed.pixels(run.splits.test.x[chunk], run.device, run.channels_last)
            for out in (z1, z2):
                view = augment(x, kind, run.cfg.augment)
                if run.channels_last:
                    view = view.contiguous(memory_format=torch.channels_last)
                out.append(encoder(view).float().cpu())
    return torch.cat(z1), torch.cat(z2)


def group_latent(run: EvalRun, emb, samples) -> Scores:
    z_test, y_test = emb["test"]["z"], emb["test"]["y"]
    sil = samples["silhouette"]
    align_index = samples["alignment"]
    z1, z2 = encode_views(run, align_index, run.ev.seed)
    kind = _views_kind(run)
    out = {
        "silhouette": metrics.silhouette(z_test[sil], y_test[sil]),
        "alignment": metrics.alignment(z1, z2, alpha=2.0),
        "uniformity": metrics.uniformity(z_test[align_index], t=2.0),
        "effective_rank": metrics.effective_rank(z_test),
    }
    how = {
        "silhouette": f"silhouette score of z by true class, Euclidean distance, {len(sil)} test images "
                      f"(seeded subsample, seed {run.ev.seed}); in [-1, 1], higher = tighter classes",
        "alignment": f"Wang & Isola 2020 alignment, mean ||f(x)-f(x')||^2 of L2-normalised z over two '{kind}' "
                     f"augmented views of {len(align_index)} test images; lower = more invariant",
        "uniformity": f"Wang & Isola 2020 uniformity, log mean exp(-2 ||f(x)-f(y)||^2) over pairs of L2-normalised "
                      f"test z ({len(align_index)} images); lower = more uniform on the sphere",
        "effective_rank": f"Roy & Vetterli 2007 effective rank (exp entropy of normalised singular values) of "
                          f"centred test z ({len(z_test)} x {z_test.shape[1]}); at most {min(z_test.shape)}",
    }
    return out, how


# -- pixel baselines
def _flat_pixels(run: EvalRun, split: str) -> torch.Tensor:
    return getattr(run.splits, split).x.flatten(1).to(run.device).float().div_(255.0)


def pca_project(train: torch.Tensor, dims: int, seed: int, *others: torch.Tensor) -> list[torch.Tensor]:
    """Project every tensor onto the top ``dims`` principal axes of ``train`` (N, D) (randomised PCA)."""
    dims = min(dims, train.shape[0], train.shape[1])
    mean = train.mean(0, keepdim=True)
    torch.manual_seed(seed)
    _, _, v = torch.pca_lowrank(train - mean, q=dims, center=False, niter=4)
    return [(t - mean) @ v for t in (train, *others)]


def group_baselines(run: EvalRun, emb, samples) -> Scores:
    """Pixel and PCA-of-pixel baselines, shared through the cache by every run on the same data and settings."""
    ev = run.ev
    params = {k: getattr(ev, k) for k in ("knn_k", "knn_temperature", "linear_c", "linear_max_iter", "pca_dims",
                                          "seed")}
    path = shared_cache_path(run, "baselines", params, ".json")
    scores, hit = cached(path, lambda p: tuple(read_json(p)), lambda: compute_baselines(run, emb),
                          atomic_write_json)
    if hit:
        say(run, f"baselines: reusing {path}")
    return scores


def compute_baselines(run: EvalRun, emb) -> Scores:
    ev, k = run.ev, run.splits.spec.num_classes
    y = _on(emb, "y", run.device)
    raw = {s: _flat_pixels(run, s) for s in embed.SPLITS}
    pca = dict(zip(embed.SPLITS, pca_project(raw["train"], ev.pca_dims, ev.seed, raw["val"], raw["test"])))
    out, how = {}, {}
    dims = min(ev.pca_dims, *raw["train"].shape)
    for name, feats, what in (("pixel", raw, f"raw pixels ({raw['train'].shape[1]} values in [0,1])"),
                              ("pca", pca, f"PCA-{dims} of the pixels (fit on train)")):
        out[f"{name}_knn_test_acc"] = metrics.knn_accuracy(feats["train"], y["train"], feats["test"], y["test"],
                                                            ev.knn_k, ev.knn_temperature, k)
        how[f"{name}_knn_test_acc"] = "test accuracy of " + _knn_protocol(ev, what)
        std = dict(zip(embed.SPLITS, metrics.standardize(feats["train"], feats["val"], feats["test"])))
        result = probes.linear_probe(std, y, k, [ev.linear_c], ev.linear_max_iter)
        out[f"{name}_linear_test_acc"] = result.scores["test"]
        how[f"{name}_linear_test_acc"] = "test accuracy of " + _linear_protocol(result.extra["c"], result.epochs, what)
    return out, how


# ------------------------------------------------------------------------------------------ bookkeeping
class Results:
    """``metrics.json`` as it is built: previous results (unless forced) plus each group's new keys."""

    def __init__(self, run: EvalRun, fresh: bool):
        self.run, self.path = run, run.out(METRICS_FILE)
        old = {} if fresh or not self.path.exists() else read_json(self.path)
        self.metrics: dict[str, float] = dict(old.get("metrics", {}))
        self.protocol: dict[str, str] = dict(old.get("protocol", {}))
        self.seconds: dict[str, float] = dict(old.get("seconds", {}))

    def has(self, keys: list[str]) -> bool:
        return all(k in self.metrics and k in self.protocol for k in keys)

    def add(self, stage: str, scores: Scores | None, seconds: float) -> None:
        if scores is not None:
            self.metrics.update({k: float(v) for k, v in scores[0].items()})
            self.protocol.update(scores[1])
        self.seconds[stage] = round(seconds, 3)
        self.write()

    def as_dict(self) -> dict[str, Any]:
        cfg = self.run.cfg
        seconds = {k: v for k, v in self.seconds.items() if k != "total"}
        seconds["total"] = round(sum(seconds.values()), 3)
        return {"run": cfg.run_name(), "dataset": cfg.data.name, "objective": cfg.objective.name,
                "metrics": self.metrics, "protocol": self.protocol, "figures": dict(FIGURES), "seconds": seconds}

    def write(self) -> None:
        atomic_write_json(self.path, self.as_dict())


def metric_groups(run: EvalRun) -> list[tuple[str, list[str], Callable[..., Scores]]]:
    """(stage name, the keys it writes, function) for every metric group that applies to this run."""
    splits3 = embed.SPLITS
    plain_keys = [f"probe_mlp_plain_{s}_acc" for s in ("val", "test")] if probe_view_copies(run) else []
    groups = [
        ("probe_mlp", [f"probe_mlp_{s}_acc" for s in splits3] + plain_keys, group_probe_mlp),
        ("probe_linear", [f"probe_linear_{s}_acc" for s in splits3], group_probe_linear),
        ("knn", ["knn_val_acc", "knn_test_acc"], group_knn),
    ]
    if getattr(run.objective, "classifier", None) is not None:
        groups.append(("e2e", [f"e2e_{s}_acc" for s in splits3], group_e2e))
    if uses_flip_tta(run):
        groups.append(("e2e_flip", ["e2e_val_acc_flip", "e2e_test_acc_flip"], group_e2e_flip))
    groups += [
        ("reconstruction", [*(f"recon_{s}_mae" for s in splits3), "recon_test_mse", "recon_test_psnr",
                            "recon_is_probe"], group_reconstruction),
        ("latent", ["silhouette", "alignment", "uniformity", "effective_rank"], group_latent),
        ("baselines", ["pixel_knn_test_acc", "pixel_linear_test_acc", "pca_knn_test_acc", "pca_linear_test_acc"],
         group_baselines),
    ]
    return groups


def _encoder_state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in encoder.state_dict().items()}


def check_unchanged(before: dict[str, torch.Tensor], encoder: nn.Module) -> None:
    """Raise if any weight or buffer (BatchNorm statistics included) of ``encoder`` differs from ``before``."""
    after = encoder.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    if changed:
        raise RuntimeError(f"evaluation changed the frozen encoder ({', '.join(changed[:5])}); this is a bug")


def _embeddings(run: EvalRun, force: bool, results: Results) -> dict[str, dict[str, torch.Tensor]]:
    path = run.out(EMBEDDINGS_FILE)
    if path.exists() and not force:
        emb = embed.load_embeddings(path, run.checkpoint_id)
        if emb is not None:
            say(run, f"embeddings: cached in {path.name}")
            return emb
    start = time.perf_counter()
    emb = embed.extract(run.objective.encoder, run.splits, run.ev.batch_size, run.device, run.channels_last,
                        run.objective.decoder)
    embed.save_embeddings(path, emb, run.checkpoint_id)
    seconds = time.perf_counter() - start
    results.add("embeddings", None, seconds)
    say(run, f"embeddings: {sum(len(e['z']) for e in emb.values())} images -> {path.name} ({seconds:.1f}s)")
    return emb


def _is_stale(run: EvalRun, samples: dict[str, Any]) -> str:
    """Why earlier eval outputs cannot be reused ('' when they can)."""
    path = run.out(STATE_FILE)
    if not path.exists():
        return "no eval_state.json"
    state = read_json(path)
    if state.get("checkpoint") != run.checkpoint_id:
        return "the checkpoint changed since the last eval"
    if state.get("eval") != dataclasses.asdict(run.ev):
        return "the eval config changed since the last eval"
    if state.get("samples") != samples:
        return "the subsamples changed"
    return ""


def unfinished_note(run_dir: Path, checkpoint: Path) -> str:
    """'' for a run whose training finished; otherwise a note that its scores are those of a checkpoint from
    a run still training, interrupted or killed (:mod:`latentbench.status`). Evaluating one is allowed (a
    look at a long run part-way); once the run goes on, its changed checkpoint makes these results stale, and
    the next ``latentbench eval`` recomputes them."""
    from latentbench.status import run_status

    row = run_status(run_dir)
    if row.state in ("trained", "evaluated"):
        return ""
    when = f" (epoch {row.best_epoch})" if row.best_epoch and checkpoint.name.startswith("best") else ""
    return (f"note: this run is {row.state} at epoch {row.epochs_done} of {row.epochs}, so these are the scores "
            f"of its {checkpoint.name}{when} so far; evaluate again when it has finished")


def evaluate_run(run_dir: Path, force: bool = False, overrides: list[str] | None = None,
                 only: list[str] | None = None, blind: bool = False) -> dict[str, Any]:
    """Evaluate a trained run directory; write metrics.json, figures/ and caches into it; return metrics.json.

    ``only``: the stages to run (metric group names of :func:`metric_groups`, and ``figures``); the other
    results already in the run directory are kept, and ``force`` then recomputes just these stages.
    ``blind``: the progress lines leave out the test split's numbers (see :func:`stage_line`).
    """
    run = load_run(Path(run_dir), overrides)
    note = unfinished_note(run.paths.root, run.checkpoint)
    if note:
        say(run, note)
    try:
        return evaluate(run, force, only, blind)
    finally:
        hostmem.release_free_memory()  # the batches' memory, kept in the heap while they ran


def stage_names(run: EvalRun) -> list[str]:
    """The stages ``only`` may name for this run: its metric groups, then ``figures``."""
    return [stage for stage, _, _ in metric_groups(run)] + ["figures"]


def check_only(run: EvalRun, only: list[str]) -> None:
    """Refuse an ``only`` list that names no stage, or a stage this run does not have, saying which ones it has."""
    known = stage_names(run)
    unknown = [name for name in only if name not in known]
    if unknown or not only:
        what = f"unknown stage(s) {', '.join(repr(n) for n in unknown)}" if unknown else "no stage named"
        raise ValueError(f"eval --only: {what} for run '{run.paths.root.name}' ({run.cfg.objective.name}, "
                         f"{run.splits.spec.channels} channel(s)); its stages are: {', '.join(known)}")


def is_test_key(key: str) -> bool:
    """Whether a metric is measured on the test split (``knn_test_acc``, ``recon_test_mse``, ...)."""
    return "_test_" in key


def stage_line(stage: str, keys: list[str], metrics: dict[str, float], seconds: float, blind: bool) -> str:
    """The progress line of one metric group. ``blind`` withholds the test numbers, for choosing a recipe on the
    validation split without seeing the test split; they are still computed and written to metrics.json."""
    shown = [k for k in keys if not (blind and is_test_key(k))]
    withheld = len(keys) - len(shown)
    text = ", ".join(f"{k}={metrics[k]:.4f}" for k in shown) or "no validation number"
    note = f"; {withheld} test number(s) withheld" if withheld else ""
    return f"{stage}: {text} ({seconds:.1f}s{note})"


def evaluate(run: EvalRun, force: bool = False, only: list[str] | None = None,
             blind: bool = False) -> dict[str, Any]:
    """:func:`evaluate_run` on an already loaded run (tests use this to inspect the encoder afterwards)."""
    if only is not None:
        check_only(run, only)
    frozen = _encoder_state(run.objective.encoder)
    say(run, f"{run.device}, {run.threads} thread(s){'' if run.cfg.train.threads else ' (auto: cores left free)'}; "
              f"checkpoint {run.checkpoint.name}")
    samples = choose_samples(run.ev, run.splits.test.y, run.splits.spec.num_classes, run.splits.spec.channels)
    stale = "" if force and only is None else _is_stale(run, samples)
    if stale and run.out(METRICS_FILE).exists():
        say(run, f"recomputing metrics and figures: {stale}")
    fresh = force or bool(stale)
    drop_old = fresh if only is None else bool(stale)  # with --only, --force touches just the named stages
    results = Results(run, drop_old)
    state_path = run.out(STATE_FILE)
    notes = {} if drop_old or not state_path.exists() else read_json(state_path).get("figures", {})
    state = {"checkpoint": run.checkpoint_id, "checkpoint_file": run.checkpoint.name,
             "eval": dataclasses.asdict(run.ev), "samples": samples, "figures": notes}
    atomic_write_json(state_path, state)
    emb = _embeddings(run, force and only is None, results)  # --only --force: those stages, not the codes
    for stage, keys, fn in metric_groups(run):
        if (only is not None and stage not in only) or (not fresh and results.has(keys)):
            continue
        start = time.perf_counter()
        results.add(stage, fn(run, emb, samples), time.perf_counter() - start)
        say(run, stage_line(stage, keys, results.metrics, results.seconds[stage], blind))
    if only is None or "figures" in only:
        state["figures"].update(_figures(run, emb, samples, results, fresh))
    elif stale:
        _drop_stale_figures(run)
    atomic_write_json(state_path, state)
    check_unchanged(frozen, run.objective.encoder)
    say(run, f"wrote {results.path} and {run.out('figures')}/ ({results.as_dict()['seconds']['total']:.1f}s of "
              "eval in all)")
    return results.as_dict()


def _drop_stale_figures(run: EvalRun) -> None:
    """Delete figures drawn for an older checkpoint or eval config, so that the next full eval draws them again."""
    for rel in FIGURES.values():
        run.out(rel).unlink(missing_ok=True)


def _figures(run: EvalRun, emb, samples, results: Results, fresh: bool) -> dict[str, str]:
    """Draw the figures that are missing (all when ``fresh``); return a description of each one drawn."""
    def missing(*names: str) -> bool:
        return fresh or not all(run.out(FIGURES[n]).exists() for n in names)

    notes: dict[str, str] = {}
    if missing("tsne") or not results.has(["tsne_trustworthiness", "tsne_pixel_trustworthiness"]):
        start = time.perf_counter()
        results.add("tsne", figure_tsne(run, emb, samples), time.perf_counter() - start)
        notes["tsne"] = (f"openTSNE maps of {len(samples['tsne'])} test images (seed {run.ev.seed}): latent z and "
                         "pixels, each PCA-50 first, coloured by class")
        say(run, f"t-SNE: trustworthiness {results.metrics['tsne_trustworthiness']:.4f} latent, "
                  f"{results.metrics['tsne_pixel_trustworthiness']:.4f} pixels ({results.seconds['tsne']:.1f}s)")
    if missing("reconstructions", "interpolation", "curves"):
        start = time.perf_counter()
        notes.update(figure_images(run, *load_decoder(run, emb), samples))
        notes.update(figure_curves(run))
        results.add("figures", None, time.perf_counter() - start)
        say(run, f"figures: {', '.join(FIGURES.values())} ({results.seconds['figures']:.1f}s)")
    return notes
