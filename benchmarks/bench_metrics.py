"""Benchmark propos_losses.metrics against scikit-learn: time and absolute difference.

Two problem sizes, random true labels and a noisy copy as prediction (each
label replaced by a random cluster with probability ``--noise``, then the
cluster ids permuted):

* ImageNet-1k scale: N = 1,281,167, K = 1,000;
* N = 100,000, K = 100.

For NMI, AMI and ARI the reference is scikit-learn's
``normalized_mutual_info_score``, ``adjusted_mutual_info_score`` and
``adjusted_rand_score``; for clustering accuracy (scikit-learn has none) it is
``sklearn.metrics.cluster.contingency_matrix`` followed by
``scipy.optimize.linear_sum_assignment``. Each timing is the minimum over
``--repeats`` runs from the raw labels (ours includes building the
contingency table every time); scikit-learn's AMI at ImageNet scale takes about
100 s and runs once (or is skipped with ``--skip-sklearn-ami-large``).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_metrics.py
    python benchmarks/bench_metrics.py --skip-sklearn-ami-large --repeats 1
    python benchmarks/bench_metrics.py --exact-emi   # + 30-digit mpmath EMI (~1 min)

``--exact-emi`` also computes the expected mutual information in 30-digit
arithmetic (mpmath, pmf by exact ratio recursion from the mode, terms below
1e-45 dropped) and reports the error of our EMI and of our AMI against it,
which tells whose rounding the AMI difference from scikit-learn is.

Prints a table and writes ``benchmarks/results/bench_metrics.json`` with the
machine description and the date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import scipy
import sklearn
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

# Run from a checkout without installing: the repository root holds the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _machine import machine_info  # noqa: E402

from propos_losses.metrics import (  # noqa: E402
    _entropy,
    _expected_mutual_information,
    _mutual_information,
    ami,
    ari,
    cluster_accuracy,
    contingency_table,
    evaluate_clustering,
    nmi,
)

SIZES: Tuple[Tuple[str, int, int], ...] = (
    ("imagenet1k", 1_281_167, 1_000),
    ("n100k_k100", 100_000, 100),
)
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "bench_metrics.json"


def sklearn_accuracy(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Reference Hungarian accuracy: sklearn's dense contingency matrix + scipy."""
    table = contingency_matrix(labels_true, labels_pred)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / labels_true.size)


def timed(function: Callable[[], Any], repeats: int) -> Tuple[Any, float]:
    """Value of ``function()`` and the minimum wall time over ``repeats`` calls."""
    best = float("inf")
    value = None
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        best = min(best, time.perf_counter() - start)
    return value, best


