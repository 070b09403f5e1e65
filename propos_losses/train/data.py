"""Image data sets for the reference trainer, read without torchvision.

:func:`load_dataset` holds a whole set in memory as a ``(N, C, H, W)`` ``uint8`` tensor
(:class:`ImageDataset`), so that augmentation runs batched on the training device;
bad input raises :class:`DatasetError` naming the file and what is wrong. The names
(:data:`DATASET_NAMES`) and their files are listed in ``docs/trainer.rst``.

Example:
    >>> dataset = load_dataset("digits", max_samples=100)
    >>> dataset.images.shape, dataset.images.dtype, dataset.num_classes
    (torch.Size([100, 1, 8, 8]), torch.uint8, 10)
"""

from __future__ import annotations

import gzip
import importlib
import io
import math
import os
import pickle
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Union

import numpy as np
import torch
from torch import Tensor

from propos_losses.utils import check_int, check_tensor

__all__ = [
    "DATASET_NAMES",
    "DatasetError",
    "ImageDataset",
    "check_clusterable",
    "load_dataset",
    "read_idx",
]

#: Names accepted by :func:`load_dataset`.
DATASET_NAMES: tuple[str, ...] = ("digits", "mnist", "cifar10", "cifar20", "folder")

PathLike = Union[str, "os.PathLike[str]"]

# IDX header: two zero bytes, a dtype code, the number of dimensions, one big-endian uint32 per dimension.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_CIFAR_SHAPE = (3, 32, 32)

_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})
# Pillow modes that hold a single grey channel; anything else is read as RGB.
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "P;L"})


class DatasetError(ValueError):
    """A data set could not be read: the message names the file and what is wrong.

    Example:
        >>> try:
        ...     load_dataset("imagenet")
        ... except DatasetError as error:
        ...     print(str(error).split(";")[0])
        unknown dataset name 'imagenet'
    """


@dataclass
class ImageDataset:
    """A whole image data set held in memory.

    Attributes:
        images: ``(N, C, H, W)`` ``torch.uint8`` tensor with ``C`` in ``{1, 3}``.
        labels: ``(N,)`` ``torch.int64`` class indices in ``[0, num_classes)``, or ``None`` (unlabelled).
        num_classes: number of classes, or ``None`` when unlabelled.
        name: a short description (data set name, source).

    Example:
        >>> dataset = ImageDataset(torch.zeros(4, 1, 8, 8, dtype=torch.uint8),
        ...                        torch.tensor([0, 1, 1, 0]), 2, "toy")
        >>> len(dataset)
        4
    """

    images: Tensor
    labels: Optional[Tensor]
    num_classes: Optional[int]
    name: str

    def __post_init__(self) -> None:
        check_tensor("images", self.images)
        if self.images.dtype != torch.uint8:
            raise TypeError(f"images must have dtype torch.uint8, got {self.images.dtype}")
        if self.images.dim() != 4 or self.images.shape[1] not in (1, 3):
            raise ValueError(f"images must have shape (N, C, H, W) with C in {{1, 3}}, got {tuple(self.images.shape)}")
        if (self.labels is None) != (self.num_classes is None):
            raise ValueError(
                f"labels and num_classes must both be given or both be None, got labels "
                f"{'None' if self.labels is None else 'a tensor'} and num_classes={self.num_classes!r}"
            )
        if self.labels is not None:
            check_tensor("labels", self.labels)
            if self.labels.dtype != torch.int64:
                raise TypeError(f"labels must have dtype torch.int64, got {self.labels.dtype}")
            if self.labels.shape != (self.images.shape[0],):
                raise ValueError(
                    f"labels must have shape ({self.images.shape[0]},) to match images, got {tuple(self.labels.shape)}"
                )
            num_classes = check_int("num_classes", self.num_classes, minimum=1)
            if self.labels.numel() and not (0 <= int(self.labels.min()) and int(self.labels.max()) < num_classes):
                raise ValueError(
                    f"labels must be in [0, {num_classes}), got range "
                    f"[{int(self.labels.min())}, {int(self.labels.max())}]"
                )

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except OSError as error:
        raise DatasetError(f"{path}: cannot read file ({error})") from error


