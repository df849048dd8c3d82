"""The yardstick: latentbench's models and objectives trained "the usual way".

    .venv/bin/python benchmarks/naive_reference.py configs/cifar10_contrastive.toml --steps 20

What is the same as latentbench: the model classes (``latentbench.models``: encoders, decoders, classifier
and projection heads, built from the same config), the loss functions (``latentbench.losses``; binary
cross-entropy as ``F.binary_cross_entropy``, the usual call, whose value and gradients latentbench's own
faster version equals), the batch size, learning rate and augmentation ranges of the config. What differs
is only the pipeline, written as most tutorials write it:

  * data: ``torchvision.datasets.MNIST`` / ``ImageFolder`` on the shared data folder, decoded from the
    files (IDX arrays / JPEG) one sample at a time, every epoch;
  * per-sample torchvision transforms on PIL images (``ToTensor``, ``RandomResizedCrop``, ``ColorJitter``,
    ``RandomGrayscale``, ``RandomAffine``, ``RandomCrop(padding=4)``...), two views per image for
    contrastive training;
  * ``DataLoader(num_workers=2, shuffle=True)``, default collate, float32, contiguous NCHW tensors;
  * the config's optimizer as tutorials write it: plain ``torch.optim.Adam`` (AdamW with weight decay) or
    ``torch.optim.SGD`` (Nesterov), no foreach/fused flag (the per-parameter loop on CPU), with the config's
    learning-rate schedule, torch's default thread count.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms as T

from latentbench.config import RunConfig, load_config
from latentbench.data import DatasetSpec, resolve_root
from latentbench.losses import classification_loss, nt_xent, reconstruction_loss
from latentbench.models import ClassifierHead, ProjectionHead, build_encoder_decoder
from latentbench.train import make_optimizer, make_scheduler

# Channel statistics as published for the two datasets (the reference does not scan the data for them).
STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
SHAPES = {"mnist": (1, 28), "cifar10": (3, 32)}


def spec_for(name: str) -> DatasetSpec:
    channels, side = SHAPES[name]
    mean, std = STATS[name]
    return DatasetSpec(name, channels, side, side, tuple(str(i) for i in range(10)), mean, std)


# ------------------------------------------------------------------------------------------ transforms
def view_transform(kind: str, cfg: RunConfig, side: int) -> T.Compose:
    """The torchvision counterpart of ``latentbench.augment.augment(x, kind, cfg)``, one PIL image at a time."""
    a = cfg.augment
    if kind == "color":
        return T.Compose([
            T.RandomResizedCrop(side, scale=tuple(a.crop_scale), ratio=tuple(a.crop_ratio)),
            T.RandomHorizontalFlip(a.flip_p),
            T.RandomApply([T.ColorJitter(a.brightness, a.contrast, a.saturation, a.hue)], p=a.jitter_p),
            T.RandomGrayscale(a.gray_p),
            T.ToTensor(),
        ])
    if kind == "digits":  # zoom by an area factor in digit_crop_scale = side factor 1/sqrt(area)
        zoom = (1.0, 1.0 / math.sqrt(a.digit_crop_scale[0]))
        return T.Compose([T.RandomAffine(a.rotation_deg, translate=(a.translate, a.translate), scale=zoom),
                          T.ToTensor()])
    if kind == "crop_flip":
        return T.Compose([T.RandomCrop(side, padding=max(1, round(side / 8))), T.RandomHorizontalFlip(a.flip_p),
                          T.ToTensor()])
    return T.ToTensor()


class TwoViews:
    """Contrastive sample: two augmented views and the clean image (the denoising target)."""

    def __init__(self, view: T.Compose):
        self.view, self.clean = view, T.ToTensor()

    def __call__(self, image):
        return self.view(image), self.view(image), self.clean(image)


def sample_transform(cfg: RunConfig, channels: int, side: int):
    o = cfg.objective
    if o.name == "contrastive":
        kind = o.augment if o.augment != "auto" else ("color" if channels == 3 else "digits")
        return TwoViews(view_transform(kind, cfg, side))
    if o.name == "supervised":
        return view_transform(o.supervised_augment, cfg, side)
    return T.ToTensor()


def make_dataset(cfg: RunConfig, root: Path | None = None):
    root = Path(root or resolve_root(cfg.data.root))
    channels, side = SHAPES[cfg.data.name]
    transform = sample_transform(cfg, channels, side)
    if cfg.data.name == "mnist":
        return datasets.MNIST(str(root), train=True, transform=transform, download=False)
    return datasets.ImageFolder(str(root / "cifar10-jpeg" / "train"), transform=transform)


# ------------------------------------------------------------------------------------------------ model
class NaiveModel(nn.Module):
    """latentbench's own encoder/decoder/heads; the step written inline, as in a tutorial."""

    def __init__(self, cfg: RunConfig, spec: DatasetSpec):
        super().__init__()
        self.cfg = cfg
        self.encoder, decoder = build_encoder_decoder(spec, cfg.model)
        o, m = cfg.objective, cfg.model
        self.decoder = decoder if o.name == "autoencoder" or (o.name == "contrastive" and o.recon_weight > 0) else None
        if o.name == "supervised":
            self.classifier = ClassifierHead(m.latent_dim, m.classifier_hidden, spec.num_classes, m.classifier_dropout)
        if o.name == "contrastive":
            self.projector = ProjectionHead(m.latent_dim, o.proj_hidden, o.proj_dim)

    def _reconstruction(self, x: torch.Tensor) -> torch.Tensor:
        o = self.cfg.objective
        noisy = (x + o.noise_std * torch.randn_like(x)).clamp(0, 1) if o.noise_std > 0 else x
        z, skips = self.encoder.features(noisy)
        x_hat = self.decoder(z, skips)
        if o.recon_loss == "bce":  # the usual call (latentbench's equal, faster version: losses.binary_cross_entropy)
            return F.binary_cross_entropy(x_hat.clamp(1e-6, 1 - 1e-6), x)
        return reconstruction_loss(x_hat, x, o.recon_loss)

    def loss(self, batch) -> torch.Tensor:
        o = self.cfg.objective
        if o.name == "autoencoder":
            return self._reconstruction(batch[0])
        if o.name == "supervised":
            x, y = batch
            return classification_loss(self.classifier(self.encoder(x)), y, o.label_smoothing)
        (v1, v2, clean), _ = batch
        p = self.projector(self.encoder(torch.cat([v1, v2])))
        loss = nt_xent(p[: v1.shape[0]], p[v1.shape[0]:], o.temperature)
        if self.decoder is not None:
            loss = loss + o.recon_weight * self._reconstruction(clean)
        return loss