def make_labels(n: int, k: int, noise: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels_true = rng.integers(0, k, n)
    labels_pred = np.where(rng.random(n) < noise, rng.integers(0, k, n), labels_true)
    return labels_true, rng.permutation(k)[labels_pred]


def exact_emi_check(labels_true: np.ndarray, labels_pred: np.ndarray) -> Dict[str, Any]:
    """EMI in 30-digit arithmetic and the errors of our EMI and AMI against it."""
    import mpmath

    mpmath.mp.dps = 30
    table = contingency_table(labels_true, labels_pred)
    a, b, n = table.row_sums, table.col_sums, table.n_samples
    values_a, mult_a = np.unique(a, return_counts=True)
    values_b, mult_b = np.unique(b, return_counts=True)
    negligible = mpmath.mpf(10) ** -45
    start = time.perf_counter()
    emi = mpmath.mpf(0)
    for ai, count_a in zip(values_a.tolist(), mult_a.tolist()):
        for bj, count_b in zip(values_b.tolist(), mult_b.tolist()):
            low, high = max(0, ai + bj - n), min(ai, bj)
            mode = min(max((ai + 1) * (bj + 1) // (n + 2), low), high)
            log_p = (
                mpmath.loggamma(ai + 1)
                + mpmath.loggamma(bj + 1)
                + mpmath.loggamma(n - ai + 1)
                + mpmath.loggamma(n - bj + 1)
                - mpmath.loggamma(n + 1)
                - mpmath.loggamma(mode + 1)
                - mpmath.loggamma(ai - mode + 1)
                - mpmath.loggamma(bj - mode + 1)
                - mpmath.loggamma(n - ai - bj + mode + 1)
            )

            def term(k: int, p: Any) -> Any:
                return mpmath.mpf(k) / n * mpmath.log(mpmath.mpf(n * k) / (ai * bj)) * p if k > 0 else 0

            p_mode = mpmath.exp(log_p)
            cell = term(mode, p_mode)
            p, k = p_mode, mode
            while k < high and (k == mode or p > negligible):
                p = p * mpmath.mpf((ai - k) * (bj - k)) / ((k + 1) * (n - ai - bj + k + 1))
                k += 1
                cell += term(k, p)
            p, k = p_mode, mode
            while k > low and (k == mode or p > negligible):
                p = p * mpmath.mpf(k * (n - ai - bj + k)) / ((ai - k + 1) * (bj - k + 1))
                k -= 1
                cell += term(k, p)
            emi += count_a * count_b * cell
    seconds = time.perf_counter() - start
    mi = _mutual_information(table)
    normalizer = (mpmath.mpf(_entropy(a, n)) + mpmath.mpf(_entropy(b, n))) / 2
    ami_exact_emi = float((mpmath.mpf(mi) - emi) / (normalizer - emi))
    ours_emi = _expected_mutual_information(a, b, n)
    return {
        "emi_exact": mpmath.nstr(emi, 25),
        "emi_ours": ours_emi,
        "emi_ours_abs_err": float(abs(mpmath.mpf(ours_emi) - emi)),
        "ami_with_exact_emi": ami_exact_emi,
        "ami_ours_abs_err": abs(ami(labels_true, labels_pred) - ami_exact_emi),
        "mpmath_seconds": seconds,
    }


def _machine() -> Dict[str, Any]:
    return machine_info(extra={"scipy": scipy.__version__, "scikit-learn": sklearn.__version__})


def run(args: argparse.Namespace) -> List[Dict[str, Any]]:
    rows: List[Dict[str, Any]] = []
    metrics: Tuple[Tuple[str, Callable[..., float], Callable[..., float]], ...] = (
        ("nmi", nmi, normalized_mutual_info_score),
        ("ami", ami, adjusted_mutual_info_score),
        ("ari", ari, adjusted_rand_score),
        ("acc", cluster_accuracy, sklearn_accuracy),
    )
    for name, n, k in SIZES:
        if args.only and name not in args.only:
            continue
        labels_true, labels_pred = make_labels(n, k, args.noise, args.seed)
        ours_all, ours_all_time = timed(lambda: evaluate_clustering(labels_true, labels_pred), args.repeats)
        for metric, ours_fn, ref_fn in metrics:
            ours, ours_time = timed(lambda: ours_fn(labels_true, labels_pred), args.repeats)
            skip = metric == "ami" and name == "imagenet1k" and args.skip_sklearn_ami_large
            reference: Optional[float] = None
            ref_time: Optional[float] = None
            if not skip:
                # scikit-learn's AMI at ImageNet scale is ~100 s: never repeated.
                ref_repeats = 1 if metric == "ami" else args.repeats
                reference, ref_time = timed(lambda: ref_fn(labels_true, labels_pred), ref_repeats)
            row = {
                "size": name,
                "n_samples": n,
                "n_clusters": k,
                "metric": metric,
                "ours": ours,
                "ours_s": ours_time,
                "sklearn": reference,
                "sklearn_s": ref_time,
                "abs_diff": None if reference is None else abs(ours - reference),
                "speedup": None if ref_time is None else ref_time / ours_time,
                "evaluate_clustering_value": ours_all[metric],
            }
            rows.append(row)
            print_row(row, flush=True)
        rows.append(
            {"size": name, "n_samples": n, "n_clusters": k, "metric": "evaluate_clustering", "ours_s": ours_all_time}
        )
        print(f"{name:>11} {'all four':>8} {'':>12} {ours_all_time:>9.3f}s  (evaluate_clustering, one table)")
        if args.exact_emi:
            check = exact_emi_check(labels_true, labels_pred)
            sk_ami = next(r["sklearn"] for r in rows if r["size"] == name and r["metric"] == "ami")
            check["ami_sklearn_abs_err"] = None if sk_ami is None else abs(sk_ami - check["ami_with_exact_emi"])
            rows.append({"size": name, "n_samples": n, "n_clusters": k, "metric": "exact_emi_check", **check})
            sk_err = "skipped" if sk_ami is None else f"{check['ami_sklearn_abs_err']:.1e}"
            print(
                f"{name:>11} {'exact':>8}  |EMI ours - exact| {check['emi_ours_abs_err']:.1e}"
                f"  |AMI - AMI(exact EMI)|: ours {check['ami_ours_abs_err']:.1e}, sklearn {sk_err}",
                flush=True,
            )
    return rows


def print_header() -> None:
    print(f"{'size':>11} {'metric':>8} {'value':>12} {'ours':>10} {'sklearn':>10} {'speedup':>8} {'|diff|':>9}")


def print_row(row: Dict[str, Any], flush: bool = False) -> None:
    ref_time = "skipped" if row["sklearn_s"] is None else f"{row['sklearn_s']:.3f}s"
    speedup = "" if row["speedup"] is None else f"{row['speedup']:.1f}x"
    diff = "" if row["abs_diff"] is None else f"{row['abs_diff']:.1e}"
    print(
        f"{row['size']:>11} {row['metric']:>8} {row['ours']:>12.9f} {row['ours_s']:>9.3f}s {ref_time:>10}"
        f" {speedup:>8} {diff:>9}",
        flush=flush,
    )


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (minimum reported)")
    parser.add_argument("--noise", type=float, default=0.5, help="probability of a random predicted label")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-sklearn-ami-large", action="store_true", help="skip sklearn AMI at N=1,281,167")
    parser.add_argument("--exact-emi", action="store_true", help="also check EMI against 30-digit mpmath")
    parser.add_argument("--only", nargs="*", choices=[s[0] for s in SIZES], help="run only these sizes")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON output file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")

    print_header()
    rows = run(args)
    record = {
        "benchmark": "bench_metrics",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": _machine(),
        "settings": {"repeats": args.repeats, "noise": args.noise, "seed": args.seed},
        "results": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
