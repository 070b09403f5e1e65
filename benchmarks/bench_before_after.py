"""Benchmark: this checkout against an earlier commit, side by side in one process.

Loads ``propos_losses`` twice (the working tree and ``git archive <ref>`` in a
temporary directory) and times, alternating old and new call by call so that
machine noise hits both alike:

* PSL forward + backward (``PrototypeScatteringLoss``, ``d = 256``) over
  ``K``, batch ``B``, queue ``Q``, checked (``validate_args=True``) and fast path;
* ``spherical_kmeans`` on a fixed random ``20,000 x 256`` float32 matrix
  (``K = 10`` and ``100``, ``n_init = 10``, same seed), with a check that the
  inertias agree.

Prints a table (minimum and median milliseconds, new/old ratio of the
minima) and writes ``benchmarks/results/bench_before_after.json``.

Usage::

    python benchmarks/bench_before_after.py --old e11d8dc --threads 1
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from types import ModuleType
from typing import Any, Callable, Dict, List, Tuple

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from _machine import machine_info  # noqa: E402


def load(root: str) -> Tuple[ModuleType, ModuleType]:
    """``propos_losses.psl`` and ``propos_losses.kmeans`` imported from ``root`` (a fresh copy of the package)."""
    for name in [m for m in sys.modules if m == "propos_losses" or m.startswith("propos_losses.")]:
        del sys.modules[name]
    sys.path.insert(0, root)
    try:
        psl, kmeans = importlib.import_module("propos_losses.psl"), importlib.import_module("propos_losses.kmeans")
    finally:
        sys.path.remove(root)
    if not psl.__file__.startswith(root):
        raise RuntimeError(f"imported {psl.__file__}, expected a module under {root}")
    return psl, kmeans


def alternate(calls: List[Callable[[], Any]], repeats: int) -> List[List[float]]:
    """Milliseconds of each call, run ``repeats`` times in alternating order (old, new / new, old)."""
    times: List[List[float]] = [[] for _ in calls]
    for rep in range(repeats):
        order = range(len(calls)) if rep % 2 == 0 else reversed(range(len(calls)))
        for i in order:
            start = time.perf_counter()
            calls[i]()
            times[i].append((time.perf_counter() - start) * 1e3)
    return times


def summary(samples: List[float], skip: int) -> Dict[str, float]:
    kept = sorted(samples[skip:])
    return {"min_ms": kept[0], "median_ms": kept[len(kept) // 2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True, help="git ref of the 'before' package")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=25, help="PSL calls per side (the first 3 are warm-up)")
    parser.add_argument("--kmeans-repeats", type=int, default=3)
    parser.add_argument("--output", default=os.path.join(HERE, "results", "bench_before_after.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    old_ref, new_ref = (
        subprocess.run(
            ["git", "rev-parse", "--short", ref], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout.strip()
        for ref in (args.old, "HEAD")
    )
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "archive", args.old, "propos_losses"], cwd=ROOT, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        old = load(tmp)
        new = load(ROOT)
        rows: List[Dict[str, Any]] = []
        print(f"old {old_ref} vs new {new_ref} (working tree), {args.threads} thread(s)")
        print(f"{'case':<34} {'old min':>9} {'new min':>9} {'new/old':>8} {'old med':>9} {'new med':>9}")
        d = 256
        for K in (10, 200, 1000):
            for B in (256, 1024):
                for Q in (0, 10240):
                    for validate in (True, False):
                        g = torch.Generator().manual_seed(0)
                        online = torch.randn(B, d, generator=g, requires_grad=True)
                        target = torch.randn(B, d, generator=g)
                        labels = torch.randint(0, K, (B,), generator=g)
                        idx = torch.arange(B)
                        mods = []
                        for m in (old[0], new[0]):
                            psl = m.PrototypeScatteringLoss(K, queue_size=Q, feature_dim=d, validate_args=validate)
                            fill = torch.Generator().manual_seed(1)
                            for _ in range(0, Q, B):
                                psl(
                                    torch.randn(B, d, generator=fill),
                                    torch.randn(B, d, generator=fill),
                                    torch.randint(0, K, (B,), generator=fill),
                                    idx,
                                )
                            mods.append(psl)
                        calls = [lambda p=p: p(online, target, labels, idx).backward() for p in mods]
                        t_old, t_new = (summary(t, 3) for t in alternate(calls, args.repeats))
                        case = f"PSL K={K} B={B} Q={Q} {'checked' if validate else 'fast'}"
                        rows.append({"case": case, "old": t_old, "new": t_new})
        X = torch.nn.functional.normalize(torch.randn(20_000, 256, generator=torch.Generator().manual_seed(2)), dim=1)
        for K in (10, 100):
            results: List[Any] = [None, None]

            def fit(i: int, K: int = K) -> None:
                results[i] = (old, new)[i][1].spherical_kmeans(X, K, n_init=10, random_state=0)

            t_old, t_new = (summary(t, 0) for t in alternate([lambda: fit(0), lambda: fit(1)], args.kmeans_repeats))
            inertia = [float(r.inertia) for r in results]
            rows.append({"case": f"spherical_kmeans 20000x256 K={K}", "old": t_old, "new": t_new, "inertia": inertia})
        for row in rows:
            o, n = row["old"], row["new"]
            row["ratio"] = n["min_ms"] / o["min_ms"]
            print(
                f"{row['case']:<34} {o['min_ms']:>9.2f} {n['min_ms']:>9.2f} {row['ratio']:>8.2f} "
                f"{o['median_ms']:>9.2f} {n['median_ms']:>9.2f}"
                + (f"  inertia {row['inertia']}" if "inertia" in row else "")
            )
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump(
            {"machine": machine_info("cpu"), "old": old_ref, "new": new_ref, "threads": args.threads, "rows": rows},
            handle,
            indent=1,
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
