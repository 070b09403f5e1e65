"""Clustering metrics computed exactly and fast from one sparse contingency table.

Every metric here (:func:`nmi`, :func:`ami`, :func:`ari`,
:func:`cluster_accuracy`) is a thin wrapper that builds a
:class:`ContingencyTable` once and hands it to a table-level routine;
:func:`evaluate_clustering` builds the table once and computes all of them.

Values equal scikit-learn's ``normalized_mutual_info_score``,
``adjusted_mutual_info_score`` and ``adjusted_rand_score`` (arithmetic
normalisation, the default) to float64 rounding, including its conventions for
degenerate labelings:

* both labelings a single cluster: NMI = AMI = ARI = 1;
* exactly one labeling a single cluster: NMI = AMI = 0 (ARI by its formula);
* AMI's numerator and denominator are kept at least ``finfo(float64).eps`` in
  magnitude with their sign, so a 0/0 (perfect match whose expectation equals
  the maximum) gives 1.

They differ from scikit-learn in three deliberate ways: empty input raises
:class:`ValueError` (scikit-learn returns 1.0); float labels that are not
integral raise :class:`ValueError` (scikit-learn warns "Clustering metrics
expects discrete values" and uses each float as a category: such labels are
almost always scores or probabilities passed by mistake); and the expected mutual
information of AMI is a vectorised, grouped computation that takes well under
a second at ImageNet-1k scale instead of ~100 s (see
:func:`expected_mutual_information`), and is more accurate because it does not
take differences of ``log Gamma`` values of order ``N log N``.

Labels may be numpy arrays, lists or torch tensors on any device (moved to the
CPU), with any integer values, including negative and non-contiguous ones.
Floating-point labels are accepted only when every value is integral. As in
scikit-learn, NumPy arrays and lists may also hold strings or other objects of
one sortable type (e.g. class names); their sorted distinct values are the
labels (``ContingencyTable.classes``, the keys and values of
:func:`cluster_accuracy`'s mapping). NaN and infinity raise scikit-learn's
``ValueError`` wording ("Input labels_true contains NaN.").

Example:
    >>> evaluate_clustering(["cat", "cat", "dog"], ["c1", "c1", "c2"])["acc"]
    1.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Literal, Sequence, Tuple, Union, overload

import numpy as np
import scipy.sparse
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from propos_losses._emi import EPS, emi_from_sizes
from propos_losses._validation import check_bool, label_codes

__all__ = [
    "ContingencyTable",
    "contingency_table",
    "expected_mutual_information",
    "nmi",
    "ami",
    "ari",
    "cluster_accuracy",
    "evaluate_clustering",
]

LabelsLike = Union[np.ndarray, torch.Tensor, Sequence[int], Sequence[float], Sequence[str]]

# Largest R * C for which the Hungarian accuracy uses scipy's dense solver
# (64 MiB as int64); larger tables use the sparse LAPJVsp solver.
_DENSE_MATCHING_MAX_CELLS = 1 << 23


# --------------------------------------------------------------------------- #
# Input conversion and the contingency table
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class ContingencyTable:
    """Sparse contingency table of two labelings (classes x clusters).

    Cell ``(i, j)`` counts the samples with true label ``classes[i]`` and
    predicted label ``clusters[j]``; only non-zero cells are stored.

    Attributes:
        classes: ``(R,)`` sorted distinct values of ``labels_true``.
        clusters: ``(C,)`` sorted distinct values of ``labels_pred``.
        rows: ``(nnz,)`` int64 row index of each non-zero cell.
        cols: ``(nnz,)`` int64 column index of each non-zero cell.
        counts: ``(nnz,)`` int64 count ``n_ij`` of each non-zero cell.
        row_sums: ``(R,)`` int64 class sizes ``a_i`` (all positive).
        col_sums: ``(C,)`` int64 cluster sizes ``b_j`` (all positive).
        n_samples: number of samples ``N``.

    Example:
        >>> table = contingency_table([0, 0, 1], [5, 5, -1])
        >>> table.to_dense().tolist()
        [[0, 2], [1, 0]]
    """

    classes: np.ndarray
    clusters: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    counts: np.ndarray
    row_sums: np.ndarray
    col_sums: np.ndarray
    n_samples: int

    @property
    def shape(self) -> Tuple[int, int]:
        """``(R, C)``: number of classes and of clusters."""
        return int(self.classes.size), int(self.clusters.size)

    def to_sparse(self) -> scipy.sparse.csr_array:
        """The table as a ``(R, C)`` int64 :class:`scipy.sparse.csr_array`."""
        return scipy.sparse.csr_array((self.counts, (self.rows, self.cols)), shape=self.shape, dtype=np.int64)

    def to_dense(self) -> np.ndarray:
        """The table as a dense ``(R, C)`` int64 array (``R * C`` memory)."""
        dense = np.zeros(self.shape, dtype=np.int64)
        dense[self.rows, self.cols] = self.counts
        return dense


def contingency_table(labels_true: LabelsLike, labels_pred: LabelsLike) -> ContingencyTable:
    """Build the sparse contingency table shared by every metric.

    Both labelings are mapped to codes ``0..R-1`` and ``0..C-1`` (sorted
    distinct values), and the combined code ``row * C + col`` is counted with
    ``np.bincount`` when ``R * C`` is comparable to ``N`` and with
    ``np.unique`` otherwise, so memory stays ``O(N)`` even for all-singleton
    labelings.

    Args:
        labels_true: ``(N,)`` ground-truth labels: integers (numpy, list, or
            torch tensor on any device) or, in a NumPy array or list, strings
            or other sortable objects.
        labels_pred: ``(N,)`` predicted cluster labels, of the same kinds.

    Returns:
        The :class:`ContingencyTable`.

    Raises:
        TypeError: complex labels, objects of types that cannot be sorted together.
        ValueError: empty input, not 1-D, lengths differ, NaN/infinite or
            non-integral float labels.

    Example:
        >>> table = contingency_table([0, 0, 1, 1], [1, 1, 1, 0])
        >>> table.row_sums.tolist(), table.col_sums.tolist(), table.n_samples
        ([2, 2], [1, 3], 4)
    """
    classes, row_code = label_codes("labels_true", labels_true)
    clusters, col_code = label_codes("labels_pred", labels_pred)
    if row_code.size != col_code.size:
        raise ValueError(
            "labels_true and labels_pred must have the same length: Found input variables with inconsistent "
            f"numbers of samples: [{row_code.size}, {col_code.size}]"
        )
    n_rows, n_cols = classes.size, clusters.size
    # R * C <= N^2 fits in int64 for any N that fits in memory.
    code = row_code * np.int64(n_cols) + col_code
    if n_rows * n_cols <= 4 * code.size + 1024:
        dense = np.bincount(code, minlength=n_rows * n_cols)
        cells = np.flatnonzero(dense)
        counts = dense[cells]
    else:
        cells, counts = np.unique(code, return_counts=True)
    counts = counts.astype(np.int64, copy=False)
    rows, cols = np.divmod(cells.astype(np.int64, copy=False), np.int64(n_cols))
    row_sums = np.bincount(row_code, minlength=n_rows).astype(np.int64, copy=False)
    col_sums = np.bincount(col_code, minlength=n_cols).astype(np.int64, copy=False)
    return ContingencyTable(
        classes=classes,
        clusters=clusters,
        rows=rows,
        cols=cols,
        counts=counts,
        row_sums=row_sums,
        col_sums=col_sums,
        n_samples=int(row_code.size),
    )


# --------------------------------------------------------------------------- #
# Table-level computations
# --------------------------------------------------------------------------- #


def _entropy(sizes: np.ndarray, n_samples: int) -> float:
    """Entropy (nats) of a labeling with cluster sizes ``sizes`` (all > 0)."""
    if sizes.size == 1:
        return 0.0
    sizes = sizes.astype(np.float64)
    # log(a) - log(N) rather than log(a / N): no extra rounding from the division.
    return float(-np.sum((sizes / n_samples) * (np.log(sizes) - math.log(n_samples))))


def _mutual_information(table: ContingencyTable) -> float:
    """Mutual information (nats) of the table, scikit-learn's conventions."""
    n_rows, n_cols = table.shape
    # A labeling with a single cluster has zero entropy, hence MI = 0 exactly.
    if n_rows == 1 or n_cols == 1:
        return 0.0
    n = float(table.n_samples)
    nij = table.counts.astype(np.float64)
    outer = table.row_sums[table.rows] * table.col_sums[table.cols]  # int64: <= N^2
    terms = (nij / n) * (np.log(nij) - np.log(outer.astype(np.float64)) + math.log(n))
    # Terms that are zero up to rounding are set to zero (as scikit-learn does)
    # so that independent labelings give MI = 0 exactly, and NMI = 0.
    terms = np.where(np.abs(terms) < EPS, 0.0, terms)
    return float(max(terms.sum(), 0.0))


