"""Tests for the trainer's data loaders (``propos_losses.train.data``).

Every format is written synthetically into ``tmp_path`` and read back; bad files
must raise :class:`DatasetError` naming the file.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from propos_losses.train.data import DATASET_NAMES, DatasetError, ImageDataset, load_dataset, read_idx

REAL_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


# ---------------------------------------------------------------- writers


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False) -> Path:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    header = bytes([0, 0, codes[dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    content = header + array.astype(dtype).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(content))
    else:
        path.write_bytes(content)
    return path


def write_mnist_split(folder: Path, split: str, images: np.ndarray, labels: np.ndarray, *, gz: bool) -> None:
    write_idx(folder / f"{split}-images-idx3-ubyte", images, gz=gz)
    write_idx(folder / f"{split}-labels-idx1-ubyte", labels, gz=gz)


def random_mnist(rng: np.random.Generator, count: int, side: int = 6) -> tuple[np.ndarray, np.ndarray]:
    images = rng.integers(0, 256, size=(count, side, side), dtype=np.uint8)
    # Classes 0..k-1 all present (the loader refuses label values that never occur).
    labels = rng.permutation(np.arange(count) % min(count, 10)).astype(np.uint8)
    return images, labels


def write_cifar_batch(path: Path, images: np.ndarray, labels: dict[bytes, list[int]]) -> None:
    content = {b"batch_label": b"synthetic", b"data": images.reshape(len(images), -1), **labels}
    # Protocol 2, as the Python 2 files distributed by the CIFAR page.
    path.write_bytes(pickle.dumps(content, protocol=2))


def random_cifar(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.integers(0, 256, size=(count, 3, 32, 32), dtype=np.uint8)


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(array).save(path)


# ------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_mnist_idx_round_trips_exactly_train_then_test(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(0)
    train_images, train_labels = random_mnist(rng, 7)
    test_images, test_labels = random_mnist(rng, 3)
    write_mnist_split(tmp_path, "t10k", test_images, test_labels, gz=gz)
    write_mnist_split(tmp_path, "train", train_images, train_labels, gz=gz)

    dataset = load_dataset("mnist", tmp_path)

    assert dataset.images.dtype == torch.uint8 and dataset.labels is not None
    assert dataset.labels.dtype == torch.int64
    np.testing.assert_array_equal(dataset.images[:, 0].numpy(), np.concatenate([train_images, test_images]))
    np.testing.assert_array_equal(dataset.labels.numpy(), np.concatenate([train_labels, test_labels]))
    assert dataset.num_classes == int(max(train_labels.max(), test_labels.max())) + 1


def test_mnist_mixed_gzip_and_plain_splits_and_duplicate_copies_load_once(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    train_images, train_labels = random_mnist(rng, 5)
    test_images, test_labels = random_mnist(rng, 4)
    write_mnist_split(tmp_path, "train", train_images, train_labels, gz=True)
    write_mnist_split(tmp_path, "train", train_images, train_labels, gz=False)  # extracted copy beside the archive
    write_mnist_split(tmp_path, "t10k", test_images, test_labels, gz=False)

    dataset = load_dataset("mnist", tmp_path)

    assert len(dataset) == len(train_images) + len(test_images)
    np.testing.assert_array_equal(dataset.images[:, 0].numpy(), np.concatenate([train_images, test_images]))


def test_mnist_files_under_torchvision_raw_folder_are_found(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images, labels = random_mnist(np.random.default_rng(2), 4)
    write_mnist_split(raw, "train", images, labels, gz=True)

    dataset = load_dataset("mnist", tmp_path)

    np.testing.assert_array_equal(dataset.images[:, 0].numpy(), images)


@settings(max_examples=10, deadline=None)
@given(
    shape=st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=4),
    dtype=st.sampled_from([np.uint8, np.dtype(">i4"), np.dtype(">f4")]),
    gz=st.booleans(),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_read_idx_round_trips_any_shape_and_dtype(
    tmp_path_factory: pytest.TempPathFactory, shape: list[int], dtype: np.dtype, gz: bool, seed: int
) -> None:
    array = (np.random.default_rng(seed).random(shape) * 100).astype(dtype)
    path = write_idx(tmp_path_factory.mktemp("idx") / "x-idx", array, gz=gz)

    loaded = read_idx(path)

    assert loaded.shape == array.shape and loaded.dtype.isnative
    np.testing.assert_array_equal(loaded, array)


def test_idx_wrong_magic_number_raises_naming_the_file(tmp_path: Path) -> None:
    images, labels = random_mnist(np.random.default_rng(3), 2)
    write_mnist_split(tmp_path, "train", images, labels, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    content = bytearray(path.read_bytes())
    content[2] = 0x42  # not an IDX dtype code
    path.write_bytes(bytes(content))

    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte.*magic"):
        load_dataset("mnist", tmp_path)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_idx_truncated_file_raises_naming_the_file(tmp_path: Path, gz: bool) -> None:
    images, labels = random_mnist(np.random.default_rng(4), 5)
    write_mnist_split(tmp_path, "train", images, labels, gz=gz)
    path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    content = path.read_bytes()
    path.write_bytes(content[: len(content) - 20])

    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte.*truncated"):
        load_dataset("mnist", tmp_path)


def test_idx_payload_longer_than_header_raises(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x-labels-idx1-ubyte", np.arange(4, dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"\x00")

    with pytest.raises(DatasetError, match=r"x-labels-idx1-ubyte.*size mismatch"):
        read_idx(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (bytes([0, 0, 8]), r"truncated IDX header \(3 bytes"),
        (bytes([0, 0, 8, 3, 0, 0, 0, 2]), r"truncated IDX header \(declares 3 dimensions"),
        (bytes([0, 0, 8, 0]), r"IDX header declares 0 dimensions"),
    ],
    ids=["short", "missing_dims", "zero_dims"],
)
def test_idx_broken_header_raises_naming_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "broken-images-idx3-ubyte"
    path.write_bytes(content)

    with pytest.raises(DatasetError, match=f"broken-images-idx3-ubyte: {message}"):
        read_idx(path)


def test_idx_images_and_labels_count_mismatch_raises_naming_both_files(tmp_path: Path) -> None:
    images, labels = random_mnist(np.random.default_rng(5), 5)
    write_mnist_split(tmp_path, "train", images, labels[:4], gz=False)

    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte has 5 images.*train-labels-idx1-ubyte has 4"):
        load_dataset("mnist", tmp_path)


def test_idx_missing_labels_file_raises_naming_it(tmp_path: Path) -> None:
    images, _ = random_mnist(np.random.default_rng(6), 3)
    write_idx(tmp_path / "train-images-idx3-ubyte", images, gz=True)

    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte"):
        load_dataset("mnist", tmp_path)


def test_mnist_folder_without_idx_files_raises(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"no MNIST-format IDX files"):
        load_dataset("mnist", tmp_path)


def test_read_idx_missing_file_raises_naming_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nothing-idx1-ubyte: file not found"):
        read_idx(tmp_path / "nothing-idx1-ubyte")


# ----------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("inside", [False, True], ids=["parent_dir", "batches_dir"])
def test_cifar10_pickles_round_trip_exactly(tmp_path: Path, inside: bool) -> None:
    rng = np.random.default_rng(7)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    expected_images, expected_labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = random_cifar(rng, 3)
        labels = rng.integers(0, 10, size=3).tolist()
        write_cifar_batch(folder / name, images, {b"labels": labels})
        expected_images.append(images)
        expected_labels.extend(labels)

    dataset = load_dataset("cifar10", folder if inside else tmp_path)

    assert dataset.num_classes == 10 and dataset.labels is not None
    np.testing.assert_array_equal(dataset.images.numpy(), np.concatenate(expected_images))
    np.testing.assert_array_equal(dataset.labels.numpy(), expected_labels)


def test_cifar20_uses_the_coarse_super_class_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    expected_images, expected_coarse = [], []
    for name in ("train", "test"):
        images = random_cifar(rng, 4)
        coarse = rng.integers(0, 20, size=4).tolist()
        fine = rng.integers(0, 100, size=4).tolist()
        write_cifar_batch(folder / name, images, {b"fine_labels": fine, b"coarse_labels": coarse})
        expected_images.append(images)
        expected_coarse.extend(coarse)

    dataset = load_dataset("cifar20", tmp_path)

    assert dataset.num_classes == 20 and dataset.labels is not None
    np.testing.assert_array_equal(dataset.images.numpy(), np.concatenate(expected_images))
    np.testing.assert_array_equal(dataset.labels.numpy(), expected_coarse)


def write_cifar10(folder: Path, count: int = 2) -> None:
    rng = np.random.default_rng(9)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_batch(folder / name, random_cifar(rng, count), {b"labels": [0] * count})


def test_cifar_missing_batch_raises_naming_the_file(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "data_batch_3").unlink()

    with pytest.raises(DatasetError, match=r"data_batch_3: file not found"):
        load_dataset("cifar10", tmp_path)


@pytest.mark.parametrize("corruption", ["truncated", "garbage"])
def test_cifar_corrupt_pickle_raises_naming_the_file(tmp_path: Path, corruption: str) -> None:
    write_cifar10(tmp_path)
    path = tmp_path / "data_batch_2"
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2] if corruption == "truncated" else b"not a pickle at all")

    with pytest.raises(DatasetError, match=r"data_batch_2: cannot unpickle"):
        load_dataset("cifar10", tmp_path)


class _RunsCode:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this must never run",))


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _RunsCode(), b"labels": []}))

    with pytest.raises(DatasetError, match=r"test_batch: cannot unpickle.*builtins.print"):
        load_dataset("cifar10", tmp_path)
    assert "never run" not in capsys.readouterr().out


def test_cifar_image_and_label_count_mismatch_raises(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    write_cifar_batch(tmp_path / "data_batch_1", random_cifar(np.random.default_rng(10), 3), {b"labels": [1, 2]})

    with pytest.raises(DatasetError, match=r"data_batch_1: 3 images in b'data' but 2 labels"):
        load_dataset("cifar10", tmp_path)


def test_cifar_missing_label_key_raises(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(11)
    for name in ("train", "test"):
        write_cifar_batch(folder / name, random_cifar(rng, 2), {b"fine_labels": [3, 4]})

    with pytest.raises(DatasetError, match=r"train: missing key b'coarse_labels'"):
        load_dataset("cifar20", tmp_path)


def test_cifar_wrong_image_row_size_raises(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    content = {b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]}
    (tmp_path / "data_batch_4").write_bytes(pickle.dumps(content, protocol=2))

    with pytest.raises(DatasetError, match=r"data_batch_4: b'data' must be a uint8 array of shape \(N, 3072\)"):
        load_dataset("cifar10", tmp_path)


# ---------------------------------------------------------------- folder


@pytest.mark.parametrize("channels", [1, 3])
def test_labelled_image_folder_round_trips_exactly(tmp_path: Path, channels: int) -> None:
    pytest.importorskip("PIL")
    rng = np.random.default_rng(12)
    expected_images, expected_labels = [], []
    for label, name in enumerate(["ant", "bee", "cat"]):
        (tmp_path / name).mkdir()
        for index in range(2):
            shape = (5, 7) if channels == 1 else (5, 7, 3)
            array = rng.integers(0, 256, size=shape, dtype=np.uint8)
            write_png(tmp_path / name / f"{index}.png", array)
            expected_images.append(array[None] if channels == 1 else array.transpose(2, 0, 1))
            expected_labels.append(label)

    dataset = load_dataset("folder", tmp_path)

    assert dataset.num_classes == 3 and dataset.labels is not None
    assert tuple(dataset.images.shape) == (6, channels, 5, 7)
    np.testing.assert_array_equal(dataset.images.numpy(), np.stack(expected_images))
    np.testing.assert_array_equal(dataset.labels.numpy(), expected_labels)


def test_unlabelled_image_folder_round_trips_with_grey_promoted_to_rgb(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    rng = np.random.default_rng(13)
    colour = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, size=(4, 4), dtype=np.uint8)
    write_png(tmp_path / "a.png", colour)
    write_png(tmp_path / "b.png", grey)

    dataset = load_dataset("folder", tmp_path)

    assert dataset.labels is None and dataset.num_classes is None
    np.testing.assert_array_equal(dataset.images[0].numpy(), colour.transpose(2, 0, 1))
    np.testing.assert_array_equal(dataset.images[1].numpy(), np.stack([grey] * 3))


def test_image_folder_corrupt_image_raises_naming_the_file(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    (tmp_path / "cls").mkdir()
    write_png(tmp_path / "cls" / "good.png", np.zeros((3, 3), dtype=np.uint8))
    (tmp_path / "cls" / "bad.png").write_bytes(b"\x89PNG but not really")

    with pytest.raises(DatasetError, match=r"bad\.png: cannot read image"):
        load_dataset("folder", tmp_path)


def test_image_folder_with_different_image_sizes_raises_naming_the_file(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    write_png(tmp_path / "a.png", np.zeros((3, 3), dtype=np.uint8))
    write_png(tmp_path / "b.png", np.zeros((4, 3), dtype=np.uint8))

    with pytest.raises(DatasetError, match=r"b\.png: image size 3x4 differs"):
        load_dataset("folder", tmp_path)


def test_image_folder_without_images_raises(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")

    with pytest.raises(DatasetError, match=r"no images found"):
        load_dataset("folder", tmp_path)


# ----------------------------------------------------------- other input


def test_digits_loads_1797_single_channel_8x8_images_with_10_classes() -> None:
    pytest.importorskip("sklearn")
    dataset = load_dataset("digits")

    assert tuple(dataset.images.shape) == (1797, 1, 8, 8) and dataset.images.dtype == torch.uint8
    assert dataset.num_classes == 10 and dataset.labels is not None
    assert set(dataset.labels.tolist()) == set(range(10))
    # 0..16 counts spread over the whole uint8 range.
    assert int(dataset.images.min()) == 0 and int(dataset.images.max()) == 255


def test_max_samples_keeps_the_first_samples() -> None:
    pytest.importorskip("sklearn")
    full = load_dataset("digits")
    subset = load_dataset("digits", max_samples=10)

    assert len(subset) == 10 and subset.num_classes == full.num_classes
    assert subset.labels is not None and full.labels is not None
    assert torch.equal(subset.images, full.images[:10]) and torch.equal(subset.labels, full.labels[:10])


@pytest.mark.parametrize("bad", [0, -3])
def test_max_samples_below_one_is_rejected(bad: int) -> None:
    with pytest.raises(ValueError, match=f"max_samples must be >= 1, got {bad}"):
        load_dataset("digits", max_samples=bad)


def test_unknown_dataset_name_raises_listing_the_known_names() -> None:
    with pytest.raises(DatasetError, match=r"unknown dataset name 'svhn'.*digits, mnist"):
        load_dataset("svhn")
    assert "digits" in DATASET_NAMES


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar20", "folder"])
def test_dataset_without_data_dir_raises(name: str) -> None:
    with pytest.raises(DatasetError, match=f"'{name}' needs data_dir"):
        load_dataset(name)


def test_missing_data_dir_raises_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    with pytest.raises(DatasetError, match=r"does-not-exist: data_dir for dataset 'cifar10' does not exist"):
        load_dataset("cifar10", missing)


def test_image_dataset_rejects_float_images_and_out_of_range_labels() -> None:
    with pytest.raises(TypeError, match="uint8"):
        ImageDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64), 1, "x")
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        ImageDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 2]), 2, "x")


@pytest.mark.skipif(not REAL_MNIST.is_dir(), reason=f"real MNIST not found at {REAL_MNIST}")
def test_real_mnist_loads_70000_images_of_10_classes() -> None:
    dataset = load_dataset("mnist", REAL_MNIST)

    assert tuple(dataset.images.shape) == (70_000, 1, 28, 28) and dataset.images.dtype == torch.uint8
    assert dataset.num_classes == 10 and dataset.labels is not None
    assert torch.bincount(dataset.labels, minlength=10).min() > 0
