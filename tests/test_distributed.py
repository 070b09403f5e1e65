"""Two-process (gloo, CPU) tests of the distributed helpers and of the distributed PSL.

One pair of spawned processes runs every scenario once (starting processes
costs seconds) and saves what each rank computed; the tests then compare those
values with what a single process computes on the concatenated global batch.
A child that raises makes the fixture, and therefore every test, fail with its
traceback; a child that hangs is killed after a timeout.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from propos_losses.distributed import (
    all_gather_cat_autograd,
    all_reduce_max_,
    all_reduce_sum,
    any_rank,
    barrier,
    broadcast_text,
    collective_device,
)
from propos_losses.psl import PSL, prototype_scattering_loss, prototype_scattering_terms

from helpers import gloo_group, grad_of, queue_of, terms_of

WORLD_SIZE = 2
TIMEOUT_S = 120.0
NUM_CLUSTERS = 6
IN_DIM, DIM = 5, 4
QUEUE_SIZE = 16
QUEUE_STEPS = 3
LEARNING_RATE = 0.5


# ---------------------------------------------------------------- shared data (parent and children)


def rank_slices() -> List[slice]:
    """Rank 0 holds 6 samples, rank 1 holds 5: unequal local batches."""
    return [slice(0, 6), slice(6, 11)]


def global_batch(step: int, dtype: torch.dtype) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Inputs ``(11, IN_DIM)``, targets ``(11, DIM)``, labels and dataset indices of one step.

    Cluster 3 appears only on rank 0, cluster 4 only on rank 1, cluster 5 nowhere.
    """
    generator = torch.Generator().manual_seed(100 + step)
    inputs = torch.randn(11, IN_DIM, generator=generator, dtype=dtype)
    targets = torch.randn(11, DIM, generator=generator, dtype=dtype)
    labels = torch.tensor([0, 3, 1, 3, 0, 2] + [1, 4, 4, 2, 0])
    if step % 2:  # vary the mix between steps
        labels = torch.tensor([3, 3, 3, 0, 0, 1] + [4, 2, 2, 1, 4])
    indices = torch.arange(11) + 11 * step
    return inputs, targets, labels, indices


def soft_weights() -> Tensor:
    weights = torch.rand(11, NUM_CLUSTERS, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    weights[:6, 4] = 0.0  # cluster 4 weighted only on rank 1
    weights[:, 5] = 0.0  # cluster 5 empty everywhere
    weights[8] = 0.0  # a sample without any cluster
    return weights


def soft_weights_rank1_all_zero() -> Tensor:
    weights = soft_weights()
    weights[rank_slices()[1]] = 0.0  # rank 1 holds samples but assigns them no weight
    return weights


def soft_weights_tiny_and_uneven() -> Tensor:
    """Weights of ~1e-50 (0 in float32), 1000 times smaller on rank 1 than on rank 0.

    A per-rank rescaling would lose the ratio between the ranks: the scale must be global.
    """
    weights = soft_weights()
    weights[rank_slices()[1]] *= 1e-3
    return weights * 1e-50


def empty_rank_slices() -> List[slice]:
    """Rank 0 holds the whole global batch, rank 1 none (an uneven last batch)."""
    return [slice(0, 11), slice(11, 11)]


def make_layer(dtype: torch.dtype) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(IN_DIM, DIM).to(dtype)


def gather_input(rank: int) -> Tensor:
    return torch.arange(11 * 3, dtype=torch.float64).reshape(11, 3)[rank_slices()[rank]]


# ---------------------------------------------------------------- children


def _collectives(rank: int) -> Dict[str, Tensor]:
    out: Dict[str, Tensor] = {}
    base = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    upstream = torch.linspace(-1.0, 2.0, 6, dtype=torch.float64).reshape(2, 3)
    # all_reduce_sum, identical upstream gradient on every rank.
    x = (base * (rank + 1)).requires_grad_(True)
    y = all_reduce_sum(x)
    (y * upstream).sum().backward()
    out["reduce_value"], out["reduce_grad_same"] = y.detach(), grad_of(x).clone()
    # all_reduce_sum, a different upstream gradient on each rank.
    x = (base * (rank + 1)).requires_grad_(True)
    (all_reduce_sum(x) * upstream * (rank + 2)).sum().backward()
    out["reduce_grad_rank"] = grad_of(x).clone()
    # all_gather_cat_autograd with unequal first dimensions.
    x = gather_input(rank).clone().requires_grad_(True)
    gathered = all_gather_cat_autograd(x)
    gather_upstream = torch.linspace(-1.0, 1.0, 33, dtype=torch.float64).reshape(11, 3) * (rank + 1)
    (gathered * gather_upstream).sum().backward()
    out["gather_value"], out["gather_grad"] = gathered.detach(), grad_of(x).clone()
    # all_reduce_max_, a different maximum per element on each rank.
    out["max_value"] = all_reduce_max_(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64) * (1 - 2 * rank))
    return out