def expected_mutual_information(
    row_sums: Union[np.ndarray, Sequence[int]], col_sums: Union[np.ndarray, Sequence[int]]
) -> float:
    """Expected mutual information (nats) of two labelings with given sizes.

    Under the hypergeometric (permutation) model with fixed class sizes
    ``a_i`` and cluster sizes ``b_j``,
    ``EMI = sum_{i,j} sum_n (n/N) log(N n / (a_i b_j)) P(n; a_i, b_j, N)``,
    ``P`` the hypergeometric pmf of ``n_ij``. This implementation

    * groups equal sizes: EMI depends only on the multisets of ``a`` and ``b``,
      so each distinct pair ``(a, b)`` is evaluated once and weighted by the
      product of multiplicities;
    * vectorises over ``n`` with numpy, in blocks of bounded memory;
    * evaluates only a window around the mode. The pmf is log-concave
      (``P(n+1)/P(n) = (a-n)(b-n)/((n+1)(N-a-b+n+1))`` does not increase with
      ``n``), so beyond a window edge the tail is bounded by a geometric
      series, ``P(edge) r / (1 - r)``; every window is widened until both
      tail bounds are below ``eps / (R C)`` (``eps`` = float64 machine
      epsilon, ``R C`` the number of table cells) with one nat of margin.
      As ``|(n/N) log(N n/(a b))| <= log N`` for ``1 <= n <= min(a, b)``, the
      skipped terms change EMI by at most ``2 eps log N`` in absolute value,
      and renormalising the pmf over the window by at most as much again;
    * computes the pmf from ratios of consecutive terms rather than from
      differences of ``log Gamma`` values of order ``N log N`` (which is what
      limits scikit-learn's accuracy to ~``N log N * eps`` relative).

    Args:
        row_sums: ``(R,)`` positive integer class sizes ``a``.
        col_sums: ``(C,)`` positive integer cluster sizes ``b``, with
            ``sum(a) == sum(b) == N``.

    Returns:
        EMI in nats; 0.0 when ``R == 1`` or ``C == 1`` (a labeling with zero
        entropy), as in scikit-learn.

    Raises:
        ValueError: sizes not 1-D, empty, non-positive, or with different totals.
        TypeError: non-integer sizes.

    Example:
        >>> round(expected_mutual_information([2, 2], [2, 2]), 6)
        0.231049
    """
    a = _as_sizes("row_sums", row_sums)
    b = _as_sizes("col_sums", col_sums)
    n_samples = int(a.sum())
    if n_samples != int(b.sum()):
        raise ValueError(f"row_sums and col_sums must have the same total, got {n_samples} and {int(b.sum())}")
    return emi_from_sizes(a, b, n_samples)


