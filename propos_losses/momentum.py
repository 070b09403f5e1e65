"""Momentum (EMA) update of the target network (ProPos Eq. 11, BYOL schedule).

The target network ``f'`` follows the online network ``f`` by an exponential
moving average of the parameters::

    theta' <- m theta' + (1 - m) theta

with BYOL's cosine schedule for ``m`` over the global step ``t`` of ``T``
(generalised from a final momentum of 1 to any ``m_T``)::

    m_t = m_T - (m_T - m_0) (cos(pi t / T) + 1) / 2

which is ``1 - (1 - m_0)(cos(pi t / T) + 1) / 2`` for ``m_T = 1``.
The step ``t`` is a persistent buffer of :class:`MomentumUpdater`, so it
survives a restart through ``state_dict``.
"""

from __future__ import annotations

import copy
import math
from typing import List, Literal, Tuple, TypeVar

import torch
from torch import Tensor, nn

from propos_losses import defaults
from propos_losses._validation import check_float, check_int

__all__ = ["MomentumUpdater", "BufferPolicy"]

#: What :meth:`MomentumUpdater.update` does with the target's buffers (e.g. BatchNorm statistics).
BufferPolicy = Literal["copy", "ema", "none"]
_BUFFER_POLICIES: Tuple[str, ...] = ("copy", "ema", "none")

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def _unwrap(module: nn.Module) -> nn.Module:
    """The user's model inside DDP / DataParallel / ``torch.compile`` wrappers."""
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            module = module._orig_mod  # type: ignore[assignment]
        else:
            return module


def _paired(kind: str, online: List[Tuple[str, Tensor]], target: List[Tuple[str, Tensor]]) -> Tuple[List[Tensor], List[Tensor]]:
    """Check that two named tensor lists match in names, shapes, dtypes and devices."""
    online_names = [name for name, _ in online]
    target_names = [name for name, _ in target]
    if online_names != target_names:
        only_online = sorted(set(online_names) - set(target_names))
        only_target = sorted(set(target_names) - set(online_names))
        raise ValueError(
            f"online and target networks must have the same {kind}s in the same order; "
            f"only in online: {only_online}, only in target: {only_target}"
        )
    for (name, a), (_, b) in zip(online, target):
        if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
            raise ValueError(
                f"{kind} {name!r} differs between online ({tuple(a.shape)}, {a.dtype}, {a.device}) "
                f"and target ({tuple(b.shape)}, {b.dtype}, {b.device})"
            )
    return [a for _, a in online], [b for _, b in target]


