"""Benchmark: our batched spherical k-means vs scikit-learn and faiss on MNIST.

Data: the 70,000 MNIST images (train + test) from ``--data-dir``, as raw
784-d pixels and as their 256-d PCA projection, rows L2-normalised. For each
``K`` (10 and 100) it runs, with ``n_init = 10``, ``max_iter = 300``,
``tol = 1e-4``:

* ``ours``: :class:`propos_losses.kmeans.SphericalKMeans` (float32, on ``--device``);
* ``ours-sampled``: the same with ``sample_size = --rows-per-cluster * K``
  (default 500 rows per cluster; restarts on a random subsample, the winner
  iterated on all rows);
* ``sklearn``: ``sklearn.cluster.KMeans(n_init=10)`` on the normalised rows
  (Euclidean k-means; its partition is scored with its mean directions);
* ``faiss``: ``faiss.Kmeans(d, K, niter=300, nredo=10, spherical=True)`` when
  faiss is installed (its defaults train on at most 256 rows per centroid).

Every method is scored the same way: the cosine inertia
``sum_i (1 - cos(x_i, c_{a_i}))`` of its labels with its centres
L2-normalised, and the NMI of its labels against the digit classes
(``sklearn.metrics.normalized_mutual_info_score``). Wall-clock and process CPU
seconds are both recorded, with ``other_cpu_s``: the CPU seconds other
processes used during the run (from ``/proc/stat``; a busy machine inflates
both timings, unevenly between methods, so compare runs where it is near 0).
Each entry also records the iterations the method ran (faiss: summed over its
restarts, on its ``256 * K``-row training subsample); ours also record
``predict_s``, the seconds of one assignment of every row to the fitted
centres (``SphericalKMeans.predict``: the least any method that labels every
row must spend once), and ``ours-sampled`` the inertia of the subsample's
winner on all rows before its full-data iterations (``first_full_inertia``).

Results are printed as a table and merged into
``benchmarks/results/bench_kmeans.json`` (entries measured now replace those
with the same data set, ``K`` and method; the others are kept), with machine
information and the date.

``--synthetic-large`` instead runs only ``ours`` on two synthetic problems
meant for a GPU: 1,281,167 x 256 with K = 1,000 (ImageNet-1k scale) and
60,000 x 512 with K = 10.

Examples::

    python benchmarks/bench_kmeans.py                      # everything (sklearn at K=100 takes minutes)
    python benchmarks/bench_kmeans.py --quick              # K = 10 only
    python benchmarks/bench_kmeans.py --skip sklearn faiss # only ours, keeping the stored baselines
    python benchmarks/bench_kmeans.py --synthetic-large --device cuda
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _compare import METHODS, format_comparison, table_order  # noqa: E402
from _mnist import DEFAULT_DATA_DIR, load_mnist  # noqa: E402

from propos_losses.defaults import KMEANS_MAX_ITER, KMEANS_N_INIT, KMEANS_TOL  # noqa: E402
from propos_losses.kmeans import SphericalKMeans  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_kmeans.json")
PCA_DIM = 256
#: Default rows per cluster of the ``ours-sampled`` runs (``sample_size = ROWS_PER_CLUSTER * K``):
#: at 500, MNIST K = 10 and K = 100 stay within 0.1% of scikit-learn's inertia (fewer rows did not at
#: K = 10: 256 per cluster gave 0.17% more).
ROWS_PER_CLUSTER = 500
#: (N, d, K) of the ``--synthetic-large`` runs: ImageNet-1k scale, and a CIFAR-like feature set.
SYNTHETIC_RUNS = ((1_281_167, 256, 1000), (60_000, 512, 10))


def machine_info(device: str) -> Dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: Dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    try:
        import sklearn

        info["sklearn"] = sklearn.__version__
    except ImportError:
        pass
    try:
        import faiss

        info["faiss"] = faiss.__version__
    except ImportError:
        pass
    return info


def normalise(X: np.ndarray) -> np.ndarray:
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def mnist_sets(data_dir: str) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    images, labels = load_mnist(data_dir)
    pixels = images.astype(np.float64) / 255.0
    centred = pixels - pixels.mean(axis=0)
    # PCA via the eigenvectors of the 784 x 784 covariance (deterministic, no sampling).
    _, vectors = np.linalg.eigh(centred.T @ centred)
    projected = centred @ vectors[:, ::-1][:, :PCA_DIM]
    return {"mnist-784": normalise(pixels), f"mnist-pca{PCA_DIM}": normalise(projected)}, labels


def cosine_inertia(X: np.ndarray, centers: np.ndarray, labels: np.ndarray) -> float:
    unit_centers = centers / np.linalg.norm(centers, axis=1, keepdims=True)
    cos = np.einsum("ij,ij->i", X.astype(np.float64), unit_centers[labels].astype(np.float64))
    return float((1.0 - cos).sum())


def busy_cpu_seconds() -> float:
    """CPU seconds all processes of the machine have been busy since boot (``/proc/stat``; NaN elsewhere)."""
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()[1:]
    except OSError:
        return math.nan
    # user nice system idle iowait irq softirq steal: everything but idle and iowait is busy.
    busy = sum(int(v) for i, v in enumerate(fields[:8]) if i not in (3, 4))
    return busy / os.sysconf("SC_CLK_TCK")


def timed(fn: Callable[[], Any], device: str) -> Tuple[Any, float, float, float]:
    """``fn()``, its wall and process CPU seconds, and the CPU seconds other processes used meanwhile."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall, cpu, busy = time.perf_counter(), time.process_time(), busy_cpu_seconds()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    cpu = time.process_time() - cpu
    return out, time.perf_counter() - wall, cpu, max(0.0, busy_cpu_seconds() - busy - cpu)


