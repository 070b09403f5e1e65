"""Tests of :class:`propos_losses.momentum.MomentumUpdater` (ProPos Eq. 11, BYOL schedule)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Dict, List

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from propos_losses import defaults
from propos_losses.momentum import BufferPolicy, MomentumUpdater

from helpers import WORLD_SIZE, gloo_group, spawn_and_wait


def make_online(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    model.train()
    model(torch.randn(8, 3))  # moves the BatchNorm running statistics away from their initial values
    return model


def perturb(model: nn.Module, seed: int) -> None:
    """Stand-in for an optimiser step plus a forward pass: new parameters and BatchNorm statistics."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator))
    model(torch.randn(8, 3, generator=generator))


def state(model: nn.Module) -> Dict[str, Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def byol_momentum(step: int, total_steps: int, base: float, final: float) -> float:
    """The schedule written from the paper: m_t = m_T - (m_T - m_0)(cos(pi t / T) + 1) / 2."""
    t = min(step, total_steps)
    return final - (final - base) * (math.cos(math.pi * t / total_steps) + 1.0) / 2.0


# --- schedule -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("base", "final"), [(0.996, 1.0), (0.99, 0.999), (0.9, 0.5), (0.7, 0.7)])
@pytest.mark.parametrize("total_steps", [2, 1000])
def test_schedule_is_base_at_start_midpoint_halfway_and_final_at_the_end(
    base: float, final: float, total_steps: int
) -> None:
    updater = MomentumUpdater(base, final, total_steps=total_steps)
    assert updater.momentum_at(0) == pytest.approx(base, abs=1e-15)
    assert updater.momentum_at(total_steps // 2) == pytest.approx((base + final) / 2, abs=1e-15)
    assert updater.momentum_at(total_steps) == pytest.approx(final, abs=1e-15)
    assert updater.momentum_at(5 * total_steps) == updater.momentum_at(total_steps)


def test_schedule_matches_the_byol_formula_in_float64() -> None:
    updater = MomentumUpdater(total_steps=30)
    # cos(pi / 3) = 1/2 and cos(2 pi / 3) = -1/2 give literal values: 1 - 0.004 * 3/4 and 1 - 0.004 * 1/4.
    assert updater.momentum_at(10) == pytest.approx(0.997, abs=1e-15)
    assert updater.momentum_at(20) == pytest.approx(0.999, abs=1e-15)
    for step in range(32):
        expected = 1.0 - (1.0 - 0.996) * (math.cos(math.pi * min(step, 30) / 30) + 1.0) / 2.0
        assert updater.momentum_at(step) == pytest.approx(expected, abs=1e-15)


def test_schedule_increases_monotonically_towards_a_larger_final_momentum() -> None:
    updater = MomentumUpdater(total_steps=50)
    values = [updater.momentum_at(step) for step in range(51)]
    assert all(a <= b for a, b in zip(values, values[1:]))


@settings(max_examples=50, deadline=None)
@given(
    base=st.floats(min_value=0.0, max_value=1.0),
    final=st.floats(min_value=0.0, max_value=1.0),
    total_steps=st.integers(min_value=1, max_value=10**7),
    step=st.integers(min_value=0, max_value=2 * 10**7),
)
def test_scheduled_momentum_stays_between_base_and_final(
    base: float, final: float, total_steps: int, step: int
) -> None:
    momentum = MomentumUpdater(base, final, total_steps=total_steps).momentum_at(step)
    slack = 4 * math.ulp(1.0)
    assert min(base, final) - slack <= momentum <= max(base, final) + slack


def test_defaults_are_the_papers_values() -> None:
    updater = MomentumUpdater(total_steps=10)
    assert updater.base_momentum == defaults.BASE_MOMENTUM
    assert updater.final_momentum == defaults.FINAL_MOMENTUM
    # The target keeps its own BatchNorm statistics, as in BYOL, lightly and the authors' code.
    assert updater.buffers_policy == "none"


def test_update_uses_the_current_step_then_increments_it() -> None:
    online = make_online()
    updater = MomentumUpdater(0.9, 1.0, total_steps=4)
    target = updater.make_target(online)
    for step in range(6):
        assert int(updater.step) == step
        assert updater.momentum == updater.momentum_at(step)
        assert updater.update(online, target) == pytest.approx(byol_momentum(step, 4, 0.9, 1.0), abs=1e-15)
    assert updater.momentum == 1.0


# --- EMA -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("buffers", ["copy", "ema", "none"])
def test_several_updates_equal_an_explicit_loop_of_eq_11(buffers: BufferPolicy) -> None:
    online = make_online()
    updater = MomentumUpdater(0.5, 0.9, total_steps=3, buffers=buffers)  # small m: the EMA moves visibly
    target = updater.make_target(online)
    perturb(target, seed=100)  # the target starts away from the online network
    expected = state(target)
    for step in range(5):
        perturb(online, seed=step)
        m = byol_momentum(step, 3, 0.5, 0.9)
        for name, value in online.state_dict().items():
            is_parameter = name in dict(online.named_parameters())
            if is_parameter or (buffers == "ema" and value.is_floating_point()):
                expected[name] = m * expected[name] + (1 - m) * value
            elif buffers in ("copy", "ema"):
                expected[name] = value.clone()
        updater.update(online, target)
    for name, value in target.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=1e-6, msg=name)


def test_buffer_policies_copy_ema_and_leave_batchnorm_statistics() -> None:
    online = make_online()
    for policy in ("copy", "ema", "none"):
        updater = MomentumUpdater(0.5, 0.5, total_steps=1, buffers=policy)
        target = updater.make_target(online)
        perturb(target, seed=1)
        before = state(target)
        updater.update(online, target)
        after, online_state = target.state_dict(), online.state_dict()
        statistics = ("1.running_mean", "1.running_var")
        if policy == "copy":
            for name in (*statistics, "1.num_batches_tracked"):
                assert torch.equal(after[name], online_state[name]), name
        elif policy == "ema":
            for name in statistics:
                torch.testing.assert_close(after[name], 0.5 * before[name] + 0.5 * online_state[name])
            # Integer buffers are copied, not averaged.
            assert torch.equal(after["1.num_batches_tracked"], online_state["1.num_batches_tracked"])
        else:
            for name in (*statistics, "1.num_batches_tracked"):
                assert torch.equal(after[name], before[name]), name


def test_momentum_one_leaves_the_target_unchanged_and_zero_copies_the_online_network() -> None:
    online = make_online()
    keep = MomentumUpdater(1.0, 1.0, total_steps=1, buffers="none")
    target = keep.make_target(online)
    perturb(target, seed=3)
    before = state(target)
    keep.update(online, target)
    for name, value in target.state_dict().items():
        assert torch.equal(value, before[name]), name

    copy = MomentumUpdater(0.0, 0.0, total_steps=1, buffers="copy")
    copy.update(online, target)
    for name, value in target.state_dict().items():
        assert torch.equal(value, online.state_dict()[name]), name


def test_update_tracks_no_gradient_and_leaves_online_gradients_alone() -> None:
    online = make_online()
    online(torch.randn(4, 3)).sum().backward()
    gradients = [torch.zeros(0) if p.grad is None else p.grad.clone() for p in online.parameters()]
    updater = MomentumUpdater(total_steps=10)
    target = updater.make_target(online)
    updater.update(online, target)
    for parameter in target.parameters():
        assert not parameter.requires_grad and parameter.grad_fn is None and parameter.grad is None
    for parameter, gradient in zip(online.parameters(), gradients):
        assert parameter.grad is not None and torch.equal(parameter.grad, gradient)


# --- target creation and wrappers --------------------------------------------------------------


def test_make_target_is_an_independent_frozen_copy() -> None:
    online = make_online()
    target = MomentumUpdater.make_target(online)
    assert target is not online and target.training == online.training
    for (name, a), (_, b) in zip(online.state_dict().items(), target.state_dict().items()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), name
    assert all(p.requires_grad for p in online.parameters())
    assert not any(p.requires_grad for p in target.parameters())


def test_wrapped_online_model_is_unwrapped() -> None:
    online = make_online()
    wrapped = nn.DataParallel(online)  # same `.module` convention as DistributedDataParallel
    updater = MomentumUpdater(0.5, 0.5, total_steps=1)
    target = updater.make_target(wrapped)
    assert set(target.state_dict()) == set(online.state_dict())
    reference_target = MomentumUpdater.make_target(online)
    perturb(online, seed=4)
    updater.update(wrapped, target)
    MomentumUpdater(0.5, 0.5, total_steps=1).update(online, reference_target)
    for name, value in target.state_dict().items():
        assert torch.equal(value, reference_target.state_dict()[name]), name


# --- state ---------------------------------------------------------------------------------------


def test_step_round_trips_through_state_dict_and_training_continues_identically(tmp_path: Path) -> None:
    online = make_online()
    updater = MomentumUpdater(0.9, 1.0, total_steps=10)
    target = updater.make_target(online)
    for step in range(3):
        perturb(online, seed=step)
        updater.update(online, target)
    assert set(updater.state_dict()) == {"step"}
    torch.save(updater.state_dict(), tmp_path / "momentum.pt")
    restored = MomentumUpdater(0.9, 1.0, total_steps=10)
    restored.load_state_dict(torch.load(tmp_path / "momentum.pt", weights_only=True))
    assert int(restored.step) == 3 and restored.momentum == updater.momentum
    restored_target = MomentumUpdater.make_target(target)
    perturb(online, seed=9)
    assert restored.update(online, restored_target) == updater.update(online, target)
    for name, value in target.state_dict().items():
        assert torch.equal(value, restored_target.state_dict()[name]), name


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"base_momentum": -0.1}, ValueError),
        ({"base_momentum": 1.1}, ValueError),
        ({"base_momentum": float("nan")}, ValueError),
        ({"base_momentum": "0.99"}, TypeError),
        ({"final_momentum": 1.5}, ValueError),
        ({"final_momentum": -1e-9}, ValueError),
        ({"final_momentum": None}, TypeError),
        ({"total_steps": 0}, ValueError),
        ({"total_steps": -5}, ValueError),
        ({"total_steps": 10.0}, TypeError),
        ({"total_steps": None}, TypeError),
        ({"buffers": "average"}, ValueError),
        ({"buffers": None}, TypeError),
    ],
)
def test_bad_constructor_arguments_raise(kwargs: dict, error: type) -> None:
    arguments = {"total_steps": 10, **kwargs}
    with pytest.raises(error):
        MomentumUpdater(**arguments)


