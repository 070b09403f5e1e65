"""The driver of one fit: check the rows, initialise and iterate the restarts, refine the winner, label the rows."""

from __future__ import annotations

import time
import warnings
from dataclasses import replace
from typing import Any, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from propos_losses.distributed import all_reduce_sum_, check_on_every_rank, dtype_code, get_rank
from propos_losses.kmeans._errors import convergence_warning_class
from propos_losses.kmeans._init import auto_sample_size, initial_centers, kmeans_plus_plus, random_init, subsample
from propos_losses.kmeans._kernels import final_labels, inertia_per_restart
from propos_losses.kmeans._lloyd import lloyd, lloyd_bounded
from propos_losses.kmeans._params import Settings, draw_seed
from propos_losses.kmeans._rows import Rows, SparseRows, as_rows, check_sample_weight, unit_rows

__all__ = ["FitResult", "fit_kmeans"]

#: With subsampled restarts the winner's full-data iterations stop at ``tol`` times this: they
#: are cheap (bounded), and on MNIST K = 100 they recover most of the 0.1% of inertia that
#: choosing the winner on a sample costs.
_FULL_DATA_TOL_FACTOR: float = 0.1

#: Restarts whose inertias agree to within this many ulps of the data dtype are
#: tied; the first one wins.
_TIE_ULPS: int = 16


class FitResult(NamedTuple):
    """What :func:`fit_kmeans` found (the estimator's fitted attributes, as tensors)."""

    centers: Tensor  # (K, d)
    labels: Tensor  # (N,) int64
    inertia: float
    n_iter: int
    history: List[float]
    restart_inertias: List[float]


def fit_kmeans(X: Any, settings: Settings, sample_weight: object = None) -> Tuple[FitResult, bool]:
    """Cluster ``X`` (any accepted input) with checked ``settings``; the result and whether ``X`` was NumPy."""
    n_clusters, init, chunk_size, verbose = settings.n_clusters, settings.init, settings.chunk_size, settings.verbose

    data, is_numpy = as_rows("X", X)
    n_features = data.d if isinstance(data, SparseRows) else int(data.shape[1])

    def check() -> Tuple[Rows, Optional[Tensor]]:
        rows = unit_rows("X", data)
        rows.weight = check_sample_weight(sample_weight, rows)
        return rows, (None if isinstance(init, str) else initial_centers(init, rows, n_clusters, settings.n_init))

    # Every rank raises if any rank's input is bad or the ranks disagree on the feature size or
    # dtype (a collective on mismatched shapes would abort the process).
    unit, given = check_on_every_rank(
        check,
        what="spherical k-means",
        device=data.device,
        agree={"the feature size (X.shape[1])": n_features, "the dtype (code)": dtype_code(data)},
    )
    n_total = int(all_reduce_sum_(torch.tensor([unit.n], device=unit.device)).item())
    if n_total < n_clusters:
        raise ValueError(f"n_samples={n_total} should be >= n_clusters={n_clusters}.")
    n_pickable = n_total
    pickable = unit.pick_weight()
    if pickable is not None:  # zero rows or sample weights: are there rows that may become centres?
        counts = torch.stack([(pickable > 0).sum(), torch.zeros((), dtype=torch.long, device=unit.device)])
        if unit.weight is not None:
            counts[1] = (unit.weight > 0).sum()
        n_pickable, n_weighted = all_reduce_sum_(counts).tolist()
        if unit.weight is not None and n_weighted == 0:
            raise ValueError("Sample weights must contain at least one non-zero number (sample_weight is all zero).")
        if n_pickable == 0:
            raise ValueError(
                "X has no row that is not all zero (of positive sample_weight): the direction of an all-zero row, "
                "hence its cosine similarity, is undefined"
            )

    start_time = time.perf_counter()
    generator = torch.Generator().manual_seed(draw_seed(settings.random_state, unit.device))
    # With sample_size, the restarts (initialisation and their Lloyd iterations) run on a
    # uniform subsample; only the winner is then iterated on every row.
    restart_rows = unit
    sampled = False
    # "auto" subsamples only restarts it initialises itself (given centres need no choosing on a sample).
    rows_for_restarts: Optional[int]
    if isinstance(settings.sample_size, str):  # "auto" (validated before)
        rows_for_restarts = auto_sample_size(n_clusters) if isinstance(init, str) else None
    else:
        rows_for_restarts = settings.sample_size
    # A subsample must hold enough rows that may become centres: with many zero rows, run on all rows.
    if rows_for_restarts is not None and n_total > rows_for_restarts and n_pickable == n_total:
        restart_rows = subsample(unit, rows_for_restarts, n_total, generator)
        sampled = True
    if given is not None:
        centers = given
    elif init == "random":
        centers = random_init(restart_rows, n_clusters, settings.n_init, generator)
    else:
        centers = kmeans_plus_plus(restart_rows, n_clusters, settings.n_init, generator, chunk_size)
    if verbose and get_rank() == 0:
        print(f"spherical k-means: initialised {centers.shape[0]} restarts in {time.perf_counter() - start_time:.3f} s")

    centers, n_iter, history = lloyd(restart_rows, centers, settings)
    inertias = inertia_per_restart(restart_rows, centers, chunk_size)
    # Restarts that reach the same optimum differ only by summation order (which changes with
    # sharding): count inertias within a few ulps as tied and take the first, so the choice is stable.
    lowest = inertias.min()
    tied = inertias - lowest <= _TIE_ULPS * torch.finfo(unit.dtype).eps * lowest.abs().clamp_min(1)
    best = int(torch.nonzero(tied)[0, 0])
    best_iter = int(n_iter[best])
    best_history = history[best, :best_iter].tolist()
    winner = centers[best]
    refine_tol = _TIE_ULPS * torch.finfo(unit.dtype).eps
    if sampled:
        # The subsample's winner is iterated on all rows with the user's tol; its subsample
        # iterations are not counted (n_iter_ and the history are full-data ones).
        best_iter, best_history = 0, []
        budget, stop_tol = settings.max_iter, settings.tol * _FULL_DATA_TOL_FACTOR
    else:
        # Refine the winner alone (1/R of a batched pass per iteration) until its inertia stops
        # decreasing beyond rounding (a few ulps, so that summation order cannot add an iteration).
        budget, stop_tol = settings.max_iter - best_iter, refine_tol
    if sampled or (budget > 0 and settings.tol > refine_tol):
        winner, more_iter, more_history = lloyd_bounded(unit, winner, replace(settings, max_iter=budget, tol=stop_tol))
        best_history += more_history
        best_iter += more_iter
    labels, best_centers, dist, n_distinct = final_labels(unit, winner, chunk_size)
    if n_distinct < n_clusters:
        warnings.warn(
            f"Number of distinct clusters ({n_distinct}) found smaller than n_clusters ({n_clusters}). "
            f"Possibly due to duplicate points in X.",
            convergence_warning_class(),
            stacklevel=4,
        )
    inertia = float(all_reduce_sum_(unit.weighted(dist).reshape(1)).item())
    if verbose and get_rank() == 0:
        print(f"spherical k-means: best restart {best}, inertia {inertia:.6g}, {best_iter} iterations")
    result = FitResult(best_centers, labels, inertia, best_iter, best_history, inertias.tolist())
    return result, is_numpy
