"""Argument checks shared by every module.

Each helper raises a :class:`ValueError` or :class:`TypeError` whose message
names the argument and shows the offending value, so that bad input is caught
before any state changes.
"""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from typing import Any, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "as_label_array",
    "check_bool",
    "check_int",
    "check_float",
    "check_tensor",
    "check_finite",
    "check_integer_dtype",
    "check_labels",
    "check_label_range",
    "check_indices",
    "numpy_labels_as_tensor",
    "label_codes",
    "unique_inverse",
    "checked_state_dict",
]


def check_bool(name: str, value: object, *, allow_none: bool = False) -> Optional[bool]:
    """Return ``value`` if it is a ``bool`` (or ``None`` when allowed), else raise a TypeError naming ``name``.

    The one type check of every flag (``validate_args``, ``training``, ``strict``, ...).
    """
    if allow_none and value is None:
        return None
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be {'None or ' if allow_none else ''}a bool, got {value!r}")
    return value


def check_int(name: str, value: object, *, minimum: Optional[int] = None) -> int:
    """Return ``value`` as an ``int`` if it is an integral number ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_float(
    name: str,
    value: object,
    *,
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
    strict_minimum: bool = False,
) -> float:
    """Return ``value`` as a finite ``float`` inside the given bounds.

    ``strict_minimum`` makes the lower bound exclusive (``value > minimum``).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None:
        if strict_minimum and not value > minimum:
            raise ValueError(f"{name} must be > {minimum}, got {value}")
        if not strict_minimum and value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_tensor(name: str, value: object, *, ndim: Optional[int] = None, floating: bool = False) -> Tensor:
    """Check that ``value`` is a tensor of rank ``ndim`` (and floating point if asked)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if ndim is not None and value.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(value.shape)}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {value.dtype}")
    return value


def check_finite(name: str, value: Tensor) -> None:
    """Raise if ``value`` holds NaN or Inf (one device sync; skipped for empty tensors)."""
    if value.numel() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} must be finite, got NaN or Inf values")


def check_integer_dtype(name: str, value: Tensor) -> None:
    """Raise a TypeError unless ``value`` has an integer dtype (any width, signed or not; not bool)."""
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype, got {value.dtype}")


def check_label_range(name: str, low: int, high: int, num_classes: int, *, bound: str = "", hint: str = "") -> None:
    """Raise a ValueError unless the smallest label ``low`` and the largest ``high`` lie in ``[0, num_classes)``.

    The one label range check of the package (tensors, NumPy arrays, stored
    queue labels). ``bound`` names the limit in the message, e.g.
    ``"num_clusters="`` gives ``"[0, num_clusters=10)"``; ``hint`` is appended
    to the message (e.g. what to do about it).
    """
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(f"{name} must be in [0, {bound}{num_classes}), got label {bad}{hint}")


def check_labels(name: str, labels: Tensor, num_classes: int, *, bound: str = "") -> None:
    """Check an integer label tensor with values in ``[0, num_classes)`` (one host sync).

    ``bound`` as in :func:`check_label_range`.
    """
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer labels, got dtype {labels.dtype}")
    if labels.numel():
        check_label_range(name, int(labels.min()), int(labels.max()), num_classes, bound=bound)


def check_indices(
    name: str, value: object, length: int, *, values: bool = True, upper: Optional[int] = None, upper_name: str = ""
) -> Tensor:
    """The one index check: a ``(length,)`` tensor of any integer dtype, ``>= 0`` (and ``< upper``) when ``values``.

    ``values=False`` keeps the structural checks (type, rank, dtype, length),
    which read nothing back from the device. ``upper_name`` says what
    ``upper`` counts, e.g. ``" (the number of pseudo-labels)"``.
    """
    tensor = check_tensor(name, value, ndim=1)
    check_integer_dtype(name, tensor)
    if tensor.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), got {tuple(tensor.shape)}")
    if values and tensor.numel():
        low = int(tensor.min())
        high = int(tensor.max()) if upper is not None else low
        if upper is not None and (low < 0 or high >= upper):
            raise ValueError(f"{name} must be in [0, {upper}){upper_name}, got {low}..{high}")
        if low < 0:
            raise ValueError(f"{name} must be >= 0, got {low}")
    return tensor


def numpy_labels_as_tensor(name: str, labels: np.ndarray, device: Optional[torch.device] = None) -> Tensor:
    """NumPy integer labels (any width, signed or not) as an int64 tensor on ``device``.

    ``uint64`` values above the int64 range are a ``ValueError`` (they cannot be
    labels in ``[0, K)``); non-integer arrays a ``TypeError``.
    """
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer cluster labels, got NumPy dtype {labels.dtype}")
    if labels.dtype == np.uint64 and labels.size and labels.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} must be in [0, K), got label {labels.max()}")
    tensor = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
    return tensor if device is None else tensor.to(device)


def as_label_array(name: str, labels: object) -> np.ndarray:
    """``labels`` as a non-empty 1-D integer NumPy array on the CPU, or a clear error naming ``name``.

    Accepts NumPy arrays, tensors on any device, lists and object arrays of
    integers (e.g. pandas nullable integer columns), booleans, and floats that
    hold integral values; the metrics and diagnostics take labels through it.

    Args:
        name: the argument's name, for the messages.
        labels: ``(N,)`` labels, ``N >= 1``.

    Returns:
        ``(N,)`` integer array (the input's integer dtype, int64 otherwise).

    Raises:
        TypeError: non-integer labels (complex, strings, objects, non-integral dtypes).
        ValueError: not 1-D, empty, ragged, NaN/Inf, non-integral or beyond int64.

    Example:
        >>> as_label_array("labels", [1.0, 2.0, 2.0])
        array([1, 2, 2])
    """
    if isinstance(labels, torch.Tensor):
        tensor = labels.detach()
        if tensor.is_complex():
            raise TypeError(f"{name} must hold integer labels, got dtype {tensor.dtype}")
        if tensor.is_floating_point():
            # numpy has no bfloat16; float64 holds every other float exactly.
            tensor = tensor.to(torch.float64)
        array = tensor.cpu().numpy()
    else:
        try:
            array = np.asarray(labels)
        except (ValueError, TypeError) as error:  # ragged nested lists
            raise ValueError(f"{name} must be a 1-D array of integer labels: {error}") from None
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(array.shape)}")
    if array.size == 0:
        raise ValueError(f"{name} must not be empty, got 0 labels")
    kind = array.dtype.kind
    if kind == "O":
        # Object arrays of integers (e.g. pandas nullable integer columns): convert, then check as usual.
        if not all(isinstance(value, (int, np.integer)) and not isinstance(value, bool) for value in array.tolist()):
            bad = next(v for v in array.tolist() if not isinstance(v, (int, np.integer)) or isinstance(v, bool))
            raise TypeError(f"{name} must hold integer labels, got an object array containing {bad!r}")
        try:
            array = np.asarray(array.tolist(), dtype=np.int64)
        except OverflowError:
            raise ValueError(f"{name} holds a label too large for int64") from None
        kind = "i"
    if kind == "b":
        return array.astype(np.int64)
    if kind in "iu":
        return array
    if kind == "f":
        array = array.astype(np.float64)  # float16 would overflow comparing against the int64 limit
        if not np.isfinite(array).all():
            raise ValueError(f"{name} must be finite, got NaN or Inf labels")
        integral = array == np.round(array)
        if not integral.all():
            bad = array[~integral][0]
            raise ValueError(f"{name} must hold integral labels, got non-integral value {bad!r}")
        limit = float(np.iinfo(np.int64).max)
        if np.abs(array).max() >= limit:
            raise ValueError(f"{name} holds a label too large for int64: {np.abs(array).max()!r}")
        return array.astype(np.int64)
    raise TypeError(f"{name} must hold integer labels, got dtype {array.dtype}")


def unique_inverse(labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values of ``labels`` and each label's index among them."""
    low = int(labels.min())
    high = int(labels.max())
    span = high - low + 1  # a Python int: no overflow whatever the dtype
    # Counting beats sorting when the label range is comparable to N, which is
    # the usual case (cluster ids in [0, K)); np.unique sorts otherwise.
    if span <= 2 * labels.size + 1024:
        # Subtract in a 64-bit type that holds both labels and `low` (uint64 for
        # unsigned labels, which may exceed int64), never in the labels' own
        # dtype: int8 labels - (-128) would wrap. Every difference lies in
        # [0, span), so the result fits int64 exactly.
        wide = np.uint64 if labels.dtype.kind == "u" else np.int64
        shifted = np.subtract(labels, wide(low), dtype=wide).astype(np.int64, copy=False)
        present = np.bincount(shifted, minlength=span) > 0
        offsets = np.flatnonzero(present)
        position = np.cumsum(present) - 1
        values = np.add(offsets.astype(wide, copy=False), wide(low), dtype=wide)
        return values.astype(labels.dtype, copy=False), position[shifted]
    values, inverse = np.unique(labels, return_inverse=True)
    return values, inverse.reshape(-1).astype(np.int64, copy=False)


def _nonfinite_check(name: str, values: np.ndarray) -> None:
    """scikit-learn's ``check_array`` wording for NaN or infinite labels."""
    if np.isnan(values).any():
        raise ValueError(f"Input {name} contains NaN.")
    if np.isinf(values).any():
        raise ValueError(f"Input {name} contains infinity or a value too large for dtype({str(values.dtype)!r}).")


def label_codes(name: str, labels: object) -> Tuple[np.ndarray, np.ndarray]:
    """Sorted distinct labels ``(R,)`` and each sample's index among them ``(N,)`` int64.

    Numbers (integers, booleans, integral floats; NumPy, lists, tensors on any
    device) go through :func:`propos_losses.utils.as_label_array`. NumPy arrays
    and lists of strings or other objects of one sortable type are accepted as
    scikit-learn accepts them (their sorted distinct values are the labels).
    NaN and infinity raise scikit-learn's ``ValueError`` ("contains NaN").
    """
    if isinstance(labels, torch.Tensor):
        if labels.is_floating_point():
            _nonfinite_check(name, labels.detach().to(torch.float64).cpu().numpy())
        return unique_inverse(as_label_array(name, labels))
    try:
        array = np.asarray(labels)
    except (ValueError, TypeError) as error:  # ragged nested lists
        raise ValueError(f"{name} must be a 1-D array of labels: {error}") from None
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1D: shape is {tuple(array.shape)!r}")
    if array.dtype.kind == "O" and array.size:
        values = array.tolist()
        if all(isinstance(v, (numbers.Number, np.bool_)) and not isinstance(v, complex) for v in values):
            # Numbers held as objects (e.g. pandas nullable columns): checked as numbers, NaN included.
            if any(isinstance(v, (float, np.floating)) for v in values):
                array = np.asarray(values, dtype=np.float64)
                _nonfinite_check(name, array)
            return unique_inverse(as_label_array(name, array))
    if array.dtype.kind in "OUS" and array.size:
        try:
            classes, inverse = np.unique(array, return_inverse=True)
        except TypeError:
            kinds = sorted({type(v).__name__ for v in array.tolist()})
            raise TypeError(
                f"{name} must hold labels of one sortable type (e.g. all int or all str), got a mix of {kinds}"
            ) from None
        return classes, inverse.reshape(-1).astype(np.int64, copy=False)
    if array.dtype.kind == "f":
        _nonfinite_check(name, array)
    return unique_inverse(as_label_array(name, array))


def _key_list(keys: List[str]) -> str:
    return ", ".join(f'"{key}"' for key in keys)


def checked_state_dict(module: nn.Module, state_dict: object, *, strict: bool, assign: bool) -> Mapping[str, Any]:
    """Check a whole state dict for ``module.load_state_dict`` before anything is copied.

    torch's ``load_state_dict`` copies every entry it can and reports the
    problems at the end, so a state dict with one bad entry leaves the module
    half-loaded. This runs every check first and raises the
    :class:`RuntimeError` torch would raise (same message format), so that
    the load itself can no longer fail:

    * with ``strict``, keys missing from or unexpected by ``module.state_dict()``;
    * for ``module`` and each submodule that defines
      ``_state_problem(state_dict, prefix) -> Optional[str]``, the problem it
      finds in its entries (checked as the state the load would produce: an
      entry absent from a non-strict load keeps the module's current value).

    Args:
        module: the module about to load ``state_dict``.
        state_dict: the mapping passed to ``load_state_dict``.
        strict: ``load_state_dict``'s ``strict``.
        assign: ``load_state_dict``'s ``assign``; when ``True`` the tensors are
            cloned, so the module never holds (and later writes into) the
            caller's tensors.

    Returns:
        The mapping to hand to ``nn.Module.load_state_dict`` (``state_dict``
        itself, or a copy with cloned tensors when ``assign``).

    Raises:
        TypeError: ``state_dict`` not a mapping, or ``strict``/``assign`` not bools.
        RuntimeError: the first problem of each kind, as torch words them.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    for name, flag in (("strict", strict), ("assign", assign)):
        check_bool(name, flag)
    errors: List[str] = []
    if strict:
        expected = list(module.state_dict(keep_vars=True))
        missing = [key for key in expected if key not in state_dict]
        known = set(expected)
        unexpected = [key for key in state_dict if key not in known]
        if missing:
            errors.append(f"Missing key(s) in state_dict: {_key_list(missing)}. ")
        if unexpected:
            errors.append(f"Unexpected key(s) in state_dict: {_key_list(unexpected)}. ")
    for name, submodule in module.named_modules():
        check = getattr(submodule, "_state_problem", None)
        if callable(check):
            problem = check(state_dict, f"{name}." if name else "")
            if problem is not None:
                errors.append(str(problem))
    if errors:
        raise RuntimeError(f"Error(s) in loading state_dict for {type(module).__name__}:\n\t" + "\n\t".join(errors))
    if not assign:
        return state_dict  # torch copies into the module's own tensors
    copied: "OrderedDict[str, Any]" = OrderedDict(
        (key, value.detach().clone() if isinstance(value, Tensor) else value) for key, value in state_dict.items()
    )
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        copied._metadata = metadata  # type: ignore[attr-defined]
    return copied
