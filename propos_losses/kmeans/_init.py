"""The initial centres of the restarts: greedy k-means++, random rows, given centres, and the row subsample."""

from __future__ import annotations

import math
import warnings
from typing import List, Optional, Union

import numpy as np
import torch
from torch import Tensor

from propos_losses.distributed import all_gather_cat, all_reduce_sum_, get_rank
from propos_losses.kmeans._kernels import chunk_rows, within_chunk_budget
from propos_losses.kmeans._params import SEED_BOUND
from propos_losses.kmeans._rows import Rows, normalise_rows

__all__ = ["kmeans_plus_plus", "random_init", "initial_centers", "auto_sample_size", "subsample"]

#: ``sample_size="auto"``: the restarts run on about ``_AUTO_ROW_CLUSTERS / K`` rows
#: (their cost grows with rows x K), but at least :data:`_AUTO_MIN_ROWS_PER_CLUSTER`
#: and at most :data:`_AUTO_MAX_ROWS_PER_CLUSTER` rows per cluster (their quality
#: grows with rows per cluster); measured in ``benchmarks/bench_kmeans_sample_size.py`` (MNIST-70k,
#: K = 100: 19,200 rows give the inertia of 25,600 over three seeds, in less time).
_AUTO_ROW_CLUSTERS: int = 1_920_000
_AUTO_MIN_ROWS_PER_CLUSTER: int = 16
_AUTO_MAX_ROWS_PER_CLUSTER: int = 512


def _sample_rows(
    X: Rows, weights: Optional[Tensor], n_restarts: int, n_samples: int, generator: torch.Generator
) -> Tensor:
    """Rows sampled with probability proportional to ``weights`` times the rows' sample weights, over all ranks.

    Args:
        X: ``(N, d)`` this rank's rows; zero rows and rows of weight 0 are never sampled.
        weights: ``(R, N)`` non-negative, or ``None`` for uniform. A restart
            whose weights are all zero (every row sits on a centre) samples
            uniformly.
        generator: CPU generator in the same state on every rank.

    Returns:
        ``(R, n_samples, d)``, identical on every rank.
    """
    N, d = X.n, X.d
    device = X.device
    uniform = torch.rand(n_restarts, n_samples, generator=generator, dtype=torch.float64).to(device)
    base = X.pick_weight()
    if weights is None:
        w = torch.ones(n_restarts, N, dtype=torch.float64, device=device)
    else:
        # Rounding can make 1 - cos slightly negative for a row on a centre; such a row has weight 0.
        w = weights.to(torch.float64).clamp_min_(0)
    if base is not None:
        w = w * base
    rank_totals = all_gather_cat(w.sum(dim=1).unsqueeze(0))  # (W, R)
    degenerate = rank_totals.sum(dim=0) <= 0
    if bool(degenerate.any()):
        w[degenerate] = 1.0 if base is None else base
        rank_totals = all_gather_cat(w.sum(dim=1).unsqueeze(0))
    rank_cum = torch.cumsum(rank_totals, dim=0)  # (W, R)
    target = uniform * rank_cum[-1].unsqueeze(1)  # (R, S) in [0, total)
    world = rank_cum.shape[0]
    owner = torch.searchsorted(rank_cum.t().contiguous(), target, right=True).clamp_(max=world - 1)
    offset = torch.gather((rank_cum - rank_totals).t(), 1, owner)
    rows = torch.zeros(n_restarts, n_samples, d, dtype=X.dtype, device=device)
    if N > 0:
        local_cum = torch.cumsum(w, dim=1)  # (R, N)
        index = torch.searchsorted(local_cum, (target - offset).contiguous(), right=True).clamp_(max=N - 1)
        mine = (owner == get_rank()).unsqueeze(2)
        rows = X.take(index.reshape(-1)).to_dense().view(n_restarts, n_samples, d) * mine
    # Only the owner contributes a non-zero row, so the sum is exactly that row.
    return all_reduce_sum_(rows)


def kmeans_plus_plus(
    X: Rows, n_clusters: int, n_restarts: int, generator: torch.Generator, chunk_size: Optional[int]
) -> Tensor:
    """Greedy k-means++ on the sphere for ``R`` restarts at once (weighted by the sample weights); ``(R, K, d)``."""
    N, d = X.n, X.d
    R, K = n_restarts, n_clusters
    n_candidates = 2 + int(math.log(K))
    centers = torch.empty(R, K, d, dtype=X.dtype, device=X.device)
    centers[:, 0] = _sample_rows(X, None, R, 1, generator)[:, 0]
    # dist[i, r] = 1 - max_j cos(x_i, c_rj): the potential, i.e. half the squared distance.
    # (N, R) layout so that a chunk broadcasts against its (n, R, L) candidate distances.
    dist = torch.rsub(X.mm_t(centers[:, 0]), 1)
    step = chunk_rows(N, R * n_candidates, X.element_size(), chunk_size)
    # Keeping every candidate's updated distances saves recomputing the chosen one's, if they fit.
    keep = within_chunk_budget(N * R * n_candidates * X.element_size())
    arange_r = torch.arange(R, device=X.device)
    for k in range(1, K):
        candidates = _sample_rows(X, dist.t(), R, n_candidates, generator)  # (R, L, d)
        flat = candidates.reshape(R * n_candidates, d)
        potential = torch.zeros(R, n_candidates, dtype=torch.float64, device=X.device)
        kept: List[Tensor] = []
        for start in range(0, N, step):
            rows = X.span(start, start + step)
            new = torch.rsub(rows.mm_t(flat), 1).view(-1, R, n_candidates)
            torch.minimum(new, dist[start : start + step].unsqueeze(2), out=new)
            potential += rows.weighted(new)
            if keep:
                kept.append(new)
        all_reduce_sum_(potential)
        best = potential.argmin(dim=1)  # (R,)
        centers[:, k] = candidates[arange_r, best]
        if keep and kept:
            chosen = [chunk[:, arange_r, best] for chunk in kept]
            dist = torch.cat(chosen, dim=0) if len(chosen) > 1 else chosen[0]
        elif N > 0:
            dist = torch.minimum(dist, torch.rsub(X.mm_t(centers[:, k]), 1))
    return centers


