"""Fast batched spherical k-means with greedy k-means++ initialisation.

Spherical k-means clusters the directions of the rows of ``X``: with
``x_i = X_i / ||X_i||`` and unit centres ``c_k`` it maximises
``sum_i w_i cos(x_i, c_{a_i})`` and reports the *cosine inertia*
``sum_i w_i (1 - cos(x_i, c_{a_i}))``, half the squared Euclidean inertia on
the unit sphere. :class:`SphericalKMeans` is a scikit-learn clusterer and
transformer, :func:`spherical_kmeans` its functional form; both take dense or
sparse NumPy, SciPy and torch input, on CPU or CUDA, and work data-parallel
under ``torch.distributed``.

The algorithm (batched restarts, subsampled restarts, bounded iterations),
the stopping rule, empty clusters, zero rows, sparse input, sample weights
and the distributed behaviour are described on the k-means page of the
documentation (:doc:`/kmeans_metrics`, ``docs/kmeans_metrics.rst``).

The implementation lives in private modules: ``_rows`` (input, normalisation,
weights), ``_kernels`` (assignment passes, sums, re-seeding), ``_init``
(k-means++, random rows, subsampling), ``_lloyd`` (batched and bounded
iterations), ``_params`` (the parameters, checked once), ``_driver`` (one fit)
and ``_estimator`` (the estimator and :func:`spherical_kmeans`).
"""

# The "X as X" imports: the type aliases of the signatures and the default of sample_size, importable
# from here as before the package was split.
from propos_losses.kmeans._errors import ConvergenceWarning, NotFittedError
from propos_losses.kmeans._estimator import KMeansResult, SphericalKMeans, spherical_kmeans
from propos_losses.kmeans._kernels import DEFAULT_CHUNK_BYTES
from propos_losses.kmeans._params import AUTO_SAMPLE_SIZE as AUTO_SAMPLE_SIZE
from propos_losses.kmeans._params import InitLike as InitLike
from propos_losses.kmeans._params import KMeansParams
from propos_losses.kmeans._params import RandomStateLike as RandomStateLike
from propos_losses.kmeans._params import SampleSize as SampleSize
from propos_losses.kmeans._rows import ArrayLike as ArrayLike
from propos_losses.kmeans._rows import DataLike as DataLike
from propos_losses.kmeans._rows import WeightLike as WeightLike

__all__ = [
    "SphericalKMeans",
    "spherical_kmeans",
    "KMeansParams",
    "KMeansResult",
    "NotFittedError",
    "ConvergenceWarning",
    "DEFAULT_CHUNK_BYTES",
]

#: Memory budget (bytes) of one chunk of similarities when ``chunk_size`` is
#: ``None``: rows per chunk = budget / (R * K * itemsize).
DEFAULT_CHUNK_BYTES: int = DEFAULT_CHUNK_BYTES  # (documented here; the k-means reads _kernels.py's)