def run_ours(X: np.ndarray, k: int, device: str, args: argparse.Namespace, sampled: bool = False) -> Dict[str, Any]:
    data = torch.from_numpy(X).to(device)
    km = SphericalKMeans(
        k, n_init=KMEANS_N_INIT, max_iter=KMEANS_MAX_ITER, tol=KMEANS_TOL, seed=args.seed,
        sample_size=args.rows_per_cluster * k if sampled else None,
    )
    _, wall, cpu, other = timed(lambda: km.fit(data), device)
    predict_s = min(timed(lambda: km.predict(data), device)[1] for _ in range(3))
    out = {"wall_s": wall, "cpu_s": cpu, "other_cpu_s": other, "centers": km.cluster_centers_.cpu().numpy(),
           "labels": km.labels_.cpu().numpy(), "n_iter": km.n_iter_, "reported_inertia": km.inertia_,
           "predict_s": predict_s}
    if sampled:
        out["sample_size"] = args.rows_per_cluster * k
        out["first_full_inertia"] = km.inertia_history_[0]
    return out


def run_ours_sampled(X: np.ndarray, k: int, device: str, args: argparse.Namespace) -> Dict[str, Any]:
    return run_ours(X, k, device, args, sampled=True)


def run_sklearn(X: np.ndarray, k: int, device: str, args: argparse.Namespace) -> Dict[str, Any]:
    from sklearn.cluster import KMeans

    km = KMeans(k, n_init=KMEANS_N_INIT, max_iter=KMEANS_MAX_ITER, tol=KMEANS_TOL, random_state=args.seed)
    _, wall, cpu, other = timed(lambda: km.fit(X), "cpu")
    return {"wall_s": wall, "cpu_s": cpu, "other_cpu_s": other, "centers": km.cluster_centers_, "labels": km.labels_,
            "n_iter": int(km.n_iter_)}


def run_faiss(X: np.ndarray, k: int, device: str, args: argparse.Namespace) -> Dict[str, Any]:
    import faiss

    km = faiss.Kmeans(X.shape[1], k, niter=KMEANS_MAX_ITER, nredo=KMEANS_N_INIT, spherical=True, seed=args.seed)

    def fit() -> np.ndarray:
        km.train(X)
        return km.index.search(X, 1)[1][:, 0]

    labels, wall, cpu, other = timed(fit, "cpu")
    # faiss stops a restart once its objective stops improving (early_stop_threshold 0), so count
    # the iterations it ran (all restarts together) instead of assuming niter.
    return {"wall_s": wall, "cpu_s": cpu, "other_cpu_s": other, "centers": km.centroids,
            "labels": labels.astype(np.int64),
            "n_iter": len(km.iteration_stats), "train_rows": min(X.shape[0], k * km.cp.max_points_per_centroid)}


#: Method name -> runner ``(X, K, device, args) -> dict``.
RUNNERS: Dict[str, Callable[[np.ndarray, int, str, argparse.Namespace], Dict[str, Any]]] = {
    "ours": run_ours, "ours-sampled": run_ours_sampled, "sklearn": run_sklearn, "faiss": run_faiss,
}


def available(method: str) -> bool:
    if method == "faiss":
        try:
            import faiss  # noqa: F401
        except ImportError:
            return False
    return True


def load_results(path: str) -> Dict[str, Any]:
    if os.path.exists(path):
        with open(path) as handle:
            return json.load(handle)
    return {"mnist": [], "synthetic_large": []}


def merge(entries: List[Dict[str, Any]], new: Dict[str, Any], keys: Tuple[str, ...]) -> None:
    for i, entry in enumerate(entries):
        if all(entry.get(key) == new[key] for key in keys):
            entries[i] = new
            return
    entries.append(new)


def print_table(entries: List[Dict[str, Any]]) -> None:
    header = (
        f"{'data':<13} {'K':>4} {'method':<12} {'wall s':>9} {'cpu s':>9} {'cos inertia':>13} "
        f"{'vs best other':>13} {'wall x':>8} {'cpu x':>8} {'NMI':>6} {'iters':>6} {'other s':>7}"
    )
    print(header)
    print("-" * len(header))
    for entry in sorted(entries, key=table_order):
        ratio, wall_speed, cpu_speed = format_comparison(entry, entries, ratio_digits=5, speed_digits=1)
        print(
            f"{entry['data']:<13} {entry['k']:>4} {entry['method']:<12} {entry['wall_s']:>9.2f} {entry['cpu_s']:>9.2f} "
            f"{entry['cosine_inertia']:>13.2f} {ratio:>13} {wall_speed:>8} {cpu_speed:>8} {entry['nmi']:>6.4f} "
            f"{entry['n_iter']:>6} {entry.get('other_cpu_s', math.nan):>7.2f}"
        )


