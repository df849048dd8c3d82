"""Datasets as uint8 tensors in memory, their DatasetSpec, the train/val/test splits and the batch loader.

Each dataset is decoded once into ``x: uint8 (N, C, H, W)`` and ``y: int64 (N,)``; a run never decodes an
image twice. Batches are made by indexing a seeded permutation of tensors that already sit on the
training device (no per-sample Python, PIL or worker processes in the hot loop); pixels become float in
[0, 1] per batch. Normalisation by the dataset's mean/std happens inside the encoder.

Registered datasets: ``mnist``, ``cifar10`` (torchvision's, or the ``cifar10-jpeg`` image-folder copy when
present), ``imagefolder`` (any ``train/<class>/*`` + ``test/<class>/*`` folder) and ``synthetic``.
"""

from __future__ import annotations

import math
import os
import socket
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from latentbench.config import DataConfig
from latentbench.registry import get, register

ENV_DATA_ROOT = "LATENTBENCH_DATA"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class DataError(RuntimeError):
    """The data cannot be found or read; the message names the root searched and how to fix it."""


@dataclass(frozen=True)
class DatasetSpec:
    """What models and plots need to know about a dataset; models never test a dataset's name."""

    name: str
    channels: int
    height: int
    width: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


@dataclass
class ImageData:
    """A labelled set of images: ``x`` uint8 (N, C, H, W), ``y`` int64 (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    def subset(self, index: torch.Tensor) -> "ImageData":
        return ImageData(self.x[index], self.y[index])

    def to(self, device: torch.device | str) -> "ImageData":
        return ImageData(self.x.to(device), self.y.to(device))


@dataclass
class Splits:
    spec: DatasetSpec
    train: ImageData
    val: ImageData
    test: ImageData


# ----------------------------------------------------------------------------------------------- roots
def resolve_root(root: str) -> Path:
    """``root`` from the config, else $LATENTBENCH_DATA, else ./data."""
    return Path(root or os.environ.get(ENV_DATA_ROOT) or "data").expanduser()


def _missing(dataset: str, root: Path, layout: str, online_hint: bool = True) -> DataError:
    hint = " or allow a download with internet access (data.download = true)" if online_hint else ""
    return DataError(
        f"{dataset} not found under data root '{root.resolve()}'. Expected layout: {layout}. "
        f"Point latentbench at the folder that holds it with --data-root DIR or the environment variable "
        f"{ENV_DATA_ROOT}=DIR{hint}."
    )


def _download_guard(seconds: float = 60.0):
    """Bound every socket operation of a torchvision download so an offline machine fails, never hangs."""

    class _Guard:
        def __enter__(self):
            self.old = socket.getdefaulttimeout()
            socket.setdefaulttimeout(seconds)

        def __exit__(self, *exc):
            socket.setdefaulttimeout(self.old)

    return _Guard()


# --------------------------------------------------------------------------------------- image folders
def _list_class_folders(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _decode(path: Path, channels: int) -> tuple[torch.Tensor, int]:
    """Decode one image file to uint8 (C, H, W) with ``channels`` channels; also return its own channels."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    raw = decode_image(read_file(str(path)), mode=ImageReadMode.UNCHANGED)
    own = raw.shape[0]
    if own == channels:
        return raw, own
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    return decode_image(read_file(str(path)), mode=mode), own


def _infer_channels(files: list[Path]) -> int:
    from torchvision.io import ImageReadMode, decode_image, read_file

    for path in files[:50]:
        try:
            raw = decode_image(read_file(str(path)), mode=ImageReadMode.UNCHANGED)
        except Exception:  # noqa: BLE001 - unreadable files are reported by the full pass
            continue
        return 1 if raw.shape[0] in (1, 2) else 3
    return 3


def _scan_split(split_dir: Path, classes: list[str]) -> tuple[list[Path], list[int], list[Path]]:
    files, labels, ignored = [], [], []
    for label, cls in enumerate(classes):
        folder = split_dir / cls
        entries = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        images = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
        ignored += [p for p in entries if p.suffix.lower() not in IMAGE_SUFFIXES]
        if not images:
            raise DataError(
                f"class folder '{folder}' holds no images (extensions {', '.join(sorted(IMAGE_SUFFIXES))}); "
                "remove the folder or add images to it"
            )
        files += images
        labels += [label] * len(images)
    return files, labels, ignored


def _few(paths: list[Path], n: int = 5) -> str:
    shown = ", ".join(str(p) for p in paths[:n])
    return shown + (f" and {len(paths) - n} more" if len(paths) > n else "")


