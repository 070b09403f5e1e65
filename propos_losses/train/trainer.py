"""The ProPos EM training loop (Algorithm 1), checkpoints and logs.

One epoch of :class:`Trainer` is

1. **E-step** (before the first epoch and every ``estep_every`` epochs):
   spherical k-means on the L2-normalised *target* features (projector outputs
   by default) of the un-augmented training set gives the pseudo-labels; a
   PSL memory queue, if any, is relabelled from them. The same features are
   evaluated (k-means on target backbone and projector features, NMI / AMI /
   ARI / ACC against the labels when the data set has them).
2. **M-step**: for every mini-batch two augmented views ``x``, ``x+``;
   ``L = mean over both view orders of (L_psa + lambda_psl * L_psl)`` (Eq. 12;
   the authors' ``0.5 * (...)``),
   SGD (or LARS) with a per-step linear warm-up and cosine decay of the
   learning rate, then the EMA update of the target network (Eq. 11). During
   the first ``psl_warmup_epochs`` epochs PSL and the PSA noise are off
   (``lambda_psl = sigma = 0``), which is exactly BYOL; ``method="byol"``
   keeps them off for the whole run.

Everything that makes a run is saved atomically at the end of every epoch in
``checkpoint.pt`` (networks, optimizer, schedule step, momentum step, queue,
pseudo-labels, RNG states, the length of the metrics log), so that
``--resume`` continues bit-for-bit on CPU. Random streams are derived from
``(seed, epoch, rank)`` so that a resumed run draws the same numbers. The
checkpoint carries the SHA-256 of its content and fingerprints of the data and
the settings (:func:`load_checkpoint` and resumption refuse anything else); the
metrics log is synced before it, and cut back to the length it records on
resume. A stop requested between two training steps (:meth:`Trainer.request_stop`,
SIGINT/SIGTERM in ``propos-train``) checkpoints the epoch in progress.

Under ``torchrun`` the global batch ``batch_size`` is split evenly over the
processes, the online network is wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel`, every process takes its
own slice of one shared permutation per epoch (a distributed sampler), and
the E-step and evaluation run the library's distributed k-means on the
per-rank shards.

Example:
    >>> import tempfile
    >>> from propos_losses.train.config import resolve_config
    >>> cfg = resolve_config("digits", overrides=dict(max_samples=64, epochs=1, batch_size=32,
    ...     hidden_dim=16, out_dim=8, kmeans_n_init=1, device="cpu"))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     result = Trainer(cfg, tmp, log=lambda message: None).fit()
    >>> sorted(k for k in result["final"] if k.startswith("backbone_") and k[9:] in ("nmi", "ami", "ari", "acc"))
    ['backbone_acc', 'backbone_ami', 'backbone_ari', 'backbone_nmi']
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, cast

import numpy as np
import torch
from torch import Tensor, nn
from typing_extensions import Unpack

from propos_losses.diagnostics import cluster_size_stats
from propos_losses.distributed import (
    all_gather_cat,
    all_reduce_sum_,
    broadcast_,
    get_rank,
    get_world_size,
    is_distributed,
)
from propos_losses.kmeans import KMeansParams, SphericalKMeans
from propos_losses.metrics import evaluate_clustering, nmi
from propos_losses.momentum import MomentumUpdater
from propos_losses.train.augment import build_augmentation, normalize
from propos_losses.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    CheckpointError,
    checkpoint_bytes,
    config_fingerprint,
    data_fingerprint,
    load_checkpoint,  # noqa: F401  (re-exported, see __all__)
    rng_state,
    set_rng_state,
)
from propos_losses.train.config import ConfigError, TrainConfig, config_to_dict
from propos_losses.train.data import ImageDataset, load_dataset
from propos_losses.train.models import Encoder, OnlineStep, build_backbone, fuse_batchnorm_for_inference, mlp_head
from propos_losses.train.optim import LARS, learning_rate_factor
from propos_losses.train.progress import Progress
from propos_losses.train.rundir import (
    CONFIG_NAME,  # noqa: F401  (re-exported)
    OutputDirError,  # noqa: F401  (re-exported)
    atomic_write_bytes,
    remove_stale_temporaries,
)
from propos_losses.train.runlog import METRICS_NAME, MetricsLog
from propos_losses.utils import normalize_rows

__all__ = [
    "TrainingInterrupted",
    "Encoder",
    "Trainer",
    "METRICS_NAME",
    "ASSIGNMENTS_NAME",
    "TIMING_KEYS",
]
# Also importable from here, as before the split (their homes are checkpoint.py, optim.py and
# rundir.py): CheckpointError, load_checkpoint, config_fingerprint, data_fingerprint,
# CHECKPOINT_NAME, LARS, learning_rate_factor, atomic_write_bytes, OutputDirError, CONFIG_NAME.

ASSIGNMENTS_NAME = "assignments.csv"
#: Samples per forward pass when extracting features of the whole data set.
_FEATURE_CHUNK = 1024
#: Keys of a log record that measure wall time (they differ between identical runs).
TIMING_KEYS = ("time_s", "elapsed_s", "estep_kmeans_s")


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by :meth:`Trainer.fit` after a stop requested by a signal has been checkpointed.

    Attributes:
        signum: the signal (``signal.SIGINT``, ``signal.SIGTERM``).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# --------------------------------------------------------------------------- trainer


def _seed_for(seed: int, *parts: int) -> int:
    """A 63-bit seed derived from ``seed`` and ``parts`` (epoch, rank, stream)."""
    value = seed
    for part in parts:
        value = (value * 1_000_003 + part + 1) % (2**63 - 1)
    return value


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without CUDA is a ConfigError.

    Under ``torchrun`` on CUDA, the process uses GPU ``LOCAL_RANK``.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' requested but CUDA is not available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


class Trainer:
    """Runs a :class:`~propos_losses.train.config.TrainConfig` end to end.

    Args:
        config: validated configuration.
        output_dir: run directory (created by :meth:`fit` if missing); receives
            ``config.json``, ``metrics.jsonl``, ``checkpoint.pt``,
            ``assignments.csv`` and plots.
        dataset: the data, loaded from ``config`` when ``None``.
        resume: a checkpoint from :func:`load_checkpoint` to continue from.
        log: receives progress lines (rank 0 only); ``print`` by default.
        progress_bar: draw the in-epoch progress bar (rank 0, on stderr):
            ``None`` (default) when stderr is a terminal, ``False`` never
            (``--quiet``), ``True`` always.

    Raises:
        ConfigError: settings that do not fit the data (batch larger than the
            data set, no class count to pick ``num_clusters`` from, ...).

    Example:
        See the module docstring.
    """

    def __init__(
        self,
        config: TrainConfig,
        output_dir: str | os.PathLike,
        *,
        dataset: Optional[ImageDataset] = None,
        resume: Optional[Dict[str, Any]] = None,
        log: Optional[Callable[[str], None]] = None,
        progress_bar: Optional[bool] = None,
    ) -> None:
        self.config = config
        self.output_dir = Path(output_dir)
        self.rank = get_rank()
        self.world_size = get_world_size()
        self.is_main = self.rank == 0
        self._log = log if log is not None else print
        self.device = resolve_device(config.device)
        self._init_data(dataset)
        # Model initialisation is identical on every rank (DDP also broadcasts it).
        torch.manual_seed(_seed_for(config.seed, 0))
        self._init_networks()
        self._init_schedule(progress_bar)
        self._init_loop_state()
        # Per-rank stream for the PSA noise (the global torch RNG); the model init above is shared.
        torch.manual_seed(_seed_for(config.seed, 1, self.rank))
        np.random.seed(_seed_for(config.seed, 2, self.rank) % 2**32)
        random.seed(_seed_for(config.seed, 3, self.rank))
        if resume is not None:
            self._restore(resume)

    # ------------------------------------------------------------------ construction

    def _init_data(self, dataset: Optional[ImageDataset]) -> None:
        """The data set (loaded unless given), batch split, cluster counts, images on the device."""
        config = self.config
        self.dataset = (
            dataset
            if dataset is not None
            else load_dataset(config.dataset, config.data_dir, max_samples=config.max_samples)
        )
        n = len(self.dataset)
        if config.batch_size > n:
            raise ConfigError(f"batch_size ({config.batch_size}) is larger than the data set ({n} samples)")
        if config.batch_size % self.world_size:
            raise ConfigError(
                f"batch_size ({config.batch_size}) must be divisible by the number of processes ({self.world_size})"
            )
        self.local_batch = config.batch_size // self.world_size
        if self.local_batch < 2:
            raise ConfigError(f"each process needs at least 2 samples per batch for BatchNorm, got {self.local_batch}")
        num_clusters = config.num_clusters or self.dataset.num_classes
        if num_clusters is None:
            raise ConfigError("the data set has no labels: set --num-clusters")
        self.num_clusters = int(num_clusters)
        self.eval_clusters = int(self.dataset.num_classes or self.num_clusters)
        self._check_data_fits()
        self.data_sha256 = data_fingerprint(self.dataset)
        self.images = self.dataset.images.to(self.device)
        scaled = self.dataset.images.float() / 255.0
        self.mean = scaled.mean(dim=(0, 2, 3)).tolist()
        # A constant channel would give std 0; the finfo floor keeps normalisation finite.
        self.std = scaled.std(dim=(0, 2, 3)).clamp_min(torch.finfo(scaled.dtype).eps).tolist()

    def _init_networks(self) -> None:
        """Augmentation, online/target encoders, predictor, the M-step module (DDP-wrapped when distributed)."""
        config = self.config
        _, channels, height, _ = self.dataset.images.shape
        kind = config.augmentation or {"digits": "digits", "mnist": "mnist"}.get(
            config.dataset, "color" if channels == 3 else "mnist"
        )
        try:  # the library checks its arguments (translate <= 1, a temperature whose inverse is finite, ...)
            self.augment = build_augmentation(kind, height, channels, **_augmentation_overrides(config)).to(self.device)
            backbone, feature_dim = build_backbone(config.backbone, channels, height)
            self.online = Encoder(backbone, feature_dim, config.hidden_dim, config.out_dim).to(self.device)
            self.predictor = mlp_head(config.out_dim, config.hidden_dim, config.out_dim).to(self.device)
            self.target = MomentumUpdater.make_target(self.online)
            self.step_module = OnlineStep(
                self.online,
                self.predictor,
                self.num_clusters,
                sigma=config.sigma,
                temperature=config.temperature,
                queue_size=config.queue_size,
            ).to(self.device)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.model: nn.Module = self.step_module
        if is_distributed():
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(
                self.step_module, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        # The module of the checked steps: their value checks read values back (graph breaks under
        # torch.compile), so they run eagerly; the fast-path steps run self.model, compiled when asked.
        self.checked_model = self.model
        if config.compile != "none":
            release = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
            if is_distributed() and release < (2, 13):
                # torch 2.4's DDP graph splitter rejects the higher-order op of PSL's differentiable
                # all-reduce ("DDPOptimizer backend: Found a higher order op"); 2.13 accepts it. Without
                # the splitter the compiled graph is one DDP bucket (the documented workaround).
                torch._dynamo.config.optimize_ddp = False
            self.model = cast(nn.Module, torch.compile(self.model, backend=config.compile))

    def _init_schedule(self, progress_bar: Optional[bool]) -> None:
        """Steps, progress display, optimiser (SGD or LARS, predictor lr multiplier) and momentum schedule."""
        config = self.config
        self.steps_per_epoch = len(self.dataset) // config.batch_size
        self.progress = Progress(
            total_epochs=config.epochs,
            steps_per_epoch=self.steps_per_epoch,
            samples_per_step=config.batch_size,
            enabled=self.is_main,
            bar=None if progress_bar is None else (progress_bar and self.is_main),
        )
        self.total_steps = self.steps_per_epoch * config.epochs
        self.warmup_steps = self.steps_per_epoch * config.warmup_epochs
        groups = [
            {"params": list(self.online.parameters()), "lr_scale": 1.0},
            {"params": list(self.predictor.parameters()), "lr_scale": config.predictor_lr_multiplier},
        ]
        optimizer = LARS if config.optimizer == "lars" else torch.optim.SGD
        self.optimizer: torch.optim.Optimizer = optimizer(
            groups, lr=config.lr, momentum=config.sgd_momentum, weight_decay=config.weight_decay
        )
        try:
            self.momentum = MomentumUpdater(
                base_momentum=config.base_momentum,
                final_momentum=config.final_momentum,
                total_steps=max(self.total_steps, 1),
                buffers=config.target_buffers,  # type: ignore[arg-type]
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def _init_loop_state(self) -> None:
        """Epoch/step counters, pseudo-labels, the PSL start state, the metrics log and stop requests."""
        self.epoch = 0
        self.step = 0
        self.pseudo_labels = torch.zeros(len(self.dataset), dtype=torch.int64, device=self.device)
        # psl_start="auto": NMI between the last two E-steps' labels, and whether PSL has switched on.
        self.label_agreement: Optional[float] = None
        self.estep_count = 0
        self.psl_started = False
        # Centres of the last E-step's k-means (the start of the next one under estep_init="warm").
        self.estep_centers: Optional[Tensor] = None
        #: Records written so far and their bytes (rank 0), saved with the checkpoint.
        self.metrics_log = MetricsLog(self.output_dir / METRICS_NAME, write=self.is_main)
        self._resumed = False
        # A stop requested (by a signal) while training steps run: honoured after the step in progress.
        self._stop_signal: Optional[int] = None
        self._in_steps = False
        # Where a checkpoint written mid-epoch left the epoch (index, loss totals, random streams).
        self._mid_epoch: Optional[Dict[str, Any]] = None

    # ------------------------------------------------------------------ helpers

    def _check_data_fits(self) -> None:
        """Refuse data the loop cannot train or cluster, before anything is written."""
        dataset, n = self.dataset, len(self.dataset)
        _, _, height, width = dataset.images.shape
        if height != width:
            raise ConfigError(
                f"the images of {dataset.name} are {width}x{height}; the trainer needs square images "
                f"(crop or pad them to one side first)"
            )
        if dataset.num_classes is not None and dataset.num_classes < 2:
            raise ConfigError(f"{dataset.name} has a single class; clustering it needs at least 2 classes")
        if self.config.num_clusters is not None and self.num_clusters > n:
            raise ConfigError(
                f"num_clusters ({self.num_clusters}) is larger than the data set ({n} samples); k-means needs at "
                f"least one sample per cluster"
            )
        if self.eval_clusters > n:
            raise ConfigError(
                f"{dataset.name} has {self.eval_clusters} classes but only {n} samples; k-means needs at least one "
                f"sample per cluster (use more samples)"
            )
        # Per-pixel min and max over the set (small (C, H, W) reductions, no copy of the images).
        if n > 1 and bool((dataset.images.amax(0) == dataset.images.amin(0)).all()):
            raise ConfigError(
                f"all {n} images of {dataset.name} are identical (e.g. all black); there is nothing to cluster"
            )

    def request_stop(self, signum: int) -> bool:
        """Ask the run to stop after the training step in progress and checkpoint where it is.

        Meant for a signal handler. Returns ``False`` when the run is not
        between training steps (E-step, evaluation, setup) or runs on several
        processes, which cannot agree on the step without a collective; the
        caller then stops the run at once (the last epoch's checkpoint stands).
        """
        if not self._in_steps or self.world_size > 1:
            return False
        self._stop_signal = signum
        return True

    def use_output_dir(self, output_dir: str | os.PathLike) -> None:
        """Write to ``output_dir`` (the directory finally claimed for the run) instead of the one given."""
        self.output_dir = Path(output_dir)
        self.metrics_log.path = self.output_dir / METRICS_NAME
        self.config = dataclasses.replace(self.config, output_dir=str(output_dir))

    def info(self, message: str) -> None:
        """Print a progress line on rank 0."""
        if self.is_main:
            self._log(message)

    def _record(self, record: Dict[str, Any]) -> None:
        """Append one JSON line to the metrics log (rank 0 writes; every rank counts)."""
        self.metrics_log.append(record)

    def _prepare(self, images: Tensor) -> Tensor:
        return normalize(images, self.mean, self.std)

    def _epoch_indices(self, epoch: int) -> Tensor:
        """This rank's sample indices for ``epoch``: ``(steps_per_epoch, local_batch)`` int64.

        One permutation per epoch, identical on every rank (seeded by
        ``(seed, epoch)``); global batch ``s`` is its ``s``-th block of
        ``batch_size`` and rank ``r`` takes the ``r``-th slice of that block.
        The incomplete last batch is dropped.
        """
        generator = torch.Generator().manual_seed(_seed_for(self.config.seed, 10, epoch))
        perm = torch.randperm(len(self.dataset), generator=generator)
        used = perm[: self.steps_per_epoch * self.config.batch_size]
        blocks = used.view(self.steps_per_epoch, self.world_size, self.local_batch)
        return blocks[:, self.rank].to(self.device)

    def _shard(self) -> Tensor:
        """Indices of this rank's contiguous shard of the data set (for the E-step)."""
        return torch.tensor_split(torch.arange(len(self.dataset)), self.world_size)[self.rank].to(self.device)

    @torch.no_grad()
    def _target_features(self) -> Tuple[Tensor, Tensor]:
        """Target backbone ``(n_r, feature_dim)`` and projector ``(n_r, d)`` features of this rank's shard."""
        # Eval-mode BatchNorm folded into the layers before it: the same features up to rounding,
        # a third less time for the flat_cnn feature pass on one CPU thread (the target itself is not changed).
        target = fuse_batchnorm_for_inference(self.target)
        shard = self._shard()
        backbone_parts: List[Tensor] = []
        projector_parts: List[Tensor] = []
        for chunk in shard.split(_FEATURE_CHUNK):
            images = self._prepare(self.images.index_select(0, chunk).float() / 255.0)
            backbone, projector = target(images)
            backbone_parts.append(backbone.float())
            projector_parts.append(projector.float())
        return torch.cat(backbone_parts), torch.cat(projector_parts)

    def _kmeans(
        self, features: Tensor, num_clusters: int, stream: int, **params: Unpack[KMeansParams]
    ) -> Tuple[Tensor, Tensor]:
        """Distributed spherical k-means of the shards: labels of the whole data set and the centres.

        ``params`` override the run's k-means settings, e.g. ``n_init=1, init=centres`` to start a
        single run from the ``(K, d)`` centres of the previous E-step.
        """
        settings: KMeansParams = {
            "n_init": self.config.kmeans_n_init,
            "max_iter": self.config.kmeans_max_iter,
            "tol": self.config.kmeans_tol,
            "seed": _seed_for(self.config.seed, 20 + stream, self.epoch) % 2**31,
            # Every restart on all rows, as when the documented results were measured (the
            # library's default "auto" would subsample MNIST-sized restarts; the same quality on
            # the k-means benchmark, but other partitions than those figures).
            "sample_size": None,
        }
        settings.update(params)
        kmeans = SphericalKMeans(num_clusters, **settings)
        local = torch.as_tensor(kmeans.fit_predict(normalize_rows(features))).to(self.device, torch.int64)
        return all_gather_cat(local), torch.as_tensor(kmeans.cluster_centers_).to(self.device)

    def _cluster_stats(self, prefix: str, labels: Tensor, num_clusters: int) -> Dict[str, Any]:
        stats = cluster_size_stats(labels.cpu(), num_clusters)
        return {
            f"{prefix}_size_min": stats["min"],
            f"{prefix}_size_max": stats["max"],
            f"{prefix}_empty_clusters": stats["num_empty"],
            # Normalised entropy of the cluster sizes: 1 for equal sizes.
            f"{prefix}_size_uniformity": stats["normalized_entropy"],
        }

    def _metrics(self, prefix: str, labels: Tensor) -> Dict[str, float]:
        if self.dataset.labels is None:
            return {}
        scores = evaluate_clustering(self.dataset.labels.cpu(), labels.cpu())
        return {f"{prefix}_{name}": float(value) for name, value in scores.items()}

    @torch.no_grad()
    def _estep_and_evaluate(self, *, update_labels: bool, final: bool = False) -> Tuple[Dict[str, Any], Tensor, Tensor]:
        """E-step (when ``update_labels``) and evaluation of the current target network."""
        backbone, projector = self._target_features()
        record: Dict[str, Any] = {}
        n_init = self.config.final_kmeans_n_init if final else self.config.kmeans_n_init
        begin = time.perf_counter()
        eval_projector, eval_centers = self._kmeans(projector, self.eval_clusters, stream=1, n_init=n_init)
        eval_seconds = time.perf_counter() - begin
        estep_on_projector = self.config.estep_features == "projector"
        if update_labels:
            estep_features = projector if estep_on_projector else backbone
            previous = self.estep_centers if self.config.estep_init == "warm" else None
            if previous is not None:
                begin = time.perf_counter()
                labels, centers = self._kmeans(estep_features, self.num_clusters, stream=2, n_init=1, init=previous)
                record["estep_kmeans_s"] = time.perf_counter() - begin
                if estep_on_projector and self.num_clusters == self.eval_clusters:
                    # How far the warm start lands from a cold run on the same features.
                    record["pseudo_vs_cold_nmi"] = float(nmi(labels.cpu().numpy(), eval_projector.cpu().numpy()))
            elif estep_on_projector and self.num_clusters == self.eval_clusters:
                labels, centers = eval_projector, eval_centers  # the same k-means; run it once
                record["estep_kmeans_s"] = eval_seconds
            else:
                begin = time.perf_counter()
                labels, centers = self._kmeans(estep_features, self.num_clusters, stream=2)
                record["estep_kmeans_s"] = time.perf_counter() - begin
            self.estep_centers = centers
            if self.estep_count > 0:
                self.label_agreement = float(nmi(self.pseudo_labels.cpu().numpy(), labels.cpu().numpy()))
                record["pseudo_agreement"] = self.label_agreement
            self.estep_count += 1
            self.pseudo_labels = labels
            if self.step_module.psl.queue is not None:
                self.step_module.psl.relabel_queue(labels)
            record.update(self._cluster_stats("pseudo", labels, self.num_clusters))
            record.update(self._metrics("pseudo", labels))
        eval_backbone, _ = self._kmeans(backbone, self.eval_clusters, stream=3, n_init=n_init)
        record.update(self._metrics("backbone", eval_backbone))
        record.update(self._metrics("projector", eval_projector))
        record.update(self._cluster_stats("backbone", eval_backbone, self.eval_clusters))
        return record, eval_backbone, eval_projector

    # ------------------------------------------------------------------ checkpoint

    def _state(self, mid_epoch: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        return {
            "mid_epoch": mid_epoch,
            "format": CHECKPOINT_FORMAT,
            "config": config_to_dict(self.config),
            "epoch": self.epoch,
            "step": self.step,
            "world_size": self.world_size,
            "online": self.online.state_dict(),
            "predictor": self.predictor.state_dict(),
            "target": self.target.state_dict(),
            "psl": self.step_module.psl.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"step": self.step, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps},
            "momentum": self.momentum.state_dict(),
            "pseudo_labels": self.pseudo_labels.cpu(),
            "psl_start": {
                "agreement": self.label_agreement,
                "estep_count": self.estep_count,
                "started": self.psl_started,
            },
            "estep_centers": None if self.estep_centers is None else self.estep_centers.cpu(),
            "rng": rng_state(),
            "log_lines": self.metrics_log.lines,
            "log_bytes": self.metrics_log.size,
            "data_sha256": self.data_sha256,
            "config_sha256": config_fingerprint(self.config),
        }

    def save_checkpoint(self, mid_epoch: Optional[Dict[str, Any]] = None) -> None:
        """Write ``checkpoint.pt`` atomically (rank 0), after making the metrics log it counts durable.

        Args:
            mid_epoch: where the epoch in progress stands (``index`` steps done,
                loss ``totals``, the random streams' states), for a stop
                between steps; ``None`` at the end of an epoch.
        """
        if not self.is_main:
            return
        # The checkpoint promises log_bytes bytes of log: they must survive an OS crash too.
        self.metrics_log.sync()
        atomic_write_bytes(self.output_dir / CHECKPOINT_NAME, checkpoint_bytes(self._state(mid_epoch)))

    def _restore(self, state: Dict[str, Any]) -> None:
        """Check that ``state`` belongs to this configuration and data, then load it (writes nothing)."""
        where = state.get("path", "the checkpoint")
        if state.get("world_size", 1) != self.world_size:
            raise CheckpointError(
                f"checkpoint was written by {state.get('world_size')} process(es); resume with the same number "
                f"(got {self.world_size})"
            )
        if "data_sha256" in state and state["data_sha256"] != self.data_sha256:
            raise CheckpointError(
                f"the data set differs from the one the run in {where!r} was trained on ({self.dataset.name}, "
                f"{len(self.dataset)} samples, fingerprint {self.data_sha256[:12]} instead of "
                f"{str(state['data_sha256'])[:12]}); resume it with the same data files"
            )
        if "config_sha256" in state and state["config_sha256"] != config_fingerprint(self.config):
            raise CheckpointError(f"{where!r} is damaged: its settings do not match their fingerprint")
        n = len(self.dataset)
        labels = state["pseudo_labels"]
        if labels.shape != (n,):
            raise CheckpointError(f"checkpoint holds pseudo-labels for {labels.shape[0]} samples, the data set has {n}")
        if labels.dtype != torch.int64 or (n and not 0 <= int(labels.min()) <= int(labels.max()) < self.num_clusters):
            raise CheckpointError(
                f"{where!r} is damaged: its pseudo-labels are not cluster indices < {self.num_clusters}"
            )
        epoch, step = int(state["epoch"]), int(state["step"])
        mid_epoch = state.get("mid_epoch")
        index = mid_epoch.get("index") if isinstance(mid_epoch, dict) else 0
        if (
            not 0 <= epoch <= self.config.epochs
            or (mid_epoch is not None and not isinstance(mid_epoch, dict))
            or not isinstance(index, int)
            or step != epoch * self.steps_per_epoch + index
            or (mid_epoch is not None and not (0 < index <= self.steps_per_epoch and epoch < self.config.epochs))
        ):
            raise CheckpointError(
                f"{where!r} is damaged: epoch {epoch} and step {step} do not fit a {self.config.epochs}-epoch run of "
                f"{self.steps_per_epoch} steps per epoch"
            )
        # Raises (CheckpointError) when the log holds fewer records than the checkpoint covers.
        self.metrics_log.restore(int(state["log_lines"]), state.get("log_bytes"))
        try:
            self.online.load_state_dict(state["online"])
            self.predictor.load_state_dict(state["predictor"])
            self.target.load_state_dict(state["target"])
            self.step_module.psl.load_state_dict(state["psl"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.momentum.load_state_dict(state["momentum"])
            # Checkpoints from 0.1.0 have no psl_start entry: they used the fixed warm-up.
            psl_start = state.get("psl_start", {"agreement": None, "estep_count": epoch, "started": False})
            self.label_agreement = psl_start["agreement"]
            self.estep_count = int(psl_start["estep_count"])
            self.psl_started = bool(psl_start["started"])
            centers = state.get("estep_centers")
            self.estep_centers = None if centers is None else centers.to(self.device)
            set_rng_state(state["rng"])
            if mid_epoch is not None:
                self._mid_epoch = {
                    "index": index,
                    "totals": mid_epoch["totals"].to(self.device, torch.float64).reshape(3),
                    "generator": mid_epoch["generator"],
                    "psa_generator": mid_epoch["psa_generator"],
                    "lr": float(mid_epoch["lr"]),
                }
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
            raise CheckpointError(f"checkpoint does not match this configuration: {exc}") from None
        self.epoch, self.step = epoch, step
        self.pseudo_labels = labels.to(self.device)
        self._resumed = True

    def _prepare_resumed_outputs(self) -> None:
        """Drop log bytes written after the checkpoint (an interrupted epoch, a torn line) and stale temporaries."""
        remove_stale_temporaries(self.output_dir)
        if self._resumed:
            self.metrics_log.truncate()

    # ------------------------------------------------------------------ loop

    def _set_learning_rate(self) -> float:
        factor = learning_rate_factor(self.step, self.total_steps, self.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * group["lr_scale"] * factor
        return self.config.lr * factor

    def _psl_on(self) -> bool:
        """Whether PSL (and the PSA noise) is on this epoch; under ``psl_start="auto"`` it stays on once on."""
        config = self.config
        if config.method == "byol":
            return False
        if config.psl_start == "auto":
            agreed = self.label_agreement is not None and self.label_agreement >= config.psl_agreement
            self.psl_started = self.psl_started or agreed
            return self.psl_started
        return self.epoch >= config.effective_psl_warmup_epochs

    def _train_epoch(self) -> Dict[str, Any]:
        config = self.config
        psl_on = self._psl_on()
        lambda_psl = config.lambda_psl if psl_on else 0.0
        sigma = config.sigma if psl_on else 0.0
        # Fresh per-(epoch, rank) streams: a resumed run draws exactly the same numbers.
        generator = torch.Generator(device=self.device).manual_seed(_seed_for(config.seed, 30 + self.rank, self.epoch))
        self.step_module.psa.sigma = sigma
        self.step_module.psa.generator = torch.Generator(device=self.device).manual_seed(
            _seed_for(config.seed, 40 + self.rank, self.epoch)
        )
        self.model.train()
        self.target.train()
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        lr, start, done = 0.0, 0, 0
        mid_epoch, self._mid_epoch = self._mid_epoch, None
        if mid_epoch is not None:  # resumed from a checkpoint written between two steps of this epoch
            generator.set_state(mid_epoch["generator"])
            self.step_module.psa.generator.set_state(mid_epoch["psa_generator"])
            totals += mid_epoch["totals"]
            lr, start, done = mid_epoch["lr"], mid_epoch["index"], mid_epoch["index"]
        self._in_steps = True
        self.progress.start_epoch(self.epoch, start)
        try:
            for index, batch in enumerate(self._epoch_indices(self.epoch)[start:], start):
                lr = self._step(index, batch, generator, lambda_psl, totals)
                done = index + 1
                # The running loss is read back (a host sync) only when the bar refreshes.
                self.progress.step(functools.partial(_running_mean, totals, done))
                if self._stop_signal is not None:
                    break
        finally:
            self._in_steps = False
            self.progress.end_epoch()
        if self._stop_signal is not None:
            # A signal during the steps: checkpoint between two steps and stop; resume continues from here.
            signum, self._stop_signal = self._stop_signal, None
            self.save_checkpoint(
                mid_epoch={
                    "index": done,
                    "totals": totals.cpu(),
                    "generator": generator.get_state(),
                    "psa_generator": self.step_module.psa.generator.get_state(),
                    "lr": lr,
                }
            )
            raise TrainingInterrupted(signum)
        return self._epoch_stats(totals, lr, lambda_psl, sigma)

    def _step(self, index: int, batch: Tensor, generator: torch.Generator, lambda_psl: float, totals: Tensor) -> float:
        """One M-step on ``batch`` (this rank's indices); adds the loss terms to ``totals``; returns the lr."""
        # Value checks (host syncs) on the first step of every epoch, the sync-free fast path after.
        checked = index == 0
        self.step_module.psl.validate_args = self.step_module.psa.validate_args = checked
        lr = self._set_learning_rate()
        with torch.no_grad():
            images = self.images.index_select(0, batch).float() / 255.0
            view1 = self._prepare(self.augment(images, generator=generator))
            view2 = self._prepare(self.augment(images, generator=generator))
            _, target_both = self.target(torch.cat((view1, view2)))
            target1, target2 = target_both.chunk(2)
        loss, psa_loss, psl_loss = (self.checked_model if checked else self.model)(
            view1, view2, target1, target2, self.pseudo_labels.index_select(0, batch), batch, lambda_psl
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.momentum.update(self.online, self.target)
        totals += torch.stack((loss.detach(), psa_loss, psl_loss)).double()
        self.step += 1
        return lr

    def _epoch_stats(self, totals: Tensor, lr: float, lambda_psl: float, sigma: float) -> Dict[str, Any]:
        all_reduce_sum_(totals)
        totals /= max(self.steps_per_epoch, 1) * self.world_size
        if not bool(torch.isfinite(totals).all()):
            raise FloatingPointError(f"non-finite loss in epoch {self.epoch + 1}: {totals.tolist()}")
        return {
            "loss": float(totals[0]),
            "psa": float(totals[1]),
            "psl": float(totals[2]),
            "lambda_psl": lambda_psl,
            "sigma": sigma,
            "lr": lr,
            "momentum": self.momentum.momentum,
        }

    def _sync_target_buffers(self) -> None:
        """Every rank's target BN statistics come from its own batches; use rank 0's."""
        for buffer in self.target.buffers():
            broadcast_(buffer)

    def fit(self, stop_after: Optional[int] = None) -> Dict[str, Any]:
        """Train until ``config.epochs`` (or until epoch ``stop_after``), then evaluate.

        Args:
            stop_after: stop after this many epochs in total, leaving a
                checkpoint to resume from (no final evaluation).

        Returns:
            ``{"epoch": int, "final": metrics dict or None, "output_dir": str}``.
        """
        config = self.config
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._prepare_resumed_outputs()
        last = config.epochs if stop_after is None else min(stop_after, config.epochs)
        start_time = time.perf_counter()
        while self.epoch < last:
            # An epoch resumed mid-way had its E-step (and evaluation) before the checkpoint.
            resumed_mid_epoch = self._mid_epoch is not None
            estep_due = self.epoch % config.estep_every == 0 and not resumed_mid_epoch
            eval_due = config.eval_every > 0 and self.epoch % config.eval_every == 0 and not resumed_mid_epoch
            if estep_due or eval_due:
                self._sync_target_buffers()
                if len(self.dataset) >= _ANNOUNCE_ESTEP_FROM:
                    self.info(
                        f"{'E-step' if estep_due else 'eval'} before epoch {self.epoch + 1}: features and "
                        f"k-means on {len(self.dataset):,} samples ..."
                    )
                begin = time.perf_counter()
                record, _, _ = self._estep_and_evaluate(update_labels=estep_due)
                seconds = time.perf_counter() - begin
                self._record(
                    {"event": "estep" if estep_due else "eval", "epoch": self.epoch, **record, "time_s": seconds}
                )
                self.info(f"{_format('E-step' if estep_due else 'eval', self.epoch, record)}  ({seconds:.1f}s)")
            begin = time.perf_counter()
            stats = self._train_epoch()
            self.epoch += 1
            record = {
                "event": "epoch",
                "epoch": self.epoch,
                "step": self.step,
                **stats,
                "time_s": time.perf_counter() - begin,
            }
            self._record(record)
            self.info(
                f"epoch {self.epoch}/{config.epochs}  loss {stats['loss']:.4f}  psa {stats['psa']:.4f}  "
                f"psl {stats['psl']:.4f}  lr {stats['lr']:.4g}  m {stats['momentum']:.5f}  "
                f"({record['time_s']:.1f}s)"
            )
            self.save_checkpoint()
        if self.epoch < config.epochs:
            self.info(f"stopped after epoch {self.epoch}; resume with --resume {self.output_dir}")
            return {"epoch": self.epoch, "final": None, "output_dir": str(self.output_dir)}

        self._sync_target_buffers()
        if len(self.dataset) >= _ANNOUNCE_ESTEP_FROM:
            self.info(f"final evaluation: features and k-means on {len(self.dataset):,} samples ...")
        begin = time.perf_counter()
        record, backbone_labels, projector_labels = self._estep_and_evaluate(update_labels=False, final=True)
        record.update(self._cluster_stats("projector", projector_labels, self.eval_clusters))
        self._record(
            {
                "event": "final",
                "epoch": self.epoch,
                **record,
                "time_s": time.perf_counter() - begin,
                "elapsed_s": time.perf_counter() - start_time,
            }
        )
        if self.is_main:
            self._write_assignments(backbone_labels, projector_labels)
        return {"epoch": self.epoch, "final": record, "output_dir": str(self.output_dir)}

    def _write_assignments(self, backbone_labels: Tensor, projector_labels: Tensor) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["index", "label", "cluster_backbone", "cluster_projector", "pseudo_label"])
        labels = self.dataset.labels.tolist() if self.dataset.labels is not None else [""] * len(self.dataset)
        rows = zip(
            range(len(self.dataset)),
            labels,
            backbone_labels.tolist(),
            projector_labels.tolist(),
            self.pseudo_labels.tolist(),
        )
        writer.writerows(rows)
        atomic_write_bytes(self.output_dir / ASSIGNMENTS_NAME, buffer.getvalue().encode("utf-8"))


def _augmentation_overrides(config: TrainConfig) -> Dict[str, Any]:
    overrides: Dict[str, Any] = {}
    if config.crop_min_scale is not None:
        overrides["crop_scale"] = (config.crop_min_scale, 1.0)
    if config.rotation_degrees is not None:
        overrides["degrees"] = config.rotation_degrees
    if config.translate is not None:
        overrides["translate"] = config.translate
    return overrides


def _running_mean(totals: Tensor, steps: int) -> float:
    """The epoch's mean loss so far (reads ``totals[0]`` back to the host)."""
    return float(totals[0]) / steps


#: From this many samples on, a line announces each E-step and evaluation before it starts
#: (they take seconds to minutes there, and print nothing while they run).
_ANNOUNCE_ESTEP_FROM = 10_000


def _format(event: str, epoch: int, record: Dict[str, Any]) -> str:
    parts = [f"{event} before epoch {epoch + 1}:"]
    for key in ("backbone_nmi", "backbone_acc", "projector_nmi", "projector_acc", "pseudo_size_min", "pseudo_size_max"):
        if key in record:
            value = record[key]
            parts.append(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}")
    return "  ".join(parts)