def _as_sizes(name: str, sizes: object) -> np.ndarray:
    array = np.asarray(sizes)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {tuple(array.shape)}")
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    if array.min() <= 0:
        raise ValueError(f"{name} must be positive, got {array.min()!r}")
    return array.astype(np.int64)


def _nmi_from_table(table: ContingencyTable) -> float:
    n_rows, n_cols = table.shape
    if n_rows == 1 and n_cols == 1:
        # Neither labeling splits the data: a perfect match by convention.
        return 1.0
    mi = _mutual_information(table)
    if mi == 0.0:
        return 0.0
    h_true = _entropy(table.row_sums, table.n_samples)
    h_pred = _entropy(table.col_sums, table.n_samples)
    return float(mi / ((h_true + h_pred) / 2.0))


def _clamp_away_from_zero(value: float) -> float:
    """Keep ``value``'s sign but at least ``eps`` in magnitude (0 counts as +)."""
    return min(value, -EPS) if value < 0 else max(value, EPS)


def _is_relabelling(table: ContingencyTable) -> bool:
    """True when the two labelings are identical up to renaming clusters."""
    n_rows, n_cols = table.shape
    return n_rows == n_cols == table.counts.size


def _ami_from_table(table: ContingencyTable) -> float:
    n_rows, n_cols = table.shape
    if n_rows == 1 and n_cols == 1:
        return 1.0
    if n_rows == 1 or n_cols == 1:
        return 0.0
    if _is_relabelling(table):
        # MI = H(U) = H(V) exactly, so AMI = 1 whenever it is defined; this
        # also settles the 0/0 of all-singleton labelings (EMI = log N = H) the
        # way scikit-learn's clamping does, without depending on rounding.
        return 1.0
    mi = _mutual_information(table)
    emi = emi_from_sizes(table.row_sums, table.col_sums, table.n_samples)
    h_true = _entropy(table.row_sums, table.n_samples)
    h_pred = _entropy(table.col_sums, table.n_samples)
    denominator = _clamp_away_from_zero((h_true + h_pred) / 2.0 - emi)
    numerator = _clamp_away_from_zero(mi - emi)
    return float(numerator / denominator)


