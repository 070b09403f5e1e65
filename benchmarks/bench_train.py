"""Result experiments of the reference trainer (``propos-train``).

Experiments (each writes ``benchmarks/results/bench_train_<name>.json`` and prints a table):

* ``digits``: ProPos vs BYOL (the ``digits`` preset, ``--method byol`` for the
  baseline, same code path) vs k-means on the raw 64 pixels, over seeds; mean
  and standard deviation of NMI / ACC of the final k-means on target backbone
  and projector features.
* ``sweep``: when does PSL help on digits? One factor at a time around the
  preset: PSL warm-up length, ``lambda_psl``, ``sigma``, E-step features.
* ``mnist``: ProPos vs BYOL on MNIST (70,000 images, ``--data-dir``).
* ``mnist-raw``: k-means on the raw MNIST pixels (the baseline of ``mnist``).
* ``buffers``: the target's BatchNorm statistics under the momentum update
  (``target_buffers`` none / copy / ema, i.e. ``MomentumUpdater(buffers=...)``),
  ProPos on digits, or on MNIST when ``--data-dir`` is given.
* ``psl-start``: PSL switched on automatically (``psl_start=auto``: once two
  successive E-steps agree with NMI >= ``psl_agreement``) instead of after the
  preset's fixed warm-up; digits, or MNIST with ``--data-dir``. The preset
  rows it compares with are the ``target_buffers=none`` rows of ``buffers``
  (same configuration, deterministic per seed on CPU), joined by ``summary``.
* ``estep-init``: the E-step's k-means from fresh restarts (``cold``) or from
  the previous E-step's centres (``warm``): E-step k-means seconds, pseudo-label
  NMI against the true labels and against a cold run on the same features,
  final NMI; digits, or MNIST with ``--data-dir``.
* ``throughput``: seconds per epoch and in total, side by side: the variants
  (``--compare NAME=JSON`` settings over the preset, e.g. the old backbone) are
  trained in one process, *interleaved epoch by epoch*, so that the load of
  other jobs on a shared machine falls on all of them alike. Per variant and
  seed: wall and process-CPU seconds of the training epochs, of the E-steps
  and evaluations (CPU seconds are what to compare on a busy machine) and of
  the whole run, the final NMI/ACC, and the contention
  (load average, CPU seconds other processes used meanwhile). ``--set
  epochs=N`` or ``max_samples=N`` caps a run (MNIST timing).
* ``summary``: no training; groups every run in ``results/bench_train_*.json``
  by its resolved configuration and writes ``bench_train_summary.json``
  (experiments split over several processes, e.g. one per seed, end up in one table).

Usage::

    python benchmarks/bench_train.py digits --seeds 0 1 2
    python benchmarks/bench_train.py sweep --seeds 0 1
    python benchmarks/bench_train.py mnist --data-dir /path/to/mnist --seeds 0
    python benchmarks/bench_train.py mnist-raw --data-dir /path/to/mnist --seeds 0 1 2
    python benchmarks/bench_train.py buffers --seeds 0 1 2 --threads 1
    python benchmarks/bench_train.py buffers --data-dir MNIST_DIR --set max_samples=10000 --epochs 10 --tag mnist
    python benchmarks/bench_train.py psl-start --seeds 0 1 2 --threads 1
    python benchmarks/bench_train.py throughput --seeds 0 --threads 1 --compare 'small_cnn={"backbone": "small_cnn"}'
    python benchmarks/bench_train.py throughput --data-dir MNIST_DIR --threads 1 --set max_samples=14000 epochs=2 --tag mnist

Figures depend on the machine only through time; the metrics are deterministic
for a seed on CPU (``torch.set_num_threads`` does not change them beyond
floating-point reduction order).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _machine import machine_info  # noqa: E402

from propos_losses.kmeans import SphericalKMeans  # noqa: E402
from propos_losses.metrics import evaluate_clustering  # noqa: E402
from propos_losses.train.config import config_to_dict, resolve_config  # noqa: E402
from propos_losses.train.data import load_dataset  # noqa: E402
from propos_losses.train.trainer import Trainer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


KEEP_RUNS: Optional[Path] = None


def train_once(preset: str, overrides: Dict[str, Any], dataset: Any = None, name: str = "run") -> Dict[str, Any]:
    """One run (in a temporary directory unless ``--keep-runs``); returns config, final metrics, curve, wall time."""
    config = resolve_config(preset, overrides={"device": "cpu", **overrides})
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) if KEEP_RUNS is None else KEEP_RUNS / f"{name}_seed{config.seed}"
        run_dir.mkdir(parents=True, exist_ok=KEEP_RUNS is None)
        result = Trainer(config, run_dir, dataset=dataset, log=lambda message: None).fit()
        records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    curve = [
        {
            k: r[k]
            for k in (
                "epoch",
                "backbone_nmi",
                "backbone_acc",
                "projector_nmi",
                "projector_acc",
                "pseudo_agreement",
                "pseudo_nmi",
                "pseudo_vs_cold_nmi",
                "estep_kmeans_s",
            )
            if k in r
        }
        for r in records
        if r["event"] in ("estep", "eval", "final")
    ]
    # The first epoch trained with PSL on (1-based), None if never.
    psl_epoch = next((r["epoch"] for r in records if r["event"] == "epoch" and r.get("lambda_psl", 0) > 0), None)
    return {
        "config": config_to_dict(config),
        "final": result["final"],
        "psl_first_epoch": psl_epoch,
        "curve": curve,
        "wall_s": time.perf_counter() - start,
    }


def raw_kmeans(dataset: Any, seed: int) -> Dict[str, float]:
    """k-means on the raw pixels: scikit-learn's Euclidean KMeans and the library's spherical one."""
    from sklearn.cluster import KMeans

    pixels = dataset.images.reshape(len(dataset), -1).double().numpy() / 255.0
    labels = dataset.labels.numpy()
    k = int(dataset.num_classes)
    out = {}
    euclid = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(pixels)
    out.update({f"euclidean_{m}": v for m, v in evaluate_clustering(labels, euclid).items()})
    spherical = SphericalKMeans(k, n_init=10, random_state=seed).fit_predict(pixels)
    out.update({f"spherical_{m}": v for m, v in evaluate_clustering(labels, spherical).items()})
    return out


def summarise(values: Sequence[float]) -> Dict[str, float]:
    values = list(values)
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def _table(rows: List[Dict[str, Any]], keys: Sequence[str]) -> str:
    width = max([34] + [len(row["variant"]) + 2 for row in rows])
    lines = [f"{'variant':<{width}}" + "".join(f"{k:>22}" for k in keys) + f"{'wall s':>10}"]
    for row in rows:
        cells = []
        for key in keys:
            s = row["summary"].get(key)
            cells.append(f"{s['mean']:.4f} +- {s['std']:.4f}".rjust(22) if s else " " * 22)
        lines.append(
            f"{row['variant']:<{width}}"
            + "".join(cells)
            + (f"{row['wall_s_mean']:>10.0f}" if row["wall_s_mean"] is not None else f"{'-':>10}")
        )
    return "\n".join(lines)


def run_variants(
    preset: str, variants: Dict[str, Dict[str, Any]], seeds: Sequence[int], dataset: Any
) -> List[Dict[str, Any]]:
    rows = []
    for name, overrides in variants.items():
        runs = []
        for seed in seeds:
            run = train_once(preset, {**overrides, "seed": seed}, dataset=dataset, name=name)
            run["seed"] = seed
            runs.append(run)
            f = run["final"]
            print(
                f"  {name:<30} seed {seed}: backbone NMI {f['backbone_nmi']:.4f} ACC {f['backbone_acc']:.4f}  "
                f"projector NMI {f['projector_nmi']:.4f} ACC {f['projector_acc']:.4f}  "
                f"PSL from epoch {run['psl_first_epoch']}  ({run['wall_s']:.0f} s)",
                flush=True,
            )
        summary = {
            key: summarise([r["final"][key] for r in runs])
            for key in ("backbone_nmi", "backbone_acc", "backbone_ari", "projector_nmi", "projector_acc")
        }
        rows.append(
            {
                "variant": name,
                "overrides": overrides,
                "runs": runs,
                "summary": summary,
                "wall_s_mean": statistics.fmean(r["wall_s"] for r in runs),
            }
        )
    return rows


def estep_summary(rows: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per variant: E-step k-means seconds, pseudo-label NMI (vs truth, vs a cold run), over E-steps 2.. of every run.

    The first E-step is cold in every variant, so it is left out. Prints one line per variant.
    """
    out = {}
    for row in rows:
        seconds, truth, cold = [], [], []
        for run in row["runs"]:
            later = [c for c in run["curve"] if "estep_kmeans_s" in c][1:]
            seconds.append(statistics.fmean(c["estep_kmeans_s"] for c in later))
            truth.append(statistics.fmean(c["pseudo_nmi"] for c in later if "pseudo_nmi" in c))
            if any("pseudo_vs_cold_nmi" in c for c in later):
                cold.append(statistics.fmean(c["pseudo_vs_cold_nmi"] for c in later if "pseudo_vs_cold_nmi" in c))
        out[row["variant"]] = {
            "estep_kmeans_s": summarise(seconds),
            "pseudo_nmi": summarise(truth),
            "pseudo_vs_cold_nmi": summarise(cold) if cold else None,
        }
        entry = out[row["variant"]]
        print(
            f"{row['variant']:<20} E-step k-means {entry['estep_kmeans_s']['mean']:.4f} s  "
            f"pseudo NMI vs truth {entry['pseudo_nmi']['mean']:.4f} +- {entry['pseudo_nmi']['std']:.4f}"
            + (f"  vs a cold run {entry['pseudo_vs_cold_nmi']['mean']:.4f}" if cold else "")
        )
    return out


