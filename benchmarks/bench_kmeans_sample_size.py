"""Benchmark: which ``sample_size`` should ``SphericalKMeans(sample_size="auto")`` pick?

On MNIST-70k (raw 784-d pixels, rows L2-normalised), ``K`` clusters,
``n_init=10``, the library's other defaults: for each sample size (rows the
restarts run on; the winner is then iterated on all rows) and each seed, the
wall-clock seconds, the process CPU seconds, the CPU seconds other processes
used meanwhile (a busy machine inflates the times: compare rows of one run),
the cosine inertia and the full-data iterations. Prints a table (mean over
seeds per sample size) and writes ``benchmarks/results/bench_kmeans_sample_size.json``.

Usage::

    python benchmarks/bench_kmeans_sample_size.py --data-dir ../shared/data/mnist --threads 2
    python benchmarks/bench_kmeans_sample_size.py --k 100 --sample-sizes 12800 19200 25600 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402
from _mnist import DEFAULT_DATA_DIR  # noqa: E402
from bench_kmeans import busy_cpu_seconds, kmeans_machine_info, mnist_sets, set_threads  # noqa: E402

from propos_losses import spherical_kmeans  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--sample-sizes", type=int, nargs="+", default=[12_800, 19_200, 25_600])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output", default=os.path.join(HERE, "results", "bench_kmeans_sample_size.json"))
    args = parser.parse_args()
    set_threads(args.threads)
    X = mnist_sets(args.data_dir)[0]["mnist-784"]
    runs: List[Dict[str, Any]] = []
    for size in args.sample_sizes:
        for seed in args.seeds:
            wall, cpu, busy = time.perf_counter(), time.process_time(), busy_cpu_seconds()
            fit = spherical_kmeans(X, args.k, n_init=10, random_state=seed, sample_size=size)
            cpu = time.process_time() - cpu
            run = {
                "sample_size": size,
                "seed": seed,
                "wall_s": time.perf_counter() - wall,
                "cpu_s": cpu,
                "other_cpu_s": max(0.0, busy_cpu_seconds() - busy - cpu),
                "inertia": float(fit.inertia),
                "n_iter": int(fit.n_iter),
            }
            runs.append(run)
            print(json.dumps(run), flush=True)
    print(f"\nMNIST-70k raw, K = {args.k}, n_init = 10, {args.threads} threads, seeds {args.seeds}")
    print(f"{'sample_size':>11} {'wall s':>8} {'cpu s':>8} {'other cpu s':>11} {'inertia':>10} {'iters':>6}")
    summary = []
    for size in args.sample_sizes:
        rows = [r for r in runs if r["sample_size"] == size]
        row = {
            key: statistics.mean(r[key] for r in rows)
            for key in ("wall_s", "cpu_s", "other_cpu_s", "inertia", "n_iter")
        }
        row["sample_size"] = size
        summary.append(row)
        print(
            f"{size:>11} {row['wall_s']:>8.2f} {row['cpu_s']:>8.2f} {row['other_cpu_s']:>11.2f} "
            f"{row['inertia']:>10.1f} {row['n_iter']:>6.1f}"
        )
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump(
            {
                "machine": kmeans_machine_info("cpu"),
                "k": args.k,
                "threads": args.threads,
                "runs": runs,
                "summary": summary,
            },
            handle,
            indent=1,
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
