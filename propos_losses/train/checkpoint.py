"""Checkpoint files of the reference trainer: the :class:`Checkpoint` schema, verified files, fingerprints, RNG state.

A checkpoint (format 3) is a :class:`Checkpoint` saved with ``torch.save`` and wrapped with its SHA-256, so a
damaged or edited file is refused instead of resumed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import Tensor

from propos_losses.train.config import RUN_ONLY_KEYS, TrainConfig, config_to_dict
from propos_losses.train.data import ImageDataset
from propos_losses.train.plots import read_metrics
from propos_losses.train.rundir import ASSIGNMENTS_NAME, CHECKPOINT_NAME, METRICS_NAME

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "CheckpointError",
    "checkpoint_bytes",
    "config_fingerprint",
    "data_fingerprint",
    "load_checkpoint",
    "rng_state",
    "set_rng_state",
    "to_cpu",
]

#: Version of the checkpoint layout (:class:`Checkpoint`'s fields). Format 3 (0.2.0) saves the
#: library's ProPosLoss and EStep states; it is wrapped with its SHA-256 like format 2.
CHECKPOINT_FORMAT = 3
#: Formats of earlier releases: refused with a message naming the release that reads them.
_OLD_FORMATS = {1: "0.1.0", 2: "0.1.x"}
#: Entries whose floating-point tensors must all be finite (:meth:`Checkpoint.check_finite`; RNG states are bytes).
FINITE_STATE_KEYS = ("online", "target", "criterion", "estep", "optimizer", "momentum", "mid_epoch")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not belong to this trainer."""