def _read_bytes(path: Path) -> bytes:
    """The bytes of ``path``, decompressed when they start with the gzip magic number."""
    raw = _read_file(path)
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        # A truncated download ends the gzip stream early (EOFError).
        raise DatasetError(f"{path}: corrupt or truncated gzip data ({error})") from error


def read_idx(path: PathLike) -> np.ndarray:
    """Read one IDX file (gzipped or plain) into a numpy array.

    Args:
        path: the file, e.g. ``train-images-idx3-ubyte.gz`` (compression is detected from the content).

    Returns:
        An array of the header's shape in native byte order (``uint8`` for MNIST).

    Raises:
        DatasetError: the file is missing, the magic number is wrong, or the
            payload size disagrees with the header's dimensions.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "toy-labels-idx1-ubyte"
        >>> _ = path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
        >>> read_idx(path)
        array([7, 8, 9], dtype=uint8)
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DatasetError(f"{path}: truncated IDX header ({len(data)} bytes, need at least 4)")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetError(
            f"{path}: wrong IDX magic number 0x{data[:4].hex()} (expected 0x0000 followed by a dtype code in "
            f"{{{', '.join(f'0x{code:02x}' for code in _IDX_DTYPES)}}} and the number of dimensions)"
        )
    dtype = _IDX_DTYPES[data[2]]
    ndim = data[3]
    header_size = 4 + 4 * ndim
    if ndim == 0:
        raise DatasetError(f"{path}: IDX header declares 0 dimensions")
    if len(data) < header_size:
        raise DatasetError(f"{path}: truncated IDX header (declares {ndim} dimensions, file has {len(data)} bytes)")
    shape = tuple(int(size) for size in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow for any header
    payload = len(data) - header_size
    if payload != expected:
        problem = "truncated" if payload < expected else "has trailing bytes"
        raise DatasetError(
            f"{path}: size mismatch, header declares shape {shape} ({expected} bytes of {dtype}) "
            f"but the payload has {payload} bytes ({problem})"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


_IDX_IMAGES = re.compile(r"^(?P<prefix>.*)images(?P<middle>[-_.])idx3(?P<suffix>[-_.]ubyte)(?P<gz>\.gz)?$")


def _find_idx_pairs(data_dir: Path) -> list[tuple[Path, Path]]:
    """Pair every ``*images?idx3?ubyte[.gz]`` with its ``*labels?idx1?ubyte[.gz]``."""
    candidates = {}
    # The torchvision layout keeps the files under MNIST/raw/ or raw/.
    for folder in (data_dir, data_dir / "raw", data_dir / "MNIST" / "raw"):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            match = _IDX_IMAGES.match(path.name)
            if match is None or not path.is_file():
                continue
            key = (folder, match["prefix"], match["middle"], match["suffix"])
            # Prefer the uncompressed copy when both an archive and its extraction exist.
            if key not in candidates or match["gz"] is None:
                candidates[key] = path
        if candidates:
            break
    pairs = []
    for (folder, prefix, middle, suffix), images_path in candidates.items():
        stem = f"{prefix}labels{middle}idx1{suffix}"
        labels_path = next((folder / name for name in (stem, stem + ".gz") if (folder / name).is_file()), None)
        if labels_path is None:
            raise DatasetError(f"{images_path}: no matching labels file ({folder / stem}[.gz]) found")
        pairs.append((images_path, labels_path))

    # The training set first, as torchvision's MNIST(train=True) + MNIST(train=False).
    return sorted(pairs, key=lambda pair: (not pair[0].name.startswith("train"), pair[0].name))


def _load_mnist(data_dir: Path) -> ImageDataset:
    pairs = _find_idx_pairs(data_dir)
    if not pairs:
        raise DatasetError(
            f"{data_dir}: no MNIST-format IDX files found (expected e.g. train-images-idx3-ubyte[.gz] "
            f"and train-labels-idx1-ubyte[.gz])"
        )
    all_images: List[np.ndarray] = []
    all_labels: List[np.ndarray] = []
    for images_path, labels_path in pairs:
        images = read_idx(images_path)
        labels = read_idx(labels_path)
        if images.dtype != np.uint8 or images.ndim != 3:
            raise DatasetError(
                f"{images_path}: expected a 3-D uint8 image array (N, H, W), got {images.ndim}-D {images.dtype}"
            )
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise DatasetError(f"{labels_path}: expected a 1-D integer label array, got {labels.ndim}-D {labels.dtype}")
        if len(images) != len(labels):
            raise DatasetError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
        if labels.size and labels.min() < 0:
            raise DatasetError(f"{labels_path}: negative label {int(labels.min())}")
        if all_images and images.shape[1:] != all_images[0].shape[1:]:
            raise DatasetError(
                f"{images_path}: image size {images.shape[1:]} differs from {pairs[0][0]} ({all_images[0].shape[1:]})"
            )
        all_images.append(images)
        all_labels.append(labels.astype(np.int64))
    images = np.concatenate(all_images)[:, None]
    labels = np.concatenate(all_labels)
    num_classes = int(labels.max()) + 1 if labels.size else 1
    names = ", ".join(path.name for pair in pairs for path in pair)
    present = np.unique(labels)
    if present.size != num_classes:
        # The class count is max + 1: a stray value (255 as "unknown") would make it 256, mostly empty classes.
        missing = sorted(set(range(num_classes)) - set(present.tolist()))
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise DatasetError(
            f"{data_dir}: the labels in {', '.join(str(labels_path.name) for _, labels_path in pairs)} must be "
            f"0..K-1 with every class present; they range up to {num_classes - 1} but {len(missing)} of those "
            f"values never occur ({shown})"
        )
    return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels), num_classes, f"mnist ({names})")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Allows only the globals a CIFAR pickle needs, so that a malicious file cannot run code: numpy array
    reconstruction, and ``_codecs.encode``, which Python 3 uses for bytes under pickle protocol 2."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "_codecs" and name == "encode":
            import _codecs

            return _codecs.encode
        # Pickles written by numpy 1.x name numpy.core, numpy 2.x numpy._core.
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            try:  # numpy 2's module, without the numpy.core deprecation warning
                return getattr(importlib.import_module("numpy._core.multiarray"), name)
            except ImportError:  # numpy < 2
                return getattr(importlib.import_module("numpy.core.multiarray"), name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR pickle")


def _load_pickle(path: Path) -> dict[str, Any]:
    raw = _read_file(path)
    try:
        # encoding="bytes" is what the CIFAR page prescribes for its Python 2 pickles.
        content = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as error:  # pickle raises many types (EOFError, UnpicklingError, ValueError, ...)
        raise DatasetError(f"{path}: cannot unpickle ({type(error).__name__}: {error})") from error
    if not isinstance(content, dict):
        raise DatasetError(f"{path}: expected a pickled dict, got {type(content).__name__}")
    return {key.decode("latin-1") if isinstance(key, bytes) else str(key): value for key, value in content.items()}


def _cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    content = _load_pickle(path)
    for key in ("data", label_key):
        if key not in content:
            raise DatasetError(f"{path}: missing key b'{key}' (found {sorted(content)})")
    data = content["data"]
    row = math.prod(_CIFAR_SHAPE)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != row:
        shape = data.shape if isinstance(data, np.ndarray) else type(data).__name__
        dtype = getattr(data, "dtype", "")
        raise DatasetError(f"{path}: b'data' must be a uint8 array of shape (N, {row}), got {shape} {dtype}")
    try:
        labels = np.asarray(content[label_key], dtype=np.int64)
    except (TypeError, ValueError) as error:
        raise DatasetError(f"{path}: b'{label_key}' is not a list of integers ({error})") from error
    if labels.shape != (data.shape[0],):
        raise DatasetError(f"{path}: {data.shape[0]} images in b'data' but {labels.size} labels in b'{label_key}'")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(
            f"{path}: b'{label_key}' must be in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]"
        )
    return data.reshape(-1, *_CIFAR_SHAPE), labels  # rows: the red, green, blue planes, each row-major


def _load_cifar(
    data_dir: Path, files: tuple[str, ...], subdir: str, label_key: str, num_classes: int, name: str
) -> ImageDataset:
    # The extracted folder itself or its parent.
    folder = data_dir if (data_dir / files[-1]).is_file() or not (data_dir / subdir).is_dir() else data_dir / subdir
    batches = [_cifar_batch(folder / file, label_key, num_classes) for file in files]
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels), num_classes, f"{name} ({folder})")


def _list_images(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in _IMAGE_SUFFIXES)


def _read_images(paths: list[Path]) -> np.ndarray:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise DatasetError("reading an image folder needs Pillow: pip install pillow") from None
    arrays = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
                mode = "L" if image.mode in _GREY_MODES else "RGB"
                arrays.append(np.asarray(image.convert(mode), dtype=np.uint8))
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise DatasetError(f"{path}: cannot read image ({error})") from error
    # Mixed grey and colour images: promote the grey ones to three equal channels.
    rgb = any(array.ndim == 3 for array in arrays)
    size = arrays[0].shape[:2]
    for path, array in zip(paths, arrays):
        if array.shape[:2] != size:
            raise DatasetError(
                f"{path}: image size {array.shape[1]}x{array.shape[0]} differs from {paths[0]} "
                f"({size[1]}x{size[0]}); resize the folder to one size first"
            )
    if rgb:
        arrays = [np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else array for array in arrays]
        return np.stack(arrays).transpose(0, 3, 1, 2).copy()
    return np.stack(arrays)[:, None]


def _load_folder(data_dir: Path) -> ImageDataset:
    top = _list_images(data_dir)
    class_dirs = sorted(path for path in data_dir.iterdir() if path.is_dir() and not path.name.startswith("."))
    class_dirs = [path for path in class_dirs if _list_images(path)]
    if top and class_dirs:
        raise DatasetError(
            f"{data_dir}: holds both images ({top[0].name}, ...) and class folders ({class_dirs[0].name}, ...); "
            f"use data_dir/<class>/<image> for a labelled set or data_dir/<image> for an unlabelled one"
        )
    if top:
        return ImageDataset(torch.from_numpy(_read_images(top)), None, None, f"folder ({data_dir}, unlabelled)")
    if not class_dirs:
        raise DatasetError(
            f"{data_dir}: no images found (suffixes {', '.join(sorted(_IMAGE_SUFFIXES))}) in it or its subfolders"
        )
    paths, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        images = _list_images(class_dir)
        paths.extend(images)
        labels.extend([label] * len(images))
    name = f"folder ({data_dir}: {', '.join(path.name for path in class_dirs)})"
    pixels = torch.from_numpy(_read_images(paths))
    return ImageDataset(pixels, torch.tensor(labels, dtype=torch.int64), len(class_dirs), name)


def _load_digits() -> ImageDataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetError("the digits data set needs scikit-learn: pip install scikit-learn") from None
    digits = load_digits()
    # Pixel values are counts 0..16 (4x4 blocks of a 32x32 bitmap); spread them over 0..255.
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = torch.from_numpy(pixels[:, None].copy())
    labels = torch.from_numpy(digits.target.astype(np.int64))
    return ImageDataset(images, labels, int(len(digits.target_names)), "digits (scikit-learn)")


def load_dataset(
    name: str,
    data_dir: Optional[PathLike] = None,
    *,
    max_samples: Optional[int] = None,
) -> ImageDataset:
    """Load a whole image data set into memory.

    Args:
        name: one of :data:`DATASET_NAMES`.
        data_dir: the directory holding the files (not for ``"digits"``); for CIFAR the
            extracted ``cifar-10-batches-py`` / ``cifar-100-python`` folder or its parent.
        max_samples: keep only the first ``max_samples`` samples; ``None`` keeps all.

    Returns:
        An :class:`ImageDataset`; train and test splits are concatenated, train first.

    Raises:
        DatasetError: unknown name, missing ``data_dir`` or files, corrupt or
            truncated files, mismatched image and label counts.
        TypeError: ``name`` is not a string or ``max_samples`` not an int.

    Example:
        >>> digits = load_dataset("digits")
        >>> len(digits), tuple(digits.images.shape[1:]), digits.num_classes
        (1797, (1, 8, 8), 10)
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {name!r} of type {type(name).__name__}")
    key = name.strip().lower()
    if key not in DATASET_NAMES:
        raise DatasetError(f"unknown dataset name {name!r}; expected one of {', '.join(DATASET_NAMES)}")
    if max_samples is not None:
        max_samples = check_int("max_samples", max_samples, minimum=1)

    if key == "digits":
        dataset = _load_digits()
    else:
        if data_dir is None:
            raise DatasetError(f"dataset {key!r} needs data_dir (the directory holding its files)")
        directory = Path(data_dir).expanduser()
        if not directory.is_dir():
            raise DatasetError(f"{directory}: data_dir for dataset {key!r} does not exist or is not a directory")
        if key == "mnist":
            dataset = _load_mnist(directory)
        elif key == "cifar10":
            files = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
            dataset = _load_cifar(directory, files, "cifar-10-batches-py", "labels", 10, "cifar10")
        elif key == "cifar20":
            dataset = _load_cifar(directory, ("train", "test"), "cifar-100-python", "coarse_labels", 20, "cifar20")
        else:
            dataset = _load_folder(directory)

    if max_samples is not None and max_samples < len(dataset):
        labels = None if dataset.labels is None else dataset.labels[:max_samples].clone()
        dataset = ImageDataset(
            dataset.images[:max_samples].clone(), labels, dataset.num_classes, f"{dataset.name}[:{max_samples}]"
        )
    return dataset


