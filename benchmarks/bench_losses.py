"""Benchmark of the prototype scattering loss against a naive dense implementation.

For every K in {10, 200, 1000}, B in {256, 1024} and queue size in {0, 10240}
(d = 256) it times one forward + backward of

* ``propos_losses``: :class:`propos_losses.psl.PrototypeScatteringLoss` (hard
  labels summed with ``index_add``, exact masking of empty clusters, queue
  read and push included, training mode), with its value checks
  (``validate_args=True``, the default) and without (``fast``: structural
  checks only, no host sync), and
* ``naive``: the authors' style: a dense one-hot ``K x (B + Q)`` matrix,
  L1-normalised, multiplied with the features, all ``K`` prototypes kept and
  empty clusters filled with the finite logit ``-10``, and a queue kept as a
  ring buffer written by index assignment.

It also reports the peak memory of one forward + backward above what was
allocated before it. On CUDA: ``torch.cuda.max_memory_allocated``. On CPU:
the memory events of ``torch.profiler`` (``profile_memory=True``), replayed in
time order to find the highest total of live tensor bytes allocated during
the step (the method is printed with the table).

``--hot-path`` adds, for PSL (K = 10 and 1000, B = 256, with and without a
queue) and PSA: host syncs per forward + backward (``aten::_local_scalar_dense``
in a profiler trace) with ``validate_args`` on and off, ``torch._dynamo``
graph breaks, and eager vs ``torch.compile(fullgraph=True)`` time of the fast
path (``--compile-backend``, default ``inductor``; ``aot_eager`` where no C++
compiler is available).

``--resnet18-step`` adds the PSL overhead (two PSL calls, one per view, K = 10,
B = 256, no queue) as a fraction of a BYOL-style ResNet-18 (CIFAR stem)
training step at batch 256 (two views through the online network with
backward, two through the target network without, one SGD step).

On a shared CPU, ``--threads 1`` gives far steadier timings (OpenMP threads
wait for each other when a core is taken by another process).

Run ``python benchmarks/bench_losses.py --help`` for the options; results are
printed as a table and written as JSON (with machine info and the date) to
``benchmarks/results/bench_losses.json`` unless ``--output`` says otherwise.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from _machine import machine_info  # noqa: E402

from propos_losses import (  # noqa: E402
    PSA,
    MomentumUpdater,
    ProPosLoss,
    defaults,  # noqa: E402
)
from propos_losses.psl import PrototypeScatteringLoss  # noqa: E402

DIM = defaults.PROJECTION_DIM
CLUSTER_COUNTS = (10, 200, 1000)
BATCH_SIZES = (256, 1024)
QUEUE_SIZES = (0, 10240)
NAIVE_EMPTY_LOGIT = (
    -10.0
)  # the authors' finite fill, reproduced on purpose (docs/differences.rst, the empty-cluster defect)
MAX_REPEATS = 50
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "bench_losses.json"


# ---------------------------------------------------------------- naive reference (authors' style)


class NaiveDensePSL(nn.Module):
    """Dense one-hot prototypes over all K clusters with a finite fill for empty ones."""

    queue_features: Tensor
    queue_labels: Tensor

    def __init__(self, num_clusters: int, temperature: float, queue_size: int, feature_dim: int) -> None:
        super().__init__()
        self.num_clusters = num_clusters
        self.temperature = temperature
        self.queue_size = queue_size
        self.register_buffer("queue_features", torch.zeros(queue_size, feature_dim))
        self.register_buffer("queue_labels", torch.zeros(queue_size, dtype=torch.long))
        self.ptr = 0

    def forward(self, online: Tensor, target: Tensor, labels: Tensor) -> Tensor:
        z = F.normalize(online, dim=1)
        z_target = F.normalize(target.detach(), dim=1)
        all_labels = labels
        if self.queue_size:
            z = torch.cat([z, self.queue_features])
            z_target = torch.cat([z_target, self.queue_features])
            all_labels = torch.cat([labels, self.queue_labels])
        n = all_labels.shape[0]
        k = self.num_clusters
        weight = torch.zeros(k, n, device=online.device, dtype=z.dtype)
        weight[all_labels, torch.arange(n, device=online.device)] = 1
        weight = F.normalize(weight, p=1, dim=1)
        mu = F.normalize(weight @ z, dim=1)
        mu_target = F.normalize(weight @ z_target, dim=1)
        logits = mu @ mu.t() / self.temperature
        positive = (mu * mu_target).sum(dim=1) / self.temperature
        eye = torch.eye(k, dtype=torch.bool, device=online.device)
        logits = torch.where(eye, positive[:, None].expand(k, k), logits)
        counts = torch.bincount(all_labels, minlength=k)
        empty = counts == 0
        logits = logits.masked_fill(empty[None, :].expand(k, k), NAIVE_EMPTY_LOGIT)
        positive = logits.diagonal()
        negative = logits[~eye].reshape(k, k - 1)
        loss = -positive + torch.logsumexp(torch.cat([positive[:, None], negative], dim=1), dim=1)
        loss = loss.masked_fill(empty, 0.0)
        loss = loss.sum() / (k - empty.sum())
        if self.training and self.queue_size:
            with torch.no_grad():
                slots = (self.ptr + torch.arange(labels.shape[0], device=online.device)) % self.queue_size
                self.queue_features[slots] = F.normalize(target, dim=1)
                self.queue_labels[slots] = labels
                self.ptr = (self.ptr + labels.shape[0]) % self.queue_size
        return loss


# ---------------------------------------------------------------- measurement


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(
    step: Callable[[], None], device: torch.device, warmup: int, repeats: int, min_time_s: float = 0.0
) -> Tuple[float, float, int]:
    """Median and minimum wall time of ``step`` in milliseconds, and the number of timed calls.

    At least ``repeats`` calls, more (up to ``MAX_REPEATS``) until ``min_time_s`` has been spent:
    cheap configurations get enough samples for the minimum to be meaningful on a busy machine.
    """
    for _ in range(warmup):
        step()
    synchronize(device)
    times: List[float] = []
    while len(times) < repeats or (sum(times) < min_time_s * 1e3 and len(times) < MAX_REPEATS):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times), len(times)


def peak_memory_bytes(step: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated by ``step`` above the allocation at its start."""
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()  # positive for an allocation, negative for a free
        peak = max(peak, live)
    return peak


