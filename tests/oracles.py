"""Literal float64 oracles written straight from the ProPos equations.

Explicit Python loops over samples, clusters and coordinates, on Python floats
(float64), with no vectorisation and no code shared with the package, so that
they can serve as an independent reference for the vectorised implementations.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor

__all__ = ["psl_oracle", "psa_oracle"]


def _rows(matrix: Tensor) -> List[List[float]]:
    return [[float(x) for x in row] for row in matrix.detach().to(torch.float64).cpu().tolist()]


def _norm(vector: Sequence[float]) -> float:
    total = 0.0
    for x in vector:
        total += x * x
    return math.sqrt(total)


def _unit(vector: Sequence[float]) -> List[float]:
    # A zero vector has no direction; like the implementations, keep it zero.
    n = _norm(vector)
    return [x / n for x in vector] if n > 0 else [0.0 for _ in vector]


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    total = 0.0
    for x, y in zip(a, b):
        total += x * y
    return total


def psl_oracle(
    online: Tensor,
    target: Tensor,
    assignments: Tensor,
    num_clusters: int,
    temperature: float,
    queue_features: Optional[Tensor] = None,
    queue_labels: Optional[Tensor] = None,
) -> Dict[str, float]:
    """Eq. 4 (loss), Eq. 5 (alignment, uniformity), Eq. 6/7 (prototypes), looped in float64.

    Args:
        online, target: ``(B, d)``.
        assignments: ``(B,)`` integer labels or ``(B, K)`` non-negative weights ``p(k|x)``.
        num_clusters: ``K``.
        temperature: ``tau``.
        queue_features, queue_labels: optional ``(Q, d)`` target features and
            ``(Q,)`` labels added (weight 1) to both the online and the target sums.

    Returns:
        ``{"loss", "alignment", "uniformity", "num_active"}``; ``uniformity`` is
        ``-inf`` when only one cluster is non-empty.
    """
    z = [_unit(row) for row in _rows(online)]
    z_target = [_unit(row) for row in _rows(target)]
    batch_size, dim = len(z), len(z[0])
    # p(k|x_i) for every sample and cluster.
    if assignments.dim() == 1:
        labels = [int(x) for x in assignments.tolist()]
        weights = [[1.0 if labels[i] == k else 0.0 for k in range(num_clusters)] for i in range(batch_size)]
    else:
        weights = _rows(assignments)
    rows_online = list(z)
    rows_target = list(z_target)
    if queue_features is not None and queue_labels is not None:
        queue = [_unit(row) for row in _rows(queue_features)]
        queue_label_list = [int(x) for x in queue_labels.tolist()]
        for row, label in zip(queue, queue_label_list):
            rows_online.append(row)
            rows_target.append(row)
            weights.append([1.0 if label == k else 0.0 for k in range(num_clusters)])

    # Eq. 6, 7: mu_k = normalize(sum_i p(k|x_i) z_i).
    mu: List[List[float]] = []
    mu_target: List[List[float]] = []
    counts: List[float] = []
    for k in range(num_clusters):
        sum_online = [0.0] * dim
        sum_target = [0.0] * dim
        count = 0.0
        for i in range(len(rows_online)):
            w = weights[i][k]
            count += w
            for c in range(dim):
                sum_online[c] += w * rows_online[i][c]
                sum_target[c] += w * rows_target[i][c]
        mu.append(_unit(sum_online))
        mu_target.append(_unit(sum_target))
        counts.append(count)

    active = [k for k in range(num_clusters) if counts[k] > 0]
    loss = alignment = uniformity = 0.0
    for k in active:
        positive = _dot(mu[k], mu_target[k]) / temperature
        negatives = [_dot(mu[k], mu[j]) / temperature for j in active if j != k]
        denominator = math.exp(positive)
        negative_sum = 0.0
        for s in negatives:
            negative_sum += math.exp(s)
        denominator += negative_sum
        loss += -math.log(math.exp(positive) / denominator)
        alignment += -positive
        uniformity += math.log(negative_sum) if negatives else -math.inf
    n = len(active)
    return {
        "loss": loss / n,
        "alignment": alignment / n,
        "uniformity": uniformity / n,
        "num_active": float(n),
    }


def psa_oracle(
    q: Tensor,
    z_plus: Tensor,
    predictor: Callable[[Tensor], Tensor],
    eps: Tensor,
    sigma: float,
) -> float:
    """Eq. 9/10 for one direction, looped in float64.

    ``v = q + sigma * eps``; ``L = 1/B sum_i || g(v_i)/||g(v_i)|| - z'+_i/||z'+_i|| ||^2``.
    The predictor ``g`` is applied to the whole ``(B, d)`` batch at once (it may
    hold batch normalisation) in float64; everything else is looped.

    Args:
        q: ``(B, d)`` online projector outputs (not normalised).
        z_plus: ``(B, d')`` target projector outputs of the other view.
        predictor: ``g``, called as ``predictor(v)`` on a float64 ``(B, d)`` tensor.
        eps: ``(B, d)`` standard normal noise.
        sigma: noise scale.

    Returns:
        The batch-mean loss as a Python float.
    """
    q_rows, eps_rows = _rows(q), _rows(eps)
    v = [[q_rows[i][c] + sigma * eps_rows[i][c] for c in range(len(q_rows[i]))] for i in range(len(q_rows))]
    predictions = _rows(predictor(torch.tensor(v, dtype=torch.float64)))
    targets = _rows(z_plus)
    total = 0.0
    for p_row, z_row in zip(predictions, targets):
        p_unit, z_unit = _unit(p_row), _unit(z_row)
        distance = 0.0
        for a, b in zip(p_unit, z_unit):
            distance += (a - b) ** 2
        total += distance
    return total / len(predictions)