def _small_messages(rank: int) -> Dict[str, Any]:
    barrier()
    return {
        "device": str(collective_device()),
        "any_none": any_rank(False),
        "any_rank1": any_rank(rank == 1),
        "any_all": any_rank(True),
        "text_from_0": broadcast_text(f"rank {rank} says héllo"),
        "text_from_1": broadcast_text("x" * (rank * 300), src=1),
        "empty": broadcast_text(""),
    }


def _ddp_psl(rank: int, dtype: torch.dtype, validate_args: bool = True) -> Dict[str, Tensor]:
    part = rank_slices()[rank]
    inputs, targets, labels, _ = global_batch(0, dtype)
    model = nn.parallel.DistributedDataParallel(make_layer(dtype))
    module = PSL(NUM_CLUSTERS, validate_args=validate_args)
    loss = module(model(inputs[part]), targets[part], labels[part])
    loss.backward()
    assert module.last_terms is not None
    return {
        "loss": loss.detach(),
        "num_active": terms_of(module).num_active,
        "weight_grad": grad_of(model.module.weight).clone(),
        "bias_grad": grad_of(model.module.bias).clone(),
    }


def _hand_averaged_soft_psl(rank: int, weights: Tensor, dtype: torch.dtype = torch.float64) -> Dict[str, Tensor]:
    part = rank_slices()[rank]
    inputs, targets, _, _ = global_batch(0, dtype)
    layer = make_layer(dtype)
    terms = prototype_scattering_terms(layer(inputs[part]), targets[part], weights[part], NUM_CLUSTERS)
    terms.loss.backward()
    grads = [grad_of(p).clone() for p in layer.parameters()]
    for grad in grads:  # what DDP does: average over ranks
        dist.all_reduce(grad)
        grad /= WORLD_SIZE
    return {
        "loss": terms.loss.detach(),
        "alignment": terms.alignment.detach(),
        "uniformity": terms.uniformity.detach(),
        "weight_grad": grads[0],
        "bias_grad": grads[1],
    }


def _empty_rank_psl(rank: int) -> Dict[str, Tensor]:
    """Rank 1 has B = 0: DDP, the module with a queue, one training step."""
    part = empty_rank_slices()[rank]
    inputs, targets, labels, indices = global_batch(0, torch.float64)
    model = nn.parallel.DistributedDataParallel(make_layer(torch.float64))
    module = PSL(NUM_CLUSTERS, queue_size=QUEUE_SIZE, feature_dim=DIM)
    loss = module(model(inputs[part]), targets[part], labels[part], indices[part])
    loss.backward()
    features, queue_labels, queue_indices = queue_of(module).contents()
    return {
        "loss": loss.detach(),
        "num_active": terms_of(module).num_active,
        "uniformity": terms_of(module).uniformity,
        "weight_grad": grad_of(model.module.weight).clone(),
        "bias_grad": grad_of(model.module.bias).clone(),
        "queue_features": features,
        "queue_labels": queue_labels,
        "queue_indices": queue_indices,
    }


def _zero_global_weight(rank: int) -> Dict[str, Any]:
    """Every rank empty or all-zero: the global total weight is 0, so every rank raises the same error."""
    inputs, targets, labels, _ = global_batch(0, torch.float64)
    messages = []
    attempts = [
        lambda: prototype_scattering_loss(
            inputs[:3, :DIM], targets[:3], torch.zeros(3, NUM_CLUSTERS, dtype=torch.float64), NUM_CLUSTERS
        ),
        lambda: PSL(NUM_CLUSTERS)(inputs[:0, :DIM], targets[:0], labels[:0]),
        # Rank 0 empty, rank 1 all-zero weights.
        lambda: prototype_scattering_loss(
            inputs[: 2 * rank, :DIM], targets[: 2 * rank], torch.zeros(2 * rank, NUM_CLUSTERS), NUM_CLUSTERS
        ),
    ]
    for attempt in attempts:
        try:
            attempt()
        except ValueError as exc:
            messages.append(str(exc))
        else:
            messages.append("no error")
    check = torch.ones(1)
    dist.all_reduce(check)
    return {"messages": messages, "after": check}


