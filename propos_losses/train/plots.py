"""Plots of a finished run, ``metrics.png`` and ``cluster_sizes.png`` (needs matplotlib; skipped without it).

Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     plot_run(tmp)   # nothing to plot in an empty directory
    []
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List

__all__ = ["plot_run", "read_metrics"]


def read_metrics(path: str | os.PathLike) -> List[Dict[str, Any]]:
    """Records of a ``metrics.jsonl`` log (an empty list when the file is missing).

    Example:
        >>> read_metrics("/nonexistent/metrics.jsonl")
        []
    """
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def plot_run(run_dir: str | os.PathLike) -> List[Path]:
    """Draw ``metrics.png`` (losses, learning rate and scores per epoch) and ``cluster_sizes.png`` (final clusters).

    Returns the files written: none when matplotlib is missing or the run holds no log.
    """
    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    if not records:
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on servers
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written: List[Path] = []
    epochs = [r for r in records if r.get("event") == "epoch"]
    evals = [r for r in records if r.get("event") in ("estep", "eval", "final")]
    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(11, 4))
    x = [r["epoch"] for r in epochs]
    for key in ("loss", "psa", "psl"):
        ax_loss.plot(x, [r[key] for r in epochs], label=key)
    ax_loss.set(xlabel="epoch", ylabel="loss")
    ax_lr = ax_loss.twinx()
    ax_lr.plot(x, [r["lr"] for r in epochs], color="grey", linestyle=":", label="lr")
    ax_lr.set_ylabel("learning rate")
    ax_loss.legend(loc="upper right")
    for key in ("backbone_nmi", "backbone_acc", "projector_nmi", "projector_acc"):
        points = [(r["epoch"], r[key]) for r in evals if key in r]
        if points:
            ax_eval.plot(*zip(*points), marker=".", label=key)
    ax_eval.set(xlabel="epoch", ylabel="score")
    if ax_eval.lines:
        ax_eval.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(run_dir / "metrics.png", dpi=100)
    plt.close(fig)
    written.append(run_dir / "metrics.png")

    assignments = run_dir / "assignments.csv"
    if assignments.is_file():
        with open(assignments, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        fig, ax = plt.subplots(figsize=(6, 4))
        for column in ("cluster_backbone", "cluster_projector"):
            counts = Counter(row[column] for row in rows)
            ax.plot(sorted(counts.values(), reverse=True), marker="o", label=column)
        ax.set(xlabel="cluster (sorted by size)", ylabel="samples")
        ax.legend()
        fig.tight_layout()
        fig.savefig(run_dir / "cluster_sizes.png", dpi=100)
        plt.close(fig)
        written.append(run_dir / "cluster_sizes.png")
    return written
