"""Benchmark: our batched spherical k-means vs scikit-learn and faiss, all methods in one run.

Data sets (rows L2-normalised):

* ``mnist-784`` and ``mnist-pca256``: the 70,000 MNIST images (train + test)
  from ``--data-dir``, as raw 784-d pixels and as their 256-d PCA projection,
  ``K`` = 10 and 100;
* ``mnist-test-784``: the 10,000 test images, raw pixels, ``K = 10``;
* ``synthetic-200000x128``: 200,000 rows of a mixture of 1,000 Gaussian
  directions in 128-d (an E-step-shaped problem), ``K = 1000``.

Every method uses ``n_init = 10``, ``max_iter = 300``, ``tol = 1e-4``:

* ``ours``: what a user gets with the defaults,
  ``SphericalKMeans(K, n_init=10, random_state=0)`` (float32, on ``--device``; the
  default ``sample_size="auto"`` runs the restarts on a subsample);
* ``ours-tuned``: the same with ``sample_size = --rows-per-cluster * K``
  (128 rows per cluster on MNIST, 8 on the synthetic set: cheaper restarts);
* ``sklearn``: ``sklearn.cluster.KMeans(n_init=10)`` on the normalised rows
  (Euclidean k-means; its partition is scored with its mean directions); not
  run on the synthetic set (hours on 2 cores);
* ``faiss``: ``faiss.Kmeans(d, K, niter=300, nredo=10, spherical=True)`` when
  faiss is installed (its defaults train on at most 256 rows per centroid).

Every method is scored the same way: the cosine inertia
``sum_i (1 - cos(x_i, c_{a_i}))`` of its labels with its centres
L2-normalised, and the NMI of its labels against the classes
(``sklearn.metrics.normalized_mutual_info_score``). Wall-clock and process CPU
seconds are both recorded, with ``other_cpu_s``: the CPU seconds other
processes used during the run (from ``/proc/stat``; a busy machine inflates
both timings, unevenly between methods, so compare runs where it is near 0,
and rows of the same run side by side). Each entry also records the
iterations the method ran (faiss: summed over its restarts, on its
``256 * K``-row training subsample); ours also record ``predict_s``, the
seconds of one assignment of every row to the fitted centres
(``SphericalKMeans.predict``: the cost of the final labels step that makes
``labels_ == predict(X)``), and ``sample_size``.

Results are printed as a table and merged into
``benchmarks/results/bench_kmeans.json`` (entries measured now replace those
with the same data set, ``K`` and method; the others are kept), with machine
information and the date.

``--synthetic-large`` instead runs two synthetic problems meant for a GPU:
1,281,167 x 256 with K = 1,000 (ImageNet-1k scale) and 60,000 x 512 with
K = 10, ``ours`` (defaults) against faiss on the GPU when faiss has GPU
support (else ours only); on a CPU-only machine it runs on the CPU.

Each entry also records the threads each method used (``threads``: torch's
for ours, ``faiss.omp_get_max_threads()`` for faiss) and the 1-minute load
average before and after it (``loadavg_before``/``loadavg_after``): on a shared
machine compare entries of the same run only.

``--text`` runs the sparse text benchmark instead: a TF-IDF-like CSR matrix of
30,000 documents x 20,000 terms (about 50 distinct terms per document, 0.24%
density, 20 topics; ``(1 + log tf) * idf`` weights and L2-normalised rows, as
``TfidfVectorizer(sublinear_tf=True)`` gives), ``K = 20``: ours with its
defaults on the CSR matrix, scikit-learn's ``KMeans(n_init=10)`` on the same
CSR matrix, and ours on the densified matrix (to check that the labels are
the same). Each runs in a fresh process with ``--threads`` threads (default
1) that reports its wall and CPU seconds and its peak resident memory above
the data it was given; results go to ``results/bench_kmeans_text.json``.

Examples::

    python benchmarks/bench_kmeans.py                      # everything (sklearn at K=100 takes minutes)
    python benchmarks/bench_kmeans.py --quick              # K = 10 only
    python benchmarks/bench_kmeans.py --skip sklearn faiss # only ours, keeping the stored baselines
    python benchmarks/bench_kmeans.py --datasets synthetic-200000x128
    python benchmarks/bench_kmeans.py --synthetic-large --device cuda
    python benchmarks/bench_kmeans.py --text --threads 1   # sparse TF-IDF-like rows vs scikit-learn
    python benchmarks/bench_kmeans.py --datasets mnist-784 --k 100 --skip sklearn ours-tuned --threads 1
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _compare import format_comparison  # noqa: E402
from _machine import machine_info  # noqa: E402
from _mnist import DEFAULT_DATA_DIR, load_mnist  # noqa: E402

from propos_losses.defaults import KMEANS_MAX_ITER, KMEANS_N_INIT, KMEANS_TOL  # noqa: E402
from propos_losses.kmeans import SphericalKMeans  # noqa: E402
from propos_losses.kmeans._init import auto_sample_size  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_kmeans.json")
PCA_DIM = 256
#: Methods in table order.
METHODS = ("ours", "ours-tuned", "sklearn", "faiss")
#: Rows per cluster of the ``ours-tuned`` runs (``sample_size = rows * K``) on MNIST and on the synthetic set.
ROWS_PER_CLUSTER = 128
SYNTHETIC_ROWS_PER_CLUSTER = 8
#: (N, d, K) of the CPU synthetic data set: an E-step-shaped problem.
SYNTHETIC_CPU = (200_000, 128, 1000)
SYNTHETIC_NAME = "synthetic-200000x128"
DATASETS = ("mnist-784", f"mnist-pca{PCA_DIM}", "mnist-test-784", SYNTHETIC_NAME)
#: (N, d, K) of the ``--synthetic-large`` runs: ImageNet-1k scale, and a CIFAR-like feature set.
SYNTHETIC_RUNS = ((1_281_167, 256, 1000), (60_000, 512, 10))


def kmeans_machine_info(device: str) -> Dict[str, Any]:
    """:func:`_machine.machine_info` with the versions of the baselines (scikit-learn, faiss) when installed."""
    extra: Dict[str, Any] = {}
    try:
        import sklearn

        extra["sklearn"] = sklearn.__version__
    except ImportError:
        pass
    try:
        import faiss

        extra["faiss"] = faiss.__version__
    except ImportError:
        pass
    return machine_info(device, extra=extra)


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


def run_ours(
    X: np.ndarray, k: int, device: str, args: argparse.Namespace, rows_per_cluster: Optional[int] = None
) -> Dict[str, Any]:
    """``SphericalKMeans(k, n_init=10, seed)`` with its defaults, or ``sample_size = rows_per_cluster * k``."""
    data = torch.from_numpy(X).to(device)
    options: Dict[str, Any] = {} if rows_per_cluster is None else {"sample_size": rows_per_cluster * k}
    km = SphericalKMeans(
        k, n_init=KMEANS_N_INIT, max_iter=KMEANS_MAX_ITER, tol=KMEANS_TOL, random_state=args.seed, **options
    )
    _, wall, cpu, other = timed(lambda: km.fit(data), device)
    predict_s = min(timed(lambda: km.predict(data), device)[1] for _ in range(3))
    sample_size = km.sample_size if km.sample_size != "auto" else auto_sample_size(k)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "other_cpu_s": other,
        "centers": km.cluster_centers_.cpu().numpy(),
        "labels": km.labels_.cpu().numpy(),
        "n_iter": km.n_iter_,
        "reported_inertia": km.inertia_,
        "predict_s": predict_s,
        "sample_size": int(sample_size) if sample_size < X.shape[0] else None,
        "threads": torch.get_num_threads(),
    }


def run_ours_tuned(X: np.ndarray, k: int, device: str, args: argparse.Namespace) -> Dict[str, Any]:
    synthetic_set = X.shape[0] == SYNTHETIC_CPU[0] and k == SYNTHETIC_CPU[2]
    return run_ours(X, k, device, args, args.synthetic_rows_per_cluster if synthetic_set else args.rows_per_cluster)


def run_sklearn(X: np.ndarray, k: int, device: str, args: argparse.Namespace) -> Dict[str, Any]:
    from sklearn.cluster import KMeans

    km = KMeans(k, n_init=KMEANS_N_INIT, max_iter=KMEANS_MAX_ITER, tol=KMEANS_TOL, random_state=args.seed)
    _, wall, cpu, other = timed(lambda: km.fit(X), "cpu")
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "other_cpu_s": other,
        "centers": km.cluster_centers_,
        "labels": km.labels_,
        "n_iter": int(km.n_iter_),
    }


def run_faiss(X: np.ndarray, k: int, device: str, args: argparse.Namespace) -> Dict[str, Any]:
    import faiss

    gpu = device.startswith("cuda") and faiss_gpus() > 0
    km = faiss.Kmeans(
        X.shape[1], k, niter=KMEANS_MAX_ITER, nredo=KMEANS_N_INIT, spherical=True, seed=args.seed, gpu=gpu
    )

    def fit() -> np.ndarray:
        km.train(X)
        return km.index.search(X, 1)[1][:, 0]

    labels, wall, cpu, other = timed(fit, device if gpu else "cpu")
    # faiss stops a restart once its objective stops improving (early_stop_threshold 0), so count
    # the iterations it ran (all restarts together) instead of assuming niter.
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "other_cpu_s": other,
        "centers": km.centroids,
        "labels": labels.astype(np.int64),
        "n_iter": len(km.iteration_stats),
        "train_rows": min(X.shape[0], k * km.cp.max_points_per_centroid),
        "threads": int(faiss.omp_get_max_threads()),
    }


#: Method name -> runner ``(X, K, device, args) -> dict``.
RUNNERS: Dict[str, Callable[[np.ndarray, int, str, argparse.Namespace], Dict[str, Any]]] = {
    "ours": run_ours,
    "ours-tuned": run_ours_tuned,
    "sklearn": run_sklearn,
    "faiss": run_faiss,
}


def faiss_gpus() -> int:
    """GPUs faiss can use (0 without faiss, with the CPU-only build or without a GPU)."""
    try:
        import faiss

        return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    except ImportError:
        return 0


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


def table_order(entry: Dict[str, Any]) -> Tuple[int, int, int]:
    """Data sets in :data:`DATASETS` order (others last), then ``K``, then :data:`METHODS` order."""
    data, method = entry["data"], entry["method"]
    return (
        DATASETS.index(data) if data in DATASETS else len(DATASETS),
        entry["k"],
        METHODS.index(method) if method in METHODS else len(METHODS),
    )


def current(entries: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Entries of the methods of this script (older ``ours-sampled`` rows are left out of the tables)."""
    return sorted((e for e in entries if e["method"] in METHODS), key=table_order)


