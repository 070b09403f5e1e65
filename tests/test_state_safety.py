"""State safety of the core objects (issue 26, items 4 and 6, and MomentumUpdater).

* ``load_state_dict`` of :class:`PrototypeQueue`, :class:`PSL` and
  :class:`MomentumUpdater` is all-or-nothing: a missing or unexpected key,
  a wrong shape or dtype, or values the object could never have produced
  raise and leave every buffer exactly as it was; what is loaded is a copy.
* A PSA call that fails its checks never runs the predictor (its BatchNorm
  statistics do not move), and a batch of one with a BatchNorm predictor in
  training mode is refused before the predictor runs.
"""

from __future__ import annotations

from typing import Callable, Dict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from propos_losses import PSA, PSL, MomentumUpdater, PrototypeQueue
from propos_losses.psa import positive_sampling_alignment

SIZE, DIM, K = 8, 4, 3


def _state(module: nn.Module) -> Dict[str, Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def _assert_unchanged(module: nn.Module, before: Dict[str, Tensor]) -> None:
    after = module.state_dict()
    assert set(after) == set(before)
    for name, tensor in after.items():
        assert tensor.dtype == before[name].dtype and torch.equal(tensor, before[name]), name


def _filled_queue(rows: int = 3, seed: int = 0, size: int = SIZE) -> PrototypeQueue:
    generator = torch.Generator().manual_seed(seed)
    queue = PrototypeQueue(size, DIM)
    queue.push(torch.randn(rows, DIM, generator=generator), torch.arange(rows) % K, torch.arange(rows) + 10 * seed)
    return queue


def _filled_psl(rows: int = 3, seed: int = 0) -> PSL:
    generator = torch.Generator().manual_seed(seed)
    psl = PSL(K, queue_size=SIZE, feature_dim=DIM)
    online, target = torch.randn(2, rows, DIM, generator=generator).unbind(0)
    psl(online, target, torch.arange(rows) % K, torch.arange(rows) + 10 * seed)
    return psl


# ---------------------------------------------------------------- PrototypeQueue.load_state_dict


@pytest.mark.parametrize("key", ["features", "labels", "indices", "ptr", "fill"])
def test_strict_queue_load_with_a_missing_key_raises_and_changes_nothing(key: str) -> None:
    queue = _filled_queue(2, seed=1)
    before = _state(queue)
    state = _state(_filled_queue(5, seed=2))
    del state[key]
    with pytest.raises(RuntimeError, match=f'Missing key.*"{key}"'):
        queue.load_state_dict(state)
    _assert_unchanged(queue, before)


def test_strict_queue_load_with_an_unexpected_key_raises_and_changes_nothing() -> None:
    queue = _filled_queue(2, seed=1)
    before = _state(queue)
    state = _state(_filled_queue(5, seed=2))
    state["bogus"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match='Unexpected key.*"bogus"'):
        queue.load_state_dict(state)
    _assert_unchanged(queue, before)


@pytest.mark.parametrize("keys", [("ptr", "fill"), ("features",), ("features", "labels", "indices", "fill")])
def test_non_strict_load_of_part_of_a_queue_raises_and_changes_nothing(keys: tuple) -> None:
    # The five buffers describe one ring buffer: a subset would mix two queues (e.g. ptr and fill
    # of one with the labels of the other), so it is refused even without strict.
    queue = _filled_queue(2, seed=1)
    before = _state(queue)
    source = _state(_filled_queue(3))
    with pytest.raises(RuntimeError, match="incomplete queue state"):
        queue.load_state_dict({key: source[key] for key in keys}, strict=False)
    _assert_unchanged(queue, before)


def test_non_strict_load_without_queue_entries_leaves_the_queue_alone() -> None:
    psl = _filled_psl(2, seed=1)
    before = _state(psl)
    result = psl.load_state_dict({"other.weight": torch.zeros(1)}, strict=False)
    assert result.unexpected_keys == ["other.weight"] and len(result.missing_keys) == 5
    _assert_unchanged(psl, before)


def test_queue_load_rejects_an_index_in_an_empty_slot() -> None:
    state = _state(_filled_queue(3))  # slots 0..2 filled
    state["indices"][6] = 4
    queue = _filled_queue(2, seed=1)
    before = _state(queue)
    with pytest.raises(RuntimeError, match="indices"):
        queue.load_state_dict(state)
    _assert_unchanged(queue, before)


@pytest.mark.parametrize("assign", [False, True])
def test_queue_load_keeps_copies_not_the_callers_tensors(assign: bool) -> None:
    state = _state(_filled_queue(3))
    expected = {name: tensor.clone() for name, tensor in state.items()}
    queue = PrototypeQueue(SIZE, DIM)
    queue.load_state_dict(state, assign=assign)
    for tensor in state.values():
        tensor.zero_()  # the caller reuses its tensors
    _assert_unchanged(queue, expected)
    queue.push(torch.ones(1, DIM), torch.tensor([0]))
    assert torch.equal(state["ptr"], torch.tensor(0))  # and the queue never writes into them


@settings(max_examples=40, deadline=None)
@given(
    drop=st.sampled_from([None, "features", "labels", "indices", "ptr", "fill"]),
    ptr=st.integers(-1, SIZE),
    fill=st.integers(-1, SIZE + 1),
    label=st.tuples(st.integers(0, SIZE - 1), st.integers(-2, K + 1)),
    index=st.tuples(st.integers(0, SIZE - 1), st.integers(-2, 20)),
    strict=st.booleans(),
)
def test_psl_load_either_applies_the_whole_state_or_changes_nothing(
    drop: object, ptr: int, fill: int, label: tuple, index: tuple, strict: bool
) -> None:
    state = _state(_filled_psl(5, seed=2))
    state["queue.ptr"], state["queue.fill"] = torch.tensor(ptr), torch.tensor(fill)
    state["queue.labels"][label[0]] = label[1]
    state["queue.indices"][index[0]] = index[1]
    if drop is not None:
        del state[f"queue.{drop}"]
    psl = _filled_psl(2, seed=1)
    before = _state(psl)
    try:
        psl.load_state_dict(state, strict=strict)
    except RuntimeError:
        _assert_unchanged(psl, before)
        return
    _assert_unchanged(psl, state)  # loaded: exactly the given state, which is a queue push could produce
    features, labels, indices = psl.queue.contents()  # type: ignore[union-attr]
    assert len(labels) == fill and bool(((labels >= 0) & (labels < K)).all()) and bool((indices >= -1).all())


# ---------------------------------------------------------------- PSL.load_state_dict


@pytest.mark.parametrize("key", ["queue.features", "queue.labels", "queue.indices", "queue.ptr", "queue.fill"])
def test_strict_psl_load_with_a_missing_queue_key_changes_nothing(key: str) -> None:
    psl = _filled_psl(2, seed=1)
    before = _state(psl)
    state = _state(_filled_psl(5, seed=2))
    del state[key]
    with pytest.raises(RuntimeError, match=f'Missing key.*"{key}"'):
        psl.load_state_dict(state)
    _assert_unchanged(psl, before)


def test_strict_psl_load_with_an_unexpected_key_changes_nothing() -> None:
    psl = _filled_psl(2, seed=1)
    before = _state(psl)
    state = _state(_filled_psl(5, seed=2))
    state["temperature"] = torch.tensor(0.1)
    with pytest.raises(RuntimeError, match='Unexpected key.*"temperature"'):
        psl.load_state_dict(state)
    _assert_unchanged(psl, before)


@pytest.mark.parametrize(
    ("defect", "match"),
    [
        ("label_at_k", r"queue labels must be in \[0, num_clusters=3\)"),
        ("negative_label", "labels contradict fill"),
        ("nan_feature", "finite"),
        ("fill_too_large", "fill must be in"),
        ("integer_features", "dtype"),
    ],
)
def test_psl_load_rejects_bad_queue_values_and_changes_nothing(defect: str, match: str) -> None:
    state = _state(_filled_psl(3))  # slots 0..2 filled
    if defect == "label_at_k":
        state["queue.labels"][1] = K  # e.g. a checkpoint written with more clusters
    elif defect == "negative_label":
        state["queue.labels"][1] = -3
    elif defect == "nan_feature":
        state["queue.features"][2, 1] = float("nan")
    elif defect == "fill_too_large":
        state["queue.fill"] = torch.tensor(SIZE + 1)
    else:
        state["queue.features"] = state["queue.features"].long()
    psl = _filled_psl(2, seed=1)
    before = _state(psl)
    with pytest.raises(RuntimeError, match=match):
        psl.load_state_dict(state)
    _assert_unchanged(psl, before)


def test_psl_load_of_a_good_state_round_trips_and_keeps_copies() -> None:
    source = _filled_psl(5, seed=2)
    state = _state(source)
    psl = _filled_psl(2, seed=1)
    psl.load_state_dict(state)
    for tensor in state.values():
        tensor.zero_()
    _assert_unchanged(psl, _state(source))


# ---------------------------------------------------------------- MomentumUpdater.load_state_dict


def _stepped_updater(steps: int) -> MomentumUpdater:
    updater = MomentumUpdater(0.9, 1.0, total_steps=10)
    online = nn.Linear(2, 2)
    target = updater.make_target(online)
    for _ in range(steps):
        updater.update(online, target)
    return updater


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"step": torch.tensor(5), "bogus": torch.zeros(1)}, 'Unexpected key.*"bogus"'),
        ({}, 'Missing key.*"step"'),
        ({"step": torch.tensor([[5]])}, "step must be"),
        ({"step": torch.tensor(5, dtype=torch.uint8).expand(2)}, "step must be"),
    ],
)
def test_momentum_load_is_all_or_nothing(state: Dict[str, Tensor], match: str) -> None:
    updater = _stepped_updater(2)
    with pytest.raises(RuntimeError, match=match):
        updater.load_state_dict(state)
    assert int(updater.step) == 2 and updater.momentum == updater.momentum_at(2)


