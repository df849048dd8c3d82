"""The evaluation's figures: the t-SNE pair (latent vs pixels, with trustworthiness), reconstructions, the
latent interpolation and the learning curves, drawn by :mod:`latentbench.plots` into ``figures/``.

Each function takes the loaded run (:mod:`latentbench.evalrun`) and the subsamples chosen by
:func:`latentbench.evaluate.choose_samples`, writes its PNG and returns what it measured or a line that says
how the figure was made. The pixel t-SNE map depends on the data alone and is shared through
:mod:`latentbench.sharedcache`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from latentbench import embed, plots
from latentbench.evalrun import EvalRun, Scores, say
from latentbench.io import atomic_torch_save, safe_torch_load
from latentbench.rundir import read_history
from latentbench.sharedcache import cached, shared_cache_path

FIGURES = {"reconstructions": "figures/reconstructions.png", "interpolation": "figures/interpolation.png",
           "tsne": "figures/tsne.png", "curves": "figures/curves.png"}


def _trust(high: torch.Tensor, low: np.ndarray) -> float:
    from sklearn.manifold import trustworthiness

    n_neighbors = max(1, min(5, len(low) // 2 - 1))
    return float(trustworthiness(high.double().cpu().numpy(), low, n_neighbors=n_neighbors))


def figure_tsne(run: EvalRun, emb, samples) -> Scores:
    ev, spec = run.ev, run.splits.spec
    index = torch.tensor(samples["tsne"], dtype=torch.long)
    position = {int(i): p for p, i in enumerate(samples["tsne"])}
    trust = torch.tensor([position[i] for i in samples["trust"]], dtype=torch.long)
    z = emb["test"]["z"][index]
    x = run.splits.test.x[index].flatten(1).float() / 255.0
    y = emb["test"]["y"][index]
    latent = plots.tsne_map(z, ev.tsne_perplexity, ev.tsne_iters, ev.seed, n_jobs=run.threads)
    pixel, pixel_trust = pixel_tsne(run, x, trust, samples)
    n_trust = len(trust)
    title = f"{run.name}: t-SNE of {len(index)} test images (PCA-50 first, perplexity {ev.tsne_perplexity:g})"
    plots.plot_tsne({f"latent space z ({z.shape[1]}-d, {run.cfg.objective.name})": latent,
                     f"image space (pixels, {x.shape[1]}-d)": pixel}, y, spec.class_names, run.out(FIGURES["tsne"]),
                    title)
    out = {"tsne_trustworthiness": _trust(z[trust], latent[trust.numpy()]), "tsne_pixel_trustworthiness": pixel_trust}
    gradients = "FFT" if len(index) >= plots.FFT_FROM_POINTS else "Barnes-Hut"
    base = (f"sklearn trustworthiness (5 neighbours) of the openTSNE map vs the {{}} of {n_trust} of the "
            f"{len(index)} mapped test images (exact kNN, {gradients} gradients, 250+{ev.tsne_iters} iterations, "
            f"seed {ev.seed})")
    return out, {"tsne_trustworthiness": base.format("latent z"), "tsne_pixel_trustworthiness": base.format("pixels")}


def pixel_tsne(run: EvalRun, x: torch.Tensor, trust: torch.Tensor, samples) -> tuple[np.ndarray, float]:
    """The pixel-space t-SNE map of the subsample ``x`` (N, D) and its trustworthiness, shared through the cache."""
    ev = run.ev
    params = {"tsne": samples["tsne"], "trust": samples["trust"], "perplexity": ev.tsne_perplexity,
              "iters": ev.tsne_iters, "seed": ev.seed}
    path = shared_cache_path(run, "pixel-tsne", params, ".pt")

    def compute() -> dict[str, Any]:
        points = plots.tsne_map(x, ev.tsne_perplexity, ev.tsne_iters, ev.seed, n_jobs=run.threads)
        return {"map": torch.from_numpy(points), "trust": _trust(x[trust], points[trust.numpy()])}

    value, hit = cached(path, safe_torch_load, compute, atomic_torch_save)
    if hit:
        say(run, f"t-SNE: reusing the pixel map {path}")
    return value["map"].numpy(), float(value["trust"])


def _decode_pair(run: EvalRun, decoder: nn.Module, x: torch.Tensor, steps: int) -> tuple[torch.Tensor, bool]:
    """Decoded linear interpolation between the two images of ``x`` (2, C, H, W): z, and skip maps if used."""
    z, skips = run.objective.encoder.features(x)
    use_skips = bool(getattr(decoder, "use_skips", False) and skips)
    frames = []
    for a in torch.linspace(0, 1, steps).tolist():
        z_t = (1 - a) * z[:1] + a * z[1:]
        skips_t = [(1 - a) * s[:1] + a * s[1:] for s in skips] if use_skips else None
        frames.append(decoder(z_t, skips_t).float().cpu())
    return torch.cat(frames), use_skips


def figure_images(run: EvalRun, decoder: nn.Module, is_probe: bool, how: str, samples) -> dict[str, str]:
    """Reconstructions and interpolation PNGs by ``decoder`` (the run's own, or a decoder probe when
    ``is_probe``; ``how`` says which); returns a line describing each."""
    source = "decoder probe on frozen z" if is_probe else "the run's decoder"
    spec, test = run.splits.spec, run.splits.test
    rec = torch.tensor(samples["reconstructions"], dtype=torch.long)
    with torch.inference_mode():
        x = embed.pixels(test.x[rec], run.device, run.channels_last)
        z, skips = run.objective.encoder.features(x)
        x_hat = decoder(z, skips).float().cpu()
        a, b = samples["interpolation"]
        pair = embed.pixels(test.x[[a, b]], run.device, run.channels_last)
        frames, used_skips = _decode_pair(run, decoder, pair, run.ev.interp_steps)
    names = spec.class_names
    captions = [f"#{i} ({names[int(test.y[i])]})" for i in rec.tolist()]
    plots.plot_reconstructions(x.float().cpu(), x_hat, run.out(FIGURES["reconstructions"]),
                               f"{run.name}: test reconstructions ({source})", captions)
    label_a, label_b = names[int(test.y[a])], names[int(test.y[b])]
    plots.plot_interpolation(pair[0].float().cpu(), pair[1].float().cpu(), frames, run.out(FIGURES["interpolation"]),
                             f"{run.name}: {run.ev.interp_steps}-step latent interpolation, test #{a} ({label_a}) -> "
                             f"#{b} ({label_b}), {source}" + (" (z and skip maps interpolated)" if used_skips else ""),
                             label_a, label_b)
    skip_note = "; the decoder's skip maps are interpolated linearly too" if used_skips else ""
    return {"reconstructions": f"test images {rec.tolist()} (seed {run.ev.seed}) over their reconstructions by {how}",
            "interpolation": f"decoder((1-t) z_a + t z_b) for {run.ev.interp_steps} t in [0,1], test images #{a} "
                             f"and #{b}, by {how}{skip_note}"}


def figure_curves(run: EvalRun) -> dict[str, str]:
    history = read_history(run.paths.history) if run.paths.history.exists() else []
    plots.plot_curves(history, run.out(FIGURES["curves"]), f"{run.name}: learning curves (history.csv)")
    return {"curves": "train (epoch mean) and validation statistics per epoch from history.csv"}
