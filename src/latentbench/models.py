"""Encoders, decoders and heads, built from a DatasetSpec and the model config.

Contract: ``encoder(x) -> z`` with ``x`` float pixels in [0, 1] of shape (B, C, H, W) and ``z`` of shape
(B, latent_dim). Heads (decoder, classifier, projection) live outside the encoder so every evaluation
sees the same object. Encoders normalise their input with the dataset mean/std themselves.

The report's models:
  * MLP (MNIST): 784-256-ReLU-128-ReLU-128; decoder mirrors it (128-128-ReLU-256-ReLU-784, Sigmoid).
  * Conv (CIFAR-10): four 3x3 conv layers with increasing widths, each BatchNorm + ReLU (strides 1,2,2,2),
    flatten, linear to the latent; decoder: linear, three ConvTranspose2d layers back to full size, Sigmoid.
    With ``skips`` the decoder adds the encoder's feature maps at matching resolutions (U-Net style).
Decoders also give ``logits(z, skips)``, the reconstruction before its sigmoid, so a binary cross-entropy
can be computed from the logits (:func:`latentbench.losses.sigmoid_bce`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from latentbench.config import ModelConfig
from latentbench.data import DatasetSpec
from latentbench.registry import get, register


class Normalize(nn.Module):
    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


ACTIVATIONS = {"relu": lambda: nn.ReLU(inplace=True), "gelu": nn.GELU, "silu": nn.SiLU,
               "leaky_relu": lambda: nn.LeakyReLU(0.01, inplace=True)}


def _mlp(sizes: list[int], activation: str = "relu", batchnorm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        hidden = i < len(sizes) - 2
        layers.append(nn.Linear(a, b, bias=not (hidden and batchnorm)))
        if hidden:
            if batchnorm:
                layers.append(nn.BatchNorm1d(b))
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """Base: ``forward(x) -> z``; ``features(x) -> (z, skips)`` for decoders that use skip connections."""

    latent_dim: int

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self(x), []


class MLPEncoder(Encoder):
    def __init__(self, spec: DatasetSpec, hidden: list[int], latent_dim: int, activation: str = "relu",
                 batchnorm: bool = False):
        super().__init__()
        self.latent_dim = latent_dim
        self.normalize = Normalize(spec.mean, spec.std)
        sizes = [spec.channels * spec.height * spec.width, *hidden, latent_dim]
        self.net = _mlp(sizes, activation=activation, batchnorm=batchnorm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x).flatten(1))


class MLPDecoder(nn.Module):
    """``hidden`` lists the widths from the latent outwards (the encoder's, reversed, for a mirror)."""

    def __init__(self, spec: DatasetSpec, hidden: list[int], latent_dim: int, activation: str = "relu"):
        super().__init__()
        self.shape = spec.shape
        self.net = _mlp([latent_dim, *hidden, math.prod(spec.shape)], activation)

    def logits(self, z: torch.Tensor, skips: list[torch.Tensor] | None = None) -> torch.Tensor:
        """The reconstruction before its sigmoid (what a binary cross-entropy from logits needs)."""
        return self.net(z).view(-1, *self.shape)

    def forward(self, z: torch.Tensor, skips: list[torch.Tensor] | None = None) -> torch.Tensor:
        return torch.sigmoid(self.logits(z, skips))


def _conv_block(c_in: int, c_out: int, stride: int, downsample: str = "stride") -> nn.Sequential:
    """3x3 conv + BatchNorm + ReLU. A stride-2 block halves the side (rounding up) by striding the conv, or
    with ``downsample="maxpool"`` by a 2x2 max pool after a conv at the full side (pooled before the
    BatchNorm, as in airbench: the normalisation then runs on the smaller map)."""
    if stride == 1 or downsample == "stride":
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                             nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                         nn.MaxPool2d(stride, ceil_mode=True),  # ceil: 7 -> 4, as a strided conv gives
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def _conv_out_side(side: int, strides: list[int]) -> int:
    """Side of the map after 3x3 convolutions (padding 1) with these strides."""
    for stride in strides:
        side = (side - 1) // stride + 1
    return side


class ConvEncoder(Encoder):
    """Four 3x3 conv + BN + ReLU blocks with the given widths and strides (strided convs, or max pools with
    ``downsample="maxpool"``), then a linear map to ``z`` from the last map flattened (``pool="flatten"``)
    or averaged over its positions (``pool="avg"``)."""

    def __init__(self, spec: DatasetSpec, widths: list[int], latent_dim: int, strides: list[int],
                 pool: str = "flatten", downsample: str = "stride"):
        super().__init__()
        self.latent_dim = latent_dim
        self.normalize = Normalize(spec.mean, spec.std)
        chans = [spec.channels, *widths]
        self.blocks = nn.ModuleList(_conv_block(a, b, s, downsample)
                                    for a, b, s in zip(chans[:-1], chans[1:], strides))
        self.side = (_conv_out_side(spec.height, strides), _conv_out_side(spec.width, strides))
        self.pool = pool
        positions = 1 if pool == "avg" else self.side[0] * self.side[1]
        self.fc = nn.Linear(widths[-1] * positions, latent_dim)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = self.normalize(x)
        maps = []
        for block in self.blocks:
            h = block(h)
            maps.append(h)
        h = h.mean((2, 3)) if self.pool == "avg" else h.flatten(1)
        return self.fc(h), maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[0]


def _up_block(c_in: int, c_out: int, stride: int, last: bool) -> nn.Sequential:
    """x2 up-sampling (4x4 transposed conv, stride 2) or, mirroring a stride-1 block, a 3x3 one at the same size."""
    kernel = 4 if stride == 2 else 3
    conv = nn.ConvTranspose2d(c_in, c_out, kernel, stride=stride, padding=1, bias=last)
    return nn.Sequential(conv) if last else nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.ReLU(True))


