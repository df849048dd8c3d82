"""Batched image augmentations with per-sample randomness, as tensor ops on the training device.

Each augmentation is two steps: ``sample_*_params(n, ...)`` draws one set of parameters per image
(tested against the configured ranges) and ``apply_*(x, params)`` applies them to the whole batch at
once. Geometry (random resized crop, flip, rotation, translation) is a single per-sample affine map
sampled with ``grid_sample``; colour jitter is a few broadcast tensor ops. Pixels stay in [0, 1].

Kinds:
  * ``color``: SimCLR's view pipeline: random resized crop, horizontal flip, colour jitter with
    probability, random grayscale (Chen et al. 2020, appendix A); optionally random erasing of a square
    after them (``erase_p``, off by default).
  * ``digits``: crop/scale, small rotation and translation; no flips or colour (a flipped 2 is no 2).
    Optionally, with probability, a thicker or thinner stroke (3x3 grey dilation or erosion) and
    random erasing of a square (Zhong et al. 2020), both off by default.
  * ``crop_flip``: supervised CIFAR augmentation: shift by up to 4 pixels (zero padding) and flip.
  * ``erase``: random erasing of one square (``erase_p``, ``erase_scale``) and nothing else: the autoencoder's
    in-painting input (``objective.input_augment = "erase"``; the target stays the whole image).
  * ``none``: identity.

Differences from torchvision: the crop box is clamped to the image instead of re-drawn up to ten times,
and jitter is applied in the fixed order brightness, contrast, saturation, hue (hue rotates chroma in
YIQ space) rather than a random order; both keep the per-sample parameter ranges identical.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from latentbench.config import AugmentConfig

GRAY_WEIGHTS = (0.299, 0.587, 0.114)
RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                          dtype=torch.float64)
YIQ_TO_RGB = torch.linalg.inv(RGB_TO_YIQ)  # computed once, not per batch


def _uniform(n: int, low: float, high: float, device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(low, high)


def _bernoulli(n: int, p: float, device) -> torch.Tensor:
    return torch.rand(n, device=device) < p


# ------------------------------------------------------------------------------------------ geometry
def sample_crop_params(n: int, scale: tuple[float, float], ratio: tuple[float, float], flip_p: float,
                       device="cpu") -> dict[str, torch.Tensor]:
    """Random resized crop: area fraction in ``scale``, aspect ratio (w/h) log-uniform in ``ratio``."""
    area = _uniform(n, scale[0], scale[1], device)
    log_ratio = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), device)
    aspect = log_ratio.exp()
    w = (area * aspect).sqrt().clamp(max=1.0)  # box side as a fraction of the image side
    h = (area / aspect).sqrt().clamp(max=1.0)
    cx = (torch.rand(n, device=device) * (1 - w) + w / 2) * 2 - 1  # box centre in [-1, 1] coordinates
    cy = (torch.rand(n, device=device) * (1 - h) + h / 2) * 2 - 1
    flip = _bernoulli(n, flip_p, device)
    return {"area": area, "aspect": aspect, "w": w, "h": h, "cx": cx, "cy": cy, "flip": flip}


def crop_theta(p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Affine matrices (n, 2, 3) mapping output coordinates to input coordinates."""
    sign = 1.0 - 2.0 * p["flip"].float()
    theta = torch.zeros(p["w"].shape[0], 2, 3, device=p["w"].device)
    theta[:, 0, 0] = p["w"] * sign
    theta[:, 1, 1] = p["h"]
    theta[:, 0, 2] = p["cx"]
    theta[:, 1, 2] = p["cy"]
    return theta


def sample_digit_params(n: int, scale: tuple[float, float], rotation_deg: float, translate: float,
                        device="cpu") -> dict[str, torch.Tensor]:
    """Digit geometry: zoom (area fraction in ``scale``), rotation in +-deg, shift in +-translate."""
    return {
        "area": _uniform(n, scale[0], scale[1], device),
        "angle": _uniform(n, -rotation_deg, rotation_deg, device),
        "tx": _uniform(n, -translate, translate, device),
        "ty": _uniform(n, -translate, translate, device),
    }


