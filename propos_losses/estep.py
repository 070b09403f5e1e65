"""The ProPos E-step as one call: features of the whole data set, spherical k-means, pseudo-labels.

Every ``r`` epochs ProPos clusters the target network's features of the
un-augmented training set and uses the cluster labels as pseudo-labels of the
next epochs. :class:`EStep` does that for any module and data source
(:func:`~propos_losses.extract_features`), optionally starting k-means from
the previous centres. :class:`~propos_losses.ProPosLoss` turns the labels
into its pseudo-labels (and measures how much they changed).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from propos_losses import defaults
from propos_losses._validation import check_bool, check_int, check_labels
from propos_losses.distributed import broadcast_, check_on_every_rank, is_distributed
from propos_losses.features import extract_features
from propos_losses.kmeans import SphericalKMeans

__all__ = ["EStep"]


class EStep:
    """Pseudo-labels from spherical k-means on a module's features of a whole data set.

    ``estep(module, data)`` runs :func:`~propos_losses.extract_features`
    (eval mode, ``no_grad``, data-set order), then
    :class:`~propos_losses.SphericalKMeans`, and returns the labels ``(N,)``
    (int64) on the features' device, ready to be indexed with a batch's sample
    indices. Call ``n`` uses seed ``seed + n`` (fresh restarts every time,
    reproducible).

    Under ``torch.distributed`` every rank must call it (it may gather
    features); k-means then runs on each rank alone on the full feature set
    and rank 0's labels and centres are broadcast, so every rank holds the
    same pseudo-labels.

    Args:
        num_clusters: ``K >= 2``.
        n_init: k-means restarts of a cold start (the paper: 10).
        max_iter: k-means iterations per restart.
        tol: k-means relative tolerance.
        seed: base seed (``None``: a fresh random one each call).
        warm_start: start k-means from the previous call's centres (one
            restart, ``n_init`` ignored) instead of ``n_init`` fresh k-means++
            restarts; the first call is always a cold start.
        batch_size: samples per forward pass of the feature extraction.
        device: where features and labels live (``None``: the module's device).
        sample_size: passed to :class:`~propos_losses.SphericalKMeans`.

    Attributes:
        labels_: the latest pseudo-labels ``(N,)``, or ``None`` before the first call.
        cluster_centers_: the latest centres ``(K, d)``.
        inertia_: the latest k-means inertia.
        history_: one dict per call: ``{"inertia", "n_iter", "warm"}``.

    Raises:
        TypeError, ValueError: bad arguments (named in the message).

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(8, 4)
        >>> data = torch.randn(60, 8)
        >>> estep = EStep(num_clusters=3, n_init=2, seed=0)
        >>> labels = estep(net, data)
        >>> labels.shape, labels.dtype
        (torch.Size([60]), torch.int64)
        >>> warm = EStep(num_clusters=3, seed=0, warm_start=True)
        >>> first, second = warm(net, data), warm(net, data)  # the second starts from the first's centres
        >>> bool((first == second).all()), [h["warm"] for h in warm.history_]
        (True, [False, True])
    """

    def __init__(
        self,
        num_clusters: int,
        *,
        n_init: int = defaults.KMEANS_N_INIT,
        max_iter: int = defaults.KMEANS_MAX_ITER,
        tol: float = defaults.KMEANS_TOL,
        seed: Optional[int] = 0,
        warm_start: bool = False,
        batch_size: int = 256,
        device: Optional[Union[str, torch.device]] = None,
        sample_size: Optional[int] = None,
    ) -> None:
        self.num_clusters = check_int("num_clusters", num_clusters, minimum=2)
        check_bool("warm_start", warm_start)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.seed = None if seed is None else check_int("seed", seed, minimum=0)
        # Validates n_init, max_iter, tol, sample_size now rather than at the first call.
        SphericalKMeans(
            self.num_clusters, n_init=n_init, max_iter=max_iter, tol=tol, sample_size=sample_size
        ).check_params()
        self.n_init, self.max_iter, self.tol, self.sample_size = int(n_init), int(max_iter), float(tol), sample_size
        self.warm_start = warm_start
        self.device = None if device is None else torch.device(device)
        self.labels_: Optional[Tensor] = None
        self.cluster_centers_: Optional[Tensor] = None
        self.inertia_: Optional[float] = None
        self.history_: List[Dict[str, Any]] = []

    def __repr__(self) -> str:
        return (
            f"EStep(num_clusters={self.num_clusters}, n_init={self.n_init}, seed={self.seed}, "
            f"warm_start={self.warm_start}, calls={len(self.history_)})"
        )

    def __call__(self, module: nn.Module, data: Union[Tensor, "Dataset[Any]", "DataLoader[Any]"]) -> Tensor:
        """Pseudo-labels ``(N,)`` of ``data`` from ``module``'s features.

        Args:
            module: the feature network, usually the target (momentum)
                network up to its projector; see :func:`~propos_losses.extract_features`.
            data: un-augmented inputs, a tensor ``(N, ...)``, a map-style
                dataset or an ordered ``DataLoader``.

        Returns:
            int64 labels in ``[0, K)``, on the features' device.
        """
        features = extract_features(module, data, batch_size=self.batch_size, device=self.device)
        return self.fit_features(features)

    def fit_features(self, features: Tensor) -> Tensor:
        """The E-step on precomputed features ``(N, d)`` (same bookkeeping as a call).

        Under ``torch.distributed`` the checks run on every rank together: bad
        features on one rank (NaN, too few rows, another shape) raise the same
        error on every rank instead of leaving the others blocked.
        """

        def check() -> None:
            if not isinstance(features, Tensor) or features.dim() != 2:
                got = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
                raise ValueError(f"features must be a (N, d) tensor, got {got}")
            if features.shape[0] < self.num_clusters:
                raise ValueError(
                    f"features must have at least num_clusters={self.num_clusters} rows, got {features.shape[0]}"
                )
            if not features.is_floating_point():
                raise TypeError(f"features must be floating point, got {features.dtype}")
            if not bool(torch.isfinite(features).all()):
                raise ValueError("features must be finite, got NaN or Inf values")

        shape = tuple(features.shape) if isinstance(features, Tensor) and features.dim() == 2 else (-1, -1)
        device = features.device if isinstance(features, Tensor) else None
        check_on_every_rank(
            check, what="EStep", device=device, agree={"number of samples": shape[0], "feature size": shape[1]}
        )
        warm = (
            self.warm_start
            and self.cluster_centers_ is not None
            and self.cluster_centers_.shape[1] == features.shape[1]
        )
        seed = None if self.seed is None else self.seed + len(self.history_)
        kmeans = SphericalKMeans(
            self.num_clusters,
            n_init=1 if warm else self.n_init,
            max_iter=self.max_iter,
            tol=self.tol,
            random_state=seed,
            init=self.cluster_centers_ if warm else "k-means++",  # type: ignore[arg-type]
            sample_size=self.sample_size,
            distributed=False,  # every rank holds all N features; rank 0's result is broadcast below
        ).fit(features.detach())
        labels: Tensor = kmeans.labels_  # type: ignore[assignment]
        centers: Tensor = kmeans.cluster_centers_  # type: ignore[assignment]
        if is_distributed():
            broadcast_(labels)
            broadcast_(centers)
        self.labels_, self.cluster_centers_, self.inertia_ = labels, centers, float(kmeans.inertia_)
        self.history_.append({"inertia": self.inertia_, "n_iter": int(kmeans.n_iter_), "warm": warm})
        return labels

    def state_dict(self) -> Dict[str, Any]:
        """Everything a resumed run needs: latest labels and centres, and the call history."""
        return {
            "labels": self.labels_,
            "cluster_centers": self.cluster_centers_,
            "inertia": self.inertia_,
            "history": [dict(h) for h in self.history_],
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (checked before anything changes)."""
        keys = {"labels", "cluster_centers", "inertia", "history"}
        if not isinstance(state, dict) or set(state) != keys:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state must be a dict from EStep.state_dict() with keys {sorted(keys)}, got {got}")
        labels, centers, inertia, history = (
            state["labels"],
            state["cluster_centers"],
            state["inertia"],
            state["history"],
        )
        if (labels is None) != (centers is None) or (labels is None) != (inertia is None):
            raise ValueError("state must hold labels, cluster_centers and inertia together (or none of them)")
        if labels is not None:
            if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.dtype != torch.int64 or not labels.numel():
                raise ValueError(
                    f"state's labels must be a non-empty (N,) int64 tensor, got {getattr(labels, 'dtype', labels)!r} "
                    f"of shape {tuple(getattr(labels, 'shape', ()))}"
                )
            check_labels("state's labels", labels, self.num_clusters, bound="num_clusters=")
            if (
                not isinstance(centers, Tensor)
                or centers.dim() != 2
                or centers.shape[0] != self.num_clusters
                or not centers.is_floating_point()
            ):
                raise ValueError(
                    f"state's cluster_centers must be ({self.num_clusters}, d) floating point, got "
                    f"{getattr(centers, 'dtype', centers)!r} of shape {tuple(getattr(centers, 'shape', ()))}"
                )
            if not bool(torch.isfinite(centers).all()):
                raise ValueError("state's cluster_centers must be finite, got NaN or Inf values")
            if isinstance(inertia, bool) or not isinstance(inertia, (int, float)) or not 0.0 <= inertia < float("inf"):
                raise ValueError(f"state's inertia must be a finite number >= 0, got {inertia!r}")
        if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
            raise ValueError(f"state's history must be a list of dicts, got {type(history).__name__}")
        # Copies: the caller's tensors stay theirs.
        labels = None if labels is None else labels.clone()
        centers = None if centers is None else centers.clone()
        self.labels_ = labels
        self.cluster_centers_ = centers
        self.inertia_ = None if inertia is None else float(inertia)
        self.history_ = [dict(h) for h in history]
