"""The exception and the warning of the k-means, combined with scikit-learn's when it is loaded."""

from __future__ import annotations

import sys
from typing import Dict

__all__ = ["NotFittedError", "not_fitted", "ConvergenceWarning", "convergence_warning_class"]


class NotFittedError(ValueError, AttributeError):
    """A method used before :meth:`SphericalKMeans.fit`: a ``ValueError`` and an ``AttributeError``.

    When scikit-learn is loaded, the error raised is also an instance of
    scikit-learn's ``NotFittedError`` (so its checks recognise it).
    """


def not_fitted(message: str) -> NotFittedError:
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
        >>> from propos_losses.kmeans import SphericalKMeans
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     _ = SphericalKMeans(3, n_init=1, random_state=0).fit(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
        >>> any(issubclass(w.category, ConvergenceWarning) for w in caught)
        True
    """


_COMBINED_WARNINGS: Dict[int, type] = {}


def convergence_warning_class() -> type:
    """:class:`ConvergenceWarning`, combined with scikit-learn's when scikit-learn is already imported."""
    module = sys.modules.get("sklearn.exceptions")
    if module is None:
        return ConvergenceWarning
    if id(module) not in _COMBINED_WARNINGS:  # one class, so that warning filters and "once" work
        _COMBINED_WARNINGS[id(module)] = type(
            "ConvergenceWarning", (ConvergenceWarning, module.ConvergenceWarning), {"__module__": __name__}
        )
    return _COMBINED_WARNINGS[id(module)]
