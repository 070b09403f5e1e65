"""Render every saved benchmark result as one Markdown report, with plots.

Reads the JSON files the benchmark scripts write to ``benchmarks/results/``
(``bench_losses.json``, ``bench_kmeans.json``, ``bench_metrics.json``,
``bench_train_*.json``) and writes ``benchmarks/results/REPORT.md`` (tables,
with the machine and date of each measurement) and, when matplotlib is
installed, ``benchmarks/results/*.png``. It measures nothing itself: every
figure comes from a script's saved output, so the docs and the README quote
measured numbers only.

Usage::

    python benchmarks/report.py            # after running the benchmark scripts
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _compare import format_comparison, table_order  # noqa: E402
from _machine import describe  # noqa: E402


def _load(name: str) -> Optional[Any]:
    path = RESULTS / name
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _table(header: Sequence[str], rows: List[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _machine(info: Dict[str, Any]) -> str:
    return describe(info)


def losses_section(data: Dict[str, Any]) -> str:
    rows: Dict[tuple, Dict[str, Any]] = {}
    for row in data["rows"]:
        key = (row["num_clusters"], row["batch_size"], row["queue_size"])
        rows.setdefault(key, {})[row["implementation"]] = row
    body = []
    for (k, b, q), pair in sorted(rows.items()):
        ours, naive, fast = pair.get("propos_losses"), pair.get("naive"), pair.get("fast")
        if ours is None or naive is None:
            continue
        fast_ms = f"{fast['min_ms']:.2f}" if fast else ""
        speed = naive["min_ms"] / (fast or ours)["min_ms"]
        body.append(
            [
                str(k),
                str(b),
                str(q),
                f"{ours['min_ms']:.2f}",
                fast_ms,
                f"{naive['min_ms']:.2f}",
                f"{speed:.2f}x",
                f"{ours['peak_memory_mib']:.1f}",
                f"{naive['peak_memory_mib']:.1f}",
            ]
        )
    text = "## PSL forward + backward (`benchmarks/bench_losses.py`)\n\n"
    text += f"Machine: {_machine(data['machine'])}. Peak memory: {data['memory_method']}. d = 256; "
    text += "naive = the authors' dense one-hot prototypes with a finite fill for empty clusters; "
    text += "*ours* checks values (`validate_args=True`, the default), *fast* does not "
    text += "(`validate_args=False`); speed-up = naive / fast.\n\n"
    header = ["K", "B", "queue", "ours ms", "fast ms", "naive ms", "speed-up", "ours MiB", "naive MiB"]
    text += _table(header, body)
    hot = data.get("hot_path") or []
    if hot:
        text += (
            "\nHot path (`--hot-path`): host syncs per call (`aten::_local_scalar_dense`), "
            "`torch._dynamo.explain` graph breaks of the fast path, eager and compiled "
            f"(`torch.compile(fullgraph=True, backend='{hot[0].get('backend', '')}')`) times.\n\n"
        )
        hot_body = [
            [
                r["case"],
                str(r["syncs_validate_True"]),
                str(r["syncs_validate_False"]),
                str(r["graph_breaks"]),
                f"{r['eager_ms_validate_True']:.2f}",
                f"{r['eager_ms_validate_False']:.2f}",
                f"{r['compiled_ms']:.2f}" if r.get("compiled_ms") is not None else "",
            ]
            for r in hot
        ]
        text += _table(
            ["case", "syncs checked", "syncs fast", "graph breaks", "checked ms", "fast ms", "compiled ms"], hot_body
        )
    step = data.get("resnet18_step") or {}
    if "skipped" in step:
        text += f"\nResNet-18 step overhead: not measured ({step['skipped']}).\n"
    elif step:
        text += "\nResNet-18 CIFAR step overhead: " + ", ".join(f"{k}={v}" for k, v in step.items()) + "\n"
    else:
        text += "\nResNet-18 step overhead: not measured (needs a GPU: `bash benchmarks/gpu_check.sh`).\n"
    return text


def kmeans_section(data: Dict[str, Any]) -> str:
    text = "## Spherical k-means (`benchmarks/bench_kmeans.py`)\n\n"
    rows = data.get("mnist", [])
    if rows:
        text += f"Machine: {_machine(rows[0].get('machine', {}))}. n_init = 10, max_iter = 300, tol = 1e-4.\n\n"
        text += (
            "Each row records when it ran and *other CPU s*, the CPU seconds other processes used "
            "while it ran: on a busy machine both wall and CPU seconds grow, unevenly between methods, so "
            "compare rows where it is near 0. `ours-sampled` is "
            "`SphericalKMeans(sample_size=...)`: the restarts run on a random subsample and the winner is "
            "iterated on all rows. *Inertia ratio* compares each of our rows with the better (lower "
            "inertia) of scikit-learn and faiss, *wall x* and *CPU x* with the faster of them (10x = ten "
            "times faster). *Iterations*: ours count full-data Lloyd iterations of the winner, faiss's are "
            "summed over its 10 restarts on its training subsample of 256 rows per centroid (it stops a "
            "restart once its objective stops improving). *predict s*: one assignment of every row "
            "to our fitted centres.\n\n"
        )
        body = []
        for r in sorted(rows, key=table_order):
            ratio, wall_speed, cpu_speed = format_comparison(r, rows, ratio_digits=4, speed_digits=2)
            method = r["method"] + (f" ({r['sample_size']:,} rows)" if "sample_size" in r else "")
            other = f"{r['other_cpu_s']:.2f}" if "other_cpu_s" in r else "not recorded"
            predict = f"{r['predict_s']:.3f}" if "predict_s" in r else ""
            body.append(
                [
                    r["data"],
                    str(r["k"]),
                    method,
                    f"{r['wall_s']:.2f}",
                    f"{r['cpu_s']:.2f}",
                    f"{r['cosine_inertia']:.1f}",
                    ratio,
                    wall_speed,
                    cpu_speed,
                    f"{r['nmi']:.4f}",
                    str(r.get("n_iter", "")),
                    predict,
                    other,
                    r.get("date", "")[:16],
                ]
            )
        text += _table(
            [
                "data",
                "K",
                "method",
                "wall s",
                "CPU s",
                "cosine inertia",
                "inertia ratio",
                "wall x",
                "CPU x",
                "NMI",
                "iterations",
                "predict s",
                "other CPU s",
                "measured (UTC)",
            ],
            body,
        )
    large = data.get("synthetic_large", [])
    if large:
        text += "\nLarge synthetic runs:\n\n"
        body = [
            [
                r.get("data", ""),
                str(r.get("n", "")),
                str(r.get("d", "")),
                str(r.get("k", "")),
                r.get("device", ""),
                f"{r['wall_s']:.2f}",
            ]
            for r in large
        ]
        text += _table(["data", "N", "d", "K", "device", "wall s"], body)
    return text


def metrics_section(data: Dict[str, Any]) -> str:
    text = "## Clustering metrics (`benchmarks/bench_metrics.py`)\n\n"
    text += f"Machine: {_machine(data['machine'])}; measured {data.get('date_utc', '')}.\n\n"
    body = []
    for r in data["results"]:
        if "sklearn_s" in r:
            body.append(
                [
                    f"{r['n_samples']:,}",
                    str(r["n_clusters"]),
                    r["metric"].upper(),
                    f"{r['ours_s']:.3f}",
                    f"{r['sklearn_s']:.3f}",
                    f"{r['speedup']:.1f}x",
                    f"{r['abs_diff']:.1e}",
                ]
            )
        elif r["metric"] == "evaluate_clustering":
            body.append(
                [f"{r['n_samples']:,}", str(r["n_clusters"]), "all four (one table)", f"{r['ours_s']:.3f}", "", "", ""]
            )
    text += _table(["N", "K", "metric", "ours s", "scikit-learn s", "speed-up", "abs. difference"], body)
    exact = [r for r in data["results"] if r["metric"] == "exact_emi_check"]
    if exact:
        text += (
            "\nAMI error against the AMI computed with an exact (mpmath, 25+ digits) expected mutual information:\n\n"
        )
        text += _table(
            ["N", "K", "ours", "scikit-learn"],
            [
                [
                    f"{r['n_samples']:,}",
                    str(r["n_clusters"]),
                    f"{r['ami_ours_abs_err']:.1e}",
                    f"{r['ami_sklearn_abs_err']:.1e}",
                ]
                for r in exact
            ],
        )
    return text


def _mean_std(summary: Dict[str, Any], key: str) -> str:
    s = summary.get(key)
    return f"{s['mean']:.3f} ± {s['std']:.3f}" if s else ""


def train_section(name: str, data: Dict[str, Any]) -> str:
    env = data.get("environment", {})
    text = f"## Reference trainer: `{name}` (`benchmarks/bench_train.py {data['experiment']}`)\n\n"
    text += f"Seeds {data['seeds']}; {_machine(env)}. {env.get('note', '')}\n\n"
    raw = data.get("raw_kmeans")
    body = []
    if raw:
        for kind in ("euclidean", "spherical"):
            if f"{kind}_nmi" in raw:
                body.append(
                    [
                        f"k-means on raw pixels ({kind})",
                        _mean_std(raw, f"{kind}_nmi"),
                        _mean_std(raw, f"{kind}_acc"),
                        "",
                        "",
                        "",
                    ]
                )
    for row in data["rows"]:
        s = row["summary"]
        body.append(
            [
                row["variant"],
                _mean_std(s, "backbone_nmi"),
                _mean_std(s, "backbone_acc"),
                _mean_std(s, "projector_nmi"),
                _mean_std(s, "projector_acc"),
                f"{row['wall_s_mean']:.0f}" if row["wall_s_mean"] is not None else "-",
            ]
        )
    header = ["variant", "backbone NMI", "backbone ACC", "projector NMI", "projector ACC", "wall s / run"]
    return text + _table(header, body)


def train_summary_section(data: Dict[str, Any]) -> str:
    """The trainer's results as summarised over result files by ``bench_train.py`` (mean ± std over seeds)."""
    text = "## Reference trainer (`benchmarks/bench_train.py`)\n\n"
    text += (
        "Final k-means (the run's kmeans_n_init, 3 in the digits and mnist presets) on target backbone and "
        "projector features; mean ± standard deviation over the seeds listed. Wall time per run on the shared "
        "2-core CPU (the two MNIST runs of a seed ran side by side, one thread each).\n"
    )
    raw_all = data.get("raw_kmeans", {})
    for dataset in sorted({row.get("dataset", "digits") for row in data.get("rows", [])} | set(raw_all)):
        text += f"\n### {dataset}\n\n"
        body = []
        raw = raw_all.get(dataset)
        if raw:
            for kind in ("euclidean", "spherical"):
                if f"{kind}_nmi" in raw:
                    body.append(
                        [
                            f"k-means on raw pixels ({kind})",
                            str(raw[f"{kind}_nmi"]["n"]),
                            _mean_std(raw, f"{kind}_nmi"),
                            _mean_std(raw, f"{kind}_acc"),
                            "",
                            "",
                            "",
                        ]
                    )
        for row in data.get("rows", []):
            if row.get("dataset", "digits") != dataset:
                continue
            s = row["summary"]
            body.append(
                [
                    row["variant"],
                    str(len(row.get("seeds", []))),
                    _mean_std(s, "backbone_nmi"),
                    _mean_std(s, "backbone_acc"),
                    _mean_std(s, "projector_nmi"),
                    _mean_std(s, "projector_acc"),
                    f"{row['wall_s_mean']:.0f}" if row["wall_s_mean"] is not None else "-",
                ]
            )
        header = ["variant", "seeds", "backbone NMI", "backbone ACC", "projector NMI", "projector ACC", "wall s / run"]
        text += _table(header, body)
    return text