def digit_theta(p: dict[str, torch.Tensor]) -> torch.Tensor:
    side = p["area"].sqrt()
    rad = p["angle"] * (math.pi / 180)
    cos, sin = rad.cos() * side, rad.sin() * side
    theta = torch.stack([torch.stack([cos, -sin, 2 * p["tx"]], 1), torch.stack([sin, cos, 2 * p["ty"]], 1)], 1)
    return theta


def sample_stroke_params(n: int, p: float, device="cpu") -> dict[str, torch.Tensor]:
    """Stroke width: with probability ``p`` an image is dilated or eroded (equal odds), else unchanged."""
    change = _bernoulli(n, p, device)
    thicker = _bernoulli(n, 0.5, device)
    return {"dilate": change & thicker, "erode": change & ~thicker}


def max_3x3(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 3, stride=1, padding=1)`` as two 1-D maxima over shifted views (rows, then columns).

    The same values; on the CPU 24x faster than PyTorch's pooling kernel (256x1x28x28 with 2 threads: 87 us
    against 2,048 us), which made the stroke augmentation a third of an MNIST contrastive step.
    """
    padded = F.pad(x, (1, 1, 1, 1), value=float("-inf"))
    rows = torch.maximum(torch.maximum(padded[..., :, :-2], padded[..., :, 1:-1]), padded[..., :, 2:])
    return torch.maximum(torch.maximum(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])


def apply_stroke(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Grey-level dilation (3x3 max) or erosion (3x3 min) per image, chosen by the masks in ``p``.

    One pooling pass for both: images to erode are negated first (min(x) = -max(-x)), pooled, and negated
    back, by a per-image sign (one multiply each way instead of two selects; 25% faster on the CPU)."""
    view = (-1, 1, 1, 1)
    sign = 1.0 - 2.0 * p["erode"].view(view).to(x.dtype)
    pooled = max_3x3(x * sign) * sign
    return torch.where((p["dilate"] | p["erode"]).view(view), pooled, x)


def sample_erase_params(n: int, p: float, scale: tuple[float, float], device="cpu") -> dict[str, torch.Tensor]:
    """Random erasing: with probability ``p`` a square covering ``scale`` of the area, centred anywhere."""
    return {
        "erase": _bernoulli(n, p, device),
        "side": _uniform(n, scale[0], scale[1], device).sqrt(),
        "cx": _uniform(n, 0.0, 1.0, device),
        "cy": _uniform(n, 0.0, 1.0, device),
    }