def bench_mnist(args: argparse.Namespace, results: Dict[str, Any], info: Dict[str, Any]) -> None:
    from sklearn.metrics import normalized_mutual_info_score

    sets, truth = mnist_sets(args.data_dir)
    ks = [10] if args.quick else args.k
    methods = [m for m in METHODS if m not in args.skip and available(m)]
    for name in args.datasets:
        X = sets[name]
        for k in ks:
            for method in methods:
                device = args.device if method.startswith("ours") else "cpu"
                out = RUNNERS[method](X, k, device, args)
                entry = {
                    "data": name, "n": int(X.shape[0]), "d": int(X.shape[1]), "k": k, "method": method,
                    "device": device, "wall_s": out["wall_s"], "cpu_s": out["cpu_s"],
                    "cosine_inertia": cosine_inertia(X, out["centers"], out["labels"]),
                    "nmi": float(normalized_mutual_info_score(truth, out["labels"])), "n_iter": out["n_iter"],
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "machine": info, "other_cpu_s": out["other_cpu_s"],
                }
                for key in ("predict_s", "sample_size", "first_full_inertia", "train_rows"):
                    if key in out:
                        entry[key] = out[key]
                save(results, args.output, "mnist", entry, ("data", "k", "method"))
                print(f"{name} K={k} {method}: {entry['wall_s']:.2f} s, cosine inertia {entry['cosine_inertia']:.2f}, "
                      f"NMI {entry['nmi']:.4f}", flush=True)
    print()
    print_table(results["mnist"])


def synthetic(n: int, d: int, k: int, device: str, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Noisy directions around ``k`` random centres, generated on the device."""
    gen = torch.Generator(device=device).manual_seed(seed)
    centres = torch.randn(k, d, generator=gen, device=device)
    labels = torch.randint(0, k, (n,), generator=gen, device=device)
    X = centres[labels]
    X += 0.5 * torch.randn(n, d, generator=gen, device=device)
    return X, labels


def bench_synthetic(args: argparse.Namespace, results: Dict[str, Any], info: Dict[str, Any]) -> None:
    from sklearn.metrics import normalized_mutual_info_score

    for n, d, k in SYNTHETIC_RUNS:
        X, truth = synthetic(n, d, k, args.device, args.seed)
        km = SphericalKMeans(k, n_init=KMEANS_N_INIT, max_iter=KMEANS_MAX_ITER, tol=KMEANS_TOL, seed=args.seed)
        _, wall, cpu, other = timed(lambda: km.fit(X), args.device)
        entry = {
            "data": f"synthetic-{n}x{d}", "n": n, "d": d, "k": k, "method": "ours", "device": args.device,
            "wall_s": wall, "cpu_s": cpu, "other_cpu_s": other, "cosine_inertia": km.inertia_, "n_iter": km.n_iter_,
            "nmi": float(normalized_mutual_info_score(truth.cpu().numpy(), km.labels_.cpu().numpy())),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "machine": info,
        }
        if args.device.startswith("cuda"):
            entry["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        save(results, args.output, "synthetic_large", entry, ("data", "k", "method", "device"))
        print(f"{entry['data']} K={k}: {wall:.2f} s, cosine inertia {km.inertia_:.2f}, {km.n_iter_} iterations, "
              f"NMI {entry['nmi']:.4f}", flush=True)
        del X, truth, km
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()


def save(results: Dict[str, Any], path: str, section: str, entry: Dict[str, Any], keys: Tuple[str, ...]) -> None:
    """Merge ``entry`` into the file as it is now (another run may have written to it meanwhile)."""
    stored = load_results(path)
    merge(stored.setdefault(section, []), entry, keys)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(stored, handle, indent=1)
    os.replace(tmp, path)
    results[section] = stored[section]  # so that the table shows the other runs' entries too


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="folder with the gzipped MNIST IDX files")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--k", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--datasets", nargs="+", default=["mnist-784", f"mnist-pca{PCA_DIM}"],
                        choices=["mnist-784", f"mnist-pca{PCA_DIM}"])
    parser.add_argument("--skip", nargs="*", default=[], choices=METHODS, help="methods not to run")
    parser.add_argument("--quick", action="store_true", help="K = 10 only")
    parser.add_argument("--synthetic-large", action="store_true", help="the large synthetic runs (ours only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows-per-cluster", type=int, default=ROWS_PER_CLUSTER,
                        help="the ours-sampled runs use sample_size = this * K")
    parser.add_argument("--output", default=RESULTS, help="JSON file to merge the results into")
    args = parser.parse_args(argv)

    results = load_results(args.output)
    info = machine_info(args.device)
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, {info['cpu']}, "
          f"{info['cpu_count']} CPUs, torch {info['torch']}, device {args.device}", flush=True)
    if args.synthetic_large:
        bench_synthetic(args, results, info)
    else:
        bench_mnist(args, results, info)


if __name__ == "__main__":
    main()