def print_table(entries: List[Dict[str, Any]]) -> None:
    entries = current(entries)
    header = (
        f"{'data':<20} {'K':>4} {'method':<10} {'wall s':>8} {'cpu s':>8} {'cos inertia':>12} "
        f"{'vs best other':>13} {'wall x':>7} {'cpu x':>7} {'NMI':>6} {'iters':>5} {'other s':>7}"
    )
    print(header)
    print("-" * len(header))
    for entry in entries:
        ratio, wall_speed, cpu_speed = format_comparison(entry, entries, ratio_digits=5, speed_digits=2)
        print(
            f"{entry['data']:<20} {entry['k']:>4} {entry['method']:<10} {entry['wall_s']:>8.2f} {entry['cpu_s']:>8.2f} "
            f"{entry['cosine_inertia']:>12.1f} {ratio:>13} {wall_speed:>7} {cpu_speed:>7} {entry['nmi']:>6.4f} "
            f"{entry['n_iter']:>5} {entry.get('other_cpu_s', math.nan):>7.2f}"
        )


def markdown_table(entries: List[Dict[str, Any]]) -> str:
    """The table of :func:`print_table` in Markdown, with the subsample sizes and the dates."""
    entries = current(entries)
    header = (
        "| data | K | method | wall s | CPU s | cosine inertia | inertia ratio | wall x | CPU x | NMI | "
        "iterations | predict s | other CPU s | measured (UTC) |"
    )
    lines = [header, "|" + "---|" * 14]
    for r in entries:
        ratio, wall_speed, cpu_speed = format_comparison(r, entries, ratio_digits=4, speed_digits=2)
        method = r["method"] + (f" ({r['sample_size']:,} rows)" if r.get("sample_size") else "")
        predict = f"{r['predict_s']:.3f}" if "predict_s" in r else ""
        lines.append(
            f"| {r['data']} | {r['k']} | {method} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['cosine_inertia']:.1f} | "
            f"{ratio} | {wall_speed} | {cpu_speed} | {r['nmi']:.4f} | {r['n_iter']} | {predict} | "
            f"{r.get('other_cpu_s', math.nan):.2f} | {r.get('date', '')[:16]} |"
        )
    return "\n".join(lines) + "\n"