def _describe(config: Dict[str, Any]) -> str:
    """Short label of a run's configuration: what differs from its preset."""
    preset = resolve_config(config["preset"], overrides={"data_dir": config.get("data_dir") or "unused"})
    skip = {"seed", "device", "output_dir", "data_dir"}
    if config["method"] == "byol":  # PSL and the noise are off for the whole run
        skip |= {"lambda_psl", "sigma", "psl_warmup_epochs", "temperature", "queue_size"}
    changes = [f"{k}={v}" for k, v in sorted(config.items()) if k not in skip and getattr(preset, k) != v]
    return f"{config['dataset']} {config['method']}" + (f" ({', '.join(changes)})" if changes else " (preset)")


def _format_raw(values: Dict[str, Any]) -> str:
    """The NMI and ACC of a raw-pixel k-means summary as ``name mean+-std`` pairs."""
    return "  ".join(f"{k} {v['mean']:.4f}+-{v['std']:.4f}" for k, v in values.items() if k.endswith(("nmi", "acc")))


def _raw_kmeans_summary(dataset: Any, seeds: Sequence[int]) -> Dict[str, Any]:
    """k-means on the raw pixels for every seed, summarised (mean, std, n) and printed."""
    raw = [raw_kmeans(dataset, seed) for seed in seeds]
    summary = {key: summarise([r[key] for r in raw]) for key in raw[0]}
    print("k-means on raw pixels: " + _format_raw(summary))
    return summary


