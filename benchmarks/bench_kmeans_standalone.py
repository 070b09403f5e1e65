"""Spherical k-means, ours against faiss, each fit in its own fresh process.

``bench_kmeans.py`` runs every method in one process. There, faiss (its OpenMP
and BLAS pools) shares the process with torch's, and both ran slower than here
(MNIST-70k, K = 100, 2 threads each, 2026-12-05: 30.9 s and 93.0 s in one
process, 19.4 s and 67.9 s with this script). This script starts a new Python
for every fit: the faiss child never imports torch, ours never imports faiss.
Rounds alternate ours and faiss, so that the load of other jobs falls on both
alike.

Data: the 70,000 MNIST images (train + test), raw 784 pixels as float32, rows
L2-normalised. ``ours``: ``SphericalKMeans(n_clusters=K, random_state=seed)``
(the defaults). ``faiss``: ``faiss.Kmeans(784, K, niter=300, nredo=10,
spherical=True, seed=seed)`` (faiss's defaults train on at most 256 rows per
centroid). Each run records its wall and process-CPU seconds, iterations
(faiss: summed over its restarts), threads, the cosine inertia
``sum(1 - max cos)`` of all rows, and the load average before and after.

Usage::

    python benchmarks/bench_kmeans_standalone.py --k 100 --threads 2 --rounds 2

Writes ``benchmarks/results/bench_kmeans_standalone.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _rows(data_dir: str) -> Any:
    """MNIST-70k as float32 unit rows, with NumPy only (``bench_kmeans.mnist_sets`` imports torch)."""
    from _mnist import load_mnist

    images, _ = load_mnist(data_dir)
    X = images.reshape(len(images), -1).astype("float32")
    X /= ((X * X).sum(axis=1, keepdims=True) ** 0.5).astype("float32")
    return X


def child(method: str, k: int, threads: int, seed: int, data_dir: str) -> Dict[str, Any]:
    """One fit in this (fresh) process; returns its record."""
    X = _rows(data_dir)
    if method == "faiss":
        import faiss

        faiss.omp_set_num_threads(threads)
        model = faiss.Kmeans(X.shape[1], k, niter=300, nredo=10, spherical=True, seed=seed)
        start, cpu = time.perf_counter(), time.process_time()
        model.train(X)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        similarity, _ = model.index.search(X, 1)
        record = {
            "n_iter": len(model.iteration_stats),
            "threads": faiss.omp_get_max_threads(),
            "version": faiss.__version__,
        }
        record["train_rows"] = min(X.shape[0], k * model.cp.max_points_per_centroid)
        inertia = float((1.0 - similarity[:, 0].astype("float64")).sum())
    else:
        import torch

        from propos_losses import SphericalKMeans

        torch.set_num_threads(threads)
        rows = torch.from_numpy(X)
        estimator = SphericalKMeans(n_clusters=k, random_state=seed)
        start, cpu = time.perf_counter(), time.process_time()
        estimator.fit(rows)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        record = {"n_iter": int(estimator.n_iter_), "threads": torch.get_num_threads(), "version": torch.__version__}
        inertia = float(estimator.inertia_)
    return {"method": method, "wall_s": wall, "cpu_s": cpu, "cosine_inertia": inertia, **record}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2, help="threads of each fit (torch / faiss OpenMP)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of ours and faiss")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="MNIST IDX directory (default: ../shared/data/mnist)")
    parser.add_argument("--out", default=str(RESULTS / "bench_kmeans_standalone.json"))
    parser.add_argument("--child", choices=("ours", "faiss"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from _mnist import DEFAULT_DATA_DIR

    data_dir = args.data_dir or DEFAULT_DATA_DIR
    if args.child:
        print(json.dumps(child(args.child, args.k, args.threads, args.seed, data_dir)))
        return
    from bench_kmeans import kmeans_machine_info  # the parent only: it imports torch and faiss

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "OPENBLAS_NUM_THREADS": str(args.threads)}
    runs: List[Dict[str, Any]] = []
    for round_index in range(args.rounds):
        for method in ("ours", "faiss"):
            command = [sys.executable, __file__, "--child", method, "--k", str(args.k), "--threads", str(args.threads)]
            command += ["--seed", str(args.seed), "--data-dir", data_dir]
            before = os.getloadavg()
            output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
            record = json.loads(output.strip().splitlines()[-1])
            record.update(round=round_index, loadavg_before=before, loadavg_after=os.getloadavg())
            runs.append(record)
            print(
                f"round {round_index} {method:5s} wall {record['wall_s']:7.2f} s  cpu {record['cpu_s']:7.2f} s  "
                f"iterations {record['n_iter']:4d}  threads {record['threads']}  "
                f"inertia {record['cosine_inertia']:.2f}  load {before[0]:.2f}",
                flush=True,
            )
    best = {m: min(r["wall_s"] for r in runs if r["method"] == m) for m in ("ours", "faiss")}
    print(
        f"\nbest of {args.rounds}: ours {best['ours']:.2f} s, faiss {best['faiss']:.2f} s: {best['faiss'] / best['ours']:.2f}x"
    )
    result = {
        "k": args.k,
        "threads": args.threads,
        "seed": args.seed,
        "machine": kmeans_machine_info("cpu"),
        "runs": runs,
        "best_wall_s": best,
        "speedup_best": best["faiss"] / best["ours"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
