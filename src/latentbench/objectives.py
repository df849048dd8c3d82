"""Training objectives: ``nn.Module``s that wrap an encoder and map a batch to ``(loss, stats)``.

The training loop knows nothing about autoencoders, labels or views: it calls ``objective((x, y))`` and
gets a scalar loss tensor and a dict of detached scalar tensors for logging. Each objective names the
validation statistic to select on (``monitor``) and whether lower or higher is better.

  * ``autoencoder``  - reconstruct ``x`` from ``encoder(x + noise)`` (denoising when ``noise_std > 0``);
                       with ``recon_augment`` the training images are first augmented (target = the view);
                       with ``input_augment`` the encoder sees an augmented view and the target stays the
                       image (denoising with geometric corruption);
                       with ``latent_noise`` the decoder sees a noisy ``z`` in training;
                       with ``invariance_weight`` the code of an ``input_augment`` view is also pulled
                       toward the code of the training input (a contractive penalty along the views; a
                       second, independent view where the training input is itself a view);
                       with ``encoder_frozen_from`` < 1 only the decoder trains in the last epochs;
                       with ``skips_from`` > 0 the decoder gets no skip maps in the first epochs.
  * ``supervised``   - cross-entropy through the classifier head, end to end.
  * ``contrastive``  - SimCLR NT-Xent between two augmented views via a projection head, plus an optional
                       (denoising) reconstruction term through a decoder (the report's CIFAR model),
                       decoding a third pass over the noisy image or, with ``recon_from = "view"``, the
                       first view's code (that view is the corruption).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from latentbench.augment import augment, corrupt, view_kind
from latentbench.config import RunConfig
from latentbench.data import DatasetSpec
from latentbench.losses import classification_loss, invariance_loss, nt_xent, reconstruction_loss, sigmoid_bce
from latentbench.models import ClassifierHead, Encoder, ProjectionHead, build_encoder_decoder
from latentbench.registry import get, register

Batch = tuple[torch.Tensor, torch.Tensor]
Stats = dict[str, torch.Tensor]


class Objective(nn.Module):
    """Base class: holds ``encoder``; subclasses add heads and implement ``forward(batch)``."""

    monitor: str = "loss"  # validation stat to select on
    mode: str = "min"  # min | max

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder
        self.decoder: nn.Module | None = None

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Stats]:
        raise NotImplementedError

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the training loop before each epoch (``epoch`` counts from 0 of ``epochs``); a hook for
        objectives whose training changes over the run. Nothing by default."""

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode ``x``'s code (only for objectives with a decoder)."""
        if self.decoder is None:
            raise TypeError(f"{type(self).__name__} has no decoder")
        z, skips = self.encoder.features(x)
        return self.decoder(z, skips)


def perturb_latent(z: torch.Tensor, scale: float) -> torch.Tensor:
    """``z`` plus Gaussian noise whose std is ``scale`` times each dimension's (detached) batch std."""
    return z + scale * z.detach().std(dim=0, keepdim=True) * torch.randn_like(z)


def _pixel_errors(x_hat: torch.Tensor, x: torch.Tensor) -> Stats:
    diff = (x_hat.detach() - x).float()
    n = diff.numel()
    return {"mae": torch.linalg.vector_norm(diff, 1) / n, "mse": torch.linalg.vector_norm(diff, 2).square() / n}