def test_total_steps_is_required() -> None:
    with pytest.raises(TypeError):
        MomentumUpdater()  # type: ignore[call-arg]


def _different_shape() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2))


def _different_names() -> nn.Sequential:
    model = make_online()
    return nn.Sequential(model[0], model[1], model[2], nn.Sequential(model[3]))


def _extra_parameter() -> nn.Module:
    model = make_online()
    model.register_parameter("scale", nn.Parameter(torch.ones(1)))
    return model


def _no_batchnorm_statistics() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.ReLU(), nn.Linear(4, 2))


def _float64() -> nn.Module:
    return make_online().double()


@pytest.mark.parametrize(
    "make_target",
    [_different_shape, _different_names, _extra_parameter, _no_batchnorm_statistics, _float64],
)
def test_mismatched_networks_raise_and_change_nothing(make_target: Callable[[], nn.Module]) -> None:
    online = make_online()
    target = make_target()
    updater = MomentumUpdater(0.5, 0.5, total_steps=10, buffers="copy")
    before = state(target)
    with pytest.raises(ValueError):
        updater.update(online, target)
    assert int(updater.step) == 0
    for name, value in target.state_dict().items():
        assert torch.equal(value, before[name]), name


def _extra_buffer() -> nn.Module:
    model = make_online(seed=1)
    model.register_buffer("extra", torch.arange(3.0))
    return model


