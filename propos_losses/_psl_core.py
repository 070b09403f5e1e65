"""The unchecked core of the prototype scattering loss: Eq. 4 from per-cluster sums, with static shapes.

:mod:`propos_losses.psl` checks the inputs of its public entry points once
(:mod:`propos_losses._psl_checks`) and calls :func:`psl_core`; nothing here
validates anything. See :mod:`propos_losses.psl` for the numerics and the
distributed contract.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from propos_losses._numerics import compute_dtype, no_autocast
from propos_losses.distributed import all_reduce_max_, all_reduce_sum, all_reduce_sum_, is_distributed
from propos_losses.prototypes import (
    cluster_sums_only,
    cluster_sums_unchecked,
    normalize_features,
    rescale_weights,
    weight_scale,
)
from propos_losses.queue import PrototypeQueue

__all__ = [
    "PSLTerms",
    "Scores",
    "QueueSource",
    "scattering_scores",
    "psl_core",
    "present_clusters",
    "tensor_queue_sums",
    "buffer_queue_sums",
]


class PSLTerms(NamedTuple):
    """The loss and its Eq. 5 terms, all 0-d tensors identical on every rank.

    ``uniformity`` is defined as ``0`` when fewer than two clusters are
    non-empty (no negatives, nothing to repel; the log of the empty sum would
    be ``-inf``), with a zero gradient; the loss is then exactly 0 as well.

    Example:
        >>> import torch
        >>> online = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> from propos_losses import prototype_scattering_terms
        >>> terms = prototype_scattering_terms(online, online, torch.tensor([0, 2]), 3)
        >>> round(terms.alignment.item(), 4), round(terms.uniformity.item(), 4), int(terms.num_active)
        (-2.0, 0.0, 2)
    """

    #: ``L_psl`` (Eq. 4), floating point.
    loss: Tensor
    #: ``mean_{k in A} -mu_k.mu'_k / tau`` (Eq. 5).
    alignment: Tensor
    #: ``mean_{k in A} log sum_{j in A, j != k} exp(mu_k.mu_j / tau)`` (Eq. 5); ``0`` when ``|A| < 2``.
    uniformity: Tensor
    #: ``|A|``, the number of non-empty clusters (int64).
    num_active: Tensor


class Scores(NamedTuple):
    """One evaluation of Eq. 4: the loss and what the Eq. 5 terms are read from (all ``K`` clusters)."""

    loss: Tensor
    #: ``(K,)`` ``mu_k.mu'_k / tau`` (0 for empty clusters).
    positive: Tensor
    #: ``(K, K)`` row ``k``: ``mu_k.mu'_k / tau`` on the diagonal, ``mu_k.mu_j / tau`` at non-empty
    #: ``j != k``, ``-inf`` at empty ``j != k``.
    logits: Tensor
    #: ``(K,)`` bool, the non-empty clusters ``A``.
    active: Tensor
    #: ``max(|A|, 1)`` in the compute dtype.
    rows: Tensor
    #: ``|A|`` (int64).
    num_active: Tensor

    def detach(self) -> "Scores":
        return Scores(*(t.detach() for t in self))

    def terms(self) -> PSLTerms:
        """:class:`PSLTerms` (attached to the graph when the scores are)."""
        positive, logits, active, rows = self.positive, self.logits, self.active, self.rows
        alignment = torch.where(active, -positive, 0.0).sum() / rows
        eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
        # Rows without any negative (empty clusters, or |A| < 2) would give log(0) = -inf, whose backward
        # is NaN even when masked afterwards: feed them zeros, then drop them. Their uniformity is 0 by
        # convention (nothing to repel), attached to the graph with zero gradient.
        has_negative = active & (self.num_active >= 2)
        negative = torch.where(has_negative[:, None], logits.masked_fill(eye, float("-inf")), 0.0)
        uniformity = torch.where(has_negative, torch.logsumexp(negative, dim=1), 0.0).sum() / rows
        return PSLTerms(self.loss, alignment, uniformity, self.num_active)


def scattering_scores(
    online_sums: Tensor, target_sums: Tensor, counts: Tensor, temperature: float, select: bool = False
) -> Scores:
    """Eq. 4 from global per-cluster sums ``(K, d)`` and total weights ``(K,)``, with static shapes.

    ``select=True`` first keeps only the non-empty clusters (one host sync,
    which the value checks pay anyway), so the similarity matrix is
    ``|A| x |A|`` rather than ``K x K``: far less work when ``K`` is much larger
    than the batch. Both give the same values (to rounding).

    All ``K`` clusters are computed; the empty ones are masked out exactly:
    ``-inf`` logits (``exp(-inf) == 0``) as negatives of every other row, and
    zero weight in the averages over ``A``. Nothing reads a value back to the
    host. With no non-empty cluster at all (which validation rules out) the
    averages are over zero rows and give 0. The Eq. 5 terms are left to
    :meth:`Scores.terms` (a training step needs the loss alone).
    """
    if select:
        chosen = (counts > 0).nonzero().squeeze(1)
        online_sums, target_sums, counts = (t.index_select(0, chosen) for t in (online_sums, target_sums, counts))
    active = counts > 0  # (K,) mask of A
    num_active = active.sum()  # |A|, a 0-d int64 tensor
    rows = num_active.clamp_min(1).to(online_sums.dtype)
    mu = normalize_features(online_sums)  # empty clusters: zero rows, zero gradient
    scaled = mu / temperature
    positive = (scaled * normalize_features(target_sums)).sum(dim=1)  # (K,)
    # One (K, K) table per row k: the positive on the diagonal (never -inf, so every row's log-sum-exp
    # and its gradient are finite; a lone cluster: log_partition == positive) and the negatives off it,
    # -inf at empty columns: removed exactly. The diagonal replaces the self-similarity, which is no
    # negative. Empty rows are dropped from the average below.
    eye = torch.eye(mu.shape[0], dtype=torch.bool, device=mu.device)
    logits = torch.where(eye, positive[:, None], (scaled @ mu.t()).masked_fill(~active, float("-inf")))
    loss = torch.where(active, torch.logsumexp(logits, dim=1) - positive, 0.0).sum() / rows
    return Scores(loss, positive, logits, active, rows, num_active)


QueueSource = Callable[[torch.dtype], Tuple[Tensor, Tensor]]


def psl_core(
    online: Tensor,
    target: Tensor,
    assignments: Tensor,
    num_clusters: int,
    temperature: float,
    queue_sums: Optional[QueueSource],
    validate_args: bool = True,
) -> Tuple[Scores, Tensor]:
    """Unchecked core; returns the scores and the normalised, detached target features ``(B, d)``.

    ``queue_sums(dtype)`` gives the per-cluster sums ``(K, d)`` and counts ``(K,)``
    of the queue's (normalised) features, without gradient.
    """
    dtype = compute_dtype(online.dtype)
    with no_autocast(online.device):
        z_online = normalize_features(online.to(dtype))
        z_target = normalize_features(target.detach().to(dtype))
        # Pseudo-labels are constants: like the target side, they receive no gradient.
        assignments = assignments.detach()
        if assignments.dim() == 2:
            # Exact rescaling by the largest weight (the prototypes do not depend on a common scale)
            # before the cast; the global maximum, so that every rank keeps the same relative weights.
            scale = all_reduce_max_(weight_scale(assignments))
            assignments = rescale_weights(assignments, scale, dtype)
        online_sums, counts = cluster_sums_unchecked(z_online, assignments, num_clusters)
        target_sums = cluster_sums_only(z_target, assignments, num_clusters)
        # Differentiable all-reduce for the online side (its backward sums gradients over ranks);
        # one gradient-free all-reduce for target sums and counts together.
        distributed = is_distributed()
        if distributed:
            online_sums = all_reduce_sum(online_sums)
            statistics = all_reduce_sum_(torch.cat([target_sums, counts[:, None]], dim=1))
            target_sums, counts = statistics[:, :-1], statistics[:, -1]
        if validate_args and distributed and not bool((counts > 0).any()):
            # The counts are global, so every rank takes this branch together (no rank is left in a collective).
            raise ValueError(
                "assignments give zero total weight over all ranks (every local batch is empty or has "
                "all-zero weights): no sample is assigned to any cluster"
            )
        if queue_sums is not None:
            # The queue is identical on every rank: add it after the all-reduce, or it counts world_size times.
            extra_sums, extra_counts = queue_sums(dtype)
            online_sums = online_sums + extra_sums
            target_sums = target_sums + extra_sums
            counts = counts + extra_counts
        if (
            not validate_args
            and queue_sums is None
            and assignments.dim() == 1
            and assignments.shape[0] < num_clusters
            and not distributed
        ):
            # Fast path, K above the batch: only the batch's own labels can be non-empty, so keep B slots
            # (each present cluster once, duplicates pointing at an all-zero row) instead of all K rows.
            slots = present_clusters(assignments, num_clusters)
            online_sums, target_sums, counts = (
                torch.cat([t, t.new_zeros((1,) + t.shape[1:])]).index_select(0, slots)
                for t in (online_sums, target_sums, counts)
            )
        # The checked path reads values back anyway: selecting the non-empty clusters then costs nothing
        # extra and shrinks the K x K similarities to |A| x |A|. The fast path stays sync-free.
        scores = scattering_scores(online_sums, target_sums, counts, temperature, select=validate_args)
    return scores, z_target


def present_clusters(labels: Tensor, num_clusters: int) -> Tensor:
    """``(B,)`` slots with static shape: each cluster present in ``labels`` once, the other slots ``K``.

    Sorted labels, keeping the first of each run; row ``K`` of the padded sums is all zero (an empty
    cluster, masked out by the loss), so the slots give exactly the clusters of the batch.
    """
    ordered = torch.sort(labels.long()).values
    first = torch.cat([torch.ones(1, dtype=torch.bool, device=ordered.device), ordered[1:] != ordered[:-1]])
    return torch.where(first, ordered, num_clusters)


def tensor_queue_sums(queue_features: Tensor, queue_labels: Tensor, num_clusters: int) -> QueueSource:
    """Queue sums of user-given features (normalised here) and labels."""

    def sums(dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
        return cluster_sums_unchecked(normalize_features(queue_features.detach().to(dtype)), queue_labels, num_clusters)

    return sums


def buffer_queue_sums(queue: PrototypeQueue, num_clusters: int) -> QueueSource:
    """Queue sums read straight from the queue's buffers (:meth:`PrototypeQueue.cluster_sums`, unchecked)."""

    def sums(dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
        return queue.unchecked_cluster_sums(num_clusters, dtype)

    return sums
