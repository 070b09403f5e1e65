"""Cluster prototypes (ProPos Eq. 6, 7).

A prototype is the L2-normalised sum of the L2-normalised features assigned to
a cluster::

    mu_k = normalize( sum_i p(k|x_i) z_i ),   z_i = f(x_i) / ||f(x_i)||

Dividing by the cluster size first, as the official code does, changes nothing
after the normalisation, so only sums and counts (total weights) are kept:
they are what the distributed loss all-reduces.

Hard labels ``(N,)`` are summed with :meth:`torch.Tensor.index_add` (memory
``O(K d)``, never a dense ``K x N`` matrix); soft weights ``(N, K)`` with one
matrix product.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
from torch import Tensor

from propos_losses._validation import check_finite, check_int, check_labels, check_tensor, numpy_labels_as_tensor

__all__ = ["cluster_sums", "normalize_features", "normalize_prototypes", "compute_prototypes"]


def normalize_features(features: Tensor) -> Tensor:
    """L2-normalise the rows of ``features``; zero rows stay zero, with zero gradient.

    No clamp constant is used: ``F.normalize``'s ``x / max(||x||, eps)`` has a
    gradient of ``1 / eps`` at a zero row, which overflows half precision
    (and is ``1e12`` with the default ``eps``), and it changes the direction
    of every row shorter than ``eps``. Here a zero row, which has no
    direction, is mapped to zero with zero gradient, and every non-zero row is
    divided by its exact norm. Each row is first divided by its largest
    absolute entry, so the squared norm neither underflows (a tiny non-zero
    row, e.g. bfloat16 values of ``1e-25``, would otherwise count as zero) nor
    overflows: the result is invariant to scaling a row by any positive factor
    that keeps it finite and non-zero.

    Args:
        features: ``(N, d)`` floating-point tensor.

    Returns:
        ``(N, d)`` tensor of the same dtype whose non-zero rows have unit norm.

    Example:
        >>> import torch
        >>> normalize_features(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
        tensor([[0.6000, 0.8000],
                [0.0000, 0.0000]])
        >>> normalize_features(torch.tensor([[3e-30, 4e-30]]))
        tensor([[0.6000, 0.8000]])
    """
    # The max-abs scale is a constant for autograd: x / ||x|| does not depend on it, so
    # treating it as fixed gives the exact gradient of the normalisation (and no subgradient of max).
    if features.shape[1] == 0:
        return features * 0  # (N, 0): no entries, no maximum to take
    scale = features.detach().abs().amax(dim=1, keepdim=True)
    # Max-abs 1, or an all-zero row times 0 (whose gradient is then 0 as well).
    scaled: Tensor = features / torch.where(scale > 0, scale, torch.inf)
    # Non-zero rows have a norm in [1, sqrt(d)], where the clamp changes nothing (and passes the gradient);
    # a zero row's norm 0 becomes 1, so the reciprocal never sees 0 and no NaN reaches the backward pass.
    inverse_norm: Tensor = torch.linalg.vector_norm(scaled, dim=1, keepdim=True).clamp_min(1.0).reciprocal()
    return scaled * inverse_norm


def weight_scale(weights: Tensor) -> Tensor:
    """The largest soft weight as a 0-d float64 tensor (0 for an empty tensor), without gradient."""
    if weights.numel() == 0:
        return torch.zeros((), dtype=torch.float64, device=weights.device)
    return weights.detach().amax().to(torch.float64)


def rescale_weights(weights: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """``weights / scale`` cast to ``dtype``, the division done in the wider of the two dtypes.

    Prototypes (normalised sums) and the non-empty mask are invariant to a
    common positive scale of the weights, but their magnitude is not safe to
    use as is: float64 weights of ``1e-50`` underflow to zero in float32 and
    float32 weights of ``3e38`` overflow the per-cluster sums. Dividing by the
    largest weight first (before the cast) maps them to ``(0, 1]``. ``scale``
    must be the same on every rank (see :func:`propos_losses.distributed.all_reduce_max_`):
    a different scale per rank would change the relative weights.
    """
    work = torch.promote_types(weights.dtype, dtype)
    scale = scale.to(device=weights.device, dtype=torch.float64)
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale)).to(work)
    # The scale is a constant: prototypes are invariant to it, so gradients in the weights stay exact.
    return (weights.to(work) / divisor).to(dtype)


def cluster_sums_unchecked(features: Tensor, assignments: Tensor, num_clusters: int) -> Tuple[Tensor, Tensor]:
    """Unchecked core of :func:`cluster_sums` (callers validate first)."""
    return cluster_sums_only(features, assignments, num_clusters), _counts(features, assignments, num_clusters)


def cluster_sums_only(features: Tensor, assignments: Tensor, num_clusters: int) -> Tensor:
    """The ``(K, d)`` sums of :func:`cluster_sums_unchecked` without the counts."""
    if assignments.dim() == 1:
        return features.new_zeros((num_clusters, features.shape[1])).index_add(0, assignments.long(), features)
    return assignments.to(features.dtype).t() @ features


def _counts(features: Tensor, assignments: Tensor, num_clusters: int) -> Tensor:
    """The ``(K,)`` total weights of :func:`cluster_sums_unchecked`, in ``features``' dtype and device."""
    if assignments.dim() == 1:
        # index_add rather than bincount: a fixed (K,) output shape (bincount's depends on the data,
        # which breaks torch.compile graphs); integer counts are exact in float up to 2**24.
        index = assignments.long()
        return features.new_zeros(num_clusters).index_add(0, index, features.new_ones(index.shape[0]))
    return assignments.to(features.dtype).sum(dim=0)


def as_assignments(assignments: object, device: torch.device) -> object:
    """NumPy labels ``(B,)`` (any integer dtype) or weights ``(B, K)`` (float) as a tensor on ``device``.

    Tensors and other objects are returned unchanged (they are checked by
    :func:`check_assignments`), so a NumPy array is accepted exactly where
    the equivalent tensor is.
    """
    if not isinstance(assignments, np.ndarray):
        return assignments
    kind = assignments.dtype.kind
    if kind in "iu":
        return numpy_labels_as_tensor("assignments", assignments, device)
    if kind == "f":
        return torch.from_numpy(np.ascontiguousarray(assignments)).to(device)
    raise TypeError(
        f"assignments must hold integer labels or floating-point weights, got NumPy dtype {assignments.dtype}"
    )


def check_assignments(
    assignments: Tensor, batch_size: int, num_clusters: int, *, allow_all_zero: bool = False, values: bool = True
) -> None:
    """Validate hard labels ``(N,)`` or soft weights ``(N, K)`` (raises ValueError/TypeError).

    ``allow_all_zero`` accepts all-zero (or empty) weights: under
    ``torch.distributed`` only the global total weight must be positive, which
    the distributed loss checks after its all-reduce. ``values=False`` keeps
    the structural checks (type, ndim, dtype, shape: no device sync) and skips
    the value checks (label range, finite and non-negative weights), which
    read the tensor back to the host.
    """
    check_tensor("assignments", assignments)
    if assignments.dim() == 1:
        if assignments.is_floating_point():
            raise TypeError(
                f"assignments given as (B,) must hold integer cluster labels, got dtype {assignments.dtype}; "
                "pass soft weights as a (B, K) tensor"
            )
        if values:
            check_labels("assignments", assignments, num_clusters)
    elif assignments.dim() == 2:
        if not assignments.is_floating_point():
            raise TypeError(
                f"assignments given as (B, K) must be floating-point weights, got dtype {assignments.dtype}"
            )
        if assignments.shape[1] != num_clusters:
            raise ValueError(
                f"assignments must have num_clusters={num_clusters} columns, got shape {tuple(assignments.shape)}"
            )
        if values:
            check_finite("assignments", assignments)
        if values and assignments.numel():
            low = float(assignments.detach().min())
            if low < 0:
                raise ValueError(f"assignments must be non-negative weights, got minimum {low}")
            if not allow_all_zero and not bool((assignments > 0).any()):
                raise ValueError("assignments must not be all zero: no sample is assigned to any cluster")
    else:
        raise ValueError(
            f"assignments must be (B,) integer labels or (B, K) weights, got shape {tuple(assignments.shape)}"
        )
    if assignments.shape[0] != batch_size:
        raise ValueError(
            f"assignments must have {batch_size} rows (one per feature row), got shape {tuple(assignments.shape)}"
        )


def cluster_sums(features: Tensor, assignments: Tensor, num_clusters: int) -> Tuple[Tensor, Tensor]:
    """Per-cluster feature sums and total weights.

    Args:
        features: ``(N, d)`` floating-point tensor (normalise it first for Eq. 6).
        assignments: ``(N,)`` integer labels in ``[0, num_clusters)`` or
            ``(N, num_clusters)`` non-negative floating-point weights.
        num_clusters: ``K >= 1``.

    Returns:
        ``(sums, counts)``: ``sums`` ``(K, d)`` with ``sums[k] = sum_i p(k|x_i) features[i]``
        and ``counts`` ``(K,)`` the total weight of each cluster, both in the
        dtype of ``features``. Differentiable in ``features`` (and soft weights).

    Example:
        >>> import torch
        >>> sums, counts = cluster_sums(torch.eye(3), torch.tensor([0, 0, 2]), 3)
        >>> sums
        tensor([[1., 1., 0.],
                [0., 0., 0.],
                [0., 0., 1.]])
        >>> counts
        tensor([2., 0., 1.])
    """
    num_clusters = check_int("num_clusters", num_clusters, minimum=1)
    check_tensor("features", features, ndim=2, floating=True)
    check_assignments(assignments, features.shape[0], num_clusters)
    return cluster_sums_unchecked(features, assignments, num_clusters)


def normalize_prototypes(sums: Tensor) -> Tensor:
    """Prototypes from per-cluster sums: ``mu_k = sums_k / ||sums_k||`` (Eq. 6, 7).

    Empty clusters (zero sums) give zero prototypes, never NaN.

    Args:
        sums: ``(K, d)`` floating-point tensor from :func:`cluster_sums`.

    Returns:
        ``(K, d)`` prototypes, unit norm for every non-zero sum.

    Example:
        >>> import torch
        >>> normalize_prototypes(torch.tensor([[2.0, 0.0], [0.0, 0.0]]))
        tensor([[1., 0.],
                [0., 0.]])
    """
    check_tensor("sums", sums, ndim=2, floating=True)
    return normalize_features(sums)


def compute_prototypes(features: Tensor, assignments: Tensor, num_clusters: int) -> Tensor:
    """Normalised cluster prototypes of (unnormalised) features, Eq. 6/7.

    Features are L2-normalised per row, summed per cluster with the weights
    ``p(k|x)`` and the sums L2-normalised.

    Args:
        features: ``(N, d)`` floating-point tensor, e.g. projector outputs.
        assignments: ``(N,)`` integer labels in ``[0, num_clusters)`` or
            ``(N, num_clusters)`` non-negative weights.
        num_clusters: ``K >= 1``.

    Returns:
        ``(K, d)`` prototypes in the dtype of ``features``; rows of empty
        clusters are zero.

    Example:
        >>> import torch
        >>> compute_prototypes(torch.tensor([[2.0, 0.0], [0.0, 5.0]]), torch.tensor([1, 1]), 2)
        tensor([[0.0000, 0.0000],
                [0.7071, 0.7071]])
    """
    num_clusters = check_int("num_clusters", num_clusters, minimum=1)
    check_tensor("features", features, ndim=2, floating=True)
    check_assignments(assignments, features.shape[0], num_clusters)
    z = normalize_features(features)
    if assignments.dim() == 2:
        # Prototypes do not depend on a common scale of the weights; extreme ones would overflow the sums.
        assignments = rescale_weights(assignments, weight_scale(assignments), z.dtype)
    sums, _ = cluster_sums_unchecked(z, assignments, num_clusters)
    return normalize_features(sums)