def _ari_from_table(table: ContingencyTable) -> float:
    n = table.n_samples
    # Pair counts in exact Python integers (no overflow, no rounding).
    sum_cells = int(np.dot(table.counts, table.counts))
    sum_rows = int(np.dot(table.row_sums, table.row_sums))
    sum_cols = int(np.dot(table.col_sums, table.col_sums))
    together_both = sum_cells - n  # ordered pairs in the same class and the same cluster
    together_pred_only = sum_cols - sum_cells
    together_true_only = sum_rows - sum_cells
    apart_both = n * n - together_pred_only - together_true_only - sum_cells
    if together_pred_only == 0 and together_true_only == 0:
        # The labelings induce the same partition (or N = 1): full agreement.
        return 1.0
    numerator = 2 * (together_both * apart_both - together_true_only * together_pred_only)
    denominator = (together_both + together_true_only) * (together_true_only + apart_both) + (
        together_both + together_pred_only
    ) * (together_pred_only + apart_both)
    return numerator / denominator


def _matched_count(table: ContingencyTable, class_idx: np.ndarray, cluster_idx: np.ndarray) -> int:
    """Sum of the table cells ``(class_idx[k], cluster_idx[k])`` (0 where empty)."""
    # Cells are stored in increasing order of the code row * C + col.
    cell_codes = table.rows * np.int64(table.shape[1]) + table.cols
    wanted = class_idx.astype(np.int64) * np.int64(table.shape[1]) + cluster_idx.astype(np.int64)
    position = np.minimum(np.searchsorted(cell_codes, wanted), cell_codes.size - 1)
    return int(np.where(cell_codes[position] == wanted, table.counts[position], 0).sum())


def _hungarian_matching(table: ContingencyTable) -> Tuple[np.ndarray, np.ndarray]:
    """Class and cluster indices of a one-to-one matching of ``min(R, C)`` pairs
    that maximises the number of matched samples."""
    n_rows, n_cols = table.shape
    if n_rows * n_cols <= _DENSE_MATCHING_MAX_CELLS:
        class_idx, cluster_idx = linear_sum_assignment(table.to_dense(), maximize=True)
        return class_idx, cluster_idx
    # Too many cells for a dense matrix (e.g. thousands of tiny clusters): sparse
    # LAPJVsp on the non-zero cells. Rows are the smaller side; each row also
    # gets a private dummy column so that a full matching always exists, and
    # every weight is shifted by +1 (the solver needs non-zero weights): a full
    # matching has exactly one edge per row, so the shift adds the same
    # constant to every candidate and leaves the optimum unchanged.
    transpose = n_rows > n_cols
    small, big = (table.cols, table.rows) if transpose else (table.rows, table.cols)
    n_small, n_big = min(n_rows, n_cols), max(n_rows, n_cols)
    dummy = np.arange(n_small, dtype=np.int64)
    graph = scipy.sparse.csr_array(
        (
            np.concatenate([table.counts + 1.0, np.ones(n_small)]),
            (np.concatenate([small, dummy]), np.concatenate([big, n_big + dummy])),
        ),
        shape=(n_small, n_big + n_small),
    )
    small_idx, big_idx = min_weight_full_bipartite_matching(graph, maximize=True)
    # Rows left on their dummy overlap with nothing; give them unused columns
    # so that the matching has min(R, C) pairs like the dense solver's.
    on_dummy = big_idx >= n_big
    if on_dummy.any():
        used = np.zeros(n_big, dtype=bool)
        used[big_idx[~on_dummy]] = True
        big_idx = big_idx.copy()
        big_idx[on_dummy] = np.flatnonzero(~used)[: int(on_dummy.sum())]
    return (big_idx, small_idx) if transpose else (small_idx, big_idx)


