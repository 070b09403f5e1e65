"""A FIFO memory queue of target features with their cluster labels (paper Sec. 5.9).

The prototype sums of the prototype scattering loss can run over the current
batch *and* a queue of earlier target features, so that small batches still see
every cluster. The queue here fixes defect 5 of the official code: it starts
**empty** (no random vectors that count as data) and only filled slots are ever
returned. Everything that must survive a restart (features, labels, sample
indices, write pointer, fill level) is a persistent buffer, so ``state_dict``
round-trips the queue exactly, also after it has wrapped around.

Labels go stale when the E-step re-clusters the data; the queue therefore keeps
the dataset index of every stored sample (when given) and :meth:`PrototypeQueue.relabel`
refreshes the labels from the new label vector. :meth:`PrototypeQueue.reset` empties it.

Under :mod:`torch.distributed`, :meth:`PrototypeQueue.push` gathers the global
batch in rank order and every rank enqueues the same rows, so the queues stay
identical on every rank.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from propos_losses._validation import (
    check_bool,
    check_finite,
    check_indices,
    check_int,
    check_integer_dtype,
    check_label_range,
    check_tensor,
    checked_state_dict,
)
from propos_losses.distributed import all_gather_cat, all_gather_cat_equal, check_on_every_rank, dtype_code
from propos_losses.prototypes import cluster_sums_unchecked

__all__ = ["PrototypeQueue"]

# Value of ``labels`` / ``indices`` in an empty slot, or of ``indices`` for a
# sample pushed without its dataset index. Valid labels and indices are >= 0.
_UNKNOWN = -1


class PrototypeQueue(nn.Module):
    """FIFO ring buffer of features, cluster labels and dataset indices.

    The queue starts empty; :func:`len` is the number of filled slots and
    :meth:`contents` returns only those, oldest first. Pushing more rows than
    fit overwrites the oldest ones; a batch larger than the queue keeps its
    newest ``size`` rows.

    Buffers (all persistent, i.e. in ``state_dict``):

    * ``features``: ``(size, feature_dim)`` of ``dtype``, zeros when empty;
    * ``labels``: ``(size,)`` int64, ``-1`` in empty slots;
    * ``indices``: ``(size,)`` int64 dataset index of each sample, ``-1`` when
      empty or unknown (pushed without ``indices``);
    * ``ptr``: ``()`` int64, the next slot to write;
    * ``fill``: ``()`` int64, the number of filled slots.

    Args:
        size: number of slots, ``>= 1``.
        feature_dim: size ``d`` of each stored feature vector, ``>= 1``.
        dtype: floating dtype of the stored features (pushed features are cast).
        validate_args: check values too (finite features, non-negative labels
            and indices) and, under ``torch.distributed``, make every rank
            raise when one rank got bad input or the queues' feature size or
            dtype differ between ranks; ``False``: structural checks only
            (types, ranks, shapes, the feature size, integer dtypes), so a
            push makes no host sync (a settable attribute, the same on every
            rank). Under ``torch.distributed`` the fast path skips the
            agreement all-reduce and the exchange of the ranks' row counts,
            dtypes and shapes: every rank must then push the same number of
            rows into queues of the same feature size and dtype (as with
            equal local batches); otherwise the gather aborts the process
            (gloo) or hangs (NCCL), and a rank whose input fails a structural
            check raises alone while the others wait in the gather.

    Raises:
        TypeError: ``size`` or ``feature_dim`` not an int, ``dtype`` not a
            floating torch dtype.
        ValueError: ``size`` or ``feature_dim`` smaller than 1.

    Example:
        >>> import torch
        >>> queue = PrototypeQueue(size=4, feature_dim=2)
        >>> len(queue)
        0
        >>> queue.push(torch.ones(3, 2), torch.tensor([0, 1, 1]), indices=torch.tensor([7, 8, 9]))
        >>> queue.push(torch.zeros(2, 2), torch.tensor([2, 2]))
        >>> features, labels, indices = queue.contents()
        >>> len(queue), queue.is_full, labels.tolist(), indices.tolist()
        (4, True, [1, 1, 2, 2], [8, 9, -1, -1])
    """

    features: Tensor
    labels: Tensor
    indices: Tensor
    ptr: Tensor
    fill: Tensor

    def __init__(
        self, size: int, feature_dim: int, *, dtype: torch.dtype = torch.float32, validate_args: bool = True
    ) -> None:
        super().__init__()
        check_bool("validate_args", validate_args)
        self.validate_args = validate_args
        size = check_int("size", size, minimum=1)
        feature_dim = check_int("feature_dim", feature_dim, minimum=1)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        self.size = size
        self.feature_dim = feature_dim
        self.register_buffer("features", torch.zeros(size, feature_dim, dtype=dtype))
        self.register_buffer("labels", torch.full((size,), _UNKNOWN, dtype=torch.int64))
        self.register_buffer("indices", torch.full((size,), _UNKNOWN, dtype=torch.int64))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.int64))
        self.register_buffer("fill", torch.zeros((), dtype=torch.int64))
        #: Exclusive upper bound of the labels a loaded state may hold (the number of clusters), set by
        #: the loss that owns the queue; ``None``: any label ``>= 0`` (push and relabel do not use it).
        self.label_limit: Optional[int] = None

    def extra_repr(self) -> str:
        return f"size={self.size}, feature_dim={self.feature_dim}, dtype={self.features.dtype}"

    def __len__(self) -> int:
        return int(self.fill)

    @property
    def is_full(self) -> bool:
        """``True`` when every slot holds a pushed sample."""
        return len(self) == self.size

    def _filled_slots(self) -> Tensor:
        """Slot numbers of the filled slots, oldest first, as a ``(n,)`` int64 tensor."""
        fill = self.fill
        oldest = torch.remainder(self.ptr - fill, self.size)
        steps = torch.arange(int(fill), dtype=torch.int64, device=self.ptr.device)
        return torch.remainder(oldest + steps, self.size)

    def cluster_sums(self, num_clusters: int, *, dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Tensor]:
        """Per-cluster sums and counts of the filled slots, without gradient and without a copy of them.

        What :class:`~propos_losses.psl.PrototypeScatteringLoss` adds to the
        batch's prototype sums (it pushes normalised features, so the sums
        are sums of unit vectors). Empty slots are routed to a spare row that
        is dropped, so their contents never matter; with
        ``validate_args=False`` nothing is read back to the host.

        Args:
            num_clusters: ``K >= 1``; every stored label must be below it.
            dtype: floating dtype of the sums (default: the queue's dtype).

        Returns:
            ``(sums, counts)``: ``(K, feature_dim)`` and ``(K,)`` tensors of
            ``dtype`` on the queue's device.

        Raises:
            TypeError: ``num_clusters`` not an int, ``dtype`` not floating.
            ValueError: ``num_clusters < 1``, or (``validate_args``) a stored
                label ``>= num_clusters`` (labels from another K: call
                :meth:`relabel` or :meth:`reset`).

        Example:
            >>> queue = PrototypeQueue(size=4, feature_dim=2)
            >>> queue.push(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([0, 2, 0]))
            >>> sums, counts = queue.cluster_sums(3)
            >>> sums.tolist(), counts.tolist()
            ([[2.0, 1.0], [0.0, 0.0], [0.0, 1.0]], [2.0, 0.0, 1.0])
        """
        num_clusters = check_int("num_clusters", num_clusters, minimum=1)
        if dtype is None:
            dtype = self.features.dtype
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        if self.validate_args:
            self.check_labels_below(num_clusters)
        return self.unchecked_cluster_sums(num_clusters, dtype)

    def check_labels_below(self, num_clusters: int, *, remedy: str = "relabel() or reset() the queue") -> None:
        """Raise a ValueError if a stored label is not below ``num_clusters`` (one host sync).

        Labels go stale when the number of clusters changes (or a queue from
        another ``K`` is used); ``remedy`` tells the caller what to call.
        """
        if self.labels.numel():
            # Empty slots hold -1: only the largest label can be out of range.
            high = int(self.labels.max())
            check_label_range(
                "queue labels",
                0,
                high,
                num_clusters,
                bound="num_clusters=",
                hint=f", not below num_clusters={num_clusters}: {remedy} after changing the number of clusters",
            )

    def unchecked_cluster_sums(self, num_clusters: int, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
        """Unchecked core of :meth:`cluster_sums` (static shapes, no host sync)."""
        index = torch.where(self.labels >= 0, self.labels, num_clusters)
        summed, counts = cluster_sums_unchecked(self.features.detach().to(dtype), index, num_clusters + 1)
        return summed[:num_clusters], counts[:num_clusters]

    def contents(self) -> Tuple[Tensor, Tensor, Tensor]:
        """The filled slots, oldest first.

        Returns:
            ``(features, labels, indices)``: ``(n, feature_dim)`` of the queue
            dtype, ``(n,)`` int64 and ``(n,)`` int64 (``-1`` for unknown
            indices), where ``n = len(self)``; new tensors, detached from the
            queue (``(0, feature_dim)`` and ``(0,)`` when empty).

        Example:
            >>> queue = PrototypeQueue(size=3, feature_dim=2)
            >>> [tuple(t.shape) for t in queue.contents()]
            [(0, 2), (0,), (0,)]
        """
        slots = self._filled_slots()
        return (
            self.features.index_select(0, slots).detach(),
            self.labels.index_select(0, slots),
            self.indices.index_select(0, slots),
        )

    def _validate_push(
        self, features: object, labels: object, indices: object
    ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """The spec of :meth:`push` (value checks only under ``validate_args``)."""
        features = check_tensor("features", features, ndim=2, floating=True)
        if features.shape[1] != self.feature_dim:
            raise ValueError(
                f"features must have feature_dim={self.feature_dim} columns (the queue's), "
                f"got shape {tuple(features.shape)}"
            )
        if self.validate_args:
            check_finite("features", features)
        batch_size = features.shape[0]
        labels = check_indices("labels", labels, batch_size, values=self.validate_args)
        if indices is not None:
            indices = check_indices("indices", indices, batch_size, values=self.validate_args)
        return features, labels, indices

    def push(self, features: Tensor, labels: Tensor, indices: Optional[Tensor] = None) -> None:
        """Enqueue a batch, overwriting the oldest slots once the queue is full.

        Everything is validated before the queue changes. Under
        :mod:`torch.distributed` every rank must call ``push`` (collective):
        the batches of all ranks are gathered in rank order with
        :func:`propos_losses.distributed.all_gather_cat` and the global batch
        is enqueued on every rank, so all queues stay identical. If the input
        is bad on any rank, every rank raises (no rank hangs in the gather)
        and no queue changes.

        Args:
            features: ``(b, feature_dim)`` floating, finite; stored as a
                detached copy cast to the queue dtype and device. ``b`` may
                differ between ranks and may be 0 (with ``validate_args=False``
                under ``torch.distributed``: the same ``b`` on every rank, see
                :func:`propos_losses.distributed.all_gather_cat_equal`).
            labels: ``(b,)`` integer cluster labels ``>= 0`` (stored as int64).
            indices: ``(b,)`` integer dataset indices ``>= 0`` of the samples,
                needed by :meth:`relabel`; ``None`` stores ``-1`` (unknown).

        Raises:
            TypeError: a non-tensor argument or a wrong dtype.
            ValueError: wrong shapes, a batch-size mismatch, non-finite
                features, negative labels or indices, or bad input on another rank.

        Example:
            >>> queue = PrototypeQueue(size=2, feature_dim=3)
            >>> queue.push(torch.randn(5, 3), torch.arange(5))  # only the newest 2 rows fit
            >>> queue.contents()[1].tolist()
            [3, 4]
        """

        def check() -> Tuple[Tensor, Tensor, Optional[Tensor]]:
            return self._validate_push(features, labels, indices)

        if self.validate_args:
            # Agree on success before the gathers: a rank that raised alone
            # would leave the others blocked in all_gather forever.
            device = features.device if isinstance(features, Tensor) else self.features.device
            # Queues built differently on different ranks would make the gathers below abort (gloo).
            agree = {
                "the queue's feature size (feature_dim)": self.feature_dim,
                "the queue's dtype (code)": dtype_code(self.features),
            }
            features, labels, indices = check_on_every_rank(
                check, what="PrototypeQueue.push", device=device, agree=agree
            )
        else:
            features, labels, indices = check()
        self.unchecked_push(features, labels, indices, uneven=self.validate_args)

    def unchecked_push(self, features: Tensor, labels: Tensor, indices: Optional[Tensor], *, uneven: bool) -> None:
        """Unchecked core of :meth:`push` (the caller checked its arguments as :meth:`push` does).

        ``uneven=True`` exchanges the ranks' row counts before the gather
        (batches of different sizes allowed; one host sync); ``False``
        requires the same count on every rank and reads nothing back.
        """
        features = features.detach().to(dtype=self.features.dtype)
        if indices is None:
            indices = torch.full_like(labels, _UNKNOWN, dtype=torch.int64)
        # Labels and indices travel together: one gather instead of two.
        meta = torch.stack((labels.to(torch.int64), indices.to(device=labels.device, dtype=torch.int64)), dim=1)
        gather = all_gather_cat if uneven else all_gather_cat_equal
        features = gather(features)
        meta = gather(meta.to(features.device))
        self._enqueue(features, meta[:, 0], meta[:, 1])

    @torch.no_grad()
    def _enqueue(self, features: Tensor, labels: Tensor, indices: Tensor) -> None:
        # Only the newest `size` rows can survive; keeping just those also makes
        # the target slots below distinct, so the writes are deterministic.
        keep = min(features.shape[0], self.size)
        if keep == 0:
            return
        device = self.features.device
        slots = torch.remainder(self.ptr + torch.arange(keep, dtype=torch.int64, device=device), self.size)
        self.features.index_copy_(0, slots, features[-keep:].to(device))
        self.labels.index_copy_(0, slots, labels[-keep:].to(device))
        self.indices.index_copy_(0, slots, indices[-keep:].to(device))
        # Pointer and fill level stay on the device: no host synchronisation per push.
        self.ptr.copy_(torch.remainder(self.ptr + keep, self.size))
        self.fill.copy_(torch.clamp(self.fill + keep, max=self.size))

    @torch.no_grad()
    def relabel(self, new_labels: Tensor) -> None:
        """Refresh the labels of the filled slots from a dataset-wide label vector.

        Sets ``labels[slot] = new_labels[indices[slot]]`` for every filled
        slot, e.g. after the E-step has re-clustered the data. No
        communication: under :mod:`torch.distributed` pass the same (global)
        label vector on every rank and the queues stay identical.

        Args:
            new_labels: ``(N_dataset,)`` integer labels ``>= 0`` of every sample.

        With ``validate_args=False`` the relabelling makes no host sync and
        skips the value checks: slots pushed without indices keep their label
        and indices are not checked against ``N_dataset``.

        Raises:
            TypeError: ``new_labels`` not an integer tensor.
            ValueError: ``new_labels`` not 1-D, a filled slot without a known
                index, an index ``>= N_dataset``, or a negative new label;
                the queue is left unchanged.

        Example:
            >>> queue = PrototypeQueue(size=3, feature_dim=2)
            >>> queue.push(torch.zeros(2, 2), torch.tensor([0, 0]), indices=torch.tensor([4, 1]))
            >>> queue.relabel(torch.tensor([5, 6, 7, 8, 9]))
            >>> queue.contents()[1].tolist()
            [9, 6]
        """
        new_labels = check_tensor("new_labels", new_labels, ndim=1)
        check_integer_dtype("new_labels", new_labels)
        if self.validate_args:
            self.check_relabel(new_labels)
        self.unchecked_relabel(new_labels)

    def check_relabel(self, new_labels: Tensor, *, labels_checked: bool = False) -> None:
        """The value checks of :meth:`relabel` against the stored indices (host syncs).

        Every filled slot needs a known index below ``len(new_labels)``; and,
        unless the caller checked ``new_labels`` already (``labels_checked``),
        the new labels of the queued samples must be ``>= 0``.
        """
        slots = self._filled_slots()
        if slots.numel() == 0:
            return
        indices = self.indices.index_select(0, slots)
        low, high = int(indices.min()), int(indices.max())
        if low < 0:
            raise ValueError(
                "PrototypeQueue.relabel needs the dataset index of every queued sample, "
                "but some samples were pushed without indices"
            )
        if high >= new_labels.shape[0]:
            raise ValueError(f"new_labels has {new_labels.shape[0]} entries but the queue holds dataset index {high}")
        if not labels_checked:
            lowest = int(new_labels.to(device=indices.device).index_select(0, indices).min())
            if lowest < 0:
                raise ValueError(f"new_labels must be >= 0 for queued samples, got {lowest}")

    @torch.no_grad()
    def unchecked_relabel(self, new_labels: Tensor) -> None:
        """Unchecked core of :meth:`relabel`: no host sync.

        Every slot with a label and a known index is relabelled in place;
        empty slots and slots pushed without indices keep their label.
        """
        if new_labels.shape[0] == 0:
            return  # nothing to look up (a queue with a known index would need a longer vector)
        known = (self.labels >= 0) & (self.indices >= 0)
        gathered = new_labels.to(self.indices.device).index_select(0, self.indices.clamp_min(0)).long()
        self.labels.copy_(torch.where(known, gathered, self.labels))

    @torch.no_grad()
    def reset(self) -> None:
        """Empty the queue (features zeroed, labels and indices ``-1``, ``ptr = fill = 0``).

        Example:
            >>> queue = PrototypeQueue(size=3, feature_dim=2)
            >>> queue.push(torch.ones(2, 2), torch.tensor([0, 1]))
            >>> queue.reset()
            >>> len(queue)
            0
        """
        self.features.zero_()
        self.labels.fill_(_UNKNOWN)
        self.indices.fill_(_UNKNOWN)
        self.ptr.zero_()
        self.fill.zero_()

    _STATE_NAMES = ("features", "labels", "indices", "ptr", "fill")

    def _state_problem(self, state_dict: Mapping[str, Any], prefix: str) -> Optional[str]:
        """Why loading ``state_dict`` would give an impossible queue, or ``None``.

        The five entries under ``prefix`` describe one ring buffer, so they
        are loaded together or not at all: none of them (e.g. a non-strict
        load of other weights) is fine and changes nothing, some of them is
        an error even without ``strict`` (it would mix two queues). Then
        shapes and dtype kinds, ``ptr`` and ``fill`` in range, labels ``>= 0``
        exactly in the filled slots (and below :attr:`label_limit` when an
        owner set one), indices ``>= 0`` or ``-1`` in filled slots and ``-1``
        in empty ones, finite features in filled slots. Reads values back
        (a few syncs): a load is no hot path.
        """
        problem = self._state_values_problem(state_dict, prefix)
        if problem is None:
            return None
        return f"{prefix.rstrip('.') or 'PrototypeQueue'}: {problem}; the queue was left unchanged"

    def _state_values_problem(self, state_dict: Mapping[str, Any], prefix: str) -> Optional[str]:
        expected = {
            "features": ((self.size, self.feature_dim), True),
            "labels": ((self.size,), False),
            "indices": ((self.size,), False),
            "ptr": ((), False),
            "fill": ((), False),
        }
        present = [name for name in expected if prefix + name in state_dict]
        if not present:
            return None
        if len(present) < len(expected):
            lacking = [name for name in expected if name not in present]
            return f"an incomplete queue state: it has {present} but lacks {lacking}"
        state: Dict[str, Tensor] = {}
        for name, (shape, floating) in expected.items():
            value = state_dict[prefix + name]
            if not isinstance(value, Tensor):
                return f"{name} must be a tensor, got {type(value).__name__}"
            if tuple(value.shape) != shape:
                return (
                    f"{name} has shape {tuple(value.shape)} but this queue (size={self.size}, "
                    f"feature_dim={self.feature_dim}) needs {shape}"
                )
            if value.is_floating_point() != floating or value.is_complex() or value.dtype == torch.bool:
                return f"{name} has dtype {value.dtype}, expected {'a floating' if floating else 'an integer'} dtype"
            state[name] = value.detach().cpu()
        ptr, fill = int(state["ptr"]), int(state["fill"])
        if not 0 <= ptr < self.size:
            return f"ptr must be in [0, {self.size - 1}] for a queue of size {self.size}, got {ptr}"
        if not 0 <= fill <= self.size:
            return f"fill must be in [0, {self.size}] for a queue of size {self.size}, got {fill}"
        labels, indices = state["labels"].long(), state["indices"].long()
        filled = torch.zeros(self.size, dtype=torch.bool)
        filled[torch.remainder(ptr - fill + torch.arange(fill), self.size)] = True
        if bool((labels[filled] < 0).any()) or bool((labels[~filled] != _UNKNOWN).any()):
            return f"labels contradict fill={fill} (ptr={ptr}): filled slots need labels >= 0 and empty slots -1"
        limit = self.label_limit
        if limit is not None and fill:
            try:
                check_label_range(
                    "queue labels",
                    0,
                    int(labels[filled].max()),
                    limit,
                    bound="num_clusters=",
                    hint=" (a queue saved with another number of clusters: reset it instead of loading it)",
                )
            except ValueError as problem:
                return str(problem)
        if bool((indices[filled] < _UNKNOWN).any()) or bool((indices[~filled] != _UNKNOWN).any()):
            return (
                f"indices contradict fill={fill} (ptr={ptr}): filled slots need indices >= 0 "
                "(-1: pushed without an index) and empty slots -1"
            )
        if not bool(torch.isfinite(state["features"][filled]).all()):
            return "features of filled slots must be finite, got NaN or Inf"
        return None

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load a saved queue, all or nothing.

        The whole state dict is checked before anything is copied (see
        :meth:`_state_problem`); on any problem (a missing or unexpected key
        with ``strict``, a wrong shape or dtype, ``ptr``/``fill`` out of
        range, labels or indices that contradict ``fill``, non-finite
        features) a :class:`RuntimeError` is raised and the queue is left
        exactly as it was. The queue keeps copies, never the caller's tensors
        (also with ``assign=True``).

        Args:
            state_dict: a mapping from :meth:`state_dict`.
            strict: require exactly the queue's keys (torch's meaning).
            assign: torch's ``assign`` (the loaded copies replace the buffers).

        Returns:
            torch's ``NamedTuple`` of missing and unexpected keys.

        Raises:
            TypeError: ``state_dict`` not a mapping.
            RuntimeError: any problem above; nothing was changed.

        Example:
            >>> queue = PrototypeQueue(size=3, feature_dim=2)
            >>> state = queue.state_dict()
            >>> del state["fill"]
            >>> queue.load_state_dict(state)  # doctest: +IGNORE_EXCEPTION_DETAIL
            Traceback (most recent call last):
            RuntimeError: Error(s) in loading state_dict for PrototypeQueue: Missing key(s) in state_dict: "fill".
        """
        checked = checked_state_dict(self, state_dict, strict=strict, assign=assign)
        return super().load_state_dict(checked, strict=strict, assign=assign)

    def _load_from_state_dict(
        self,
        state_dict: Dict[str, Any],
        prefix: str,
        local_metadata: Dict[str, Any],
        strict: bool,
        missing_keys: List[str],
        unexpected_keys: List[str],
        error_msgs: List[str],
    ) -> None:
        # Check the whole saved queue before anything is copied: torch copies every buffer whose
        # shape matches before it reports the others, which would mix two queues. This also covers
        # a queue loaded as part of a larger module (whose load_state_dict is torch's).
        problem = self._state_problem(state_dict, prefix)
        if problem is not None:
            missing_keys.extend(prefix + name for name in self._STATE_NAMES if prefix + name not in state_dict)
            error_msgs.append(problem)
            return
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