def queue_steps(model: nn.Module, rows: slice, validate_args: bool = True) -> Tuple[PSL, Tensor]:
    """``QUEUE_STEPS`` SGD steps of PSL with a queue on ``rows`` of each global batch; the module and its losses."""
    module = PSL(NUM_CLUSTERS, queue_size=QUEUE_SIZE, feature_dim=DIM, validate_args=validate_args)
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    losses = []
    for step in range(QUEUE_STEPS):
        inputs, targets, labels, indices = global_batch(step, torch.float64)
        optimizer.zero_grad()
        loss = module(model(inputs[rows]), targets[rows], labels[rows], indices[rows])
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return module, torch.stack(losses)


def _queue_training(rank: int) -> Dict[str, Tensor]:
    model = nn.parallel.DistributedDataParallel(make_layer(torch.float64))
    module, losses = queue_steps(model, rank_slices()[rank])
    features, labels, indices = queue_of(module).contents()
    return {
        "losses": losses,
        "weight": model.module.weight.detach().clone(),
        "queue_features": features,
        "queue_labels": labels,
        "queue_indices": indices,
    }


def _queue_training_fast(rank: int) -> Dict[str, Any]:
    """The sync-free path (validate_args=False): equal local batches of 5 (the first 10 samples)."""
    part = slice(5 * rank, 5 * rank + 5)
    model = nn.parallel.DistributedDataParallel(make_layer(torch.float64))
    module, losses = queue_steps(model, part, validate_args=False)
    # A push on the fast path reads nothing back to the host (no size exchange either), and neither
    # does a whole PSL forward + backward with its all-reduces (the loss is not kept: no extra step).
    queue = queue_of(module)
    inputs, targets, labels, indices = global_batch(QUEUE_STEPS, torch.float64)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        module(model(inputs[part]), targets[part], labels[part], indices[part], enqueue=False).backward()
        queue.push(torch.randn(5, DIM), torch.zeros(5, dtype=torch.int64), torch.arange(5) + 5 * rank)
    syncs = sum(e.count for e in prof.key_averages() if e.key == "aten::_local_scalar_dense")
    features, labels, indices = queue.contents()
    return {
        "losses": losses,
        "queue_labels": labels,
        "queue_indices": indices,
        "push_syncs": syncs,
    }


def _bad_input_on_one_rank(rank: int) -> Dict[str, Any]:
    part = rank_slices()[rank]
    inputs, targets, labels, _ = global_batch(0, torch.float64)
    labels = labels[part].clone()
    if rank == 1:
        labels[0] = NUM_CLUSTERS  # out of range on rank 1 only
    module = PSL(NUM_CLUSTERS, queue_size=QUEUE_SIZE, feature_dim=DIM)
    try:
        module(inputs[part, :DIM], targets[part], labels)
    except ValueError as exc:
        message = str(exc)
    else:
        message = "no error"
    # The process group still works afterwards (no rank is left inside a collective).
    check = torch.ones(1)
    dist.all_reduce(check)
    return {"message": message, "queue_length": len(queue_of(module)), "after": check}