def summary() -> int:
    """Group every saved run by configuration (all but the seed) and tabulate mean +- std, per data set."""
    groups: Dict[str, Dict[str, Any]] = {}
    raw: Dict[str, Dict[str, Any]] = {}
    for path in sorted(RESULTS.glob("bench_train_*.json")):
        if path.name == "bench_train_summary.json":
            continue
        data = json.loads(path.read_text())
        dataset = "mnist" if data["experiment"].startswith("mnist") else "digits"
        if data.get("raw_kmeans") and len(data["seeds"]) > raw.get(dataset, {}).get("_seeds", 0):
            raw[dataset] = {**data["raw_kmeans"], "_seeds": len(data["seeds"])}
        for row in data.get("rows", []):
            for run in row["runs"]:
                key = json.dumps(
                    {k: v for k, v in run["config"].items() if k not in ("seed", "output_dir", "device")},
                    sort_keys=True,
                )
                group = groups.setdefault(key, {"config": run["config"], "runs": {}, "files": set()})
                group["runs"][run["seed"]] = run
                group["files"].add(path.name)
    rows = []
    for group in groups.values():
        runs = [group["runs"][s] for s in sorted(group["runs"])]
        # A run continued from its checkpoint in another process stores no wall time.
        walls = [r["wall_s"] for r in runs if r.get("wall_s") is not None]
        rows.append(
            {
                "dataset": group["config"]["dataset"],
                "variant": _describe(group["config"]),
                "seeds": sorted(group["runs"]),
                "files": sorted(group["files"]),
                "summary": {
                    k: summarise([r["final"][k] for r in runs])
                    for k in ("backbone_nmi", "backbone_acc", "backbone_ari", "projector_nmi", "projector_acc")
                },
                "wall_s_mean": statistics.fmean(walls) if walls else None,
                "wall_s_max": max(walls) if walls else None,
            }
        )
    rows.sort(key=lambda r: (r["dataset"], r["variant"]))
    for dataset, values in raw.items():
        values.pop("_seeds", None)
        print(f"k-means on raw pixels ({dataset}): " + _format_raw(values))
    table = _table(
        [{**r, "variant": f"{r['dataset']}: " + r["variant"][:60] + f" n={len(r['seeds'])}"} for r in rows],
        ("backbone_nmi", "backbone_acc", "projector_nmi", "projector_acc"),
    )
    print(table)
    (RESULTS / "bench_train_summary.json").write_text(
        json.dumps({"raw_kmeans": raw, "rows": rows, "environment": _environment()}, indent=1) + "\n"
    )
    return 0


