"""Checkpoint files of the reference trainer: verified writing and reading, fingerprints, RNG state.

A checkpoint (format 2) is the training state, saved with ``torch.save`` and
wrapped with its SHA-256, so a damaged or edited file is refused instead of resumed; the
state carries fingerprints of the data (:func:`data_fingerprint`) and of the
settings (:func:`config_fingerprint`) that the trainer compares on resume.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch
from torch import Tensor

from propos_losses.train.config import RUN_ONLY_KEYS, TrainConfig, config_to_dict
from propos_losses.train.data import ImageDataset

__all__ = [
    "CHECKPOINT_NAME",
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "checkpoint_bytes",
    "config_fingerprint",
    "data_fingerprint",
    "load_checkpoint",
    "rng_state",
    "set_rng_state",
]

CHECKPOINT_NAME = "checkpoint.pt"
#: Version of the checkpoint layout; bumped when the saved keys change. Format 2 wraps the
#: state with its SHA-256 and adds the data and settings fingerprints and the log's byte length.
CHECKPOINT_FORMAT = 2
#: Older formats that still load (without the integrity check and fingerprints).
_LEGACY_FORMATS = (1,)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not belong to this trainer."""


def config_fingerprint(config: TrainConfig) -> str:
    """SHA-256 of the settings that define a run (all but ``device`` and ``output_dir``).

    Example:
        >>> from propos_losses.train.config import TrainConfig
        >>> config_fingerprint(TrainConfig()) == config_fingerprint(TrainConfig(device="cpu", output_dir="x"))
        True
    """
    values = {k: v for k, v in config_to_dict(config).items() if k not in RUN_ONLY_KEYS}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode("utf-8")).hexdigest()


def data_fingerprint(dataset: ImageDataset) -> str:
    """SHA-256 of a data set's images and labels as loaded (shapes, pixel bytes, label values).

    Example:
        >>> from propos_losses.train.data import ImageDataset
        >>> a = ImageDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), None, None, "a")
        >>> b = ImageDataset(torch.ones(2, 1, 4, 4, dtype=torch.uint8), None, None, "b")
        >>> data_fingerprint(a) == data_fingerprint(b)
        False
    """
    digest = hashlib.sha256()
    images = dataset.images.detach().cpu().contiguous()
    digest.update(repr((tuple(images.shape), dataset.num_classes)).encode("utf-8"))
    digest.update(images.numpy().data)
    if dataset.labels is not None:
        digest.update(dataset.labels.detach().cpu().contiguous().numpy().data)
    return digest.hexdigest()


def checkpoint_bytes(state: Dict[str, Any]) -> bytes:
    """The file content of a checkpoint: the serialised state and its SHA-256."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    wrapper = {
        "format": CHECKPOINT_FORMAT,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8),
    }
    buffer = io.BytesIO()
    torch.save(wrapper, buffer)
    return buffer.getvalue()


def _load_torch(source: Any, where: str) -> Any:
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise CheckpointError(f"cannot read checkpoint {where!r}: {type(exc).__name__}: {exc}") from None


def load_checkpoint(path: str | os.PathLike) -> Dict[str, Any]:
    """Read and verify a trainer checkpoint (a file, or a run directory holding ``checkpoint.pt``).

    The state is checked against the SHA-256 stored with it, so a damaged or
    edited file is refused rather than resumed; counters out of range and a
    settings entry that is not a table are refused too. (Checkpoints of format
    1, written before the digest existed, are read without it.)

    Raises:
        CheckpointError: missing, unreadable, truncated, corrupt or foreign file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}")
    where = str(path)
    outer = _load_torch(path, where)
    if not isinstance(outer, dict) or "format" not in outer:
        raise CheckpointError(f"{where!r} is not a propos-train checkpoint")
    if outer["format"] == CHECKPOINT_FORMAT:
        payload, digest = outer.get("payload"), outer.get("sha256")
        if not (
            isinstance(payload, Tensor)
            and payload.dtype == torch.uint8
            and payload.dim() == 1
            and isinstance(digest, str)
        ):
            raise CheckpointError(f"{where!r} is not a propos-train checkpoint")
        data = payload.numpy().tobytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise CheckpointError(
                f"{where!r} is corrupt: its content does not match the SHA-256 stored with it "
                f"(damaged on disk or edited); use a backup copy or start a new run"
            )
        state = _load_torch(io.BytesIO(data), where)
    elif outer["format"] in _LEGACY_FORMATS:
        state = outer
    else:
        raise CheckpointError(f"{where!r} has checkpoint format {outer['format']!r}, expected {CHECKPOINT_FORMAT}")
    required = (
        "format",
        "config",
        "epoch",
        "step",
        "online",
        "target",
        "optimizer",
        "momentum",
        "pseudo_labels",
        "rng",
        "log_lines",
    )
    if not isinstance(state, dict) or any(key not in state for key in required):
        raise CheckpointError(f"{where!r} is not a propos-train checkpoint")
    if not isinstance(state["config"], dict):
        raise CheckpointError(
            f"{where!r} is damaged: its settings are a {type(state['config']).__name__}, not a table of settings"
        )
    for key in ("epoch", "step", "log_lines"):
        value = state[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise CheckpointError(f"{where!r} is damaged: {key} is {value!r}, not a count >= 0")
    epochs = state["config"].get("epochs")
    if isinstance(epochs, int) and state["epoch"] > epochs:
        raise CheckpointError(f"{where!r} is damaged: it is at epoch {state['epoch']} of a {epochs}-epoch run")
    if not isinstance(state["pseudo_labels"], Tensor) or state["pseudo_labels"].dim() != 1:
        raise CheckpointError(f"{where!r} is damaged: its pseudo-labels are not a vector")
    state["path"] = where
    return state


def rng_state() -> Dict[str, Any]:
    """The torch (CPU and CUDA), NumPy and Python random states, storable with ``weights_only``."""
    numpy_state: Any = np.random.get_state()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore the states of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["key"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
