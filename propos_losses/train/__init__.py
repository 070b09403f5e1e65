"""Reference ProPos trainer (``propos-train``).

An end-to-end example of the library: the paper's EM loop (k-means E-step on
target projector features, PSA + ``lambda_psl`` x PSL M-step, momentum target)
with presets, a command line, atomic checkpoints with bit-for-bit resume on CPU,
JSONL logs, plots and ``torchrun`` support. The trainer only uses the public API
of :mod:`propos_losses`; nothing in the library imports this package.

Run ``propos-train --help`` or ``python -m propos_losses.train --help``.
"""

from propos_losses.train.checkpoint import CheckpointError, load_checkpoint
from propos_losses.train.cli import main
from propos_losses.train.config import PRESETS, ConfigError, TrainConfig, resolve_config
from propos_losses.train.trainer import Trainer

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