@pytest.mark.parametrize("assign", [False, True])
def test_momentum_load_keeps_a_copy_of_the_step(assign: bool) -> None:
    saved = torch.tensor(4)
    updater = _stepped_updater(0)
    updater.load_state_dict({"step": saved}, assign=assign)
    updater.update(nn.Linear(2, 2), nn.Linear(2, 2))
    assert int(saved) == 4 and int(updater.step) == 5 and updater.momentum == updater.momentum_at(5)


def test_momentum_load_accepts_a_step_beyond_the_schedule() -> None:
    updater = _stepped_updater(0)
    updater.load_state_dict({"step": torch.tensor(25)})  # documented: the final momentum is kept
    assert updater.momentum == updater.final_momentum


# ---------------------------------------------------------------- PSA: checks before the predictor runs


def _bn_predictor() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(DIM, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, DIM))


def test_psa_batch_of_one_with_a_training_batchnorm_is_refused_before_the_predictor_runs() -> None:
    psa = PSA(_bn_predictor(), sigma=0.0)
    before = _state(psa)
    with pytest.raises(ValueError, match=r"batch size 1.*BatchNorm1d 1"):
        psa(torch.randn(1, DIM), torch.randn(1, DIM))
    _assert_unchanged(psa, before)  # num_batches_tracked and the running statistics included
    with pytest.raises(ValueError, match="batch size 1"):
        positive_sampling_alignment(torch.randn(1, DIM), torch.randn(1, DIM), psa.predictor)
    _assert_unchanged(psa, before)