def _mismatch_between_ranks(rank: int) -> Dict[str, Any]:
    """Inputs that are fine on each rank alone but disagree between ranks (gloo used to abort the process)."""
    part = rank_slices()[rank]
    inputs, targets, labels, _ = global_batch(0, torch.float64)
    width = DIM - 1 if rank == 1 else DIM  # feature size differs on rank 1
    cases = {
        "feature size (module)": lambda: PSL(NUM_CLUSTERS)(inputs[part, :width], targets[part, :width], labels[part]),
        "feature size (functional)": lambda: prototype_scattering_loss(
            inputs[part, :width], targets[part, :width], labels[part], NUM_CLUSTERS
        ),
        "dtype": lambda: PSL(NUM_CLUSTERS)(
            inputs[part, :DIM].to(torch.float32 if rank == 1 else torch.float64),
            targets[part, :DIM].to(torch.float32 if rank == 1 else torch.float64),
            labels[part],
        ),
        "hard vs soft": lambda: PSL(NUM_CLUSTERS)(
            inputs[part, :DIM],
            targets[part, :DIM],
            torch.nn.functional.one_hot(labels[part], NUM_CLUSTERS).double() if rank == 1 else labels[part],
        ),
    }
    messages = {}
    for name, call in cases.items():
        try:
            call()
        except ValueError as exc:
            messages[name] = str(exc)
        else:
            messages[name] = "no error"
    check = torch.ones(1)
    dist.all_reduce(check)
    return {"messages": messages, "after": check}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    with gloo_group(rank, init_file):
        try:
            results = {
                "collectives": _collectives(rank),
                "messages": _small_messages(rank),
                "ddp_float64": _ddp_psl(rank, torch.float64),
                "ddp_float32": _ddp_psl(rank, torch.float32),
                "ddp_float64_fast": _ddp_psl(rank, torch.float64, validate_args=False),
                "soft": _hand_averaged_soft_psl(rank, soft_weights()),
                "soft_rank1_zero": _hand_averaged_soft_psl(rank, soft_weights_rank1_all_zero()),
                "soft_tiny_uneven": _hand_averaged_soft_psl(rank, soft_weights_tiny_and_uneven(), torch.float32),
                "empty_rank": _empty_rank_psl(rank),
                "zero_global_weight": _zero_global_weight(rank),
                "queue": _queue_training(rank),
                "queue_fast": _queue_training_fast(rank),
                "bad_input": _bad_input_on_one_rank(rank),
                "mismatch": _mismatch_between_ranks(rank),
            }
            torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        except BaseException:
            traceback.print_exc()
            raise


