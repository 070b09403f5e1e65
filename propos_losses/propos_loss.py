"""The whole ProPos objective (Eq. 12) as one criterion for an existing BYOL loop.

``L = 1/2 [L_psa(q1, z'2) + L_psa(q2, z'1)] + lambda_psl * 1/2 [L_psl(q1, z'1) + L_psl(q2, z'2)]``

averaged over the two view orders as the ProPos authors do (``0.5 * (...)``
in their ``byol_wrapper.py``), with PSL and the PSA noise off until PSL is
switched on (the paper's warm-up). The pseudo-labels of the data set live in
the criterion and are looked up with each batch's sample indices.

Loss scale: one view order of Eq. 10 is ``2 - 2 cos(p, z)``, which is
``2 + 2 * NegativeCosineSimilarity`` of lightly (``-cos``): the same minimiser
with twice the gradient. Averaged over the view orders, the alignment part has
twice the gradient of lightly's ``0.5 * (criterion(p0, z1) + criterion(p1, z0))``;
to keep a learning rate tuned for lightly, multiply this loss by ``0.5``.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict, Mapping, Optional, Tuple, Union, cast

import numpy as np
import torch
from torch import Tensor, nn

from propos_losses import defaults
from propos_losses._psl_checks import agreement
from propos_losses._validation import (
    check_bool,
    check_finite,
    check_float,
    check_indices,
    check_int,
    check_integer_dtype,
    check_labels,
    check_tensor,
    numpy_labels_as_tensor,
)
from propos_losses.distributed import check_on_every_rank, is_distributed
from propos_losses.metrics import nmi
from propos_losses.psa import PositiveSamplingAlignment
from propos_losses.psl import PrototypeScatteringLoss

__all__ = ["ProPosLoss", "ProPosStep"]


def _as_label_tensor(labels: object) -> Tensor:
    if isinstance(labels, np.ndarray):
        labels = numpy_labels_as_tensor("labels", labels)
    check_tensor("labels", labels, ndim=1)
    check_integer_dtype("labels", labels)  # type: ignore[arg-type]
    return labels  # type: ignore[return-value]


class ProPosLoss(nn.Module):
    """ProPos's criterion (Eq. 12) for an existing BYOL loop: PSA for both view orders plus PSL on pseudo-labels.

    Holds the data set's pseudo-labels (:meth:`set_pseudo_labels`, after each
    E-step) and decides when PSL is on: from epoch ``psl_start`` on
    (:meth:`set_epoch`), or with ``psl_start="auto"`` once two successive
    pseudo-labelings agree with an NMI of at least ``agreement_threshold``
    (the features have settled; a label-free signal, measured in the drop-in
    guide). While PSL is off the PSA noise is off too (``sigma = 0``: plain
    BYOL), as in the paper's warm-up. Once on, PSL stays on.

    Args:
        psa: the :class:`~propos_losses.PSA` module (its ``sigma`` is the
            value used once PSL is on).
        psl: the :class:`~propos_losses.PSL` module.
        lambda_psl: weight ``lambda_psl >= 0`` of PSL (Eq. 12). Default 3.0,
            measured in a lightly-style loop (docs/dropin.rst); the paper's
            CIFAR value is 0.1 over 1,000 epochs.
        psl_start: epoch from which PSL is on (``int >= 0``, default 5), or ``"auto"``.
        agreement_threshold: NMI in ``(0, 1]`` between successive
            pseudo-labelings that switches PSL on under ``"auto"``.
        psl_pairing: ``"cross"`` (default): online and target prototypes of
            the two views, ``L_psl(q1, z'2)`` and ``L_psl(q2, z'1)``, as in
            the authors' code and the reference trainer; ``"same"``: of the
            same view, ``L_psl(q1, z'1)`` and ``L_psl(q2, z'2)``.

    Attributes:
        pseudo_labels: ``(N,)`` int64 labels of the data set, or ``None``.
        agreement: NMI between the last two pseudo-labelings, or ``None``.
        psl_active: whether PSL (and the PSA noise) is on.
        last_terms: after each forward, detached ``{"psa", "psl"}`` (``psl``
            is 0 while PSL is off), for logging.

    Fast path: the value checks follow ``psl.validate_args`` and
    ``psa.validate_args`` (set both to ``False`` for a step without host syncs).

    Raises:
        TypeError: ``psa``/``psl`` of the wrong type, a non-numeric weight.
        ValueError: a negative weight, a bad ``psl_start`` or threshold.

    Example:
        >>> import torch
        >>> from propos_losses import PSA, PSL
        >>> criterion = ProPosLoss(PSA(torch.nn.Linear(8, 8)), PSL(num_clusters=3), lambda_psl=0.1, psl_start=0)
        >>> criterion.set_pseudo_labels(torch.randint(0, 3, (100,)))  # after the E-step
        >>> criterion.set_epoch(0)
        >>> q1, q2 = torch.randn(2, 16, 8, requires_grad=True).unbind(0)  # online projections of 16 samples
        >>> z1, z2 = torch.randn(2, 16, 8).unbind(0)  # target projections
        >>> loss = criterion(q1, q2, z1, z2, torch.arange(16))  # sample indices of the batch
        >>> loss.backward()
        >>> criterion.psl_active, sorted(criterion.last_terms)
        (True, ['psa', 'psl'])
    """

    pseudo_labels: Optional[Tensor]

    def __init__(
        self,
        psa: PositiveSamplingAlignment,
        psl: PrototypeScatteringLoss,
        lambda_psl: float = defaults.LAMBDA_PSL,
        *,
        psl_start: Union[int, str] = defaults.PSL_START,
        agreement_threshold: float = defaults.PSL_AUTO_AGREEMENT,
        psl_pairing: str = defaults.PSL_PAIRING,
    ) -> None:
        super().__init__()
        if not isinstance(psa, PositiveSamplingAlignment):
            raise TypeError(f"psa must be a PositiveSamplingAlignment (PSA), got {type(psa).__name__}")
        if not isinstance(psl, PrototypeScatteringLoss):
            raise TypeError(f"psl must be a PrototypeScatteringLoss (PSL), got {type(psl).__name__}")
        self.lambda_psl = check_float("lambda_psl", lambda_psl, minimum=0.0)
        if isinstance(psl_start, str):
            if psl_start != "auto":
                raise ValueError(f"psl_start must be an epoch (int >= 0) or 'auto', got {psl_start!r}")
        else:
            psl_start = check_int("psl_start", psl_start, minimum=0)
        self.psl_start: Union[int, str] = psl_start
        self.agreement_threshold = check_float("agreement_threshold", agreement_threshold, minimum=0.0, maximum=1.0)
        if self.agreement_threshold == 0.0:
            raise ValueError("agreement_threshold must be > 0, got 0.0 (use psl_start=0 to start PSL at once)")
        if psl_pairing not in ("same", "cross"):
            raise ValueError(f"psl_pairing must be 'same' or 'cross', got {psl_pairing!r}")
        self.psl_pairing = psl_pairing
        self.psa = psa
        self.psl = psl
        self.sigma = psa.sigma
        self.pseudo_labels = None
        self.agreement: Optional[float] = None
        self.epoch = 0
        self.psl_active = False
        self.last_terms: Dict[str, Tensor] = {}
        self._apply_switch()

    def extra_repr(self) -> str:
        return (
            f"lambda_psl={self.lambda_psl}, psl_start={self.psl_start!r}, psl_pairing={self.psl_pairing!r}, "
            f"agreement_threshold={self.agreement_threshold}, agreement={self.agreement}, psl_active={self.psl_active}"
        )

    def _apply_switch(self) -> None:
        if not self.psl_active:
            if self.psl_start == "auto":
                self.psl_active = self.agreement is not None and self.agreement >= self.agreement_threshold
            else:
                self.psl_active = self.epoch >= self.psl_start  # type: ignore[operator]
        self.psa.sigma = self.sigma if self.psl_active else 0.0

    def set_epoch(self, epoch: int) -> None:
        """The current epoch (``>= 0``); switches PSL on at ``psl_start``. Call it at the start of every epoch."""
        self.epoch = check_int("epoch", epoch, minimum=0)
        self._apply_switch()

    def set_pseudo_labels(self, labels: Union[Tensor, np.ndarray]) -> None:
        """Take the E-step's labels ``(N,)`` of the whole data set (integer, ``[0, K)``; tensor or NumPy).

        ``N`` must stay the same from one call to the next (checked before anything changes).

        Also measures their agreement (NMI) with the previous labels, which
        switches PSL on under ``psl_start="auto"``. Under a PSL queue the queue
        is relabelled from these labels.
        """
        labels = _as_label_tensor(labels)
        if labels.numel() < 1:
            raise ValueError("labels must hold one label per sample of the data set, got an empty tensor")
        check_labels("labels", labels, self.psl.num_clusters, bound="num_clusters=")
        if self.pseudo_labels is not None and self.pseudo_labels.shape != labels.shape:
            raise ValueError(
                f"labels must have one label per sample of the data set ({self.pseudo_labels.shape[0]}, as the "
                f"previous pseudo-labels), got shape {tuple(labels.shape)}; use a new ProPosLoss for another data set"
            )
        labels = labels.to(torch.int64)
        if self.pseudo_labels is not None:
            self.agreement = float(nmi(self.pseudo_labels.cpu().numpy(), labels.cpu().numpy()))
        if self.psl.queue is not None and len(self.psl.queue):
            self.psl.unchecked_relabel_queue(labels.to(self.psl.queue.labels.device))  # checked above
        self.pseudo_labels = labels
        self._apply_switch()

    @property
    def validate_args(self) -> bool:
        """Whether the value checks run (host syncs); setting it sets ``psa.validate_args`` and ``psl.validate_args``.

        Structural checks (shapes, dtypes) always run. With ``False`` a step
        makes no host sync (the fast path of a training loop).
        """
        return bool(self.psl.validate_args and self.psa.validate_args)

    @validate_args.setter
    def validate_args(self, value: bool) -> None:
        check_bool("validate_args", value)
        self.psa.validate_args = value
        self.psl.validate_args = value

    def _check_call(
        self, views: Dict[str, Tensor], indices: Optional[Tensor], scatter: bool, finite: bool
    ) -> Optional[Tensor]:
        """The spec of :meth:`forward`, PSA's and PSL's included, before any module runs; the batch's labels.

        Each check runs once: the views' finiteness here (for PSA and PSL
        both), then PSA's and PSL's structural checks, whose unchecked cores
        :meth:`forward` calls.
        """
        for name, value in views.items():
            check_tensor(name, value, ndim=2, floating=True)
        online_1, online_2, target_1, target_2 = views.values()
        if online_2.shape != online_1.shape:
            raise ValueError(
                f"online_2 must have the shape of online_1 {tuple(online_1.shape)}, got {tuple(online_2.shape)}"
            )
        if target_1.shape[0] != online_1.shape[0] or target_2.shape != target_1.shape:
            raise ValueError(
                f"target_1 and target_2 must both have {online_1.shape[0]} rows (the batch of online_1) and one "
                f"shape, got {tuple(target_1.shape)} and {tuple(target_2.shape)}"
            )
        for name, value in views.items():
            if value.device != online_1.device:
                raise ValueError(f"{name} is on {value.device} but online_1 is on {online_1.device}")
        if finite:
            for name, value in views.items():
                check_finite(name, value)
        self.psa.check_forward(online_1, target_2, finite=False)
        self.psa.check_forward(online_2, target_1, finite=False)
        if not scatter:
            return None
        if self.pseudo_labels is None:
            raise ValueError("PSL is on but no pseudo-labels were set: call set_pseudo_labels(labels) after the E-step")
        if indices is None:
            raise ValueError("PSL is on: pass the batch's sample indices (e.g. from WithIndex) as indices")
        n = self.pseudo_labels.shape[0]
        # A value check (host sync): only when PSL validates its values too (validate_args).
        check_indices(
            "indices",
            indices,
            online_1.shape[0],
            values=self.psl.validate_args,
            upper=n,
            upper_name=" (the number of pseudo-labels)",
        )
        labels = self._psl_labels(online_1, indices)
        # Labels in [0, K) (set_pseudo_labels), indices and finite views checked above; the second
        # pairing has the shapes and device of the first.
        first = target_1 if self.psl_pairing == "same" else target_2
        self.psl.check_forward(online_1, first, labels, indices, values=self.psl.validate_args, inputs_checked=True)
        return labels

    def _psl_labels(self, online_1: Tensor, indices: Tensor) -> Tensor:
        """The batch's pseudo-labels ``(B,)`` (indices checked by :meth:`_check_call`)."""
        assert self.pseudo_labels is not None
        if self.pseudo_labels.device != online_1.device:
            self.pseudo_labels = self.pseudo_labels.to(online_1.device)  # once, not every step
        return self.pseudo_labels.index_select(0, indices.to(online_1.device).long())

    def forward(
        self,
        online_1: Tensor,
        online_2: Tensor,
        target_1: Tensor,
        target_2: Tensor,
        indices: Optional[Tensor] = None,
    ) -> Tensor:
        """Eq. 12 for one batch of two views.

        Every argument is checked before the predictor runs, so a call that
        raises leaves the predictor's BatchNorm statistics, the PSA noise
        stream and the queue as they were.

        Args:
            online_1: ``(B, d)`` online projections ``q`` of view 1 (PSA applies the predictor).
            online_2: ``(B, d)`` online projections of view 2.
            target_1: ``(B, d)`` target projections ``z'`` of view 1 (detached here).
            target_2: ``(B, d)`` target projections of view 2.
            indices: ``(B,)`` integer sample indices of the batch into the
                pseudo-labels; needed once PSL is on.

        Returns:
            The 0-d loss (float32; float64 for float64 input).

        Raises:
            ValueError: PSL is on but no pseudo-labels were set or no indices
                given, indices out of range, besides the errors of PSA and PSL.
                Under ``torch.distributed`` with ``validate_args`` these checks
                run on every rank together (one small all-reduce), so all ranks
                raise the same error; the fast path checks only locally.
        """
        views = {"online_1": online_1, "online_2": online_2, "target_1": target_1, "target_2": target_2}
        scatter = self.psl_active and self.lambda_psl != 0.0
        psl_values = scatter and self.psl.validate_args
        finite = self.psa.validate_args or psl_values
        if self.validate_args or psl_values:
            # Every rank raises the same error (bad indices on one rank would leave the others in PSL's
            # all-reduce), and the inputs of PSL's all-reduces agree between ranks.
            agree = agreement(online_1, indices, self.psl.queue) if scatter else None
            labels = check_on_every_rank(
                lambda: self._check_call(views, indices, scatter, finite),
                what="ProPosLoss",
                device=getattr(online_1, "device", None),
                agree=agree,
            )
        else:
            labels = self._check_call(views, indices, scatter, finite)
        forward_order: Tensor = self.psa.unchecked_forward(online_1, target_2)
        backward_order: Tensor = self.psa.unchecked_forward(online_2, target_1)
        alignment = 0.5 * (forward_order + backward_order)
        if labels is None:
            self.last_terms = {"psa": alignment.detach(), "psl": torch.zeros_like(alignment.detach())}
            return alignment
        first, second = (target_1, target_2) if self.psl_pairing == "same" else (target_2, target_1)
        # Both calls see the same samples: only the second may enqueue them (once per step).
        first_term = self.psl.unchecked_forward(online_1, first, labels, indices, enqueue=False)
        second_term = self.psl.unchecked_forward(online_2, second, labels, indices)
        scattering = 0.5 * (first_term + second_term)
        self.last_terms = {"psa": alignment.detach(), "psl": scattering.detach()}
        return alignment + self.lambda_psl * scattering

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """:meth:`torch.nn.Module.load_state_dict`, all or nothing.

        The predictor, the PSL queue and the criterion's own state (pseudo-labels,
        epoch, PSL switch) are checked as a whole; when anything is wrong (a
        missing or unexpected key, a shape, a value) the error is raised and the
        criterion is left exactly as it was. Loaded tensors are copies.
        """
        backup = copy.deepcopy(self.state_dict())
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except BaseException:
            super().load_state_dict(backup, strict=True)
            raise

    def get_extra_state(self) -> Dict[str, Any]:
        return {
            "pseudo_labels": self.pseudo_labels,
            "agreement": self.agreement,
            "epoch": self.epoch,
            "psl_active": self.psl_active,
            "sigma": self.sigma,
        }

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        keys = {"pseudo_labels", "agreement", "epoch", "psl_active", "sigma"}
        if not isinstance(state, dict) or set(state) != keys:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"ProPosLoss state must come from ProPosLoss.state_dict() (keys {sorted(keys)}), got {got}"
            )
        labels, agreement, epoch = state["pseudo_labels"], state["agreement"], state["epoch"]
        active, sigma = state["psl_active"], state["sigma"]
        if labels is not None:
            if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.dtype != torch.int64 or not labels.numel():
                raise ValueError(
                    f"ProPosLoss state's pseudo_labels must be a non-empty (N,) int64 tensor or None, got "
                    f"{getattr(labels, 'dtype', type(labels).__name__)} of shape {tuple(getattr(labels, 'shape', ()))}"
                )
            check_labels("ProPosLoss state's pseudo_labels", labels, self.psl.num_clusters, bound="num_clusters=")
        if agreement is not None and (
            isinstance(agreement, bool) or not isinstance(agreement, (int, float)) or not 0.0 <= agreement <= 1.0
        ):
            raise ValueError(f"ProPosLoss state's agreement must be an NMI in [0, 1] or None, got {agreement!r}")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"ProPosLoss state's epoch must be an int >= 0, got {epoch!r}")
        if not isinstance(active, bool):
            raise ValueError(f"ProPosLoss state's psl_active must be a bool, got {active!r}")
        if (
            isinstance(sigma, bool)
            or not isinstance(sigma, (int, float))
            or not math.isfinite(sigma)
            or not 0.0 <= sigma <= defaults.SIGMA_MAX
        ):
            raise ValueError(f"ProPosLoss state's sigma must be a number in [0, {defaults.SIGMA_MAX}], got {sigma!r}")
        self.pseudo_labels = None if labels is None else labels.clone()
        self.agreement = None if agreement is None else float(agreement)
        self.epoch = epoch
        self.psl_active = active
        self.sigma = float(sigma)
        self._apply_switch()


