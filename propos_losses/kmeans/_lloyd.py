"""Lloyd's iterations: all restarts batched (:func:`lloyd`), and one restart with bounds (:func:`lloyd_bounded`)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from propos_losses.distributed import all_reduce_sum_, get_rank
from propos_losses.kmeans._kernels import (
    chunk_rows,
    lloyd_pass,
    normalise_centers,
    reseed_empty_,
    sum_rows_by_label,
    within_chunk_budget,
)
from propos_losses.kmeans._params import Settings
from propos_losses.kmeans._rows import Rows

__all__ = ["lloyd", "lloyd_bounded"]

#: The cluster sums are updated from the rows that switched cluster unless
#: more than this fraction of (row, restart) labels switched in the last pass.
_INCREMENTAL_MAX_FRACTION: float = 0.25

#: The batched restarts continue one by one with the bounded iterations (:func:`lloyd_bounded`) once at
#: most this fraction of their labels switched in an iteration, when ``K`` is at least
#: :data:`_BOUNDED_MIN_CLUSTERS` (below it, one product with ``R * K`` centres beats ``R`` narrow ones).
_BOUNDED_SWITCH_FRACTION: float = 0.05
_BOUNDED_MIN_CLUSTERS: int = 32


def lloyd(X: Rows, centers: Tensor, settings: Settings) -> Tuple[Tensor, Tensor, Tensor]:
    """Batched Lloyd iterations; each restart stops on its own and leaves the batch.

    Runs at most ``settings.max_iter`` iterations, stops a restart on ``settings.tol`` and multiplies
    ``settings.chunk_size`` rows at a time; the other settings are not read.

    Returns:
        Final centres ``(R, K, d)``, iterations ``(R,)`` and the inertia
        history ``(R, max_iter)`` float64 (NaN after a restart stopped).
    """
    max_iter, tol, chunk_size, verbose = settings.max_iter, settings.tol, settings.chunk_size, settings.verbose
    R, K, d = centers.shape
    centers = centers.clone()
    device = X.device
    history = torch.full((R, max_iter), math.nan, dtype=torch.float64, device=device)
    n_iter = torch.zeros(R, dtype=torch.long, device=device)
    previous = torch.zeros(R, dtype=torch.float64, device=device)
    labels = torch.zeros(X.n, R, dtype=torch.long, device=device)
    sums = torch.zeros(R, K, d, dtype=torch.float64, device=device)
    counts = torch.zeros(R, K, dtype=torch.long, device=device)
    active = torch.arange(R, device=device)
    n_total = int(all_reduce_sum_(torch.tensor([X.n], device=device)).item())
    full = True
    for it in range(max_iter):
        current = centers[active]
        change, count_change, inertia, switched = lloyd_pass(X, current, labels, active, full, chunk_size)
        active_sums = change if full else sums[active] + change
        active_counts = count_change if full else counts[active] + count_change
        # Summing only the rows that switched costs two scattered adds per switch:
        # recompute from scratch next time when too many rows switch.
        # (The first pass compares with placeholder labels, so its switches do not count.)
        full = it > 0 and switched > _INCREMENTAL_MAX_FRACTION * n_total * active.numel()
        if bool((active_counts == 0).any()):
            active_labels = labels[:, active]
            reseed_empty_(X, current, active_sums, active_counts, active_labels, chunk_size)
            labels[:, active] = active_labels
        sums[active] = active_sums
        counts[active] = active_counts
        centers[active] = normalise_centers(active_sums, current.to(torch.float64)).to(X.dtype)
        history[active, it] = inertia
        n_iter[active] += 1
        if it > 0:
            done = previous[active] - inertia <= tol * previous[active]
        else:
            done = torch.zeros_like(inertia, dtype=torch.bool)
        previous[active] = inertia
        if verbose and get_rank() == 0:
            print(
                f"spherical k-means: iteration {it + 1}: {active.numel()} of {R} restarts running, "
                f"best inertia {float(inertia.min()):.6g}",
                flush=True,
            )
        n_running = active.numel()
        active = active[~done]
        if active.numel() == 0:
            break
        if K >= _BOUNDED_MIN_CLUSTERS and it > 0 and switched <= _BOUNDED_SWITCH_FRACTION * n_total * n_running:
            # Few rows move any more: each remaining restart goes on alone with the bounded iterations,
            # which re-examine only the rows whose label can change (the same steps, up to near-ties).
            for r in active.tolist():
                done_iter = int(n_iter[r])
                if done_iter >= max_iter:
                    continue
                more_centers, more_iter, more_history = lloyd_bounded(
                    X, centers[r], replace(settings, max_iter=max_iter - done_iter, verbose=False), float(previous[r])
                )
                centers[r] = more_centers
                history[r, done_iter : done_iter + more_iter] = torch.tensor(more_history, dtype=torch.float64)
                n_iter[r] += more_iter
            break
    return centers, n_iter, history


def lloyd_bounded(
    X: Rows, centers: Tensor, settings: Settings, previous_inertia: Optional[float] = None
) -> Tuple[Tensor, int, List[float]]:
    """Lloyd iterations of ONE restart that re-examine only the rows whose label can change.

    The same iterations as :func:`lloyd` with one restart (up to the
    rounding of near-ties), faster once few rows move. Every row keeps a lower
    bound ``lo`` of its similarity to its own centre and upper bounds of its
    similarity to the other centres: one per centre (Elkan's bounds, in
    cosine) when ``N x K`` of them fit in :data:`DEFAULT_CHUNK_BYTES`, else
    one for all of them (Hamerly's). A unit row ``x`` and a centre that moved
    by ``delta`` satisfy ``|x . c' - x . c| <= ||c' - c|| = delta``, so after
    an update ``lo -= delta[own]`` and each upper bound grows by its centre's
    ``delta`` (Hamerly: by the largest ``delta`` of the other centres). A row
    whose ``lo`` still exceeds every upper bound keeps its label without a
    matrix multiply; the others are re-assigned exactly and their bounds
    reset. The cluster sums change only by the rows that moved, and the
    inertia of an assignment is ``W - sum_k c_k . S_k`` from the float64
    (weighted) sums ``S`` and the total weight ``W`` (``N`` without sample
    weights), so a pass touches only the re-examined rows.

    Stops as :func:`lloyd` does, and also when no label changed (a fixed
    point: the next centres would be the same).

    Args:
        X: ``(N, d)`` unit rows (this rank's).
        centers: ``(K, d)`` initial unit centres.
        previous_inertia: the inertia of the iteration before ``centers``
            when continuing a restart of :func:`lloyd` (its first pass may
            then stop on ``tol``), else ``None``.

    Returns:
        Final centres ``(K, d)``, iterations run and the inertia history.
    """
    max_iter, tol, chunk_size, verbose = settings.max_iter, settings.tol, settings.chunk_size, settings.verbose
    N, d = X.n, X.d
    K = centers.shape[0]
    device, dtype = X.device, X.dtype
    eps = torch.finfo(dtype).eps
    # Rounding of a similarity computed by a matrix multiply (|x . c| <= 1, d products summed) and of
    # the row norms (within 4 sqrt(d) ulps of 1): a row is skipped only with this much to spare.
    slack = 2.0 * (d + 8) * eps
    elkan = within_chunk_budget(N * K * X.element_size())
    centers = centers.clone()
    labels = torch.zeros(N, dtype=torch.long, device=device)
    lo = torch.full((N,), -3.0, dtype=dtype, device=device)  # lo < every upper bound: all rows examined first
    # Upper bounds of the similarity to each other centre (Elkan) or to all of them (Hamerly).
    upper = torch.full((N, K) if elkan else (N,), 3.0, dtype=dtype, device=device)
    sums = torch.zeros(K, d, dtype=torch.float64, device=device)
    counts = torch.zeros(K, dtype=torch.long, device=device)
    history: List[float] = []
    previous = math.inf if previous_inertia is None else previous_inertia
    n_total = float(all_reduce_sum_(X.total_weight().reshape(1)).item())
    for it in range(max_iter):
        hi = upper.amax(dim=1) if elkan else upper
        stale = torch.nonzero(lo - hi <= slack).flatten()
        n_stale = stale.numel()
        first = it == 0
        sums_change = torch.zeros(K, d, dtype=dtype, device=device)
        count_change = torch.zeros(K, dtype=torch.long, device=device)
        switched = torch.zeros((), dtype=torch.long, device=device)
        # Gathering many rows costs more than multiplying them all where they are.
        dense = 2 * n_stale > N
        n_rows = N if dense else n_stale
        step = chunk_rows(max(n_rows, 1), K, X.element_size(), chunk_size)
        for start in range(0, n_rows, step):
            if dense:
                rows = X.span(start, start + step)
                index = torch.arange(start, start + rows.n, device=device)
            else:
                index = stale[start : start + step]
                rows = X.take(index)
            sims = rows.mm_t(centers)
            best, new = sims.max(dim=1)
            sims.scatter_(1, new.unsqueeze(1), -3.0)  # the other centres only
            lo[index] = best
            upper[index] = sims if elkan else sims.amax(dim=1)
            if first:
                sum_rows_by_label(rows, new.unsqueeze(1), K, sums_change)
                count_change += torch.bincount(new, minlength=K)
                labels[index] = new
                continue
            old = labels[index]
            moved = torch.nonzero(new != old).flatten()
            if moved.numel():
                moved_rows = rows.take(moved)
                moved_rows.add_to(sums_change, new[moved])
                moved_rows.add_to(sums_change, old[moved], alpha=-1)
                count_change += torch.bincount(new[moved], minlength=K) - torch.bincount(old[moved], minlength=K)
                switched += moved.numel()
                labels[index[moved]] = new[moved]
        change64 = sums_change.to(torch.float64)
        all_reduce_sum_(change64)
        all_reduce_sum_(count_change)
        all_reduce_sum_(switched)
        sums += change64
        counts += count_change
        current = centers.to(torch.float64)
        # sum_i w_i cos(x_i, c_{a_i}) = sum_k c_k . S_k for the labels just computed with these centres;
        # rounding can make it exceed N by an ulp when every row sits on its centre.
        inertia = max(0.0, float(n_total - (current * sums).sum()))
        n_switched = int(switched)
        if bool((counts == 0).any()):
            # Rare (duplicated rows, K close to N): the re-seeding needs every row's distance.
            sums_view, counts_view, labels_view = sums.unsqueeze(0), counts.unsqueeze(0), labels.unsqueeze(1)
            reseed_empty_(X, centers.unsqueeze(0), sums_view, counts_view, labels_view, chunk_size)
            lo.fill_(-3.0)
            upper.fill_(3.0)
            n_switched = max(n_switched, 1)
        new_centers = normalise_centers(sums, current)
        delta = torch.linalg.vector_norm(new_centers - current, dim=1).to(dtype) * (1 + 4 * eps)
        centers = new_centers.to(dtype)
        history.append(inertia)
        if verbose and get_rank() == 0:
            print(
                f"spherical k-means: full-data iteration {it + 1}: inertia {inertia:.6g}, "
                f"{n_rows} rows re-examined on this rank, {n_switched} moved",
                flush=True,
            )
        # (A continued restart, given its previous inertia, may stop after its first pass here.)
        converged = previous - inertia <= tol * previous
        if (not first and (converged or n_switched == 0)) or (first and previous_inertia is not None and converged):
            break
        previous = inertia
        lo -= delta[labels]
        if elkan:
            upper += delta
        elif K > 1:
            # Every other centre moved by at most the largest delta, or by the second largest for the
            # rows whose own centre moved most.
            top, where = torch.topk(delta, 2)
            upper += torch.where(labels == where[0], top[1], top[0])
    return centers, len(history), history
