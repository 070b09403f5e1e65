"""Helpers shared by the test modules (imported as ``helpers``; pytest puts ``tests/`` on the path)."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import pytest
import torch.multiprocessing as mp
from torch import Tensor

from propos_losses.psl import PrototypeScatteringLoss, PSLTerms
from propos_losses.queue import PrototypeQueue

#: Processes of the multi-process (gloo, CPU) tests.
WORLD_SIZE = 2


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
