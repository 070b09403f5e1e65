"""CUDA paths: the same values as on the CPU, no host sync on the fast path, inductor compiles without a break.

Skipped without a CUDA device (CI has none); ``benchmarks/gpu_check.sh`` runs
them on a lent GPU. Every comparison is against the CPU result of the same
call, so a CUDA-only difference (a kernel, autocast, a device mismatch) fails.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import Tensor, nn

from propos_losses import (
    PSA,
    PSL,
    MomentumUpdater,
    ProPosLoss,
    PrototypeQueue,
    SphericalKMeans,
    prototype_scattering_terms,
)

from test_hot_path import count_syncs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

B, D, K = 64, 32, 10
CUDA = torch.device("cuda")


def batch(seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    online = torch.randn(B, D, generator=gen, dtype=dtype)
    target = torch.randn(B, D, generator=gen, dtype=dtype)
    labels = torch.randint(0, K - 2, (B,), generator=gen)  # two empty clusters
    weights = torch.rand(B, K, generator=gen, dtype=dtype)
    return online, target, labels, weights


def gradient(fn: Callable[[Tensor], Tensor], online: Tensor) -> tuple[Tensor, Tensor]:
    online = online.clone().requires_grad_()
    loss = fn(online)
    (grad,) = torch.autograd.grad(loss, online)
    return loss.detach().cpu(), grad.cpu()


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("validate", [True, False])
def test_psl_on_cuda_equals_cpu_in_float64(soft: bool, validate: bool) -> None:
    online, target, labels, weights = batch()
    assignments = weights if soft else labels
    terms_cpu = prototype_scattering_terms(online, target, assignments, K)
    terms_gpu = prototype_scattering_terms(
        online.to(CUDA), target.to(CUDA), assignments.to(CUDA), K, validate_args=validate
    )
    for a, b in zip(terms_cpu, terms_gpu):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-12, atol=1e-12)
    cpu = gradient(lambda x: PSL(K)(x, target, assignments), online)
    gpu = gradient(lambda x: PSL(K, validate_args=validate)(x, target.to(CUDA), assignments.to(CUDA)), online.to(CUDA))
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


def test_psl_queue_and_psa_on_cuda_equal_cpu() -> None:
    online, target, labels, _ = batch(1)
    results = []
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        predictor = nn.Sequential(nn.Linear(D, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, D)).double().to(device)
        psl = PSL(K, queue_size=100, feature_dim=D).double().to(device)
        psa = PSA(predictor, sigma=0.0)
        indices = torch.arange(B, device=device)
        x, z, y = online.to(device), target.to(device), labels.to(device)
        psl(x, z, y, indices)  # fill the queue
        loss = psl(x, z, y, indices) + psa(x, z)
        results.append((loss.detach().cpu(), psl.queue.contents()[0].cpu()))  # type: ignore[union-attr]
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-12, atol=1e-12)


def test_fast_path_makes_no_host_sync_on_cuda() -> None:
    online, target, labels, weights = batch(2, torch.float32)
    online, target, labels, weights = (t.to(CUDA) for t in (online, target, labels, weights))
    online.requires_grad_()
    psl = PSL(K, validate_args=False)
    queued = PSL(K, queue_size=128, feature_dim=D, validate_args=False).to(CUDA)
    psa = PSA(nn.Linear(D, D).to(CUDA), validate_args=False)
    queue = PrototypeQueue(100, D, validate_args=False).to(CUDA)
    online_net, target_net = nn.Linear(D, D).to(CUDA), nn.Linear(D, D).to(CUDA)
    updater = MomentumUpdater(total_steps=100)
    updater.update(online_net, target_net)  # first call: set-up checks outside the measurement
    indices = torch.arange(B, device=CUDA)
    queued(online, target, labels, indices)
    calls = {
        "PSL hard": lambda: psl(online, target, labels).backward(),
        "PSL soft": lambda: psl(online, target, weights).backward(),
        "PSL queue": lambda: queued(online, target, labels, indices).backward(),
        "PSA": lambda: psa(online, target).backward(),
        "queue push": lambda: queue.push(target, labels, indices),
        "momentum update": lambda: updater.update(online_net, target_net),
    }
    syncs = {name: count_syncs(call) for name, call in calls.items()}
    assert syncs == {name: 0 for name in calls}


@pytest.mark.parametrize("which", ["psl", "psa", "propos"])
def test_inductor_compiles_the_fast_path_on_cuda_without_graph_breaks(which: str) -> None:
    torch._dynamo.reset()
    online, target, labels, _ = batch(3, torch.float32)
    online, target, labels = online.to(CUDA), target.to(CUDA), labels.to(CUDA)
    torch.manual_seed(0)
    if which == "psl":
        module: nn.Module = PSL(K, validate_args=False)
        args: tuple[object, ...] = (target, labels)
    elif which == "psa":
        module = PSA(
            nn.Sequential(nn.Linear(D, 64), nn.ReLU(), nn.Linear(64, D)).to(CUDA), sigma=0.0, validate_args=False
        )
        args = (target,)
    else:
        psa = PSA(nn.Linear(D, D).to(CUDA), sigma=0.0, validate_args=False)
        module = ProPosLoss(psa, PSL(K, validate_args=False), psl_start=0)
        module.set_pseudo_labels(labels.cpu())  # type: ignore[operator]
        args = (online.flip(0), target, target.flip(0), torch.arange(B, device=CUDA))
    compiled = torch.compile(module, fullgraph=True, backend="inductor")
    eager_in = online.clone().requires_grad_()
    compiled_in = online.clone().requires_grad_()
    eager = module(eager_in, *args)
    eager.backward()
    result = compiled(compiled_in, *args)
    result.backward()
    torch.testing.assert_close(result, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled_in.grad, eager_in.grad, rtol=1e-4, atol=1e-6)


def test_psl_under_bf16_autocast_on_cuda_is_float32_and_close_to_float32() -> None:
    online, target, labels, _ = batch(4, torch.float32)
    online, target, labels = online.to(CUDA), target.to(CUDA), labels.to(CUDA)
    linear = nn.Linear(D, D).to(CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        mixed = PSL(K)(linear(online), linear(target).detach(), labels)
    exact = PSL(K)(linear(online), linear(target).detach(), labels)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, exact, rtol=2e-2, atol=2e-2)  # bf16 inputs: ~3 significant digits


def test_spherical_kmeans_on_cuda_finds_the_cpu_partition() -> None:
    gen = torch.Generator().manual_seed(5)
    centres = torch.nn.functional.normalize(torch.randn(K, D, generator=gen, dtype=torch.float64), dim=1)
    truth = torch.arange(2000) % K
    X = centres[truth] + 0.05 * torch.randn(2000, D, generator=gen, dtype=torch.float64)
    cpu = SphericalKMeans(K, random_state=0).fit(X)
    gpu = SphericalKMeans(K, random_state=0).fit(X.to(CUDA))
    assert torch.equal(torch.as_tensor(gpu.labels_).cpu(), torch.as_tensor(cpu.labels_))
    assert abs(gpu.inertia_ - cpu.inertia_) <= 1e-9 * max(1.0, abs(cpu.inertia_))