# ---------------------------------------------------------------- parent


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory: pytest.TempPathFactory) -> List[Dict[str, Any]]:
    directory = tmp_path_factory.mktemp("distributed")
    context = mp.start_processes(
        _worker,
        args=(str(directory / "init"), str(directory)),
        nprocs=WORLD_SIZE,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + TIMEOUT_S
    # join() raises ProcessRaisedException / ProcessExitedException when a child fails.
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"distributed workers did not finish within {TIMEOUT_S} s")
    return [torch.load(directory / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]


def test_all_reduce_sum_forward_is_the_sum_over_ranks(rank_results: List[Dict[str, Any]]) -> None:
    base = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    for result in rank_results:
        torch.testing.assert_close(result["collectives"]["reduce_value"], base * 1 + base * 2, rtol=0, atol=0)


def test_all_reduce_sum_backward_sums_upstream_gradients_over_ranks(rank_results: List[Dict[str, Any]]) -> None:
    upstream = torch.linspace(-1.0, 2.0, 6, dtype=torch.float64).reshape(2, 3)
    for result in rank_results:
        # Identical upstream g on both ranks: d/dx_r sum_r' <sum_s x_s, g> = world_size * g.
        torch.testing.assert_close(result["collectives"]["reduce_grad_same"], WORLD_SIZE * upstream, rtol=0, atol=0)
        # Upstream g * (r + 2) on rank r: every rank receives g * 2 + g * 3.
        torch.testing.assert_close(
            result["collectives"]["reduce_grad_rank"], upstream * 2 + upstream * 3, rtol=0, atol=0
        )


def test_small_message_helpers_agree_on_every_rank(rank_results: List[Dict[str, Any]]) -> None:
    for result in rank_results:
        messages = result["messages"]
        assert messages["device"] == "cpu"  # gloo
        assert (messages["any_none"], messages["any_rank1"], messages["any_all"]) == (False, True, True)
        assert messages["text_from_0"] == "rank 0 says héllo"
        assert messages["text_from_1"] == "x" * 300
        assert messages["empty"] == ""


def test_small_message_helpers_without_a_process_group_are_local() -> None:
    barrier()
    assert (any_rank(False), any_rank(True)) == (False, True)
    assert broadcast_text("ünïcode") == "ünïcode"
    with pytest.raises(TypeError, match="flag must be a bool, got 1"):
        any_rank(1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        broadcast_text(b"x")  # type: ignore[arg-type]


def test_all_reduce_max_is_the_elementwise_maximum_over_ranks(rank_results: List[Dict[str, Any]]) -> None:
    for result in rank_results:  # rank 0 holds (1, -2, 3), rank 1 (-1, 2, -3)
        torch.testing.assert_close(
            result["collectives"]["max_value"], torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), rtol=0, atol=0
        )


def test_all_gather_cat_autograd_concatenates_in_rank_order_and_sums_gradients(
    rank_results: List[Dict[str, Any]],
) -> None:
    full = torch.arange(11 * 3, dtype=torch.float64).reshape(11, 3)
    upstream = torch.linspace(-1.0, 1.0, 33, dtype=torch.float64).reshape(11, 3)
    for rank, result in enumerate(rank_results):
        torch.testing.assert_close(result["collectives"]["gather_value"], full, rtol=0, atol=0)
        # Rank r weights the gathered tensor by upstream * (r + 1): the slice of the sum, 3 * upstream.
        expected = (upstream * 1 + upstream * 2)[rank_slices()[rank]]
        torch.testing.assert_close(result["collectives"]["gather_grad"], expected, rtol=0, atol=0)


def _single_process_psl(dtype: torch.dtype) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    inputs, targets, labels, _ = global_batch(0, dtype)
    layer = make_layer(dtype)
    module = PSL(NUM_CLUSTERS)
    loss = module(layer(inputs), targets, labels)
    loss.backward()
    assert module.last_terms is not None
    return loss.detach(), terms_of(module).num_active, grad_of(layer.weight), grad_of(layer.bias)


@pytest.mark.parametrize(
    ("key", "dtype", "tolerance"),
    [
        ("ddp_float64", torch.float64, 1e-12),
        ("ddp_float32", torch.float32, 1e-6),
        ("ddp_float64_fast", torch.float64, 1e-12),
    ],  # validate_args=False: masked, not selected
)
def test_ddp_psl_loss_and_gradients_equal_single_process_on_global_batch(
    rank_results: List[Dict[str, Any]], key: str, dtype: torch.dtype, tolerance: float
) -> None:
    loss, num_active, weight_grad, bias_grad = _single_process_psl(dtype)
    assert int(num_active) == 5  # clusters 3 and 4 live on one rank each; the global mask sees both
    for result in rank_results:
        got = result[key]
        assert int(got["num_active"]) == int(num_active)
        torch.testing.assert_close(got["loss"], loss, rtol=tolerance, atol=tolerance)
        torch.testing.assert_close(got["weight_grad"], weight_grad, rtol=tolerance, atol=tolerance)
        torch.testing.assert_close(got["bias_grad"], bias_grad, rtol=tolerance, atol=tolerance)


SOFT_SCENARIOS = {
    # name: (weights, dtype, tolerance)
    "soft": (soft_weights, torch.float64, 1e-12),
    "soft_rank1_zero": (soft_weights_rank1_all_zero, torch.float64, 1e-12),
    "soft_tiny_uneven": (soft_weights_tiny_and_uneven, torch.float32, 1e-6),
}


@pytest.mark.parametrize("scenario", sorted(SOFT_SCENARIOS))
def test_soft_weight_psl_with_averaged_gradients_equals_single_process(
    rank_results: List[Dict[str, Any]], scenario: str
) -> None:
    # Includes a rank whose local weights are all zero (valid: the global total weight is positive)
    # and weights that underflow float32 with a different magnitude on each rank.
    make_weights, dtype, tolerance = SOFT_SCENARIOS[scenario]
    inputs, targets, _, _ = global_batch(0, dtype)
    layer = make_layer(dtype)
    terms = prototype_scattering_terms(layer(inputs), targets, make_weights(), NUM_CLUSTERS)
    terms.loss.backward()
    assert torch.isfinite(terms.loss)
    for result in rank_results:
        got = result[scenario]
        for name in ("loss", "alignment", "uniformity"):
            torch.testing.assert_close(got[name], getattr(terms, name).detach(), rtol=tolerance, atol=tolerance)
        torch.testing.assert_close(got["weight_grad"], grad_of(layer.weight), rtol=tolerance, atol=tolerance)
        torch.testing.assert_close(got["bias_grad"], grad_of(layer.bias), rtol=tolerance, atol=tolerance)


def test_rank_with_an_empty_batch_gives_the_single_process_loss_gradients_and_queue(
    rank_results: List[Dict[str, Any]],
) -> None:
    inputs, targets, labels, indices = global_batch(0, torch.float64)
    layer = make_layer(torch.float64)
    module = PSL(NUM_CLUSTERS, queue_size=QUEUE_SIZE, feature_dim=DIM)
    loss = module(layer(inputs), targets, labels, indices)
    loss.backward()
    features, queue_labels, queue_indices = queue_of(module).contents()
    for result in rank_results:
        got = result["empty_rank"]
        assert int(got["num_active"]) == int(terms_of(module).num_active) == 5
        torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got["uniformity"], terms_of(module).uniformity, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got["weight_grad"], grad_of(layer.weight), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got["bias_grad"], grad_of(layer.bias), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got["queue_features"], features, rtol=1e-6, atol=1e-7)
        assert torch.equal(got["queue_labels"], queue_labels)
        assert torch.equal(got["queue_indices"], queue_indices)