def busy_cpu_seconds() -> float:
    """CPU seconds all processes of the machine have been busy since boot (``/proc/stat``; NaN elsewhere)."""
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()[1:]
    except OSError:
        return float("nan")
    # user nice system idle iowait irq softirq steal: everything but idle and iowait is busy.
    busy = sum(int(v) for i, v in enumerate(fields[:8]) if i not in (3, 4))
    return busy / os.sysconf("SC_CLK_TCK")


def _time_cpu(trainer: Any, method: str, into: List[float]) -> None:
    """Wrap ``trainer.<method>`` so that each call appends its process-CPU seconds to ``into``."""
    inner = getattr(trainer, method)

    def timed(*args: Any, **kwargs: Any) -> Any:
        begin = time.process_time()
        try:
            return inner(*args, **kwargs)
        finally:
            into.append(time.process_time() - begin)

    setattr(trainer, method, timed)


def throughput(
    preset: str, variants: Dict[str, Dict[str, Any]], seeds: Sequence[int], dataset: Any
) -> List[Dict[str, Any]]:
    """Train every variant of every seed, interleaved epoch by epoch; time each epoch of each run."""
    runs: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for name, overrides in variants.items():
                config = resolve_config(preset, overrides={"device": "cpu", **overrides, "seed": seed})
                run_dir = Path(tmp) / f"{name}_seed{seed}"
                run_dir.mkdir()
                trainer = Trainer(config, run_dir, dataset=dataset, log=lambda message: None)
                run = {
                    "variant": name,
                    "seed": seed,
                    "overrides": overrides,
                    "config": config_to_dict(config),
                    "trainer": trainer,
                    "dir": run_dir,
                    "wall_s": 0.0,
                    "cpu_s": 0.0,
                    "other_cpu_s": 0.0,
                    "load": [],
                    "train_cpu_s": [],
                    "estep_eval_cpu_s": [],
                }
                # Process-CPU seconds of each phase (robust to other jobs, unlike the log's wall seconds).
                _time_cpu(trainer, "_train_epoch", run["train_cpu_s"])
                _time_cpu(trainer, "_estep_and_evaluate", run["estep_eval_cpu_s"])
                runs.append(run)
        epochs = max(run["config"]["epochs"] for run in runs)
        for epoch in range(1, epochs + 1):
            for run in runs:
                if epoch > run["config"]["epochs"]:
                    continue
                wall, cpu, busy = time.perf_counter(), time.process_time(), busy_cpu_seconds()
                result = run["trainer"].fit(stop_after=epoch)
                cpu = time.process_time() - cpu
                run["wall_s"] += time.perf_counter() - wall
                run["cpu_s"] += cpu
                run["other_cpu_s"] += max(0.0, busy_cpu_seconds() - busy - cpu)
                run["load"].append(os.getloadavg()[0])
                if result["final"] is not None:
                    run["final"] = result["final"]
            print(
                f"  epoch {epoch}/{epochs}: "
                + "  ".join(f"{run['variant']}/{run['seed']} {run['wall_s']:.0f} s" for run in runs),
                flush=True,
            )
        rows = []
        for run in runs:
            records = [json.loads(line) for line in open(run["dir"] / "metrics.jsonl")]
            train = [r["time_s"] for r in records if r["event"] == "epoch"]
            evaluation = [r["time_s"] for r in records if r["event"] in ("estep", "eval", "final")]
            final = run.get("final", {})
            rows.append(
                {
                    **{k: run[k] for k in ("variant", "seed", "overrides", "config", "wall_s", "cpu_s", "other_cpu_s")},
                    "epochs": len(train),
                    "train_s_per_epoch": statistics.fmean(train),
                    "train_s_per_epoch_min": min(train),
                    "estep_eval_s_total": sum(evaluation),
                    "train_cpu_s_per_epoch": statistics.fmean(run["train_cpu_s"]),
                    "train_cpu_s": run["train_cpu_s"],
                    # Calls before the last are the E-steps (and evaluations) of the epochs; the last is the final one.
                    "estep_cpu_s_per_epoch": statistics.fmean(run["estep_eval_cpu_s"][:-1] or [float("nan")]),
                    "final_eval_cpu_s": run["estep_eval_cpu_s"][-1] if run["estep_eval_cpu_s"] else float("nan"),
                    "load_mean": statistics.fmean(run["load"]),
                    "final": {
                        k: final[k]
                        for k in ("backbone_nmi", "backbone_acc", "projector_nmi", "projector_acc")
                        if k in final
                    },
                }
            )
    print(
        f"{'variant':<16}{'seed':>5}{'epochs':>7}{'train s/ep':>11}{'min s/ep':>9}{'cpu s/ep':>9}"
        f"{'E cpu/ep':>9}{'E/eval s':>9}{'wall s':>8}{'cpu s':>8}{'other s':>8}{'load':>6}{'bb NMI':>8}{'bb ACC':>8}"
    )
    for row in rows:
        f = row["final"]
        print(
            f"{row['variant']:<16}{row['seed']:>5}{row['epochs']:>7}{row['train_s_per_epoch']:>11.2f}"
            f"{row['train_s_per_epoch_min']:>9.2f}{row['train_cpu_s_per_epoch']:>9.2f}"
            f"{row['estep_cpu_s_per_epoch']:>9.2f}{row['estep_eval_s_total']:>9.1f}{row['wall_s']:>8.0f}"
            f"{row['cpu_s']:>8.0f}{row['other_cpu_s']:>8.0f}{row['load_mean']:>6.2f}"
            f"{f.get('backbone_nmi', float('nan')):>8.4f}{f.get('backbone_acc', float('nan')):>8.4f}"
        )
    return rows


