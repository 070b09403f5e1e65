"""Prototype scattering loss (ProPos Eq. 4, 5), module and functional twin.

Over the set ``A`` of non-empty clusters, with online prototypes ``mu_k`` and
target prototypes ``mu'_k`` (Eq. 6, 7, see :mod:`propos_losses.prototypes`)::

    L_psl = 1/|A| sum_{k in A} -log( exp(mu_k.mu'_k / tau) /
            ( exp(mu_k.mu'_k / tau) + sum_{j in A, j != k} exp(mu_k.mu_j / tau) ) )

Eq. 5 splits it into ``alignment = mean_{k in A} -mu_k.mu'_k / tau`` and
``uniformity = mean_{k in A} log sum_{j in A, j != k} exp(mu_k.mu_j / tau)``.
Convention: ``uniformity = 0`` when ``|A| < 2`` (a lone non-empty cluster has
no negatives, nothing to repel; the log of the empty sum would be ``-inf``), so
no term is ever Inf or NaN for valid input and its gradient is then zero.

Numerics: empty clusters are removed exactly, with static shapes: all ``K``
clusters are computed and the empty ones *masked* (their logits are ``-inf``
inside a log-sum-exp whose positive column is always finite, their rows get
zero weight, ``|A|`` stays a tensor), so with ``validate_args=False`` the loss
needs no host sync and no data-dependent shape (``torch.compile(fullgraph=True)``
works). With ``validate_args=True`` (the default), which reads values back
anyway, only the non-empty clusters are kept first: ``|A| x |A|`` instead of
``K x K`` similarities, much less work on a CPU when ``K`` is far larger than
the batch. The fast path keeps ``B`` slots instead of ``K`` in that case
(hard labels, no queue, one process; a sort of the labels, static shapes), so
it does ``B x B`` work. The values agree to rounding; the
loss is computed in float32
(float64 inputs stay float64) with autocast disabled, zero feature vectors give
zero (never NaN), and the target side and the assignments are detached.
Features are normalised exactly (:func:`~propos_losses.prototypes.normalize_features`),
so the loss is invariant to scaling any row of ``online`` or ``target``; soft
weights are divided by their largest value before the cast to the compute
dtype, so their scale does not matter either (``1e-50`` float64 weights do not
underflow in float32, ``3e38`` float32 weights do not overflow the sums).

Distributed (``torch.distributed`` initialised, see
:mod:`propos_losses.distributed`): the per-cluster online sums go through the
differentiable :func:`~propos_losses.distributed.all_reduce_sum`, the target
sums and the counts through the gradient-free
:func:`~propos_losses.distributed.all_reduce_sum_`; the empty-cluster mask
comes from the global counts, so every rank computes the same loss, and with
DDP gradient averaging the gradients equal the single-process gradients on the
concatenated global batch. The memory queue is identical on every rank, so its
sums are added *after* the all-reduce. Validity is judged globally: a rank may
hold an empty batch (``B = 0``, e.g. an uneven last batch) or all-zero soft
weights; every rank raises the same ``ValueError`` only when the *global*
batch has zero total weight. Soft weights are rescaled by their global maximum
(one extra gradient-free all-reduce), so every rank uses the same scale.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal, Mapping, Optional, Union

from torch import Tensor, nn

# typing_extensions' overload registers the overloads for get_overloads() on Python 3.10 as well.
from typing_extensions import deprecated, overload

from propos_losses import defaults
from propos_losses._psl_checks import (
    check_assignments_device,
    check_features,
    check_queue_arguments,
    check_temperature,
    validate_on_every_rank,
)
from propos_losses._psl_core import PSLTerms, Scores, buffer_queue_sums, psl_core, tensor_queue_sums
from propos_losses._validation import (
    check_bool,
    check_indices,
    check_int,
    check_labels,
    check_tensor,
    checked_state_dict,
)
from propos_losses.distributed import is_distributed
from propos_losses.prototypes import as_assignments, check_assignments
from propos_losses.queue import PrototypeQueue

__all__ = ["PSLTerms", "prototype_scattering_loss", "prototype_scattering_terms", "PrototypeScatteringLoss", "PSL"]


def prototype_scattering_terms(
    online: Tensor,
    target: Tensor,
    assignments: Tensor,
    num_clusters: int,
    *,
    temperature: float = defaults.TEMPERATURE,
    queue_features: Optional[Tensor] = None,
    queue_labels: Optional[Tensor] = None,
    validate_args: bool = True,
) -> PSLTerms:
    """Prototype scattering loss ``L_psl`` (Eq. 4) and its Eq. 5 terms, functional form.

    :func:`prototype_scattering_loss` returns the ``loss`` field alone.

    Args:
        online: ``(B, d)`` online projector outputs ``f(x)`` (normalised here),
            any floating dtype; the only input that receives gradient.
        target: ``(B, d)`` target projector outputs ``f'(x)``; detached.
        assignments: ``(B,)`` integer cluster labels in ``[0, K)``, or ``(B, K)``
            non-negative float weights ``p(k|x)`` (rows may be zero, not all;
            only their ratios matter); treated as constants (detached). A
            NumPy array is accepted as the equivalent tensor.
        num_clusters: ``K >= 2``.
        temperature: ``tau``, at least ``torch.finfo(torch.float32).tiny``.
        queue_features: optional ``(Q, d)`` features of a memory queue (target
            features, normalised here), added to both prototype sums without
            gradient, after the all-reduce: under ``torch.distributed`` they
            must be identical on every rank (as :class:`PrototypeQueue` keeps
            them). Give ``queue_labels`` with it.
        queue_labels: optional ``(Q,)`` integer labels in ``[0, K)`` of the queue.
        validate_args: ``True`` (default): also check values (finite
            features, labels in range, non-negative weights) and, under
            ``torch.distributed``, make every rank raise when one rank got bad
            input. ``False``: structural checks only (types, shapes, dtypes,
            devices), no host sync, ``torch.compile(fullgraph=True)``-able;
            invalid values then give an undefined result instead of an error.
            Under ``torch.distributed`` the fast path also skips the agreement
            all-reduce: a rank whose input fails a structural check raises
            alone (the others wait in the next collective until the process
            group's timeout), and inputs that disagree between ranks (feature
            size, dtype, hard labels vs soft weights) reach the all-reduce of
            the sums, which aborts the process under gloo and may hang under
            NCCL; a global batch without any weight is not reported either.
            ``validate_args`` must be the same on every rank.

    Returns:
        :class:`PSLTerms`: the 0-d loss (float32, float64 for float64 input),
        ``alignment`` and ``uniformity`` (attached to the graph) and ``num_active``.

    Raises:
        ValueError, TypeError: for bad shapes, dtypes or values (named in the message).

    Example:
        >>> import torch
        >>> online, target = torch.randn(8, 16), torch.randn(8, 16)
        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])
        >>> terms = prototype_scattering_terms(online, target, labels, 4)
        >>> int(terms.num_active), bool(torch.isfinite(terms.loss))
        (3, True)
    """
    return _functional_scores(
        online, target, assignments, num_clusters, temperature, queue_features, queue_labels, validate_args
    ).terms()


def _functional_scores(
    online: Tensor,
    target: Tensor,
    assignments: Tensor,
    num_clusters: int,
    temperature: float,
    queue_features: Optional[Tensor],
    queue_labels: Optional[Tensor],
    validate_args: bool,
) -> Scores:
    """The functional forms' one check (arguments as in :func:`prototype_scattering_terms`), then the core."""
    num_clusters = check_int("num_clusters", num_clusters, minimum=2)
    temperature = check_temperature(temperature)
    check_bool("validate_args", validate_args)
    if isinstance(online, Tensor):
        assignments = as_assignments(assignments, online.device)  # type: ignore[assignment]
    # Under torch.distributed a rank may hold no samples or all-zero weights: only the global total counts.
    distributed = is_distributed()

    def check() -> None:
        check_features(online, target, allow_empty=distributed, values=validate_args)
        check_assignments_device(assignments, online)
        check_assignments(assignments, online.shape[0], num_clusters, allow_all_zero=distributed, values=validate_args)
        check_queue_arguments(queue_features, queue_labels, online.shape[1], num_clusters, values=validate_args)

    validate_on_every_rank(check, online, assignments, collective=validate_args)
    queue_sums = None
    if queue_features is not None and queue_labels is not None:
        queue_sums = tensor_queue_sums(queue_features, queue_labels, num_clusters)
    scores, _ = psl_core(online, target, assignments, num_clusters, temperature, queue_sums, validate_args)
    return scores


