"""Fast batched spherical k-means with greedy k-means++ initialisation.

Spherical k-means clusters the directions of the rows of ``X``: with
``x_i = X_i / ||X_i||`` and unit centres ``c_k`` it maximises
``sum_i cos(x_i, c_{a_i})`` and reports the *cosine inertia*

    inertia = sum_i (1 - cos(x_i, c_{a_i})),

which on the unit sphere equals half the squared Euclidean inertia
(``||x - c||^2 = 2 (1 - cos)``). It is the E-step of ProPos (docs/overview.rst).

How it is computed (and why it is fast):

* All ``n_init`` restarts run as ONE batched computation: the centres of every
  restart are stacked into ``(R, K, d)`` and the similarities of a chunk of
  rows to all of them come from a single matrix multiply
  ``(chunk, d) x (d, R * K)``. Peak extra memory is ``O(R * chunk * K)`` and is
  bounded by ``chunk_size`` (default: as many rows as fit in
  :data:`DEFAULT_CHUNK_BYTES` of similarities).
* Centres are the L2-normalised per-cluster sums (for unit vectors the
  normalised sum maximises ``sum_i cos(x_i, c)`` over the cluster). The sums
  ``(R, K, d)`` are kept in float64 and, after the first pass, updated only
  with the rows that switched cluster (``index_add_``), which after a few
  iterations is a small fraction of the data.
* A restart stops on its own (see *Stopping rule*); converged restarts are
  dropped from the batch so the remaining ones run faster. Once at most 5% of
  the labels switch in an iteration (and ``K >= 32``, where ``R`` products
  with ``K`` centres cost about as much as one with ``R * K``), the remaining
  restarts go on one by one with the bounded iterations described next: the
  same steps, but only the rows whose label can change are re-examined.
* The winner's iterations on every row also re-examine only the rows whose label
  can change: each row keeps a lower bound of its similarity to its own
  centre and upper bounds of its similarity to the others (Elkan's bounds,
  or Hamerly's single bound when ``N x K`` of them do not fit in
  :data:`DEFAULT_CHUNK_BYTES`), moved by how far the centres moved
  (``|x . c' - x . c| <= ||c' - c||`` for a unit ``x``). A skipped row
  provably keeps its label, so the iterations are Lloyd's (up to the
  rounding of near-ties) at a fraction of the cost once few rows move.
* Initialisation is the greedy k-means++ of scikit-learn, batched over the
  restarts: ``2 + floor(ln K)`` candidates per step, sampled with probability
  proportional to ``D_i = 1 - max_j cos(x_i, c_j)``, keeping the candidate
  that most reduces the potential ``sum_i D_i``. Because
  ``||x - c||^2 = 2 (1 - cos)`` for unit vectors, sampling proportional to
  ``1 - cos`` *is* the ``D^2`` sampling of k-means++ on the sphere.

Stopping rule (``tol``): let ``I_t`` be the inertia of iteration ``t`` (the
assignment of every row to its most similar centre ``c^(t)``, before the
update). A restart stops after iteration ``t >= 1`` when

    I_{t-1} - I_t <= tol * I_{t-1},

i.e. when one more Lloyd step improved the objective by a relative amount of
at most ``tol``, or after ``max_iter`` iterations; a restart whose labels did
not change in an iteration also stops (a fixed point). ``tol = 0`` runs until
the objective stops decreasing. Unlike scikit-learn's centre shift relative
to the data variance, this criterion does not depend on the dimension or
scale of the data.

What the result is: ``cluster_centers_`` are the normalised means of the
labels of the last iteration, and ``labels_`` are computed afterwards from
these centres, exactly as :meth:`SphericalKMeans.predict` computes them
(``labels_ == predict(X)`` always; ``inertia_`` is their inertia). When the
last iteration changed no label (always with ``tol = 0``, unless
``max_iter`` cut the run) and no empty cluster had to be re-seeded, the two
agree up to rows tied within rounding: the centres are the normalised means
of ``labels_``, a fixed point of Lloyd's algorithm. Otherwise a few
rows (those that the last, small improvement moved) may sit in a cluster
whose centre was computed without them. Without subsampling, the winning
restart is iterated alone after leaving the batch (at ``1 / R`` of the
batched cost) until its inertia stops decreasing by more than a few ulps of
the data dtype, so such rows are rare; with subsampled restarts the winner's
full-data iterations stop on ``tol / 10`` (measured on MNIST: iterating on
to the fixed point would take about 1.5-5x more of them).

The best restart is the one with the lowest inertia of its final centres;
restarts within a few ulps of it (the same optimum, summed in another order)
count as tied and the first of them wins, so sharding cannot change the choice.

Subsampled restarts (``sample_size``, by default ``"auto"``): when the
restarts get fewer rows than ``X`` has, the initialisation and the batched
Lloyd iterations of all restarts run on a uniform random subsample of about
``sample_size`` rows (drawn with the seeded generator; under
``torch.distributed`` every rank keeps ``ceil(sample_size * N_rank / N)`` of
its rows), the restart with the lowest inertia *on the subsample* wins, and
only that one is then iterated on every row with ``tol / 10`` and
``max_iter`` (``n_iter_`` and ``inertia_history_`` count these full-data
iterations; they are cheap thanks to the bounds, and the tighter ``tol``
recovers most of the inertia that choosing the winner on a sample costs:
on MNIST ``K = 100`` 0.07-0.11% above scikit-learn with ``tol``, 0.03% below
to 0.03% above with ``tol / 10``, at the same total time). ``"auto"``
uses ``2,560,000 / K`` rows, kept within 16 to 512
rows per cluster (``K = 10``: 5,120 rows, ``K = 100``: 25,600,
``K = 1,000``: 16,000), so data sets up to that size run every restart on
all rows as before; it subsamples only restarts it initialises itself (not
given centres). ``None`` runs every restart on all rows. This cuts the cost
of the restarts by ``N / sample_size`` at the price of choosing the winner on
a sample: with hundreds of rows per cluster the final inertia is typically
within 0.1% of the unsampled run (see ``benchmarks/bench_kmeans.py`` and the
k-means page of the documentation); with few rows per cluster it can be noticeably
worse. The subsample depends on the sharding, so distributed and
single-process runs differ when it is used.

Empty clusters: after an assignment step, each empty cluster is re-seeded with
a distinct point among those worst served by their current centre (largest
``1 - cos``), taken only from clusters that keep at least one member; the
point moves to the new cluster in the sums and counts. The final labels come
from a last assignment step with the final centres; if that step empties a
cluster (possible only with duplicated rows or ``K`` close to ``N``), the
cluster's centre is moved onto such a worst-served row and the rows are
assigned again, so no cluster is empty whenever ``X`` has at least ``K``
distinct directions. With fewer distinct directions than ``K`` some clusters
must stay empty (their centres duplicate others): as scikit-learn does, a
:class:`ConvergenceWarning` "Number of distinct clusters (m) found smaller
than n_clusters (K)" is issued, and ``labels_`` still equal ``predict(X)``.

Distributed (``torch.distributed`` initialised, more than one rank): every rank
passes its own shard (sizes may differ). Sums, counts and inertias are
all-reduced with :func:`propos_losses.distributed.all_reduce_sum_`, so every
rank holds identical centres, inertia and ``n_iter_`` and its own shard's
labels. The k-means++ initialisation is global and exact: the sampling draws
come from a generator seeded identically on every rank, each draw is mapped to
the rank that owns the sampled row (from the all-gathered per-rank potential
totals) and that rank contributes the row through an all-reduce; candidate
potentials are all-reduced, so every rank picks the same candidate. Re-seeding
candidates are all-gathered. With the same initial centres the result equals
the single-process run on the concatenated shards, up to floating-point
summation order.

Input and output types: ``X`` may be a NumPy array or array-like (a list, a
pandas DataFrame), a torch tensor on CPU or CUDA, or sparse: a SciPy sparse
matrix or array of any format, or a sparse torch tensor (COO, CSR, CSC). Dense
data is computed in its float32/float64 dtype (float16 and bfloat16 in
float32; integer and boolean data in float64, as scikit-learn's ``KMeans``
does; complex data is an error). Rows are divided by their norm unless every
norm is already within ``4 sqrt(d)`` ulps of 1 (as normalising leaves them);
then ``X`` is used as it is, without a copy. A row whose squared norm would
overflow or underflow (entries near the dtype's maximum, or below about
``1e-19`` in float32) is divided by its largest entry first. NaN and infinite
values raise scikit-learn's ``ValueError`` ("Input X contains NaN.").

All-zero rows (e.g. documents with no known term) follow scikit-learn's
``normalize``/``cosine_similarity`` convention: they stay zero, so their cosine
similarity to every centre is 0 (``transform`` gives 0, they add ``w_i`` to the
inertia and nothing to the centres) and they are never chosen as a centre
(k-means++ gives them probability 0, re-seeding skips them).

Sparse input is never densified: it is kept as CSR (SciPy input is converted
with ``tocsr()``, a copy of the stored values), the rows are normalised by
dividing the stored values, the assignments are sparse-dense products with the
dense ``(R * K, d)`` centres (``torch.sparse.mm``, on CPU or CUDA), the cluster
sums scatter the stored values into dense ``(K, d)`` sums, and only gathered
rows (the sampled k-means++ candidates, re-seeding rows) are made dense.

Sample weights (``fit(X, sample_weight=w)``): a row of weight ``w_i`` counts
as ``w_i`` copies of itself in the cluster sums (so in the centres), in the
inertia ``sum_i w_i (1 - cos)`` and in the k-means++ sampling (probability
proportional to ``w_i D_i``); ``"random"`` initialisation draws rows with
probability proportional to ``w_i``. Rows of weight 0 never become centres.

Results mirror the input: torch tensors on ``X``'s device for tensor input
(dense or sparse), NumPy arrays for NumPy, array-like and SciPy input (labels
are int64 in both cases; centres are always dense).

Seeding: ``random_state`` follows scikit-learn (``check_random_state``): an int
seeds the generator of the initialisation and subsampling (CPU results are
deterministic), a ``numpy.random.RandomState`` or ``Generator`` is drawn from
once per fit, ``None`` draws from NumPy's global ``RandomState``. Under
``torch.distributed`` the draw of rank 0 is used on every rank.
"""

