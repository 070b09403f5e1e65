"""The expected mutual information of AMI: a windowed, grouped, vectorised kernel (unchecked).

:func:`propos_losses.metrics.expected_mutual_information` checks its
arguments and calls :func:`emi_from_sizes`; its docstring explains the
method and its error bound. The window of every ``(a, b)`` pair is widened
until the skipped tails are provably negligible (:func:`emi_windows`).
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np
from scipy.special import gammaln

__all__ = ["EPS", "emi_from_sizes", "emi_windows", "emi_block", "hypergeom_logpmf", "log_ratio"]

#: float64 machine epsilon.
EPS = float(np.finfo(np.float64).eps)

# Window of the hypergeometric pmf evaluated per (a, b) pair, before the
# log-concavity check widens it: mode +- (_WINDOW_SDS * sd + _WINDOW_SLACK).
# At ImageNet scale the tail budget is ~e^-51, i.e. ~10 sd in the Gaussian
# regime; the slack covers the Poisson-like regime of tiny means. These only set
# the first guess: correctness comes from the tail check, which doubles the
# window of every pair that fails it.
_WINDOW_SDS = 12.0
_WINDOW_SLACK = 16
# Nats subtracted from the tail budget to absorb the rounding error of the
# log-pmf computed from log Gamma values (|error| <~ 10 * N log N * eps, far
# below one nat for any N that fits in memory).
_TAIL_SAFETY_NATS = 1.0
# Elements per evaluation block of the EMI (pairs x window), which bounds the
# temporary memory to a few tens of MiB whatever the input.
_EMI_BLOCK_ELEMENTS = 1 << 20


def hypergeom_logpmf(n: np.ndarray, a: np.ndarray, b: np.ndarray, n_samples: int) -> np.ndarray:
    """log P(n_ij = n) for row sum ``a``, column sum ``b``: log Gamma form.

    Used only for the tail bounds: it is a difference of terms of order
    ``N log N`` and loses ~``N log N * eps`` absolute accuracy.
    """
    big_n = float(n_samples)
    result: np.ndarray = (
        gammaln(a + 1.0)
        + gammaln(b + 1.0)
        + gammaln(big_n - a + 1.0)
        + gammaln(big_n - b + 1.0)
        - gammaln(big_n + 1.0)
        - gammaln(n + 1.0)
        - gammaln(a - n + 1.0)
        - gammaln(b - n + 1.0)
        - gammaln(big_n - a - b + n + 1.0)
    )
    return result


def log_ratio(n: np.ndarray, a: np.ndarray, b: np.ndarray, n_samples: int) -> np.ndarray:
    """log r(n) = log P(n + 1) / P(n) = log (a-n)(b-n) / ((n+1)(N-a-b+n+1)).

    The two products are integers below ``(N + 1)^2``, exact in float64 for
    ``N < 2^26`` and correctly rounded beyond, so one log of their quotient
    is accurate to a few ulps absolute, better than a sum of four logs.
    """
    numerator = (a - n) * (b - n)
    denominator = (n + 1.0) * (float(n_samples) - a - b + n + 1.0)
    result: np.ndarray = np.log(numerator / denominator)
    return result


def emi_windows(
    a: np.ndarray, b: np.ndarray, n_samples: int, log_budget: float
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pair, the range [low, high] of n_ij to evaluate and the mode.

    Proof that the skipped terms are negligible: the hypergeometric ratio
    ``r(n) = P(n+1)/P(n) = (a-n)(b-n) / ((n+1)(N-a-b+n+1))`` is a product of
    positive factors that do not increase with ``n``, so the pmf is log-concave
    and ``P(high + k) <= P(high) r(high)^k`` for ``k >= 1``. When
    ``r(high) < 1`` the right tail therefore sums to at most
    ``P(high) r / (1 - r)``; symmetrically the left tail is at most
    ``P(low) s / (1 - s)`` with ``s = P(low-1)/P(low) = 1/r(low-1) < 1``. A
    window is accepted once both bounds are below ``exp(log_budget)`` (with a
    safety margin of ``_TAIL_SAFETY_NATS`` for the rounding of the log-pmf);
    otherwise its half-width is doubled, which terminates because the window
    is clipped to the support ``[max(0, a+b-N), min(a, b)]``.
    """
    big_n = np.int64(n_samples)
    support_low = np.maximum(0, a + b - big_n)
    support_high = np.minimum(a, b)
    # Mode of the hypergeometric distribution, floor((a+1)(b+1)/(N+2)), in
    # exact integer arithmetic ((a+1)(b+1) <= (N+1)^2 fits in int64).
    mode = np.clip((a + 1) * (b + 1) // (big_n + 2), support_low, support_high)
    af, bf, nf = a.astype(np.float64), b.astype(np.float64), float(n_samples)
    variance = af * bf * (nf - af) * (nf - bf) / (nf * nf * (nf - 1.0))
    half = np.ceil(_WINDOW_SDS * np.sqrt(variance)).astype(np.int64) + _WINDOW_SLACK
    low = np.empty_like(mode)
    high = np.empty_like(mode)
    pending = np.arange(a.size)
    threshold = log_budget - _TAIL_SAFETY_NATS
    while pending.size:
        pa, pb, pm, ph = a[pending], b[pending], mode[pending], half[pending]
        lo = np.maximum(support_low[pending], pm - ph)
        hi = np.minimum(support_high[pending], pm + ph)
        low[pending], high[pending] = lo, hi
        paf, pbf = pa.astype(np.float64), pb.astype(np.float64)
        ok = np.ones(pending.size, dtype=bool)

        open_right = hi < support_high[pending]
        if open_right.any():
            n = hi[open_right].astype(np.float64)
            aa, bb = paf[open_right], pbf[open_right]
            log_r = log_ratio(n, aa, bb, n_samples)
            with np.errstate(divide="ignore", invalid="ignore"):
                bound = hypergeom_logpmf(n, aa, bb, n_samples) + log_r - np.log(-np.expm1(log_r))
            ok[open_right] &= (log_r < 0) & (bound <= threshold)

        open_left = lo > support_low[pending]
        if open_left.any():
            n = lo[open_left].astype(np.float64)
            aa, bb = paf[open_left], pbf[open_left]
            log_s = -log_ratio(n - 1.0, aa, bb, n_samples)
            with np.errstate(divide="ignore", invalid="ignore"):
                bound = hypergeom_logpmf(n, aa, bb, n_samples) + log_s - np.log(-np.expm1(log_s))
            ok[open_left] &= (log_s < 0) & (bound <= threshold)

        half[pending[~ok]] *= 2
        pending = pending[~ok]
    return low, high, mode


def emi_block(
    a: np.ndarray,
    b: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    mode: np.ndarray,
    n_samples: int,
    width: int,
) -> np.ndarray:
    """Sum over the window of ``w(n) P(n)`` for a block of pairs, shape ``(P,)``.

    The pmf is rebuilt from the mode outward as cumulative sums of
    ``log r(n)`` (numbers of order one, so the sums stay accurate near the
    mode where the mass is), then normalised over the window; the skipped
    tail mass is below the budget, so the normalisation changes each value by
    a relative amount of at most twice the budget.
    """
    valid = np.arange(width)[None, :] <= (high - low)[:, None]  # (P, W)
    nf = low.astype(np.float64)[:, None] + np.arange(width, dtype=np.float64)[None, :]
    af = a.astype(np.float64)[:, None]
    bf = b.astype(np.float64)[:, None]
    # log r(t) for t in [low, high - 1]; entries past high are set to 0 so they
    # add nothing to the cumulative sums (their q is zeroed below anyway).
    t = nf[:, :-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_r = log_ratio(t, af, bf, n_samples)
    log_r[~valid[:, 1:]] = 0.0
    # log P(n) - log P(mode): sum_{t=mode}^{n-1} log r(t) above the mode and
    # -sum_{t=n}^{mode-1} log r(t) below it ("left" is exactly log_r - right).
    right = np.where(t >= mode.astype(np.float64)[:, None], log_r, 0.0)
    left = log_r - right
    log_q = np.zeros(nf.shape, dtype=np.float64)
    np.cumsum(right, axis=1, out=log_q[:, 1:])
    log_q[:, :-1] -= np.cumsum(left[:, ::-1], axis=1)[:, ::-1]
    q = np.exp(log_q)
    q[~valid] = 0.0
    # w(n) = (n / N) log(N n / (a b)) (exact integer products, one log); the
    # n = 0 term is 0 whatever its probability.
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = (nf / n_samples) * np.log((nf * float(n_samples)) / (af * bf))
    weight[nf == 0] = 0.0
    result: np.ndarray = (q * weight).sum(axis=1) / q.sum(axis=1)
    return result


def emi_from_sizes(a: np.ndarray, b: np.ndarray, n_samples: int) -> float:
    """EMI from positive int64 sizes (unchecked); see :func:`propos_losses.metrics.expected_mutual_information`."""
    if a.size == 1 or b.size == 1:
        return 0.0
    values_a, mult_a = np.unique(a, return_counts=True)
    values_b, mult_b = np.unique(b, return_counts=True)
    pair_a = np.repeat(values_a, values_b.size)
    pair_b = np.tile(values_b, values_a.size)
    multiplicity = np.outer(mult_a, mult_b).ravel().astype(np.float64)
    log_budget = math.log(EPS) - math.log(float(a.size) * float(b.size))
    low, high, mode = emi_windows(pair_a, pair_b, n_samples, log_budget)
    widths = high - low + 1
    # Pairs are bucketed by window width rounded up to a power of two, so the
    # padding of a block wastes at most half of it.
    bucket = np.ceil(np.log2(widths)).astype(np.int64)
    total = 0.0
    for level in np.unique(bucket):
        members = np.flatnonzero(bucket == level)
        width = int(widths[members].max())
        rows_per_block = max(1, _EMI_BLOCK_ELEMENTS // width)
        for start in range(0, members.size, rows_per_block):
            idx = members[start : start + rows_per_block]
            values = emi_block(pair_a[idx], pair_b[idx], low[idx], high[idx], mode[idx], n_samples, width)
            total += float(np.dot(multiplicity[idx], values))
    return total
