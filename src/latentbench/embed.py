"""Extract the frozen encoder's codes ``z`` for train / val / test once, and cache them in the run directory.

Every metric of :mod:`latentbench.evaluate` reads this cache (DINO-style: extract once, evaluate many).
When the run has a decoder, the same forward pass also records each image's reconstruction error, so the
autoencoder's MAE costs no second pass over the data.

File ``embeddings.pt`` (written with :func:`latentbench.io.atomic_torch_save`)::

    {"format": 1, "checkpoint": "<sha256 of the checkpoint it came from>",
     "splits": {"train": {"z": float32 (N, D), "y": int64 (N,)[, "recon_mae": (N,), "recon_mse": (N,)]},
                "val": {...}, "test": {...}}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentbench.data import ImageData, Splits
from latentbench.io import RunFileError, atomic_torch_save, safe_torch_load
from latentbench.metrics import pixel_errors

SPLITS = ("train", "val", "test")
FORMAT = 1


def pixels(x_uint8: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """uint8 images (B, C, H, W) -> float pixels in [0, 1] on ``device`` (NHWC memory when ``channels_last``)."""
    x = x_uint8.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.float().div_(255.0)


def encode(encoder: nn.Module, data: ImageData, batch_size: int, device: torch.device, channels_last: bool = False,
           decoder: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Codes ``z`` (N, D) of every image of ``data`` with the encoder in eval mode, on the CPU.

    With ``decoder``, also the per-image reconstruction errors ``recon_mae`` and ``recon_mse`` (N,) of
    ``decoder(z, skips)`` (skips from ``encoder.features``) against the image in [0, 1]. Runs under
    ``torch.inference_mode``; the results are cloned out of it so probes can train on them.
    """
    with torch.inference_mode():
        out = _encode(encoder, data, batch_size, device, channels_last, decoder)
    return {k: v.clone() for k, v in out.items()}


def _encode(encoder: nn.Module, data: ImageData, batch_size: int, device: torch.device, channels_last: bool,
            decoder: nn.Module | None) -> dict[str, torch.Tensor]:
    encoder.eval()
    if decoder is not None:
        decoder.eval()
    zs, maes, mses = [], [], []
    for chunk in data.x.split(batch_size):
        x = pixels(chunk, device, channels_last)
        if decoder is None:
            z = encoder(x)
        else:
            z, skips = encoder.features(x)
            mae, mse = pixel_errors(decoder(z, skips), x)
            maes.append(mae.cpu())
            mses.append(mse.cpu())
        zs.append(z.float().cpu())
    out = {"z": torch.cat(zs) if zs else torch.empty(0), "y": data.y}
    if decoder is not None:
        out["recon_mae"], out["recon_mse"] = torch.cat(maes), torch.cat(mses)
    return out


def extract(encoder: nn.Module, splits: Splits, batch_size: int, device: torch.device, channels_last: bool = False,
            decoder: nn.Module | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """:func:`encode` for each of train / val / test."""
    return {name: encode(encoder, getattr(splits, name), batch_size, device, channels_last, decoder)
            for name in SPLITS}


def save_embeddings(path: Path, embeddings: dict[str, dict[str, torch.Tensor]], checkpoint: str) -> None:
    atomic_torch_save(path, {"format": FORMAT, "checkpoint": checkpoint, "splits": embeddings})


def load_embeddings(path: Path, checkpoint: str | None = None) -> dict[str, dict[str, torch.Tensor]] | None:
    """The cached embeddings, or None when ``checkpoint`` is given and the cache came from another checkpoint."""
    blob: Any = safe_torch_load(path)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or set(blob.get("splits", {})) != set(SPLITS):
        raise RunFileError(f"'{path}' is not a latentbench embeddings file; delete it and run eval again")
    if checkpoint is not None and blob.get("checkpoint") != checkpoint:
        return None
    return blob["splits"]