@pytest.mark.parametrize("make_target", [_no_batchnorm_statistics, _extra_buffer])
def test_buffer_mismatch_is_ignored_when_buffers_are_left_alone(make_target: Callable[[], nn.Module]) -> None:
    online = make_online()
    target = make_target()
    online_before, target_before = state(online), state(target)
    updater = MomentumUpdater(0.5, 0.5, total_steps=10, buffers="none")
    updater.update(online, target)
    # Parameters follow Eq. 11 with m = 0.5; every buffer of both networks is untouched.
    for name, parameter in target.named_parameters():
        expected = 0.5 * target_before[name] + 0.5 * online_before[name]
        torch.testing.assert_close(parameter.detach(), expected, rtol=0, atol=1e-7)
    # Not vacuous: the update moved the target.
    assert any(not torch.equal(p.detach(), target_before[n]) for n, p in target.named_parameters())
    for name, buffer in target.named_buffers():
        assert torch.equal(buffer, target_before[name]), name
    for name, value in online.state_dict().items():
        assert torch.equal(value, online_before[name]), name
    assert int(updater.step) == 1


@pytest.mark.parametrize(("online", "target"), [("net", None), (None, "net"), ("net", "net-itself")])
def test_bad_update_arguments_raise(online: object, target: object) -> None:
    model = make_online()
    resolve = {"net": model, "net-itself": model, None: object()}
    with pytest.raises((TypeError, ValueError)):
        MomentumUpdater(total_steps=10).update(resolve[online], resolve[target])  # type: ignore[index, arg-type]


