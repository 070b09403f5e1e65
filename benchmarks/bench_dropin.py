"""ProPos dropped into a lightly-style BYOL loop: does it help, and how many lines does it take?

Runs ``benchmarks/dropin/byol_loop.py`` (a BYOL loop written as lightly 1.6's
example writes it) and ``benchmarks/dropin/propos_loop.py`` (the same loop with
ProPos added through ``propos_losses``: ``WithIndex``, ``EStep``, ``PSA``,
``PSL``, ``ProPosLoss``) as separate processes, one thread each, same budget and
seeds, on scikit-learn's digits and on a subset of MNIST. Scores: k-means
(10 restarts) on the target backbone and projector features of the
un-augmented data. Prints a table (mean +- std over seeds), the number of
changed lines between the two loops, and writes
``benchmarks/results/bench_dropin.json``.

Usage::

    python benchmarks/bench_dropin.py --seeds 0 1 2 --jobs 2
    python benchmarks/bench_dropin.py --datasets mnist --data-dir MNIST_DIR --max-samples 10000
    python benchmarks/bench_dropin.py --datasets mnist --epochs 30 --tag mnist30   # longer MNIST budget
    python benchmarks/bench_dropin.py --datasets digits --loops propos --propos-kwargs 'psl_pairing="same"' --tag same

``--propos-kwargs`` runs a copy of ``propos_loop.py`` (in a temporary
directory) whose ``ProPosLoss`` gets those extra keyword arguments; the
committed loop (the library defaults), and the changed-line count, stay as they are.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import difflib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from _machine import machine_info

HERE = Path(__file__).resolve().parent
LOOPS = HERE / "dropin"
RESULTS = HERE / "results"
KEYS = ("backbone_nmi", "backbone_acc", "projector_nmi", "projector_acc")


def changed_lines() -> Dict[str, int]:
    """Lines added, removed and changed from byol_loop.py to propos_loop.py (difflib opcodes)."""
    before = (LOOPS / "byol_loop.py").read_text().splitlines()
    after = (LOOPS / "propos_loop.py").read_text().splitlines()
    added = removed = replaced = 0
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, before, after, autojunk=False).get_opcodes():
        if tag == "insert":
            added += j2 - j1
        elif tag == "delete":
            removed += i2 - i1
        elif tag == "replace":
            replaced += max(i2 - i1, j2 - j1)
    return {"added": added, "removed": removed, "replaced": replaced, "total": added + removed + replaced}


def loop_script(loop: str, propos_kwargs: str, workdir: Path) -> Path:
    """The loop file to run: the committed one, or a copy of propos_loop.py whose ProPosLoss gets ``propos_kwargs``."""
    path = LOOPS / f"{loop}_loop.py"
    if loop != "propos" or not propos_kwargs:
        return path
    source = path.read_text()
    marker = "PSL(num_clusters=setup.num_classes))"
    if source.count(marker) != 1:
        raise RuntimeError(f"cannot find the ProPosLoss arguments ({marker!r}) in {path}")
    patched = workdir / "propos_loop_patched.py"
    patched.write_text(source.replace(marker, f"PSL(num_clusters=setup.num_classes), {propos_kwargs})"))
    return patched


def run_loop(
    loop: str,
    dataset: str,
    seed: int,
    data_dir: Optional[str],
    max_samples: Optional[int],
    epochs: Optional[int],
    script: Optional[Path] = None,
) -> Dict[str, Any]:
    script = script or LOOPS / f"{loop}_loop.py"
    command = [sys.executable, str(script), "--dataset", dataset, "--seed", str(seed)]
    if data_dir:
        command += ["--data-dir", data_dir]
    if max_samples:
        command += ["--max-samples", str(max_samples)]
    if epochs:
        command += ["--epochs", str(epochs)]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(LOOPS), str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
    }
    start = time.perf_counter()
    done = subprocess.run(command, cwd=LOOPS, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    lines = done.stdout.splitlines()
    result = json.loads(next(line for line in lines if line.startswith("RESULT "))[len("RESULT ") :])
    return {
        "loop": loop,
        "dataset": dataset,
        "seed": seed,
        "result": result,
        "log": lines[:-1],
        "wall_s": time.perf_counter() - start,
    }


def summarise(values: Sequence[float]) -> Dict[str, float]:
    values = list(values)
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist"], choices=["digits", "mnist"])
    parser.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--max-samples", type=int, default=10000, help="MNIST subset size")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="override the loops' epochs (smoke runs)")
    parser.add_argument("--jobs", type=int, default=2, help="loops run at once (one thread each)")
    parser.add_argument("--tag", default="")
    parser.add_argument("--loops", nargs="+", default=["byol", "propos"], choices=["byol", "propos"])
    parser.add_argument(
        "--propos-kwargs",
        default="",
        help="extra ProPosLoss keyword arguments for the propos loop, e.g. 'psl_pairing=\"same\", lambda_psl=0.1' "
        "(run from a patched copy; the committed loop uses the library defaults)",
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench_dropin_"))

    diff = changed_lines()
    print(f"changed lines byol_loop.py -> propos_loop.py: {diff}")
    jobs = [(loop, dataset, seed) for dataset in args.datasets for seed in args.seeds for loop in args.loops]
    scripts = {loop: loop_script(loop, args.propos_kwargs, workdir) for loop in args.loops}
    runs: List[Dict[str, Any]] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            pool.submit(
                run_loop,
                loop,
                dataset,
                seed,
                args.data_dir if dataset == "mnist" else None,
                args.max_samples if dataset == "mnist" else None,
                args.epochs,
                scripts[loop],
            ): (loop, dataset, seed)
            for loop, dataset, seed in jobs
        }
        for future in concurrent.futures.as_completed(futures):
            run = future.result()
            runs.append(run)
            r = run["result"]
            print(
                f"  {run['dataset']:<7} {run['loop']:<7} seed {run['seed']}: "
                + "  ".join(f"{k} {r[k]:.4f}" for k in KEYS)
                + f"  ({run['wall_s']:.0f} s)",
                flush=True,
            )

    rows = []
    header = f"{'data set':<10}{'loop':<9}" + "".join(f"{k:>22}" for k in KEYS) + f"{'wall s':>9}"
    print(header)
    for dataset in args.datasets:
        for loop in args.loops:
            group = [r for r in runs if r["dataset"] == dataset and r["loop"] == loop]
            summary = {k: summarise([r["result"][k] for r in group]) for k in KEYS}
            wall = statistics.fmean(r["wall_s"] for r in group)
            rows.append(
                {
                    "dataset": dataset,
                    "loop": loop,
                    "summary": summary,
                    "wall_s_mean": wall,
                    "seeds": sorted(r["seed"] for r in group),
                }
            )
            print(
                f"{dataset:<10}{loop:<9}"
                + "".join(f"{summary[k]['mean']:.4f} +- {summary[k]['std']:.4f}".rjust(22) for k in KEYS)
                + f"{wall:>9.0f}"
            )
    out = {
        "changed_lines": diff,
        "rows": rows,
        "runs": sorted(runs, key=lambda r: (r["dataset"], r["loop"], r["seed"])),
        "environment": {
            **machine_info(),
            "jobs": args.jobs,
            "threads_per_job": 1,
            "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "max_samples": args.max_samples,
            "epochs_override": args.epochs,
            "propos_kwargs": args.propos_kwargs,
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"bench_dropin{'_' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
