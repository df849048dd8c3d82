"""Bad data, each with a clear message: missing dataset files, truncated or unreadable images, non-image files,
empty class folders, mixed grey/RGB/RGBA/palette images, other formats and bit depths, class folders that
differ between splits, labels out of range; and ``latentbench check-data`` reporting them all without
training. Image folders are made with PIL from tiny 8x8 images."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentbench import cli, registry
from latentbench.config import DataConfig
from latentbench.data import (DataError, DataWarning, ImageData, check_image_folder, check_labels, load_image_folder,
                              load_splits)

GREEN = (30, 200, 60)


def save(path: Path, mode: str = "RGB", color=GREEN, size: int = 8, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (size, size), color)
    if mode == "P":
        image = image.quantize(4)
    elif mode == "I;16":
        image = Image.fromarray(np.full((size, size), 40000, dtype=np.uint16))
    elif mode != "RGB":
        image = image.convert(mode)
    image.save(path, format=fmt)
    return path


def make_folder(root: Path, classes=("cat", "dog"), per_class: int = 6, mode: str = "RGB") -> Path:
    for split in ("train", "test"):
        for cls in classes:
            for i in range(per_class if split == "train" else 2):
                save(root / split / cls / f"{i}.png", mode, color=(20 * i, 100 if cls == "cat" else 200, 50))
    return root


def check_data(capsys, root: Path, *extra: str) -> tuple[int, str]:
    code = cli.main(["check-data", "--dataset", "imagefolder", "--data-root", str(root), *extra])
    captured = capsys.readouterr()
    return code, " ".join((captured.out + captured.err).split())


def train_cli(capsys, root: Path, tmp_path: Path, *extra: str) -> tuple[int, str]:
    args = ["train", "--data-root", str(root), "--out", str(tmp_path / "runs"), "--set", 'data.name="imagefolder"',
            "--set", "train.batch_size=4", "--set", "train.epochs=1", "--set", "train.threads=1"]
    for item in extra:
        args += ["--set", item]
    code = cli.main(args)
    return code, " ".join(capsys.readouterr().err.split())


def assert_user_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


# ------------------------------------------------------------------------------------- missing data
def test_missing_mnist_names_the_root_and_the_layout(tmp_path, capsys):
    code = cli.main(["check-data", "--dataset", "mnist", "--data-root", str(tmp_path), "--set", "data.download=false"])
    err = " ".join(capsys.readouterr().err.split())
    assert_user_error(code, err, f"MNIST not found under data root '{tmp_path}'",
                      "Expected layout: <root>/MNIST/raw/{train-images-idx3-ubyte,", "--data-root DIR",
                      "LATENTBENCH_DATA=DIR")


def test_missing_cifar10_names_both_layouts(tmp_path, capsys):
    code = cli.main(["check-data", "--dataset", "cifar10", "--data-root", str(tmp_path), "--set", "data.download=false"])
    err = " ".join(capsys.readouterr().err.split())
    assert_user_error(code, err, f"CIFAR-10 not found under data root '{tmp_path}'", "<root>/cifar-10-batches-py/",
                      "<root>/cifar10-jpeg/{train,test}/<class>/*.jpg")


def test_missing_image_folder_splits(tmp_path, capsys):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    code, err = train_cli(capsys, tmp_path, tmp_path)
    assert_user_error(code, err, f"image folder not found under data root '{tmp_path}'",
                      "Expected layout: <root>/train/<class>/<images> and <root>/test/<class>/<images>")


# ----------------------------------------------------------------------------------- broken folders
def test_truncated_image_stops_training_with_its_name(tmp_path, capsys):
    root = make_folder(tmp_path / "data")
    bad = root / "train" / "dog" / "3.png"
    bad.write_bytes(bad.read_bytes()[:40])
    code, err = train_cli(capsys, root, tmp_path)
    assert_user_error(code, err, f"1 image file(s) under '{root / 'train'}' are truncated or unreadable: {bad}.",
                      "set data.skip_bad_images = true to skip them")
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.pt"))


def test_skip_bad_images_skips_with_a_warning(tmp_path):
    root = make_folder(tmp_path)
    bad = root / "train" / "cat" / "0.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.warns(DataWarning, match=f"skipped 1 unreadable image\\(s\\): {bad}"):
        train, test, classes = load_image_folder(root, 0, 0, skip_bad=True)
    assert len(train) == 11 and train.y.tolist().count(0) == 5


def test_non_image_file_is_ignored_with_a_warning_naming_it(tmp_path, capsys):
    root = make_folder(tmp_path / "data")
    (root / "train" / "cat" / "notes.txt").write_text("labels checked by hand")
    code, err = train_cli(capsys, root, tmp_path)
    assert code == 0, err
    assert (f"latentbench: warning: ignoring 1 non-image file(s) under '{root / 'train'}': "
            f"{root / 'train' / 'cat' / 'notes.txt'}") in err
    assert "UserWarning" not in err  # a plain line, not Python's file:line warning format


def test_empty_class_folder(tmp_path, capsys):
    root = make_folder(tmp_path / "data")
    (root / "train" / "bird").mkdir()
    (root / "test" / "bird").mkdir()
    (root / "test" / "bird" / "0.png").write_bytes((root / "test" / "cat" / "0.png").read_bytes())
    code, err = train_cli(capsys, root, tmp_path)
    assert_user_error(code, err, f"class folder '{root / 'train' / 'bird'}' holds no images (extensions .bmp, .gif,",
                      "remove the folder or add images to it")


def test_class_folders_differ_between_train_and_test(tmp_path, capsys):
    root = make_folder(tmp_path / "data")
    save(root / "test" / "bird" / "0.png")
    code, err = train_cli(capsys, root, tmp_path)
    assert_user_error(code, err, f"class folders differ between '{root / 'train'}' and '{root / 'test'}' "
                      "(only in train: none; only in test: ['bird'])")


# ------------------------------------------------------------------------------- channels, formats
def test_mixed_grey_rgb_rgba_palette_images_are_converted_with_a_warning(tmp_path, capsys):
    root = make_folder(tmp_path / "data")
    odd = {mode: save(root / "train" / "cat" / f"odd_{mode}.png", mode) for mode in ("L", "RGBA", "LA", "P")}
    code, err = train_cli(capsys, root, tmp_path, "data.channels=3")
    assert code == 0, err
    assert f"latentbench: warning: converted 3 image(s) under '{root / 'train'}' to 3 channel(s):" in err
    for mode in ("L", "RGBA", "LA"):
        assert str(odd[mode]) in err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        train, _, _ = load_image_folder(root, 3, 8, skip_bad=False)
    files = sorted((root / "train" / "cat").iterdir())
    rows = {f.name: train.x[i] for i, f in enumerate(files)}
    assert torch.equal(rows["odd_RGBA.png"][:, 0, 0], torch.tensor(GREEN, dtype=torch.uint8))  # alpha dropped
    grey = rows["odd_L.png"]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])  # grey spread over three channels
    assert (rows["odd_P.png"][:, 0, 0].int() - torch.tensor(GREEN)).abs().max() <= 8  # palette colours, not indices


def test_channels_are_inferred_from_grey_images(tmp_path):
    root = make_folder(tmp_path, mode="L")
    save(root / "train" / "dog" / "rgb.png")
    with pytest.warns(DataWarning, match=r"converted 1 image\(s\) .* to 1 channel\(s\): .*rgb\.png"):
        train, test, _ = load_image_folder(root, 0, 0, skip_bad=False)
    assert train.x.shape[1:] == (1, 8, 8) and test.x.shape[1:] == (1, 8, 8)


def test_palette_images_count_as_colour(tmp_path):
    root = make_folder(tmp_path, mode="P")
    train, _, _ = load_image_folder(root, 0, 0, skip_bad=False)
    assert train.x.shape[1] == 3


@pytest.mark.parametrize("suffix,fmt", [(".bmp", "BMP"), (".tif", "TIFF"), (".ppm", "PPM"), (".webp", "WEBP"),
                                        (".jpg", "JPEG"), (".gif", "GIF")])
def test_every_listed_image_format_decodes(tmp_path, suffix, fmt):
    root = make_folder(tmp_path)
    extra = save(root / "train" / "cat" / f"extra{suffix}", fmt=fmt)
    train, _, _ = load_image_folder(root, 3, 8, skip_bad=False)
    index = sorted((root / "train" / "cat").iterdir()).index(extra)
    tolerance = 0 if fmt in ("BMP", "TIFF", "PPM") else 40  # lossy or palette formats
    assert (train.x[index][:, 4, 4].int() - torch.tensor(GREEN)).abs().max() <= tolerance


def test_sixteen_bit_images_are_scaled_to_eight_bits(tmp_path):
    root = make_folder(tmp_path, mode="L")
    save(root / "train" / "cat" / "deep.png", "I;16")
    train, _, _ = load_image_folder(root, 1, 8, skip_bad=False)
    index = sorted((root / "train" / "cat").iterdir()).index(root / "train" / "cat" / "deep.png")
    assert int(train.x[index, 0, 0, 0]) == round(40000 * 255 / 65535)  # not 40000 mod 256


def test_images_of_another_size_are_resized_with_a_warning(tmp_path):
    root = make_folder(tmp_path)
    big = save(root / "train" / "dog" / "big.png", size=12)
    with pytest.warns(DataWarning, match=f"resized 1 image\\(s\\) under '.*train' to 8x8 pixels: {big}"):
        train, _, _ = load_image_folder(root, 0, 0, skip_bad=False)
    assert train.x.shape[1:] == (3, 8, 8)


# ----------------------------------------------------------------------------------------- labels
def test_labels_out_of_range():
    data = ImageData(torch.zeros((4, 1, 8, 8), dtype=torch.uint8), torch.tensor([0, 1, 2, 10]))
    with pytest.raises(DataError, match=r"mnist training labels must lie in \[0, 9\] but range over \[0, 10\]"):
        check_labels(data, 10, "mnist training")
    with pytest.raises(DataError, match=r"range over \[-1, 1\]"):
        check_labels(ImageData(data.x[:2], torch.tensor([-1, 1])), 10, "x")
    check_labels(ImageData(data.x[:3], torch.tensor([0, 1, 9])), 10, "fine")


def test_dataset_with_labels_out_of_range_fails_check_data(monkeypatch, capsys):
    def broken(cfg: DataConfig):
        x = torch.zeros((20, 1, 8, 8), dtype=torch.uint8)
        return ImageData(x, torch.arange(20) % 3), ImageData(x[:4], torch.tensor([0, 1, 2, 3])), ("a", "b", "c")

    monkeypatch.setitem(registry._REGISTRIES["dataset"], "broken", broken)
    code = cli.main(["check-data", "--dataset", "broken"])
    err = " ".join(capsys.readouterr().err.split())
    assert_user_error(code, err, "broken test labels must lie in [0, 2] but range over [0, 3]")


# ------------------------------------------------------------------------------------- check-data
def test_check_data_on_a_clean_folder(tmp_path, capsys):
    root = make_folder(tmp_path)
    code, out = check_data(capsys, root)
    assert code == 0, out
    assert "dataset imagefolder: images 3x8x8, 2 classes (cat, dog)" in out and "problems: none" in out


def test_check_data_reports_every_problem_without_training(tmp_path, capsys):
    root = make_folder(tmp_path / "data")
    truncated = root / "train" / "cat" / "1.png"
    truncated.write_bytes(truncated.read_bytes()[:30])
    (root / "train" / "dog" / "readme.md").write_text("x")
    (root / "train" / "owl").mkdir()
    save(root / "test" / "dog" / "grey.png", "L")
    code, out = check_data(capsys, root)
    assert code == 2
    assert f"error: 1 image file(s) under '{root / 'train'}' are truncated or unreadable: {truncated}." in out
    assert f"error: class folder '{root / 'train' / 'owl'}' holds no images" in out
    assert "error: class folders differ" in out and "only in train: ['owl']" in out
    assert f"warning: ignoring 1 non-image file(s) under '{root / 'train'}'" in out
    assert f"warning: converted 1 image(s) under '{root / 'test'}' to 3 channel(s): {root / 'test' / 'dog' / 'grey.png'}" in out
    assert "problems: 3 error(s) and 2 warning(s); training would stop at the first error" in out
    assert not (tmp_path / "runs").exists()


def test_check_image_folder_returns_errors_and_warnings(tmp_path):
    root = make_folder(tmp_path)
    (root / "test" / "dog" / "x.csv").write_text("1,2")
    errors, notes = check_image_folder(root)
    assert errors == [] and len(notes) == 1 and "x.csv" in notes[0]
    errors, _ = check_image_folder(tmp_path / "nowhere")
    assert len(errors) == 1 and "image folder not found" in errors[0]


def test_check_data_on_synthetic_data(capsys):
    assert cli.main(["check-data", "--dataset", "synthetic", "--set", "data.synthetic_train=100",
                     "--set", "data.synthetic_test=20"]) == 0
    out = capsys.readouterr().out
    assert "dataset synthetic: images 1x28x28, 10 classes" in out and "problems: none" in out


def test_load_splits_of_an_image_folder(tmp_path):
    root = make_folder(tmp_path, per_class=10)
    splits = load_splits(DataConfig(name="imagefolder", root=str(root), val_fraction=0.2))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (16, 4, 4)
    assert splits.spec.class_names == ("cat", "dog") and splits.spec.shape == (3, 8, 8)


def test_a_constant_channel_does_not_divide_by_zero():
    """Solid-colour images have a channel with std 0; normalising by it gave inf inputs and a NaN loss."""
    from latentbench.data import channel_stats

    x = torch.zeros((6, 3, 8, 8), dtype=torch.uint8)
    x[:, 0] = torch.arange(6).view(6, 1, 1) * 40  # varies
    x[:, 2] = 50  # constant
    mean, std = channel_stats(x)
    assert std[1] == std[2] == 1.0 and 0 < std[0] < 1
    assert mean[2] == round(50 / 255, 4)


# ---------------------------------------------------------------------------------------- real data
def _real_root() -> Path:
    from conftest import real_data_root

    return real_data_root()


@pytest.mark.data
def test_check_data_on_real_mnist(capsys):
    from conftest import has_mnist

    if not has_mnist():
        pytest.skip("MNIST not under LATENTBENCH_DATA")
    assert cli.main(["check-data", "--dataset", "mnist", "--data-root", str(_real_root())]) == 0
    out = capsys.readouterr().out
    assert "train:  54000 images" in out and "test :  10000 images" in out and "problems: none" in out


@pytest.mark.data
@pytest.mark.slow
def test_check_data_on_the_cifar10_jpeg_copy(capsys):
    from conftest import has_cifar

    if not has_cifar():
        pytest.skip("cifar10-jpeg not under LATENTBENCH_DATA")
    assert cli.main(["check-data", "--dataset", "cifar10", "--data-root", str(_real_root())]) == 0
    out = capsys.readouterr().out
    assert "dataset cifar10: images 3x32x32, 10 classes" in out and "problems: none" in out