from __future__ import annotations

import inspect
import math
import numbers
import re
import sys
import time
import warnings
from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from typing_extensions import TypedDict, Unpack

from propos_losses._deprecation import warn_deprecated_parameter
from propos_losses._validation import check_float, check_int
from propos_losses.defaults import KMEANS_MAX_ITER, KMEANS_N_INIT, KMEANS_TOL
from propos_losses.distributed import (
    all_gather_cat,
    all_reduce_sum_,
    broadcast_,
    check_on_every_rank,
    dtype_code,
    get_rank,
    is_distributed,
    local_only,
)

__all__ = [
    "SphericalKMeans",
    "spherical_kmeans",
    "KMeansParams",
    "KMeansResult",
    "NotFittedError",
    "ConvergenceWarning",
    "DEFAULT_CHUNK_BYTES",
]


class NotFittedError(ValueError, AttributeError):
    """A method used before :meth:`SphericalKMeans.fit`: a ``ValueError`` and an ``AttributeError``.

    When scikit-learn is loaded, the error raised is also an instance of
    scikit-learn's ``NotFittedError`` (so its checks recognise it).
    """


def _not_fitted(message: str) -> NotFittedError:
    """A :class:`NotFittedError`, also scikit-learn's when scikit-learn is already imported.

    Importing scikit-learn here would add about a second to ``import propos_losses``; a user whose
    code reaches scikit-learn's checks or pipelines has imported it already.
    """
    module = sys.modules.get("sklearn.exceptions")
    if module is None:
        return NotFittedError(message)
    combined = type("NotFittedError", (NotFittedError, module.NotFittedError), {"__module__": __name__})
    error: NotFittedError = combined(message)
    return error


class ConvergenceWarning(UserWarning):
    """k-means found fewer non-empty clusters than ``n_clusters`` (scikit-learn's warning of the same name).

    When scikit-learn is loaded, the warning issued is also an instance of
    ``sklearn.exceptions.ConvergenceWarning``, so its filters apply.

    Example:
        >>> import warnings
        >>> import numpy as np
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     _ = SphericalKMeans(3, n_init=1, random_state=0).fit(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
        >>> any(issubclass(w.category, ConvergenceWarning) for w in caught)
        True
    """


_COMBINED_WARNINGS: Dict[int, type] = {}


def _convergence_warning_class() -> type:
    """:class:`ConvergenceWarning`, combined with scikit-learn's when scikit-learn is already imported."""
    module = sys.modules.get("sklearn.exceptions")
    if module is None:
        return ConvergenceWarning
    if id(module) not in _COMBINED_WARNINGS:  # one class, so that warning filters and "once" work
        _COMBINED_WARNINGS[id(module)] = type(
            "ConvergenceWarning", (ConvergenceWarning, module.ConvergenceWarning), {"__module__": __name__}
        )
    return _COMBINED_WARNINGS[id(module)]


ArrayLike = Union[Tensor, np.ndarray]
#: Data of fit/predict: a NumPy array or array-like (list, pandas DataFrame), a dense or sparse
#: (COO/CSR/CSC) tensor, or a SciPy sparse matrix or array of any format.
DataLike = Any
WeightLike = Union[Tensor, np.ndarray, Sequence[float], float]
RandomStateLike = Union[None, int, np.random.RandomState, np.random.Generator]
InitLike = Union[str, Tensor, np.ndarray]
SampleSize = Union[int, str, None]

#: Memory budget (bytes) of one chunk of similarities when ``chunk_size`` is
#: ``None``: rows per chunk = budget / (R * K * itemsize).
DEFAULT_CHUNK_BYTES: int = 256 * 2**20

#: Up to this many centres (R * K) the centre sums use a one-hot matrix multiply,
#: above it ``index_add_`` (whose cost does not grow with K); measured on CPU.
_ONE_HOT_MAX_WIDTH: int = 128

#: The cluster sums are updated from the rows that switched cluster unless
#: more than this fraction of (row, restart) labels switched in the last pass.
_INCREMENTAL_MAX_FRACTION: float = 0.25

#: The batched restarts continue one by one with the bounded iterations (:func:`_lloyd_bounded`) once at
#: most this fraction of their labels switched in an iteration, when ``K`` is at least
#: :data:`_BOUNDED_MIN_CLUSTERS` (below it, one product with ``R * K`` centres beats ``R`` narrow ones).
_BOUNDED_SWITCH_FRACTION: float = 0.05
_BOUNDED_MIN_CLUSTERS: int = 32

#: Default of ``sample_size``: the restarts run on :func:`_auto_sample_size` rows.
AUTO_SAMPLE_SIZE: str = "auto"

#: ``sample_size="auto"``: the restarts run on about ``_AUTO_ROW_CLUSTERS / K`` rows
#: (their cost grows with rows x K), but at least :data:`_AUTO_MIN_ROWS_PER_CLUSTER`
#: and at most :data:`_AUTO_MAX_ROWS_PER_CLUSTER` rows per cluster (their quality
#: grows with rows per cluster); measured in ``benchmarks/bench_kmeans.py``.
_AUTO_ROW_CLUSTERS: int = 2_560_000
_AUTO_MIN_ROWS_PER_CLUSTER: int = 16
_AUTO_MAX_ROWS_PER_CLUSTER: int = 512
#: With subsampled restarts the winner's full-data iterations stop at ``tol`` times this: they
#: are cheap (bounded), and on MNIST K = 100 they recover most of the 0.1% of inertia that
#: choosing the winner on a sample costs.
_FULL_DATA_TOL_FACTOR: float = 0.1

#: Restarts whose inertias agree to within this many ulps of the data dtype are
#: tied; the first one wins.
_TIE_ULPS: int = 16

_INIT_METHODS = ("k-means++", "random")
_SEED_BOUND = 2**63 - 1  # torch.Generator.manual_seed accepts seeds below 2**64


class KMeansResult(NamedTuple):
    """Result of :func:`spherical_kmeans`.

    Attributes:
        centers: ``(K, d)`` unit-norm centres, dtype of the computation.
        labels: ``(N,)`` int64 cluster of each row (this rank's shard when
            distributed).
        inertia: ``sum_i (1 - cos(x_i, c_{a_i}))`` over all rows (all ranks).
        n_iter: Lloyd iterations run by the best restart.
    """

    centers: ArrayLike
    labels: ArrayLike
    inertia: float
    n_iter: int


class _Fit(NamedTuple):
    centers: Tensor  # (K, d)
    labels: Tensor  # (N,) int64
    inertia: float
    n_iter: int
    history: List[float]
    restart_inertias: List[float]


# --------------------------------------------------------------------------- input


class _Rows:
    """``(N, d)`` rows as the kernels see them: dense or CSR, with optional per-row weights.

    The kernels only slice rows, gather rows, multiply by dense centres and add
    rows into dense sums, so one interface covers dense tensors and sparse CSR
    data (which is never densified as a whole: only gathered rows, e.g. the
    sampled k-means++ candidates, are).

    Attributes:
        weight: ``(N,)`` sample weights in the data dtype, or ``None`` (all 1).
        pick: ``(N,)`` bool, rows that may become centres (non-zero rows of
            positive weight), or ``None`` when every row may.
    """

    n: int
    d: int
    dtype: torch.dtype
    device: torch.device
    weight: Optional[Tensor]
    pick: Optional[Tensor]

    def element_size(self) -> int:
        return torch.finfo(self.dtype).bits // 8

    def span(self, start: int, stop: int) -> "_Rows":
        """Rows ``start:stop``."""
        raise NotImplementedError

    def take(self, index: Tensor) -> "_Rows":
        """Rows ``index`` ``(m,)`` (int64, on the data's device)."""
        raise NotImplementedError

    def mm_t(self, centers: Tensor) -> Tensor:
        """Similarities ``(n, m)``: the rows times ``centers.T`` for ``(m, d)`` dense centres."""
        raise NotImplementedError

    def to_dense(self) -> Tensor:
        """The rows as a dense ``(n, d)`` tensor (used for a few gathered rows only)."""
        raise NotImplementedError

    def add_to(self, out: Tensor, labels: Tensor, alpha: float = 1.0) -> None:
        """``out[labels[i]] += alpha * w_i * x_i`` for every row ``i``; ``out`` is a contiguous ``(W, d)`` tensor."""
        raise NotImplementedError

    def weighted(self, values: Tensor) -> Tensor:
        """``sum_i w_i * values[i]`` over dim 0, in float64 (``values``: ``(n, ...)``)."""
        if self.weight is None:
            return values.sum(dim=0, dtype=torch.float64)
        weight = self.weight.to(torch.float64).view(-1, *([1] * (values.dim() - 1)))
        return (values.to(torch.float64) * weight).sum(dim=0)

    def total_weight(self) -> Tensor:
        """``sum_i w_i`` (``n`` without weights) as a float64 scalar tensor."""
        if self.weight is None:
            return torch.tensor(float(self.n), dtype=torch.float64, device=self.device)
        return self.weight.sum(dtype=torch.float64)

    def pick_weight(self) -> Optional[Tensor]:
        """``(N,)`` float64 weights of the rows as candidate centres (``w_i``, 0 for zero rows), or ``None`` (all 1)."""
        if self.pick is None and self.weight is None:
            return None
        weight = torch.ones(self.n, dtype=torch.float64, device=self.device)
        if self.weight is not None:
            weight = self.weight.to(torch.float64)
        if self.pick is not None:
            weight = weight * self.pick
        return weight

    def _sub(self, index: Union[slice, Tensor]) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        weight = None if self.weight is None else self.weight[index]
        pick = None if self.pick is None else self.pick[index]
        return weight, pick


