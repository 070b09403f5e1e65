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

from typing import Any, Dict, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from propos_losses import defaults
from propos_losses._validation import (
    check_float,
    check_int,
    check_integer_dtype,
    check_labels,
    check_tensor,
    numpy_labels_as_tensor,
)
from propos_losses.metrics import nmi
from propos_losses.psa import PositiveSamplingAlignment
from propos_losses.psl import PrototypeScatteringLoss

__all__ = ["ProPosLoss"]


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
        lambda_psl: weight ``lambda_psl >= 0`` of PSL (Eq. 12).
        psl_start: epoch from which PSL is on (``int >= 0``), or ``"auto"``.
        agreement_threshold: NMI in ``(0, 1]`` between successive
            pseudo-labelings that switches PSL on under ``"auto"``.
        psl_pairing: ``"same"`` (default): online and target prototypes of
            the same view, ``L_psl(q1, z'1)`` and ``L_psl(q2, z'2)``;
            ``"cross"``: of the two views, ``L_psl(q1, z'2)`` and
            ``L_psl(q2, z'1)``, as in the authors' code and the reference
            trainer. The drop-in measurements used ``"same"``.

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
        psl_start: Union[int, str] = "auto",
        agreement_threshold: float = defaults.PSL_AUTO_AGREEMENT,
        psl_pairing: str = "same",
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
            self.psl.relabel_queue(labels.to(self.psl.queue.labels.device))
        self.pseudo_labels = labels
        self._apply_switch()

    def forward(
        self,
        online_1: Tensor,
        online_2: Tensor,
        target_1: Tensor,
        target_2: Tensor,
        indices: Optional[Tensor] = None,
    ) -> Tensor:
        """Eq. 12 for one batch of two views.

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
        """
        forward_order: Tensor = self.psa(online_1, target_2)
        backward_order: Tensor = self.psa(online_2, target_1)
        alignment = 0.5 * (forward_order + backward_order)
        if not self.psl_active or self.lambda_psl == 0.0:
            self.last_terms = {"psa": alignment.detach(), "psl": torch.zeros_like(alignment.detach())}
            return alignment
        if self.pseudo_labels is None:
            raise ValueError("PSL is on but no pseudo-labels were set: call set_pseudo_labels(labels) after the E-step")
        if indices is None:
            raise ValueError("PSL is on: pass the batch's sample indices (e.g. from WithIndex) as indices")
        check_tensor("indices", indices, ndim=1)
        check_integer_dtype("indices", indices)
        if indices.shape[0] != online_1.shape[0]:
            raise ValueError(f"indices must have shape ({online_1.shape[0]},), got {tuple(indices.shape)}")
        n = self.pseudo_labels.shape[0]
        # A value check (host sync): only when PSL validates its values too (validate_args).
        if self.psl.validate_args and indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n):
            raise ValueError(
                f"indices must be in [0, {n}) (the number of pseudo-labels), "
                f"got {indices.min().item()}..{indices.max().item()}"
            )
        if self.pseudo_labels.device != online_1.device:
            self.pseudo_labels = self.pseudo_labels.to(online_1.device)  # once, not every step
        labels = self.pseudo_labels.index_select(0, indices.to(online_1.device).long())
        first, second = (target_1, target_2) if self.psl_pairing == "same" else (target_2, target_1)
        # Both calls see the same samples: only the second may enqueue them (once per step).
        first_term: Tensor = self.psl(online_1, first, labels, indices, enqueue=False)
        second_term: Tensor = self.psl(online_2, second, labels, indices)
        scattering = 0.5 * (first_term + second_term)
        self.last_terms = {"psa": alignment.detach(), "psl": scattering.detach()}
        return alignment + self.lambda_psl * scattering

    def get_extra_state(self) -> Dict[str, Any]:
        return {
            "pseudo_labels": self.pseudo_labels,
            "agreement": self.agreement,
            "epoch": self.epoch,
            "psl_active": self.psl_active,
            "sigma": self.sigma,
        }

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        if not isinstance(state, dict) or not {"pseudo_labels", "agreement", "epoch", "psl_active", "sigma"} <= set(
            state
        ):
            raise ValueError("ProPosLoss state must come from ProPosLoss.state_dict()")
        self.pseudo_labels = state["pseudo_labels"]
        self.agreement = state["agreement"]
        self.epoch = state["epoch"]
        self.psl_active = bool(state["psl_active"])
        self.sigma = float(state["sigma"])
        self._apply_switch()
