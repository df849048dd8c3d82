"""Batched augmentations: per-sample parameters follow the configured ranges, differ per image, and the
exact cases (zero shift, identity jitter, 'none') reproduce the input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from latentbench.augment import (add_noise, affine_grid, apply_color, apply_erase, apply_stroke, augment,
                                 crop_theta, digit_theta, grayscale, max_3x3, randn_like, sample_color_params,
                                 sample_crop_params, sample_digit_params, sample_erase_params,
                                 sample_shift_params, sample_stroke_params, shift_theta, view_kind, warp)
from latentbench.config import AugmentConfig

N = 20_000  # draws for the frequency checks: 4 standard errors of p=0.5 is 0.014


def within(t: torch.Tensor, low: float, high: float, eps: float = 1e-6) -> bool:
    return bool((t >= low - eps).all() and (t <= high + eps).all())


def spread(t: torch.Tensor, low: float, high: float) -> bool:
    """The draws fill most of [low, high] (not a constant, not a sub-range)."""
    width = high - low
    return float(t.min()) < low + 0.05 * width and float(t.max()) > high - 0.05 * width


def close_to(frac: torch.Tensor, p: float, tol: float = 0.02) -> bool:
    return abs(float(frac.float().mean()) - p) < tol


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def images(n: int = 16, c: int = 3, size: int = 32) -> torch.Tensor:
    return torch.rand(n, c, size, size)


# ------------------------------------------------------------------------------------------ parameters
def test_crop_params_follow_scale_ratio_and_flip():
    scale, ratio = (0.2, 1.0), (0.75, 4 / 3)
    p = sample_crop_params(N, scale, ratio, flip_p=0.5)
    assert within(p["area"], *scale) and spread(p["area"], *scale)
    assert within(p["aspect"], *ratio) and spread(p["aspect"], *ratio)
    log_aspect = p["aspect"].log()  # log-uniform, as torchvision: its mean is the centre of the log range
    assert abs(float(log_aspect.mean()) - (math.log(ratio[0]) + math.log(ratio[1])) / 2) < 0.01
    assert within(p["w"], 0, 1) and within(p["h"], 0, 1)
    unclamped = (p["w"] < 1) & (p["h"] < 1)
    assert torch.allclose((p["w"] * p["h"])[unclamped], p["area"][unclamped], rtol=1e-5)
    # the box lies inside the image: centre +- half side within [-1, 1]
    assert within(p["cx"] - p["w"], -1, 1) and within(p["cx"] + p["w"], -1, 1)
    assert within(p["cy"] - p["h"], -1, 1) and within(p["cy"] + p["h"], -1, 1)
    assert close_to(p["flip"], 0.5)


@pytest.mark.parametrize("flip_p", [0.0, 1.0, 0.3])
def test_flip_probability(flip_p):
    assert close_to(sample_crop_params(N, (0.5, 1.0), (1.0, 1.0), flip_p)["flip"], flip_p)
    assert close_to(sample_shift_params(N, 4, 32, 32, flip_p)["flip"], flip_p)


def test_color_params_follow_jitter_ranges():
    cfg = AugmentConfig(jitter_p=0.8, brightness=0.4, contrast=0.3, saturation=0.2, hue=0.1, gray_p=0.2)
    p = sample_color_params(N, cfg)
    on = p["jitter"]
    assert close_to(on, 0.8) and close_to(p["gray"], 0.2)
    for key, strength in (("brightness", 0.4), ("contrast", 0.3), ("saturation", 0.2)):
        assert within(p[key][on], 1 - strength, 1 + strength) and spread(p[key][on], 1 - strength, 1 + strength)
        assert bool((p[key][~on] == 1).all()), f"{key} must be 1 where jitter is off"
    assert within(p["hue"][on], -0.1, 0.1) and spread(p["hue"][on], -0.1, 0.1)
    assert bool((p["hue"][~on] == 0).all())


def test_color_factor_never_negative():
    p = sample_color_params(N, AugmentConfig(jitter_p=1.0, brightness=1.5))
    assert within(p["brightness"], 0.0, 2.5)


def test_digit_params_follow_ranges():
    p = sample_digit_params(N, (0.5, 1.0), rotation_deg=15.0, translate=0.1)
    assert within(p["area"], 0.5, 1.0) and spread(p["area"], 0.5, 1.0)
    assert within(p["angle"], -15, 15) and spread(p["angle"], -15, 15)
    for key in ("tx", "ty"):
        assert within(p[key], -0.1, 0.1) and spread(p[key], -0.1, 0.1)


def test_shift_params_are_whole_pixels_in_range():
    p = sample_shift_params(N, 4, 32, 32, 0.5)
    for key in ("dx", "dy"):
        assert p[key].dtype in (torch.int32, torch.int64)
        assert set(p[key].tolist()) == set(range(-4, 5))


def test_batch_gets_different_parameters_per_image():
    cfg = AugmentConfig()
    crop = sample_crop_params(64, tuple(cfg.crop_scale), tuple(cfg.crop_ratio), cfg.flip_p)
    color = sample_color_params(64, cfg)
    digit = sample_digit_params(64, (0.5, 1.0), 15.0, 0.1)
    for params in (crop, color, digit):
        for key, value in params.items():
            if value.dtype.is_floating_point and key not in ("w", "h"):
                assert value.unique().numel() > 32, f"{key} repeats across the batch"


# ------------------------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("kind", ["color", "digits", "crop_flip", "none"])
@pytest.mark.parametrize("channels", [1, 3])
def test_outputs_keep_shape_dtype_and_range(kind, channels):
    x = images(8, channels, 28)
    out = augment(x, kind, AugmentConfig())
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize("kind", ["color", "digits", "crop_flip"])
def test_same_image_gets_different_views(kind):
    x = images(1, 3, 32).expand(32, -1, -1, -1).contiguous()
    out = augment(x, kind, AugmentConfig())
    distinct = {tuple(v.flatten()[::37].tolist()) for v in out}
    assert len(distinct) > 16


def test_channels_last_input_gives_the_same_result():
    x = images(8)
    torch.manual_seed(3)
    a = augment(x, "color", AugmentConfig())
    torch.manual_seed(3)
    b = augment(x.contiguous(memory_format=torch.channels_last), "color", AugmentConfig())
    assert torch.allclose(a, b, atol=1e-6)


def test_seeded_augmentation_is_reproducible():
    x = images(8)
    torch.manual_seed(7)
    a = augment(x, "color", AugmentConfig())
    torch.manual_seed(7)
    b = augment(x, "color", AugmentConfig())
    assert torch.equal(a, b)


# --------------------------------------------------------------------------------------- exact cases
@pytest.mark.parametrize("shape", [(5, 1, 28, 28), (4, 3, 32, 20)])
def test_affine_grid_matches_torch(shape):
    theta = torch.randn(shape[0], 2, 3)
    expected = F.affine_grid(theta, list(shape), align_corners=False)
    assert torch.allclose(affine_grid(theta, shape[2], shape[3]), expected, atol=1e-5)


def test_none_is_identity():
    x = images()
    assert torch.equal(augment(x, "none", AugmentConfig()), x)


def test_zero_shift_with_flip_equals_torch_flip():
    x = images(6)
    p = sample_shift_params(6, 4, 32, 32, flip_p=0.0)
    p["dx"].zero_()
    p["dy"].zero_()
    assert torch.allclose(warp(x, shift_theta(p)), x, atol=1e-6)
    p["flip"] = torch.ones(6, dtype=torch.bool)
    assert torch.allclose(warp(x, shift_theta(p)), torch.flip(x, dims=[-1]), atol=1e-6)


def test_whole_pixel_shift_moves_pixels_and_pads_with_zeros():
    x = images(1)
    p = {"dx": torch.tensor([2]), "dy": torch.tensor([-1]), "flip": torch.tensor([False]), "height": 32,
         "width": 32}
    out = warp(x, shift_theta(p))
    # output pixel (i, j) reads input pixel (i + dy, j + dx)
    assert torch.allclose(out[..., 1:, :30], x[..., :31, 2:], atol=1e-6)
    assert float(out[..., :, 30:].abs().max()) == 0.0 and float(out[..., 0, :].abs().max()) == 0.0


def test_full_crop_and_neutral_digit_warp_are_identity():
    x = images(4)
    one, zero = torch.ones(4), torch.zeros(4)
    crop = {"w": one, "h": one, "cx": zero, "cy": zero, "flip": torch.zeros(4, dtype=torch.bool)}
    assert torch.allclose(warp(x, crop_theta(crop), padding="border"), x, atol=1e-6)
    digit = {"area": one, "angle": zero, "tx": zero, "ty": zero}
    assert torch.allclose(warp(x, digit_theta(digit)), x, atol=1e-6)


def test_neutral_color_jitter_is_identity():
    x = images(8)
    one = torch.ones(8)
    p = {"jitter": torch.ones(8, dtype=torch.bool), "brightness": one, "contrast": one, "saturation": one,
         "hue": torch.zeros(8), "gray": torch.zeros(8, dtype=torch.bool)}
    assert torch.allclose(apply_color(x, p), x, atol=1e-5)


def test_grayscale_flag_gives_equal_channels_with_luma():
    x = images(4)
    p = sample_color_params(4, AugmentConfig(jitter_p=0.0, gray_p=1.0))
    out = apply_color(x, p)
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])
    assert torch.allclose(out[:, :1], grayscale(x), atol=1e-5)


def test_hue_rotation_keeps_luma_and_changes_colour():
    x = images(8) * 0.5 + 0.25  # away from the clamp
    one = torch.ones(8)
    p = {"jitter": torch.ones(8, dtype=torch.bool), "brightness": one, "contrast": one, "saturation": one,
         "hue": torch.full((8,), 0.1), "gray": torch.zeros(8, dtype=torch.bool)}
    out = apply_color(x, p)
    assert float((out - x).abs().mean()) > 0.01
    assert torch.allclose(grayscale(out), grayscale(x), atol=2e-3)  # YIQ rotation keeps Y (up to clamping)


def test_brightness_factor_scales_pixels():
    x = images(4) * 0.5
    one = torch.ones(4)
    p = {"jitter": torch.ones(4, dtype=torch.bool), "brightness": torch.tensor([0.5, 1.0, 1.5, 2.0]),
         "contrast": one, "saturation": one, "hue": torch.zeros(4), "gray": torch.zeros(4, dtype=torch.bool)}
    out = apply_color(x, p)
    assert torch.allclose(out, (x * p["brightness"].view(-1, 1, 1, 1)).clamp(0, 1), atol=1e-5)


def test_noise_has_the_requested_std_and_stays_in_range():
    x = torch.full((64, 1, 28, 28), 0.5)
    noisy = add_noise(x.clone(), 0.1)
    assert abs(float((noisy - x).std()) - 0.1) < 0.005
    assert float(noisy.min()) >= 0 and float(noisy.max()) <= 1
    assert add_noise(x, 0.0) is x


def test_view_kind_auto():
    assert view_kind("auto", 3) == "color" and view_kind("auto", 1) == "digits"
    assert view_kind("crop_flip", 3) == "crop_flip"


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment(images(2), "bogus", AugmentConfig())


# ------------------------------------------------------------------------- stroke width and erasing
def test_stroke_params_follow_probability():
    p = sample_stroke_params(N, 0.6)
    assert not bool((p["dilate"] & p["erode"]).any())
    assert close_to(p["dilate"], 0.3) and close_to(p["erode"], 0.3)


def test_stroke_matches_a_per_pixel_window_loop():
    x = images(3, 1, 9)
    p = {"dilate": torch.tensor([True, False, False]), "erode": torch.tensor([False, True, False])}
    out = apply_stroke(x, p)
    padded_max = F.pad(x, (1, 1, 1, 1), value=0.0)  # reference: explicit 3x3 windows
    padded_min = F.pad(x, (1, 1, 1, 1), value=1.0)
    for i in range(9):
        for j in range(9):
            assert torch.isclose(out[0, 0, i, j], padded_max[0, 0, i:i + 3, j:j + 3].max())
            assert torch.isclose(out[1, 0, i, j], padded_min[1, 0, i:i + 3, j:j + 3].min())
    assert torch.equal(out[2], x[2])



def test_max_3x3_equals_max_pool2d():
    x = torch.randn(4, 3, 7, 10)  # signed values, several channels, not square
    assert torch.equal(max_3x3(x), F.max_pool2d(x, 3, stride=1, padding=1))

def test_erase_params_follow_ranges():
    p = sample_erase_params(N, 0.5, (0.02, 0.15))
    assert close_to(p["erase"], 0.5)
    assert within(p["side"] ** 2, 0.02, 0.15) and spread(p["side"] ** 2, 0.02, 0.15)
    for key in ("cx", "cy"):
        assert within(p[key], 0.0, 1.0) and spread(p[key], 0.0, 1.0)


def test_erase_zeroes_exactly_the_sampled_box():
    x = torch.ones(2, 1, 10, 10)
    p = {"erase": torch.tensor([True, False]), "side": torch.tensor([0.4, 0.4]),
         "cx": torch.tensor([0.5, 0.5]), "cy": torch.tensor([0.3, 0.3])}
    out = apply_erase(x, p)
    expected = torch.ones(10, 10)
    expected[1:5, 3:7] = 0.0  # pixel centres (k + 0.5) / 10 within 0.2 of (0.3, 0.5)
    assert torch.equal(out[0, 0], expected)
    assert torch.equal(out[1], x[1])


def test_digit_views_use_stroke_and_erase_when_enabled():
    x = images(64, 1, 28)
    cfg = AugmentConfig(digit_crop_scale=[1.0, 1.0], rotation_deg=0.0, translate=0.0)
    assert torch.allclose(augment(x, "digits", cfg), x, atol=1e-5)
    cfg.erase_p, cfg.erase_scale = 1.0, [0.1, 0.1]
    erased = augment(x, "digits", cfg)
    zero_share = (erased == 0).float().mean(dim=(1, 2, 3))
    assert bool((zero_share > 0.02).all())
    cfg.erase_p, cfg.stroke_p = 0.0, 1.0
    stroked = augment(x, "digits", cfg)
    assert not torch.allclose(stroked, x) and float(stroked.min()) >= 0 and float(stroked.max()) <= 1


def test_color_views_erase_a_square_only_when_asked_and_draw_nothing_more_otherwise():
    x = images(64, 3, 32) * 0.9 + 0.1  # no zero pixels before erasing
    cfg = AugmentConfig(gray_p=0.0, jitter_p=0.0)
    torch.manual_seed(0)
    plain = augment(x, "color", cfg)
    torch.manual_seed(0)
    assert torch.equal(augment(x, "color", cfg), plain)  # erase_p = 0: the same random stream as before
    cfg.erase_p, cfg.erase_scale = 1.0, [0.25, 0.25]
    torch.manual_seed(0)
    erased = augment(x, "color", cfg)
    zero = (erased == 0).all(dim=1)  # whole pixels, every channel
    share = zero.float().mean(dim=(1, 2))  # a 16x16 square is 25% of the image; at a corner a quarter of it
    assert bool((share > 0.06).all()) and float(share.mean()) > 0.12
    assert torch.equal(erased[~zero.unsqueeze(1).expand_as(erased)], plain[~zero.unsqueeze(1).expand_as(plain)])


def test_mask_pixels_zeroes_a_fraction_p_of_pixels_with_one_mask_across_channels():
    from latentbench.augment import mask_pixels
    torch.manual_seed(0)
    x = torch.rand(64, 3, 32, 32) * 0.9 + 0.1  # no zero pixels before masking
    masked = mask_pixels(x, 0.25)
    zero = masked == 0
    assert abs(zero.float().mean().item() - 0.25) < 0.01
    assert torch.equal(zero[:, 0], zero[:, 1]) and torch.equal(zero[:, 0], zero[:, 2])  # whole pixels
    assert torch.equal(masked[~zero], x[~zero])  # kept pixels are untouched
    assert mask_pixels(x, 0.0) is x


def test_corrupt_masks_then_adds_noise_and_only_in_training():
    from latentbench.augment import corrupt
    x = torch.full((4, 1, 28, 28), 0.5)
    assert corrupt(x, 0.0, 0.0) is x
    torch.manual_seed(0)
    out = corrupt(x, 0.0, 1.0)
    assert torch.count_nonzero(out) == 0  # p = 1 masks every pixel
    torch.manual_seed(0)
    noisy = corrupt(x, 0.1, 0.5)
    # about half masked (noise of 0.1 rarely lifts a 0 past 0.2)
    assert 0.4 < (noisy < 0.2).float().mean().item() < 0.6
    assert noisy.min() >= 0 and noisy.max() <= 1


def test_randn_like_keeps_the_layout_and_draws_standard_normals():
    x = torch.rand(64, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    noise = randn_like(x)
    assert noise.shape == x.shape and noise.is_contiguous(memory_format=torch.channels_last)
    assert abs(float(noise.mean())) < 0.01 and abs(float(noise.std()) - 1) < 0.01
    assert randn_like(torch.rand(5, 4)).shape == (5, 4)
    assert add_noise(x, 0.1).is_contiguous(memory_format=torch.channels_last)


def test_crop_flip_adds_cutout_only_when_erase_p_is_set():
    x = images(256, 3, 32).clamp_min(0.05)  # no natural zeros: every zero is a cut-out or padded pixel
    cfg = AugmentConfig(flip_p=0.5)
    torch.manual_seed(1)
    plain = augment(x, "crop_flip", cfg)
    cfg.erase_p, cfg.erase_scale = 1.0, [0.25, 0.25]  # DeVries & Taylor's 16x16 square on 32x32
    torch.manual_seed(1)  # the same shifts and flips: they are drawn before the boxes
    cut = augment(x, "crop_flip", cfg)
    changed = (cut != plain).any(dim=1)  # (B, H, W): pixels the cutout touched
    assert bool((cut[changed.unsqueeze(1).expand_as(cut)] == 0).all())  # touched pixels are zeroed
    area = changed.float().sum(dim=(1, 2))
    assert float(area.max()) <= 16 * 16  # one 16x16 box at most, clipped at the border
    assert float(area.mean()) > 0.4 * 256  # a uniformly placed centre keeps ~9/16 of the box on average
    rows = torch.stack([torch.nonzero(changed[i]).float().mean(0) for i in range(16)])
    assert float(rows.std(0).min()) > 2.0  # each image gets its own box


def test_erase_kind_zeroes_one_square_per_image_and_keeps_every_other_pixel():
    """The autoencoder's in-painting input: no shift or flip, only the sampled square (clipped at the border)
    is zeroed; p = 0.5 leaves about half the images untouched."""
    x = images(256, 3, 32).clamp_min(0.05)  # no natural zeros
    cfg = AugmentConfig(erase_p=1.0, erase_scale=[0.25, 0.25])
    torch.manual_seed(2)
    out = augment(x, "erase", cfg)
    changed = (out != x).any(dim=1)
    assert torch.equal(out[~changed.unsqueeze(1).expand_as(out)], x[~changed.unsqueeze(1).expand_as(x)])
    assert bool((out[changed.unsqueeze(1).expand_as(out)] == 0).all())
    area = changed.float().sum(dim=(1, 2))
    assert float(area.max()) <= 16 * 16 and float(area.min()) > 0
    for i in range(8):  # one axis-aligned box per image: its pixels fill their bounding rectangle
        rows, cols = torch.nonzero(changed[i], as_tuple=True)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert int(box) == int(area[i])
    cfg.erase_p = 0.5
    touched = (augment(x, "erase", cfg) != x).flatten(1).any(1).float().mean()
    assert 0.35 < float(touched) < 0.65
    assert torch.equal(augment(x, "erase", AugmentConfig(erase_p=0.0)), x)


def test_digit_view_steps_compile_to_the_eager_images():
    """Under torch.compile the CPU resampling runs through ATen (a graph break) and the rest is fused; the
    images must be those of the eager ops, parameters given."""
    torch.manual_seed(0)
    x = images(16, 1, 12)
    theta = digit_theta(sample_digit_params(16, (0.3, 1.0), 20.0, 0.15))
    stroke = sample_stroke_params(16, 0.8)
    erase = sample_erase_params(16, 0.8, (0.05, 0.2))

    def view(x, theta, stroke, erase):
        return apply_erase(apply_stroke(warp(x, theta), stroke), erase)

    torch._dynamo.reset()
    compiled = torch.compile(view)(x, theta, stroke, erase)
    assert torch.allclose(compiled, view(x, theta, stroke, erase), atol=1e-6)


def test_views_keep_full_precision_under_autocast():
    """The grid's and the erase box's matrix products must not drop to half precision under AMP."""
    torch.manual_seed(0)
    x = images(8, 1, 28)
    theta = digit_theta(sample_digit_params(8, (0.3, 1.0), 20.0, 0.15))
    erase = sample_erase_params(8, 1.0, (0.05, 0.2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grid = affine_grid(theta, 28, 28)
        erased = apply_erase(x, erase)
    assert grid.dtype == torch.float32 and erased.dtype == torch.float32
    assert torch.equal(grid, affine_grid(theta, 28, 28)) and torch.equal(erased, apply_erase(x, erase))