class _DenseRows(_Rows):
    """Dense ``(N, d)`` rows."""

    def __init__(self, X: Tensor, weight: Optional[Tensor] = None, pick: Optional[Tensor] = None) -> None:
        self.X = X
        self.n, self.d = int(X.shape[0]), int(X.shape[1])
        self.dtype, self.device = X.dtype, X.device
        self.weight, self.pick = weight, pick

    def span(self, start: int, stop: int) -> "_DenseRows":
        return _DenseRows(self.X[start:stop], *self._sub(slice(start, stop)))

    def take(self, index: Tensor) -> "_DenseRows":
        return _DenseRows(self.X[index], *self._sub(index))

    def mm_t(self, centers: Tensor) -> Tensor:
        return torch.mm(self.X, centers.t())

    def to_dense(self) -> Tensor:
        return self.X

    def weighted_rows(self, dtype: torch.dtype) -> Tensor:
        rows = self.X.to(dtype)
        return rows if self.weight is None else rows * self.weight.to(dtype).unsqueeze(1)

    def add_to(self, out: Tensor, labels: Tensor, alpha: float = 1.0) -> None:
        out.index_add_(0, labels, self.weighted_rows(out.dtype), alpha=alpha)


class _SparseRows(_Rows):
    """CSR ``(N, d)`` rows: ``crow`` ``(N + 1,)``, ``col`` and ``val`` ``(nnz,)`` (int64, int64, float)."""

    def __init__(
        self,
        crow: Tensor,
        col: Tensor,
        val: Tensor,
        d: int,
        weight: Optional[Tensor] = None,
        pick: Optional[Tensor] = None,
    ) -> None:
        self.crow, self.col, self.val = crow, col, val
        self.n, self.d = int(crow.shape[0]) - 1, d
        self.dtype, self.device = val.dtype, val.device
        self.weight, self.pick = weight, pick
        self._row: Optional[Tensor] = None
        self._csr: Optional[Tensor] = None

    @property
    def row(self) -> Tensor:
        """``(nnz,)`` row index of every stored value."""
        if self._row is None:
            self._row = torch.repeat_interleave(
                torch.arange(self.n, device=self.device), self.crow.diff(), output_size=int(self.val.shape[0])
            )
        return self._row

    def csr(self) -> Tensor:
        if self._csr is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "Sparse CSR tensor support is in beta state"
                self._csr = torch.sparse_csr_tensor(
                    self.crow, self.col, self.val, size=(self.n, self.d), check_invariants=False
                )
        csr: Tensor = self._csr
        return csr

    def span(self, start: int, stop: int) -> "_SparseRows":
        stop = min(stop, self.n)
        crow = self.crow[start : stop + 1]
        low, high = int(crow[0]), int(crow[-1])
        return _SparseRows(crow - low, self.col[low:high], self.val[low:high], self.d, *self._sub(slice(start, stop)))

    def take(self, index: Tensor) -> "_SparseRows":
        starts = self.crow[index]
        lengths = self.crow[index + 1] - starts
        crow = torch.zeros(index.shape[0] + 1, dtype=self.crow.dtype, device=self.device)
        torch.cumsum(lengths, 0, out=crow[1:])
        total = int(crow[-1])
        # Position of each gathered value in col/val: its row's start plus its rank inside the row.
        shift = torch.repeat_interleave(starts - crow[:-1], lengths, output_size=total)
        position = torch.arange(total, device=self.device) + shift
        return _SparseRows(crow, self.col[position], self.val[position], self.d, *self._sub(index))

    def mm_t(self, centers: Tensor) -> Tensor:
        if self.n == 0:
            return self.val.new_zeros(0, centers.shape[0])
        product: Tensor = torch.sparse.mm(self.csr(), centers.t().contiguous())
        return product

    def to_dense(self) -> Tensor:
        dense = self.val.new_zeros(self.n, self.d)
        dense.view(-1).index_put_((self.row * self.d + self.col,), self.val, accumulate=True)
        return dense

    def add_to(self, out: Tensor, labels: Tensor, alpha: float = 1.0) -> None:
        values = self.val.to(out.dtype)
        if self.weight is not None:
            values = values * self.weight.to(out.dtype)[self.row]
        out.view(-1).index_add_(0, labels[self.row] * self.d + self.col, values, alpha=alpha)


def _as_rows(name: str, X: object) -> Tuple[Union[Tensor, _SparseRows], bool]:
    """``X`` as a 2-D float32/float64 dense tensor or CSR rows, and whether results are returned as NumPy.

    Accepted: NumPy arrays and array-likes (lists, pandas DataFrames),
    torch tensors (dense or sparse COO/CSR/CSC), SciPy sparse matrices and
    arrays of any format (converted to CSR, never densified). Integer and
    boolean data are converted to float64 (as scikit-learn's ``KMeans``
    does), float16/bfloat16 to float32; complex data is an error.
    """
    if hasattr(X, "tocsr") and hasattr(X, "toarray"):  # scipy.sparse, without importing it
        return _scipy_sparse_rows(name, X), True
    if isinstance(X, Tensor) and X.layout != torch.strided:
        return _torch_sparse_rows(name, X), False
    if not isinstance(X, (Tensor, np.ndarray)) and hasattr(X, "__array__") or isinstance(X, (list, tuple)):
        try:
            X = np.asarray(X)  # array-likes (scikit-learn's convention); NumPy rules below
        except (TypeError, ValueError) as error:  # e.g. ragged nested lists
            raise ValueError(f"{name} must be a 2-D array of numbers: {error}") from None
    if isinstance(X, np.ndarray):
        X = _numpy_float(name, X)
        with warnings.catch_warnings():
            # Read-only arrays (memory maps) are never written to: torch's warning does not apply.
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.from_numpy(np.ascontiguousarray(X))
        is_numpy = True
    elif isinstance(X, Tensor):
        tensor = _torch_float(name, X).detach()
        is_numpy = False
    else:
        raise TypeError(
            f"{name} must be a torch.Tensor, a numpy.ndarray or a scipy.sparse matrix, got {type(X).__name__}"
        )
    _check_2d(name, tuple(tensor.shape))
    return tensor, is_numpy


def _check_2d(name: str, shape: Tuple[int, ...]) -> None:
    if len(shape) != 2:
        raise ValueError(
            f"{name} must be 2-D (N, d), got shape {shape}; Reshape your data, e.g. with "
            f"{name}.reshape(-1, 1) for one feature or {name}.reshape(1, -1) for one sample"
        )
    if shape[1] < 1:
        raise ValueError(f"{name} has 0 feature(s) (shape=({shape[0]}, 0)) while a minimum of 1 is required.")


def _numpy_float(name: str, X: np.ndarray) -> np.ndarray:
    """A float32/float64 view or copy of a NumPy array (integers and booleans: float64, float16: float32)."""
    if X.dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {name} has NumPy dtype {X.dtype}")
    if X.dtype.kind == "O":
        try:
            X = X.astype(np.float64)  # e.g. a list mixing ints and floats, pandas object columns
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"{name} must hold numbers, got a NumPy object array that is not numeric: {error}"
            ) from None
    if X.dtype.kind in "iub":
        return X.astype(np.float64)  # as scikit-learn's KMeans does
    if X.dtype == np.float16:
        return X.astype(np.float32)  # as for torch half precision: computed in float32
    if X.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must hold real numbers, got NumPy dtype {X.dtype}")
    return X


def _torch_float(name: str, X: Tensor) -> Tensor:
    """A float32/float64 tensor (integers and booleans: float64, half precision: float32)."""
    if X.is_complex():
        raise ValueError(f"Complex data not supported: {name} has dtype {X.dtype}")
    if X.dtype in (torch.float16, torch.bfloat16):
        return X.float()  # half precision cannot hold the sums of a large cluster
    if not X.is_floating_point():
        return X.to(torch.float64)  # integers and booleans, as for NumPy input
    return X


def _scipy_sparse_rows(name: str, X: Any) -> _SparseRows:
    """CSR rows from a SciPy sparse matrix or array of any format (the stored values are copied, not densified)."""
    _check_2d(name, tuple(X.shape))
    csr = X.tocsr()
    values = _numpy_float(name, np.asarray(csr.data))
    if not csr.has_canonical_format:
        csr = csr.copy()
        csr.sum_duplicates()  # sorted column indices, duplicates summed
        values = _numpy_float(name, np.asarray(csr.data))
    crow = torch.from_numpy(np.asarray(csr.indptr, dtype=np.int64))
    col = torch.from_numpy(np.asarray(csr.indices, dtype=np.int64))
    return _SparseRows(crow, col, torch.from_numpy(np.array(values)), int(X.shape[1]))