def apply_erase(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Zero the sampled square of every image whose ``erase`` flag is set (box clipped to the image).

    The box is the outer product of a row and a column indicator (one batched matrix product), and the
    images are multiplied by its complement: fewer full-size passes than a boolean mask (20% faster on
    the CPU), the same zeros."""
    h, w = x.shape[-2:]
    rows = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5) / h
    cols = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5) / w
    half = (p["side"] / 2).view(-1, 1)
    in_rows = ((rows.view(1, -1) - p["cy"].view(-1, 1)).abs() <= half) & p["erase"].view(-1, 1)
    in_cols = (cols.view(1, -1) - p["cx"].view(-1, 1)).abs() <= half
    with torch.autocast(x.device.type, enabled=False):  # the images' own dtype under AMP too
        box = torch.bmm(in_rows.to(x.dtype).unsqueeze(2), in_cols.to(x.dtype).unsqueeze(1))  # (B, H, W) of 0/1
    return x * (1.0 - box).unsqueeze(1)


def sample_shift_params(n: int, max_shift: int, height: int, width: int, flip_p: float,
                        device="cpu") -> dict[str, torch.Tensor]:
    """Whole-pixel shifts in [-max_shift, max_shift] (pad-and-crop) and a horizontal flip."""
    dx = torch.randint(-max_shift, max_shift + 1, (n,), device=device)
    dy = torch.randint(-max_shift, max_shift + 1, (n,), device=device)
    return {"dx": dx, "dy": dy, "flip": _bernoulli(n, flip_p, device), "height": height, "width": width}


def shift_theta(p: dict[str, torch.Tensor]) -> torch.Tensor:
    n = p["dx"].shape[0]
    theta = torch.zeros(n, 2, 3, device=p["dx"].device)
    theta[:, 0, 0] = 1.0 - 2.0 * p["flip"].float()
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 2.0 * p["dx"].float() / p["width"]
    theta[:, 1, 2] = 2.0 * p["dy"].float() / p["height"]
    return theta


def _pixel_centres(size: int, device, dtype) -> torch.Tensor:
    """Pixel-centre coordinates in [-1, 1], as ``affine_grid(align_corners=False)`` places them."""
    return (torch.arange(size, device=device, dtype=dtype) * 2 + 1) / size - 1


def affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.affine_grid(theta, (B, C, H, W), align_corners=False)`` as one matrix product.

    ``theta`` (B, 2, 3) times the homogeneous pixel centres (3, H*W) gives the x and y planes
    (B, 2, H, W); the grid is their permuted view (B, H, W, 2), which ``grid_sample`` reads through its
    strides. The same grid to float rounding, at a seventh of ``F.affine_grid``'s cost on the CPU
    (256 x 28 x 28: 70 us against 1,040 us; its batched matmul has an inner size of 3).
    """
    xs = _pixel_centres(width, theta.device, theta.dtype).view(1, width).expand(height, width)
    ys = _pixel_centres(height, theta.device, theta.dtype).view(height, 1).expand(height, width)
    base = torch.stack([xs, ys, torch.ones_like(xs)]).reshape(3, height * width)
    with torch.autocast(theta.device.type, enabled=False):  # coordinates in full precision under AMP too
        planes = theta.reshape(-1, 3) @ base  # rows alternate x, y for every image
    return planes.view(-1, 2, height, width).permute(0, 2, 3, 1)


def _resample(x: torch.Tensor, grid: torch.Tensor, padding: str) -> torch.Tensor:
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


# Inductor lowers grid_sample to a gather loop that is slower on the CPU than ATen's vectorised kernel
# (256 x 1 x 28 x 28 with 2 threads: 680-810 us compiled against 300-400 us eager), so a compiled objective
# leaves the resampling to ATen there (one graph break); on the GPU the fused lowering is kept.
_resample_eagerly = torch.compiler.disable(_resample)


def warp(x: torch.Tensor, theta: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Resample every image of ``x`` (B, C, H, W) through its own affine map ``theta`` (B, 2, 3)."""
    grid = affine_grid(theta.to(x.dtype), x.shape[-2], x.shape[-1])
    return (_resample_eagerly if x.device.type == "cpu" else _resample)(x, grid, padding)


# ---------------------------------------------------------------------------------------------- colour
def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma of RGB images (B, 3, H, W) -> (B, 1, H, W)."""
    w = torch.tensor(GRAY_WEIGHTS, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def sample_color_params(n: int, cfg: AugmentConfig, device="cpu") -> dict[str, torch.Tensor]:
    """Per image: jitter on/off (``jitter_p``), factors in torchvision's ranges, grayscale (``gray_p``)."""
    on = _bernoulli(n, cfg.jitter_p, device)

    def factor(strength: float) -> torch.Tensor:
        f = _uniform(n, max(0.0, 1 - strength), 1 + strength, device)
        return torch.where(on, f, torch.ones_like(f))

    hue = _uniform(n, -cfg.hue, cfg.hue, device)
    return {
        "jitter": on,
        "brightness": factor(cfg.brightness),
        "contrast": factor(cfg.contrast),
        "saturation": factor(cfg.saturation),
        "hue": torch.where(on, hue, torch.zeros_like(hue)),
        "gray": _bernoulli(n, cfg.gray_p, device),
    }


def _rotate_hue(x: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """Rotate chroma by ``hue`` turns (fraction of 360 degrees) in YIQ space."""
    rgb_to_yiq, yiq_to_rgb = (m.to(x.device, x.dtype) for m in (RGB_TO_YIQ, YIQ_TO_RGB))
    angle = hue * 2 * math.pi
    cos, sin = angle.cos(), angle.sin()
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rot = torch.stack([torch.stack([one, zero, zero], 1), torch.stack([zero, cos, -sin], 1),
                       torch.stack([zero, sin, cos], 1)], 1)  # (B, 3, 3)
    m = yiq_to_rgb @ rot @ rgb_to_yiq  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", m, x)


def apply_color(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Colour jitter and random grayscale on RGB images in [0, 1]."""
    view = (-1, 1, 1, 1)
    x = (x * p["brightness"].view(view)).clamp(0, 1)
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * p["contrast"].view(view) + mean).clamp(0, 1)
    gray = grayscale(x)
    x = ((x - gray) * p["saturation"].view(view) + gray).clamp(0, 1)
    x = _rotate_hue(x, p["hue"]).clamp(0, 1)
    return torch.where(p["gray"].view(view), grayscale(x).expand_as(x), x)


# ------------------------------------------------------------------------------------------- pipelines
def augment(x: torch.Tensor, kind: str, cfg: AugmentConfig) -> torch.Tensor:
    """One randomly augmented view of every image of ``x`` (B, C, H, W), parameters drawn per image."""
    n, c, h, w = x.shape
    if kind == "none":
        return x
    if kind == "color":
        geo = sample_crop_params(n, tuple(cfg.crop_scale), tuple(cfg.crop_ratio), cfg.flip_p, x.device)
        out = warp(x, crop_theta(geo), padding="border")
        out = apply_color(out, sample_color_params(n, cfg, x.device)) if c == 3 else out
        if cfg.erase_p > 0:  # random erasing after the colour changes (off by default: SimCLR has none)
            out = apply_erase(out, sample_erase_params(n, cfg.erase_p, tuple(cfg.erase_scale), x.device))
        return out
    if kind == "digits":
        geo = sample_digit_params(n, tuple(cfg.digit_crop_scale), cfg.rotation_deg, cfg.translate, x.device)
        out = warp(x, digit_theta(geo), padding="zeros")
        if cfg.stroke_p > 0:
            out = apply_stroke(out, sample_stroke_params(n, cfg.stroke_p, x.device))
        if cfg.erase_p > 0:
            out = apply_erase(out, sample_erase_params(n, cfg.erase_p, tuple(cfg.erase_scale), x.device))
        return out
    if kind == "crop_flip":
        geo = sample_shift_params(n, max(1, round(h / 8)), h, w, cfg.flip_p, x.device)
        out = warp(x, shift_theta(geo), padding="zeros")
        if cfg.erase_p > 0:  # cutout (DeVries & Taylor 2017) on top of the shift and flip
            out = apply_erase(out, sample_erase_params(n, cfg.erase_p, tuple(cfg.erase_scale), x.device))
        return out
    if kind == "erase":  # the image in place with one square zeroed (an in-painting input for autoencoders)
        return apply_erase(x, sample_erase_params(n, cfg.erase_p, tuple(cfg.erase_scale), x.device))
    raise ValueError(f"unknown augmentation '{kind}' (color | digits | crop_flip | erase | none)")


def add_noise(x: torch.Tensor, std: float) -> torch.Tensor:
    """Gaussian pixel noise of standard deviation ``std``, clipped back to [0, 1] (denoising input)."""
    if std <= 0:
        return x
    return (x + std * randn_like(x)).clamp_(0, 1)


def randn_like(x: torch.Tensor) -> torch.Tensor:
    """``torch.randn_like(x)`` with ``x``'s memory layout, drawn in memory order.

    On the CPU ``normal_`` is 8-9x slower on a channels_last tensor than on a contiguous one (128x3x32x32
    with 2 threads: 8.4 ms against 1.0 ms, most of the denoising term's input cost), so channels_last
    noise is drawn as a contiguous NHWC tensor and viewed as NCHW.
    """
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        n, c, h, w = x.shape
        return torch.randn(n, h, w, c, dtype=x.dtype, device=x.device).permute(0, 3, 1, 2)
    return torch.randn_like(x)


def mask_pixels(x: torch.Tensor, p: float) -> torch.Tensor:
    """Masking noise (Vincent et al. 2008): every pixel set to 0 independently with probability ``p``.

    The same mask for all channels of a pixel.
    """
    if p <= 0:
        return x
    keep = torch.rand(x.shape[0], 1, *x.shape[2:], device=x.device) >= p
    return x * keep


def corrupt(x: torch.Tensor, noise_std: float, mask_p: float) -> torch.Tensor:
    """The denoising input: masking noise, then Gaussian noise (either may be off)."""
    return add_noise(mask_pixels(x, mask_p), noise_std)


def view_kind(requested: str, channels: int) -> str:
    """``auto`` picks SimCLR's colour pipeline for RGB images and the digit pipeline for grayscale."""
    if requested != "auto":
        return requested
    return "color" if channels == 3 else "digits"
