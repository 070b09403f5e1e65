"""The input of the k-means: dense or CSR rows, their normalisation, sample weights and the output type."""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from propos_losses.prototypes import normalize_features

__all__ = [
    "ArrayLike",
    "DataLike",
    "WeightLike",
    "Rows",
    "DenseRows",
    "SparseRows",
    "as_rows",
    "normalise_rows",
    "unit_rows",
    "unit_unweighted",
    "check_sample_weight",
    "to_output",
]

ArrayLike = Union[Tensor, np.ndarray]
#: Data of fit/predict: a NumPy array or array-like (list, pandas DataFrame), a dense or sparse
#: (COO/CSR/CSC) tensor, or a SciPy sparse matrix or array of any format.
DataLike = Any
WeightLike = Union[Tensor, np.ndarray, Sequence[float], float]


class Rows:
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

    def span(self, start: int, stop: int) -> "Rows":
        """Rows ``start:stop``."""
        raise NotImplementedError

    def take(self, index: Tensor) -> "Rows":
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


class DenseRows(Rows):
    """Dense ``(N, d)`` rows."""

    def __init__(self, X: Tensor, weight: Optional[Tensor] = None, pick: Optional[Tensor] = None) -> None:
        self.X = X
        self.n, self.d = int(X.shape[0]), int(X.shape[1])
        self.dtype, self.device = X.dtype, X.device
        self.weight, self.pick = weight, pick

    def span(self, start: int, stop: int) -> "DenseRows":
        return DenseRows(self.X[start:stop], *self._sub(slice(start, stop)))

    def take(self, index: Tensor) -> "DenseRows":
        return DenseRows(self.X[index], *self._sub(index))

    def mm_t(self, centers: Tensor) -> Tensor:
        return torch.mm(self.X, centers.t())

    def to_dense(self) -> Tensor:
        return self.X

    def weighted_rows(self, dtype: torch.dtype) -> Tensor:
        rows = self.X.to(dtype)
        return rows if self.weight is None else rows * self.weight.to(dtype).unsqueeze(1)

    def add_to(self, out: Tensor, labels: Tensor, alpha: float = 1.0) -> None:
        out.index_add_(0, labels, self.weighted_rows(out.dtype), alpha=alpha)


class SparseRows(Rows):
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

    def span(self, start: int, stop: int) -> "SparseRows":
        stop = min(stop, self.n)
        crow = self.crow[start : stop + 1]
        low, high = int(crow[0]), int(crow[-1])
        return SparseRows(crow - low, self.col[low:high], self.val[low:high], self.d, *self._sub(slice(start, stop)))

    def take(self, index: Tensor) -> "SparseRows":
        starts = self.crow[index]
        lengths = self.crow[index + 1] - starts
        crow = torch.zeros(index.shape[0] + 1, dtype=self.crow.dtype, device=self.device)
        torch.cumsum(lengths, 0, out=crow[1:])
        total = int(crow[-1])
        # Position of each gathered value in col/val: its row's start plus its rank inside the row.
        shift = torch.repeat_interleave(starts - crow[:-1], lengths, output_size=total)
        position = torch.arange(total, device=self.device) + shift
        return SparseRows(crow, self.col[position], self.val[position], self.d, *self._sub(index))

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


def as_rows(name: str, X: object) -> Tuple[Union[Tensor, SparseRows], bool]:
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


def _scipy_sparse_rows(name: str, X: Any) -> SparseRows:
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
    return SparseRows(crow, col, torch.from_numpy(np.array(values)), int(X.shape[1]))


def _torch_sparse_rows(name: str, X: Tensor) -> SparseRows:
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
    return SparseRows(csr.crow_indices().to(torch.int64), csr.col_indices().to(torch.int64), values, int(X.shape[1]))


def _nonfinite_error(name: str, values: Tensor) -> ValueError:
    """scikit-learn's wording (``check_array``) for NaN or infinite input."""
    if bool(torch.isnan(values).any()):
        return ValueError(f"Input {name} contains NaN.")
    numpy_dtype = torch.empty(0, dtype=values.dtype).numpy().dtype
    return ValueError(f"Input {name} contains infinity or a value too large for dtype({str(numpy_dtype)!r}).")


