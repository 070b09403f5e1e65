"""Tests of :class:`propos_losses.queue.PrototypeQueue`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from propos_losses.queue import PrototypeQueue

from helpers import WORLD_SIZE, gloo_group, spawn_and_wait

FEATURE_DIM = 3

Row = Tuple[Tuple[float, ...], int, int]


def make_batch(
    batch_size: int, seed: int, *, with_indices: bool = True
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch_size, FEATURE_DIM, generator=generator)
    labels = torch.randint(0, 10, (batch_size,), generator=generator)
    indices = torch.randint(0, 1000, (batch_size,), generator=generator) if with_indices else None
    return features, labels, indices


def rows_of(features: torch.Tensor, labels: torch.Tensor, indices: Optional[torch.Tensor]) -> List[Row]:
    if indices is None:
        indices = torch.full_like(labels, -1)
    return [(tuple(f.tolist()), int(label), int(i)) for f, label, i in zip(features, labels, indices)]


def queue_rows(queue: PrototypeQueue) -> List[Row]:
    return rows_of(*queue.contents())


def snapshot(queue: PrototypeQueue) -> Dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in queue.state_dict().items()}


def assert_same_state(queue: PrototypeQueue, state: Dict[str, torch.Tensor]) -> None:
    current = queue.state_dict()
    assert current.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(current[name], tensor), name


# --- construction -----------------------------------------------------------------


def test_new_queue_is_empty_and_returns_empty_tensors_of_the_right_shape() -> None:
    queue = PrototypeQueue(size=4, feature_dim=FEATURE_DIM, dtype=torch.float64)
    features, labels, indices = queue.contents()
    assert len(queue) == 0 and not queue.is_full
    assert features.shape == (0, FEATURE_DIM) and features.dtype == torch.float64
    assert labels.shape == (0,) and labels.dtype == torch.int64
    assert indices.shape == (0,) and indices.dtype == torch.int64


def test_all_queue_state_lives_in_persistent_buffers() -> None:
    queue = PrototypeQueue(size=4, feature_dim=FEATURE_DIM)
    assert set(queue.state_dict()) == {"features", "labels", "indices", "ptr", "fill"}
    assert (queue.labels == -1).all() and (queue.indices == -1).all()
    assert list(queue.parameters()) == []


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"size": 0, "feature_dim": 3}, ValueError),
        ({"size": -2, "feature_dim": 3}, ValueError),
        ({"size": 4, "feature_dim": 0}, ValueError),
        ({"size": 4.0, "feature_dim": 3}, TypeError),
        ({"size": True, "feature_dim": 3}, TypeError),
        ({"size": 4, "feature_dim": "3"}, TypeError),
        ({"size": 4, "feature_dim": 3, "dtype": torch.int64}, TypeError),
        ({"size": 4, "feature_dim": 3, "dtype": "float32"}, TypeError),
    ],
)
def test_bad_constructor_arguments_raise(kwargs: dict, error: type) -> None:
    with pytest.raises(error):
        PrototypeQueue(**kwargs)


# --- FIFO behaviour -----------------------------------------------------------------

QUEUE_SIZE = 5
push_sequences = st.lists(
    st.tuples(st.integers(min_value=0, max_value=2 * QUEUE_SIZE + 1), st.booleans()),
    min_size=1,
    max_size=8,
)


@settings(max_examples=40, deadline=None)
@given(pushes=push_sequences)
def test_contents_are_the_last_size_pushed_rows_in_fifo_order(pushes: List[Tuple[int, bool]]) -> None:
    queue = PrototypeQueue(size=QUEUE_SIZE, feature_dim=FEATURE_DIM, dtype=torch.float64)
    model: List[Row] = []
    for step, (batch_size, with_indices) in enumerate(pushes):
        features, labels, indices = make_batch(batch_size, seed=step, with_indices=with_indices)
        features = features.double()
        queue.push(features, labels, indices)
        model.extend(rows_of(features, labels, indices))
        expected = model[-QUEUE_SIZE:]
        assert queue_rows(queue) == expected
        assert len(queue) == len(expected)
        assert queue.is_full == (len(expected) == QUEUE_SIZE)


@settings(max_examples=25, deadline=None)
@given(
    before=st.lists(st.integers(min_value=0, max_value=2 * QUEUE_SIZE), min_size=1, max_size=5),
    after=st.lists(st.integers(min_value=0, max_value=2 * QUEUE_SIZE), min_size=1, max_size=5),
)
def test_state_dict_round_trip_mid_stream_continues_identically(before: List[int], after: List[int]) -> None:
    reference = PrototypeQueue(size=QUEUE_SIZE, feature_dim=FEATURE_DIM)
    for step, batch_size in enumerate(before):
        reference.push(*make_batch(batch_size, seed=step))
    restored = PrototypeQueue(size=QUEUE_SIZE, feature_dim=FEATURE_DIM)
    restored.load_state_dict(reference.state_dict())
    assert queue_rows(restored) == queue_rows(reference)
    for step, batch_size in enumerate(after, start=len(before)):
        batch = make_batch(batch_size, seed=step)
        reference.push(*batch)
        restored.push(*batch)
        assert queue_rows(restored) == queue_rows(reference)
    assert_same_state(restored, snapshot(reference))


def test_state_dict_round_trip_after_wrap_around_through_torch_save(tmp_path: Path) -> None:
    queue = PrototypeQueue(size=QUEUE_SIZE, feature_dim=FEATURE_DIM)
    for step, batch_size in enumerate([3, 4, 2]):  # wraps around once, ptr ends mid-buffer
        queue.push(*make_batch(batch_size, seed=step))
    assert int(queue.ptr) not in (0, int(queue.fill))
    torch.save(queue.state_dict(), tmp_path / "queue.pt")
    restored = PrototypeQueue(size=QUEUE_SIZE, feature_dim=FEATURE_DIM)
    restored.load_state_dict(torch.load(tmp_path / "queue.pt", weights_only=True))
    assert queue_rows(restored) == queue_rows(queue)
    batch = make_batch(2, seed=99)
    queue.push(*batch)
    restored.push(*batch)
    assert queue_rows(restored) == queue_rows(queue)


@pytest.mark.parametrize(("name", "value"), [("ptr", QUEUE_SIZE), ("ptr", -1), ("fill", QUEUE_SIZE + 1), ("fill", -1)])
def test_loading_an_impossible_pointer_or_fill_level_raises(name: str, value: int) -> None:
    source = PrototypeQueue(size=QUEUE_SIZE, feature_dim=FEATURE_DIM)
    source.push(*make_batch(2, seed=0))
    state = source.state_dict()
    state[name] = torch.tensor(value)
    queue = PrototypeQueue(size=QUEUE_SIZE, feature_dim=FEATURE_DIM)
    before = snapshot(queue)
    with pytest.raises(RuntimeError, match=name):
        queue.load_state_dict(state)
    assert_same_state(queue, before)


def test_pushed_rows_are_detached_copies_cast_to_the_queue_dtype() -> None:
    queue = PrototypeQueue(size=4, feature_dim=FEATURE_DIM, dtype=torch.float64)
    features = torch.randn(2, FEATURE_DIM, requires_grad=True)
    queue.push(features, torch.tensor([1, 2], dtype=torch.int32), torch.tensor([3, 4], dtype=torch.int16))
    stored, labels, indices = queue.contents()
    assert stored.dtype == torch.float64 and not stored.requires_grad
    assert torch.equal(stored, features.detach().double())
    assert labels.dtype == torch.int64 and labels.tolist() == [1, 2]
    assert indices.dtype == torch.int64 and indices.tolist() == [3, 4]
    with torch.no_grad():
        features.add_(1.0)  # the queue keeps its own copy
    assert torch.equal(queue.contents()[0], stored)


def test_contents_are_copies_that_do_not_alias_the_queue() -> None:
    queue = PrototypeQueue(size=4, feature_dim=FEATURE_DIM)
    queue.push(*make_batch(3, seed=0))
    features, labels, _ = queue.contents()
    features.zero_()
    labels.fill_(7)
    assert queue_rows(queue) == rows_of(*make_batch(3, seed=0))


def test_batch_larger_than_the_queue_keeps_its_newest_rows() -> None:
    queue = PrototypeQueue(size=3, feature_dim=FEATURE_DIM)
    queue.push(*make_batch(2, seed=0))
    features, labels, indices = make_batch(8, seed=1)
    assert indices is not None
    queue.push(features, labels, indices)
    assert queue_rows(queue) == rows_of(features[-3:], labels[-3:], indices[-3:])


# --- relabel and reset ---------------------------------------------------------------


def test_relabel_takes_each_queued_sample_label_from_its_dataset_index() -> None:
    queue = PrototypeQueue(size=4, feature_dim=FEATURE_DIM)
    queue.push(torch.randn(3, FEATURE_DIM), torch.tensor([0, 0, 0]), torch.tensor([5, 2, 9]))
    queue.push(torch.randn(2, FEATURE_DIM), torch.tensor([1, 1]), torch.tensor([0, 2]))  # wraps
    new_labels = torch.arange(10) * 10 + 3
    queue.relabel(new_labels)
    _, labels, indices = queue.contents()
    assert indices.tolist() == [2, 9, 0, 2]
    assert labels.tolist() == [23, 93, 3, 23]
    assert (queue.labels[queue.indices < 0] == -1).all()  # no empty slot was touched


@settings(max_examples=25, deadline=None)
@given(
    batch_sizes=st.lists(st.integers(min_value=0, max_value=2 * QUEUE_SIZE), min_size=1, max_size=6),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_relabel_gives_each_queued_row_the_new_label_of_its_index_and_keeps_features(
    batch_sizes: List[int], seed: int
) -> None:
    queue = PrototypeQueue(size=QUEUE_SIZE, feature_dim=FEATURE_DIM)
    for step, batch_size in enumerate(batch_sizes):
        queue.push(*make_batch(batch_size, seed=step))
    features_before, _, indices_before = queue.contents()
    new_labels = torch.randint(0, 50, (1000,), generator=torch.Generator().manual_seed(seed))
    queue.relabel(new_labels)
    features, labels, indices = queue.contents()
    assert torch.equal(features, features_before) and torch.equal(indices, indices_before)
    assert labels.tolist() == [int(new_labels[i]) for i in indices_before]


def test_relabel_of_an_empty_queue_is_a_no_op() -> None:
    queue = PrototypeQueue(size=4, feature_dim=FEATURE_DIM)
    before = snapshot(queue)
    queue.relabel(torch.arange(3))
    assert_same_state(queue, before)


@pytest.mark.parametrize(
    ("new_labels", "with_indices", "error"),
    [
        (torch.arange(3), True, ValueError),  # queued dataset index 9 out of range
        (torch.arange(20), False, ValueError),  # samples pushed without indices
        (torch.arange(20) - 5, True, ValueError),  # negative new label for a queued sample
        (torch.arange(20).float(), True, TypeError),
        (torch.arange(20).view(4, 5), True, ValueError),
        (list(range(20)), True, TypeError),
    ],
)
def test_bad_relabel_raises_and_leaves_the_queue_unchanged(new_labels: object, with_indices: bool, error: type) -> None:
    queue = PrototypeQueue(size=4, feature_dim=FEATURE_DIM)
    queue.push(torch.randn(3, FEATURE_DIM), torch.tensor([0, 1, 2]), torch.tensor([1, 9, 3]) if with_indices else None)
    before = snapshot(queue)
    with pytest.raises(error):
        queue.relabel(new_labels)  # type: ignore[arg-type]
    assert_same_state(queue, before)


def test_reset_empties_the_queue_and_it_fills_again_from_scratch() -> None:
    queue = PrototypeQueue(size=3, feature_dim=FEATURE_DIM)
    for step in range(3):
        queue.push(*make_batch(2, seed=step))
    queue.reset()
    assert len(queue) == 0
    assert_same_state(queue, snapshot(PrototypeQueue(size=3, feature_dim=FEATURE_DIM)))
    batch = make_batch(2, seed=7)
    queue.push(*batch)
    assert queue_rows(queue) == rows_of(*batch)


# --- bad input ---------------------------------------------------------------------------

GOOD_FEATURES = torch.randn(2, FEATURE_DIM)
GOOD_LABELS = torch.tensor([0, 1])
GOOD_INDICES = torch.tensor([4, 5])

BAD_PUSHES = [
    pytest.param((GOOD_FEATURES.tolist(), GOOD_LABELS, GOOD_INDICES), TypeError, id="features-not-a-tensor"),
    pytest.param((torch.randn(2, FEATURE_DIM + 1), GOOD_LABELS, GOOD_INDICES), ValueError, id="features-wrong-dim"),
    pytest.param((torch.randn(FEATURE_DIM), GOOD_LABELS[:1], GOOD_INDICES[:1]), ValueError, id="features-1d"),
    pytest.param((torch.randn(2, FEATURE_DIM, 1), GOOD_LABELS, GOOD_INDICES), ValueError, id="features-3d"),
    pytest.param(
        (torch.ones(2, FEATURE_DIM, dtype=torch.int64), GOOD_LABELS, GOOD_INDICES), TypeError, id="features-int"
    ),
    pytest.param(
        (torch.tensor([[0.0, float("nan"), 1.0], [0.0, 0.0, 0.0]]), GOOD_LABELS, GOOD_INDICES),
        ValueError,
        id="features-nan",
    ),
    pytest.param(
        (torch.tensor([[0.0, float("inf"), 1.0], [0.0, 0.0, 0.0]]), GOOD_LABELS, GOOD_INDICES),
        ValueError,
        id="features-inf",
    ),
    pytest.param((GOOD_FEATURES, GOOD_LABELS.float(), GOOD_INDICES), TypeError, id="labels-float"),
    pytest.param((GOOD_FEATURES, GOOD_LABELS.bool(), GOOD_INDICES), TypeError, id="labels-bool"),
    pytest.param((GOOD_FEATURES, torch.tensor([0, -1]), GOOD_INDICES), ValueError, id="labels-negative"),
    pytest.param((GOOD_FEATURES, torch.tensor([0, 1, 2]), GOOD_INDICES), ValueError, id="labels-batch-mismatch"),
    pytest.param((GOOD_FEATURES, GOOD_LABELS.view(2, 1), GOOD_INDICES), ValueError, id="labels-2d"),
    pytest.param((GOOD_FEATURES, [0, 1], GOOD_INDICES), TypeError, id="labels-not-a-tensor"),
    pytest.param((GOOD_FEATURES, GOOD_LABELS, torch.tensor([4, -5])), ValueError, id="indices-negative"),
    pytest.param((GOOD_FEATURES, GOOD_LABELS, torch.tensor([4])), ValueError, id="indices-batch-mismatch"),
    pytest.param((GOOD_FEATURES, GOOD_LABELS, GOOD_INDICES.double()), TypeError, id="indices-float"),
    pytest.param((GOOD_FEATURES, GOOD_LABELS, GOOD_INDICES.view(1, 2)), ValueError, id="indices-2d"),
]


@pytest.mark.parametrize(("args", "error"), BAD_PUSHES)
def test_bad_push_raises_and_leaves_the_queue_unchanged(args: tuple, error: type) -> None:
    queue = PrototypeQueue(size=4, feature_dim=FEATURE_DIM)
    queue.push(*make_batch(3, seed=0))
    before = snapshot(queue)
    with pytest.raises(error):
        queue.push(*args)
    assert_same_state(queue, before)


# --- torch.distributed -----------------------------------------------------------------

DIST_QUEUE_SIZE = 5
# Batch sizes per push and rank: different on the two ranks, empty batches and a
# global batch larger than the queue included.
RANK_BATCH_SIZES = [[2, 0, 4, 1, 6], [3, 1, 0, 6, 2]]


def rank_batch(step: int, rank: int) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    # Step 1 is pushed without dataset indices (stored as -1).
    return make_batch(RANK_BATCH_SIZES[rank][step], seed=100 * step + rank, with_indices=step != 1)


def _distributed_queue_worker(rank: int, init_file: str, out_dir: str) -> None:
    with gloo_group(rank, init_file):
        queue = PrototypeQueue(size=DIST_QUEUE_SIZE, feature_dim=FEATURE_DIM)
        history = []
        for step in range(len(RANK_BATCH_SIZES[rank])):
            queue.push(*rank_batch(step, rank))
            history.append(queue.contents())
        # Bad input on rank 1 only: every rank must raise instead of hanging, and no queue changes.
        before = {k: v.clone() for k, v in queue.state_dict().items()}
        features = torch.randn(2, FEATURE_DIM + (1 if rank == 1 else 0))
        bad_input_raised = False
        try:
            queue.push(features, torch.tensor([0, 1]))
        except ValueError:
            bad_input_raised = True
        unchanged = all(torch.equal(queue.state_dict()[k], v) for k, v in before.items())
        torch.save(
            {"history": history, "raised": bad_input_raised, "unchanged": unchanged},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )


def test_distributed_push_gives_identical_queues_equal_to_one_process_on_the_global_batch(tmp_path: Path) -> None:
    spawn_and_wait(_distributed_queue_worker, (str(tmp_path / "init"), str(tmp_path)))
    results = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]

    single = PrototypeQueue(size=DIST_QUEUE_SIZE, feature_dim=FEATURE_DIM)
    for step in range(len(RANK_BATCH_SIZES[0])):
        batches = [rank_batch(step, rank) for rank in range(WORLD_SIZE)]
        features = torch.cat([b[0] for b in batches])
        labels = torch.cat([b[1] for b in batches])
        indices = None if step == 1 else torch.cat([b[2] for b in batches if b[2] is not None])
        single.push(features, labels, indices)
        expected = rows_of(*single.contents())
        for result in results:
            assert rows_of(*result["history"][step]) == expected
    for result in results:
        assert result["raised"] and result["unchanged"]


# ---------------------------------------------------------------- load_state_dict leaves nothing half-loaded


def _state_of(queue: PrototypeQueue) -> dict:
    return {name: tensor.clone() for name, tensor in queue.state_dict().items()}


def _assert_unchanged(queue: PrototypeQueue, before: dict) -> None:
    for name, tensor in queue.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def _filled(size: int, dim: int, rows: int) -> PrototypeQueue:
    queue = PrototypeQueue(size, dim)
    queue.push(torch.randn(rows, dim), torch.arange(rows) % 3, torch.arange(rows))
    return queue


@pytest.mark.parametrize(
    ("source", "match"),
    [
        (lambda: _filled(16, 4, 5), r"features has shape \(16, 4\)"),  # a larger queue (fill 5 fits, ptr too)
        (lambda: _filled(8, 6, 3), r"features has shape \(8, 6\)"),  # another feature size
    ],
)
def test_failed_load_of_another_queue_changes_nothing(source, match) -> None:
    queue = _filled(8, 4, 2)
    before = _state_of(queue)
    for strict in (True, False):
        with pytest.raises(RuntimeError, match=match):
            queue.load_state_dict(source().state_dict(), strict=strict)
        _assert_unchanged(queue, before)


def test_failed_load_through_psl_changes_nothing() -> None:
    from propos_losses import PSL

    psl = PSL(3, queue_size=8, feature_dim=4)
    psl(torch.randn(2, 4), torch.randn(2, 4), torch.tensor([0, 1]), torch.tensor([0, 1]))
    before = _state_of(psl.queue)  # type: ignore[arg-type]
    other = PSL(3, queue_size=16, feature_dim=4)
    other(torch.randn(5, 4), torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]), torch.arange(5))
    with pytest.raises(RuntimeError, match="queue was left unchanged"):
        psl.load_state_dict(other.state_dict(), strict=False)
    _assert_unchanged(psl.queue, before)  # type: ignore[arg-type]


@pytest.mark.parametrize("defect", ["nan_feature", "label_in_empty_slot", "negative_label_in_filled_slot", "index"])
def test_load_rejects_values_that_contradict_the_queue(defect: str) -> None:
    state = _state_of(_filled(8, 4, 3))  # slots 0..2 filled, ptr 3
    if defect == "nan_feature":
        state["features"][1, 0] = float("nan")
    elif defect == "label_in_empty_slot":
        state["labels"][5] = 2
    elif defect == "negative_label_in_filled_slot":
        state["labels"][0] = -1
    else:
        state["indices"][1] = -7
    queue = PrototypeQueue(8, 4)
    before = _state_of(queue)
    with pytest.raises(RuntimeError, match="left unchanged"):
        queue.load_state_dict(state)
    _assert_unchanged(queue, before)


def test_cluster_sums_are_the_per_cluster_sums_of_the_filled_slots_only() -> None:
    queue = PrototypeQueue(size=5, feature_dim=3, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):  # wraps around: 9 pushes into 5 slots
        queue.push(
            torch.randn(3, 3, generator=generator, dtype=torch.float64), torch.randint(0, 4, (3,), generator=generator)
        )
    features, labels, _ = queue.contents()
    sums, counts = queue.cluster_sums(4)
    expected = torch.stack([features[labels == k].sum(dim=0) for k in range(4)])
    torch.testing.assert_close(sums, expected, rtol=0, atol=1e-15)
    assert counts.tolist() == [float((labels == k).sum()) for k in range(4)]
    # A partly filled queue: the zeros of the empty slots never count.
    partial = PrototypeQueue(size=8, feature_dim=2)
    partial.push(torch.ones(2, 2), torch.tensor([1, 1]))
    sums, counts = partial.cluster_sums(3, dtype=torch.float64)
    assert sums.dtype == torch.float64 and sums.tolist() == [[0.0, 0.0], [2.0, 2.0], [0.0, 0.0]]
    assert counts.tolist() == [0.0, 2.0, 0.0]


def test_cluster_sums_rejects_labels_from_a_larger_k_and_bad_arguments() -> None:
    queue = PrototypeQueue(size=4, feature_dim=2)
    queue.push(torch.ones(2, 2), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"label 5, not below num_clusters=3"):
        queue.cluster_sums(3)
    with pytest.raises(ValueError, match=r"num_clusters must be >= 1"):
        queue.cluster_sums(0)
    with pytest.raises(TypeError, match=r"dtype must be a floating-point"):
        queue.cluster_sums(6, dtype=torch.int64)
    assert queue.cluster_sums(6)[1].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
