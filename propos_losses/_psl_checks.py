"""Input checks of the prototype scattering loss, shared by its functional and module forms and by ProPosLoss.

Each public entry point of :mod:`propos_losses.psl` runs these once, before
anything changes, and then calls the unchecked core
(:func:`propos_losses._psl_core.psl_core`). ``values=False`` keeps the
structural checks (types, shapes, dtypes, devices), which read nothing back
from the device.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from torch import Tensor

from propos_losses._validation import check_finite, check_float, check_labels, check_tensor
from propos_losses.distributed import check_on_every_rank, dtype_code
from propos_losses.queue import PrototypeQueue

__all__ = [
    "check_temperature",
    "check_features",
    "check_assignments_device",
    "check_queue_arguments",
    "agreement",
    "validate_on_every_rank",
]


def check_temperature(temperature: object) -> float:
    """``tau`` as a float, at least float32's smallest normal number so that ``1 / tau`` is finite in float32."""
    temperature = check_float("temperature", temperature, minimum=0.0, strict_minimum=True)
    tiny = torch.finfo(torch.float32).tiny
    if temperature < tiny:
        raise ValueError(
            f"temperature must be >= {tiny} (float32's smallest normal number, so that 1 / temperature "
            f"is finite in float32), got {temperature}"
        )
    return temperature


def check_features(online: Tensor, target: Tensor, *, allow_empty: bool = False, values: bool = True) -> None:
    """``allow_empty`` accepts ``B = 0`` (a rank without samples under ``torch.distributed``).

    ``values=False`` skips the finiteness checks (the only ones that sync with the device).
    """
    check_tensor("online", online, ndim=2, floating=True)
    check_tensor("target", target, ndim=2, floating=True)
    if online.shape != target.shape:
        raise ValueError(
            f"online and target must have the same shape (B, d), got {tuple(online.shape)} and {tuple(target.shape)}"
        )
    if online.shape[1] < 1:
        raise ValueError(f"online must be (B, d) with d >= 1, got shape {tuple(online.shape)}")
    if online.shape[0] < 1 and not allow_empty:
        raise ValueError(f"online must be (B, d) with B >= 1, got shape {tuple(online.shape)}")
    if online.device != target.device:
        raise ValueError(f"online and target must be on the same device, got {online.device} and {target.device}")
    if values:
        check_finite("online", online)
        check_finite("target", target)


def check_assignments_device(assignments: object, online: Tensor) -> None:
    """Structural: labels or weights on the features' device (a raw torch error otherwise)."""
    if isinstance(assignments, Tensor) and assignments.device != online.device:
        raise ValueError(f"assignments are on {assignments.device} but online is on {online.device}")


def check_queue_arguments(
    queue_features: Optional[Tensor],
    queue_labels: Optional[Tensor],
    feature_dim: int,
    num_clusters: int,
    values: bool = True,
) -> None:
    if (queue_features is None) != (queue_labels is None):
        raise ValueError(
            "queue_features and queue_labels must be given together, got "
            f"queue_features={'None' if queue_features is None else 'a tensor'} and "
            f"queue_labels={'None' if queue_labels is None else 'a tensor'}"
        )
    if queue_features is None or queue_labels is None:
        return
    check_tensor("queue_features", queue_features, ndim=2, floating=True)
    check_tensor("queue_labels", queue_labels, ndim=1)
    if queue_features.shape[1] != feature_dim:
        raise ValueError(
            f"queue_features must have feature size d={feature_dim} like online, got shape {tuple(queue_features.shape)}"
        )
    if queue_labels.shape[0] != queue_features.shape[0]:
        raise ValueError(
            f"queue_labels must have one label per queue_features row ({queue_features.shape[0]}), "
            f"got shape {tuple(queue_labels.shape)}"
        )
    if queue_labels.is_floating_point() or queue_labels.is_complex() or queue_labels.dtype == torch.bool:
        raise TypeError(f"queue_labels must hold integer labels, got dtype {queue_labels.dtype}")
    if values:
        check_labels("queue_labels", queue_labels, num_clusters)
        check_finite("queue_features", queue_features)


def agreement(online: object, assignments: object, queue: Optional[PrototypeQueue] = None) -> Dict[str, int]:
    """What must be equal on every rank for the loss's all-reduces (``-1``: too malformed to tell).

    The feature size and dtype, hard labels vs soft weights and, with a
    ``queue``, its feature size and dtype (the batch is gathered into it
    after the loss).
    """
    well_formed = isinstance(online, Tensor) and online.dim() == 2
    agree = {
        "the feature size (online.shape[1])": online.shape[1] if isinstance(online, Tensor) and well_formed else -1,
        "the feature dtype (code)": dtype_code(online),
        "assignments.dim() (1 for hard labels, 2 for soft weights)": (
            assignments.dim() if isinstance(assignments, Tensor) else -1
        ),
    }
    if queue is not None:
        agree["the queue's feature size (feature_dim)"] = queue.feature_dim
        agree["the queue's dtype (code)"] = dtype_code(queue.features)
    return agree


def validate_on_every_rank(
    check: Callable[[], None],
    online: object,
    assignments: object,
    *,
    collective: bool = True,
    queue: Optional[PrototypeQueue] = None,
) -> None:
    """Run the local checks; under ``torch.distributed`` make every rank raise if any rank failed.

    The checks are local, so a rank with bad data would raise alone and leave
    the other ranks blocked in the all-reduce of the prototype sums, and a
    feature size or dtype that differs between ranks would make that
    all-reduce abort the process (gloo). One tiny all-reduce
    (:func:`~propos_losses.distributed.check_on_every_rank`) lets every rank
    raise instead, and checks :func:`agreement`. ``collective=False``
    (``validate_args=False``) skips it and its host sync: a rank with bad
    input then raises alone.
    """
    if not collective:
        check()
        return
    device = online.device if isinstance(online, Tensor) else None
    check_on_every_rank(
        check, what="the prototype scattering loss", device=device, agree=agreement(online, assignments, queue)
    )