class ConvDecoder(nn.Module):
    """Linear to the last feature map, then three ConvTranspose2d mirroring the encoder's blocks 4, 3 and 2
    (x2 for a stride-2 block) back to the image size.

    With ``skips``, the encoder maps of the same resolution are added before each up-sampling layer.
    """

    def __init__(self, spec: DatasetSpec, widths: list[int], latent_dim: int, skips: bool, strides: list[int]):
        super().__init__()
        self.use_skips = skips
        self.side = (_conv_out_side(spec.height, strides), _conv_out_side(spec.width, strides))
        self.fc = nn.Linear(latent_dim, widths[-1] * self.side[0] * self.side[1])
        self.fc_act = nn.ReLU(inplace=True)
        chans = [widths[3], widths[2], widths[1], spec.channels]
        self.ups = nn.ModuleList(_up_block(a, b, stride, last=i == 2) for i, (a, b, stride)
                                 in enumerate(zip(chans[:-1], chans[1:], strides[:0:-1])))
        self.out_size = (spec.height, spec.width)

    def logits(self, z: torch.Tensor, skips: list[torch.Tensor] | None = None) -> torch.Tensor:
        """The reconstruction before its sigmoid (resized in logit space when the sizes do not divide)."""
        h = self.fc_act(self.fc(z)).view(z.shape[0], -1, *self.side)
        for i, up in enumerate(self.ups):
            if self.use_skips and skips:
                skip = skips[3 - i]  # encoder maps at 4x4 (block 4), 8x8 (block 3), 16x16 (block 2) for 32x32
                if h.shape[-2:] != skip.shape[-2:]:  # sides that do not halve evenly (28 -> 14 -> 7 -> 4)
                    h = nn.functional.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
                h = h + skip
            h = up(h)
        if h.shape[-2:] != self.out_size:
            h = nn.functional.interpolate(h, size=self.out_size, mode="bilinear", align_corners=False)
        return h

    def forward(self, z: torch.Tensor, skips: list[torch.Tensor] | None = None) -> torch.Tensor:
        return torch.sigmoid(self.logits(z, skips))


class ClassifierHead(nn.Module):
    """The report's classifier: latent-64-ReLU-Dropout-classes."""

    def __init__(self, latent_dim: int, hidden: int, classes: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(hidden, classes))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class ProjectionHead(nn.Module):
    """SimCLR's projection g(.) = W2 ReLU(W1 z) (Chen et al. 2020, sec. 2.1); the loss sees its output,
    evaluation never does.

    No BatchNorm after W1 on purpose: BN would cancel any constant shift of z, leaving the encoder's last
    bias without gradient, so it would drift at random under Adam and move cosine-kNN results.
    """

    def __init__(self, latent_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


# ------------------------------------------------------------------------------------------ registry
@register("encoder", "mlp")
def build_mlp(spec: DatasetSpec, cfg: ModelConfig) -> tuple[Encoder, nn.Module]:
    decoder_hidden = cfg.mlp_decoder_hidden or cfg.mlp_hidden[::-1]  # default: the encoder mirrored
    return (MLPEncoder(spec, cfg.mlp_hidden, cfg.latent_dim, cfg.mlp_activation, cfg.mlp_batchnorm),
            MLPDecoder(spec, decoder_hidden, cfg.latent_dim, cfg.mlp_activation))


@register("encoder", "conv")
def build_conv(spec: DatasetSpec, cfg: ModelConfig) -> tuple[Encoder, nn.Module]:
    return (ConvEncoder(spec, cfg.conv_widths, cfg.latent_dim, cfg.conv_strides, cfg.conv_pool, cfg.conv_downsample),
            ConvDecoder(spec, cfg.conv_widths, cfg.latent_dim, cfg.skips, cfg.conv_strides))


def encoder_name(spec: DatasetSpec, cfg: ModelConfig) -> str:
    """``auto``: an MLP for small grayscale images (MNIST-like), a conv net otherwise."""
    if cfg.encoder != "auto":
        return cfg.encoder
    return "mlp" if spec.channels == 1 and spec.height * spec.width <= 32 * 32 else "conv"


def build_encoder_decoder(spec: DatasetSpec, cfg: ModelConfig) -> tuple[Encoder, nn.Module]:
    """The encoder and its matching decoder (the decoder is used only by objectives that reconstruct)."""
    return get("encoder", encoder_name(spec, cfg))(spec, cfg)
