"""The run's machine-readable log, ``metrics.jsonl``: one JSON record per line.

Rank 0 appends; the checkpoint records how many lines and bytes of the log it
covers, the log is fsynced before each checkpoint, and on resume anything
after those bytes (an interrupted epoch's records, a torn last line) is cut
off, so the log always matches the checkpoint it resumes from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

from propos_losses.train.checkpoint import CheckpointError

__all__ = ["METRICS_NAME", "MetricsLog", "append_record", "sync_log", "checked_log_length", "truncate_log"]

METRICS_NAME = "metrics.jsonl"


def append_record(path: Path, record: Dict[str, Any]) -> int:
    """Append ``record`` as one JSON line (sorted keys) to ``path``; returns the bytes written.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     append_record(Path(tmp) / METRICS_NAME, {"epoch": 1})
        13
    """
    line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    with open(path, "ab") as fh:
        fh.write(line)
    return len(line)


def sync_log(path: Path) -> None:
    """Make what was appended to ``path`` durable (``fsync``); nothing to do when it does not exist."""
    if path.exists():
        with open(path, "ab") as fh:
            os.fsync(fh.fileno())


def checked_log_length(path: Path, keep_lines: int, keep_bytes: Optional[int]) -> int:
    """Bytes of the log that a checkpoint covers; anything after them is an interrupted epoch's.

    ``keep_bytes`` is ``None`` for checkpoints of format 1, which counted lines
    only. A torn last line (killed mid-write) lies after the covered bytes and
    is dropped on resume.

    Raises:
        CheckpointError: the log holds fewer complete records than the
            checkpoint covers (lost or edited).
    """
    data = path.read_bytes() if path.exists() else b""
    if keep_bytes is None:  # format 1: count complete lines
        keep_bytes = 0
        for _ in range(keep_lines):
            end = data.find(b"\n", keep_bytes)
            if end < 0:
                keep_bytes = -1
                break
            keep_bytes = end + 1
    complete = data.count(b"\n")
    if (
        keep_bytes < 0
        or len(data) < keep_bytes
        or data.count(b"\n", 0, keep_bytes) != keep_lines
        or (keep_bytes and data[keep_bytes - 1 : keep_bytes] != b"\n")
    ):
        raise CheckpointError(
            f"{str(path)!r} holds {complete} complete records but the checkpoint expects {keep_lines} "
            f"({keep_bytes} bytes); the log was lost or edited"
        )
    return keep_bytes


def truncate_log(path: Path, size: int) -> None:
    """Cut ``path`` back to ``size`` bytes (durably) when it is longer."""
    if path.exists() and path.stat().st_size > size:
        with open(path, "r+b") as fh:
            fh.truncate(size)
            fh.flush()
            os.fsync(fh.fileno())


class MetricsLog:
    """A run's ``metrics.jsonl`` and how much of it the next checkpoint covers.

    Every rank counts the records (``lines``); only the writing rank (rank 0)
    appends them and counts their ``size`` in bytes. Both go into the
    checkpoint, and :meth:`restore` / :meth:`truncate` bring the file back to
    exactly what a checkpoint covers.

    Args:
        path: the log file.
        write: whether this process writes it (rank 0).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     log = MetricsLog(Path(tmp) / METRICS_NAME, write=True)
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
        """Count ``record`` and, on the writing rank, append it as one JSON line."""
        self.lines += 1
        if self.write:
            self.size += append_record(self.path, record)

    def sync(self) -> None:
        """Make the appended records durable (before the checkpoint that counts them is written)."""
        if self.write:
            sync_log(self.path)

    def restore(self, lines: int, size: Optional[int]) -> None:
        """Take a checkpoint's counts (``size`` is ``None`` for format 1); the writer checks the file holds them.

        Raises:
            CheckpointError: the file holds fewer complete records than ``lines``.
        """
        if self.write:
            size = checked_log_length(self.path, int(lines), size)
        self.lines, self.size = int(lines), int(size or 0)

    def truncate(self) -> None:
        """Drop what was written after the restored counts (an interrupted epoch, a torn line)."""
        if self.write:
            truncate_log(self.path, self.size)
