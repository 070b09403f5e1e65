"""Comparison of our k-means runs with the baselines, shared by ``bench_kmeans.py`` and ``report.py``."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

#: Methods that are ours (compared with the others, which are the baselines).
OURS_PREFIX = "ours"
#: Every method of ``bench_kmeans.py``, in table order.
METHODS = ("ours", "ours-sampled", "sklearn", "faiss")


def baselines(entry: Dict[str, Any], entries: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The baseline runs (scikit-learn, faiss) on the same data set and ``K`` as ``entry``."""
    return [
        e
        for e in entries
        if (e["data"], e["k"]) == (entry["data"], entry["k"]) and not e["method"].startswith(OURS_PREFIX)
    ]


def compare(entry: Dict[str, Any], entries: List[Dict[str, Any]]) -> Optional[Dict[str, float]]:
    """How one of our runs compares with the baselines of its data set and ``K``.

    Returns ``None`` for a baseline run or when no baseline was measured, else
    ``inertia_ratio`` (our cosine inertia over the lower of the baselines'),
    ``wall_speedup`` and ``cpu_speedup`` (the faster baseline's seconds over
    ours; a value of 10 means ten times faster than the faster baseline).
    """
    others = baselines(entry, entries)
    if not entry["method"].startswith(OURS_PREFIX) or not others:
        return None
    return {
        "inertia_ratio": entry["cosine_inertia"] / min(e["cosine_inertia"] for e in others),
        "wall_speedup": min(e["wall_s"] for e in others) / entry["wall_s"],
        "cpu_speedup": min(e["cpu_s"] for e in others) / entry["cpu_s"],
    }


def table_order(entry: Dict[str, Any]) -> Tuple[str, int, int]:
    """Sort key of the tables: data set, ``K``, then :data:`METHODS` order (unknown methods last)."""
    method = entry["method"]
    return entry["data"], entry["k"], METHODS.index(method) if method in METHODS else len(METHODS)


def format_comparison(
    entry: Dict[str, Any], entries: List[Dict[str, Any]], ratio_digits: int, speed_digits: int
) -> Tuple[str, str, str]:
    """:func:`compare` as table cells (inertia ratio, wall and CPU speed-ups); empty for baselines."""
    comparison = compare(entry, entries)
    if comparison is None:
        return "", "", ""
    return (
        f"{comparison['inertia_ratio']:.{ratio_digits}f}",
        f"{comparison['wall_speedup']:.{speed_digits}f}x",
        f"{comparison['cpu_speedup']:.{speed_digits}f}x",
    )
