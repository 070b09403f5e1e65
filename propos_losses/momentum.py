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
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import torch
from torch import Tensor, nn

from propos_losses import defaults
from propos_losses._validation import check_float, check_int, checked_state_dict

__all__ = ["MomentumUpdater", "BufferPolicy"]

#: What :meth:`MomentumUpdater.update` does with the target's buffers (e.g. BatchNorm statistics).
BufferPolicy = Literal["copy", "ema", "none"]
_BUFFER_POLICIES: Tuple[str, ...] = ("copy", "ema", "none")

ModuleT = TypeVar("ModuleT", bound=nn.Module)
#: One module, or an equal-length sequence of modules updated together as one step.
Modules = Union[nn.Module, Sequence[nn.Module]]


def _unwrap(module: nn.Module) -> nn.Module:
    """The user's model inside DDP / DataParallel / ``torch.compile`` wrappers."""
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            module = module._orig_mod  # type: ignore[assignment]
        else:
            return module


def _as_module_list(name: str, modules: object) -> List[nn.Module]:
    """``modules`` (one module or a list/tuple of modules) as a list of unwrapped modules."""
    if isinstance(modules, nn.Module):
        return [_unwrap(modules)]
    if not isinstance(modules, (list, tuple)):
        raise TypeError(f"{name} must be an nn.Module or a list/tuple of nn.Modules, got {type(modules).__name__}")
    if not modules:
        raise ValueError(f"{name} must hold at least one module, got an empty {type(modules).__name__}")
    for position, module in enumerate(modules):
        if not isinstance(module, nn.Module):
            raise TypeError(f"{name}[{position}] must be an nn.Module, got {type(module).__name__}")
    return [_unwrap(module) for module in modules]


def _named(modules: List[nn.Module], kind: str) -> List[Tuple[str, Tensor]]:
    """Named parameters or buffers of every module, names prefixed by the module's position when several."""
    named: List[Tuple[str, Tensor]] = []
    for position, module in enumerate(modules):
        prefix = f"[{position}]." if len(modules) > 1 else ""
        items = module.named_parameters() if kind == "parameter" else module.named_buffers()
        named.extend((prefix + name, tensor) for name, tensor in items)
    return named


