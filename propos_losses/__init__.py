"""propos_losses: ProPos prototype scattering and positive sampling for any SSL loop.

The package exports the losses of ProPos (Huang et al., TPAMI) as plain
``nn.Module`` objects with functional twins, the pieces of the training loop
around them, a batched spherical k-means and exact clustering metrics:

>>> from propos_losses import PSL, PSA, MomentumUpdater, PrototypeQueue
>>> psl = PSL(num_clusters=10)
"""

from propos_losses import diagnostics, metrics
from propos_losses._version import __version__
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
# The metrics and diagnostics export their own lists.
__all__ += metrics.__all__
__all__ += diagnostics.__all__
