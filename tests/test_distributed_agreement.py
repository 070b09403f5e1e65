"""Two-process (gloo, CPU) tests: input that disagrees between ranks raises on every rank (issue 26, item 7).

Each rank runs every scenario once in one pair of spawned processes and records
what it raised; a scenario that aborts a process (gloo's ``EnforceNotMet``) or
hangs makes the fixture, and so every test here, fail: the collectives time out
after ``COLLECTIVE_TIMEOUT_S`` and the processes are killed after ``TIMEOUT_S``.
"""

from __future__ import annotations

from typing import Any, Dict, List

import pytest
import torch

from propos_losses.distributed import all_gather_cat, all_gather_cat_autograd
from propos_losses.psl import PSL
from propos_losses.queue import PrototypeQueue

from helpers import WORLD_SIZE, outcome, queue_of, run_scenarios

TIMEOUT_S = 150.0
COLLECTIVE_TIMEOUT_S = 30.0
K, DIM, QUEUE_SIZE = 3, 4, 8


def _queue_state(queue: PrototypeQueue) -> Dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in queue.state_dict().items()}


def _scenarios(rank: int) -> Dict[str, Dict[str, Any]]:
    other = rank == 1
    generator = torch.Generator().manual_seed(rank)
    outcomes: Dict[str, Dict[str, Any]] = {}

    outcomes["gather dtype"] = outcome(lambda: all_gather_cat(torch.ones(2, 3, dtype=torch.float64 if other else None)))
    outcomes["gather trailing size"] = outcome(lambda: all_gather_cat(torch.ones(2, 4 if other else 3)))
    outcomes["gather rank"] = outcome(lambda: all_gather_cat(torch.ones(2, 3, 1) if other else torch.ones(2, 3)))
    outcomes["gather autograd trailing size"] = outcome(
        lambda: all_gather_cat_autograd(torch.ones(2, 4 if other else 3, requires_grad=True))
    )
    outcomes["gather uneven rows"] = outcome(lambda: all_gather_cat(torch.full((1 + 2 * rank, 3), float(rank))))

    # A queue whose feature size differs between ranks; each rank's input fits its own queue.
    queue = PrototypeQueue(QUEUE_SIZE, DIM + 1 if other else DIM)
    outcomes["queue feature size"] = outcome(
        lambda: queue.push(torch.randn(2, queue.feature_dim, generator=generator), torch.tensor([0, 1]))
    )
    outcomes["queue feature size"]["length"] = len(queue)

    # A queue whose dtype differs between ranks (the pushed rows are cast to it before the gather).
    queue = PrototypeQueue(QUEUE_SIZE, DIM, dtype=torch.float64 if other else torch.float32)
    outcomes["queue dtype"] = outcome(
        lambda: queue.push(torch.randn(2, DIM, generator=generator), torch.tensor([0, 1]))
    )
    outcomes["queue dtype"]["length"] = len(queue)

    # PSL whose queue was converted on one rank only (psl.double()): refused before the loss is computed.
    psl = PSL(K, queue_size=QUEUE_SIZE, feature_dim=DIM)
    if other:
        psl.double()
    online, target = torch.randn(2, 3, DIM, generator=generator).unbind(0)
    outcomes["psl queue dtype"] = outcome(lambda: psl(online, target, torch.tensor([0, 1, 2]), torch.arange(3)))
    outcomes["psl queue dtype"]["length"] = len(queue_of(psl))
    outcomes["psl queue dtype"]["last_terms"] = psl.last_terms is None

    # PSL (checked path) with a negative dataset index on one rank only.
    psl = PSL(K, queue_size=QUEUE_SIZE, feature_dim=DIM)
    psl(online, target, torch.tensor([0, 1, 2]), torch.arange(3) + 3 * rank)
    before = _queue_state(queue_of(psl))
    indices = torch.tensor([0, -1, 2]) if other else torch.arange(3)
    outcomes["psl bad indices"] = outcome(lambda: psl(online, target, torch.tensor([0, 1, 2]), indices))
    outcomes["psl bad indices"]["unchanged"] = all(
        torch.equal(tensor, before[name]) for name, tensor in queue_of(psl).state_dict().items()
    )

    # PSL (checked path) with a label out of range on one rank only, soft weights on the other.
    outcomes["psl bad labels"] = outcome(
        lambda: PSL(K)(online, target, torch.tensor([0, 1, K]) if other else torch.tensor([0, 1, 2]))
    )

    return outcomes


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> List[Dict[str, Dict[str, Any]]]:
    return run_scenarios(
        _scenarios,
        tmp_path_factory.mktemp("agreement"),
        timeout_s=TIMEOUT_S,
        collective_timeout_s=COLLECTIVE_TIMEOUT_S,
    )