@dataclass
class Checkpoint:
    """The training state saved in ``checkpoint.pt``: the one place its layout is written.

    :class:`~propos_losses.train.trainer.Trainer` fills it, :func:`load_checkpoint` reads and checks it
    (:meth:`from_dict`). Every field but ``path`` is saved (:meth:`to_dict`), in this order, and required.

    Attributes:
        config: the run's settings (:func:`~propos_losses.train.config.config_to_dict`).
        epoch, step: epochs and optimiser steps done.
        online, target, optimizer, momentum: state dicts of the networks, optimiser and momentum schedule.
        criterion, estep: the ``ProPosLoss`` (predictor, queue, pseudo-labels, PSL switch) and ``EStep`` states.
        rng: :func:`rng_state`.
        log_lines, log_bytes: records and bytes of ``metrics.jsonl`` it covers.
        world_size: processes of the run.
        mid_epoch: where a stop between two steps left the epoch (``index`` steps done, loss ``totals``,
            generator states, ``lr``); ``None`` at the end of an epoch.
        scheduler: the learning-rate schedule's position (informative).
        data_sha256, config_sha256: fingerprints of the data and settings, compared on resume.
        format: :data:`CHECKPOINT_FORMAT`.
        path: the file it was read from (not saved).
    """

    mid_epoch: Optional[Dict[str, Any]]
    format: int
    config: Dict[str, Any]
    epoch: int
    step: int
    world_size: int
    online: Dict[str, Any]
    target: Dict[str, Any]
    criterion: Dict[str, Any]
    estep: Dict[str, Any]
    optimizer: Dict[str, Any]
    scheduler: Dict[str, Any]
    momentum: Dict[str, Any]
    rng: Dict[str, Any]
    log_lines: int
    log_bytes: int
    data_sha256: str
    config_sha256: str
    path: str = "the checkpoint"

    def to_dict(self) -> Dict[str, Any]:
        """The saved table: every field but ``path``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "path"}

    @classmethod
    def from_dict(cls, state: Any, where: str) -> "Checkpoint":
        """Check a loaded table (required entries, counters, settings) and wrap it; ``where`` names the file.

        Raises:
            CheckpointError: an entry missing or out of range.
        """
        names = [f.name for f in dataclasses.fields(cls) if f.name != "path"]
        if not isinstance(state, dict) or any(key not in state for key in names):
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
        for key in ("criterion", "estep"):
            if not isinstance(state[key], dict):
                raise CheckpointError(
                    f"{where!r} is damaged: its {key} state is a {type(state[key]).__name__}, not a table"
                )
        return cls(**{key: state[key] for key in names}, path=where)

    @property
    def steps_into_epoch(self) -> int:
        """Steps of epoch ``epoch + 1`` done before a stop between two steps (0 at an epoch's end)."""
        return self.mid_epoch["index"] if isinstance(self.mid_epoch, dict) else 0

    def is_complete(self, run_dir: Path) -> bool:
        """Whether the run finished: its final record right after the log lines counted, and its assignments."""
        try:
            records = read_metrics(run_dir / METRICS_NAME)
        except ValueError:  # a torn last line: the final evaluation did not finish
            return False
        return (
            self.epoch >= self.config["epochs"]
            and len(records) == self.log_lines + 1
            and records[-1].get("event") == "final"
            and (run_dir / ASSIGNMENTS_NAME).is_file()
        )

    def check_finite(self) -> None:
        """Refuse NaN or infinity in the weights or optimiser state (a recomputed SHA-256 would pass them).

        Raises:
            CheckpointError: naming the first entry that is not finite.

        Example:
            >>> state = dict.fromkeys(f.name for f in dataclasses.fields(Checkpoint) if f.name != "path")
            >>> state.update(online={"w": torch.tensor([1.0, float("nan")])}, path="x.pt")
            >>> try:
            ...     Checkpoint(**state).check_finite()
            ... except CheckpointError as exc:
            ...     print(exc)
            'x.pt' is damaged: online.w holds NaN or infinite values; use a backup copy or start a new run
        """

        def check(value: Any, name: str) -> None:
            if isinstance(value, Tensor):
                if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
                    raise CheckpointError(
                        f"{self.path!r} is damaged: {name} holds NaN or infinite values; use a backup copy or start "
                        f"a new run"
                    )
            elif isinstance(value, dict):
                for key, item in value.items():
                    check(item, f"{name}.{key}")
            elif isinstance(value, (list, tuple)):
                for index, item in enumerate(value):
                    check(item, f"{name}[{index}]")

        for key in FINITE_STATE_KEYS:
            check(getattr(self, key), key)

    def check_resumable(
        self,
        config: TrainConfig,
        *,
        world_size: int,
        dataset: ImageDataset,
        data_sha256: str,
        steps_per_epoch: int,
    ) -> None:
        """Refuse a checkpoint that does not belong to this run, before anything loads.

        Checks the number of processes, the data and settings fingerprints, the pseudo-labels' length and
        that epoch, step and a mid-epoch position fit the schedule (the criterion's and E-step's own states
        are checked by their ``load_state_dict``).

        Raises:
            CheckpointError: naming what does not match.
        """
        where, num_samples = self.path, len(dataset)
        if self.world_size != world_size:
            raise CheckpointError(
                f"checkpoint was written by {self.world_size} process(es); resume with the same number "
                f"(got {world_size})"
            )
        if self.data_sha256 != data_sha256:
            raise CheckpointError(
                f"the data set differs from the one the run in {where!r} was trained on ({dataset.name}, "
                f"{num_samples} samples, fingerprint {data_sha256[:12]} instead of "
                f"{str(self.data_sha256)[:12]}); resume it with the same data files"
            )
        if self.config_sha256 != config_fingerprint(config):
            raise CheckpointError(f"{where!r} is damaged: its settings do not match their fingerprint")
        extra = self.criterion.get("_extra_state")
        labels = extra.get("pseudo_labels") if isinstance(extra, dict) else None
        if isinstance(labels, Tensor) and labels.shape != (num_samples,):
            raise CheckpointError(
                f"checkpoint holds pseudo-labels for {labels.shape[0]} samples, the data set has {num_samples}"
            )
        epoch, step, mid_epoch = self.epoch, self.step, self.mid_epoch
        index = mid_epoch.get("index") if isinstance(mid_epoch, dict) else 0
        if (
            not 0 <= epoch <= config.epochs
            or (mid_epoch is not None and not isinstance(mid_epoch, dict))
            or not isinstance(index, int)
            or step != epoch * steps_per_epoch + index
            or (mid_epoch is not None and not (0 < index <= steps_per_epoch and epoch < config.epochs))
        ):
            raise CheckpointError(
                f"{where!r} is damaged: epoch {epoch} and step {step} do not fit a {config.epochs}-epoch run of "
                f"{steps_per_epoch} steps per epoch"
            )


def config_fingerprint(config: TrainConfig) -> str:
    """SHA-256 of the settings that define a run (all but the run-only ones: ``device``, ``output_dir``, ...).

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


def checkpoint_bytes(checkpoint: Checkpoint) -> bytes:
    """The file content of a checkpoint: the serialised :meth:`Checkpoint.to_dict` and its SHA-256."""
    buffer = io.BytesIO()
    torch.save(checkpoint.to_dict(), buffer)
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


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and verify a trainer checkpoint (a file, or a run directory holding ``checkpoint.pt``).

    The state is checked against the SHA-256 stored with it, then by :meth:`Checkpoint.from_dict`;
    earlier formats (1, 2) are refused with a message naming the release that resumes them.

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
    version = outer["format"]
    if version in _OLD_FORMATS:
        raise CheckpointError(
            f"{where!r} was written by propos-train {_OLD_FORMATS[version]} (checkpoint format {version}); this "
            f"release reads format {CHECKPOINT_FORMAT}: resume it with propos_losses {_OLD_FORMATS[version]} or "
            f"start a new run"
        )
    if version != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{where!r} has checkpoint format {version!r}, expected {CHECKPOINT_FORMAT}")
    payload, digest = outer.get("payload"), outer.get("sha256")
    if not (
        isinstance(payload, Tensor) and payload.dtype == torch.uint8 and payload.dim() == 1 and isinstance(digest, str)
    ):
        raise CheckpointError(f"{where!r} is not a propos-train checkpoint")
    data = payload.numpy().tobytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise CheckpointError(
            f"{where!r} is corrupt: its content does not match the SHA-256 stored with it "
            f"(damaged on disk or edited); use a backup copy or start a new run"
        )
    return Checkpoint.from_dict(_load_torch(io.BytesIO(data), where), where)


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
    numpy = state["numpy"]
    key = numpy["key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def to_cpu(state: Any) -> Any:
    """``state`` with every tensor moved to the CPU (nested dicts and lists), for saving.

    Example:
        >>> to_cpu({"a": [torch.ones(1)], "b": 2})
        {'a': [tensor([1.])], 'b': 2}
    """
    if isinstance(state, Tensor):
        return state.cpu()
    if isinstance(state, dict):
        return {key: to_cpu(value) for key, value in state.items()}
    if isinstance(state, list):
        return [to_cpu(value) for value in state]
    return state