def _accuracy_from_table(table: ContingencyTable, method: str) -> Tuple[float, Dict[Any, Any]]:
    if method == "hungarian":
        # At most one cluster per class and one class per cluster, maximising
        # the number of matched samples.
        class_idx, cluster_idx = _hungarian_matching(table)
    else:  # majority: every cluster takes its most frequent class
        cluster_idx = np.arange(table.shape[1])
        class_idx = np.asarray(table.to_sparse().tocsc().argmax(axis=0)).reshape(-1)
    matched = _matched_count(table, class_idx, cluster_idx)
    mapping = {
        cluster: cls for cluster, cls in zip(table.clusters[cluster_idx].tolist(), table.classes[class_idx].tolist())
    }
    return matched / table.n_samples, mapping


_ACCURACY_METHODS = ("hungarian", "majority")


def _check_method(method: object) -> str:
    if method not in _ACCURACY_METHODS:
        raise ValueError(f"method must be one of {_ACCURACY_METHODS}, got {method!r}")
    return str(method)


# --------------------------------------------------------------------------- #
# Public metrics
# --------------------------------------------------------------------------- #


def nmi(labels_true: LabelsLike, labels_pred: LabelsLike) -> float:
    """Normalised mutual information with arithmetic normalisation.

    ``NMI = MI(U, V) / ((H(U) + H(V)) / 2)`` (natural logs), equal to
    ``sklearn.metrics.normalized_mutual_info_score`` with its default
    ``average_method="arithmetic"``. Both labelings a single cluster gives 1;
    ``MI == 0`` otherwise gives 0.

    Args:
        labels_true: ``(N,)`` class labels (numpy, list, torch tensor on any
            device; any integer values, or strings/objects as
            :func:`contingency_table` takes them).
        labels_pred: ``(N,)`` cluster labels, of the same kinds.

    Returns:
        NMI in ``[0, 1]``; symmetric in its arguments.

    Raises:
        TypeError, ValueError: see :func:`contingency_table`.

    Example:
        >>> nmi([0, 0, 1, 1], [1, 1, 0, 0])
        1.0
        >>> nmi([0, 0, 1, 1], [0, 1, 0, 1])
        0.0
    """
    return _nmi_from_table(contingency_table(labels_true, labels_pred))


def ami(labels_true: LabelsLike, labels_pred: LabelsLike) -> float:
    """Adjusted mutual information with arithmetic normalisation.

    ``AMI = (MI - EMI) / ((H(U) + H(V)) / 2 - EMI)`` with the expected mutual
    information ``EMI`` under the hypergeometric model (see
    :func:`expected_mutual_information`), equal to
    ``sklearn.metrics.adjusted_mutual_info_score`` (default arithmetic
    averaging) including its conventions: both labelings one cluster gives 1,
    exactly one of them one cluster gives 0, and numerator and denominator are
    kept at least ``finfo(float64).eps`` away from zero with their sign.
    Labelings identical up to renaming give exactly 1.

    Args:
        labels_true: ``(N,)`` class labels, of any kind :func:`nmi` takes.
        labels_pred: ``(N,)`` cluster labels.

    Returns:
        AMI (1 for a perfect match, about 0 for chance; can be negative);
        symmetric in its arguments.

    Raises:
        TypeError, ValueError: see :func:`contingency_table`.

    Example:
        >>> ami([0, 0, 1, 1], [1, 1, 0, 0])
        1.0
        >>> round(ami([0, 0, 1, 1], [0, 1, 0, 1]), 6)  # worse than chance
        -0.5
    """
    return _ami_from_table(contingency_table(labels_true, labels_pred))


def ari(labels_true: LabelsLike, labels_pred: LabelsLike) -> float:
    """Adjusted Rand index, equal to ``sklearn.metrics.adjusted_rand_score``.

    Computed from the pair counts of the contingency table in exact integer
    arithmetic; labelings that induce the same partition (including N = 1)
    give 1.

    Args:
        labels_true: ``(N,)`` class labels (as for :func:`nmi`).
        labels_pred: ``(N,)`` cluster labels of the same samples.

    Returns:
        ARI in ``[-0.5, 1]``; symmetric in its arguments.

    Raises:
        TypeError, ValueError: see :func:`contingency_table`.

    Example:
        >>> ari([0, 0, 1, 1], [0, 0, 1, 2])
        0.5714285714285714
    """
    return _ari_from_table(contingency_table(labels_true, labels_pred))


@overload
def cluster_accuracy(
    labels_true: LabelsLike,
    labels_pred: LabelsLike,
    return_mapping: Literal[False] = ...,
    *,
    method: str = ...,
) -> float: ...


@overload
def cluster_accuracy(
    labels_true: LabelsLike,
    labels_pred: LabelsLike,
    return_mapping: Literal[True],
    *,
    method: str = ...,
) -> Tuple[float, Dict[Any, Any]]: ...