def test_zero_global_weight_raises_the_same_value_error_on_every_rank(rank_results: List[Dict[str, Any]]) -> None:
    messages = [result["zero_global_weight"]["messages"] for result in rank_results]
    assert messages[0] == messages[1]  # the same error on every rank, no rank left in a collective
    assert len(messages[0]) == 3
    for message in messages[0]:
        assert "zero total weight over all ranks" in message
    for result in rank_results:
        assert result["zero_global_weight"]["after"].item() == WORLD_SIZE


def test_single_process_still_rejects_an_empty_batch_and_all_zero_weights() -> None:
    inputs, targets, labels, _ = global_batch(0, torch.float64)
    with pytest.raises(ValueError, match="B >= 1"):
        PSL(NUM_CLUSTERS)(inputs[:0, :DIM], targets[:0], labels[:0])
    with pytest.raises(ValueError, match="all zero"):
        prototype_scattering_loss(inputs[:, :DIM], targets, torch.zeros(11, NUM_CLUSTERS), NUM_CLUSTERS)


def test_fast_path_queue_training_with_equal_batches_equals_single_process_without_a_sync(
    rank_results: List[Dict[str, Any]],
) -> None:
    module, losses = queue_steps(make_layer(torch.float64), slice(0, 10))
    queue_of(module).push(torch.randn(10, DIM), torch.zeros(10, dtype=torch.int64), torch.arange(10))
    _, labels, indices = queue_of(module).contents()
    for result in rank_results:
        got = result["queue_fast"]
        torch.testing.assert_close(got["losses"], losses, rtol=1e-12, atol=1e-12)
        assert torch.equal(got["queue_labels"], labels) and torch.equal(got["queue_indices"], indices)
        assert got["push_syncs"] == 0


def test_queue_training_equals_single_process_fed_the_concatenated_batches(
    rank_results: List[Dict[str, Any]],
) -> None:
    layer = make_layer(torch.float64)
    module, losses = queue_steps(layer, slice(None))
    assert queue_of(module).is_full  # 3 x 11 pushes wrapped around a queue of 16
    features, labels, indices = queue_of(module).contents()
    for result in rank_results:
        got = result["queue"]
        torch.testing.assert_close(got["losses"], losses, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got["weight"], layer.weight.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got["queue_features"], features, rtol=1e-6, atol=1e-7)  # float32 queue
        assert torch.equal(got["queue_labels"], labels)
        assert torch.equal(got["queue_indices"], indices)
    # Queues are identical on both ranks, bit for bit.
    assert torch.equal(rank_results[0]["queue"]["queue_features"], rank_results[1]["queue"]["queue_features"])


def test_bad_input_on_one_rank_raises_on_every_rank_without_changing_the_queue(
    rank_results: List[Dict[str, Any]],
) -> None:
    assert "assignments" in rank_results[1]["bad_input"]["message"]
    assert "another rank" in rank_results[0]["bad_input"]["message"]
    for result in rank_results:
        assert result["bad_input"]["queue_length"] == 0
        assert result["bad_input"]["after"].item() == WORLD_SIZE


@pytest.mark.parametrize(
    "case, needle",
    [
        ("feature size (module)", "feature size"),
        ("feature size (functional)", "feature size"),
        ("dtype", "dtype"),
        ("hard vs soft", "assignments.dim()"),
    ],
)
def test_inputs_that_disagree_between_ranks_raise_on_every_rank_instead_of_aborting(
    rank_results: List[Dict[str, Any]], case: str, needle: str
) -> None:
    for result in rank_results:
        message = result["mismatch"]["messages"][case]
        assert "differs between ranks" in message and needle in message, message
        assert result["mismatch"]["after"].item() == WORLD_SIZE