def bench_cpu(args: argparse.Namespace, results: Dict[str, Any], info: Dict[str, Any]) -> None:
    """Every method on every data set of ``args.datasets``, one after the other, in this process."""
    from sklearn.metrics import normalized_mutual_info_score

    methods = [m for m in METHODS if m not in args.skip and available(m)]
    mnist: Optional[Tuple[Dict[str, np.ndarray], np.ndarray]] = None
    for name in args.datasets:
        if name == SYNTHETIC_NAME:
            n, d, k_synthetic = SYNTHETIC_CPU
            data, labels = synthetic(n, d, k_synthetic, "cpu", args.seed)
            X, truth, ks = normalise(data.numpy()), labels.numpy(), [k_synthetic]
        else:
            if mnist is None:
                mnist = mnist_sets(args.data_dir)
            sets, all_truth = mnist
            if name == "mnist-test-784":  # the last 10,000 rows are the test set
                X, truth, ks = sets["mnist-784"][60_000:], all_truth[60_000:], [10]
            else:
                X, truth, ks = sets[name], all_truth, ([10] if args.quick else args.k)
        for k in ks:
            for method in methods:
                if method == "sklearn" and name == SYNTHETIC_NAME:
                    continue  # hours on 2 cores
                device = args.device if method.startswith("ours") else "cpu"
                load_before = [round(x, 2) for x in os.getloadavg()]
                out = RUNNERS[method](X, k, device, args)
                out["loadavg_before"], out["loadavg_after"] = load_before, [round(x, 2) for x in os.getloadavg()]
                entry = {
                    "data": name,
                    "n": int(X.shape[0]),
                    "d": int(X.shape[1]),
                    "k": k,
                    "method": method,
                    "device": device,
                    "wall_s": out["wall_s"],
                    "cpu_s": out["cpu_s"],
                    "cosine_inertia": cosine_inertia(X, out["centers"], out["labels"]),
                    "nmi": float(normalized_mutual_info_score(truth, out["labels"])),
                    "n_iter": out["n_iter"],
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "machine": info,
                    "other_cpu_s": out["other_cpu_s"],
                }
                for key in ("predict_s", "sample_size", "train_rows", "threads", "loadavg_before", "loadavg_after"):
                    if out.get(key) is not None:
                        entry[key] = out[key]
                save(results, args.output, "mnist", entry, ("data", "k", "method"))
                print(
                    f"{name} K={k} {method}: {entry['wall_s']:.2f} s (CPU {entry['cpu_s']:.2f} s, other processes "
                    f"{entry['other_cpu_s']:.2f} s), cosine inertia {entry['cosine_inertia']:.2f}, "
                    f"NMI {entry['nmi']:.4f}, {entry['n_iter']} iterations, {entry.get('threads')} thread(s), "
                    f"load {entry['loadavg_before'][0]} -> {entry['loadavg_after'][0]}",
                    flush=True,
                )
    print()
    print_table(results["mnist"])
    if args.markdown:
        print()
        print(markdown_table(results["mnist"]))


