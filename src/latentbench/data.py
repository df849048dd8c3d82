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
from typing import Any

import torch
import torch.nn.functional as F

from latentbench.config import DataConfig
from latentbench.registry import get, register

ENV_DATA_ROOT = "LATENTBENCH_DATA"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class DataError(RuntimeError):
    """The data cannot be found or read; the message names the root searched and how to fix it."""


class DataWarning(UserWarning):
    """A data problem worked around (files ignored, skipped, converted or resized); the CLI prints it plainly."""


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

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; saved in every checkpoint and ``run_info.json`` (the encoders' input statistics
        live in non-persistent buffers, so a trained encoder is rebuilt from these, without its dataset)."""
        return {"name": self.name, "channels": self.channels, "height": self.height, "width": self.width,
                "class_names": list(self.class_names), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "DatasetSpec":
        return cls(str(values["name"]), int(values["channels"]), int(values["height"]), int(values["width"]),
                   tuple(str(c) for c in values["class_names"]), tuple(float(m) for m in values["mean"]),
                   tuple(float(s) for s in values["std"]))


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


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _own_channels(data: torch.Tensor, raw: torch.Tensor) -> int:
    """The file's own channels; a palette PNG counts as colour (torchvision shows it as one index plane)."""
    if raw.shape[-3] == 1 and data.numel() > 25 and bytes(data[:8].tolist()) == _PNG_SIGNATURE and int(data[25]) == 3:
        return 3
    return int(raw.shape[-3])


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    """16-bit images (PNG) scaled to 8 bits; uint8 unchanged."""
    if image.dtype == torch.uint8:
        return image
    return (image.to(torch.int64) * 255 + 32767).div(65535, rounding_mode="floor").to(torch.uint8)


