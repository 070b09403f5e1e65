"""The kernels of the k-means: chunked assignment passes, cluster sums, inertias and empty-cluster re-seeding.

Every function works on :class:`~propos_losses.kmeans._rows.Rows` (dense or CSR) and all-reduces what it sums
over the ranks of ``torch.distributed`` (a no-op in a single process).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from propos_losses.distributed import all_gather_cat, all_reduce_sum_, get_rank
from propos_losses.kmeans._rows import DenseRows, Rows

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "chunk_rows",
    "within_chunk_budget",
    "sum_rows_by_label",
    "lloyd_pass",
    "inertia_per_restart",
    "assign",
    "reseed_empty_",
    "normalise_centers",
    "final_labels",
]

#: Memory budget (bytes) of one chunk of similarities when ``chunk_size`` is
#: ``None``: rows per chunk = budget / (R * K * itemsize).
DEFAULT_CHUNK_BYTES: int = 256 * 2**20

#: Up to this many centres (R * K) the centre sums use a one-hot matrix multiply,
#: above it ``index_add_`` (whose cost does not grow with K); measured on CPU.
_ONE_HOT_MAX_WIDTH: int = 128


def chunk_rows(n_rows: int, width: int, itemsize: int, chunk_size: Optional[int]) -> int:
    """Rows per chunk: the user's ``chunk_size`` or what fits in :data:`DEFAULT_CHUNK_BYTES`."""
    if chunk_size is not None:
        return max(1, chunk_size)
    return max(1, min(max(n_rows, 1), DEFAULT_CHUNK_BYTES // max(1, width * itemsize)))


def within_chunk_budget(n_bytes: int) -> bool:
    """Whether ``n_bytes`` of working memory (e.g. per-row bounds) fit in :data:`DEFAULT_CHUNK_BYTES`.

    The one place the other modules read the budget, so that changing it here changes it everywhere.
    """
    return n_bytes <= DEFAULT_CHUNK_BYTES


def sum_rows_by_label(rows: Rows, flat_labels: Tensor, width: int, out: Tensor) -> None:
    """``out[j] += sum of w_i * rows[i] over (i, r) with flat_labels[i, r] == j``; ``flat_labels`` ``(n, R)``."""
    if isinstance(rows, DenseRows) and width <= _ONE_HOT_MAX_WIDTH:
        # Few centres: a one-hot matrix multiply beats R scattered index_add_ passes.
        ones = rows.X.new_ones(1, 1) if rows.weight is None else rows.weight.unsqueeze(1)
        one_hot = rows.X.new_zeros(rows.n, width).scatter_(1, flat_labels, ones.expand_as(flat_labels))
        out.addmm_(one_hot.t(), rows.X)
    else:
        for r in range(flat_labels.shape[1]):
            rows.add_to(out, flat_labels[:, r])


def lloyd_pass(
    X: Rows, centers: Tensor, labels: Tensor, active: Tensor, full: bool, chunk_size: Optional[int]
) -> Tuple[Tensor, Tensor, Tensor, int]:
    """One assignment pass for the ``R_a`` active restarts; updates ``labels`` in place.

    Args:
        X: ``(N, d)`` unit rows.
        centers: ``(R_a, K, d)`` unit centres of the active restarts.
        labels: ``(N, R)`` int64 current labels of every restart (columns
            ``active`` are read and overwritten).
        active: ``(R_a,)`` indices of the active restarts.
        full: compute the cluster sums from scratch (first pass) instead of
            the change caused by the rows that switched cluster. After the
            first iterations few rows switch, so the incremental update costs
            a small fraction of a full pass.

    Returns:
        ``(R_a, K, d)`` float64 (weighted) sums (``full``) or their change,
        ``(R_a, K)`` counts or their change, the ``(R_a,)`` float64 inertia
        and the number of (row, restart) labels that changed, all summed over
        ranks.
    """
    Ra, K, d = centers.shape
    N = X.n
    device = X.device
    flat_centers = centers.reshape(Ra * K, d)
    inertia = torch.zeros(Ra, dtype=torch.float64, device=device)
    # A change of one pass is small, so it is summed in the data's dtype and
    # only then added to the float64 running sums of the caller.
    sums = torch.zeros(Ra * K, d, dtype=X.dtype, device=device)
    counts = torch.zeros(Ra * K, dtype=torch.long, device=device)
    switched = torch.zeros((), dtype=torch.long, device=device)
    offsets = torch.arange(Ra, device=device) * K
    step = chunk_rows(N, Ra * K, X.element_size(), chunk_size)
    for start in range(0, N, step):
        rows = X.span(start, start + step)
        sims = rows.mm_t(flat_centers).view(rows.n, Ra, K)
        best, new = sims.max(dim=2)  # (n, R_a)
        # sum_i w_i (1 - cos) = W - sum_i w_i cos, in float64 so that the history is exact enough to be monotone
        inertia += rows.total_weight() - rows.weighted(best)
        new_flat = new + offsets  # row index into (R_a * K, d)
        old = labels[start : start + step, active]
        changed = new != old
        switched += changed.sum()
        if full:
            sum_rows_by_label(rows, new_flat, Ra * K, sums)
            counts += torch.bincount(new_flat.reshape(-1), minlength=Ra * K)
        else:
            row, restart = torch.nonzero(changed).unbind(1)
            if row.numel():
                moved = rows.take(row)
                into = new_flat[row, restart]
                out_of = old[row, restart] + offsets[restart]
                moved.add_to(sums, into)
                moved.add_to(sums, out_of, alpha=-1)
                counts += torch.bincount(into, minlength=Ra * K) - torch.bincount(out_of, minlength=Ra * K)
        labels[start : start + step, active] = new
    sums64 = sums.to(torch.float64)
    all_reduce_sum_(sums64)
    all_reduce_sum_(counts)
    all_reduce_sum_(inertia).clamp_min_(0)  # rounding: cos can exceed 1 by an ulp
    all_reduce_sum_(switched)
    return sums64.view(Ra, K, d), counts.view(Ra, K), inertia, int(switched)


def inertia_per_restart(X: Rows, centers: Tensor, chunk_size: Optional[int]) -> Tensor:
    """``(R,)`` float64 (weighted) inertia of each restart's ``(R, K, d)`` centres, summed over ranks."""
    R, K, d = centers.shape
    flat_centers = centers.reshape(R * K, d)
    inertia = torch.zeros(R, dtype=torch.float64, device=X.device)
    step = chunk_rows(X.n, R * K, X.element_size(), chunk_size)
    for start in range(0, X.n, step):
        rows = X.span(start, start + step)
        best = rows.mm_t(flat_centers).view(rows.n, R, K).amax(dim=2)
        inertia += rows.total_weight() - rows.weighted(best)
    return all_reduce_sum_(inertia).clamp_min_(0)  # rounding: cos can exceed 1 by an ulp


def assign(X: Rows, centers: Tensor, chunk_size: Optional[int]) -> Tuple[Tensor, Tensor]:
    """Labels ``(N,)`` int64 and (unweighted) cosine distances ``(N,)`` of the rows to ``(K, d)`` centres."""
    N = X.n
    K = centers.shape[0]
    labels = torch.empty(N, dtype=torch.long, device=X.device)
    dist = torch.empty(N, dtype=X.dtype, device=X.device)
    step = chunk_rows(N, K, X.element_size(), chunk_size)
    for start in range(0, N, step):
        best, lab = X.span(start, start + step).mm_t(centers).max(dim=1)
        labels[start : start + step] = lab
        # A row on its centre can give cos = 1 + ulp: distances never go below 0.
        dist[start : start + step] = torch.rsub(best, 1).clamp_min_(0)
    return labels, dist


class _Reseed(NamedTuple):
    rows: Tensor  # (m, d) the chosen rows, identical on every rank
    donors: Tensor  # (m,) the clusters they leave
    local_index: Tensor  # (j,) indices of the chosen rows that live on this rank
    local_slot: Tensor  # (j,) their position among the m chosen rows
    max_dist: float  # largest 1 - cos of a chosen row to its old centre (-1 when none was found)


def _pick_reseed_points(X: Rows, dist: Tensor, labels: Tensor, counts: Tensor, n_empty: int) -> _Reseed:
    """Distinct rows worst served by their centre, never emptying a cluster.

    Scans the rows by decreasing ``dist`` (over all ranks) and keeps a row only
    if its cluster retains at least one member (``counts`` are global) and it
    may become a centre (not a zero row, positive weight). Such a scan skips at
    most one row per cluster, so the top ``n_empty + K`` rows of each rank
    contain the rows it selects; fewer than ``n_empty`` rows are returned only
    when fewer rows may become centres.

    Args:
        X: ``(N, d)`` this rank's unit rows; ``dist``, ``labels``: ``(N,)``.
        counts: ``(K,)`` global cluster sizes.
        n_empty: number of rows to pick.
    """
    K = counts.shape[0]
    take = min(X.n, n_empty + K)
    if X.pick is not None:
        dist = torch.where(X.pick, dist, torch.full_like(dist, -1.0))  # never chosen
    top = torch.topk(dist, take, largest=True, sorted=True).indices
    pool_dist = all_gather_cat(dist[top])
    pool_labels = all_gather_cat(labels[top])
    pool_rows = all_gather_cat(X.take(top).to_dense())
    pool_index = all_gather_cat(top)
    pool_rank = all_gather_cat(torch.full_like(top, get_rank()))
    order = torch.argsort(pool_dist, descending=True, stable=True)
    ordered_labels = pool_labels[order]
    # Position of each candidate among the candidates of its own cluster, in scan order.
    by_cluster = torch.argsort(ordered_labels, stable=True)
    per_cluster = torch.bincount(ordered_labels, minlength=K)
    starts = torch.cumsum(per_cluster, 0) - per_cluster
    position = torch.empty_like(by_cluster)
    position[by_cluster] = torch.arange(by_cluster.numel(), device=X.device) - starts[ordered_labels[by_cluster]]
    eligible = (position < counts[ordered_labels] - 1) & (pool_dist[order] >= 0)
    chosen = order[eligible][:n_empty]
    mine = pool_rank[chosen] == get_rank()
    return _Reseed(
        rows=pool_rows[chosen],
        donors=pool_labels[chosen],
        local_index=pool_index[chosen][mine],
        local_slot=torch.nonzero(mine).flatten(),
        max_dist=float(pool_dist[chosen].max()) if chosen.numel() else -1.0,
    )


def reseed_empty_(
    X: Rows, centers: Tensor, sums: Tensor, counts: Tensor, labels: Tensor, chunk_size: Optional[int]
) -> None:
    """Re-seed the empty clusters of every restart in place.

    Args:
        centers: ``(R_a, K, d)`` centres the current labels were computed with.
        sums: ``(R_a, K, d)`` float64 cluster sums, ``counts``: ``(R_a, K)``.
        labels: ``(N, R_a)`` labels of these restarts (a copy, which the
            caller writes back).

    The labels of an affected restart are recomputed with its own centres
    and its sums and counts rebuilt from them, because the batched pass may
    break exact ties (duplicated rows or centres) differently.
    """
    K, d = centers.shape[1:]
    empty_restarts = torch.nonzero((counts == 0).any(dim=1)).flatten().tolist()
    for r in empty_restarts:  # rare: a Python loop over the affected restarts only
        assigned, dist = assign(X, centers[r], chunk_size)
        counts_r = all_reduce_sum_(torch.bincount(assigned, minlength=K))
        empty = torch.nonzero(counts_r == 0).flatten()
        if empty.numel():
            pick = _pick_reseed_points(X, dist, assigned, counts_r, empty.numel())
            assigned[pick.local_index] = empty[pick.local_slot]
            counts_r = all_reduce_sum_(torch.bincount(assigned, minlength=K))
        sums_r = torch.zeros(K, d, dtype=torch.float64, device=X.device)
        step = chunk_rows(X.n, K, X.element_size(), chunk_size)
        for start in range(0, X.n, step):
            X.span(start, start + step).add_to(sums_r, assigned[start : start + step])
        sums[r] = all_reduce_sum_(sums_r)
        counts[r] = counts_r
        labels[:, r] = assigned


def normalise_centers(sums: Tensor, previous: Tensor) -> Tensor:
    """Unit centres from sums; a cluster whose sum vanishes keeps its centre (every direction is optimal)."""
    norms = torch.linalg.vector_norm(sums, dim=-1, keepdim=True)
    ok = norms > torch.finfo(sums.dtype).tiny
    return torch.where(ok, sums / norms.clamp_min(torch.finfo(sums.dtype).tiny), previous)


def final_labels(X: Rows, centers: Tensor, chunk_size: Optional[int]) -> Tuple[Tensor, Tensor, Tensor, int]:
    """Labels of the rows for the final ``(K, d)`` centres: exactly what :meth:`SphericalKMeans.predict` returns.

    An empty cluster gets as its centre a row worst served by its own centre
    (from a cluster that keeps a member) and every row is assigned again; this
    repeats while it lowers the inertia (a picked row that is not on its
    centre moves to its new centre, cos = 1, so each round lowers it strictly).
    When every candidate row already sits on its centre (fewer distinct
    directions than ``K``: duplicated rows), no re-seeding can help: the empty
    clusters stay empty with the centres they had and the caller warns.

    Returns:
        ``labels`` ``(N,)``, the possibly updated ``centers`` ``(K, d)``, the
        distances ``1 - cos`` ``(N,)`` of the rows to their centre (clamped at
        0) and the number of non-empty clusters (over all ranks).
    """
    K = centers.shape[0]
    centers = centers.clone()
    for attempt in range(K + 1):
        labels, dist = assign(X, centers, chunk_size)
        counts = all_reduce_sum_(torch.bincount(labels, minlength=K))
        empty = torch.nonzero(counts == 0).flatten()
        if empty.numel() == 0 or attempt == K:
            break
        pick = _pick_reseed_points(X, dist, labels, counts, empty.numel())
        if pick.max_dist <= 0:
            break
        centers[empty[: pick.rows.shape[0]]] = pick.rows
    return labels, centers, dist, int((counts > 0).sum())