def normalise_rows(name: str, X: Tensor, allow_zero: bool = False) -> Tensor:
    """L2-normalise the rows; raise on NaN/Inf, and on all-zero rows unless ``allow_zero`` (they stay zero)."""
    return _normalise_dense(name, X, allow_zero)[0]


def _normalise_dense(name: str, X: Tensor, allow_zero: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """:func:`normalise_rows` and the ``(N,)`` bool mask of the non-zero rows (``None`` when none is zero).

    The checks are the k-means' own (NaN/Inf, all-zero rows, rows that are unit already); the rows
    whose squared norm over- or underflows are normalised by
    :func:`propos_losses.prototypes.normalize_features`, the package's one row normaliser.
    """
    # NaN/Inf make the row norm non-finite, so only such rows need the element-wise check
    # (a full isfinite pass over X costs as much as a k-means iteration).
    norms = torch.linalg.vector_norm(X, dim=1)
    nonfinite = ~torch.isfinite(norms)
    if bool(nonfinite.any()) and not bool(torch.isfinite(X[nonfinite]).all()):
        raise _nonfinite_error(name, X[nonfinite])
    # vector_norm sums squares: a finite row with entries near the dtype's maximum gets an infinite norm, one
    # with entries below about sqrt(tiny) (1e-19 in float32) an inaccurate or zero norm; all-zero rows are
    # among these rows too.
    finfo = torch.finfo(X.dtype)
    extreme = nonfinite | (norms < math.sqrt(finfo.tiny) / finfo.eps)
    if not bool(extreme.any()):
        if X.shape[0] and float((norms - 1).abs().max()) <= _unit_norm_tolerance(X):
            # Already unit rows (e.g. normalised features): dividing would only copy X.
            return X, None
        return X / norms.unsqueeze(1), None
    # Rare: normalize_features divides these rows by their largest |entry| before their norm (zero rows stay
    # zero); the other rows are divided by their norm as above.
    rows = X[extreme]
    zero = torch.zeros_like(extreme)
    zero[extreme] = ~(rows != 0).any(dim=1)
    if bool(zero.any()) and not allow_zero:
        first = int(torch.nonzero(zero)[0, 0])
        raise ValueError(
            f"{name} has all-zero rows (e.g. row {first}); their direction, hence their cosine similarity, is undefined"
        )
    unit = X / torch.where(extreme, torch.ones_like(norms), norms).unsqueeze(1)
    unit[extreme] = normalize_features(rows)
    return unit, (~zero if bool(zero.any()) else None)


def _normalise_sparse(name: str, X: SparseRows) -> SparseRows:
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
    normalised = SparseRows(X.crow, X.col, unit, X.d)
    normalised._row = row
    return normalised


def unit_rows(name: str, data: Union[Tensor, SparseRows]) -> Rows:
    """The unit rows of ``X`` (zero rows stay zero; they may not become centres)."""
    if isinstance(data, SparseRows):
        sparse = _normalise_sparse(name, data)
        nonzero = torch.zeros(sparse.n, dtype=torch.bool, device=sparse.device)
        nonzero[sparse.row[sparse.val != 0]] = True
        if not bool(nonzero.all()):
            sparse.pick = nonzero
        return sparse
    unit, nonzero_rows = _normalise_dense(name, data, allow_zero=True)
    return DenseRows(unit, pick=nonzero_rows)


def unit_unweighted(name: str, X: object) -> Tuple[Rows, bool]:
    data, is_numpy = as_rows(name, X)
    return unit_rows(name, data), is_numpy


def _unit_norm_tolerance(X: Tensor) -> float:
    """Largest ``| ||x|| - 1 |`` of rows used without dividing by their norm.

    Normalising a ``d``-dimensional row leaves its norm within about
    ``sqrt(d)`` ulps of 1, so rows that close to unit length are as normalised
    as dividing would make them.
    """
    return 4.0 * math.sqrt(X.shape[1]) * torch.finfo(X.dtype).eps


def check_sample_weight(sample_weight: object, rows: Rows) -> Optional[Tensor]:
    """``(N,)`` sample weights in the data's dtype and device (a copy), or ``None`` for ``None``.

    A scalar weighs every row the same; an array must be 1-D of length ``N``,
    finite and non-negative (:func:`fit_kmeans` checks that not all are zero, over all ranks).
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


def to_output(value: Tensor, is_numpy: bool) -> ArrayLike:
    return value.cpu().numpy() if is_numpy else value