def _environment() -> Dict[str, Any]:
    return machine_info(extra={"note": "2-core CPU shared with other jobs; wall times are indicative only"})


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "experiment",
        choices=(
            "digits",
            "sweep",
            "mnist",
            "mnist-raw",
            "buffers",
            "psl-start",
            "estep-init",
            "throughput",
            "summary",
        ),
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data-dir", default=None, help="MNIST IDX directory (mnist experiment)")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=["propos", "byol"])
    parser.add_argument("--tag", default="", help="suffix of the result file name")
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="extra settings for every run (JSON values), e.g. lambda_psl=0.1",
    )
    parser.add_argument("--variants", nargs="+", default=None, help="sweep: run only these variants")
    parser.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="NAME=JSON",
        help='throughput: variants besides the preset, e.g. small_cnn=\'{"backbone": "small_cnn"}\'',
    )
    parser.add_argument("--keep-runs", default=None, help="keep each run's output directory under this folder")
    args = parser.parse_args(argv)
    if args.experiment == "summary":
        return summary()
    global KEEP_RUNS
    KEEP_RUNS = None if args.keep_runs is None else Path(args.keep_runs)
    torch.set_num_threads(args.threads)
    extra: Dict[str, Any] = {} if args.epochs is None else {"epochs": args.epochs}
    for item in args.set:
        key, _, value = item.partition("=")
        extra[key] = json.loads(value)
    result: Dict[str, Any] = {"experiment": args.experiment, "seeds": args.seeds, "environment": _environment()}

    if args.experiment == "throughput":
        preset = "mnist" if args.data_dir else "digits"
        if args.data_dir:
            extra["data_dir"] = args.data_dir
        dataset = load_dataset(preset, args.data_dir, max_samples=extra.get("max_samples"))
        variants = {"preset": dict(extra)}
        for item in args.compare:
            name, _, value = item.partition("=")
            variants[name] = {**extra, **json.loads(value)}
        result["throughput"] = throughput(preset, variants, args.seeds, dataset)
        result["rows"] = []
    elif args.experiment == "digits":
        dataset = load_dataset("digits")
        result["raw_kmeans"] = _raw_kmeans_summary(dataset, args.seeds)
        variants = {method: {**extra, "method": method} for method in args.methods}
        result["rows"] = run_variants("digits", variants, args.seeds, dataset)
    elif args.experiment in ("buffers", "psl-start", "estep-init"):
        preset = "mnist" if args.data_dir else "digits"
        if args.data_dir:
            extra["data_dir"] = args.data_dir
        dataset = load_dataset(preset, args.data_dir, max_samples=extra.get("max_samples"))
        if args.experiment == "buffers":
            variants = {f"target_buffers={p}": {**extra, "target_buffers": p} for p in ("none", "copy", "ema")}
        elif args.experiment == "psl-start":
            variants = {"psl_start=auto": {**extra, "psl_start": "auto"}}
        else:
            variants = {f"estep_init={i}": {**extra, "estep_init": i} for i in ("cold", "warm")}
        result["rows"] = run_variants(preset, variants, args.seeds, dataset)
    elif args.experiment == "sweep":
        dataset = load_dataset("digits")
        variants = {
            "preset": {**extra},
            "byol": {**extra, "method": "byol"},
            "psl_warmup=0": {**extra, "psl_warmup_epochs": 0},
            "psl_warmup=5": {**extra, "psl_warmup_epochs": 5},
            "psl_warmup=40": {**extra, "psl_warmup_epochs": 40},
            "lambda=0.03": {**extra, "lambda_psl": 0.03},
            "lambda=0.3": {**extra, "lambda_psl": 0.3},
            "lambda=1.0": {**extra, "lambda_psl": 1.0},
            "sigma=0": {**extra, "sigma": 0.0},
            "sigma=0.01": {**extra, "sigma": 0.01},
            "estep=backbone": {**extra, "estep_features": "backbone"},
        }
        if args.variants:
            unknown = sorted(set(args.variants) - set(variants))
            if unknown:
                parser.error(f"unknown variants {unknown}; choose from {sorted(variants)}")
            variants = {name: variants[name] for name in args.variants}
        result["rows"] = run_variants("digits", variants, args.seeds, dataset)
    else:  # mnist, mnist-raw
        if not args.data_dir:
            parser.error(f"{args.experiment} needs --data-dir")
        # Load once for every run, honouring a max_samples override (--set max_samples=10000).
        dataset = load_dataset("mnist", args.data_dir, max_samples=extra.get("max_samples"))
    if args.experiment == "mnist-raw":
        result["raw_kmeans"] = _raw_kmeans_summary(dataset, args.seeds)
        result["rows"] = []
    elif args.experiment == "mnist":
        variants = {method: {"method": method, "data_dir": args.data_dir, **extra} for method in args.methods}
        result["rows"] = run_variants("mnist", variants, args.seeds, dataset)

    if result["rows"]:
        print(_table(result["rows"], ("backbone_nmi", "backbone_acc", "projector_nmi", "projector_acc")))
    if args.experiment == "estep-init":
        result["estep_summary"] = estep_summary(result["rows"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"bench_train_{args.experiment}{'_' + args.tag if args.tag else ''}.json"
    (RESULTS / name).write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(f"wrote {RESULTS / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
