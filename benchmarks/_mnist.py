"""A tiny reader of the gzipped MNIST IDX files, for the benchmarks only.

The reference trainer has its own loader; this one exists so that a benchmark
script depends on nothing but NumPy.

>>> import os
>>> if os.path.isdir(DEFAULT_DATA_DIR):
...     images, labels = load_mnist()
...     assert images.shape == (70000, 784) and labels.shape == (70000,)
"""

from __future__ import annotations

import gzip
import os
import struct
from typing import Tuple

import numpy as np

__all__ = ["DEFAULT_DATA_DIR", "read_idx", "load_mnist"]

#: Where the four MNIST IDX files are looked for when ``--data-dir`` is not given: the
#: ``PROPOS_MNIST_DIR`` environment variable, else ``shared/data/mnist`` beside the checkout
#: (where this project's CI keeps them).
DEFAULT_DATA_DIR = os.environ.get("PROPOS_MNIST_DIR") or os.path.normpath(
    os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")
)

# IDX type codes (third byte of the magic number) -> NumPy dtype (big-endian).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """Read one (optionally gzipped) IDX file into an array of its declared shape."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:  # type: ignore[operator]
        data = handle.read()
    zero, type_code, n_dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or type_code not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (magic {data[:4]!r})")
    shape = struct.unpack(f">{n_dims}I", data[4 : 4 + 4 * n_dims])
    array = np.frombuffer(data, dtype=_IDX_DTYPES[type_code], offset=4 + 4 * n_dims)
    return array.reshape(shape)


def load_mnist(data_dir: str = DEFAULT_DATA_DIR) -> Tuple[np.ndarray, np.ndarray]:
    """Train and test sets concatenated: images ``(70000, 784)`` uint8, labels ``(70000,)`` int64."""
    images = []
    labels = []
    for split in ("train", "t10k"):
        images.append(read_idx(os.path.join(data_dir, f"{split}-images-idx3-ubyte.gz")))
        labels.append(read_idx(os.path.join(data_dir, f"{split}-labels-idx1-ubyte.gz")))
    flat = np.concatenate(images).reshape(-1, 28 * 28)
    return flat, np.concatenate(labels).astype(np.int64)