MEMORY_METHOD = {
    "cuda": "torch.cuda.max_memory_allocated minus memory allocated before the step",
    "cpu": "torch.profiler memory events (profile_memory=True), running sum of allocated minus freed bytes",
}


def fill_queue(module: nn.Module, queue_size: int, num_clusters: int, device: torch.device) -> None:
    generator = torch.Generator(device="cpu").manual_seed(1)
    features = F.normalize(torch.randn(queue_size, DIM, generator=generator), dim=1).to(device)
    labels = torch.randint(0, num_clusters, (queue_size,), generator=generator).to(device)
    if isinstance(module, PrototypeScatteringLoss):
        assert module.queue is not None
        module.queue.push(features, labels)
    elif isinstance(module, NaiveDensePSL):
        module.queue_features.copy_(features)
        module.queue_labels.copy_(labels)


def bench_config(
    num_clusters: int,
    batch_size: int,
    queue_size: int,
    device: torch.device,
    warmup: int,
    repeats: int,
    min_time_s: float,
) -> List[Dict[str, Any]]:
    generator = torch.Generator(device="cpu").manual_seed(0)
    online = torch.randn(batch_size, DIM, generator=generator).to(device).requires_grad_(True)
    target = torch.randn(batch_size, DIM, generator=generator).to(device)
    labels = torch.randint(0, num_clusters, (batch_size,), generator=generator).to(device)
    rows = []
    implementations: List[Tuple[str, nn.Module]] = [
        ("propos_losses", PrototypeScatteringLoss(num_clusters, queue_size=queue_size, feature_dim=DIM)),
        ("fast", PrototypeScatteringLoss(num_clusters, queue_size=queue_size, feature_dim=DIM, validate_args=False)),
        ("naive", NaiveDensePSL(num_clusters, defaults.TEMPERATURE, queue_size, DIM)),
    ]
    for name, module in implementations:
        module.to(device).train()
        if queue_size:
            fill_queue(module, queue_size, num_clusters, device)
        value: List[float] = []

        def step() -> None:
            online.grad = None
            loss = module(online, target, labels)
            loss.backward()
            value.append(float(loss.detach()))

        median_ms, min_ms, timed = time_step(step, device, warmup, repeats, min_time_s)
        peak = peak_memory_bytes(step, device)
        rows.append(
            {
                "implementation": name,
                "num_clusters": num_clusters,
                "batch_size": batch_size,
                "queue_size": queue_size,
                "dim": DIM,
                "median_ms": median_ms,
                "min_ms": min_ms,
                "timed_calls": timed,
                "peak_memory_mib": peak / 2**20,
                "loss_first_step": value[0],
            }
        )
    return rows


