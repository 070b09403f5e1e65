"""The one description of the machine that every benchmark stores with its results (``"machine"`` in the JSON).

Keys: ``date_utc``, ``platform``, ``cpu`` (model name), ``cpu_count``,
``torch_threads``, ``OMP_NUM_THREADS``, ``loadavg`` (1, 5 and 15 minutes, when
the OS reports it: a busy shared machine shows here), ``python``, ``torch``,
``numpy``, ``device`` and, on CUDA, ``gpu``; a benchmark adds its own keys
through ``extra``. ``report.py`` prints them with :func:`describe`.
"""

from __future__ import annotations

import datetime
import os
import platform
from typing import Any, Dict, Optional

import numpy as np
import torch

__all__ = ["machine_info", "describe"]

#: The keys :func:`describe` prints, in order (older result files used some others, shown too).
_SHOWN = (
    "date_utc",
    "date",
    "cpu",
    "processor",
    "cpu_count",
    "torch_threads",
    "threads",
    "OMP_NUM_THREADS",
    "loadavg",
    "device",
    "gpu",
    "torch",
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: Optional[str] = None, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """What the machine was when a benchmark ran (see the module docstring for the keys)."""
    info: Dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": str(device) if device is not None else "cpu",
    }
    if hasattr(os, "getloadavg"):
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(str(device)))
    info.update(extra or {})
    return info


def describe(info: Dict[str, Any]) -> str:
    """One line ``key=value, ...`` of the keys that describe the machine."""
    return ", ".join(f"{key}={info[key]}" for key in _SHOWN if info.get(key) is not None)