def synthetic(n: int, d: int, k: int, device: str, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Noisy directions around ``k`` random centres, generated on the device."""
    gen = torch.Generator(device=device).manual_seed(seed)
    centres = torch.randn(k, d, generator=gen, device=device)
    labels = torch.randint(0, k, (n,), generator=gen, device=device)
    X = centres[labels]
    X += 0.5 * torch.randn(n, d, generator=gen, device=device)
    return X, labels


def bench_synthetic(args: argparse.Namespace, results: Dict[str, Any], info: Dict[str, Any]) -> None:
    """The GPU-sized problems: ours with its defaults, and faiss (on the GPU when it can) when installed."""
    from sklearn.metrics import normalized_mutual_info_score

    methods = [m for m in ("ours", "faiss") if m not in args.skip and available(m)]
    if "faiss" in methods and args.device.startswith("cuda") and faiss_gpus() == 0:
        # faiss's CPU build on ImageNet-sized data takes a long time and compares nothing with a GPU.
        print("faiss has no GPU support here (pip install faiss-gpu-cu12): ours only", flush=True)
        methods.remove("faiss")
    for n, d, k in args.synthetic_sizes:
        data, labels = synthetic(n, d, k, args.device, args.seed)
        X = torch.nn.functional.normalize(data, dim=1)
        del data
        X_host, truth = X.cpu().numpy(), labels.cpu().numpy()
        for method in methods:
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            if method == "ours":
                km = SphericalKMeans(
                    k, n_init=KMEANS_N_INIT, max_iter=KMEANS_MAX_ITER, tol=KMEANS_TOL, random_state=args.seed
                )
                _, wall, cpu, other = timed(functools.partial(km.fit, X), args.device)
                centers, assigned, n_iter = km.cluster_centers_.cpu().numpy(), km.labels_.cpu().numpy(), km.n_iter_
                device = args.device
            else:
                out = run_faiss(X_host, k, args.device, args)
                wall, cpu, other = out["wall_s"], out["cpu_s"], out["other_cpu_s"]
                centers, assigned, n_iter = out["centers"], out["labels"], out["n_iter"]
                device = args.device if args.device.startswith("cuda") and faiss_gpus() > 0 else "cpu"
            entry = {
                "data": f"synthetic-{n}x{d}",
                "n": n,
                "d": d,
                "k": k,
                "method": method,
                "device": device,
                "wall_s": wall,
                "cpu_s": cpu,
                "other_cpu_s": other,
                "n_iter": n_iter,
                "cosine_inertia": cosine_inertia(X_host, centers, assigned),
                "nmi": float(normalized_mutual_info_score(truth, assigned)),
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "machine": info,
            }
            if method == "ours" and args.device.startswith("cuda"):
                entry["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            save(results, args.output, "synthetic_large", entry, ("data", "k", "method", "device"))
            print(
                f"{entry['data']} K={k} {method} on {device}: {wall:.2f} s, cosine inertia "
                f"{entry['cosine_inertia']:.2f}, {n_iter} iterations, NMI {entry['nmi']:.4f}",
                flush=True,
            )
        del X, X_host, truth, labels
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------- sparse text (--text)

#: (N documents, vocabulary size, K) of the ``--text`` benchmark, and the word draws per document
#: (about 50 distinct terms of 20,000: ~0.25% density, as TF-IDF rows of short documents).
TEXT_SHAPE = (30_000, 20_000, 20)
TEXT_TERMS_PER_DOC = 64
#: Share of a document's words drawn from its topic's words (the rest from the whole vocabulary).
TEXT_TOPIC_SHARE = 0.15
TEXT_METHODS = ("ours", "sklearn", "ours-dense")
TEXT_RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_kmeans_text.json")


def tfidf_like(n: int, d: int, n_topics: int, terms: int, seed: int) -> Tuple[Any, np.ndarray]:
    """A TF-IDF-like CSR matrix ``(n, d)`` float64 with L2-normalised rows (as ``TfidfVectorizer`` gives) and topics.

    Each document has a topic; its ``terms`` word draws come with probability
    ``TEXT_TOPIC_SHARE`` from its topic's Zipf-distributed words (``d / n_topics`` of them) and
    otherwise from a Zipf distribution over the whole vocabulary (shared
    stop-word-like terms). Counts are weighted ``(1 + log tf) * idf`` with the
    smooth idf of scikit-learn, then rows are L2-normalised.
    """
    import scipy.sparse
    from sklearn.preprocessing import normalize

    rng = np.random.default_rng(seed)
    topic = rng.integers(0, n_topics, size=n)
    block = d // n_topics
    ranks = np.arange(1, block + 1, dtype=np.float64)
    topic_p = (1.0 / ranks) / (1.0 / ranks).sum()
    global_ranks = np.arange(1, d + 1, dtype=np.float64)
    global_p = (1.0 / global_ranks**1.1) / (1.0 / global_ranks**1.1).sum()
    own = topic[:, None] * block + rng.choice(block, size=(n, terms), p=topic_p)
    shared = rng.permutation(d)[rng.choice(d, size=(n, terms), p=global_p)]
    words = np.where(rng.random((n, terms)) < TEXT_TOPIC_SHARE, own, shared)
    rows = np.repeat(np.arange(n), terms)
    counts = scipy.sparse.csr_matrix((np.ones(n * terms), (rows, words.reshape(-1))), shape=(n, d))
    counts.sum_duplicates()
    df = np.bincount(counts.indices, minlength=d)
    idf = np.log((1 + n) / (1 + df)) + 1
    counts.data = (1 + np.log(counts.data)) * idf[counts.indices]
    return normalize(counts, norm="l2", copy=False), topic


def sparse_cosine_inertia(X: Any, centers: np.ndarray, labels: np.ndarray) -> float:
    """``sum_i (1 - cos(x_i, c_{a_i}))`` of unit sparse rows without densifying them."""
    unit_centers = centers / np.linalg.norm(centers, axis=1, keepdims=True)
    cos = np.asarray(X @ unit_centers.T)[np.arange(X.shape[0]), labels]
    return float((1.0 - cos).sum())


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (GiB; Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def text_run_one(args: argparse.Namespace) -> None:
    """One method of ``--text`` in this (fresh) process, so that its peak memory is its own; writes ``--text-out``."""
    n, d, k = args.text_shape
    X, _ = tfidf_like(n, d, k, TEXT_TERMS_PER_DOC, args.seed)
    method = args.text_one
    if method == "ours-dense":
        X = X.toarray()
    baseline = peak_rss_gib()
    load_before = os.getloadavg()
    if method == "sklearn":
        from sklearn.cluster import KMeans

        km = KMeans(k, n_init=KMEANS_N_INIT, max_iter=KMEANS_MAX_ITER, tol=KMEANS_TOL, random_state=args.seed)
        _, wall, cpu, other = timed(lambda: km.fit(X), "cpu")
        centers, labels, n_iter = km.cluster_centers_, km.labels_.astype(np.int64), int(km.n_iter_)
    else:
        ours = SphericalKMeans(k, random_state=args.seed)  # the defaults: n_init=10, max_iter=300, tol=1e-4
        _, wall, cpu, other = timed(lambda: ours.fit(X), "cpu")
        centers, labels, n_iter = np.asarray(ours.cluster_centers_), np.asarray(ours.labels_), ours.n_iter_
    out = {
        "method": method,
        "wall_s": wall,
        "cpu_s": cpu,
        "other_cpu_s": other,
        "n_iter": n_iter,
        "threads": torch.get_num_threads(),
        "data_gib": (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 2**30
        if hasattr(X, "indptr")
        else X.nbytes / 2**30,
        "peak_extra_gib": peak_rss_gib() - baseline,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    np.savez(args.text_out + ".npz", centers=centers, labels=labels)
    with open(args.text_out + ".json", "w") as handle:
        json.dump(out, handle)


def bench_text(args: argparse.Namespace, results: Dict[str, Any], info: Dict[str, Any]) -> None:
    """Sparse TF-IDF-like documents: ours on CSR, scikit-learn's KMeans on CSR, ours on the densified matrix.

    Each method runs in a fresh process (``--threads`` each; generation not timed) that reports its wall
    and CPU seconds and its peak memory above the data it was given.
    """
    import subprocess
    import tempfile

    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    n, d, k = args.text_shape
    X, topics = tfidf_like(n, d, k, TEXT_TERMS_PER_DOC, args.seed)
    print(f"TF-IDF-like {n} x {d}, {X.nnz} stored values ({100 * X.nnz / (n * d):.3f}% density), K = {k}", flush=True)
    runs: Dict[str, Dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for method in [m for m in TEXT_METHODS if m not in args.skip]:
            stem = os.path.join(folder, method)
            command = [
                sys.executable,
                os.path.abspath(__file__),
                "--text-one",
                method,
                "--text-out",
                stem,
                "--text-shape",
                f"{n}x{d}x{k}",
                "--seed",
                str(args.seed),
                "--threads",
                str(args.threads or 1),
            ]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads or 1), "MKL_NUM_THREADS": str(args.threads or 1)}
            subprocess.run(command, check=True, env=env)
            with open(stem + ".json") as handle:
                run = json.load(handle)
            arrays = np.load(stem + ".npz")
            run["cosine_inertia"] = sparse_cosine_inertia(X, arrays["centers"], arrays["labels"])
            run["nmi"] = float(normalized_mutual_info_score(topics, arrays["labels"]))
            run["labels"] = arrays["labels"]
            runs[method] = run
            print(
                f"{method}: {run['wall_s']:.2f} s (CPU {run['cpu_s']:.2f} s, other processes {run['other_cpu_s']:.2f} s, "
                f"{run['threads']} thread(s)), cosine inertia {run['cosine_inertia']:.3f}, {run['n_iter']} iterations, "
                f"NMI {run['nmi']:.4f}, data {run['data_gib']:.3f} GiB, peak extra {run['peak_extra_gib']:.3f} GiB, "
                f"load {run['loadavg_before'][0]} -> {run['loadavg_after'][0]}",
                flush=True,
            )
    if "ours-dense" in runs and "ours" in runs:
        same = runs["ours"]["labels"] == runs["ours-dense"]["labels"]
        runs["ours"]["same_labels_as_dense"] = float(same.mean())
        runs["ours"]["ari_vs_dense"] = float(adjusted_rand_score(runs["ours"]["labels"], runs["ours-dense"]["labels"]))
    if "sklearn" in runs and "ours" in runs:
        runs["ours"]["speedup_vs_sklearn"] = runs["sklearn"]["wall_s"] / runs["ours"]["wall_s"]
        runs["ours"]["inertia_ratio_vs_sklearn"] = runs["ours"]["cosine_inertia"] / runs["sklearn"]["cosine_inertia"]
    for run in runs.values():
        entry = {key: value for key, value in run.items() if key != "labels"}
        entry.update(
            {
                "data": f"tfidf-like-{n}x{d}",
                "n": n,
                "d": d,
                "k": k,
                "nnz": int(X.nnz),
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "machine": info,
            }
        )
        save(results, args.text_output, "text", entry, ("data", "k", "method"))
    ours = runs.get("ours", {})
    print()
    for key in ("speedup_vs_sklearn", "inertia_ratio_vs_sklearn", "same_labels_as_dense", "ari_vs_dense"):
        if key in ours:
            print(f"{key}: {ours[key]:.4f}")


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


def set_threads(n: int) -> None:
    """One thread budget for torch, faiss and the BLAS/OpenMP pools scikit-learn uses."""
    torch.set_num_threads(n)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:
        pass


def parse_size(text: str) -> Tuple[int, int, int]:
    """``"NxDxK"`` -> ``(N, D, K)``."""
    try:
        n, d, k = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NxDxK, e.g. 60000x512x10, got {text!r}") from None
    return n, d, k


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="folder with the gzipped MNIST IDX files")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--k", type=int, nargs="+", default=[10, 100], help="K of mnist-784 and mnist-pca256")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--skip", nargs="*", default=[], choices=METHODS, help="methods not to run")
    parser.add_argument("--quick", action="store_true", help="K = 10 only")
    parser.add_argument(
        "--synthetic-large", action="store_true", help="the large synthetic runs (ours and faiss, on --device)"
    )
    parser.add_argument(
        "--synthetic-sizes",
        type=parse_size,
        nargs="+",
        default=list(SYNTHETIC_RUNS),
        metavar="NxDxK",
        help="problems of --synthetic-large (e.g. 20000x64x100 for a smoke test)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rows-per-cluster",
        type=int,
        default=ROWS_PER_CLUSTER,
        help="the ours-tuned runs on MNIST use sample_size = this * K",
    )
    parser.add_argument(
        "--synthetic-rows-per-cluster",
        type=int,
        default=SYNTHETIC_ROWS_PER_CLUSTER,
        help=f"the ours-tuned run on {SYNTHETIC_NAME} uses sample_size = this * K",
    )
    parser.add_argument("--markdown", action="store_true", help="also print the table in Markdown")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads of torch, faiss and scikit-learn's BLAS/OpenMP (default: theirs); on a shared "
        "machine one thread each makes the CPU seconds comparable (no spinning waits)",
    )
    parser.add_argument("--output", default=RESULTS, help="JSON file to merge the results into")
    parser.add_argument(
        "--text",
        action="store_true",
        help="the sparse text benchmark: TF-IDF-like CSR rows, ours vs scikit-learn's KMeans (see the docstring)",
    )
    parser.add_argument("--text-shape", type=parse_size, default=TEXT_SHAPE, metavar="NxDxK", help="of --text")
    parser.add_argument("--text-output", default=TEXT_RESULTS, help="JSON file of the --text results")
    parser.add_argument("--text-one", choices=TEXT_METHODS, help=argparse.SUPPRESS)  # a --text child process
    parser.add_argument("--text-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.threads is not None:
        set_threads(args.threads)
    if args.text_one:
        text_run_one(args)
        return
    results = load_results(args.output)
    info = kmeans_machine_info(args.device)
    print(
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, {info['cpu']}, "
        f"{info['cpu_count']} CPUs, torch {info['torch']}, device {args.device}",
        flush=True,
    )
    if args.text:
        bench_text(args, load_results(args.text_output), info)
    elif args.synthetic_large:
        bench_synthetic(args, results, info)
    else:
        bench_cpu(args, results, info)


if __name__ == "__main__":
    main()
