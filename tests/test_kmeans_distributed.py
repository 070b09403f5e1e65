"""Spherical k-means under torch.distributed: 2 gloo processes on CPU, shards of different sizes."""

from __future__ import annotations

import os
from typing import Any, Dict

import pytest
import torch
import torch.distributed as dist

from propos_losses.kmeans import SphericalKMeans

from helpers import WORLD_SIZE, gloo_group, spawn_and_wait

SHARD_SIZES = (70, 130)  # deliberately unequal
TIMEOUT_S = 120.0


def make_data() -> torch.Tensor:
    """Overlapping random rows, so that runs take several iterations and the restarts differ."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 5, (sum(SHARD_SIZES),), generator=gen)
    return centres[labels] + 0.8 * torch.randn(sum(SHARD_SIZES), 6, generator=gen, dtype=torch.float64)


def shard(X: torch.Tensor, rank: int) -> torch.Tensor:
    start = sum(SHARD_SIZES[:rank])
    return X[start : start + SHARD_SIZES[rank]]


def make_init(X: torch.Tensor) -> torch.Tensor:
    """Three restarts of 5 centres; the last one puts two centres on the same row, so a cluster starts empty."""
    gen = torch.Generator().manual_seed(1)
    init = torch.stack([X[torch.randperm(X.shape[0], generator=gen)[:5]] for _ in range(3)])
    init[2, 1] = init[2, 0]
    return init


def fit_summary(km: SphericalKMeans) -> Dict[str, Any]:
    return {
        "centers": km.cluster_centers_,
        "labels": km.labels_,
        "inertia": km.inertia_,
        "n_iter": km.n_iter_,
        "history": km.inertia_history_,
        "restart_inertias": km.restart_inertias_,
    }


def worker(rank: int, init_file: str, out_dir: str) -> None:
    with gloo_group(rank, init_file):
        torch.set_num_threads(1)
        X = make_data()
        local = shard(X, rank)
        given = SphericalKMeans(5, init=make_init(X), tol=0.0).fit(local)
        plus_plus = SphericalKMeans(5, n_init=4, random_state=3).fit(local)
        unseeded = SphericalKMeans(5, n_init=2).fit(local)
        sampled = SphericalKMeans(5, n_init=3, random_state=4, sample_size=60).fit(local)
        mismatch = {}
        for case, rows in (
            ("feature size", local[:, :5] if rank == 1 else local),  # 5 columns on rank 1, 6 on rank 0
            ("dtype", local.float() if rank == 1 else local),
        ):
            try:
                SphericalKMeans(5, n_init=1, random_state=0).fit(rows)
                mismatch[case] = "no error"
            except ValueError as exc:
                mismatch[case] = str(exc)
        after = torch.ones(1)
        dist.all_reduce(after)  # the group still works: no rank was left inside a collective
        torch.save(
            {
                "mismatch": mismatch,
                "after": after,
                "given": fit_summary(given),
                "plus_plus": fit_summary(plus_plus),
                "unseeded": fit_summary(unseeded),
                "sampled": fit_summary(sampled),
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )


def run_workers(tmp_path: Any) -> list:
    """Run the workers (child failures re-raised, killed after TIMEOUT_S) and load what each rank saved."""
    spawn_and_wait(worker, (str(tmp_path / "store"), str(tmp_path)), timeout_s=TIMEOUT_S)
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list:
    return run_workers(tmp_path_factory.mktemp("kmeans_dist"))


def test_ranks_with_given_centres_match_the_single_process_run_on_the_concatenated_data(results: list) -> None:
    X = make_data()
    single = fit_summary(SphericalKMeans(5, init=make_init(X), tol=0.0).fit(X))
    for rank, result in enumerate(results):
        got = result["given"]
        assert torch.allclose(got["centers"], single["centers"], atol=1e-10)
        assert got["inertia"] == pytest.approx(single["inertia"], rel=1e-10)
        assert got["n_iter"] == single["n_iter"]
        assert got["history"] == pytest.approx(single["history"], rel=1e-10)
        assert got["restart_inertias"] == pytest.approx(single["restart_inertias"], rel=1e-10)
        assert torch.equal(got["labels"], shard(single["labels"], rank))


@pytest.mark.parametrize("run", ["given", "plus_plus", "unseeded", "sampled"])
def test_every_rank_ends_with_identical_centres_inertia_and_iterations(results: list, run: str) -> None:
    first, second = (result[run] for result in results)
    assert torch.equal(first["centers"], second["centers"])
    assert first["inertia"] == second["inertia"]
    assert first["n_iter"] == second["n_iter"]
    assert [result[run]["labels"].numel() for result in results] == list(SHARD_SIZES)


def test_distributed_k_means_plus_plus_uses_every_shard_and_reaches_single_process_quality(results: list) -> None:
    X = make_data()
    labels = torch.cat([result["plus_plus"]["labels"] for result in results])
    assert labels.numel() == X.shape[0]
    assert torch.all(torch.bincount(labels, minlength=5) > 0)
    centers = results[0]["plus_plus"]["centers"]
    unit = X / X.norm(dim=1, keepdim=True)
    # The reported inertia is the global one: it matches the concatenated labels and centres.
    assert results[0]["plus_plus"]["inertia"] == pytest.approx(float((1 - (unit * centers[labels]).sum(1)).sum()))
    single = SphericalKMeans(5, n_init=4, random_state=3).fit(X)
    assert results[0]["plus_plus"]["inertia"] <= single.inertia_ * 1.05


def test_distributed_sampled_restarts_end_on_a_global_fixed_point(results: list) -> None:
    X = make_data()
    labels = torch.cat([result["sampled"]["labels"] for result in results])
    centers = results[0]["sampled"]["centers"]
    unit = X / X.norm(dim=1, keepdim=True)
    # The winner of the (per-rank proportional) subsample was refined on both shards.
    assert results[0]["sampled"]["inertia"] == pytest.approx(float((1 - (unit * centers[labels]).sum(1)).sum()))
    sims = unit @ centers.t()
    assert torch.all(sims.gather(1, labels.view(-1, 1)).squeeze(1) >= sims.max(dim=1).values - 1e-12)
    assert torch.all(torch.bincount(labels, minlength=5) > 0)


@pytest.mark.parametrize("case", ["feature size", "dtype"])
def test_inputs_that_disagree_between_ranks_raise_on_every_rank_instead_of_aborting(results: list, case: str) -> None:
    for result in results:
        assert "differs between ranks" in result["mismatch"][case], result["mismatch"][case]
        assert result["after"].item() == WORLD_SIZE
