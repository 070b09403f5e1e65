"""The fast path (``validate_args=False``): no device-to-host sync, no torch.compile graph break, same values.

A host sync shows up in a torch.profiler trace as ``aten::_local_scalar_dense``
(``Tensor.item()``, ``bool(tensor)``, ``int(tensor)``); on the CPU build it is
counted exactly as on CUDA, where each one drains the launch queue.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from propos_losses import PSA, PSL, MomentumUpdater, ProPosLoss, PrototypeQueue, prototype_scattering_loss

B, D, K = 24, 8, 5


def count_syncs(fn: Callable[[], object]) -> int:
    """Number of ``aten::_local_scalar_dense`` calls (device-to-host reads) while ``fn`` runs."""
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        fn()
    return sum(event.count for event in trace.key_averages() if event.key == "aten::_local_scalar_dense")


def batch(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    online = torch.randn(B, D, generator=gen, requires_grad=True)
    target = torch.randn(B, D, generator=gen)
    labels = torch.randint(0, K, (B,), generator=gen)
    weights = torch.rand(B, K, generator=gen)
    return online, target, labels, weights


def _psl_hard(validate: bool) -> Callable[[], object]:
    online, target, labels, _ = batch()
    psl = PSL(K, validate_args=validate)
    return lambda: psl(online, target, labels).backward()


def _psl_soft(validate: bool) -> Callable[[], object]:
    online, target, _, weights = batch()
    psl = PSL(K, validate_args=validate)
    return lambda: psl(online, target, weights).backward()


def _psl_queue(validate: bool) -> Callable[[], object]:
    online, target, labels, _ = batch()
    psl = PSL(K, queue_size=40, feature_dim=D, validate_args=validate)
    psl(online, target, labels, torch.arange(B))  # the queue holds data when measured
    return lambda: psl(online, target, labels, torch.arange(B)).backward()


def _functional(validate: bool) -> Callable[[], object]:
    online, target, labels, _ = batch()
    queue = torch.randn(10, D)
    queue_labels = torch.randint(0, K, (10,))
    return lambda: prototype_scattering_loss(
        online, target, labels, K, queue_features=queue, queue_labels=queue_labels, validate_args=validate
    ).backward()


def _psa(validate: bool) -> Callable[[], object]:
    online, target, _, _ = batch()
    psa = PSA(nn.Sequential(nn.Linear(D, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, D)), validate_args=validate)
    return lambda: psa(online, target).backward()


def _queue_push(validate: bool) -> Callable[[], object]:
    _, target, labels, _ = batch()
    queue = PrototypeQueue(30, D, validate_args=validate)
    return lambda: queue.push(target, labels, torch.arange(B))


def _queue_relabel(validate: bool) -> Callable[[], object]:
    _, target, labels, _ = batch()
    queue = PrototypeQueue(30, D, validate_args=validate)
    queue.push(target, labels, torch.arange(B))
    new_labels = torch.randint(0, K, (B,))
    return lambda: queue.relabel(new_labels)


def test_fast_relabel_equals_the_checked_one() -> None:
    _, target, labels, _ = batch()
    new_labels = torch.randint(0, K, (B,), generator=torch.Generator().manual_seed(9))
    queues = [PrototypeQueue(30, D, validate_args=v) for v in (True, False)]
    for queue in queues:
        queue.push(target, labels, torch.arange(B))
        queue.relabel(new_labels)
    assert torch.equal(queues[0].labels, queues[1].labels)
    assert torch.equal(queues[1].contents()[1], new_labels)


def _updater(validate: bool) -> Callable[[], object]:
    online = nn.Sequential(nn.Linear(D, D), nn.BatchNorm1d(D))
    updater = MomentumUpdater(total_steps=10)
    target = updater.make_target(online)
    return lambda: updater.update(online, target)


def _propos_loss(validate: bool) -> Callable[[], object]:
    online, target, labels, _ = batch()
    criterion = ProPosLoss(
        PSA(nn.Linear(D, D), validate_args=validate), PSL(K, validate_args=validate), lambda_psl=0.5, psl_start=0
    )
    criterion.set_pseudo_labels(torch.randint(0, K, (100,)))
    indices = torch.randperm(100)[:B]
    return lambda: criterion(online, online, target, target, indices).backward()


CASES = {
    "propos_loss": _propos_loss,
    "psl_hard": _psl_hard,
    "psl_soft": _psl_soft,
    "psl_queue": _psl_queue,
    "psl_functional_queue": _functional,
    "psa": _psa,
    "queue_push": _queue_push,
    "queue_relabel": _queue_relabel,
    "momentum_update": _updater,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_path_makes_no_host_sync(case: str) -> None:
    assert count_syncs(CASES[case](False)) == 0


@pytest.mark.parametrize("case", ["psl_hard", "psl_soft", "psl_queue", "psa", "queue_push", "propos_loss"])
def test_value_checks_read_the_device_and_the_counter_sees_it(case: str) -> None:
    # The counter can fail: the validating path does read values back.
    assert count_syncs(CASES[case](True)) > 0


@pytest.mark.parametrize("num_clusters", [K, 3 * B])  # 3B: most clusters empty, masked vs selected
def test_fast_path_gives_the_validated_result_and_gradient(num_clusters: int) -> None:
    online, target, labels, _ = batch(3)
    online = online.detach().double().requires_grad_(True)
    target = target.double()
    labels = labels * (num_clusters // K)
    weights = torch.rand(B, num_clusters, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    weights[:, ::2] = 0  # empty columns
    for assignments in (labels, weights):
        checked = PSL(num_clusters)(online, target, assignments)
        (checked_grad,) = torch.autograd.grad(checked, online)
        fast = PSL(num_clusters, validate_args=False)(online, target, assignments)
        (fast_grad,) = torch.autograd.grad(fast, online)
        torch.testing.assert_close(fast, checked, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(fast_grad, checked_grad, rtol=1e-12, atol=1e-12)


def test_fast_path_keeps_the_structural_checks() -> None:
    online, target, labels, _ = batch()
    psl = PSL(K, validate_args=False)
    with pytest.raises(ValueError, match="same shape"):
        psl(online, target[:, :-1], labels)
    with pytest.raises(TypeError, match="integer cluster labels"):
        psl(online, target, labels.float())
    with pytest.raises(ValueError, match="rows"):
        psl(online, target, labels[:-1])
    with pytest.raises(ValueError, match="shape of target_projection"):
        PSA(nn.Linear(D, D + 1), validate_args=False)(online, target)


def test_validate_args_can_be_switched_at_run_time_and_reaches_the_queue() -> None:
    online, target, labels, _ = batch()
    psl = PSL(K, queue_size=10, feature_dim=D, validate_args=False)
    assert psl.queue is not None and psl.queue.validate_args is False
    psl.validate_args = True
    assert psl.queue.validate_args is True
    with pytest.raises(ValueError, match="finite"):
        psl(online, target.masked_fill(target > 1, float("nan")), labels)
    with pytest.raises(TypeError, match="validate_args must be a bool"):
        psl.validate_args = 1  # type: ignore[assignment]
    for build in (
        lambda: PSL(K, validate_args="no"),
        lambda: PSA(nn.Linear(D, D), validate_args=None),
        lambda: PrototypeQueue(4, D, validate_args=0),
    ):
        with pytest.raises(TypeError, match="validate_args must be a bool"):
            build()


def test_momentum_step_survives_load_state_dict_without_syncing_per_update() -> None:
    online = nn.Linear(D, D)
    updater = MomentumUpdater(0.9, 1.0, total_steps=10)
    target = updater.make_target(online)
    for _ in range(3):
        updater.update(online, target)
    restored = MomentumUpdater(0.9, 1.0, total_steps=10)
    restored.load_state_dict(updater.state_dict())
    assert int(restored.step) == 3
    assert restored.momentum == updater.momentum == updater.momentum_at(3)


def _explain(module: nn.Module, *args: object) -> int:
    torch._dynamo.reset()
    return int(torch._dynamo.explain(module)(*args).graph_break_count)


@pytest.mark.parametrize("case", ["hard", "soft", "queue"])
def test_psl_fast_path_has_no_graph_break(case: str) -> None:
    online, target, labels, weights = batch()
    if case == "queue":
        psl = PSL(K, queue_size=40, feature_dim=D, validate_args=False)
        psl(online, target, labels, torch.arange(B))
        assert _explain(psl, online, target, labels, torch.arange(B)) == 0
    else:
        assert _explain(PSL(K, validate_args=False), online, target, labels if case == "hard" else weights) == 0


def test_psa_fast_path_has_no_graph_break() -> None:
    online, target, _, _ = batch()
    assert _explain(PSA(nn.Linear(D, D), validate_args=False), online, target) == 0


@pytest.mark.parametrize("assignments", ["hard", "soft"])
def test_compiled_fullgraph_psl_and_psa_equal_eager(assignments: str) -> None:
    torch._dynamo.reset()
    online, target, labels, weights = batch(5)
    labels_or_weights = labels if assignments == "hard" else weights
    predictor = nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, D))
    psl = PSL(K, validate_args=False)
    psa = PSA(predictor, sigma=0.0, validate_args=False)

    def step(q: Tensor) -> Tensor:
        return psa(q, target) + 0.5 * psl(q, target, labels_or_weights)

    eager_q = online.detach().clone().requires_grad_(True)
    eager = step(eager_q)
    eager.backward()
    compiled_q = online.detach().clone().requires_grad_(True)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(compiled_q)
    compiled.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(compiled_q.grad, eager_q.grad, rtol=1e-6, atol=1e-6)