def _torch_sparse_rows(name: str, X: Tensor) -> _SparseRows:
    """CSR rows from a sparse torch tensor (COO, CSR or CSC), on its device."""
    _check_2d(name, tuple(X.shape))
    if X.layout not in (torch.sparse_coo, torch.sparse_csr, torch.sparse_csc):
        raise TypeError(f"{name} must be a dense tensor or a sparse COO/CSR/CSC tensor, got layout {X.layout}")
    X = X.detach()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Sparse CSR tensor support is in beta state"
        if X.layout == torch.sparse_coo:
            X = X.coalesce()
        csr = X if X.layout == torch.sparse_csr else X.to_sparse_csr()
    values = _torch_float(name, csr.values())
    return _SparseRows(csr.crow_indices().to(torch.int64), csr.col_indices().to(torch.int64), values, int(X.shape[1]))


def _nonfinite_error(name: str, values: Tensor) -> ValueError:
    """scikit-learn's wording (``check_array``) for NaN or infinite input."""
    if bool(torch.isnan(values).any()):
        return ValueError(f"Input {name} contains NaN.")
    numpy_dtype = torch.empty(0, dtype=values.dtype).numpy().dtype
    return ValueError(f"Input {name} contains infinity or a value too large for dtype({str(numpy_dtype)!r}).")


def _rescale_extreme_rows(X: Tensor, norms: Tensor) -> Tuple[Tensor, Tensor]:
    """Rows whose squared norm over- or underflows, divided by their largest ``|entry|``, and the new norms.

    ``vector_norm`` sums squares: a finite row with entries near the dtype's
    maximum gets an infinite norm, one with entries below about
    ``sqrt(tiny)`` (1e-19 in float32) a norm that is inaccurate or 0. Divided by
    its largest entry, such a row keeps its direction and gets a norm in
    ``[1, sqrt(d)]``. All-zero rows stay zero (norm 0). ``X`` must be finite
    where ``norms`` is not; other rows are returned as they are.

    Args:
        X: ``(N, d)`` floating rows; ``norms``: ``(N,)`` their L2 norms.

    Returns:
        ``(X', norms')``: ``X`` itself when no row needed it, else a copy.
    """
    finfo = torch.finfo(X.dtype)
    suspect = ~torch.isfinite(norms) | (norms < math.sqrt(finfo.tiny) / finfo.eps)
    if not bool(suspect.any()):
        return X, norms
    rows = X[suspect]
    scale = rows.abs().amax(dim=1, keepdim=True)
    X = X.clone()
    X[suspect] = rows / torch.where(scale > 0, scale, torch.ones_like(scale))
    norms = norms.clone()
    norms[suspect] = torch.linalg.vector_norm(X[suspect], dim=1)
    return X, norms


def _normalise_rows(name: str, X: Tensor, allow_zero: bool = False) -> Tensor:
    """L2-normalise the rows; raise on NaN/Inf, and on all-zero rows unless ``allow_zero`` (they stay zero)."""
    return _normalise_dense(name, X, allow_zero)[0]