def _to(batch, device: torch.device):
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(b, device) for b in batch)
    return batch.to(device)


class NaiveRun:
    """A model, its optimizer and a DataLoader; ``steps(n)`` trains n batches and returns the seconds."""

    def __init__(self, cfg: RunConfig, root: Path | None = None, device: str = "cpu", workers: int = 2):
        self.cfg, self.device, self.workers = cfg, torch.device(device), workers
        self.dataset = make_dataset(cfg, root)
        self.model = NaiveModel(cfg, spec_for(cfg.data.name)).to(self.device).train()
        t = cfg.train
        self.optimizer = make_optimizer(self.model.parameters(), cfg, None)  # torch's default kernels
        self.scheduler = make_scheduler(self.optimizer, cfg, len(self.dataset) // t.batch_size)  # same LR schedule

    def loader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.cfg.train.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.workers, pin_memory=self.device.type == "cuda")

    def step(self, batch) -> float:
        loss = self.model.loss(_to(batch, self.device))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss

    def batches(self):
        """Endless batches, epoch after epoch (a fresh shuffle and fresh workers per epoch, as usual)."""
        while True:
            yield from self.loader()

    def steps(self, n: int, warmup: int = 2) -> float:
        """Start the workers, train ``warmup`` untimed batches, then time ``n`` batches; stop the workers."""
        batches = self.batches()
        for _ in range(warmup):
            self.step(next(batches))
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(n):
            loss = self.step(next(batches))
        float(loss.detach())  # wait for the last step (a host sync, once)
        seconds = time.perf_counter() - start
        batches.close()  # shut the workers down so they do not compete with whatever runs next
        return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description="Train a config the usual way; print images/second.")
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--data-root", default="")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    cfg = load_config(args.config)
    run = NaiveRun(cfg, Path(args.data_root) if args.data_root else None, args.device, args.workers)
    seconds = run.steps(args.steps)
    print(f"{args.config}: {args.steps * cfg.train.batch_size / seconds:.0f} images/s "
          f"({seconds / args.steps * 1e3:.1f} ms/step, batch {cfg.train.batch_size}, {args.workers} workers)")


if __name__ == "__main__":
    main()