def decode_folder(
    split_dir: Path, classes: list[str], channels: int, size: int, skip_bad: bool = False
) -> ImageData:
    """Decode every image under ``split_dir/<class>/`` into one uint8 tensor, resized to ``size``."""
    files, labels, ignored = _scan_split(split_dir, classes)
    if ignored:
        warnings.warn(f"ignoring {len(ignored)} non-image file(s) under '{split_dir}': {_few(ignored)}", stacklevel=2)
    x = torch.empty((len(files), channels, size, size), dtype=torch.uint8)
    keep = torch.ones(len(files), dtype=torch.bool)
    bad, converted = [], []
    for i, path in enumerate(files):
        try:
            image, own = _decode(path, channels)
        except Exception:  # noqa: BLE001 - truncated/corrupt files of any kind
            bad.append(path)
            keep[i] = False
            continue
        if own != channels:
            converted.append(path)
        if image.shape[1:] != (size, size):
            image = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", antialias=True,
                                  align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
        x[i] = image
    if bad and not skip_bad:
        raise DataError(
            f"{len(bad)} image file(s) under '{split_dir}' are truncated or unreadable: {_few(bad)}. "
            "Fix or delete them, or set data.skip_bad_images = true to skip them."
        )
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s): {_few(bad)}", stacklevel=2)
    if converted:
        warnings.warn(
            f"converted {len(converted)} image(s) under '{split_dir}' to {channels} channel(s): {_few(converted)}",
            stacklevel=2,
        )
    y = torch.tensor(labels, dtype=torch.int64)
    return ImageData(x[keep], y[keep])


def _folder_classes(root: Path) -> list[str]:
    train_classes = _list_class_folders(root / "train")
    test_classes = _list_class_folders(root / "test")
    if not train_classes:
        raise DataError(f"'{root / 'train'}' has no class folders; expected train/<class>/<image files>")
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise DataError(
            f"class folders differ between '{root / 'train'}' and '{root / 'test'}' "
            f"(only in train: {only_train or 'none'}; only in test: {only_test or 'none'}); "
            "both splits must hold the same class folders"
        )
    return train_classes


def load_image_folder(root: Path, channels: int, size: int, skip_bad: bool) -> tuple[ImageData, ImageData, list[str]]:
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise _missing("image folder", root, "<root>/train/<class>/<images> and <root>/test/<class>/<images>",
                       online_hint=False)
    classes = _folder_classes(root)
    train_files = _scan_split(root / "train", classes)[0]
    if channels <= 0:
        channels = _infer_channels(train_files)
    if size <= 0:
        first = _decode(train_files[0], channels)[0]
        size = int(first.shape[1])
    train = decode_folder(root / "train", classes, channels, size, skip_bad)
    test = decode_folder(root / "test", classes, channels, size, skip_bad)
    return train, test, classes


# ------------------------------------------------------------------------------------------- datasets
@register("dataset", "mnist")
def load_mnist(cfg: DataConfig) -> tuple[ImageData, ImageData, tuple[str, ...]]:
    from torchvision.datasets import MNIST

    root = resolve_root(cfg.root)
    raw = root / "MNIST" / "raw"
    needed = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    present = all((raw / f).is_file() or (raw / f"{f}.gz").is_file() for f in needed)
    if not present and not cfg.download:
        raise _missing("MNIST", root, f"<root>/MNIST/raw/{{{','.join(needed)}}}")
    try:
        with _download_guard():
            splits = [MNIST(str(root), train=train, download=not present) for train in (True, False)]
    except (OSError, RuntimeError) as err:
        raise DataError(f"{_missing('MNIST', root, '<root>/MNIST/raw/<the four IDX files>')} ({err})") from None
    train, test = (ImageData(s.data[:, None].contiguous(), s.targets.long()) for s in splits)
    return train, test, tuple(str(i) for i in range(10))


@register("dataset", "cifar10")
def load_cifar10(cfg: DataConfig) -> tuple[ImageData, ImageData, tuple[str, ...]]:
    root = resolve_root(cfg.root)
    jpeg = root / "cifar10-jpeg"
    if (jpeg / "train").is_dir() and (jpeg / "test").is_dir():
        train, test, classes = load_image_folder(jpeg, channels=3, size=32, skip_bad=cfg.skip_bad_images)
        return train, test, tuple(classes)
    from torchvision.datasets import CIFAR10

    present = (root / "cifar-10-batches-py").is_dir()
    layout = "<root>/cifar-10-batches-py/ (torchvision's CIFAR-10) or <root>/cifar10-jpeg/{train,test}/<class>/*.jpg"
    if not present and not cfg.download:
        raise _missing("CIFAR-10", root, layout)
    try:
        with _download_guard():
            splits = [CIFAR10(str(root), train=train, download=not present) for train in (True, False)]
    except (OSError, RuntimeError) as err:
        raise DataError(f"{_missing('CIFAR-10', root, layout)} ({err})") from None
    train, test = (
        ImageData(torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(s.targets)) for s in splits
    )
    return train, test, CIFAR10_CLASSES


@register("dataset", "imagefolder")
def load_imagefolder(cfg: DataConfig) -> tuple[ImageData, ImageData, tuple[str, ...]]:
    if not cfg.root:
        raise DataError("the imagefolder dataset needs data.root (or --data-root) pointing at a folder with "
                        "train/<class>/ and test/<class>/ image folders")
    train, test, classes = load_image_folder(resolve_root(cfg.root), cfg.channels, cfg.image_size, cfg.skip_bad_images)
    return train, test, tuple(classes)