class ProPosStep(nn.Module):
    """The differentiable part of a ProPos M-step as one module: the module to wrap in DDP or compile.

    ``forward`` runs the online network once on both views concatenated
    (BatchNorm statistics over the ``2B`` images, as BYOL does), splits the
    projections and returns ``criterion(q1, q2, z'1, z'2, indices)``. The
    target projections come from the momentum network, computed by the caller
    under ``no_grad``. The per-term values for logging are
    ``criterion.last_terms`` (detached, on the device: no host sync).

    Under ``torch.distributed``, wrap this module (not the online network) in
    :class:`~torch.nn.parallel.DistributedDataParallel`: the predictor (inside
    PSA) and the online network then have their gradients averaged together.

    Args:
        online: maps images ``(2B, ...)`` to projections ``(2B, d)``; a tuple
            output (e.g. ``(features, projections)``) uses its last element.
        criterion: the :class:`ProPosLoss` (it owns the predictor).

    Example:
        >>> import torch
        >>> from propos_losses import PSA, PSL
        >>> online = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8))
        >>> criterion = ProPosLoss(PSA(torch.nn.Linear(8, 8)), PSL(num_clusters=3), psl_start=0)
        >>> criterion.set_pseudo_labels(torch.randint(0, 3, (100,)))
        >>> step = ProPosStep(online, criterion)
        >>> x1, x2 = torch.randn(2, 16, 3, 4).unbind(0)  # two views of 16 images
        >>> z1, z2 = torch.randn(2, 16, 8).unbind(0)  # the target network's projections
        >>> loss = step(x1, x2, z1, z2, torch.arange(16))
        >>> loss.backward()
        >>> sorted(criterion.last_terms)
        ['psa', 'psl']
    """

    def __init__(self, online: nn.Module, criterion: ProPosLoss) -> None:
        super().__init__()
        if not isinstance(online, nn.Module):
            raise TypeError(f"online must be an nn.Module, got {type(online).__name__}")
        if not isinstance(criterion, ProPosLoss):
            raise TypeError(f"criterion must be a ProPosLoss, got {type(criterion).__name__}")
        self.online = online
        self.criterion = criterion

    def forward(
        self, view_1: Tensor, view_2: Tensor, target_1: Tensor, target_2: Tensor, indices: Optional[Tensor] = None
    ) -> Tensor:
        """The loss of one batch: ``view_1``, ``view_2`` ``(B, ...)``, targets ``(B, d)``, ``indices`` ``(B,)``."""
        check_tensor("view_1", view_1)
        check_tensor("view_2", view_2)
        if view_1.shape != view_2.shape:
            raise ValueError(f"view_2 must have the shape of view_1 {tuple(view_1.shape)}, got {tuple(view_2.shape)}")
        output: Union[Tensor, Tuple[Tensor, ...]] = self.online(torch.cat((view_1, view_2)))
        projections = output[-1] if isinstance(output, (tuple, list)) else output
        online_1, online_2 = projections.chunk(2)
        loss: Tensor = self.criterion(online_1, online_2, target_1, target_2, indices)
        return loss

    def for_training(
        self,
        *,
        device: Optional[Union[str, torch.device]] = None,
        compile_backend: Optional[str] = None,
        ddp: Optional[nn.Module] = None,
    ) -> nn.Module:
        """This step ready to train: in DistributedDataParallel under ``torch.distributed``, compiled when asked.

        Args:
            device: the step's device (a CUDA device gives DDP its ``device_ids``).
            compile_backend: ``torch.compile`` backend (``"inductor"``, ``"aot_eager"``, ...);
                ``None``: eager.
            ddp: an existing DDP wrapper of this step to compile instead of wrapping again
                (e.g. an eager one for checked steps and a compiled one for the fast path).

        Returns:
            The module to call like the step. Under ``torch.distributed`` before
            torch 2.13, compiling turns off dynamo's DDP graph splitting, which
            rejects PSL's differentiable all-reduce ("Found a higher order op");
            the compiled graph is then one DDP bucket.

        Example:
            >>> import torch
            >>> from propos_losses import PSA, PSL
            >>> step = ProPosStep(torch.nn.Linear(4, 8), ProPosLoss(PSA(torch.nn.Linear(8, 8)), PSL(num_clusters=2)))
            >>> step.for_training() is step  # a single process, eager
            True
        """
        model: nn.Module = ddp if ddp is not None else self
        if ddp is None and is_distributed():
            from torch.nn.parallel import DistributedDataParallel

            where = torch.device(device) if device is not None else None
            model = DistributedDataParallel(
                self, device_ids=[where.index] if where is not None and where.type == "cuda" else None
            )
        if compile_backend is None:
            return model
        release = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
        if is_distributed() and release < (2, 13):
            torch._dynamo.config.optimize_ddp = False
        return cast(nn.Module, torch.compile(model, backend=compile_backend))
