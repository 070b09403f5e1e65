"""propos_losses: ProPos prototype scattering and positive sampling for any SSL loop.

The package exports the losses of ProPos (Huang et al., TPAMI) as plain
``nn.Module`` objects with functional twins, the pieces of the training loop
around them, a batched spherical k-means and exact clustering metrics:

>>> from propos_losses import PSL, PSA, MomentumUpdater, PrototypeQueue
>>> psl = PSL(num_clusters=10)
"""

# The names are imported on first use (PEP 562): ``import propos_losses`` itself imports
# neither torch nor scikit-learn, so a command line built on it can answer --help at once
# and turn Ctrl-C during those imports into a clean exit. Type checkers see the imports below.
import importlib
from typing import TYPE_CHECKING, Any, Dict, List

from propos_losses._version import __version__

if TYPE_CHECKING:
    from propos_losses import diagnostics, metrics
    from propos_losses.diagnostics import (
        alignment,
        cluster_size_stats,
        representation_diagnostics,
        uniformity,
        wang_isola_alignment,
        wang_isola_uniformity,
    )
    from propos_losses.estep import EStep
    from propos_losses.features import WithIndex, extract_features
    from propos_losses.kmeans import ConvergenceWarning, KMeansParams, KMeansResult, SphericalKMeans, spherical_kmeans
    from propos_losses.metrics import (
        ContingencyTable,
        ami,
        ari,
        cluster_accuracy,
        contingency_table,
        evaluate_clustering,
        expected_mutual_information,
        nmi,
    )
    from propos_losses.momentum import MomentumUpdater
    from propos_losses.propos_loss import ProPosLoss, ProPosStep
    from propos_losses.prototypes import cluster_sums, compute_prototypes
    from propos_losses.psa import PSA, PositiveSamplingAlignment, positive_sampling_alignment
    from propos_losses.psl import (
        PSL,
        PrototypeScatteringLoss,
        PSLTerms,
        prototype_scattering_loss,
        prototype_scattering_terms,
    )
    from propos_losses.queue import PrototypeQueue

#: Public name -> the submodule that defines it.
_EXPORTS: Dict[str, str] = {
    "alignment": "diagnostics",
    "cluster_size_stats": "diagnostics",
    "representation_diagnostics": "diagnostics",
    "uniformity": "diagnostics",
    "wang_isola_alignment": "diagnostics",
    "wang_isola_uniformity": "diagnostics",
    "EStep": "estep",
    "WithIndex": "features",
    "extract_features": "features",
    "ConvergenceWarning": "kmeans",
    "KMeansParams": "kmeans",
    "KMeansResult": "kmeans",
    "SphericalKMeans": "kmeans",
    "spherical_kmeans": "kmeans",
    "ContingencyTable": "metrics",
    "ami": "metrics",
    "ari": "metrics",
    "cluster_accuracy": "metrics",
    "contingency_table": "metrics",
    "evaluate_clustering": "metrics",
    "expected_mutual_information": "metrics",
    "nmi": "metrics",
    "MomentumUpdater": "momentum",
    "ProPosLoss": "propos_loss",
    "ProPosStep": "propos_loss",
    "cluster_sums": "prototypes",
    "compute_prototypes": "prototypes",
    "PSA": "psa",
    "PositiveSamplingAlignment": "psa",
    "positive_sampling_alignment": "psa",
    "PSL": "psl",
    "PrototypeScatteringLoss": "psl",
    "PSLTerms": "psl",
    "prototype_scattering_loss": "psl",
    "prototype_scattering_terms": "psl",
    "PrototypeQueue": "queue",
}
_SUBMODULES = ("diagnostics", "metrics")

__all__ = [
    "__version__",
    # losses
    "PrototypeScatteringLoss",
    "PSL",
    "PSLTerms",
    "prototype_scattering_loss",
    "prototype_scattering_terms",
    "PositiveSamplingAlignment",
    "PSA",
    "positive_sampling_alignment",
    "cluster_sums",
    "compute_prototypes",
    "ProPosLoss",
    "ProPosStep",
    # drop-in helpers
    "WithIndex",
    "extract_features",
    "EStep",
    # training utilities
    "MomentumUpdater",
    "PrototypeQueue",
    # spherical k-means
    "SphericalKMeans",
    "ConvergenceWarning",
    "spherical_kmeans",
    "KMeansResult",
    "KMeansParams",
]
# The metrics and diagnostics export their own lists (every one of their names is in _EXPORTS).
__all__ += [name for name in _EXPORTS if name not in __all__]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"propos_losses.{name}")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"propos_losses.{_EXPORTS[name]}"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'propos_losses' has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
