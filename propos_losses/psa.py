"""Positive sampling alignment (ProPos Eq. 9, 10).

BYOL aligns the prediction ``g(q)`` of the online projection ``q = f(x)`` with
the target projection ``z'+ = f'(x+)`` of the other view. ProPos samples a
neighbour of ``q`` instead, with the reparametrisation trick, and aligns its
prediction::

    v     = q + sigma * eps,   eps ~ N(0, I)                            (Eq. 9)
    L_psa = || normalize(g(v)) - normalize(z'+) ||^2 = 2 - 2 cos(g(v), z'+)   (Eq. 10)

averaged over the batch, with the target detached. ``sigma = 0`` is exactly
BYOL's loss (the paper uses ``sigma = 0`` during the learning-rate warm-up) and
noise is drawn only in training mode. The loss is symmetrised, as in BYOL, by
calling it a second time with the two views swapped (see
:meth:`PositiveSamplingAlignment.symmetric`). PSL uses the clean ``q``.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from propos_losses import defaults
from propos_losses._numerics import autocast_enabled, compute_dtype, no_autocast
from propos_losses._validation import check_bool, check_float, check_tensor
from propos_losses.prototypes import normalize_features

__all__ = ["PositiveSamplingAlignment", "PSA", "positive_sampling_alignment"]

# check_projections and alignment_core are the spec and the core of the functional form (used by the module).


def _check_sigma(sigma: object) -> float:
    return check_float("sigma", sigma, minimum=0.0, maximum=defaults.SIGMA_MAX)


def _expected_width(predictor: object) -> Optional[Tuple[int, str]]:
    """Input width of ``predictor`` when its first leaf module states one (``nn.Linear``, ``nn.BatchNorm1d``)."""
    if not isinstance(predictor, nn.Module):
        return None
    for name, module in predictor.named_modules():
        if len(list(module.children())) > 0:
            continue  # a container: look at its first leaf
        if isinstance(module, nn.Linear) and not isinstance(module, nn.LazyLinear):
            return module.in_features, f"{type(module).__name__} {name or 'predictor'} (in_features)"
        if isinstance(module, nn.BatchNorm1d) and not isinstance(module, nn.LazyBatchNorm1d):
            return module.num_features, f"{type(module).__name__} {name or 'predictor'} (num_features)"
        return None
    return None


# Leaf modules that keep the width of their input, so the width of a Sequential's output is that of
# the last layer before them.
_WIDTH_PRESERVING = (
    nn.Identity,
    nn.Dropout,
    nn.ReLU,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Mish,
    nn.Hardswish,
    nn.PReLU,
    nn.LayerNorm,
)


def _output_width(predictor: object) -> Optional[int]:
    """Output width of ``predictor`` when it is known without running it, else ``None``.

    Known for a (non-lazy) ``nn.Linear`` and for an ``nn.Sequential`` (whose
    execution order is its registration order) ending in one, possibly
    followed by ``nn.BatchNorm1d`` or width-preserving activations/dropout.
    Any other module may change the width in ways only its ``forward`` knows.
    """
    if isinstance(predictor, nn.Linear) and not isinstance(predictor, nn.LazyLinear):
        return predictor.out_features
    if isinstance(predictor, nn.BatchNorm1d) and not isinstance(predictor, nn.LazyBatchNorm1d):
        return predictor.num_features
    if isinstance(predictor, nn.Sequential):
        for layer in reversed(list(predictor)):
            if isinstance(layer, (nn.Linear, nn.BatchNorm1d, nn.Sequential)):
                return _output_width(layer)
            if not isinstance(layer, _WIDTH_PRESERVING):
                return None
    return None


def _check_batchnorm_batch_size(predictor: object, batch_size: int) -> None:
    """Refuse a batch of one for a predictor whose BatchNorm would normalise with batch statistics.

    torch raises for it only inside the BatchNorm, after ``num_batches_tracked``
    (and any layer before it) has changed; this raises before the predictor runs.
    """
    if batch_size != 1 or not isinstance(predictor, nn.Module):
        return
    for name, module in predictor.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            # torch's rule (BatchNorm.forward): batch statistics in training mode, or always without running ones.
            if module.training or (module.running_mean is None and module.running_var is None):
                raise ValueError(
                    f"online_projection has batch size 1, but the predictor's {type(module).__name__} "
                    f"{name or 'predictor'} normalises with batch statistics (training mode), which needs "
                    "at least 2 samples: use batches of 2 or more, or put the predictor in eval mode"
                )


def _check_generator(generator: object) -> Optional[torch.Generator]:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def _same_device(a: torch.device, b: torch.device) -> bool:
    # A device without index ("cuda") stands for the current device of its type.
    if a.type != b.type:
        return False
    return a.index is None or b.index is None or a.index == b.index


def _submodules(module: nn.Module) -> List[nn.Module]:
    """``module`` and its submodules in ``module.modules()`` order (pre-order), read from ``_modules``.

    Not ``module.modules()`` itself: torch.compile traces this in every supported
    release, ``named_modules`` only in recent ones.
    """
    order: List[nn.Module] = []
    stack = [module]
    while stack:
        current = stack.pop()
        order.append(current)
        stack.extend(reversed([child for child in current._modules.values() if child is not None]))
    return order


def _module_dtype(module: Callable[[Tensor], Tensor]) -> Optional[torch.dtype]:
    """Dtype of the first floating parameter, else buffer, of ``module`` (None for a plain callable)."""
    if isinstance(module, nn.Module):
        modules = _submodules(module)
        for kind in ("_parameters", "_buffers"):
            for current in modules:
                tensors: Dict[str, Optional[Tensor]] = getattr(current, kind)
                for tensor in tensors.values():
                    if tensor is not None and tensor.is_floating_point():
                        return tensor.dtype
    return None


def positive_sampling_alignment(
    online_projection: Tensor,
    target_projection: Tensor,
    predictor: Callable[[Tensor], Tensor],
    sigma: float = defaults.SIGMA,
    generator: Optional[torch.Generator] = None,
    training: bool = True,
    validate_args: bool = True,
) -> Tensor:
    """Positive sampling alignment loss ``mean_i (2 - 2 cos(g(q_i + sigma eps_i), z'+_i))``.

    The functional twin of :class:`PositiveSamplingAlignment`.

    Args:
        online_projection: ``q``, ``(B, d)`` online projector outputs of one view
            (not normalised), floating, finite, ``B >= 1``.
        target_projection: ``z'+``, ``(B, d')`` target projector outputs of the
            other view, floating, finite; detached here (no gradient flows to it).
        predictor: ``g``, maps ``(B, d)`` to ``(B, d')``; usually an ``nn.Module``.
        sigma: standard deviation of the positive sampling noise, in
            ``[0, defaults.SIGMA_MAX]`` (``1e4``); ``0`` gives exactly BYOL's loss.
        generator: optional :class:`torch.Generator` for reproducible noise, on
            the device of ``online_projection``; ``eps`` is one draw of
            ``torch.randn((B, d), generator=generator)`` in the compute dtype
            (float32, or float64 for float64 inputs). ``None`` uses the global RNG.
        training: draw noise only when ``True`` (evaluation is deterministic).
            No random number is drawn when ``training`` is ``False`` or ``sigma == 0``.
        validate_args: also check that the inputs are finite (one host sync);
            ``False`` keeps the structural checks only (ranks, shapes, batch
            sizes, widths, dtypes, devices, the BatchNorm batch of one) and
            makes no sync: NaN or Inf inputs then give a NaN loss. PSA issues
            no collective either way (under DDP each rank's loss is local).

    Returns:
        A scalar tensor, float32 for float32/half/bfloat16 inputs (and under
        autocast), float64 for float64 inputs. Both sides are normalised
        exactly, so the loss does not depend on the scale of the prediction or
        of ``target_projection`` (however small); zero vectors give a finite
        loss (their cosine counts as 0) with a zero gradient.

    Raises:
        TypeError: a non-tensor or non-floating input, a non-callable
            predictor, a bad ``sigma``/``generator``/``training`` type.
        ValueError: wrong ranks, mismatched batch sizes, an empty batch,
            non-finite values, ``sigma`` outside ``[0, 1e4]``, a generator on
            another device, a projection width that differs from the
            predictor's first ``nn.Linear``/``nn.BatchNorm1d`` input size, a
            ``target_projection`` width that differs from the output of a
            predictor whose last layer tells it (an ``nn.Linear``, or an
            ``nn.Sequential`` ending in one), a batch of one with a BatchNorm
            that uses batch statistics (training mode), or a predictor output
            whose shape differs from ``target_projection``. Every error but
            the last is raised before the predictor runs, so a failing call
            leaves its BatchNorm statistics unchanged.

    Example:
        >>> import torch
        >>> predictor = torch.nn.Linear(8, 8)
        >>> q = torch.randn(4, 8, requires_grad=True)
        >>> z_plus = torch.randn(4, 8)
        >>> loss = positive_sampling_alignment(q, z_plus, predictor, sigma=1e-3)
        >>> loss.shape, bool(0 <= loss <= 4)
        (torch.Size([]), True)
        >>> loss.backward()
    """
    sigma = _check_sigma(sigma)
    generator = _check_generator(generator)
    check_bool("training", training)
    check_bool("validate_args", validate_args)
    check_projections(online_projection, target_projection, predictor, generator, finite=validate_args)
    return alignment_core(online_projection, target_projection, predictor, sigma, generator, training)


def check_projections(
    online_projection: Tensor,
    target_projection: Tensor,
    predictor: Callable[[Tensor], Tensor],
    generator: Optional[torch.Generator],
    *,
    finite: bool,
) -> None:
    """The spec of the projections of :func:`positive_sampling_alignment` (``sigma``, ``generator`` typed already).

    Everything that can be checked before the predictor runs: ranks, batch
    sizes, the predictor's input and output widths, a BatchNorm batch of one,
    the generator's device and, when ``finite``, finite values (one host sync).
    """
    online_projection = check_tensor("online_projection", online_projection, ndim=2, floating=True)
    target_projection = check_tensor("target_projection", target_projection, ndim=2, floating=True)
    if online_projection.shape[0] != target_projection.shape[0]:
        raise ValueError(
            "online_projection and target_projection must have the same batch size, got "
            f"{tuple(online_projection.shape)} and {tuple(target_projection.shape)}"
        )
    if online_projection.shape[0] == 0:
        raise ValueError("online_projection must hold at least one sample, got an empty batch")
    if not callable(predictor):
        raise TypeError(f"predictor must be callable (an nn.Module), got {type(predictor).__name__}")
    # Skipped inside torch.compile (module traversal is not traceable in every release): a width
    # mismatch then fails inside the predictor, as any shape error of compiled code does.
    if not torch.compiler.is_compiling():
        expected = _expected_width(predictor)
        if expected is not None and expected[0] != online_projection.shape[1]:
            raise ValueError(
                f"online_projection has width {online_projection.shape[1]} but the predictor's first layer, "
                f"{expected[1]}, takes {expected[0]} features: online_projection must be the projector output q "
                f"(shape {tuple(online_projection.shape)})"
            )
        width = _output_width(predictor)
        if width is not None and width != target_projection.shape[1]:
            raise ValueError(
                f"predictor output must have the shape of target_projection {tuple(target_projection.shape)}, "
                f"got width {width} (the predictor's last layer)"
            )
        _check_batchnorm_batch_size(predictor, online_projection.shape[0])
    if generator is not None and not _same_device(generator.device, online_projection.device):
        raise ValueError(f"generator is on {generator.device} but online_projection is on {online_projection.device}")
    if finite:
        # One host synchronisation for both finiteness checks.
        both = torch.isfinite(online_projection).all() & torch.isfinite(target_projection).all()
        if not bool(both):
            raise ValueError("online_projection and target_projection must be finite, got NaN or Inf values")


def alignment_core(
    online_projection: Tensor,
    target_projection: Tensor,
    predictor: Callable[[Tensor], Tensor],
    sigma: float,
    generator: Optional[torch.Generator],
    training: bool,
) -> Tensor:
    """Unchecked core of :func:`positive_sampling_alignment` (the caller ran :func:`check_projections`)."""
    # float32 at least: sigma = 1e-3 is below half precision's resolution around 1.
    dtype = compute_dtype(online_projection.dtype)
    v = online_projection.to(dtype)
    if training and sigma > 0:
        eps = torch.randn(v.shape, generator=generator, dtype=dtype, device=v.device)
        v = v + sigma * eps

    if not autocast_enabled(v.device):
        # Without autocast, feed the predictor its own dtype (e.g. a .half() predictor).
        predictor_dtype = _module_dtype(predictor)
        if predictor_dtype is not None:
            v = v.to(predictor_dtype)
    prediction = predictor(v)
    if not isinstance(prediction, Tensor) or prediction.shape != target_projection.shape:
        shape = tuple(prediction.shape) if isinstance(prediction, Tensor) else type(prediction).__name__
        raise ValueError(
            f"predictor output must have the shape of target_projection {tuple(target_projection.shape)}, got {shape}"
        )

    # The cosine itself always runs in (at least) float32, outside autocast.
    with no_autocast(v.device):
        out_dtype = torch.promote_types(prediction.dtype, dtype)
        # Exact normalisation (no eps clamp): the loss is invariant to the scale of the prediction and
        # of the target however small, and zero vectors give a cosine of 0 with zero gradient.
        p = normalize_features(prediction.to(out_dtype))
        z = normalize_features(target_projection.detach().to(out_dtype))
        return (2 - 2 * (p * z).sum(dim=1)).mean()


class _PredictionTracker:
    """Forward hook on the predictor: weak references to its outputs that are still alive, kept on the PSA module.

    Lets :meth:`PositiveSamplingAlignment.forward` catch a prediction passed
    where the projection belongs. Only weak references: the hook keeps
    neither the loss module nor the output alive.
    """

    def __init__(self, psa: "PositiveSamplingAlignment") -> None:
        self.psa: Callable[[], Optional["PositiveSamplingAlignment"]] = weakref.ref(psa)

    def __getstate__(self) -> Dict[str, Any]:
        return {}  # a weak reference cannot be pickled; the owning PSA re-registers a live tracker

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.psa = _dead_reference

    def __call__(self, module: nn.Module, inputs: Tuple[Any, ...], output: Any) -> None:
        if torch.compiler.is_compiling():
            return  # weak references cannot be traced; compiled code skips the check (see forward)
        psa = self.psa()
        if psa is not None and isinstance(output, Tensor):
            # Every live output, not only the latest: a loop computes p0 and p1 before the loss.
            predictions = psa._predictions
            key = id(output)
            predictions[key] = weakref.ref(output, functools.partial(_forget, predictions, key))


def _dead_reference() -> None:
    return None


def _forget(predictions: Dict[int, "weakref.ref[Tensor]"], key: int, _: object) -> None:
    predictions.pop(key, None)


def _track_predictions(psa: "PositiveSamplingAlignment") -> None:
    # A copied predictor (deepcopy, pickle) brings dead copies of its original's trackers: drop those
    # (and trackers of PSA modules that no longer exist), keep the live ones of other PSA modules.
    hooks = psa.predictor._forward_hooks
    for key in [key for key, hook in hooks.items() if isinstance(hook, _PredictionTracker) and hook.psa() is None]:
        del hooks[key]
    psa.predictor.register_forward_hook(_PredictionTracker(psa))


class PositiveSamplingAlignment(nn.Module):
    """Positive sampling alignment loss of ProPos (Eq. 9, 10); ``sigma = 0`` is BYOL.

    ``L_psa = mean_i (2 - 2 cos(g(q_i + sigma * eps_i), z'+_i))``, ``eps ~ N(0, I)``
    drawn only in training mode. The module **owns** the predictor ``g``, so
    ``psa.predictor.parameters()`` can be given its own learning rate (the
    paper uses 10x).

    A model that already owns its prediction head (lightly's and solo-learn's
    layouts): pass that head, ``PSA(model.prediction_head)``, let the model
    return the projection ``q`` (not the prediction), and optimise
    ``model.parameters()`` only; ``psa.predictor`` is then the same module,
    so do not add ``psa.parameters()`` to the optimiser as well. Passing the
    predictor's own output as ``online_projection`` (the predictor
    applied twice) raises a ``ValueError``.

    Symmetrisation: :meth:`symmetric` sums the loss of both view orders,
    ``psa(q1, z2) + psa(q2, z1)`` (BYOL paper); the ProPos authors and lightly
    *average* them, which :class:`~propos_losses.ProPosLoss` does.

    Under DDP the loss is the mean over the local batch; DDP's gradient
    averaging then yields the global-batch gradient for equal local batch sizes.

    Args:
        predictor: ``g``, an ``nn.Module`` mapping ``(B, d)`` to ``(B, d')``.
        sigma: noise standard deviation in ``[0, 1e4]``; a property that may be
            changed at run time (e.g. ``0`` during the warm-up).
        generator: optional :class:`torch.Generator` (on the inputs' device)
            for reproducible noise; otherwise the global RNG is used.
        validate_args: check that the inputs are finite (one host sync per
            call); ``False`` is the sync-free fast path (a settable
            attribute) that keeps every structural check and skips only the
            finiteness check. The loss issues no collective, so under
            ``torch.distributed`` a rank with bad input raises alone; the
            other ranks then block in DDP's gradient all-reduce, as for any
            exception in one rank's step.

    Raises:
        TypeError: ``predictor`` not an ``nn.Module``, ``sigma`` not a real
            number, ``generator`` not a ``torch.Generator``.
        ValueError: ``sigma`` negative, not finite or above
            ``defaults.SIGMA_MAX`` (``1e4``).

    Example:
        >>> import torch
        >>> psa = PositiveSamplingAlignment(torch.nn.Linear(8, 8), sigma=1e-3)
        >>> q1, q2 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
        >>> z1, z2 = torch.randn(4, 8), torch.randn(4, 8)  # target projections of views 1, 2
        >>> loss = psa(q1, z2) + psa(q2, z1)  # symmetrised, same as psa.symmetric(q1, q2, z1, z2)
        >>> loss.backward()
        >>> psa.sigma = 0.0  # warm-up: plain BYOL
    """

    def __init__(
        self,
        predictor: nn.Module,
        sigma: float = defaults.SIGMA,
        *,
        generator: Optional[torch.Generator] = None,
        validate_args: bool = True,
    ) -> None:
        super().__init__()
        check_bool("validate_args", validate_args)
        self.validate_args = validate_args
        if not isinstance(predictor, nn.Module):
            raise TypeError(f"predictor must be an nn.Module, got {type(predictor).__name__}")
        self.predictor = predictor
        self._sigma = _check_sigma(sigma)
        self._generator = _check_generator(generator)
        self._predictions: Dict[int, "weakref.ref[Tensor]"] = {}
        _track_predictions(self)

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state["_predictions"] = {}  # weak references cannot be copied or pickled
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[no-untyped-call]
        _track_predictions(self)

    @property
    def sigma(self) -> float:
        """Standard deviation of the positive sampling noise (``>= 0``)."""
        return self._sigma

    @sigma.setter
    def sigma(self, value: float) -> None:
        self._sigma = _check_sigma(value)

    @property
    def generator(self) -> Optional[torch.Generator]:
        """The :class:`torch.Generator` of the noise, or ``None`` for the global RNG."""
        return self._generator

    @generator.setter
    def generator(self, value: Optional[torch.Generator]) -> None:
        self._generator = _check_generator(value)

    def extra_repr(self) -> str:
        return f"sigma={self._sigma}"

    def forward(self, online_projection: Tensor, target_projection: Tensor) -> Tensor:
        """Loss of one view order.

        Args:
            online_projection: ``q``, ``(B, d)`` online projector outputs of view 1.
            target_projection: ``z'+``, ``(B, d')`` target projector outputs of
                view 2 (detached here).

        Returns:
            Scalar float32 loss (float64 for float64 inputs), in ``[0, 4]``.

        Raises:
            ValueError: ``online_projection`` is an output of
                ``self.predictor`` (the prediction passed instead of the
                projection, so the predictor would run twice), besides the
                errors of :func:`positive_sampling_alignment`.
        """
        self.check_forward(online_projection, target_projection, finite=self.validate_args)
        return self.unchecked_forward(online_projection, target_projection)

    def check_forward(self, online_projection: Tensor, target_projection: Tensor, *, finite: bool) -> None:
        """The spec of :meth:`forward`, run before the predictor (``finite``: also the finiteness check, a host sync)."""
        seen = None if torch.compiler.is_compiling() else self._predictions.get(id(online_projection))
        if seen is not None and seen() is online_projection:
            raise ValueError(
                "online_projection is the output of psa.predictor: pass the projection q = f(x), not the "
                "prediction g(q) (PSA applies the predictor itself; a model that owns its prediction head "
                "should return the projection, see the drop-in guide)"
            )
        check_projections(online_projection, target_projection, self.predictor, self._generator, finite=finite)

    def unchecked_forward(self, online_projection: Tensor, target_projection: Tensor) -> Tensor:
        """Unchecked core of :meth:`forward`: the caller ran :meth:`check_forward` (e.g. :class:`~propos_losses.ProPosLoss`)."""
        return alignment_core(
            online_projection, target_projection, self.predictor, self._sigma, self._generator, self.training
        )

    def symmetric(
        self,
        online_projection_1: Tensor,
        online_projection_2: Tensor,
        target_projection_1: Tensor,
        target_projection_2: Tensor,
    ) -> Tensor:
        """Symmetrised loss ``forward(q1, z'2) + forward(q2, z'1)`` over both view orders.

        Args:
            online_projection_1: ``(B, d)`` online projections of view 1.
            online_projection_2: ``(B, d)`` online projections of view 2.
            target_projection_1: ``(B, d')`` target projections of view 1.
            target_projection_2: ``(B, d')`` target projections of view 2.

        Returns:
            Scalar loss, in ``[0, 8]``.

        Example:
            >>> psa = PositiveSamplingAlignment(torch.nn.Linear(3, 3), sigma=0.0)
            >>> q1, q2, z1, z2 = torch.randn(4, 2, 3).unbind(0)  # four (2, 3) batches
            >>> bool(psa.symmetric(q1, q2, z1, z2) == psa(q1, z2) + psa(q2, z1))
            True
        """
        first: Tensor = self(online_projection_1, target_projection_2)
        second: Tensor = self(online_projection_2, target_projection_1)
        return first + second


#: Short alias used throughout the paper and the docs.
PSA = PositiveSamplingAlignment