def check_clusterable(dataset: ImageDataset, num_clusters: Optional[int], eval_clusters: int) -> None:
    """Refuse data the trainer cannot train on or cluster, before anything is written.

    ``num_clusters`` is a ``K`` asked for explicitly (``None``: the class count), ``eval_clusters``
    the clusters of the evaluations.

    Raises:
        DatasetError: non-square images, a single class, more clusters than samples, or identical images.
    """
    n = len(dataset)
    _, _, height, width = dataset.images.shape
    if height != width:
        raise DatasetError(
            f"the images of {dataset.name} are {width}x{height}; the trainer needs square images "
            f"(crop or pad them to one side first)"
        )
    if dataset.num_classes is not None and dataset.num_classes < 2:
        raise DatasetError(f"{dataset.name} has a single class; clustering it needs at least 2 classes")
    if num_clusters is not None and num_clusters > n:
        raise DatasetError(
            f"num_clusters ({num_clusters}) is larger than the data set ({n} samples); k-means needs at "
            f"least one sample per cluster"
        )
    if eval_clusters > n:
        raise DatasetError(
            f"{dataset.name} has {eval_clusters} classes but only {n} samples; k-means needs at least one "
            f"sample per cluster (use more samples)"
        )
    # Per-pixel min and max over the set (small (C, H, W) reductions, no copy of the images).
    if n > 1 and bool((dataset.images.amax(0) == dataset.images.amin(0)).all()):
        raise DatasetError(
            f"all {n} images of {dataset.name} are identical (e.g. all black); there is nothing to cluster"
        )