def _decode_pil(path: Path, channels: int) -> tuple[torch.Tensor, int]:
    """PIL for the formats torchvision cannot decode (BMP, TIFF, PPM/PGM, ...)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        own = 3 if image.mode in ("P", "PA") else len(image.getbands())
        if image.mode.startswith("I") or image.mode == "F":  # 16/32-bit grey: 16-bit range to 8 bits
            scale = 257.0 if image.mode.startswith("I") else 1.0
            values = np.asarray(image, dtype=np.float64) / scale
            image = Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8))
        array = np.array(image.convert("L" if channels == 1 else "RGB"))
    x = torch.from_numpy(array)
    return (x[None] if x.dim() == 2 else x.permute(2, 0, 1)).contiguous(), own


def _decode(path: Path, channels: int) -> tuple[torch.Tensor, int]:
    """Decode one image file to uint8 (channels, H, W); also return the file's own channel count.

    torchvision decodes JPEG/PNG/WebP/GIF; anything it cannot read goes through PIL (which also fails
    on truncated files). Grey, grey+alpha, palette, RGBA and CMYK images are converted to ``channels``;
    16-bit images are scaled to 8 bits; an animated GIF gives its first frame.
    """
    from torchvision.io import ImageReadMode, decode_image, read_file

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders (for TorchCodec), once per call
        warnings.simplefilter("ignore", DeprecationWarning)
        data = read_file(str(path))
        try:
            raw = decode_image(data, mode=ImageReadMode.UNCHANGED)
        except RuntimeError:
            return _decode_pil(path, channels)
        own = _own_channels(data, raw)
        if raw.shape[-3] != channels:  # also a palette PNG, whose raw plane holds indices
            raw = decode_image(data, mode=ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB)
    if raw.dim() == 4:
        raw = raw[0]
    return _to_uint8(raw), own


def _infer_channels(files: list[Path]) -> int:
    """1 when the first readable images are grey (with or without alpha), else 3."""
    for path in files[:50]:
        try:
            own = _decode(path, 3)[1]
        except Exception:  # noqa: BLE001 - unreadable files are reported by the full pass
            continue
        return 1 if own in (1, 2) else 3
    return 3


def _empty_class(folder: Path) -> str:
    return (f"class folder '{folder}' holds no images (extensions {', '.join(sorted(IMAGE_SUFFIXES))}); "
            "remove the folder or add images to it")


def _scan_split(split_dir: Path, classes: list[str], errors: list[str] | None = None
                ) -> tuple[list[Path], list[int], list[Path]]:
    """Image files, their labels and the non-image files under ``split_dir/<class>/``.

    An empty class folder raises :class:`DataError`, or is appended to ``errors`` when a list is given.
    """
    files, labels, ignored = [], [], []
    for label, cls in enumerate(classes):
        folder = split_dir / cls
        entries = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        images = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
        ignored += [p for p in entries if p.suffix.lower() not in IMAGE_SUFFIXES]
        if not images:
            if errors is None:
                raise DataError(_empty_class(folder))
            errors.append(_empty_class(folder))
        files += images
        labels += [label] * len(images)
    return files, labels, ignored


def _few(paths: list[Path], n: int = 5) -> str:
    shown = ", ".join(str(p) for p in paths[:n])
    return shown + (f" and {len(paths) - n} more" if len(paths) > n else "")


@dataclass
class _Decoded:
    x: torch.Tensor  # uint8 (N, C, size, size); rows of bad files are left empty
    keep: torch.Tensor  # bool (N,): False for unreadable files
    bad: list[Path]
    converted: list[Path]
    resized: list[Path]


def _decode_files(files: list[Path], channels: int, size: int) -> _Decoded:
    out = _Decoded(torch.empty((len(files), channels, size, size), dtype=torch.uint8),
                   torch.ones(len(files), dtype=torch.bool), [], [], [])
    for i, path in enumerate(files):
        try:
            image, own = _decode(path, channels)
        except Exception:  # noqa: BLE001 - truncated/corrupt files of any kind
            out.bad.append(path)
            out.keep[i] = False
            continue
        if own != channels:
            out.converted.append(path)
        if image.shape[1:] != (size, size):
            out.resized.append(path)
            image = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", antialias=True,
                                  align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
        out.x[i] = image
    return out


def _bad_images(split_dir: Path, bad: list[Path]) -> str:
    return (f"{len(bad)} image file(s) under '{split_dir}' are truncated or unreadable: {_few(bad)}. "
            "Fix or delete them, or set data.skip_bad_images = true to skip them.")


def _notes(split_dir: Path, ignored: list[Path], done: _Decoded, channels: int, size: int) -> list[str]:
    """Warnings for what loading works around: non-image files, channel conversion, resizing."""
    notes = []
    if ignored:
        notes.append(f"ignoring {len(ignored)} non-image file(s) under '{split_dir}': {_few(ignored)}")
    if done.converted:
        notes.append(f"converted {len(done.converted)} image(s) under '{split_dir}' to {channels} channel(s): "
                     f"{_few(done.converted)}")
    if done.resized:
        notes.append(f"resized {len(done.resized)} image(s) under '{split_dir}' to {size}x{size} pixels: "
                     f"{_few(done.resized)}")
    return notes


def decode_folder(
    split_dir: Path, classes: list[str], channels: int, size: int, skip_bad: bool = False
) -> ImageData:
    """Decode every image under ``split_dir/<class>/`` into one uint8 tensor, resized to ``size``."""
    files, labels, ignored = _scan_split(split_dir, classes)
    done = _decode_files(files, channels, size)
    if done.bad and not skip_bad:
        raise DataError(_bad_images(split_dir, done.bad))
    if done.bad:
        warnings.warn(f"skipped {len(done.bad)} unreadable image(s): {_few(done.bad)}", DataWarning, stacklevel=2)
    for note in _notes(split_dir, ignored, done, channels, size):
        warnings.warn(note, DataWarning, stacklevel=2)
    y = torch.tensor(labels, dtype=torch.int64)
    return ImageData(done.x[done.keep], y[done.keep])


def _folder_classes(root: Path) -> list[str]:
    train_classes = _list_class_folders(root / "train")
    test_classes = _list_class_folders(root / "test")
    if not train_classes:
        raise DataError(f"'{root / 'train'}' has no class folders; expected train/<class>/<image files>")
    if train_classes != test_classes:
        raise DataError(_class_mismatch(root, train_classes, test_classes))
    return train_classes


def _class_mismatch(root: Path, train_classes: list[str], test_classes: list[str]) -> str:
    only_train = sorted(set(train_classes) - set(test_classes))
    only_test = sorted(set(test_classes) - set(train_classes))
    return (f"class folders differ between '{root / 'train'}' and '{root / 'test'}' "
            f"(only in train: {only_train or 'none'}; only in test: {only_test or 'none'}); "
            "both splits must hold the same class folders")


_FOLDER_LAYOUT = "<root>/train/<class>/<images> and <root>/test/<class>/<images>"


def check_image_folder(root: Path, channels: int = 0, size: int = 0) -> tuple[list[str], list[str]]:
    """Every problem of an image-folder dataset, without stopping at the first: ``(errors, warnings)``.

    Errors are what would stop training (missing split, class folders that differ or are empty,
    unreadable images); warnings are what loading works around. Used by ``latentbench check-data``.
    """
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        return [str(_missing("image folder", root, _FOLDER_LAYOUT, online_hint=False))], []
    errors: list[str] = []
    notes: list[str] = []
    splits = {name: _list_class_folders(root / name) for name in ("train", "test")}
    if not splits["train"]:
        errors.append(f"'{root / 'train'}' has no class folders; expected train/<class>/<image files>")
    if splits["train"] != splits["test"]:
        errors.append(_class_mismatch(root, splits["train"], splits["test"]))
    scanned = {name: _scan_split(root / name, classes, errors) for name, classes in splits.items()}
    channels = channels or _infer_channels(scanned["train"][0])
    size = size or _first_size(scanned["train"][0], channels)
    for name, (files, _, ignored) in scanned.items():
        done = _decode_files(files, channels, size)
        if done.bad:
            errors.append(_bad_images(root / name, done.bad))
        notes += _notes(root / name, ignored, done, channels, size)
    return errors, notes


def _first_size(files: list[Path], channels: int) -> int:
    """Side of the first readable image (the size every image is resized to when data.image_size = 0)."""
    for path in files:
        try:
            return int(_decode(path, channels)[0].shape[1])
        except Exception:  # noqa: BLE001 - reported by the full pass
            continue
    return 1


def load_image_folder(root: Path, channels: int, size: int, skip_bad: bool) -> tuple[ImageData, ImageData, list[str]]:
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise _missing("image folder", root, _FOLDER_LAYOUT, online_hint=False)
    classes = _folder_classes(root)
    train_files = _scan_split(root / "train", classes)[0]
    if channels <= 0:
        channels = _infer_channels(train_files)
    if size <= 0:
        size = _first_size(train_files, channels)
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


def image_folder_source(cfg: DataConfig) -> tuple[Path, int, int] | None:
    """``(root, channels, size)`` when ``cfg`` reads an image folder (imagefolder, the CIFAR-10 JPEG copy)."""
    if cfg.name == "imagefolder" and cfg.root:
        return resolve_root(cfg.root), cfg.channels, cfg.image_size
    jpeg = resolve_root(cfg.root) / "cifar10-jpeg"
    if cfg.name == "cifar10" and (jpeg / "train").is_dir() and (jpeg / "test").is_dir():
        return jpeg, 3, 32
    return None


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
    std = (total_sq / count - mean**2).clamp_min(0).sqrt()
    std = torch.where(std < 1e-3, torch.ones_like(std), std)  # a constant channel: no scaling (not x / 0 = inf)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def load_splits(cfg: DataConfig) -> Splits:
    """Load ``cfg.name`` and split it into train / val / test with its :class:`DatasetSpec`."""
    train_full, test, class_names = get("dataset", cfg.name)(cfg)
    for part, where in ((train_full, "training"), (test, "test")):
        check_labels(part, len(class_names), f"{cfg.name} {where}")
    train, val = split_train_val(train_full, cfg.val_fraction, cfg.split_seed)
    if cfg.train_subset and cfg.train_subset < len(train):
        # a seeded random subset, never the first N: image folders are sorted by class (first N = one class)
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.split_seed + 1))
        train = train.subset(pick[:cfg.train_subset].sort().values)
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
        if world_size > 1 and not drop_last:
            raise ValueError("a batch loader sharded over ranks needs drop_last=True (equal shards on every rank)")
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
            x = self.data.x.index_select(0, index)  # copies whole rows: 9x faster than x[index] on the CPU
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x.float().div_(255.0), self.data.y.index_select(0, index)
