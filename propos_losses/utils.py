"""Small utilities shared by the package and the reference trainer, under public names.

* argument checks that raise a :class:`ValueError` / :class:`TypeError` naming the
  argument and the value: :func:`check_int`, :func:`check_float`,
  :func:`check_tensor`, :func:`check_finite`, :func:`check_labels`,
  :func:`as_label_array` (labels of any array type as a NumPy integer array);
* :func:`normalize_rows`: the package's one row normalisation (zero rows stay
  zero with a zero gradient; tiny and huge rows are scaled first, so nothing
  under- or overflows), used by PSL, PSA and the prototypes;
* :func:`cluster_sums`: per-cluster sums and counts of features.

Example:
    >>> import torch
    >>> from propos_losses.utils import check_int, normalize_rows
    >>> check_int("num_clusters", 10, minimum=2)
    10
    >>> normalize_rows(torch.tensor([[3e-30, 4e-30], [0.0, 0.0]]))
    tensor([[0.6000, 0.8000],
            [0.0000, 0.0000]])
"""

from __future__ import annotations

from propos_losses._validation import (
    as_label_array,
    check_finite,
    check_float,
    check_int,
    check_labels,
    check_tensor,
)
from propos_losses.prototypes import cluster_sums
from propos_losses.prototypes import normalize_features as normalize_rows

__all__ = [
    "check_int",
    "check_float",
    "check_tensor",
    "check_finite",
    "check_labels",
    "as_label_array",
    "normalize_rows",
    "cluster_sums",
]
