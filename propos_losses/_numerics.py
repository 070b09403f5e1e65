"""Precision rules shared by the losses and the diagnostics: the compute dtype and the one way to turn autocast off.

Every loss computes in float32 (float64 inputs stay float64) with autocast
disabled, so that half-precision training does not change its numerics.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

__all__ = ["compute_dtype", "autocast_enabled", "no_autocast"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (gradcheck, oracles); half, bfloat16 and float32 are computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _autocast_supported(device_type: str) -> bool:
    """Whether ``torch.is_autocast_enabled(device_type)`` can be asked (it raises for e.g. ``"meta"``)."""
    try:
        torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False
    return True


# Answered once per device type, outside any torch.compile trace: the query itself is not
# traceable in every torch release (a graph break in 2.4), a lookup in this dict is.
_AUTOCAST_SUPPORTED = {t: _autocast_supported(t) for t in ("cpu", "cuda", "xpu", "mps", "hpu", "meta")}


def autocast_enabled(device: torch.device) -> bool:
    """Whether autocast is on for ``device``'s type (``False`` where the type has no autocast)."""
    supported = _AUTOCAST_SUPPORTED.get(device.type)
    if supported is None:
        supported = _AUTOCAST_SUPPORTED.setdefault(device.type, _autocast_supported(device.type))
    return supported and torch.is_autocast_enabled(device.type)


def no_autocast(device: torch.device) -> ContextManager[object]:
    """Context that disables autocast on ``device`` where it is on (a no-op elsewhere)."""
    if autocast_enabled(device):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()
