"""Could the decoders' stride-2 transposed convolutions run faster as ordinary convolutions?

A 4x4 transposed convolution with stride 2 and padding 1 (``latentbench.models._up_block``) equals, for each
of the four output phases (even/odd row x even/odd column), an ordinary convolution of the input with a 2x2
subset of its taps ("sub-pixel convolution", Shi et al. 2016). Two ways to run that, both checked here
against ``F.conv_transpose2d`` for equal outputs:

* ``union``: one 3x3 convolution (padding 1) with 4x the output channels, each phase's 2x2 taps placed in
  its corner of the 3x3 kernel (zeros elsewhere, 2.25x the multiply-adds), then ``pixel_shuffle``;
* ``phases``: four 2x2 convolutions on the input padded by one pixel (the exact multiply-adds), interleaved.

Each variant is timed forward + backward (input and weight gradients, as in training) on channels_last
batches at the sizes of the CIFAR-10 decoders, alternating the variants, median of ``--repeats`` calls.

    python benchmarks/transposed_conv.py [--batch 128] [--threads 2] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

# (in channels, out channels, input side): the report's widths (32-64-128-256) and the wide ones (x2)
SHAPES = [(256, 128, 4), (128, 64, 8), (64, 3, 16), (512, 256, 4), (256, 128, 8), (128, 3, 16)]

# For output phase a (0 = even, 1 = odd) along one axis: {input offset d (-1, 0, +1): transposed-conv tap}.
# From o = 2 i - 1 + k (stride 2, padding 1): o = 2m takes k = 1 at i = m and k = 3 at i = m - 1;
# o = 2m + 1 takes k = 2 at i = m and k = 0 at i = m + 1.
PHASE_TAPS = {0: {-1: 3, 0: 1}, 1: {0: 2, 1: 0}}


def reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.conv_transpose2d(x, weight, stride=2, padding=1)


def union_weight(weight: torch.Tensor) -> torch.Tensor:
    """(C_in, C_out, 4, 4) transposed-conv weight -> (4 C_out, C_in, 3, 3) conv weight, channels ordered
    as ``pixel_shuffle`` reads them (c * 4 + a * 2 + b)."""
    c_in, c_out = weight.shape[:2]
    rows = []
    for a in (0, 1):
        for b in (0, 1):
            kernel = weight.new_zeros(c_out, c_in, 3, 3)
            for dy, ty in PHASE_TAPS[a].items():
                for dx, tx in PHASE_TAPS[b].items():
                    kernel[:, :, dy + 1, dx + 1] = weight[:, :, ty, tx].t()
            rows.append(kernel)
    return torch.stack(rows, 1).reshape(4 * c_out, c_in, 3, 3)


def union(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.pixel_shuffle(F.conv2d(x, union_weight(weight), padding=1), 2)


def phases(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Four exact 2x2 convolutions, one per output phase, interleaved into the 2x larger map."""
    n, _, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1))
    out = x.new_empty(n, weight.shape[1], 2 * h, 2 * w)
    for a in (0, 1):
        for b in (0, 1):
            dy0, rows = min(PHASE_TAPS[a]), [tap for _, tap in sorted(PHASE_TAPS[a].items())]
            dx0, cols = min(PHASE_TAPS[b]), [tap for _, tap in sorted(PHASE_TAPS[b].items())]
            taps = weight[:, :, rows][:, :, :, cols]  # (C_in, C_out, 2, 2), taps ordered by input offset
            window = padded[:, :, 1 + dy0:1 + dy0 + h + 1, 1 + dx0:1 + dx0 + w + 1]
            out[:, :, a::2, b::2] = F.conv2d(window, taps.transpose(0, 1))
    return out


VARIANTS = {"conv_transpose2d": reference, "union": union, "phases": phases}


def step_ms(fn, x: torch.Tensor, weight: torch.Tensor) -> float:
    start = time.perf_counter()
    fn(x, weight).sum().backward()
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, channels_last, "
          f"forward + backward, median of {args.repeats} (ms)\n")
    print("| layer | max abs diff | " + " | ".join(VARIANTS) + " | speed-up of the better rewrite |")
    print("|---|---:|" + "---:|" * len(VARIANTS) + "---:|")
    for c_in, c_out, side in SHAPES:
        x = torch.randn(args.batch, c_in, side, side).contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        weight = (torch.randn(c_in, c_out, 4, 4) / (c_in * 4) ** 0.5).requires_grad_()
        with torch.no_grad():
            expected = reference(x, weight)
            diff = max((fn(x, weight) - expected).abs().max().item() for fn in VARIANTS.values())
        if diff > 1e-4 * expected.abs().max().item():
            raise SystemExit(f"the rewrites differ from conv_transpose2d by {diff:.2e} at {c_in}->{c_out}")
        times = {name: [] for name in VARIANTS}
        for i in range(args.repeats + 3):  # alternate the variants; the first 3 rounds warm up
            for name, fn in VARIANTS.items():
                t = step_ms(fn, x, weight)
                if i >= 3:
                    times[name].append(t)
        medians = {name: statistics.median(ts) for name, ts in times.items()}
        best = min(medians["union"], medians["phases"])
        print(f"| {c_in}->{c_out} @{side}x{side} | {diff:.1e} | "
              + " | ".join(f"{medians[name]:.1f}" for name in VARIANTS)
              + f" | {medians['conv_transpose2d'] / best:.2f}x |")


if __name__ == "__main__":
    main()
