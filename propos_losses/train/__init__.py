"""Reference ProPos trainer (``propos-train``).

An end-to-end example of the library: the paper's EM loop with presets, a command
line, checkpoints with bit-for-bit resume, logs, plots and ``torchrun`` support, on the
public API of :mod:`propos_losses` only (nothing in the library imports this package).

Run ``propos-train --help`` or ``python -m propos_losses.train --help``.
"""

# Imported on first use (PEP 562): the console script (propos_losses.train.__main__.launch)
# imports torch itself, inside its Ctrl-C guard.
import importlib
from typing import TYPE_CHECKING, Any, Dict, List

if TYPE_CHECKING:
    from propos_losses.train.checkpoint import CheckpointError, load_checkpoint
    from propos_losses.train.cli import main
    from propos_losses.train.config import PRESETS, ConfigError, TrainConfig, resolve_config
    from propos_losses.train.trainer import Trainer

_EXPORTS: Dict[str, str] = {
    "main": "cli",
    "PRESETS": "config",
    "ConfigError": "config",
    "TrainConfig": "config",
    "resolve_config": "config",
    "CheckpointError": "checkpoint",
    "Trainer": "trainer",
    "load_checkpoint": "checkpoint",
}
__all__ = [
    "main",
    "PRESETS",
    "ConfigError",
    "TrainConfig",
    "resolve_config",
    "CheckpointError",
    "Trainer",
    "load_checkpoint",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"propos_losses.train.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'propos_losses.train' has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