class MomentumUpdater(nn.Module):
    """EMA of the online network into the target network with BYOL's cosine momentum schedule.

    ``update(online, target)`` applies ``theta' <- m_t theta' + (1 - m_t) theta``
    to every parameter with ``torch._foreach_*`` kernels, treats the buffers
    according to ``buffers``, then increments the global step ``t`` (a
    persistent buffer named ``step``; save the updater's ``state_dict`` with
    the checkpoint). Call it once per optimiser step, after ``optimizer.step()``.
    Steps beyond ``total_steps`` keep ``final_momentum``.

    Buffer policies (BatchNorm running statistics and the like):

    * ``"copy"``: copy every buffer from the online network (default);
    * ``"ema"``: EMA of floating-point buffers with the same ``m_t``, integer
      buffers (e.g. ``num_batches_tracked``) copied;
    * ``"none"``: leave the target's buffers alone.

    Distributed training: pass the DDP-wrapped online model (or the plain
    one); it is unwrapped through ``.module`` (DataParallel and
    ``torch.compile`` wrappers too), so the target is a plain module with the
    same parameter names. DDP keeps the online parameters identical on every
    rank, so every rank computes the same target parameters without
    communication. Buffers are taken from this rank's online model: BatchNorm
    running statistics updated by the local batch therefore differ between
    ranks (as in the online model itself) unless SyncBatchNorm is used.

    Args:
        base_momentum: ``m_0``, the momentum at step 0, in ``[0, 1]``.
        final_momentum: ``m_T``, the momentum at step ``total_steps``, in ``[0, 1]``.
        total_steps: ``T``, the number of optimiser steps of the schedule, ``>= 1``.
        buffers: the buffer policy, ``"copy"``, ``"ema"`` or ``"none"``.

    Raises:
        TypeError: a non-numeric momentum, a non-int ``total_steps``, a non-str ``buffers``.
        ValueError: a momentum outside ``[0, 1]``, ``total_steps < 1``, an unknown policy.

    Example:
        >>> import torch
        >>> online = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
        >>> updater = MomentumUpdater(total_steps=100)
        >>> target = updater.make_target(online)
        >>> updater.momentum
        0.996
        >>> m = updater.update(online, target)  # once per optimiser step
        >>> int(updater.step), round(updater.momentum_at(50), 6), updater.momentum_at(100)
        (1, 0.998, 1.0)
    """

    step: Tensor

    def __init__(
        self,
        base_momentum: float = defaults.BASE_MOMENTUM,
        final_momentum: float = defaults.FINAL_MOMENTUM,
        *,
        total_steps: int,
        buffers: BufferPolicy = "copy",
    ) -> None:
        super().__init__()
        self.base_momentum = check_float("base_momentum", base_momentum, minimum=0.0, maximum=1.0)
        self.final_momentum = check_float("final_momentum", final_momentum, minimum=0.0, maximum=1.0)
        self.total_steps = check_int("total_steps", total_steps, minimum=1)
        if not isinstance(buffers, str):
            raise TypeError(f"buffers must be one of {_BUFFER_POLICIES}, got {buffers!r}")
        if buffers not in _BUFFER_POLICIES:
            raise ValueError(f"buffers must be one of {_BUFFER_POLICIES}, got {buffers!r}")
        self.buffers_policy: BufferPolicy = buffers
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    def extra_repr(self) -> str:
        return (
            f"base_momentum={self.base_momentum}, final_momentum={self.final_momentum}, "
            f"total_steps={self.total_steps}, buffers={self.buffers_policy!r}"
        )

    def momentum_at(self, step: int) -> float:
        """The scheduled momentum ``m_t`` at global step ``step`` (``>= 0``; clamped to ``total_steps``)."""
        step = check_int("step", step, minimum=0)
        progress = min(step, self.total_steps) / self.total_steps
        return self.final_momentum - (self.final_momentum - self.base_momentum) * (math.cos(math.pi * progress) + 1) / 2

    @property
    def momentum(self) -> float:
        """The momentum the next :meth:`update` will use."""
        return self.momentum_at(int(self.step))

    @staticmethod
    def make_target(online: ModuleT) -> ModuleT:
        """A target network: a deep copy of ``online`` (unwrapped from DDP) with ``requires_grad=False``.

        Args:
            online: the online network, possibly wrapped in DDP / DataParallel.

        Returns:
            An independent copy with the same parameters, buffers and
            train/eval mode, none of its parameters requiring gradient.

        Example:
            >>> online = torch.nn.Linear(3, 2)
            >>> target = MomentumUpdater.make_target(online)
            >>> torch.equal(target.weight, online.weight), target.weight.requires_grad
            (True, False)
        """
        if not isinstance(online, nn.Module):
            raise TypeError(f"online must be an nn.Module, got {type(online).__name__}")
        target = copy.deepcopy(_unwrap(online))
        for parameter in target.parameters():
            parameter.requires_grad_(False)
        return target  # type: ignore[return-value]

    @torch.no_grad()
    def update(self, online: nn.Module, target: nn.Module) -> float:
        """EMA step ``theta' <- m_t theta' + (1 - m_t) theta``, then ``t <- t + 1``.

        Args:
            online: the online network (a DDP/DataParallel wrapper is unwrapped).
            target: the target network, with the same parameter (and, unless
                ``buffers="none"``, buffer) names, shapes, dtypes and devices.

        Returns:
            The momentum ``m_t`` that was applied (for logging).

        Raises:
            TypeError: ``online`` or ``target`` not an ``nn.Module``.
            ValueError: the two networks differ in names, shapes, dtypes or
                devices, or are the same module; nothing is changed then.
        """
        for name, module in (("online", online), ("target", target)):
            if not isinstance(module, nn.Module):
                raise TypeError(f"{name} must be an nn.Module, got {type(module).__name__}")
        online, target = _unwrap(online), _unwrap(target)
        if online is target:
            raise ValueError("online and target must be different modules (see MomentumUpdater.make_target)")
        online_params, target_params = _paired("parameter", list(online.named_parameters()), list(target.named_parameters()))
        online_buffers: List[Tensor] = []
        target_buffers: List[Tensor] = []
        if self.buffers_policy != "none":
            online_buffers, target_buffers = _paired("buffer", list(online.named_buffers()), list(target.named_buffers()))

        momentum = self.momentum
        self._ema_(target_params, online_params, momentum)
        if self.buffers_policy == "copy":
            if target_buffers:
                torch._foreach_copy_(target_buffers, online_buffers)
        elif self.buffers_policy == "ema":
            floating = [(t, o) for t, o in zip(target_buffers, online_buffers) if t.is_floating_point()]
            others = [(t, o) for t, o in zip(target_buffers, online_buffers) if not t.is_floating_point()]
            if floating:
                self._ema_([t for t, _ in floating], [o for _, o in floating], momentum)
            for t, o in others:
                t.copy_(o)
        self.step.add_(1)
        return momentum

    @staticmethod
    def _ema_(target: List[Tensor], online: List[Tensor], momentum: float) -> None:
        if not target or momentum == 1.0:
            return  # m = 1 leaves the target exactly as it is
        if momentum == 0.0:
            torch._foreach_copy_(target, online)  # exact copy, also of values where m * theta' would not vanish
            return
        torch._foreach_mul_(target, momentum)
        torch._foreach_add_(target, online, alpha=1.0 - momentum)