# --- DistributedDataParallel -----------------------------------------------------------------------

DDP_STEPS = 3


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    with gloo_group(rank, init_file):
        torch.manual_seed(0)
        online = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        ddp = nn.parallel.DistributedDataParallel(online)
        updater = MomentumUpdater(0.5, 0.9, total_steps=DDP_STEPS)
        target = updater.make_target(ddp)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
        online_history: List[Dict[str, Tensor]] = []
        for step in range(DDP_STEPS):
            generator = torch.Generator().manual_seed(10 * step + rank)
            x = torch.randn(3 + rank, 3, generator=generator)  # different data and batch sizes per rank
            optimizer.zero_grad()
            ddp(x).pow(2).sum().backward()
            optimizer.step()
            updater.update(ddp, target)
            online_history.append({k: v.clone() for k, v in online.state_dict().items()})
        torch.save({"target": target.state_dict(), "online": online_history}, os.path.join(out_dir, f"rank{rank}.pt"))


def test_ddp_wrapped_online_model_gives_identical_targets_on_every_rank(tmp_path: Path) -> None:
    spawn_and_wait(_ddp_worker, (str(tmp_path / "init"), str(tmp_path)))
    results = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]
    torch.manual_seed(0)
    expected = dict(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).state_dict())
    for step in range(DDP_STEPS):
        m = byol_momentum(step, DDP_STEPS, 0.5, 0.9)
        expected = {k: m * v + (1 - m) * results[0]["online"][step][k] for k, v in expected.items()}
    for result in results:
        assert set(result["target"]) == set(expected)  # no "module." prefix from the DDP wrapper
        for name, value in result["target"].items():
            torch.testing.assert_close(value, expected[name], msg=name)
    for name in expected:
        assert torch.equal(results[0]["target"][name], results[1]["target"][name]), name


@pytest.mark.parametrize("step", [torch.tensor(2.7), torch.tensor(-5), torch.tensor([1, 2]), torch.tensor(True)])
def test_load_state_dict_rejects_a_step_that_is_not_a_non_negative_integer(step: torch.Tensor) -> None:
    updater = MomentumUpdater(total_steps=10)
    online = torch.nn.Linear(2, 2)
    updater.update(online, updater.make_target(online))
    with pytest.raises(RuntimeError, match="step must be"):
        updater.load_state_dict({"step": step})
    assert int(updater.step) == 1 and updater.momentum == updater.momentum_at(1)


def test_update_rejects_a_target_that_shares_parameters_with_the_online_network() -> None:
    import copy

    online = torch.nn.Linear(3, 3)
    weights = online.weight.detach().clone()
    updater = MomentumUpdater(0.5, 0.5, total_steps=10)
    with pytest.raises(ValueError, match="shares parameter storage"):
        updater.update(online, copy.copy(online))  # a shallow copy: the same parameter tensors
    assert torch.equal(online.weight, weights) and int(updater.step) == 0
