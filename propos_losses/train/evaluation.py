"""Evaluation passes of the reference trainer: target features, k-means, scores, the assignments file.

Built on the library's :func:`~propos_losses.extract_features`, :class:`~propos_losses.SphericalKMeans`
and metrics, like the E-step (:class:`~propos_losses.EStep`) they accompany.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from propos_losses import SphericalKMeans, extract_features
from propos_losses.diagnostics import cluster_size_stats
from propos_losses.metrics import evaluate_clustering
from propos_losses.train.augment import normalize
from propos_losses.train.models import fuse_batchnorm_for_inference
from propos_losses.train.rundir import atomic_write_bytes

__all__ = [
    "ANNOUNCE_FROM",
    "cluster",
    "cluster_stats",
    "evaluate_features",
    "format_record",
    "scores",
    "target_features",
    "write_assignments",
]

#: From this many samples on, a line announces each E-step and evaluation before it starts
#: (they take seconds to minutes there, and print nothing while they run).
ANNOUNCE_FROM = 10_000


class _Standardize(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, images: Tensor) -> Tensor:
        return normalize(images.float() / 255.0, self.mean, self.std)


@torch.no_grad()
def target_features(
    target: nn.Module, images: Tensor, mean: Sequence[float], std: Sequence[float], batch_size: int
) -> Tuple[Tensor, Tensor]:
    """Backbone ``(N, feature_dim)`` and projector ``(N, d)`` float32 features of uint8 ``images`` ``(N, C, H, W)``.

    ``target`` returns ``(features, projections)``; a copy with its BatchNorms folded
    (:func:`~propos_losses.train.models.fuse_batchnorm_for_inference`) computes them.
    """
    network = nn.Sequential(_Standardize(mean, std), fuse_batchnorm_for_inference(target))
    backbone, projector = extract_features(network, images, batch_size=batch_size)
    return backbone.float(), projector.float()


def cluster(features: Tensor, num_clusters: int, *, seed: int, n_init: int, max_iter: int, tol: float) -> Tensor:
    """Spherical k-means labels ``(N,)`` int64 on the features' device (every process holds all features)."""
    kmeans = SphericalKMeans(
        num_clusters, n_init=n_init, max_iter=max_iter, tol=tol, random_state=seed, sample_size=None, distributed=False
    )
    return torch.as_tensor(kmeans.fit_predict(features)).to(features.device, torch.int64)


def cluster_stats(prefix: str, labels: Tensor, num_clusters: int) -> Dict[str, Any]:
    """Smallest and largest cluster, empty clusters and the normalised entropy of the sizes (1: equal)."""
    stats = cluster_size_stats(labels.cpu(), num_clusters)
    return {
        f"{prefix}_size_min": stats["min"],
        f"{prefix}_size_max": stats["max"],
        f"{prefix}_empty_clusters": stats["num_empty"],
        f"{prefix}_size_uniformity": stats["normalized_entropy"],
    }


def scores(prefix: str, true_labels: Optional[Tensor], labels: Tensor) -> Dict[str, float]:
    """NMI, AMI, ARI and ACC of ``labels`` against the data set's labels (none for unlabelled data)."""
    if true_labels is None:
        return {}
    values = evaluate_clustering(true_labels.cpu(), labels.cpu())
    return {f"{prefix}_{name}": float(value) for name, value in values.items()}


def evaluate_features(
    backbone: Tensor,
    projector: Tensor,
    true_labels: Optional[Tensor],
    num_clusters: int,
    *,
    seeds: Tuple[int, int],
    n_init: int,
    max_iter: int,
    tol: float,
    projector_labels: Optional[Tensor] = None,
) -> Tuple[Dict[str, Any], Tensor, Tensor]:
    """k-means of the backbone and projector features, scored: ``(record, backbone labels, projector labels)``.

    Args:
        backbone, projector: ``(N, d)`` features of the whole data set.
        true_labels: the data set's labels (``None``: no scores).
        num_clusters: clusters of the evaluation (the class count).
        seeds: seeds of the projector's and the backbone's k-means.
        n_init, max_iter, tol: k-means settings.
        projector_labels: a clustering of ``projector`` to reuse instead of running k-means on it.
    """
    settings = {"n_init": n_init, "max_iter": max_iter, "tol": tol}
    if projector_labels is None:
        projector_labels = cluster(projector, num_clusters, seed=seeds[0], **settings)  # type: ignore[arg-type]
    backbone_labels = cluster(backbone, num_clusters, seed=seeds[1], **settings)  # type: ignore[arg-type]
    record = {
        **scores("backbone", true_labels, backbone_labels),
        **scores("projector", true_labels, projector_labels),
        **cluster_stats("backbone", backbone_labels, num_clusters),
    }
    return record, backbone_labels, projector_labels


def format_record(event: str, epoch: int, record: Dict[str, Any]) -> str:
    """The progress line of an E-step or evaluation record."""
    parts = [f"{event} before epoch {epoch + 1}:"]
    for key in ("backbone_nmi", "backbone_acc", "projector_nmi", "projector_acc", "pseudo_size_min", "pseudo_size_max"):
        if key in record:
            value = record[key]
            parts.append(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}")
    return "  ".join(parts)


def write_assignments(
    path: Path, true_labels: Optional[Tensor], *, backbone: Tensor, projector: Tensor, pseudo: Tensor
) -> None:
    """Write one CSV row per sample (index, label, both final clusterings, pseudo-label), atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["index", "label", "cluster_backbone", "cluster_projector", "pseudo_label"])
    labels = true_labels.tolist() if true_labels is not None else [""] * len(backbone)
    writer.writerows(zip(range(len(backbone)), labels, backbone.tolist(), projector.tolist(), pseudo.tolist()))
    atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))