def decode_with_loss(decoder: nn.Module, z: torch.Tensor, skips: list[torch.Tensor] | None, x: torch.Tensor,
                     kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(reconstruction loss, x_hat)`` for the code ``z`` against the target ``x``; the binary
    cross-entropy is taken from the decoder's logits (:func:`sigmoid_bce`; ``x_hat`` then carries no
    gradient, which the statistics do not need)."""
    if kind == "bce" and hasattr(decoder, "logits"):
        logits = decoder.logits(z, skips)
        at_least_fp32 = torch.promote_types(logits.dtype, torch.float32)  # float32 under AMP; float64 stays
        return sigmoid_bce(logits.to(at_least_fp32), x.to(at_least_fp32))
    x_hat = decoder(z, skips)
    return reconstruction_loss(x_hat, x, kind), x_hat


def mix_rows(a: torch.Tensor, b: torch.Tensor, p: float) -> torch.Tensor:
    """Row ``i`` of ``a`` with probability ``p``, else row ``i`` of ``b`` (drawn independently per row)."""
    pick = torch.rand(a.shape[0], device=a.device) < p
    return torch.where(pick.view(-1, *([1] * (a.dim() - 1))), a, b)


@register("objective", "autoencoder")
class AutoencoderObjective(Objective):
    def __init__(self, encoder: Encoder, decoder: nn.Module, recon_loss: str = "l1", noise_std: float = 0.0,
                 view: Callable[[torch.Tensor], torch.Tensor] | None = None, latent_noise: float = 0.0,
                 mask_p: float = 0.0, input_view: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 input_augment_p: float = 1.0, input_augment_until: float = 1.0,
                 invariance_weight: float = 0.0, encoder_frozen_from: float = 1.0, skips_from: float = 0.0):
        super().__init__(encoder)
        self.skips_from, self.skips_on = skips_from, True
        self.invariance_weight = invariance_weight
        self.encoder_frozen_from, self.encoder_frozen = encoder_frozen_from, False
        self.decoder, self.recon_loss, self.noise_std, self.view = decoder, recon_loss, noise_std, view
        self.latent_noise, self.mask_p, self.input_view = latent_noise, mask_p, input_view
        self.input_augment_p, self.input_augment_until = input_augment_p, input_augment_until
        self.input_view_on = input_view is not None
        self.monitor = "mae"

    @classmethod
    def build(cls, encoder: Encoder, decoder: nn.Module, spec: DatasetSpec, cfg: RunConfig) -> "Objective":
        o = cfg.objective
        return cls(encoder, decoder, o.recon_loss, o.noise_std, _view_fn(o.recon_augment, cfg),
                   o.latent_noise, o.mask_p, _view_fn(o.input_augment, cfg), o.input_augment_p,
                   o.input_augment_until, o.invariance_weight, o.encoder_frozen_from, o.skips_from)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Stats]:
        x, _ = batch
        if self.training and self.view is not None:
            x = self.view(x)  # the view is both input and target: more varied digits, same task
        x_view = self.training_view(x) if self.training else None
        z, skips = self.encoder.features(self.corrupted(x, x_view) if self.training else x)
        z_decoded = perturb_latent(z, self.latent_noise) if self.training and self.latent_noise > 0 else z
        loss, x_hat = decode_with_loss(self.decoder, z_decoded, skips if self.skips_on else None, x,
                                       self.recon_loss)
        stats = {"loss": loss.detach(), **_pixel_errors(x_hat, x)}
        if x_view is not None and self.invariance_weight > 0:
            invariance = invariance_loss(self.encoder(self.paired_view(x, x_view)), z)
            loss = loss + self.invariance_weight * invariance
            stats.update(loss=loss.detach(), invariance=invariance.detach())
        return loss, stats

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """The input view is used for the first ``input_augment_until`` of the epochs, then clean inputs; from
        ``encoder_frozen_from`` of the epochs on, the encoder is frozen and only the decoder trains; before
        ``skips_from`` of the epochs the decoder reconstructs from the code alone (training and validation
        alike; a trained model, as evaluation loads it, always uses its skips)."""
        self.input_view_on = self.input_view is not None and epoch < self.input_augment_until * epochs
        self.skips_on = epoch >= self.skips_from * epochs
        self.freeze_encoder(epoch >= self.encoder_frozen_from * epochs)

    def freeze_encoder(self, frozen: bool) -> None:
        """Stop (or restart) the encoder's training: no gradients for its weights, BatchNorm on its running
        statistics (kept in eval mode by ``train()``), so the codes and skip maps stay as they are."""
        self.encoder_frozen = frozen
        self.encoder.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> "AutoencoderObjective":
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self

    def training_view(self, x: torch.Tensor) -> torch.Tensor | None:
        """The ``input_augment`` view of ``x`` while views are on this epoch, else None."""
        return self.input_view(x) if self.input_view_on else None

    def paired_view(self, x: torch.Tensor, x_view: torch.Tensor) -> torch.Tensor:
        """The view whose code the invariance term pulls toward the training input's code: ``x_view`` when
        the input is the clean image (``input_augment_p = 0``), else a second, independent view of ``x``, so
        that the images given ``x_view`` as input are compared with another view of themselves, not with
        the same pixels."""
        return x_view if self.input_augment_p == 0 else self.input_view(x)

    def corrupted(self, x: torch.Tensor, x_view: torch.Tensor | None) -> torch.Tensor:
        """The training input: the augmented view ``x_view`` (``input_augment``) for a fraction
        ``input_augment_p`` of the images, then masking and Gaussian noise."""
        if x_view is not None:
            x = mix_rows(x_view, x, self.input_augment_p)
        return corrupt(x, self.noise_std, self.mask_p)


@register("objective", "supervised")
class SupervisedObjective(Objective):
    mode = "max"

    def __init__(self, encoder: Encoder, classifier: nn.Module, label_smoothing: float = 0.0,
                 view: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__(encoder)
        self.classifier, self.label_smoothing, self.view = classifier, label_smoothing, view
        self.monitor = "acc"

    @classmethod
    def build(cls, encoder: Encoder, decoder: nn.Module, spec: DatasetSpec, cfg: RunConfig) -> "Objective":
        m = cfg.model
        head = ClassifierHead(m.latent_dim, m.classifier_hidden, spec.num_classes, m.classifier_dropout)
        return cls(encoder, head, cfg.objective.label_smoothing, _view_fn(cfg.objective.supervised_augment, cfg))

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Stats]:
        x, y = batch
        if self.training and self.view is not None:
            x = self.view(x)
        logits = self.classifier(self.encoder(x))
        loss = classification_loss(logits, y, self.label_smoothing)
        acc = (logits.detach().argmax(1) == y).float().mean()
        return loss, {"loss": loss.detach(), "acc": acc}


@register("objective", "contrastive")
class ContrastiveObjective(Objective):
    """SimCLR with in-batch negatives; ``gather`` (set by the distributed runner) widens them to all ranks."""

    def __init__(self, encoder: Encoder, projector: nn.Module, view: Callable[[torch.Tensor], torch.Tensor],
                 temperature: float = 0.5, decoder: nn.Module | None = None, recon_weight: float = 0.0,
                 noise_std: float = 0.0, recon_loss: str = "l1", mask_p: float = 0.0,
                 recon_from: str = "image", decoupled: bool = False):
        super().__init__(encoder)
        self.projector, self.view, self.temperature = projector, view, temperature
        self.decoupled = decoupled
        self.recon_from = recon_from
        self.decoder = decoder if recon_weight > 0 else None
        self.recon_weight, self.noise_std, self.recon_loss = recon_weight, noise_std, recon_loss
        self.mask_p = mask_p
        self.gather: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.rank = 0

    @classmethod
    def build(cls, encoder: Encoder, decoder: nn.Module, spec: DatasetSpec, cfg: RunConfig) -> "Objective":
        o = cfg.objective
        view = _view_fn(view_kind(o.augment, spec.channels), cfg) or (lambda x: x)
        projector = ProjectionHead(cfg.model.latent_dim, o.proj_hidden, o.proj_dim)
        return cls(encoder, projector, view, o.temperature, decoder, o.recon_weight, o.noise_std,
                   o.recon_loss, o.mask_p, o.recon_from, o.decoupled)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Stats]:
        x, _ = batch
        n = x.shape[0]
        # Both views in one batched augmentation call (parameters drawn per row, so the two copies of an
        # image get independent views) and one encoder pass (shared BN statistics).
        views = self.view(torch.cat([x, x]))
        from_view = self.decoder is not None and self.recon_from == "view" and self.training
        if from_view:  # the first view, corrupted, is the denoising input: its code is decoded below
            views = torch.cat([corrupt(views[:n], self.noise_std, self.mask_p), views[n:]])
        z_views, view_skips = self.encoder.features(views)
        p = self.projector(z_views)
        contrastive = nt_xent(p[:n], p[n:], self.temperature, self.gather, self.rank, self.decoupled)
        stats: Stats = {"nt_xent": contrastive.detach()}
        loss = contrastive
        if self.decoder is not None:
            if from_view:
                z, skips = z_views[:n], [m[:n] for m in view_skips]
            else:  # a third pass; in validation the clean image, so val MAE measures plain reconstruction
                x_in = corrupt(x, self.noise_std, self.mask_p) if self.training else x
                z, skips = self.encoder.features(x_in)
            recon, x_hat = decode_with_loss(self.decoder, z, skips, x, self.recon_loss)
            loss = loss + self.recon_weight * recon
            stats.update({"recon": recon.detach(), **_pixel_errors(x_hat, x)})
        stats["loss"] = loss.detach()
        return loss, stats


def _view_fn(kind: str, cfg: RunConfig) -> Callable[[torch.Tensor], torch.Tensor] | None:
    if kind == "none":
        return None
    return lambda x: augment(x, kind, cfg.augment)


def build_objective(spec: DatasetSpec, cfg: RunConfig) -> Objective:
    """Encoder + the heads the configured objective needs, wrapped in its Objective."""
    encoder, decoder = build_encoder_decoder(spec, cfg.model)
    return get("objective", cfg.objective.name).build(encoder, decoder, spec, cfg)