# ---------------------------------------------------------------- hot path


def count_syncs(step: Callable[[], None]) -> int:
    """Device-to-host reads (``aten::_local_scalar_dense``) during one call of ``step``."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return sum(e.count for e in prof.key_averages() if e.key == "aten::_local_scalar_dense")


def bench_hot_path(
    device: torch.device, backend: str, warmup: int, repeats: int, min_time_s: float
) -> List[Dict[str, Any]]:
    """Syncs (validate on/off), graph breaks and eager vs compiled time of PSL and PSA at B = 256."""
    from propos_losses.psa import PositiveSamplingAlignment

    generator = torch.Generator(device="cpu").manual_seed(0)
    batch_size = 256
    online = torch.randn(batch_size, DIM, generator=generator).to(device).requires_grad_(True)
    target = torch.randn(batch_size, DIM, generator=generator).to(device)
    rows = []
    cases: List[Tuple[str, Callable[[bool], nn.Module], Tuple[Any, ...]]] = []
    for k, queue in ((10, 0), (1000, 0), (10, 10240)):
        labels = torch.randint(0, k, (batch_size,), generator=generator).to(device)
        cases.append(
            (
                f"PSL K={k} queue={queue}",
                lambda v, k=k, queue=queue: PrototypeScatteringLoss(
                    k, queue_size=queue, feature_dim=DIM, validate_args=v
                ),
                (online, target, labels),
            )
        )
    predictor = nn.Sequential(nn.Linear(DIM, 4096), nn.BatchNorm1d(4096), nn.ReLU(), nn.Linear(4096, DIM)).to(device)
    cases.append(
        ("PSA (4096-wide predictor)", lambda v: PositiveSamplingAlignment(predictor, validate_args=v), (online, target))
    )
    for name, build, inputs in cases:
        row: Dict[str, Any] = {"case": name, "backend": backend}
        for validate in (True, False):
            module = build(validate).to(device)
            if isinstance(module, PrototypeScatteringLoss) and module.queue is not None:
                fill_queue(module, module.queue_size, module.num_clusters, device)

            def step(module: nn.Module = module) -> None:
                online.grad = None
                module(*inputs).backward()

            step()
            row[f"syncs_validate_{validate}"] = count_syncs(step)
            row[f"eager_ms_validate_{validate}"] = time_step(step, device, warmup, repeats, min_time_s)[1]
        fast = build(False).to(device)
        if isinstance(fast, PrototypeScatteringLoss) and fast.queue is not None:
            fill_queue(fast, fast.queue_size, fast.num_clusters, device)
        torch._dynamo.reset()
        row["graph_breaks"] = int(torch._dynamo.explain(fast)(*inputs).graph_break_count)
        torch._dynamo.reset()
        try:
            compiled = torch.compile(fast, fullgraph=True, backend=backend)

            def compiled_step() -> None:
                online.grad = None
                compiled(*inputs).backward()

            start = time.perf_counter()
            compiled_step()
            row["compile_s"] = time.perf_counter() - start
            row["compiled_ms"] = time_step(compiled_step, device, warmup, repeats, min_time_s)[1]
        except Exception as exc:  # report, do not hide: e.g. no C++ compiler for inductor
            row["compiled_ms"] = None
            row["compile_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        rows.append(row)
    return rows


def format_hot_path(rows: List[Dict[str, Any]]) -> str:
    header = (
        f"{'case':<28} | {'syncs checked':>13} {'syncs fast':>10} {'breaks':>6} | {'checked ms':>10} "
        f"{'fast ms':>8} {'compiled ms':>11}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        compiled = f"{r['compiled_ms']:.2f}" if r.get("compiled_ms") is not None else "error"
        lines.append(
            f"{r['case']:<28} | {r['syncs_validate_True']:>13} {r['syncs_validate_False']:>10} {r['graph_breaks']:>6} | "
            f"{r['eager_ms_validate_True']:>10.2f} {r['eager_ms_validate_False']:>8.2f} {compiled:>11}"
        )
    lines.append(f"(compiled: torch.compile(fullgraph=True, backend={rows[0]['backend']!r}) of the fast path)")
    for r in rows:
        if r.get("compile_error"):
            lines.append(f"{r['case']}: {r['compile_error']}")
    return "\n".join(lines)


# ---------------------------------------------------------------- ResNet-18 step


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet18_cifar_with_projector() -> nn.Module:
    """ResNet-18 with the CIFAR stem (3x3 conv, no max-pool) and the paper's projector."""
    layers: List[nn.Module] = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    in_planes = 64
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)]
        in_planes = planes
    layers += [
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(512, defaults.HIDDEN_DIM),
        nn.BatchNorm1d(defaults.HIDDEN_DIM),
        nn.ReLU(),
        nn.Linear(defaults.HIDDEN_DIM, DIM),
    ]
    return nn.Sequential(*layers)


