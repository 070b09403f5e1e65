"""The ProPos EM training loop (Algorithm 1) on the library's public objects, with checkpoints and logs.

Each epoch of :class:`Trainer` is an E-step (:class:`~propos_losses.EStep` on the target's features, every
``estep_every`` epochs) with an evaluation, then the M-step (:class:`~propos_losses.ProPosStep`,
:class:`~propos_losses.MomentumUpdater`) and a checkpoint; :doc:`trainer` describes the loop, resume and ``torchrun``.

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

import dataclasses
import functools
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, cast

import numpy as np
import torch
from torch import Tensor

from propos_losses import MomentumUpdater, ProPosStep
from propos_losses.distributed import all_reduce_sum_, broadcast_, get_rank, get_world_size
from propos_losses.metrics import nmi
from propos_losses.train.augment import build_augmentation, normalize
from propos_losses.train.checkpoint import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    CheckpointError,
    checkpoint_bytes,
    config_fingerprint,
    data_fingerprint,
    rng_state,
    set_rng_state,
    to_cpu,
)
from propos_losses.train.config import (
    ConfigError,
    TrainConfig,
    augmentation_settings,
    build_criterion,
    build_estep,
    check_batch_split,
    config_to_dict,
    resolve_device,
)
from propos_losses.train.data import ImageDataset, check_clusterable, load_dataset
from propos_losses.train.evaluation import (
    ANNOUNCE_FROM,
    cluster_stats,
    evaluate_features,
    format_record,
    scores,
    target_features,
    write_assignments,
)
from propos_losses.train.models import Encoder, build_backbone, mlp_head
from propos_losses.train.optim import build_optimizer, learning_rate_factor
from propos_losses.train.progress import Progress
from propos_losses.train.rundir import (
    ASSIGNMENTS_NAME,
    CHECKPOINT_NAME,
    METRICS_NAME,
    atomic_write_bytes,
    remove_stale_temporaries,
)
from propos_losses.train.runlog import MetricsLog

__all__ = ["TrainingInterrupted", "Trainer", "TIMING_KEYS"]

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


def _seed_for(seed: int, *parts: int) -> int:
    """A 63-bit seed derived from ``seed`` and ``parts`` (stream, epoch, rank)."""
    value = seed
    for part in parts:
        value = (value * 1_000_003 + part + 1) % (2**63 - 1)
    return value


def _mean_loss(totals: Tensor, steps: int) -> float:
    return float(totals[0]) / steps


class Trainer:
    """Runs a :class:`~propos_losses.train.config.TrainConfig` end to end.

    Args:
        config: validated configuration.
        output_dir: run directory (created by :meth:`fit` if missing); receives ``config.json``, ``metrics.jsonl``,
            ``checkpoint.pt``, ``assignments.csv`` and plots.
        dataset: the data, loaded from ``config`` when ``None``.
        resume: a checkpoint from :func:`~propos_losses.train.checkpoint.load_checkpoint` to continue from.
        log: receives progress lines (rank 0 only); ``print`` by default.
        progress_bar: draw the in-epoch progress bar (rank 0, on stderr): ``None`` (default) when stderr is a terminal,
            ``False`` never (``--quiet``), ``True`` always.

    Raises:
        ConfigError: settings that do not fit the data (batch larger than the
            data set, no class count to pick ``num_clusters`` from, ...).
    """

    def __init__(
        self,
        config: TrainConfig,
        output_dir: str | os.PathLike,
        *,
        dataset: Optional[ImageDataset] = None,
        resume: Optional[Checkpoint] = None,
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
        torch.manual_seed(_seed_for(config.seed, 0))  # the model initialisation is the same on every rank
        self._init_networks()
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
        self.optimizer = build_optimizer(config, self.online, self.predictor)
        self.momentum = MomentumUpdater(
            base_momentum=config.base_momentum,
            final_momentum=config.final_momentum,
            total_steps=max(self.total_steps, 1),
            buffers=config.target_buffers,  # type: ignore[arg-type]
        )
        self.epoch = 0
        self.step = 0
        # Call n of the E-step uses seed + n; a resumed run continues the count (EStep's state).
        self.estep = build_estep(config, self.num_clusters, seed=_seed_for(config.seed, 22) % 2**31)
        #: Records written so far and their bytes (rank 0), saved with the checkpoint.
        self.metrics_log = MetricsLog(self.output_dir / METRICS_NAME, write=self.is_main)
        self._resumed = False
        # A stop requested (by a signal) while training steps run: honoured after the step in progress.
        self._stop_signal: Optional[int] = None
        self._in_steps = False
        # Where a checkpoint written mid-epoch left the epoch (index, loss totals, random streams).
        self._mid_epoch: Optional[Dict[str, Any]] = None
        # Per-rank streams for the PSA noise (the global torch RNG) and the rest; the model init above is shared.
        torch.manual_seed(_seed_for(config.seed, 1, self.rank))
        np.random.seed(_seed_for(config.seed, 2, self.rank) % 2**32)
        random.seed(_seed_for(config.seed, 3, self.rank))
        if resume is not None:
            self._restore(resume)

    def _init_data(self, dataset: Optional[ImageDataset]) -> None:
        """The data set (loaded unless given), batch split, cluster counts, images on the device."""
        config = self.config
        if dataset is None:
            dataset = load_dataset(config.dataset, config.data_dir, max_samples=config.max_samples)
        self.dataset = dataset
        self.local_batch = check_batch_split(config, len(dataset), self.world_size)
        num_clusters = config.num_clusters or dataset.num_classes
        if num_clusters is None:
            raise ConfigError("the data set has no labels: set --num-clusters")
        self.num_clusters = int(num_clusters)
        self.eval_clusters = int(dataset.num_classes or self.num_clusters)
        check_clusterable(dataset, self.num_clusters if config.num_clusters else None, self.eval_clusters)
        self.data_sha256 = data_fingerprint(dataset)
        self.images = dataset.images.to(self.device)
        scaled = dataset.images.float() / 255.0
        self.mean = scaled.mean(dim=(0, 2, 3)).tolist()
        # A constant channel would give std 0; the finfo floor keeps normalisation finite.
        self.std = scaled.std(dim=(0, 2, 3)).clamp_min(torch.finfo(scaled.dtype).eps).tolist()

    def _init_networks(self) -> None:
        """Augmentation, online/target encoders, predictor, the M-step module (DDP-wrapped when distributed)."""
        config = self.config
        _, channels, height, _ = self.dataset.images.shape
        kind, overrides = augmentation_settings(config, channels)
        try:  # the library checks its arguments (translate <= 1, a temperature whose inverse is finite, ...)
            self.augment = build_augmentation(kind, height, channels, **overrides).to(self.device)
            backbone, feature_dim = build_backbone(config.backbone, channels, height)
            self.online = Encoder(backbone, feature_dim, config.hidden_dim, config.out_dim).to(self.device)
            self.predictor = mlp_head(config.out_dim, config.hidden_dim, config.out_dim).to(self.device)
            self.target = MomentumUpdater.make_target(self.online)
            self.criterion = build_criterion(config, self.predictor, self.num_clusters).to(self.device)
            self.step_module = ProPosStep(self.online, self.criterion)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        # The checked steps run eagerly (their value checks read values back: graph breaks under
        # torch.compile); the fast-path steps run self.model, compiled when asked.
        self.checked_model = self.step_module.for_training(device=self.device)
        self.model = self.checked_model
        if config.compile != "none":
            self.model = self.step_module.for_training(
                device=self.device, compile_backend=config.compile, ddp=self.checked_model
            )

    def request_stop(self, signum: int) -> bool:
        """Ask the run to stop after the training step in progress and checkpoint where it is.

        Meant for a signal handler. Returns ``False`` when the run is not between training steps (E-step,
        evaluation, setup) or runs on several processes: the caller then stops the run at once.
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

    def _epoch_indices(self, epoch: int) -> Tensor:
        """This rank's ``(steps_per_epoch, local_batch)`` sample indices: its slice of each block of one permutation.

        The permutation is seeded by ``(seed, epoch)``, the same on every rank; the incomplete last batch is dropped.
        """
        generator = torch.Generator().manual_seed(_seed_for(self.config.seed, 10, epoch))
        used = torch.randperm(len(self.dataset), generator=generator)[: self.steps_per_epoch * self.config.batch_size]
        return used.view(self.steps_per_epoch, self.world_size, self.local_batch)[:, self.rank].to(self.device)

    @torch.no_grad()
    def _estep_and_evaluate(self, *, update_labels: bool, final: bool = False) -> Tuple[Dict[str, Any], Tensor, Tensor]:
        """E-step (when ``update_labels``) and evaluation of the current target network."""
        config = self.config
        backbone, projector = target_features(self.target, self.images, self.mean, self.std, _FEATURE_CHUNK)
        record: Dict[str, Any] = {}
        labels: Optional[Tensor] = None
        if update_labels:
            begin = time.perf_counter()
            labels = self.estep.fit_features(projector if config.estep_features == "projector" else backbone)
            record["estep_kmeans_s"] = time.perf_counter() - begin
            self.criterion.set_pseudo_labels(labels)  # measures the agreement, relabels a queue
            if self.criterion.agreement is not None:
                record["pseudo_agreement"] = self.criterion.agreement
            record.update(cluster_stats("pseudo", labels, self.num_clusters))
            record.update(scores("pseudo", self.dataset.labels, labels))
        comparable = (
            labels is not None and config.estep_features == "projector" and self.num_clusters == self.eval_clusters
        )
        warm = comparable and self.estep.history_[-1]["warm"]
        evaluation, eval_backbone, eval_projector = evaluate_features(
            backbone,
            projector,
            self.dataset.labels,
            self.eval_clusters,
            seeds=(_seed_for(config.seed, 21, self.epoch) % 2**31, _seed_for(config.seed, 23, self.epoch) % 2**31),
            n_init=config.final_kmeans_n_init if final else config.kmeans_n_init,
            max_iter=config.kmeans_max_iter,
            tol=config.kmeans_tol,
            # A cold E-step on the projector features is the evaluation's k-means (same restarts): run it once.
            projector_labels=labels if comparable and not warm else None,
        )
        if warm:  # how far the warm start lands from a cold run on the same features
            record["pseudo_vs_cold_nmi"] = float(nmi(cast(Tensor, labels).cpu().numpy(), eval_projector.cpu().numpy()))
        record.update(evaluation)
        return record, eval_backbone, eval_projector

    def save_checkpoint(self, mid_epoch: Optional[Dict[str, Any]] = None) -> None:
        """Write ``checkpoint.pt`` atomically (rank 0), after making the metrics log it counts durable.

        Args:
            mid_epoch: where the epoch in progress stands (``index`` steps done, loss ``totals``, the random streams'
                states), for a stop between steps; ``None`` at the end of an epoch.
        """
        if not self.is_main:
            return
        checkpoint = Checkpoint(
            mid_epoch=mid_epoch,
            format=CHECKPOINT_FORMAT,
            config=config_to_dict(self.config),
            epoch=self.epoch,
            step=self.step,
            world_size=self.world_size,
            online=self.online.state_dict(),
            target=self.target.state_dict(),
            criterion=to_cpu(self.criterion.state_dict()),  # predictor, PSL queue, pseudo-labels, PSL switch
            estep=to_cpu(self.estep.state_dict()),
            optimizer=self.optimizer.state_dict(),
            scheduler={"step": self.step, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps},
            momentum=self.momentum.state_dict(),
            rng=rng_state(),
            log_lines=self.metrics_log.lines,
            log_bytes=self.metrics_log.size,
            data_sha256=self.data_sha256,
            config_sha256=config_fingerprint(self.config),
        )
        self.metrics_log.sync()  # the checkpoint promises log_bytes bytes of log: they must survive an OS crash
        atomic_write_bytes(self.output_dir / CHECKPOINT_NAME, checkpoint_bytes(checkpoint))

    def _restore(self, checkpoint: Checkpoint) -> None:
        """Check that ``checkpoint`` belongs to this configuration and data, then load it (writes nothing)."""
        checkpoint.check_resumable(
            self.config,
            world_size=self.world_size,
            dataset=self.dataset,
            data_sha256=self.data_sha256,
            steps_per_epoch=self.steps_per_epoch,
        )
        # Raises (CheckpointError) when the log holds fewer records than the checkpoint covers.
        self.metrics_log.restore(checkpoint.log_lines, checkpoint.log_bytes)
        mid_epoch = checkpoint.mid_epoch
        try:
            self.online.load_state_dict(checkpoint.online)
            self.target.load_state_dict(checkpoint.target)
            self.criterion.load_state_dict(checkpoint.criterion)  # checks the pseudo-labels (< K) and the switch
            estep = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in checkpoint.estep.items()}
            self.estep.load_state_dict(estep)
            self.optimizer.load_state_dict(checkpoint.optimizer)
            self.momentum.load_state_dict(checkpoint.momentum)
            set_rng_state(checkpoint.rng)
            if mid_epoch is not None:
                self._mid_epoch = {
                    "index": checkpoint.steps_into_epoch,
                    "totals": mid_epoch["totals"].to(self.device, torch.float64).reshape(3),
                    "generator": mid_epoch["generator"],
                    "psa_generator": mid_epoch["psa_generator"],
                    "lr": float(mid_epoch["lr"]),
                }
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
            raise CheckpointError(f"checkpoint does not match this configuration: {exc}") from None
        self.epoch, self.step = checkpoint.epoch, checkpoint.step
        self._resumed = True

    def _train_epoch(self) -> Dict[str, Any]:
        config = self.config
        self.criterion.set_epoch(self.epoch)  # switches PSL (and the PSA noise) on at psl_start
        # Fresh per-(epoch, rank) streams: a resumed run draws exactly the same numbers.
        generator = torch.Generator(device=self.device).manual_seed(_seed_for(config.seed, 30 + self.rank, self.epoch))
        psa = self.criterion.psa
        psa.generator = torch.Generator(device=self.device).manual_seed(
            _seed_for(config.seed, 40 + self.rank, self.epoch)
        )
        self.model.train()
        self.target.train()
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        lr, start, done = 0.0, 0, 0
        mid_epoch, self._mid_epoch = self._mid_epoch, None
        if mid_epoch is not None:  # resumed from a checkpoint written between two steps of this epoch
            generator.set_state(mid_epoch["generator"])
            psa.generator.set_state(mid_epoch["psa_generator"])
            totals += mid_epoch["totals"]
            lr, start, done = mid_epoch["lr"], mid_epoch["index"], mid_epoch["index"]
        self._in_steps = True
        self.progress.start_epoch(self.epoch, start)
        try:
            for index, batch in enumerate(self._epoch_indices(self.epoch)[start:], start):
                lr = self._step(index, batch, generator, totals)
                done = index + 1
                # The running loss is read back (a host sync) only when the bar refreshes.
                self.progress.step(functools.partial(_mean_loss, totals, done))
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
                    "psa_generator": psa.generator.get_state(),
                    "lr": lr,
                }
            )
            raise TrainingInterrupted(signum)
        return self._epoch_stats(totals, lr)

    def _step(self, index: int, batch: Tensor, generator: torch.Generator, totals: Tensor) -> float:
        """One M-step on ``batch`` (this rank's indices); adds the loss terms to ``totals``; returns the lr."""
        # Value checks (host syncs) on the first step of every epoch, the sync-free fast path after.
        checked = index == 0
        self.criterion.validate_args = checked
        factor = learning_rate_factor(self.step, self.total_steps, self.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * group["lr_scale"] * factor
        with torch.no_grad():
            images = self.images.index_select(0, batch).float() / 255.0
            view1 = normalize(self.augment(images, generator=generator), self.mean, self.std)
            view2 = normalize(self.augment(images, generator=generator), self.mean, self.std)
            _, target_both = self.target(torch.cat((view1, view2)))
            target1, target2 = target_both.chunk(2)
        loss = (self.checked_model if checked else self.model)(view1, view2, target1, target2, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.momentum.update(self.online, self.target)
        terms = self.criterion.last_terms  # detached, on the device: no host sync
        totals += torch.stack((loss.detach(), terms["psa"], terms["psl"])).double()
        self.step += 1
        return self.config.lr * factor

    def _epoch_stats(self, totals: Tensor, lr: float) -> Dict[str, Any]:
        all_reduce_sum_(totals)
        totals /= max(self.steps_per_epoch, 1) * self.world_size
        if not bool(torch.isfinite(totals).all()):
            raise FloatingPointError(f"non-finite loss in epoch {self.epoch + 1}: {totals.tolist()}")
        return {
            "loss": float(totals[0]),
            "psa": float(totals[1]),
            "psl": float(totals[2]),
            "lambda_psl": self.criterion.lambda_psl if self.criterion.psl_active else 0.0,
            "sigma": self.criterion.psa.sigma,
            "psl_active": self.criterion.psl_active,
            "lr": lr,
            "momentum": self.momentum.momentum,
        }

    def fit(self, stop_after: Optional[int] = None) -> Dict[str, Any]:
        """Train until ``config.epochs`` (or until epoch ``stop_after``), then evaluate.

        Args:
            stop_after: stop after this many epochs in total, leaving a checkpoint to resume from (no final evaluation).

        Returns:
            ``{"epoch": int, "final": metrics dict or None, "output_dir": str}``.
        """
        config = self.config
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.output_dir)
            if self._resumed:  # drop log bytes written after the checkpoint (an interrupted epoch, a torn line)
                self.metrics_log.truncate()
        last = config.epochs if stop_after is None else min(stop_after, config.epochs)
        start_time = time.perf_counter()
        while self.epoch < last:
            if self._mid_epoch is None:  # an epoch resumed mid-way had its E-step and evaluation before
                estep_due = self.epoch % config.estep_every == 0
                if estep_due or (config.eval_every > 0 and self.epoch % config.eval_every == 0):
                    self._evaluate("estep" if estep_due else "eval")
            begin = time.perf_counter()
            stats = self._train_epoch()
            self.epoch += 1
            seconds = time.perf_counter() - begin
            self.metrics_log.append(
                {"event": "epoch", "epoch": self.epoch, "step": self.step, **stats, "time_s": seconds}
            )
            self.info(
                f"epoch {self.epoch}/{config.epochs}  loss {stats['loss']:.4f}  psa {stats['psa']:.4f}  "
                f"psl {stats['psl']:.4f}  lr {stats['lr']:.4g}  m {stats['momentum']:.5f}  ({seconds:.1f}s)"
            )
            self.save_checkpoint()
        if self.epoch < config.epochs:
            self.info(f"stopped after epoch {self.epoch}; resume with --resume {self.output_dir}")
            return {"epoch": self.epoch, "final": None, "output_dir": str(self.output_dir)}
        record = self._evaluate("final", start_time=start_time)
        return {"epoch": self.epoch, "final": record, "output_dir": str(self.output_dir)}

    def _evaluate(self, event: str, start_time: Optional[float] = None) -> Dict[str, Any]:
        """An ``"estep"``, ``"eval"`` or ``"final"`` pass: logged, and the final one's assignments written."""
        for buffer in self.target.buffers():  # each rank's target BN statistics come from its own batches: use rank 0's
            broadcast_(buffer)
        final = event == "final"
        name = {"estep": "E-step", "eval": "eval", "final": "final evaluation"}[event]
        if len(self.dataset) >= ANNOUNCE_FROM:
            self.info(
                f"{name} before epoch {self.epoch + 1}: features and k-means on {len(self.dataset):,} samples ..."
            )
        begin = time.perf_counter()
        record, backbone_labels, projector_labels = self._estep_and_evaluate(
            update_labels=event == "estep", final=final
        )
        seconds = time.perf_counter() - begin
        if not final:
            self.metrics_log.append({"event": event, "epoch": self.epoch, **record, "time_s": seconds})
            self.info(f"{format_record(name, self.epoch, record)}  ({seconds:.1f}s)")
            return record
        record.update(cluster_stats("projector", projector_labels, self.eval_clusters))
        record["psl_active"] = self.criterion.psl_active
        if self.config.method == "propos" and not self.criterion.psl_active:
            # A run too short for the pseudo-labels to settle (psl_start="auto") trained plain BYOL.
            self.info(
                "warning: PSL never switched on, so this run trained BYOL only (psl_start "
                f"{self.criterion.psl_start!r}, last pseudo-label agreement {self.criterion.agreement}); "
                "train longer, or start PSL at a fixed epoch (--psl-start warmup --psl-warmup-epochs N)"
            )
        elapsed = time.perf_counter() - cast(float, start_time)
        self.metrics_log.append(
            {"event": "final", "epoch": self.epoch, **record, "time_s": seconds, "elapsed_s": elapsed}
        )
        if self.is_main:
            write_assignments(
                self.output_dir / ASSIGNMENTS_NAME,
                self.dataset.labels,
                backbone=backbone_labels,
                projector=projector_labels,
                pseudo=cast(Tensor, self.criterion.pseudo_labels),
            )
        return record