def cluster_accuracy(
    labels_true: LabelsLike,
    labels_pred: LabelsLike,
    return_mapping: bool = False,
    *,
    method: str = "hungarian",
) -> Union[float, Tuple[float, Dict[Any, Any]]]:
    """Clustering accuracy: fraction of samples whose mapped cluster is their class.

    ``method="hungarian"`` (default, the standard deep-clustering ACC): a
    one-to-one assignment between clusters and classes maximising the number
    of matched samples, solved exactly by
    :func:`scipy.optimize.linear_sum_assignment` on the ``(R, C)``
    contingency table. Any number of clusters ``C`` and classes ``R`` is
    allowed: ``min(R, C)`` pairs are matched. With more clusters than classes
    (``C > R``), the ``C - R`` unmatched clusters have no class and every
    sample in them counts as wrong; with fewer clusters than classes, the
    samples of the unmatched classes count as wrong. ``C == R`` is the usual
    permutation-matching accuracy.

    ``method="majority"``: every cluster is mapped to its most frequent class
    (many-to-one; ties to the smallest class label). This is never below the
    Hungarian value and rewards over-clustering (all singletons give 1.0), so
    use it only when that is intended, e.g. for ``C >> R``.

    Cost: up to ``2^23`` table cells the Hungarian method runs scipy's dense
    solver on the ``R x C`` table; beyond (e.g. thousands of tiny clusters) it
    runs :func:`scipy.sparse.csgraph.min_weight_full_bipartite_matching` on the
    non-zero cells, so memory stays ``O(N + R + C)``. Majority stays sparse.

    Args:
        labels_true: ``(N,)`` class labels (numpy, list, torch tensor on any
            device; any integer values, or strings/objects as
            :func:`contingency_table` takes them).
        labels_pred: ``(N,)`` cluster labels, of the same kinds.
        return_mapping: also return the mapping ``{cluster label: class
            label}``. With the Hungarian method it holds the ``min(R, C)``
            matched pairs (unmatched clusters are absent; pairs that share no
            sample are matched arbitrarily and change nothing); with majority
            it holds every cluster.
        method: ``"hungarian"`` or ``"majority"``.

    Returns:
        Accuracy in ``[0, 1]``, or ``(accuracy, mapping)`` when
        ``return_mapping`` is true. The accuracy does not change when the
        predicted clusters are relabelled.

    Raises:
        TypeError, ValueError: bad labels (see :func:`contingency_table`) or
            an unknown ``method``.

    Example:
        >>> cluster_accuracy([0, 0, 1, 1, 2], [7, 7, 3, 3, 3], return_mapping=True)
        (0.8, {3: 1, 7: 0})
    """
    check_bool("return_mapping", return_mapping)
    method = _check_method(method)
    accuracy, mapping = _accuracy_from_table(contingency_table(labels_true, labels_pred), method)
    if return_mapping:
        return accuracy, dict(sorted(mapping.items()))
    return accuracy


def evaluate_clustering(
    labels_true: LabelsLike, labels_pred: LabelsLike, *, method: str = "hungarian"
) -> Dict[str, float]:
    """NMI, AMI, ARI and accuracy from one shared contingency table.

    Equal to calling :func:`nmi`, :func:`ami`, :func:`ari` and
    :func:`cluster_accuracy` separately, but the labels are converted and the
    table built only once.

    Args:
        labels_true: ``(N,)`` class labels (numpy, list, torch tensor on any
            device; any integer values, or strings/objects as
            :func:`contingency_table` takes them).
        labels_pred: ``(N,)`` cluster labels, of the same kinds.
        method: accuracy matching, ``"hungarian"`` or ``"majority"`` (see
            :func:`cluster_accuracy`).

    Returns:
        ``{"nmi": ..., "ami": ..., "ari": ..., "acc": ...}`` as Python floats.

    Raises:
        TypeError, ValueError: see :func:`contingency_table`.

    Example:
        >>> evaluate_clustering([0, 0, 1, 1], [1, 1, 0, 0])
        {'nmi': 1.0, 'ami': 1.0, 'ari': 1.0, 'acc': 1.0}
    """
    method = _check_method(method)
    table = contingency_table(labels_true, labels_pred)
    return {
        "nmi": _nmi_from_table(table),
        "ami": _ami_from_table(table),
        "ari": _ari_from_table(table),
        "acc": _accuracy_from_table(table, method)[0],
    }