def _step_variants(
    device: torch.device, batch_size: int, compile_backend: Optional[str]
) -> Dict[str, Callable[[], None]]:
    """Whole training steps of a ResNet-18 BYOL (PSA with sigma 0) and of ProPos (PSA + PSL), same networks.

    Every variant: online network, predictor (inside PSA), target network
    (no grad), Eq. 12 averaged over the view orders, backward, SGD step and
    the momentum update. ``compile_backend`` compiles the networks and the
    criterion (``fullgraph`` for the criterion: it must not graph-break).
    """
    torch.manual_seed(0)
    online_net = resnet18_cifar_with_projector().to(device)
    target_net = copy.deepcopy(online_net)
    predictor = nn.Sequential(
        nn.Linear(DIM, defaults.HIDDEN_DIM),
        nn.BatchNorm1d(defaults.HIDDEN_DIM),
        nn.ReLU(),
        nn.Linear(defaults.HIDDEN_DIM, DIM),
    ).to(device)
    parameters = list(online_net.parameters()) + list(predictor.parameters())
    optimizer = torch.optim.SGD(parameters, lr=defaults.BASE_LR, momentum=defaults.SGD_MOMENTUM)
    updater = MomentumUpdater(total_steps=10_000)
    views = [torch.randn(batch_size, 3, 32, 32, device=device) for _ in range(2)]
    n_samples = 50_000
    indices = torch.randint(0, n_samples, (batch_size,), device=device)
    variants: Dict[str, Callable[[], None]] = {}
    for name, method, validate in (
        ("byol (validate_args=True)", "byol", True),
        ("byol (validate_args=False)", "byol", False),
        ("propos (validate_args=True)", "propos", True),
        ("propos (validate_args=False)", "propos", False),
    ):
        psa = PSA(predictor, sigma=0.0 if method == "byol" else defaults.SIGMA, validate_args=validate)
        psl = PrototypeScatteringLoss(10, validate_args=validate)
        lambda_psl = 0.0 if method == "byol" else defaults.LAMBDA_PSL
        criterion = ProPosLoss(psa, psl, lambda_psl=lambda_psl, psl_start=0).to(device)
        criterion.set_pseudo_labels(torch.randint(0, 10, (n_samples,)))
        online: Callable[[Tensor], Tensor] = online_net
        target: Callable[[Tensor], Tensor] = target_net
        loss_fn: Callable[..., Tensor] = criterion
        if compile_backend is not None:
            online = torch.compile(online_net, backend=compile_backend)
            target = torch.compile(target_net, backend=compile_backend)
            loss_fn = torch.compile(criterion, backend=compile_backend, fullgraph=not validate)

        def step(
            online: Callable[[Tensor], Tensor] = online,
            target: Callable[[Tensor], Tensor] = target,
            loss_fn: Callable[..., Tensor] = loss_fn,
        ) -> None:
            optimizer.zero_grad(set_to_none=True)
            q1, q2 = online(views[0]), online(views[1])
            with torch.no_grad():
                z1, z2 = target(views[0]), target(views[1])
            loss_fn(q1, q2, z1, z2, indices).backward()
            optimizer.step()
            updater.update(online_net, target_net)

        variants[name if compile_backend is None else f"{name}, compiled"] = step
    return variants