def test_psa_batch_of_one_works_in_eval_mode_and_without_batchnorm() -> None:
    psa = PSA(_bn_predictor(), sigma=0.0).eval()
    before = _state(psa)
    assert torch.isfinite(psa(torch.randn(1, DIM), torch.randn(1, DIM)))
    _assert_unchanged(psa, before)
    assert torch.isfinite(PSA(nn.Linear(DIM, DIM))(torch.randn(1, DIM), torch.randn(1, DIM)))


def test_psa_batch_of_one_is_refused_for_a_batchnorm_without_running_statistics_even_in_eval_mode() -> None:
    # Without running statistics BatchNorm always normalises with the batch's own statistics.
    predictor = nn.Sequential(nn.Linear(DIM, 8), nn.BatchNorm1d(8, track_running_stats=False), nn.Linear(8, DIM))
    with pytest.raises(ValueError, match="batch size 1"):
        PSA(predictor.eval())(torch.randn(1, DIM), torch.randn(1, DIM))


BAD_CALLS: Dict[str, Callable[[], tuple]] = {
    "target width differs from the predictor output": lambda: (torch.randn(5, DIM), torch.randn(5, DIM + 2)),
    "online width differs from the predictor input": lambda: (torch.randn(5, DIM + 1), torch.randn(5, DIM)),
    "mismatched batch sizes": lambda: (torch.randn(5, DIM), torch.randn(4, DIM)),
    "non-finite target": lambda: (torch.randn(5, DIM), torch.full((5, DIM), float("nan"))),
    "non-finite online": lambda: (torch.full((5, DIM), float("inf")), torch.randn(5, DIM)),
    "3-D online": lambda: (torch.randn(5, DIM, 1), torch.randn(5, DIM)),
    "1-D target": lambda: (torch.randn(5, DIM), torch.randn(5)),
    "integer target": lambda: (torch.randn(5, DIM), torch.ones(5, DIM, dtype=torch.int64)),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_failing_psa_call_does_not_run_the_predictor(case: str) -> None:
    psa = PSA(_bn_predictor(), sigma=1e-3)
    calls = []
    psa.predictor.register_forward_pre_hook(lambda module, args: calls.append(1))
    before = _state(psa)
    online, target = BAD_CALLS[case]()
    with pytest.raises((TypeError, ValueError)):
        psa(online, target)
    assert calls == [], "the predictor ran before the call was rejected"
    _assert_unchanged(psa, before)