_RETURN_TERMS_DEPRECATED = (
    "prototype_scattering_loss(..., return_terms=True) is deprecated and will be removed in 0.3; "
    "use prototype_scattering_terms(...), which returns the PSLTerms"
)


@overload
def prototype_scattering_loss(
    online: Tensor,
    target: Tensor,
    assignments: Tensor,
    num_clusters: int,
    *,
    temperature: float = ...,
    queue_features: Optional[Tensor] = ...,
    queue_labels: Optional[Tensor] = ...,
    return_terms: Literal[False] = ...,
    validate_args: bool = ...,
) -> Tensor: ...


@overload
# A literal message: type checkers read only literals (PEP 702).
@deprecated("return_terms=True is deprecated (removed in 0.3): use prototype_scattering_terms()")
def prototype_scattering_loss(
    online: Tensor,
    target: Tensor,
    assignments: Tensor,
    num_clusters: int,
    *,
    return_terms: Literal[True],
    temperature: float = ...,
    queue_features: Optional[Tensor] = ...,
    queue_labels: Optional[Tensor] = ...,
    validate_args: bool = ...,
) -> PSLTerms: ...


def prototype_scattering_loss(
    online: Tensor,
    target: Tensor,
    assignments: Tensor,
    num_clusters: int,
    *,
    return_terms: bool = False,
    temperature: float = defaults.TEMPERATURE,
    queue_features: Optional[Tensor] = None,
    queue_labels: Optional[Tensor] = None,
    validate_args: bool = True,
) -> Union[Tensor, PSLTerms]:
    """Prototype scattering loss ``L_psl`` (Eq. 4), functional form.

    Exactly ``prototype_scattering_terms(...).loss``: see
    :func:`prototype_scattering_terms` for the arguments, errors and the
    distributed contract.

    Args:
        online: ``(B, d)`` online projector outputs (receives the gradient).
        target: ``(B, d)`` target projector outputs (detached).
        assignments: ``(B,)`` labels in ``[0, K)`` or ``(B, K)`` non-negative weights.
        num_clusters: ``K >= 2``.
        temperature: ``tau``.
        queue_features: optional ``(Q, d)`` queue features.
        queue_labels: optional ``(Q,)`` queue labels.
        return_terms: deprecated (a :class:`FutureWarning`; removed in 0.3):
            use :func:`prototype_scattering_terms`, whose return type does not
            depend on an argument.
        validate_args: check values as well as structure (default ``True``).

    Returns:
        The 0-d loss (float32, float64 for float64 input); :class:`PSLTerms`
        with the deprecated ``return_terms=True``.

    Example:
        >>> import torch
        >>> online, target = torch.randn(8, 16), torch.randn(8, 16)
        >>> loss = prototype_scattering_loss(online, target, torch.tensor([0, 0, 1, 1, 2, 2, 2, 0]), 4)
        >>> loss.shape
        torch.Size([])
    """
    if check_bool("return_terms", return_terms):
        warnings.warn(_RETURN_TERMS_DEPRECATED, FutureWarning, stacklevel=2)
    scores = _functional_scores(
        online, target, assignments, num_clusters, temperature, queue_features, queue_labels, validate_args
    )
    return scores.terms() if return_terms else scores.loss