def _normalise_dense(name: str, X: Tensor, allow_zero: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """:func:`_normalise_rows` and the ``(N,)`` bool mask of the non-zero rows (``None`` when none is zero)."""
    # NaN/Inf make the row norm non-finite, so only such rows need the element-wise check
    # (a full isfinite pass over X costs as much as a k-means iteration).
    norms = torch.linalg.vector_norm(X, dim=1)
    suspect = ~torch.isfinite(norms)
    if bool(suspect.any()) and not bool(torch.isfinite(X[suspect]).all()):
        raise _nonfinite_error(name, X[suspect])
    # Rows so large or so small that their squared norm overflows or underflows: scaled first.
    X, norms = _rescale_extreme_rows(X, norms)
    zero = norms == 0
    if bool(zero.any()):
        if not allow_zero:
            first = int(torch.nonzero(zero)[0, 0])
            raise ValueError(
                f"{name} has all-zero rows (e.g. row {first}); their direction, hence their cosine similarity, "
                f"is undefined"
            )
        return X / torch.where(zero, torch.ones_like(norms), norms).unsqueeze(1), ~zero
    if X.shape[0] and float((norms - 1).abs().max()) <= _unit_norm_tolerance(X):
        # Already unit rows (e.g. normalised features): dividing would only copy X.
        return X, None
    return X / norms.unsqueeze(1), None


def _normalise_sparse(name: str, X: _SparseRows) -> _SparseRows:
    """CSR rows divided by their L2 norm (a new array of stored values; zero rows stay zero)."""
    values = X.val
    if values.numel() and not bool(torch.isfinite(values).all()):
        raise _nonfinite_error(name, values[~torch.isfinite(values)])
    row = X.row
    # Divided by the largest |entry| of the row first, so that no squared norm over- or underflows.
    scale = torch.zeros(X.n, dtype=values.dtype, device=X.device)
    scale.scatter_reduce_(0, row, values.abs(), reduce="amax", include_self=True)
    scaled = values / torch.where(scale > 0, scale, torch.ones_like(scale))[row]
    squares = torch.zeros(X.n, dtype=values.dtype, device=X.device).index_add_(0, row, scaled * scaled)
    norms = squares.sqrt()
    unit = scaled / torch.where(norms > 0, norms, torch.ones_like(norms))[row]
    normalised = _SparseRows(X.crow, X.col, unit, X.d)
    normalised._row = row
    return normalised


def _unit_rows(name: str, data: Union[Tensor, _SparseRows]) -> _Rows:
    """The unit rows of ``X`` (zero rows stay zero; they may not become centres)."""
    if isinstance(data, _SparseRows):
        sparse = _normalise_sparse(name, data)
        nonzero = torch.zeros(sparse.n, dtype=torch.bool, device=sparse.device)
        nonzero[sparse.row[sparse.val != 0]] = True
        if not bool(nonzero.all()):
            sparse.pick = nonzero
        return sparse
    unit, nonzero_rows = _normalise_dense(name, data, allow_zero=True)
    return _DenseRows(unit, pick=nonzero_rows)


def _unit_unweighted(name: str, X: object) -> Tuple[_Rows, bool]:
    data, is_numpy = _as_rows(name, X)
    return _unit_rows(name, data), is_numpy


def _unit_norm_tolerance(X: Tensor) -> float:
    """Largest ``| ||x|| - 1 |`` of rows used without dividing by their norm.

    Normalising a ``d``-dimensional row leaves its norm within about
    ``sqrt(d)`` ulps of 1, so rows that close to unit length are as normalised
    as dividing would make them.
    """
    return 4.0 * math.sqrt(X.shape[1]) * torch.finfo(X.dtype).eps


def _check_sample_weight(sample_weight: object, rows: _Rows) -> Optional[Tensor]:
    """``(N,)`` sample weights in the data's dtype and device (a copy), or ``None`` for ``None``.

    A scalar weighs every row the same; an array must be 1-D of length ``N``,
    finite and non-negative (:func:`_fit` checks that not all are zero, over all ranks).
    """
    if sample_weight is None:
        return None
    if isinstance(sample_weight, Tensor):
        weight = sample_weight.detach().to(device=rows.device, dtype=torch.float64).clone()
    elif isinstance(sample_weight, numbers.Real) and not isinstance(sample_weight, bool):
        weight = torch.full((rows.n,), float(sample_weight), dtype=torch.float64, device=rows.device)
    else:
        try:
            array = np.asarray(sample_weight, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise TypeError(f"sample_weight must be None, a number or a 1-D array of numbers: {error}") from None
        weight = torch.tensor(array, dtype=torch.float64, device=rows.device)
    if tuple(weight.shape) != (rows.n,):
        raise ValueError(f"sample_weight.shape == {tuple(weight.shape)}, expected {(rows.n,)}!")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError("sample_weight must be finite, got NaN or infinity")
    if rows.n and float(weight.min()) < 0:
        raise ValueError(f"sample_weight must be non-negative, got {float(weight.min())!r}")
    return weight.to(rows.dtype)


def _to_output(value: Tensor, is_numpy: bool) -> ArrayLike:
    return value.cpu().numpy() if is_numpy else value


# --------------------------------------------------------------------------- kernels


def _chunk_rows(n_rows: int, width: int, itemsize: int, chunk_size: Optional[int]) -> int:
    """Rows per chunk: the user's ``chunk_size`` or what fits in :data:`DEFAULT_CHUNK_BYTES`."""
    if chunk_size is not None:
        return max(1, chunk_size)
    return max(1, min(max(n_rows, 1), DEFAULT_CHUNK_BYTES // max(1, width * itemsize)))


def _sum_rows_by_label(rows: _Rows, flat_labels: Tensor, width: int, out: Tensor) -> None:
    """``out[j] += sum of w_i * rows[i] over (i, r) with flat_labels[i, r] == j``; ``flat_labels`` ``(n, R)``."""
    if isinstance(rows, _DenseRows) and width <= _ONE_HOT_MAX_WIDTH:
        # Few centres: a one-hot matrix multiply beats R scattered index_add_ passes.
        ones = rows.X.new_ones(1, 1) if rows.weight is None else rows.weight.unsqueeze(1)
        one_hot = rows.X.new_zeros(rows.n, width).scatter_(1, flat_labels, ones.expand_as(flat_labels))
        out.addmm_(one_hot.t(), rows.X)
    else:
        for r in range(flat_labels.shape[1]):
            rows.add_to(out, flat_labels[:, r])


def _lloyd_pass(
    X: _Rows, centers: Tensor, labels: Tensor, active: Tensor, full: bool, chunk_size: Optional[int]
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
    step = _chunk_rows(N, Ra * K, X.element_size(), chunk_size)
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
            _sum_rows_by_label(rows, new_flat, Ra * K, sums)
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


def _inertias(X: _Rows, centers: Tensor, chunk_size: Optional[int]) -> Tensor:
    """``(R,)`` float64 (weighted) inertia of each restart's ``(R, K, d)`` centres, summed over ranks."""
    R, K, d = centers.shape
    flat_centers = centers.reshape(R * K, d)
    inertia = torch.zeros(R, dtype=torch.float64, device=X.device)
    step = _chunk_rows(X.n, R * K, X.element_size(), chunk_size)
    for start in range(0, X.n, step):
        rows = X.span(start, start + step)
        best = rows.mm_t(flat_centers).view(rows.n, R, K).amax(dim=2)
        inertia += rows.total_weight() - rows.weighted(best)
    return all_reduce_sum_(inertia).clamp_min_(0)  # rounding: cos can exceed 1 by an ulp


def _assign(X: _Rows, centers: Tensor, chunk_size: Optional[int]) -> Tuple[Tensor, Tensor]:
    """Labels ``(N,)`` int64 and (unweighted) cosine distances ``(N,)`` of the rows to ``(K, d)`` centres."""
    N = X.n
    K = centers.shape[0]
    labels = torch.empty(N, dtype=torch.long, device=X.device)
    dist = torch.empty(N, dtype=X.dtype, device=X.device)
    step = _chunk_rows(N, K, X.element_size(), chunk_size)
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


def _pick_reseed_points(X: _Rows, dist: Tensor, labels: Tensor, counts: Tensor, n_empty: int) -> _Reseed:
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


def _reseed_empty_(
    X: _Rows, centers: Tensor, sums: Tensor, counts: Tensor, labels: Tensor, chunk_size: Optional[int]
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
        assigned, dist = _assign(X, centers[r], chunk_size)
        counts_r = all_reduce_sum_(torch.bincount(assigned, minlength=K))
        empty = torch.nonzero(counts_r == 0).flatten()
        if empty.numel():
            pick = _pick_reseed_points(X, dist, assigned, counts_r, empty.numel())
            assigned[pick.local_index] = empty[pick.local_slot]
            counts_r = all_reduce_sum_(torch.bincount(assigned, minlength=K))
        sums_r = torch.zeros(K, d, dtype=torch.float64, device=X.device)
        step = _chunk_rows(X.n, K, X.element_size(), chunk_size)
        for start in range(0, X.n, step):
            X.span(start, start + step).add_to(sums_r, assigned[start : start + step])
        sums[r] = all_reduce_sum_(sums_r)
        counts[r] = counts_r
        labels[:, r] = assigned


def _normalise_centers(sums: Tensor, previous: Tensor) -> Tensor:
    """Unit centres from sums; a cluster whose sum vanishes keeps its centre (every direction is optimal)."""
    norms = torch.linalg.vector_norm(sums, dim=-1, keepdim=True)
    ok = norms > torch.finfo(sums.dtype).tiny
    return torch.where(ok, sums / norms.clamp_min(torch.finfo(sums.dtype).tiny), previous)


# --------------------------------------------------------------------------- initialisation


def _sample_rows(
    X: _Rows, weights: Optional[Tensor], n_restarts: int, n_samples: int, generator: torch.Generator
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


def _kmeans_plus_plus(
    X: _Rows, n_clusters: int, n_restarts: int, generator: torch.Generator, chunk_size: Optional[int]
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
    step = _chunk_rows(N, R * n_candidates, X.element_size(), chunk_size)
    # Keeping every candidate's updated distances saves recomputing the chosen one's, if they fit.
    keep = N * R * n_candidates * X.element_size() <= DEFAULT_CHUNK_BYTES
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


def _random_init(X: _Rows, n_clusters: int, n_restarts: int, generator: torch.Generator) -> Tensor:
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


# --------------------------------------------------------------------------- Lloyd


class _Iterations(NamedTuple):
    """How the Lloyd iterations run: at most ``max_iter``, stop below ``tol``, ``chunk_size`` rows per product."""

    max_iter: int
    tol: float
    chunk_size: Optional[int]
    verbose: bool


def _lloyd(X: _Rows, centers: Tensor, settings: _Iterations) -> Tuple[Tensor, Tensor, Tensor]:
    """Batched Lloyd iterations; each restart stops on its own and leaves the batch.

    Returns:
        Final centres ``(R, K, d)``, iterations ``(R,)`` and the inertia
        history ``(R, max_iter)`` float64 (NaN after a restart stopped).
    """
    max_iter, tol, chunk_size, verbose = settings
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
        change, count_change, inertia, switched = _lloyd_pass(X, current, labels, active, full, chunk_size)
        active_sums = change if full else sums[active] + change
        active_counts = count_change if full else counts[active] + count_change
        # Summing only the rows that switched costs two scattered adds per switch:
        # recompute from scratch next time when too many rows switch.
        # (The first pass compares with placeholder labels, so its switches do not count.)
        full = it > 0 and switched > _INCREMENTAL_MAX_FRACTION * n_total * active.numel()
        if bool((active_counts == 0).any()):
            active_labels = labels[:, active]
            _reseed_empty_(X, current, active_sums, active_counts, active_labels, chunk_size)
            labels[:, active] = active_labels
        sums[active] = active_sums
        counts[active] = active_counts
        centers[active] = _normalise_centers(active_sums, current.to(torch.float64)).to(X.dtype)
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
                more_centers, more_iter, more_history = _lloyd_bounded(
                    X, centers[r], _Iterations(max_iter - done_iter, tol, chunk_size, False), float(previous[r])
                )
                centers[r] = more_centers
                history[r, done_iter : done_iter + more_iter] = torch.tensor(more_history, dtype=torch.float64)
                n_iter[r] += more_iter
            break
    return centers, n_iter, history


# --------------------------------------------------------------------------- bounded Lloyd (one restart)


def _lloyd_bounded(
    X: _Rows, centers: Tensor, settings: _Iterations, previous_inertia: Optional[float] = None
) -> Tuple[Tensor, int, List[float]]:
    """Lloyd iterations of ONE restart that re-examine only the rows whose label can change.

    The same iterations as :func:`_lloyd` with one restart (up to the
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

    Stops as :func:`_lloyd` does, and also when no label changed (a fixed
    point: the next centres would be the same).

    Args:
        X: ``(N, d)`` unit rows (this rank's).
        centers: ``(K, d)`` initial unit centres.
        previous_inertia: the inertia of the iteration before ``centers``
            when continuing a restart of :func:`_lloyd` (its first pass may
            then stop on ``tol``), else ``None``.

    Returns:
        Final centres ``(K, d)``, iterations run and the inertia history.
    """
    max_iter, tol, chunk_size, verbose = settings
    N, d = X.n, X.d
    K = centers.shape[0]
    device, dtype = X.device, X.dtype
    eps = torch.finfo(dtype).eps
    # Rounding of a similarity computed by a matrix multiply (|x . c| <= 1, d products summed) and of
    # the row norms (within 4 sqrt(d) ulps of 1): a row is skipped only with this much to spare.
    slack = 2.0 * (d + 8) * eps
    elkan = N * K * X.element_size() <= DEFAULT_CHUNK_BYTES
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
        step = _chunk_rows(max(n_rows, 1), K, X.element_size(), chunk_size)
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
                _sum_rows_by_label(rows, new.unsqueeze(1), K, sums_change)
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
            _reseed_empty_(X, centers.unsqueeze(0), sums_view, counts_view, labels_view, chunk_size)
            lo.fill_(-3.0)
            upper.fill_(3.0)
            n_switched = max(n_switched, 1)
        new_centers = _normalise_centers(sums, current)
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


def _final_labels(X: _Rows, centers: Tensor, chunk_size: Optional[int]) -> Tuple[Tensor, Tensor, Tensor, int]:
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
        labels, dist = _assign(X, centers, chunk_size)
        counts = all_reduce_sum_(torch.bincount(labels, minlength=K))
        empty = torch.nonzero(counts == 0).flatten()
        if empty.numel() == 0 or attempt == K:
            break
        pick = _pick_reseed_points(X, dist, labels, counts, empty.numel())
        if pick.max_dist <= 0:
            break
        centers[empty[: pick.rows.shape[0]]] = pick.rows
    return labels, centers, dist, int((counts > 0).sum())


def _auto_sample_size(n_clusters: int) -> int:
    """Rows of the restarts for ``sample_size="auto"``: ``2,560,000 / K``, kept within 16 to 512 rows per cluster.

    ``K = 10``: 5,120 rows; ``K = 100``: 25,600; ``K = 1,000``: 16,000.
    """
    per_k = _AUTO_ROW_CLUSTERS // n_clusters
    return max(_AUTO_MIN_ROWS_PER_CLUSTER * n_clusters, min(_AUTO_MAX_ROWS_PER_CLUSTER * n_clusters, per_k))


def _subsample(X: _Rows, sample_size: int, n_total: int, generator: torch.Generator) -> _Rows:
    """A uniform random subset of this rank's rows, about ``sample_size`` rows over all ranks.

    Each rank keeps ``ceil(sample_size * N_rank / N_total)`` of its rows (so the
    ranks together keep at least ``sample_size >= K`` rows and at most
    ``sample_size + world_size``), drawn without replacement from a generator
    seeded from ``generator`` (in the same state on every rank) and the rank.
    """
    n_local = X.n
    sub_seed = int(torch.randint(0, _SEED_BOUND, (1,), generator=generator))
    local_generator = torch.Generator().manual_seed((sub_seed + 1_000_003 * get_rank()) % _SEED_BOUND)
    keep = min(n_local, -(-sample_size * n_local // n_total))
    order = torch.randperm(n_local, generator=local_generator)[:keep].to(X.device)
    # Sorted rows keep memory access sequential.
    return X.take(order.sort().values)


# --------------------------------------------------------------------------- driver


def _check_params(
    n_clusters: object,
    n_init: object,
    max_iter: object,
    tol: object,
    random_state: object,
    init: object,
    chunk_size: object,
    verbose: object,
    sample_size: object = None,
    seed: object = None,
) -> None:
    """Raise the ``ValueError``/``TypeError`` that names the first bad parameter and its value."""
    check_int("n_clusters", n_clusters, minimum=1)
    if isinstance(sample_size, str):
        if sample_size != "auto":
            raise ValueError(f"sample_size must be 'auto', None or an int >= n_clusters, got {sample_size!r}")
    elif sample_size is not None:
        check_int("sample_size", sample_size, minimum=1)
        if int(sample_size) < int(n_clusters):  # type: ignore[call-overload]
            raise ValueError(f"sample_size must be >= n_clusters={n_clusters}, got {sample_size}")
    check_int("n_init", n_init, minimum=1)
    check_int("max_iter", max_iter, minimum=1)
    check_float("tol", tol, minimum=0.0)
    _check_random_state("random_state", random_state)
    if seed is not None:
        _check_random_state("seed", seed)
        if not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed (deprecated) must be None or an int, got {seed!r}; use random_state")
        if random_state is not None:
            raise ValueError(
                f"got random_state={random_state!r} and its deprecated alias seed={seed!r}: pass random_state only"
            )
    if chunk_size is not None:
        check_int("chunk_size", chunk_size, minimum=1)
    if not isinstance(verbose, bool):
        raise TypeError(f"verbose must be a bool, got {verbose!r}")
    if isinstance(init, str):
        if init not in _INIT_METHODS:
            raise ValueError(f"init must be one of {_INIT_METHODS} or an array of centres, got {init!r}")
    elif not isinstance(init, (Tensor, np.ndarray)):
        raise TypeError(f"init must be a string, a torch.Tensor or a numpy.ndarray, got {type(init).__name__}")


def _check_random_state(name: str, random_state: object) -> None:
    """``None``, an int in ``[0, 2**63 - 1]``, a ``numpy.random.RandomState`` or a ``numpy.random.Generator``."""
    if random_state is None:
        return
    if isinstance(random_state, (np.random.RandomState, np.random.Generator)):
        return
    if isinstance(random_state, bool) or not isinstance(random_state, numbers.Integral):
        raise ValueError(
            f"{name}={random_state!r} cannot be used to seed the k-means: use None, an int, "
            f"a numpy.random.RandomState or a numpy.random.Generator"
        )
    if not 0 <= int(random_state) <= _SEED_BOUND:
        raise ValueError(f"{name} must be an int in [0, {_SEED_BOUND}], got {random_state}")


def _draw_seed(random_state: RandomStateLike, device: torch.device) -> int:
    """The seed of this fit's generator, identical on every rank.

    An int is the seed itself; a ``RandomState``/``Generator`` (``None``: NumPy's
    global ``RandomState``, as scikit-learn's ``check_random_state``) gives one
    draw, so successive fits with the same object differ. Under
    ``torch.distributed`` rank 0's draw is used everywhere.
    """
    if isinstance(random_state, np.random.Generator):
        drawn = int(random_state.integers(0, _SEED_BOUND))
    elif isinstance(random_state, np.random.RandomState) or random_state is None:
        source = np.random.mtrand._rand if random_state is None else random_state
        drawn = int(source.randint(0, _SEED_BOUND, dtype=np.int64))
    else:
        return int(random_state)
    return int(broadcast_(torch.tensor([drawn], dtype=torch.long, device=device)).item())


def _initial_centers(init: Union[Tensor, np.ndarray], X: _Rows, n_clusters: int, n_init: int) -> Tensor:
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
    return _normalise_rows("init", centers.reshape(-1, d)).view(centers.shape)


def _check_distributed(distributed: object) -> None:
    if distributed is not None and not isinstance(distributed, bool):
        raise TypeError(f"distributed must be None, True or False, got {distributed!r}")
    if distributed is True and not is_distributed():
        raise ValueError(
            "distributed=True needs an initialised torch.distributed process group with more than one rank; "
            "use distributed=None to follow the process group when there is one"
        )


class _Settings(NamedTuple):
    """The parameters of one fit, converted and checked."""

    n_clusters: int
    n_init: int
    max_iter: int
    tol: float
    random_state: RandomStateLike
    init: InitLike
    chunk_size: Optional[int]
    verbose: bool
    sample_size: SampleSize


def _fit(X: Any, settings: _Settings, sample_weight: object = None) -> Tuple[_Fit, bool]:
    """Cluster ``X`` (any accepted input) with checked ``settings``; the result and whether ``X`` was NumPy."""
    n_clusters, n_init, max_iter, tol, random_state, init, chunk_size, verbose, sample_size = settings

    data, is_numpy = _as_rows("X", X)
    n_features = data.d if isinstance(data, _SparseRows) else int(data.shape[1])

    def check() -> Tuple[_Rows, Optional[Tensor]]:
        rows = _unit_rows("X", data)
        rows.weight = _check_sample_weight(sample_weight, rows)
        return rows, (None if isinstance(init, str) else _initial_centers(init, rows, n_clusters, n_init))

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
    generator = torch.Generator().manual_seed(_draw_seed(random_state, unit.device))
    # With sample_size, the restarts (initialisation and their Lloyd iterations) run on a
    # uniform subsample; only the winner is then iterated on every row.
    restart_rows = unit
    sampled = False
    # "auto" subsamples only restarts it initialises itself (given centres need no choosing on a sample).
    rows_for_restarts: Optional[int]
    if isinstance(sample_size, str):  # "auto" (validated before)
        rows_for_restarts = _auto_sample_size(n_clusters) if isinstance(init, str) else None
    else:
        rows_for_restarts = sample_size
    # A subsample must hold enough rows that may become centres: with many zero rows, run on all rows.
    if rows_for_restarts is not None and n_total > rows_for_restarts and n_pickable == n_total:
        restart_rows = _subsample(unit, rows_for_restarts, n_total, generator)
        sampled = True
    if given is not None:
        centers = given
    elif init == "random":
        centers = _random_init(restart_rows, n_clusters, n_init, generator)
    else:
        centers = _kmeans_plus_plus(restart_rows, n_clusters, n_init, generator, chunk_size)
    if verbose and get_rank() == 0:
        print(f"spherical k-means: initialised {centers.shape[0]} restarts in {time.perf_counter() - start_time:.3f} s")

    centers, n_iter, history = _lloyd(restart_rows, centers, _Iterations(max_iter, tol, chunk_size, verbose))
    inertias = _inertias(restart_rows, centers, chunk_size)
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
        budget, stop_tol = max_iter, tol * _FULL_DATA_TOL_FACTOR
    else:
        # Refine the winner alone (1/R of a batched pass per iteration) until its inertia stops
        # decreasing beyond rounding (a few ulps, so that summation order cannot add an iteration).
        budget, stop_tol = max_iter - best_iter, refine_tol
    if sampled or (budget > 0 and tol > refine_tol):
        winner, more_iter, more_history = _lloyd_bounded(
            unit, winner, _Iterations(budget, stop_tol, chunk_size, verbose)
        )
        best_history += more_history
        best_iter += more_iter
    labels, best_centers, dist, n_distinct = _final_labels(unit, winner, chunk_size)
    if n_distinct < n_clusters:
        warnings.warn(
            f"Number of distinct clusters ({n_distinct}) found smaller than n_clusters ({n_clusters}). "
            f"Possibly due to duplicate points in X.",
            _convergence_warning_class(),
            stacklevel=4,
        )
    inertia = float(all_reduce_sum_(unit.weighted(dist).reshape(1)).item())
    if verbose and get_rank() == 0:
        print(f"spherical k-means: best restart {best}, inertia {inertia:.6g}, {best_iter} iterations")
    result = _Fit(best_centers, labels, inertia, best_iter, best_history, inertias.tolist())
    return result, is_numpy


class KMeansParams(TypedDict, total=False):
    """The keyword parameters of :class:`SphericalKMeans`, all optional, for :func:`spherical_kmeans`.

    A typed ``**params`` for code that passes k-means settings on (as the
    reference trainer does). ``seed`` is the deprecated alias of
    ``random_state`` (a :class:`FutureWarning`; removed in 0.3).

    Example:
        >>> params: KMeansParams = {"n_init": 1, "random_state": 0}
        >>> SphericalKMeans(3, **params).n_init
        1
    """

    n_init: int
    max_iter: int
    tol: float
    random_state: RandomStateLike
    init: InitLike
    chunk_size: Optional[int]
    verbose: bool
    sample_size: SampleSize
    distributed: Optional[bool]
    seed: Optional[int]


def spherical_kmeans(
    X: DataLike, n_clusters: int = 8, *, sample_weight: Optional[WeightLike] = None, **params: Unpack[KMeansParams]
) -> KMeansResult:
    """Spherical k-means of the rows of ``X``: ``SphericalKMeans(n_clusters, **params).fit(X)`` as a tuple.

    The functional form of :class:`SphericalKMeans` (as scikit-learn's
    ``k_means()`` is ``KMeans(...).fit(X)``): the same parameters, defaults,
    errors and results.

    Args:
        X: ``(N, d)`` data, dense (NumPy array, array-like or tensor, CPU or
            CUDA) or sparse (SciPy sparse matrix/array, sparse torch tensor);
            rows are L2-normalised internally. Under ``torch.distributed``:
            this rank's shard.
        n_clusters: ``K >= 1``, at most the total number of rows.
        sample_weight: ``(N,)`` non-negative weights of the rows, or ``None``.
        params: any keyword parameter of :class:`SphericalKMeans`
            (``n_init``, ``max_iter``, ``tol``, ``random_state``, ``init``,
            ``chunk_size``, ``verbose``, ``sample_size``, ``distributed``, and
            the deprecated ``seed``), with its default and meaning there; an
            unknown name is a :class:`TypeError`.

    Returns:
        :class:`KMeansResult` ``(centers (K, d), labels (N,), inertia, n_iter)``;
        arrays are NumPy for NumPy and SciPy input, else tensors on ``X``'s device.

    Example:
        >>> import torch
        >>> X = torch.cat([torch.randn(50, 3) * 0.05 + c for c in torch.eye(3)])
        >>> result = spherical_kmeans(X, 3, random_state=0)
        >>> result.centers.shape, result.labels.shape, len(set(result.labels.tolist()))
        (torch.Size([3, 3]), torch.Size([150]), 3)
    """
    if "seed" in params:
        # Warned here (not in fit) so that the warning points at the caller's line.
        _warn_seed_deprecated(stacklevel=2)
        params = dict(params)  # type: ignore[assignment]
        seed = params.pop("seed")
        if seed is not None:
            _check_random_state("seed", seed)
            if params.get("random_state") is not None:
                raise ValueError(
                    f"got random_state={params.get('random_state')!r} and its deprecated alias seed={seed!r}: "
                    f"pass random_state only"
                )
            params["random_state"] = seed
    estimator = SphericalKMeans(n_clusters, **params).fit(X, sample_weight=sample_weight)
    return KMeansResult(estimator.cluster_centers_, estimator.labels_, estimator.inertia_, estimator.n_iter_)


def _warn_seed_deprecated(stacklevel: int) -> None:
    warn_deprecated_parameter("SphericalKMeans", "seed", "random_state", stacklevel=stacklevel + 1)


# --------------------------------------------------------------------------- scikit-learn conventions


def _feature_names(X: object) -> Optional[np.ndarray]:
    """The column names of a DataFrame ``X`` as an object array when they are all strings, else ``None``.

    scikit-learn's rule (``_get_feature_names``): names that mix strings with
    other types are a :class:`TypeError`; non-string names are ignored.
    """
    columns = getattr(X, "columns", None)
    if columns is None or not hasattr(X, "iloc"):
        return None
    names = np.asarray(columns, dtype=object)
    is_str = np.array([isinstance(name, str) for name in names], dtype=bool)
    if names.size and is_str.all():
        return names
    if is_str.any():
        types = sorted({type(name).__name__ for name in names})
        raise TypeError(
            "Feature names are only supported if all input features have string names, but your input has "
            f"{types} as feature name / column name types. If you want feature names to be stored and "
            "validated, you must convert them all to strings, by using X.columns = X.columns.astype(str) "
            "for example. Otherwise you can remove feature / column names from your input data, or convert "
            "them all to a non-string data type."
        )
    return None


class _EstimatorBase:
    """``get_params``/``set_params``/``repr``/``set_output`` when scikit-learn is not installed.

    With scikit-learn installed, :class:`SphericalKMeans` derives from its
    ``ClusterMixin``, ``TransformerMixin`` and ``BaseEstimator`` instead (so its
    checks, pipelines and ``set_output`` treat it as a clusterer and transformer).
    """

    @classmethod
    def _get_param_names(cls) -> List[str]:
        return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]

    def get_params(self, deep: bool = True) -> Dict[str, Any]:
        """The constructor's parameters as a dict (``deep`` is accepted and unused)."""
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params: Any) -> Any:
        """Set constructor parameters (checked by ``fit``, as scikit-learn does); returns ``self``."""
        valid = self._get_param_names()
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise ValueError(f"Invalid parameter(s) {unknown} for estimator {self!r}. Valid parameters are: {valid!r}.")
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def set_output(self, *, transform: Optional[str] = None) -> Any:
        """``transform=None`` or ``"default"`` (NumPy/tensor output); pandas/polars output needs scikit-learn."""
        if transform not in (None, "default"):
            raise ValueError(f"set_output(transform={transform!r}) needs scikit-learn (pip install scikit-learn)")
        return self

    def __repr__(self) -> str:
        defaults = inspect.signature(type(self).__init__).parameters
        shown = [
            f"{name}={value!r}"
            for name, value in self.get_params().items()
            if defaults[name].default is inspect.Parameter.empty or not _same_value(value, defaults[name].default)
        ]
        return f"{type(self).__name__}({', '.join(shown)})"


def _same_value(a: object, b: object) -> bool:
    """Equality for repr's "differs from the default" test, safe for arrays (never equal to a default)."""
    if isinstance(a, (Tensor, np.ndarray)) or isinstance(b, (Tensor, np.ndarray)):
        return False
    return type(a) is type(b) and a == b


def _sklearn_base() -> type:
    """scikit-learn's clusterer and transformer bases when it is installed, else :class:`_EstimatorBase`."""
    try:
        from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
    except ImportError:
        return _EstimatorBase
    return type("_EstimatorBase", (ClusterMixin, TransformerMixin, BaseEstimator), {"__module__": __name__})


if TYPE_CHECKING:
    _Base = _EstimatorBase
else:
    _Base = _sklearn_base()


class SphericalKMeans(_Base):
    """Spherical k-means estimator, a scikit-learn clusterer and transformer.

    Maximises ``sum_i w_i cos(x_i, c_{a_i})``; all ``n_init`` restarts run in
    one batched computation (see the module docstring for the algorithm, the
    stopping rule, empty clusters, sparse input and the distributed behaviour).

    Args:
        n_clusters: number of clusters ``K >= 1`` (scikit-learn's default, 8).
        n_init: restarts ``R`` (best inertia wins); ignored when ``init`` is
            ``(R, K, d)``, forced to 1 (with a warning) when it is ``(K, d)``.
        max_iter: maximum Lloyd iterations per restart.
        tol: a restart stops when ``I_{t-1} - I_t <= tol * I_{t-1}``.
        random_state: seed of the initialisation, as scikit-learn's: an int
            (CPU results are deterministic), a ``numpy.random.RandomState`` or
            ``numpy.random.Generator`` (one draw per fit), or ``None`` (one draw
            from NumPy's global ``RandomState``).
        init: ``"k-means++"``, ``"random"`` or initial centres.
        chunk_size: rows per matrix multiply (memory ``O(R * chunk_size * K)``).
        verbose: print progress.
        sample_size: rows of the restarts: ``"auto"`` (default:
            ``2,560,000 / K`` rows, 16 to 512 per cluster), an int, or
            ``None`` (all rows for every restart). On a subsample, only the
            winning restart is iterated on all rows.
        distributed: ``None`` (default): data-parallel over the ranks whenever
            a ``torch.distributed`` process group with more than one rank is
            initialised (every rank must call :meth:`fit` with its shard);
            ``False``: this process clusters its ``X`` alone, with no
            collective, e.g. an evaluation on rank 0 only; ``True``: require a
            process group (``ValueError`` without one).
        seed: deprecated alias of ``random_state`` (an int or ``None``;
            a :class:`FutureWarning` at :meth:`fit`, removed in 0.3).

    Parameters are checked by :meth:`fit` (as scikit-learn does: the
    constructor and ``set_params`` only store them); :meth:`check_params`
    checks them without fitting.

    Attributes:
        cluster_centers_: ``(K, d)`` unit-norm centres (dense, also for sparse ``X``).
        labels_: ``(N,)`` int64 labels of the rows passed to :meth:`fit`:
            their most similar final centre, equal to ``predict(X)``.
        inertia_: ``sum_i w_i (1 - cos(x_i, c_{a_i}))`` (all ranks).
        n_iter_: Lloyd iterations of the best restart (refinement included).
        inertia_history_: inertia of each iteration of the best restart
            (non-increasing), length ``n_iter_``.
        restart_inertias_: inertia of every restart's centres when it left
            the batch (before the winner's refinement).
        n_features_in_: ``d``.
        feature_names_in_: ``(d,)`` column names when :meth:`fit` got a
            DataFrame with string column names (absent otherwise).

    Arrays are NumPy when :meth:`fit` got NumPy input (or a list, a DataFrame,
    a SciPy sparse matrix), else tensors on the input's device.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> X = np.concatenate([rng.normal(c, 0.05, (40, 3)) for c in np.eye(3)])
        >>> km = SphericalKMeans(n_clusters=3, random_state=0).fit(X)
        >>> km.cluster_centers_.shape, sorted(np.bincount(km.labels_).tolist())
        ((3, 3), [40, 40, 40])
        >>> bool((km.predict(X) == km.labels_).all())
        True
        >>> km.get_feature_names_out().tolist()
        ['sphericalkmeans0', 'sphericalkmeans1', 'sphericalkmeans2']
    """

    def __init__(
        self,
        n_clusters: int = 8,
        n_init: int = KMEANS_N_INIT,
        max_iter: int = KMEANS_MAX_ITER,
        tol: float = KMEANS_TOL,
        random_state: RandomStateLike = None,
        init: InitLike = "k-means++",
        chunk_size: Optional[int] = None,
        verbose: bool = False,
        sample_size: SampleSize = AUTO_SAMPLE_SIZE,
        distributed: Optional[bool] = None,
        seed: Optional[int] = None,
    ) -> None:
        # Stored as given (scikit-learn's clone checks identity); checked and converted by fit.
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.init = init
        self.chunk_size = chunk_size
        self.verbose = verbose
        self.sample_size = sample_size
        self.distributed = distributed
        self.seed = seed

    def check_params(self) -> "SphericalKMeans":
        """Raise the ``ValueError``/``TypeError`` that :meth:`fit` would raise for a bad parameter; returns ``self``.

        Example:
            >>> SphericalKMeans(3, n_init=0).check_params()
            Traceback (most recent call last):
            ...
            ValueError: n_init must be >= 1, got 0
        """
        self._settings()
        return self

    def _settings(self) -> _Settings:
        _check_params(
            self.n_clusters,
            self.n_init,
            self.max_iter,
            self.tol,
            self.random_state,
            self.init,
            self.chunk_size,
            self.verbose,
            self.sample_size,
            self.seed,
        )
        _check_distributed(self.distributed)
        sample_size = self.sample_size
        return _Settings(
            n_clusters=int(self.n_clusters),
            n_init=int(self.n_init),
            max_iter=int(self.max_iter),
            tol=float(self.tol),
            random_state=self.random_state if self.seed is None else int(self.seed),
            init=self.init,
            chunk_size=None if self.chunk_size is None else int(self.chunk_size),
            verbose=self.verbose,
            sample_size=sample_size if sample_size is None or isinstance(sample_size, str) else int(sample_size),
        )

    def __sklearn_tags__(self) -> Any:
        """scikit-learn (>= 1.6) estimator tags: a clusterer and transformer of dense or sparse 2-D input.

        Imported here: only scikit-learn asks for them, so it stays an optional dependency.
        """
        from sklearn.utils import Tags, TargetTags, TransformerTags

        parent = getattr(super(), "__sklearn_tags__", None)
        if parent is not None:
            tags = parent()
        else:
            tags = Tags(estimator_type="clusterer", target_tags=TargetTags(required=False))
        tags.transformer_tags = TransformerTags(preserves_dtype=["float64", "float32"])
        tags.input_tags.sparse = True
        tags.input_tags.allow_nan = False
        return tags

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "_centers")

    def fit(self, X: DataLike, y: object = None, sample_weight: Optional[WeightLike] = None) -> "SphericalKMeans":
        """Cluster ``X`` ``(N, d)`` (dense or sparse); returns ``self``.

        Args:
            X: ``(N, d)`` data (see :func:`spherical_kmeans`).
            y: ignored (scikit-learn's convention).
            sample_weight: ``(N,)`` non-negative weights of the rows (a row of
                weight ``w`` counts as ``w`` copies of it in the cluster sums,
                the inertia and the k-means++ sampling), or ``None``.

        Returns:
            ``self``, fitted. Nothing is changed when a parameter or the input is bad.
        """
        settings = self._settings()  # bad parameters raise before anything changes
        if self.seed is not None:
            _warn_seed_deprecated(stacklevel=2)
        names = _feature_names(X)
        if self.distributed is False and is_distributed():
            with local_only():  # every collective becomes a no-op on this process
                fit, is_numpy = _fit(X, settings, sample_weight)
        else:
            fit, is_numpy = _fit(X, settings, sample_weight)
        self._centers = fit.centers
        self.cluster_centers_ = _to_output(fit.centers, is_numpy)
        self.labels_ = _to_output(fit.labels, is_numpy)
        self.inertia_ = fit.inertia
        self.n_iter_ = fit.n_iter
        self.inertia_history_ = fit.history
        self.restart_inertias_ = fit.restart_inertias
        self.n_features_in_ = int(fit.centers.shape[1])
        if names is not None:
            self.feature_names_in_ = names
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        return self

    def fit_predict(self, X: DataLike, y: object = None, sample_weight: Optional[WeightLike] = None) -> ArrayLike:
        """Fit and return ``labels_`` ``(N,)``; ``y`` is ignored."""
        return self.fit(X, sample_weight=sample_weight).labels_

    def fit_transform(self, X: DataLike, y: object = None, sample_weight: Optional[WeightLike] = None) -> ArrayLike:
        """Fit, then the cosine similarities ``(N, K)`` of ``X`` to the centres; ``y`` is ignored."""
        return self.fit(X, sample_weight=sample_weight)._transform(X)

    def score(self, X: DataLike, y: object = None, sample_weight: Optional[WeightLike] = None) -> float:
        """Minus the inertia ``sum_i w_i (1 - max_k cos(x_i, c_k))`` of ``X`` (higher is better, as scikit-learn's).

        Example:
            >>> import numpy as np
            >>> X = np.eye(3)
            >>> km = SphericalKMeans(n_clusters=3, random_state=0).fit(X)
            >>> km.score(X)
            -0.0
        """
        unit, centers, _ = self._prepare(X)
        unit.weight = _check_sample_weight(sample_weight, unit)
        _, dist = _assign(unit, centers, self.chunk_size)
        return -float(unit.weighted(dist))

    def _prepare(self, X: DataLike) -> Tuple[_Rows, Tensor, bool]:
        if not hasattr(self, "_centers"):
            raise _not_fitted("this SphericalKMeans is not fitted yet: call fit(X) first")
        self._check_feature_names(X)
        unit, is_numpy = _unit_unweighted("X", X)
        if unit.d != self.n_features_in_:
            raise ValueError(
                f"X has {unit.d} features, but SphericalKMeans is expecting {self.n_features_in_} "
                f"features as input (shape {(unit.n, unit.d)})"
            )
        return unit, self._centers.to(device=unit.device, dtype=unit.dtype), is_numpy

    def _check_feature_names(self, X: object) -> None:
        """scikit-learn's checks of the column names at ``predict``/``transform``/``score``."""
        fitted = getattr(self, "feature_names_in_", None)
        names = _feature_names(X)
        if fitted is None and names is None:
            return
        if fitted is None:
            warnings.warn(
                "X has feature names, but SphericalKMeans was fitted without feature names", UserWarning, stacklevel=4
            )
            return
        if names is None:
            warnings.warn(
                "X does not have valid feature names, but SphericalKMeans was fitted with feature names",
                UserWarning,
                stacklevel=4,
            )
            return
        if len(fitted) != len(names) or bool(np.any(fitted != names)):
            unexpected = sorted(set(names.tolist()) - set(fitted.tolist()))
            missing = sorted(set(fitted.tolist()) - set(names.tolist()))
            message = "The feature names should match those that were passed during fit.\n"
            if unexpected:
                message += f"Feature names unseen at fit time:\n- {unexpected}\n"
            if missing:
                message += f"Feature names seen at fit time, yet now missing:\n- {missing}\n"
            if not unexpected and not missing:
                message += "Feature names must be in the same order as they were in fit.\n"
            raise ValueError(message)

    def predict(self, X: DataLike) -> ArrayLike:
        """Index ``(N,)`` int64 of the most similar centre of each row of ``X`` ``(N, d)``."""
        unit, centers, is_numpy = self._prepare(X)
        labels, _ = _assign(unit, centers, self.chunk_size)
        return _to_output(labels, is_numpy)

    def transform(self, X: DataLike) -> ArrayLike:
        """Cosine similarities ``(N, K)`` of the rows of ``X`` ``(N, d)`` to the centres (0 for an all-zero row)."""
        return self._transform(X)

    def _transform(self, X: DataLike) -> ArrayLike:
        unit, centers, is_numpy = self._prepare(X)
        return _to_output(unit.mm_t(centers), is_numpy)

    def get_feature_names_out(self, input_features: Optional[Sequence[str]] = None) -> np.ndarray:
        """Names of the ``K`` output columns of :meth:`transform`: ``sphericalkmeans0`` ... (scikit-learn's convention).

        Args:
            input_features: ignored apart from a check: when given it must
                have ``n_features_in_`` names, equal to ``feature_names_in_``
                when the estimator was fitted on named columns.

        Returns:
            ``(K,)`` object array of strings.
        """
        if not hasattr(self, "_centers"):
            raise _not_fitted("this SphericalKMeans is not fitted yet: call fit(X) first")
        if input_features is not None:
            given = np.asarray(input_features, dtype=object)
            fitted = getattr(self, "feature_names_in_", None)
            if fitted is not None and (len(given) != len(fitted) or bool(np.any(given != fitted))):
                raise ValueError("input_features is not equal to feature_names_in_")
            if len(given) != self.n_features_in_:
                raise ValueError(
                    f"input_features should have length equal to number of features ({self.n_features_in_}), "
                    f"got {len(given)}"
                )
        prefix = type(self).__name__.lower()
        return np.asarray([f"{prefix}{k}" for k in range(int(self._centers.shape[0]))], dtype=object)


def _plain_request_method_docs(cls: type) -> None:
    """Rewrite the cross-references of scikit-learn's generated ``set_{fit,score}_request`` docstrings as literals.

    scikit-learn adds these methods (metadata routing of ``sample_weight``, as for
    ``KMeans``) with docstrings that refer to labels of its own documentation,
    which this documentation's ``sphinx -W`` build cannot resolve.
    """
    for name, descriptor in list(vars(cls).items()):
        if not (name.startswith("set_") and name.endswith("_request")):
            continue
        base = type(descriptor)

        def get(self: Any, instance: Any, owner: Any, _base: type = base) -> Any:
            method = _base.__get__(self, instance, owner)  # type: ignore[attr-defined]
            if method.__doc__:
                method.__doc__ = re.sub(r":[a-z]+:`~?([^`<]*?)\s*(?:<[^>]*>)?`", r"``\1``", method.__doc__)
            return method

        plain = type(f"Plain{base.__name__}", (base,), {"__get__": get})
        replacement: Any = object.__new__(plain)
        replacement.__dict__.update(vars(descriptor))
        setattr(cls, name, replacement)


_plain_request_method_docs(SphericalKMeans)
