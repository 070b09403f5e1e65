"""Helpers shared by the test modules (imported as ``helpers``; pytest puts ``tests/`` on the path)."""

from __future__ import annotations

import contextlib
import datetime
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Sequence

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from propos_losses.psl import PrototypeScatteringLoss, PSLTerms
from propos_losses.queue import PrototypeQueue

#: Processes of the multi-process (gloo, CPU) tests.
WORLD_SIZE = 2


@contextlib.contextmanager
def gloo_group(rank: int, init_file: str, timeout_s: float = 1800.0) -> Iterator[None]:
    """Join the tests' gloo process group for the body of the ``with``, then leave it.

    After a body that did not raise, every rank waits for the others before
    ``destroy_process_group``: on torch 2.4 a rank that destroyed the group while
    the other was still finishing made that one hang in its own destroy (4 of 25
    runs of the queue test; pytorch/pytorch#75097 gives the same advice). After an
    error the group is destroyed at once, since the other ranks may never arrive.
    """
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()


def spawn_and_wait(
    worker: Callable[..., None], args: Sequence[object], timeout_s: float = 120.0, nprocs: int = WORLD_SIZE
) -> None:
    """Run ``worker(rank, *args)`` on ``nprocs`` spawned processes; re-raise child failures; kill on timeout."""
    context = mp.spawn(worker, args=tuple(args), nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=max(deadline - time.monotonic(), 0.0)):
        if time.monotonic() >= deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"distributed workers did not finish within {timeout_s} s")


def grad_of(tensor: Tensor) -> Tensor:
    """The gradient of a leaf after ``backward`` (asserted to exist)."""
    assert tensor.grad is not None
    return tensor.grad


def queue_of(module: PrototypeScatteringLoss) -> PrototypeQueue:
    """The queue of a PSL built with ``queue_size > 0`` (asserted to exist)."""
    assert module.queue is not None
    return module.queue


def terms_of(module: PrototypeScatteringLoss) -> PSLTerms:
    """The detached terms of the last forward (asserted to exist)."""
    assert module.last_terms is not None
    return module.last_terms


def outcome(call: Callable[[], object]) -> Dict[str, Any]:
    """What ``call`` did on this rank: its error (type and message), or ``{"error": None, "result": ...}``."""
    try:
        result = call()
    except (TypeError, ValueError) as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    return {"error": None, "result": result}


def _scenario_worker(
    rank: int, init_file: str, out_dir: str, scenarios: Callable[[int], Dict[str, Any]], collective_timeout_s: float
) -> None:
    torch.set_num_threads(1)
    with gloo_group(rank, init_file, timeout_s=collective_timeout_s):
        try:
            outcomes = scenarios(rank)
            # The process group still works afterwards: no rank was left inside a collective.
            check = torch.ones(1)
            dist.all_reduce(check)
            outcomes["after"] = {"sum": float(check)}
            torch.save(outcomes, Path(out_dir) / f"rank{rank}.pt")
        except BaseException:
            traceback.print_exc()
            raise


def run_scenarios(
    scenarios: Callable[[int], Dict[str, Any]],
    directory: Path,
    *,
    timeout_s: float = 150.0,
    collective_timeout_s: float = 30.0,
) -> List[Dict[str, Any]]:
    """Run ``scenarios(rank)`` on every gloo rank and return each rank's outcomes (rank order).

    Each rank's outcomes also get ``"after": {"sum": ...}``, an all-reduce of ones run after the
    scenarios: ``WORLD_SIZE`` when the process group still works.

    A scenario that hangs fails the caller: collectives time out after
    ``collective_timeout_s`` and the processes are killed after ``timeout_s``.
    ``scenarios`` must be a module-level function (it is pickled for the spawned processes).
    """
    args = (str(directory / "init"), str(directory), scenarios, collective_timeout_s)
    spawn_and_wait(_scenario_worker, args, timeout_s=timeout_s)
    return [torch.load(directory / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]