def random_init(X: Rows, n_clusters: int, n_restarts: int, generator: torch.Generator) -> Tensor:
    """``K`` distinct rows (over all ranks) per restart, uniformly (or with probability proportional to the
    sample weights, never zero rows); ``(R, K, d)``."""
    N, d = X.n, X.d
    sizes = all_gather_cat(torch.tensor([N], dtype=torch.long, device=X.device))
    total = int(sizes.sum())
    start = int(sizes[: get_rank()].sum())
    base = X.pick_weight()
    if base is None:
        picks = torch.stack([torch.randperm(total, generator=generator)[:n_clusters] for _ in range(n_restarts)])
    else:
        weights = all_gather_cat(base).cpu()
        if int((weights > 0).sum()) < n_clusters:  # too few candidates: the others as a last resort
            weights = torch.where(weights > 0, weights, weights[weights > 0].min() * 1e-12)
        picks = torch.multinomial(weights.expand(n_restarts, -1), n_clusters, replacement=False, generator=generator)
    picks = picks.to(X.device) - start
    mine = (picks >= 0) & (picks < N)
    rows = torch.zeros(n_restarts, n_clusters, d, dtype=X.dtype, device=X.device)
    if N > 0:
        rows = X.take(picks.clamp(0, N - 1).reshape(-1)).to_dense().view(n_restarts, n_clusters, d)
        rows = rows * mine.unsqueeze(2)
    return all_reduce_sum_(rows)


def auto_sample_size(n_clusters: int) -> int:
    """Rows of the restarts for ``sample_size="auto"``: ``1,920,000 / K``, kept within 16 to 512 rows per cluster.

    ``K = 10``: 5,120 rows; ``K = 100``: 19,200; ``K = 1,000``: 16,000.
    """
    per_k = _AUTO_ROW_CLUSTERS // n_clusters
    return max(_AUTO_MIN_ROWS_PER_CLUSTER * n_clusters, min(_AUTO_MAX_ROWS_PER_CLUSTER * n_clusters, per_k))


def subsample(X: Rows, sample_size: int, n_total: int, generator: torch.Generator) -> Rows:
    """A uniform random subset of this rank's rows, about ``sample_size`` rows over all ranks.

    Each rank keeps ``ceil(sample_size * N_rank / N_total)`` of its rows (so the
    ranks together keep at least ``sample_size >= K`` rows and at most
    ``sample_size + world_size``), drawn without replacement from a generator
    seeded from ``generator`` (in the same state on every rank) and the rank.
    """
    n_local = X.n
    sub_seed = int(torch.randint(0, SEED_BOUND, (1,), generator=generator))
    local_generator = torch.Generator().manual_seed((sub_seed + 1_000_003 * get_rank()) % SEED_BOUND)
    keep = min(n_local, -(-sample_size * n_local // n_total))
    order = torch.randperm(n_local, generator=local_generator)[:keep].to(X.device)
    # Sorted rows keep memory access sequential.
    return X.take(order.sort().values)


def initial_centers(init: Union[Tensor, np.ndarray], X: Rows, n_clusters: int, n_init: int) -> Tensor:
    """Validate and normalise user-given centres ``(K, d)`` or ``(R, K, d)`` into ``(R, K, d)``."""
    if isinstance(init, np.ndarray):
        if init.dtype not in (np.float32, np.float64):
            raise TypeError(f"init must be float32 or float64, got NumPy dtype {init.dtype}")
        centers = torch.from_numpy(np.ascontiguousarray(init))
    else:
        if not init.is_floating_point():
            raise TypeError(f"init must have a floating-point dtype, got {init.dtype}")
        centers = init.detach()
    d = X.d
    if centers.dim() == 2:
        if n_init != 1:
            warnings.warn(
                f"init holds one set of centres, so the {n_init} restarts would be identical: running one",
                RuntimeWarning,
                stacklevel=5,
            )
        centers = centers.unsqueeze(0)
    if centers.dim() != 3 or centers.shape[1:] != (n_clusters, d) or centers.shape[0] < 1:
        raise ValueError(
            f"init must have shape (K, d) = ({n_clusters}, {d}) or (R, {n_clusters}, {d}) with R >= 1, "
            f"got {tuple(init.shape)}"
        )
    centers = centers.to(device=X.device, dtype=X.dtype)
    return normalise_rows("init", centers.reshape(-1, d)).view(centers.shape)