def plots(kmeans: Optional[Dict[str, Any]], metrics: Optional[Dict[str, Any]]) -> List[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots", file=sys.stderr)
        return []
    written = []
    if kmeans and kmeans.get("mnist"):
        rows = kmeans["mnist"]
        groups = sorted({(r["data"], r["k"]) for r in rows})
        methods = sorted({r["method"] for r in rows})
        fig, ax = plt.subplots(figsize=(7, 3.5))
        width = 0.8 / len(methods)
        for i, method in enumerate(methods):
            xs, ys = [], []
            for j, group in enumerate(groups):
                match = [r for r in rows if (r["data"], r["k"]) == group and r["method"] == method]
                if match:
                    xs.append(j + i * width)
                    ys.append(match[0]["wall_s"])
            ax.bar(xs, ys, width=width, label=method)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], [f"{d}\nK={k}" for d, k in groups])
        ax.set_yscale("log")
        ax.set_ylabel("wall time (s, log)")
        ax.set_title("Spherical k-means on MNIST, n_init=10")
        ax.legend()
        fig.tight_layout()
        path = RESULTS / "bench_kmeans.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    if metrics and metrics.get("results"):
        rows = [r for r in metrics["results"] if "sklearn_s" in r]
        labels = [f"{r['metric'].upper()}\nN={r['n_samples']:,}" for r in rows]
        fig, ax = plt.subplots(figsize=(8, 3.5))
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [r["ours_s"] for r in rows], width=0.4, label="propos_losses")
        ax.bar([x + 0.2 for x in xs], [r["sklearn_s"] for r in rows], width=0.4, label="scikit-learn")
        ax.set_xticks(list(xs), labels, fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("time (s, log)")
        ax.set_title("Clustering metrics")
        ax.legend()
        fig.tight_layout()
        path = RESULTS / "bench_metrics.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def main() -> int:
    sections = [
        "# Benchmark report\n\nGenerated by `python benchmarks/report.py` from the JSON results of the "
        "benchmark scripts in `benchmarks/`. Every figure was measured by those scripts on the machine "
        "named in its section.\n"
    ]
    losses, kmeans, metrics = _load("bench_losses.json"), _load("bench_kmeans.json"), _load("bench_metrics.json")
    if losses:
        sections.append(losses_section(losses))
    if kmeans:
        sections.append(kmeans_section(kmeans))
    if metrics:
        sections.append(metrics_section(metrics))
    summary = _load("bench_train_summary.json")
    if summary:
        sections.append(train_summary_section(summary))
    report = RESULTS / "REPORT.md"
    report.write_text("\n".join(sections))
    print(f"wrote {report}")
    for path in plots(kmeans, metrics):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