class PrototypeScatteringLoss(nn.Module):
    """Prototype scattering loss ``L_psl`` of ProPos (Eq. 4), with an optional memory queue.

    Args:
        num_clusters: ``K >= 2``, the number of k-means clusters.
        temperature: ``tau``, at least ``torch.finfo(torch.float32).tiny``
            (default :data:`propos_losses.defaults.TEMPERATURE`).
        queue_size: number of queue slots; ``0`` (default) disables the queue.
        feature_dim: ``d``; required when ``queue_size > 0`` (to allocate the
            queue), otherwise optional and, when given, checked against the input.
        validate_args: check values as well as structure (default ``True``);
            ``False`` is the fast path: no host sync per call, compiles with
            ``torch.compile(fullgraph=True)`` (see
            :func:`prototype_scattering_terms`). Also set on the queue. An
            attribute that may be changed at run time, e.g. ``True`` for the
            first step only, but always to the same value on every rank.

    What the fast path checks and skips. Always checked, on each rank alone
    and before anything changes: argument types, ranks and shapes
    (``online``/``target`` ``(B, d)`` alike, ``d`` equal to ``feature_dim``,
    assignments ``(B,)`` or ``(B, K)``, ``indices`` ``(B,)``), integer or
    floating dtypes, devices, soft weights with a queue. Skipped with
    ``validate_args=False``: finite features, labels in ``[0, K)``,
    non-negative and not all-zero weights, ``indices >= 0``, queue labels
    below ``K``; and, under ``torch.distributed``, the one small all-reduce
    that makes every rank raise together and checks that feature size,
    dtype, assignment kind and the queue's size and dtype agree between
    ranks (see ``validate_args`` of :func:`prototype_scattering_terms` for
    what a disagreement then does), and the exchange of row counts before
    the queue's gather (every rank must push the same ``B``).

    Queue (``queue_size > 0``): ``self.queue`` is a
    :class:`~propos_losses.queue.PrototypeQueue` of normalised *target*
    features and hard labels (in ``state_dict``). Its filled slots are added to
    both prototype sums without gradient. In training mode the batch's
    normalised target features, labels and ``indices`` are enqueued *after*
    the loss is computed; in eval mode the queue is used but never changed;
    ``forward(..., enqueue=True/False)`` decides explicitly, and
    :meth:`symmetric` enqueues each sample once for two view orders.
    After an E-step call :meth:`relabel_queue` (needs ``indices``) or
    :meth:`reset_queue`. Soft ``(B, K)`` assignments are rejected with a queue
    (the queue stores hard labels; no silent argmax).

    Logging: after each forward, ``self.last_terms`` is a :class:`PSLTerms` of
    detached tensors (loss, ``alignment``, ``uniformity``, ``num_active``), so
    the Eq. 5 terms and the number of non-empty clusters need no recomputation.

    Example:
        >>> import torch
        >>> psl = PrototypeScatteringLoss(num_clusters=10)
        >>> online = torch.randn(32, 128, requires_grad=True)
        >>> loss = psl(online, torch.randn(32, 128), torch.randint(0, 10, (32,)))
        >>> loss.backward()
        >>> psl.last_terms.num_active.item() <= 10
        True
    """

    queue: Optional[PrototypeQueue]
    _last_scores: Optional[Scores]
    _last_terms: Optional[PSLTerms]

    def __init__(
        self,
        num_clusters: int,
        temperature: float = defaults.TEMPERATURE,
        queue_size: int = 0,
        *,
        feature_dim: Optional[int] = None,
        validate_args: bool = True,
    ) -> None:
        super().__init__()
        check_bool("validate_args", validate_args)
        self.num_clusters = check_int("num_clusters", num_clusters, minimum=2)
        self.temperature = check_temperature(temperature)
        self.queue_size = check_int("queue_size", queue_size, minimum=0)
        if feature_dim is not None:
            feature_dim = check_int("feature_dim", feature_dim, minimum=1)
        elif self.queue_size > 0:
            raise ValueError(f"feature_dim is required when queue_size > 0 (got queue_size={self.queue_size})")
        self.feature_dim = feature_dim
        self.queue = PrototypeQueue(self.queue_size, feature_dim) if self.queue_size > 0 and feature_dim else None
        if self.queue is not None:
            self.queue.label_limit = self.num_clusters  # a loaded queue must hold labels in [0, K)
        self._last_scores = self._last_terms = None
        self.validate_args = validate_args

    @property
    def validate_args(self) -> bool:
        """Whether values are checked too (``False``: structural checks only, no host sync)."""
        return self._validate_args

    @validate_args.setter
    def validate_args(self, value: bool) -> None:
        check_bool("validate_args", value)
        self._validate_args = value
        if self.queue is not None:
            self.queue.validate_args = value

    def extra_repr(self) -> str:
        return f"num_clusters={self.num_clusters}, temperature={self.temperature}, queue_size={self.queue_size}"

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load a saved loss (its queue), all or nothing.

        The whole state dict is checked before anything is copied: with
        ``strict``, missing and unexpected keys; the queue's shapes, dtypes and
        values (see :meth:`PrototypeQueue.load_state_dict`), its labels in
        ``[0, num_clusters)`` included. On any problem a :class:`RuntimeError`
        is raised and the loss is left exactly as it was. The loss keeps
        copies, never the caller's tensors (also with ``assign=True``).

        Args:
            state_dict: a mapping from :meth:`state_dict`.
            strict: require exactly this loss's keys (torch's meaning).
            assign: torch's ``assign``.

        Returns:
            torch's ``NamedTuple`` of missing and unexpected keys.

        Raises:
            TypeError: ``state_dict`` not a mapping.
            RuntimeError: any problem above; nothing was changed.

        Example:
            >>> import torch
            >>> larger = PrototypeScatteringLoss(5, queue_size=4, feature_dim=2)  # another K
            >>> _ = larger(torch.ones(1, 2), torch.ones(1, 2), torch.tensor([4]))
            >>> psl = PrototypeScatteringLoss(3, queue_size=4, feature_dim=2)
            >>> psl.load_state_dict(larger.state_dict())  # doctest: +IGNORE_EXCEPTION_DETAIL
            Traceback (most recent call last):
            RuntimeError: Error(s) in loading state_dict for PrototypeScatteringLoss: queue labels must be in [0, 3)
            >>> len(psl.queue)
            0
        """
        checked = checked_state_dict(self, state_dict, strict=strict, assign=assign)
        return super().load_state_dict(checked, strict=strict, assign=assign)

    def forward(
        self,
        online: Tensor,
        target: Tensor,
        assignments: Tensor,
        indices: Optional[Tensor] = None,
        *,
        enqueue: Optional[bool] = None,
    ) -> Tensor:
        """Compute ``L_psl`` for one batch (and enqueue it in training mode).

        Args:
            online: ``(B, d)`` online projector outputs (any floating dtype).
            target: ``(B, d)`` target projector outputs (detached).
            assignments: ``(B,)`` integer labels in ``[0, K)`` or ``(B, K)``
                non-negative float weights (not with a queue); a tensor or a
                NumPy array (integer labels of any width, float weights), e.g.
                the ``labels_`` of :class:`~propos_losses.SphericalKMeans`
                fitted on NumPy features.
            indices: optional ``(B,)`` dataset indices ``>= 0`` of the samples,
                any integer dtype (like :meth:`PrototypeQueue.push`), stored in
                the queue as int64 so that it can be relabelled.
            enqueue: push this batch's normalised target features, labels and
                ``indices`` into the queue after the loss. ``None`` (default):
                in training mode only; ``True``/``False`` decide explicitly
                (e.g. ``False`` for the first of two calls on the same
                samples, as :meth:`symmetric` does). Ignored without a queue.

        Returns:
            0-d loss tensor (float32, float64 for float64 input).
        """
        check_bool("enqueue", enqueue, allow_none=True)
        if isinstance(online, Tensor):
            assignments = as_assignments(assignments, online.device)  # type: ignore[assignment]
        validate = self._validate_args
        validate_on_every_rank(
            lambda: self.check_forward(online, target, assignments, indices, values=validate),
            online,
            assignments,
            collective=validate,
            queue=self.queue,
        )
        return self.unchecked_forward(online, target, assignments, indices, enqueue=enqueue)

    def unchecked_forward(
        self,
        online: Tensor,
        target: Tensor,
        assignments: Tensor,
        indices: Optional[Tensor] = None,
        *,
        enqueue: Optional[bool] = None,
    ) -> Tensor:
        """Unchecked core of :meth:`forward`: the caller ran :meth:`check_forward` (e.g. :class:`~propos_losses.ProPosLoss`).

        Assignments must be a tensor (NumPy arrays are converted by :meth:`forward`).
        """
        validate = self._validate_args
        queue_sums = None if self.queue is None else buffer_queue_sums(self.queue, self.num_clusters)
        scores, z_target = psl_core(
            online, target, assignments, self.num_clusters, self.temperature, queue_sums, validate
        )
        self._last_scores, self._last_terms = scores.detach(), None
        if self.queue is not None and (self.training if enqueue is None else enqueue):
            # Checked above as push would check it; uneven batches between ranks only on the checked path.
            self.queue.unchecked_push(z_target, assignments.long(), indices, uneven=validate)
        return scores.loss

    @property
    def last_terms(self) -> Optional[PSLTerms]:
        """Detached :class:`PSLTerms` of the last forward (``None`` before the first).

        Computed from that forward's detached scores when first read, so a
        training step that never logs them does not pay for the Eq. 5 terms.
        """
        if self._last_terms is None and self._last_scores is not None:
            self._last_terms = self._last_scores.terms()
        return self._last_terms

    def symmetric(
        self,
        online_1: Tensor,
        online_2: Tensor,
        target_1: Tensor,
        target_2: Tensor,
        assignments: Tensor,
        indices: Optional[Tensor] = None,
    ) -> Tensor:
        """Symmetrised loss ``forward(online_1, target_2) + forward(online_2, target_1)``, like :meth:`PSA.symmetric`.

        Each view's online prototypes are scattered against the other view's
        target prototypes (the authors' pairing). With a queue, only the
        second call enqueues (``enqueue=False`` on the first), so every sample
        enters the queue once per step: ``target_1`` with its ``assignments``
        and ``indices``, in training mode.

        Args:
            online_1: ``(B, d)`` online projections of view 1.
            online_2: ``(B, d)`` online projections of view 2.
            target_1: ``(B, d)`` target projections of view 1.
            target_2: ``(B, d)`` target projections of view 2.
            assignments: the batch's ``(B,)`` labels or ``(B, K)`` weights, shared by both views.
            indices: optional ``(B,)`` dataset indices (for the queue).

        Returns:
            Scalar loss, the sum over both view orders (halve it for the
            authors' average, as :class:`~propos_losses.ProPosLoss` does).

        Example:
            >>> import torch
            >>> psl = PrototypeScatteringLoss(num_clusters=3)
            >>> o1, o2, t1, t2 = torch.randn(4, 6, 8).unbind(0)  # four (6, 8) batches
            >>> labels = torch.tensor([0, 0, 1, 1, 2, 2])
            >>> bool(torch.isclose(psl.symmetric(o1, o2, t1, t2, labels), psl(o1, t2, labels) + psl(o2, t1, labels)))
            True
        """
        first: Tensor = self(online_1, target_2, assignments, indices, enqueue=False)
        second: Tensor = self(online_2, target_1, assignments, indices)
        return first + second

    def check_forward(
        self,
        online: Tensor,
        target: Tensor,
        assignments: Tensor,
        indices: Optional[Tensor],
        *,
        values: bool,
        inputs_checked: bool = False,
    ) -> None:
        """The spec of :meth:`forward` on this rank (its push into the queue included), before anything changes.

        ``values=False`` keeps the structural checks only (no host sync).
        ``inputs_checked=True``: the caller has checked the values of the
        inputs already (finite features, labels in ``[0, K)``, indices
        ``>= 0``, as :class:`~propos_losses.ProPosLoss` does); the loss's own
        state (the queue's labels) is still checked under ``values``.
        """
        distributed = is_distributed()
        input_values = values and not inputs_checked
        check_features(online, target, allow_empty=distributed, values=input_values)
        batch_size, feature_dim = online.shape
        if self.feature_dim is not None and feature_dim != self.feature_dim:
            raise ValueError(
                f"online must have feature size feature_dim={self.feature_dim}"
                f"{' (the queue feature size)' if self.queue is not None else ''}, got shape {tuple(online.shape)}"
            )
        check_assignments_device(assignments, online)
        check_assignments(assignments, batch_size, self.num_clusters, allow_all_zero=distributed, values=input_values)
        if indices is not None:
            check_indices("indices", indices, batch_size, values=input_values)
        if self.queue is not None and assignments.dim() != 1:
            raise ValueError(
                f"assignments must be (B,) hard labels when queue_size > 0 (the queue stores hard labels), "
                f"got shape {tuple(assignments.shape)}; use queue_size=0 for soft weights"
            )
        if self.queue is not None and self.queue.features.device != online.device:
            raise ValueError(
                f"online is on {online.device} but the queue is on {self.queue.features.device}; "
                "move the loss with .to(device)"
            )
        if values and self.queue is not None:
            # Labels may have been relabelled or loaded from a checkpoint made with another K.
            self.queue.check_labels_below(self.num_clusters, remedy="relabel_queue() or reset_queue()")

    def relabel_queue(self, new_labels: Tensor) -> None:
        """Relabel the queue after an E-step: ``label[slot] = new_labels[index[slot]]``.

        Args:
            new_labels: ``(N_dataset,)`` int64 labels in ``[0, K)`` of the whole dataset.

        Raises:
            ValueError: without a queue, for labels out of range, or (from the
                queue) when a filled slot has no sample index.

        Example:
            >>> import torch
            >>> psl = PrototypeScatteringLoss(3, queue_size=4, feature_dim=2)
            >>> _ = psl(torch.randn(2, 2), torch.randn(2, 2), torch.tensor([0, 1]), torch.tensor([5, 6]))
            >>> psl.relabel_queue(torch.tensor([0, 0, 0, 0, 0, 2, 1]))
            >>> psl.queue.contents()[1].tolist()
            [2, 1]
        """
        if self.queue is None:
            raise ValueError("relabel_queue needs a queue, but this loss has queue_size=0")
        check_tensor("new_labels", new_labels, ndim=1)
        check_labels("new_labels", new_labels, self.num_clusters)
        self.unchecked_relabel_queue(new_labels)

    def unchecked_relabel_queue(self, new_labels: Tensor) -> None:
        """:meth:`relabel_queue` for ``(N,)`` labels in ``[0, K)`` checked by the caller (e.g. ProPosLoss).

        Only the queue's own state is checked (under ``validate_args``): every
        queued sample needs a known index below ``N``. Needs a queue.
        """
        assert self.queue is not None, "unchecked_relabel_queue needs a queue"
        if self.queue.validate_args:
            self.queue.check_relabel(new_labels, labels_checked=True)
        self.queue.unchecked_relabel(new_labels)

    def reset_queue(self) -> None:
        """Empty the queue (no-op without one), e.g. when the number of clusters changes.

        Example:
            >>> import torch
            >>> psl = PrototypeScatteringLoss(3, queue_size=4, feature_dim=2)
            >>> _ = psl(torch.randn(2, 2), torch.randn(2, 2), torch.tensor([0, 1]))
            >>> psl.reset_queue()
            >>> len(psl.queue)
            0
        """
        if self.queue is not None:
            self.queue.reset()


#: Short alias, ``from propos_losses import PSL``.
PSL = PrototypeScatteringLoss