def bench_resnet18_step(
    device: torch.device, batch_size: int, warmup: int, repeats: int, compile_backend: Optional[str]
) -> Dict[str, Any]:
    """Step time of BYOL and ProPos (eager, and compiled with ``compile_backend``), interleaved round by round."""
    variants = _step_variants(device, batch_size, None)
    compile_errors: Dict[str, str] = {}
    if compile_backend is not None:
        try:
            variants.update(_step_variants(device, batch_size, compile_backend))
        except Exception as exc:  # report, do not hide: e.g. no C++ compiler for inductor
            compile_errors["build"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    times: Dict[str, List[float]] = {name: [] for name in variants}
    for name, step in list(variants.items()):  # warm-up (and compilation) outside the timed rounds
        try:
            for _ in range(max(warmup, 2)):
                step()
        except Exception as exc:
            compile_errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            del variants[name], times[name]
    for _ in range(max(repeats, 5)):  # rounds: every variant once per round, so drift hits all alike
        for name, step in variants.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times[name].append(1e3 * (time.perf_counter() - start))
    rows = {name: {"median_ms": statistics.median(t), "min_ms": min(t)} for name, t in times.items()}
    for name, row in rows.items():
        base = name.replace("propos", "byol")
        if base != name and base in rows:
            row["overhead_vs_byol"] = row["median_ms"] / rows[base]["median_ms"] - 1.0
    return {"batch_size": batch_size, "compile_backend": compile_backend, "steps": rows, "errors": compile_errors}


def format_resnet18_step(result: Dict[str, Any]) -> str:
    lines = [
        f"ResNet-18 (CIFAR stem, 4096-256 projector and predictor) training step, B={result['batch_size']}, "
        "two views, SGD + momentum update (median of interleaved rounds):",
        f"{'variant':<42} {'median ms':>10} {'min ms':>8} {'vs BYOL':>8}",
    ]
    for name, row in result["steps"].items():
        overhead = row.get("overhead_vs_byol")
        extra = f"{100 * overhead:+7.1f}%" if overhead is not None else ""
        lines.append(f"{name:<42} {row['median_ms']:>10.2f} {row['min_ms']:>8.2f} {extra:>8}")
    lines.append("(vs BYOL: ProPos step time over the BYOL step with the same validate_args and compilation)")
    for name, error in result["errors"].items():
        lines.append(f"{name}: {error}")
    return "\n".join(lines)


# ---------------------------------------------------------------- driver


def format_table(rows: List[Dict[str, Any]]) -> str:
    header = f"{'K':>5} {'B':>5} {'queue':>6} | {'ours ms':>8} {'fast ms':>8} {'naive ms':>9} {'speed-up':>8} | "
    header += f"{'ours MiB':>9} {'naive MiB':>10} | {'ours loss':>9} {'naive loss':>10}"
    lines = [header, "-" * len(header)]
    by_key: Dict[Tuple[int, int, int], Dict[str, Dict[str, Any]]] = {}
    for row in rows:
        key = (row["num_clusters"], row["batch_size"], row["queue_size"])
        by_key.setdefault(key, {})[row["implementation"]] = row
    for (k, b, q), pair in by_key.items():
        ours, fast, naive = pair["propos_losses"], pair["fast"], pair["naive"]
        lines.append(
            f"{k:>5} {b:>5} {q:>6} | {ours['min_ms']:>8.2f} {fast['min_ms']:>8.2f} {naive['min_ms']:>9.2f} "
            f"{naive['min_ms'] / fast['min_ms']:>7.2f}x | {ours['peak_memory_mib']:>9.2f} "
            f"{naive['peak_memory_mib']:>10.2f} | {ours['loss_first_step']:>9.4f} {naive['loss_first_step']:>10.4f}"
        )
    return "\n".join(lines)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda (default: cuda if available)",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per configuration (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="least timed calls per configuration (default 3)")
    parser.add_argument(
        "--min-time", type=float, default=0.25, help="keep timing a configuration until this many seconds (0.25)"
    )
    parser.add_argument(
        "--resnet18-step",
        action="store_true",
        help="also time whole ResNet-18 training steps: BYOL vs ProPos (PSA + PSL), eager and compiled",
    )
    parser.add_argument(
        "--resnet18-batch",
        type=int,
        default=None,
        help=f"batch of that step (default {defaults.BATCH_SIZE}; on CPU the step is skipped unless this is given)",
    )
    parser.add_argument(
        "--step-compile-backend",
        default="inductor",
        help="torch.compile backend of the compiled --resnet18-step variants; 'none' measures eager only",
    )
    parser.add_argument("--hot-path", action="store_true", help="syncs, graph breaks, eager vs compiled")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend of --hot-path")
    parser.add_argument("--skip-table", action="store_true", help="only the --hot-path / --resnet18-step parts")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON output path")
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.repeats < 1 or args.min_time < 0:
        parser.error(
            f"--warmup and --min-time must be >= 0 and --repeats >= 1, got {args.warmup}, {args.min_time}, {args.repeats}"
        )
    if args.resnet18_batch is not None and args.resnet18_batch < 2:
        parser.error(f"--resnet18-batch must be >= 2 (batch norm), got {args.resnet18_batch}")
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    info = machine_info(str(device))
    print("machine:", json.dumps(info))
    print(f"peak memory: {MEMORY_METHOD[device.type]}")
    print(
        f"forward + backward, d = {DIM}: best of >= {args.repeats} timed calls (>= {args.min_time} s) after "
        f"{args.warmup} warm-up call(s); medians are in the JSON. The minimum is shown because other "
        "processes on a shared machine only ever add time.\n"
    )
    rows: List[Dict[str, Any]] = []
    if not args.skip_table:
        for num_clusters in CLUSTER_COUNTS:
            for batch_size in BATCH_SIZES:
                for queue_size in QUEUE_SIZES:
                    rows += bench_config(
                        num_clusters, batch_size, queue_size, device, args.warmup, args.repeats, args.min_time
                    )
        print(format_table(rows))
        print(
            "(speed-up: naive / fast; loss columns differ where clusters are empty: the naive -10 fill leaks "
            "into the denominator)"
        )
    hot: Optional[List[Dict[str, Any]]] = None
    if args.hot_path:
        hot = bench_hot_path(device, args.compile_backend, args.warmup, args.repeats, args.min_time)
        print("\n" + format_hot_path(hot))
    resnet: Optional[Dict[str, Any]] = None
    if args.resnet18_step and device.type != "cuda" and args.resnet18_batch is None:
        reason = (
            f"skipped on {device.type}: a batch-{defaults.BATCH_SIZE} ResNet-18 step takes minutes on a CPU "
            "and the ratio says nothing about GPU training; pass --resnet18-batch N to measure it anyway"
        )
        print(f"\nresnet18 step {reason}")
        resnet = {"skipped": reason}
    elif args.resnet18_step:
        batch = defaults.BATCH_SIZE if args.resnet18_batch is None else args.resnet18_batch
        backend = None if args.step_compile_backend == "none" else args.step_compile_backend
        resnet = bench_resnet18_step(device, batch, args.warmup, args.repeats, backend)
        print("\n" + format_resnet18_step(resnet))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": info,
        "memory_method": MEMORY_METHOD[device.type],
        "warmup": args.warmup,
        "repeats": args.repeats,
        "min_time_s": args.min_time,
        "rows": rows,
        "hot_path": hot,
        "resnet18_step": resnet,
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {args.output}")


if __name__ == "__main__":
    main()
