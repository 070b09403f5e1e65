"""The scikit-learn-style estimator :class:`SphericalKMeans` and its functional form :func:`spherical_kmeans`."""

from __future__ import annotations

import inspect
import re
import warnings
from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from torch import Tensor
from typing_extensions import Unpack

from propos_losses._deprecation import warn_deprecated_parameter
from propos_losses.defaults import KMEANS_MAX_ITER, KMEANS_N_INIT, KMEANS_TOL
from propos_losses.distributed import is_distributed, local_only
from propos_losses.kmeans._driver import fit_kmeans
from propos_losses.kmeans._errors import not_fitted
from propos_losses.kmeans._kernels import assign
from propos_losses.kmeans._params import (
    AUTO_SAMPLE_SIZE,
    InitLike,
    KMeansParams,
    RandomStateLike,
    SampleSize,
    Settings,
    check_random_state,
)
from propos_losses.kmeans._rows import (
    ArrayLike,
    DataLike,
    Rows,
    WeightLike,
    check_sample_weight,
    to_output,
    unit_unweighted,
)

__all__ = ["KMeansResult", "spherical_kmeans", "SphericalKMeans"]


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
            check_random_state("seed", seed)
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
    one batched computation (see the k-means page of the documentation,
    :doc:`/kmeans_metrics`, for the algorithm, the stopping rule, empty
    clusters, sparse input and the distributed behaviour).

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
            ``1,920,000 / K`` rows, 16 to 512 per cluster), an int, or
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

    def _settings(self) -> Settings:
        """The parameters, checked and converted (they are stored as given: scikit-learn's ``clone`` needs that)."""
        return Settings.from_params(self.get_params(deep=False))

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
        if settings.distributed is False and is_distributed():
            with local_only():  # every collective becomes a no-op on this process
                fit, is_numpy = fit_kmeans(X, settings, sample_weight)
        else:
            fit, is_numpy = fit_kmeans(X, settings, sample_weight)
        self._centers = fit.centers
        self.cluster_centers_ = to_output(fit.centers, is_numpy)
        self.labels_ = to_output(fit.labels, is_numpy)
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
        unit.weight = check_sample_weight(sample_weight, unit)
        _, dist = assign(unit, centers, self.chunk_size)
        return -float(unit.weighted(dist))

    def _prepare(self, X: DataLike) -> Tuple[Rows, Tensor, bool]:
        if not hasattr(self, "_centers"):
            raise not_fitted("this SphericalKMeans is not fitted yet: call fit(X) first")
        self._check_feature_names(X)
        unit, is_numpy = unit_unweighted("X", X)
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
        labels, _ = assign(unit, centers, self.chunk_size)
        return to_output(labels, is_numpy)

    def transform(self, X: DataLike) -> ArrayLike:
        """Cosine similarities ``(N, K)`` of the rows of ``X`` ``(N, d)`` to the centres (0 for an all-zero row)."""
        return self._transform(X)

    def _transform(self, X: DataLike) -> ArrayLike:
        unit, centers, is_numpy = self._prepare(X)
        return to_output(unit.mm_t(centers), is_numpy)

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
            raise not_fitted("this SphericalKMeans is not fitted yet: call fit(X) first")
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
