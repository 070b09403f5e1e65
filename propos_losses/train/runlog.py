"""The run's machine-readable log, ``metrics.jsonl``: one JSON record per line (docs/trainer.rst, "Resume")."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict

from propos_losses.train.checkpoint import CheckpointError

__all__ = ["MetricsLog"]


class MetricsLog:
    """A run's ``metrics.jsonl`` and how much of it the next checkpoint covers.

    Every rank counts the records (``lines``); the writing rank (rank 0) appends them and counts their
    ``size`` in bytes. Both go into the checkpoint; :meth:`restore` / :meth:`truncate` bring the file back
    to what a checkpoint covers (an interrupted epoch's records, a torn last line are cut off).

    Args:
        path: the log file.
        write: whether this process writes it (rank 0).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     log = MetricsLog(Path(tmp) / "metrics.jsonl", write=True)
        ...     log.append({"epoch": 1})
        ...     log.lines, log.size
        (1, 13)
    """

    def __init__(self, path: Path, *, write: bool) -> None:
        self.path = Path(path)
        self.write = bool(write)
        self.lines = 0
        self.size = 0

    def append(self, record: Dict[str, Any]) -> None:
        """Count ``record`` and, on the writing rank, append it as one JSON line (sorted keys)."""
        self.lines += 1
        if self.write:
            line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
            with open(self.path, "ab") as fh:
                fh.write(line)
            self.size += len(line)

    def sync(self) -> None:
        """Make the appended records durable (before the checkpoint that counts them is written)."""
        if self.write and self.path.exists():
            with open(self.path, "ab") as fh:
                os.fsync(fh.fileno())

    def restore(self, lines: int, size: int) -> None:
        """Take a checkpoint's counts; the writer checks that the file holds them (a torn last line lies after).

        Raises:
            CheckpointError: the file holds fewer complete records than ``lines`` (lost or edited).
        """
        if self.write:
            data = self.path.read_bytes() if self.path.exists() else b""
            complete = data.count(b"\n")
            if len(data) < size or data.count(b"\n", 0, size) != lines or (size and data[size - 1 : size] != b"\n"):
                raise CheckpointError(
                    f"{str(self.path)!r} holds {complete} complete records but the checkpoint expects "
                    f"{lines} ({size} bytes); the log was lost or edited"
                )
        self.lines, self.size = lines, size

    def truncate(self) -> None:
        """Drop what was written after the restored counts (an interrupted epoch, a torn line), durably."""
        if self.write and self.path.exists() and self.path.stat().st_size > self.size:
            with open(self.path, "r+b") as fh:
                fh.truncate(self.size)
                fh.flush()
                os.fsync(fh.fileno())