def make_synthetic(n: int, classes: int, channels: int, size: int, seed: int) -> ImageData:
    """Class-structured images: a smooth random prototype per class, shifted, scaled and noised per image."""
    gen = torch.Generator().manual_seed(seed)
    proto_gen = torch.Generator().manual_seed(1234)  # the same classes in the train and test splits
    base = torch.rand((1, channels, 4, 4), generator=proto_gen)
    coarse = 0.6 * base + 0.4 * torch.rand((classes, channels, 4, 4), generator=proto_gen)
    prototypes = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    y = torch.arange(n) % classes
    y = y[torch.randperm(n, generator=gen)]
    shifts = torch.randint(-3, 4, (n, 2), generator=gen)
    x = prototypes[y]
    x = torch.stack([torch.roll(img, shifts=(int(s[0]), int(s[1])), dims=(1, 2)) for img, s in zip(x, shifts)])
    x = x * (0.7 + 0.6 * torch.rand((n, 1, 1, 1), generator=gen))
    x = x + 0.15 * torch.randn(x.shape, generator=gen)
    return ImageData((x.clamp(0, 1) * 255).round().to(torch.uint8), y.long())


# Test images come from a seed far from the train seed, so the splits never share images.
_SYNTHETIC_TEST_SEED_OFFSET = 7919


@register("dataset", "synthetic")
def load_synthetic(cfg: DataConfig) -> tuple[ImageData, ImageData, tuple[str, ...]]:
    channels, size, k = cfg.channels or 1, cfg.image_size or 28, cfg.synthetic_classes
    seed = cfg.split_seed * 1000 + 17
    train = make_synthetic(cfg.synthetic_train, k, channels, size, seed)
    test = make_synthetic(cfg.synthetic_test, k, channels, size, seed + _SYNTHETIC_TEST_SEED_OFFSET)
    return train, test, tuple(f"class{i}" for i in range(k))


# ------------------------------------------------------------------------------------------- splits
def split_train_val(data: ImageData, val_fraction: float, seed: int) -> tuple[ImageData, ImageData]:
    """Deterministic split of the training set; the test set is never used for selection."""
    n_val = max(1, int(round(len(data) * val_fraction)))
    if n_val >= len(data):
        raise DataError(f"data.val_fraction={val_fraction} leaves no training images out of {len(data)}")
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.subset(perm[n_val:].sort().values), data.subset(perm[:n_val].sort().values)


def check_labels(data: ImageData, num_classes: int, where: str) -> None:
    if len(data) and (int(data.y.min()) < 0 or int(data.y.max()) >= num_classes):
        raise DataError(
            f"{where} labels must lie in [0, {num_classes - 1}] but range over "
            f"[{int(data.y.min())}, {int(data.y.max())}]; check the dataset's class list"
        )


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units (computed in chunks: no big float copy)."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for chunk in x.split(4096):
        c = chunk.double() / 255.0
        total += c.sum(dim=(0, 2, 3))
        total_sq += (c * c).sum(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(1e-12).sqrt()
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def load_splits(cfg: DataConfig) -> Splits:
    """Load ``cfg.name`` and split it into train / val / test with its :class:`DatasetSpec`."""
    train_full, test, class_names = get("dataset", cfg.name)(cfg)
    for part, where in ((train_full, "training"), (test, "test")):
        check_labels(part, len(class_names), f"{cfg.name} {where}")
    train, val = split_train_val(train_full, cfg.val_fraction, cfg.split_seed)
    if cfg.train_subset and cfg.train_subset < len(train):
        train = train.subset(torch.arange(cfg.train_subset))
    mean, std = channel_stats(train.x)
    c, h, w = train.x.shape[1:]
    spec = DatasetSpec(cfg.name, int(c), int(h), int(w), tuple(class_names), mean, std)
    return Splits(spec, train, val, test)


# ------------------------------------------------------------------------------------------- batches
class BatchLoader:
    """Batches of ``(x, y)`` from device-resident uint8 tensors, as float pixels in [0, 1].

    The order of epoch ``e`` is a permutation seeded by ``(seed, e)``, so a resumed run sees the same
    batches; ``start_batch`` skips batches already done in that epoch. Under torchrun each rank takes
    its contiguous share of every global batch (``batch_size`` is global).
    """

    def __init__(self, data: ImageData, batch_size: int, shuffle: bool, drop_last: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1, channels_last: bool = False):
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} must be divisible by the number of ranks {world_size}")
        self.data, self.batch_size, self.shuffle, self.drop_last = data, batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size, self.channels_last = seed, rank, world_size, channels_last
        self.epoch, self.start_batch = 0, 0

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _order(self) -> torch.Tensor:
        n = len(self.data)
        if not self.shuffle:
            return torch.arange(n)
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(n, generator=gen)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order().to(self.data.x.device)
        per_rank = self.batch_size // self.world_size
        for b in range(self.start_batch, len(self)):
            index = order[b * self.batch_size:(b + 1) * self.batch_size]
            if self.world_size > 1:
                index = index[self.rank * per_rank:(self.rank + 1) * per_rank]
            x = self.data.x[index]
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x.float().div_(255.0), self.data.y[index]
