"""Representation and clustering diagnostics for monitoring training.

* :func:`cluster_size_stats`: sizes of the clusters of a labeling, empty
  clusters, imbalance and entropy of the size distribution (a collapsing
  E-step shows up as a few huge clusters and many empty ones).
* :func:`alignment` and :func:`uniformity`: the two measures of Wang & Isola,
  "Understanding Contrastive Representation Learning through Alignment and
  Uniformity on the Hypersphere" (ICML 2020), on L2-normalised features:

      alignment  = E_i ||z1_i - z2_i||^alpha
      uniformity = log E_{i<j} exp(-t ||z_i - z_j||^2)

  Lower is better for both; uniformity ranges from ``-4t`` (impossible
  ideal) to 0 (every feature equal, i.e. collapse).
* :func:`representation_diagnostics`: all of the above in one dictionary,
  plus the mean feature norm and the per-dimension standard deviation of the
  normalised features (``~1/sqrt(d)`` when healthy, 0 when collapsed).

Tensors in (any device, any floating dtype), Python numbers out. Half and
bfloat16 inputs are computed in float32, float64 inputs in float64.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Union

import numpy as np
import torch
from torch import Tensor

from propos_losses._deprecation import deprecated_alias
from propos_losses._numerics import compute_dtype
from propos_losses._validation import (
    as_label_array,
    check_finite,
    check_float,
    check_int,
    check_label_range,
    check_tensor,
)
from propos_losses.metrics import LabelsLike
from propos_losses.prototypes import normalize_features

__all__ = [
    "cluster_size_stats",
    "wang_isola_alignment",
    "wang_isola_uniformity",
    "alignment",
    "uniformity",
    "representation_diagnostics",
]

#: Rows per block of the pairwise computation of :func:`uniformity`: a block
#: holds ``chunk_size**2`` distances (16 MiB in float32 for 2048).
DEFAULT_CHUNK_SIZE = 2048


def cluster_size_stats(
    labels: LabelsLike, num_clusters: Optional[int] = None
) -> Dict[str, Union[int, float, List[int]]]:
    """Sizes of the clusters of a labeling and how unbalanced they are.

    Args:
        labels: ``(N,)`` integer cluster labels (numpy, list or torch tensor on
            any device).
        num_clusters: ``K``. When given, labels must lie in ``[0, K)`` and
            clusters that received no sample are counted as empty; when
            ``None``, the clusters are the distinct labels present (so none is
            empty), in increasing label order.

    Returns:
        A dict with

        * ``"sizes"``: list of ``K`` ints (cluster ``k`` first when
          ``num_clusters`` is given);
        * ``"num_clusters"``, ``"num_empty"``: ``K`` and the number of
          clusters of size 0;
        * ``"min"``, ``"max"``: smallest (0 if any is empty) and largest size;
        * ``"imbalance_ratio"``: largest / smallest size over the non-empty
          clusters (1.0 when balanced);
        * ``"entropy"``: entropy in nats of the size distribution
          ``sizes / N``;
        * ``"normalized_entropy"``: entropy / log K, in ``[0, 1]``, 1 for
          perfectly balanced clusters (1.0 by convention when ``K == 1``).

    Raises:
        TypeError: non-integer labels or ``num_clusters``.
        ValueError: empty or non-1-D labels, ``num_clusters < 1``, labels
            outside ``[0, num_clusters)``.

    Example:
        >>> stats = cluster_size_stats([0, 0, 0, 2], num_clusters=4)
        >>> stats["sizes"], stats["num_empty"], stats["imbalance_ratio"]
        ([3, 0, 1, 0], 2, 3.0)
    """
    array = as_label_array("labels", labels)
    if num_clusters is None:
        _, sizes = np.unique(array, return_counts=True)
    else:
        num_clusters = check_int("num_clusters", num_clusters, minimum=1)
        check_label_range("labels", int(array.min()), int(array.max()), num_clusters)
        sizes = np.bincount(array.astype(np.int64, copy=False), minlength=num_clusters)
    sizes = sizes.astype(np.int64)
    nonempty = sizes[sizes > 0]
    fractions = nonempty / nonempty.sum()
    entropy = float(-np.sum(fractions * np.log(fractions)))
    k = int(sizes.size)
    return {
        "sizes": sizes.tolist(),
        "num_clusters": k,
        "num_empty": int(k - nonempty.size),
        "min": int(sizes.min()),
        "max": int(sizes.max()),
        "imbalance_ratio": float(nonempty.max() / nonempty.min()),
        "entropy": entropy,
        "normalized_entropy": entropy / math.log(k) if k > 1 else 1.0,
    }


def _check_features(name: str, features: object) -> Tensor:
    tensor = check_tensor(name, features, ndim=2, floating=True)
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (N, d) tensor, got shape {tuple(tensor.shape)}")
    check_finite(name, tensor)
    return tensor


def wang_isola_alignment(z1: Tensor, z2: Tensor, alpha: float = 2.0) -> float:
    """Wang & Isola's alignment of positive pairs, ``mean_i ||z1_i - z2_i||^alpha``.

    Rows are L2-normalised first (all-zero rows stay zero), so for
    ``alpha = 2`` the value is ``2 - 2 mean_i cos(z1_i, z2_i)`` in ``[0, 4]``.
    Memory and time are ``O(N d)``.

    Args:
        z1: ``(N, d)`` floating features of the first views.
        z2: ``(N, d)`` floating features of the matching second views (same
            device and shape).
        alpha: exponent ``alpha > 0`` (Wang & Isola use 2).

    Returns:
        The alignment as a Python float (lower is better).

    Raises:
        TypeError: non-tensor or non-floating input, non-real ``alpha``.
        ValueError: shapes differ or are not ``(N, d)`` with ``N, d >= 1``,
            non-finite values, ``alpha <= 0``.

    Example:
        >>> z = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
        >>> wang_isola_alignment(z, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
        1.0
    """
    z1 = _check_features("z1", z1)
    z2 = _check_features("z2", z2)
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    alpha = check_float("alpha", alpha, minimum=0.0, strict_minimum=True)
    x = normalize_features(z1.detach().to(compute_dtype(z1.dtype)))
    y = normalize_features(z2.detach().to(compute_dtype(z2.dtype))).to(x.dtype)
    squared = (x - y).pow(2).sum(dim=1)
    distances = squared if alpha == 2.0 else squared.sqrt().pow(alpha)
    return float(distances.to(torch.float64).mean())


def wang_isola_uniformity(z: Tensor, t: float = 2.0, chunk_size: int = DEFAULT_CHUNK_SIZE) -> float:
    """Wang & Isola's uniformity, ``log mean_{i<j} exp(-t ||z_i - z_j||^2)`` over distinct pairs.

    Rows are L2-normalised first (all-zero rows stay zero). The ``N (N - 1) / 2``
    pairs are processed in ``chunk_size x chunk_size`` blocks (upper-triangular
    blocks only), each reduced to a log-sum-exp and combined in float64, so
    memory is ``O(chunk_size^2 + N d)`` whatever ``N``; time is ``O(N^2 d)``,
    so subsample very large sets (e.g. through
    :func:`representation_diagnostics`' ``max_samples``). This equals
    ``torch.pdist(z, p=2).pow(2).mul(-t).exp().mean().log()`` of Wang & Isola
    without materialising the pdist vector.

    Args:
        z: ``(N, d)`` floating features, ``N >= 2``.
        t: temperature ``t > 0`` (Wang & Isola use 2).
        chunk_size: rows per block, ``>= 1``.

    Returns:
        The uniformity as a Python float in ``[-4 t, 0]`` (lower is more
        uniform).

    Raises:
        TypeError: non-tensor or non-floating ``z``, non-real ``t``,
            non-int ``chunk_size``.
        ValueError: ``z`` not ``(N, d)`` with ``N >= 2``, non-finite values,
            ``t <= 0``, ``chunk_size < 1``.

    Example:
        >>> z = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
        >>> wang_isola_uniformity(z)  # one pair at squared distance 4: log exp(-8)
        -8.0
    """
    z = _check_features("z", z)
    if z.shape[0] < 2:
        raise ValueError(f"z must have at least 2 rows to form a pair, got shape {tuple(z.shape)}")
    t = check_float("t", t, minimum=0.0, strict_minimum=True)
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    x = normalize_features(z.detach().to(compute_dtype(z.dtype)))
    squared_norms = x.pow(2).sum(dim=1)
    n = x.shape[0]
    block_lse: List[Tensor] = []
    for i0 in range(0, n, chunk_size):
        rows = x[i0 : i0 + chunk_size]
        for j0 in range(i0, n, chunk_size):
            cols = x[j0 : j0 + chunk_size]
            # ||x_i - x_j||^2 = |x_i|^2 + |x_j|^2 - 2 x_i.x_j (norms are 1 or 0);
            # clamped at 0 against rounding of nearly equal rows.
            squared = (
                squared_norms[i0 : i0 + rows.shape[0], None]
                + squared_norms[None, j0 : j0 + cols.shape[0]]
                - 2.0 * rows @ cols.T
            ).clamp_min(0.0)
            logits = -t * squared
            if i0 == j0:
                # Diagonal block: only pairs i < j.
                upper = torch.ones_like(logits, dtype=torch.bool).triu(diagonal=1)
                logits = logits[upper]
                if logits.numel() == 0:
                    continue
            block_lse.append(torch.logsumexp(logits.reshape(-1), dim=0).to(torch.float64))
    total = torch.logsumexp(torch.stack(block_lse), dim=0)
    num_pairs = n * (n - 1) / 2
    return float(total) - math.log(num_pairs)


def representation_diagnostics(
    z1: Tensor,
    z2: Optional[Tensor] = None,
    labels: Optional[LabelsLike] = None,
    num_clusters: Optional[int] = None,
    *,
    alpha: float = 2.0,
    t: float = 2.0,
    max_samples: Optional[int] = None,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Dict[str, Union[int, float, List[int]]]:
    """Uniformity, alignment, collapse indicators and cluster sizes in one dict.

    Args:
        z1: ``(N, d)`` floating features (e.g. the target projector outputs).
        z2: optional ``(N, d)`` features of the second views; adds
            ``"alignment"``.
        labels: optional ``(N,)`` integer cluster labels; adds the entries of
            :func:`cluster_size_stats` prefixed with ``"cluster_"``.
        num_clusters: ``K`` for :func:`cluster_size_stats`.
        alpha: exponent of :func:`alignment`.
        t: temperature of :func:`uniformity`.
        max_samples: when set and ``N > max_samples``, uniformity is computed
            on a random subset of ``max_samples`` rows (its cost is
            ``O(N^2 d)``); the subset is drawn with a CPU generator seeded by
            ``seed`` so results are reproducible.
        seed: seed of that subset.
        chunk_size: block size of :func:`uniformity`.

    Returns:
        ``{"uniformity", "feature_norm_mean", "feature_std_mean"}`` (the mean
        L2 norm of the raw rows, and the mean over dimensions of the standard
        deviation of the normalised rows: about ``1/sqrt(d)`` when healthy, 0
        when collapsed), plus ``"alignment"`` and ``"cluster_*"`` when
        ``z2`` / ``labels`` are given.

    Raises:
        TypeError, ValueError: as the functions it calls; ``labels`` of a
            length other than ``N``; ``max_samples < 2``.

    Example:
        >>> z = torch.eye(3)
        >>> out = representation_diagnostics(z, z, labels=[0, 0, 1])
        >>> round(out["uniformity"], 4), out["alignment"], out["cluster_sizes"]
        (-4.0, 0.0, [2, 1])
    """
    z1 = _check_features("z1", z1)
    if z2 is not None:
        z2 = _check_features("z2", z2)
    if max_samples is not None:
        max_samples = check_int("max_samples", max_samples, minimum=2)
    seed = check_int("seed", seed)
    label_array = None
    if labels is not None:
        label_array = as_label_array("labels", labels)
        if label_array.size != z1.shape[0]:
            raise ValueError(f"labels must have one entry per row of z1 ({z1.shape[0]}), got {label_array.size}")

    subset = z1
    if max_samples is not None and z1.shape[0] > max_samples:
        generator = torch.Generator().manual_seed(seed)
        index = torch.randperm(z1.shape[0], generator=generator)[:max_samples].to(z1.device)
        subset = z1.index_select(0, index)
    normalized = normalize_features(z1.detach().to(compute_dtype(z1.dtype)))
    result: Dict[str, Union[int, float, List[int]]] = {
        "uniformity": wang_isola_uniformity(subset, t=t, chunk_size=chunk_size),
        "feature_norm_mean": float(torch.linalg.vector_norm(z1.detach().to(normalized.dtype), dim=1).mean()),
        "feature_std_mean": float(normalized.std(dim=0, correction=0).mean()) if z1.shape[0] > 1 else 0.0,
    }
    if z2 is not None:
        result["alignment"] = wang_isola_alignment(z1, z2, alpha=alpha)
    if label_array is not None:
        stats = cluster_size_stats(label_array, num_clusters=num_clusters)
        result.update({f"cluster_{key}": value for key, value in stats.items()})
    return result


alignment = deprecated_alias(
    wang_isola_alignment,
    "alignment",
    why="Renamed so that it cannot be confused with the Eq. 5 ``alignment`` term of "
    ":class:`~propos_losses.psl.PSLTerms`.",
    example="alignment(torch.eye(2), torch.eye(2))",
    result="0.0",
)
uniformity = deprecated_alias(
    wang_isola_uniformity,
    "uniformity",
    why="Renamed so that it cannot be confused with the Eq. 5 ``uniformity`` term of "
    ":class:`~propos_losses.psl.PSLTerms`.",
    example="round(uniformity(torch.eye(2)), 4)",
    result="-4.0",
)