def _same_error_everywhere(outcomes: List[Dict[str, Dict[str, Any]]], case: str, *needles: str) -> str:
    messages = [result[case].get("message") for result in outcomes]
    for result in outcomes:
        assert result[case]["error"] == "ValueError", (case, result[case])
    assert messages[0] == messages[1], messages
    for needle in needles:
        assert needle in messages[0], messages[0]
    return str(messages[0])


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("gather dtype", ("dtype", "torch.float32", "torch.float64", "rank 1")),
        ("gather trailing size", ("(3,)", "(4,)", "rank 1")),
        ("gather rank", ("(3,)", "(3, 1)")),
        ("gather autograd trailing size", ("(3,)", "(4,)")),
    ],
)
def test_all_gather_cat_with_tensors_that_differ_between_ranks_raises_the_same_error_on_every_rank(
    outcomes: List[Dict[str, Dict[str, Any]]], case: str, needles: tuple
) -> None:
    message = _same_error_everywhere(outcomes, case, "differ between ranks", *needles)
    assert message.startswith("all_gather_cat"), message


def test_all_gather_cat_still_concatenates_uneven_batches_in_rank_order(
    outcomes: List[Dict[str, Dict[str, Any]]],
) -> None:
    expected = torch.cat([torch.zeros(1, 3), torch.ones(3, 3)])
    for result in outcomes:
        assert result["gather uneven rows"]["error"] is None
        assert torch.equal(result["gather uneven rows"]["result"], expected)


@pytest.mark.parametrize(("case", "needle"), [("queue feature size", "feature size"), ("queue dtype", "dtype")])
def test_queue_push_that_differs_between_ranks_raises_on_every_rank_and_changes_no_queue(
    outcomes: List[Dict[str, Dict[str, Any]]], case: str, needle: str
) -> None:
    message = _same_error_everywhere(outcomes, case, "PrototypeQueue.push", "differs between ranks", needle)
    assert "nothing was changed" in message or "it must be the same on every rank" in message
    for result in outcomes:
        assert result[case]["length"] == 0


def test_psl_with_a_queue_dtype_that_differs_between_ranks_raises_before_computing_the_loss(
    outcomes: List[Dict[str, Dict[str, Any]]],
) -> None:
    _same_error_everywhere(outcomes, "psl queue dtype", "differs between ranks", "queue")
    for result in outcomes:
        assert result["psl queue dtype"]["length"] == 0 and result["psl queue dtype"]["last_terms"]


@pytest.mark.parametrize(("case", "needle"), [("psl bad indices", "indices"), ("psl bad labels", "assignments")])
def test_psl_bad_input_on_one_rank_raises_on_every_rank(
    outcomes: List[Dict[str, Dict[str, Any]]], case: str, needle: str
) -> None:
    assert outcomes[1][case]["error"] == "ValueError" and needle in outcomes[1][case]["message"]
    assert outcomes[0][case]["error"] == "ValueError" and "another rank" in outcomes[0][case]["message"]
    for result in outcomes:
        assert result[case].get("unchanged", True)


def test_the_process_group_still_works_after_every_refused_call(outcomes: List[Dict[str, Dict[str, Any]]]) -> None:
    for result in outcomes:
        assert result["after"]["sum"] == WORLD_SIZE