def _paired(
    kind: str, online: List[Tuple[str, Tensor]], target: List[Tuple[str, Tensor]]
) -> Tuple[List[Tensor], List[Tensor]]:
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

    * ``"none"`` (default): leave the target's buffers alone, so the target
      keeps its own BatchNorm statistics (from the batches it sees in train
      mode). This is what BYOL, lightly and the ProPos authors do;
    * ``"copy"``: copy every buffer from the online network (the default of
      0.1.0, which measurably hurts clustering: see :doc:`/dropin`);
    * ``"ema"``: EMA of floating-point buffers with the same ``m_t``, integer
      buffers (e.g. ``num_batches_tracked``) copied.

    Several module pairs (lightly/solo-learn keep a momentum copy of the
    backbone and of the projection head): pass equal-length lists,
    ``update([backbone, head], [backbone_m, head_m])``. That is ONE step of
    the schedule; calling ``update`` once per pair would advance it twice.

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
        buffers: the buffer policy, ``"none"`` (default), ``"copy"`` or ``"ema"``.

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
        buffers: BufferPolicy = "none",
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
        # Host-side copy of `step`, so that update() never reads the device (no sync per step).
        # It follows load_state_dict; change the step only through update() or load_state_dict().
        self._step_count = 0

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
        return self.momentum_at(self._step_count)

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
    def update(self, online: Modules, target: Modules) -> float:
        """EMA step ``theta' <- m_t theta' + (1 - m_t) theta``, then ``t <- t + 1``.

        Args:
            online: the online network (a DDP/DataParallel wrapper is
                unwrapped), or a list/tuple of online modules.
            target: the target network, with the same parameter (and, unless
                ``buffers="none"``, buffer) names, shapes, dtypes and devices;
                a list/tuple of the same length when ``online`` is one.

        Returns:
            The momentum ``m_t`` that was applied (for logging).

        Raises:
            TypeError: ``online`` or ``target`` (or an element) not an ``nn.Module``.
            ValueError: sequences of different lengths or empty, networks that
                differ in names, shapes, dtypes or devices, or a target that is
                an online module; nothing is changed then.

        Example:
            >>> backbone, head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)
            >>> backbone_m, head_m = MomentumUpdater.make_target(backbone), MomentumUpdater.make_target(head)
            >>> updater = MomentumUpdater(total_steps=10)
            >>> m = updater.update([backbone, head], [backbone_m, head_m])  # one step for both pairs
            >>> int(updater.step)
            1
        """
        online_modules = _as_module_list("online", online)
        target_modules = _as_module_list("target", target)
        if len(online_modules) != len(target_modules):
            raise ValueError(
                f"online and target must hold the same number of modules, got {len(online_modules)} and "
                f"{len(target_modules)}"
            )
        online_ids = {id(module) for module in online_modules}
        if any(id(module) in online_ids for module in target_modules):
            raise ValueError("online and target must be different modules (see MomentumUpdater.make_target)")
        if len({id(module) for module in target_modules}) != len(target_modules):
            raise ValueError("target must not hold the same module twice (it would be averaged twice in one step)")
        online_params, target_params = _paired(
            "parameter", _named(online_modules, "parameter"), _named(target_modules, "parameter")
        )
        # Empty and meta tensors have no storage address to compare (data_ptr 0).
        online_storage = {p.untyped_storage().data_ptr() for p in online_params if p.untyped_storage().data_ptr()}
        if any(p.untyped_storage().data_ptr() in online_storage for p in target_params):
            raise ValueError(
                "target shares parameter storage with online (e.g. made with copy.copy); the EMA would "
                "rescale the online weights: make the target with MomentumUpdater.make_target or copy.deepcopy"
            )
        online_buffers: List[Tensor] = []
        target_buffers: List[Tensor] = []
        if self.buffers_policy != "none":
            online_buffers, target_buffers = _paired(
                "buffer", _named(online_modules, "buffer"), _named(target_modules, "buffer")
            )

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
        self._step_count += 1
        return momentum

    def _state_problem(self, state_dict: Mapping[str, Any], prefix: str) -> Optional[str]:
        """Why ``state_dict``'s ``step`` cannot be this updater's, or ``None`` (absent: the key checks' to report).

        ``step`` must be one non-negative integer (shape ``()`` or ``(1,)``);
        steps beyond ``total_steps`` are valid (the final momentum is kept).
        """
        step = state_dict.get(prefix + "step")
        if step is None:
            return None
        problem = None
        if not isinstance(step, Tensor):
            problem = f"step must be a tensor, got {type(step).__name__}"
        elif (
            step.dim() > 1
            or step.numel() != 1
            or step.is_floating_point()
            or step.is_complex()
            or step.dtype == torch.bool
        ):
            problem = f"step must be a single integer, got a {step.dtype} tensor of shape {tuple(step.shape)}"
        elif int(step) < 0:
            problem = f"step must be >= 0, got {int(step)}"
        return None if problem is None else f"{prefix}{problem}; the updater was left unchanged"

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load a saved step, all or nothing.

        The whole state dict is checked before anything changes: with
        ``strict``, missing and unexpected keys; ``step`` one integer
        ``>= 0`` (beyond ``total_steps`` is fine: the final momentum is kept).
        On any problem a :class:`RuntimeError` is raised and the updater is
        left as it was. The updater keeps a copy of ``step``, never the
        caller's tensor (also with ``assign=True``), and reads it back once
        here, so that :meth:`update` never syncs.

        Args:
            state_dict: a mapping from :meth:`state_dict`.
            strict: require exactly the key ``step`` (torch's meaning).
            assign: torch's ``assign``.

        Returns:
            torch's ``NamedTuple`` of missing and unexpected keys.

        Raises:
            TypeError: ``state_dict`` not a mapping.
            RuntimeError: any problem above; nothing was changed.

        Example:
            >>> updater = MomentumUpdater(total_steps=10)
            >>> _ = updater.load_state_dict({"step": torch.tensor(4)})
            >>> int(updater.step), updater.momentum == updater.momentum_at(4)
            (4, True)
        """
        checked = checked_state_dict(self, state_dict, strict=strict, assign=assign)
        return super().load_state_dict(checked, strict=strict, assign=assign)

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Also reached when the updater is part of a larger module, whose load_state_dict is torch's.
        problem = self._state_problem(state_dict, prefix)
        if problem is not None:
            error_msgs = args[-1] if args else kwargs["error_msgs"]
            error_msgs.append(problem)
            return
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._step_count = int(self.step)  # one sync per load, none per update

    @staticmethod
    def _ema_(target: List[Tensor], online: List[Tensor], momentum: float) -> None:
        if not target or momentum == 1.0:
            return  # m = 1 leaves the target exactly as it is
        if momentum == 0.0:
            torch._foreach_copy_(target, online)  # exact copy, also of values where m * theta' would not vanish
            return
        torch._foreach_mul_(target, momentum)
        torch._foreach_add_(target, online, alpha=1.0 - momentum)
