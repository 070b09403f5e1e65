"""The drop-in helpers under torch.distributed: 2 gloo processes on CPU.

One spawn runs every scenario (to keep the file fast); each rank saves what it computed and the tests
compare it with single-process runs in this process.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from propos_losses import EStep, SphericalKMeans, WithIndex, extract_features

from helpers import WORLD_SIZE, gloo_group, spawn_and_wait

TIMEOUT_S = 120.0
N_FEATURES = 11  # not divisible by WORLD_SIZE: the DistributedSampler pads with a duplicate
N_ESTEP = 41


def make_net() -> nn.Sequential:
    """The same network on every rank and in the parent: Linear, BatchNorm (moved statistics), dropout."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), nn.Linear(6, 4))
    with torch.no_grad():
        net(torch.randn(16, 3))
    net.train()
    return net


def make_inputs(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(seed))


def make_kmeans_data() -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    centres = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 4, (80,), generator=gen)
    return centres[labels] + 0.7 * torch.randn(80, 5, generator=gen, dtype=torch.float64)


def local_kmeans() -> SphericalKMeans:
    return SphericalKMeans(4, n_init=3, random_state=2, distributed=False).fit(make_kmeans_data())


def sharded_loader(data: Any, rank: int, shuffle: bool) -> DataLoader:
    sampler = DistributedSampler(data, num_replicas=WORLD_SIZE, rank=rank, shuffle=shuffle, seed=5)
    sampler.set_epoch(3)
    return DataLoader(data, batch_size=3, sampler=sampler)


def modes(module: nn.Module) -> List[bool]:
    return [sub.training for sub in module.modules()]


def worker(rank: int, init_file: str, out_dir: str) -> None:
    with gloo_group(rank, init_file, timeout_s=60):
        torch.set_num_threads(1)
        out: Dict[str, Any] = {}

        # (1) k-means on rank 0 alone while rank 1 already waits at the barrier.
        if rank == 0:
            km = local_kmeans()
            out["kmeans"] = {"labels": km.labels_, "centers": km.cluster_centers_, "inertia": km.inertia_}
        dist.barrier()

        # (2) features through a DistributedSampler, shuffled and not; and an unsharded loader.
        net = make_net()
        net[1].eval()  # mixed modes, to be restored
        expected_modes = modes(net)
        X = make_inputs(N_FEATURES, seed=1)
        data = WithIndex(TensorDataset(X))
        for shuffle in (False, True):
            loader = sharded_loader(data, rank, shuffle)
            out[f"shard_indices_{shuffle}"] = torch.tensor(list(iter(loader.sampler)))
            out[f"features_{shuffle}"] = extract_features(net, loader)
        out["features_unsharded"] = extract_features(net, DataLoader(data, batch_size=4))
        out["modes_restored"] = modes(net) == expected_modes

        # (3) the E-step: identical labels on every rank.
        X_estep = make_inputs(N_ESTEP, seed=2)
        unseeded = EStep(4, n_init=1, seed=None)  # each rank would draw its own seed: rank 0's result must win
        out["estep_unseeded"] = unseeded(net, X_estep)
        out["estep_unseeded_centers"] = unseeded.cluster_centers_
        seeded = EStep(4, n_init=2, seed=0, warm_start=True)
        loader = sharded_loader(TensorDataset(X_estep), rank, shuffle=True)
        out["estep_seeded"] = [seeded(net, loader), seeded(net, loader)]
        out["estep_seeded_warm"] = [h["warm"] for h in seeded.history_]
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> List[Dict[str, Any]]:
    tmp_path = tmp_path_factory.mktemp("dropin_dist")
    spawn_and_wait(worker, (str(tmp_path / "store"), str(tmp_path)), timeout_s=TIMEOUT_S)
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]


def test_kmeans_with_distributed_false_on_rank_0_alone_does_not_wait_for_other_ranks(
    results: List[Dict[str, Any]],
) -> None:
    assert "kmeans" not in results[1]
    got = results[0]["kmeans"]
    single = local_kmeans()  # no process group here
    assert torch.equal(got["labels"], single.labels_)
    assert torch.equal(got["centers"], single.cluster_centers_)
    assert got["inertia"] == single.inertia_
    assert got["labels"].shape == (80,)  # all rows, not a shard


@pytest.mark.parametrize("shuffle", [False, True])
def test_extract_features_over_a_distributed_sampler_gives_every_rank_all_rows_in_order(
    results: List[Dict[str, Any]], shuffle: bool
) -> None:
    X = make_inputs(N_FEATURES, seed=1)
    net = make_net()
    net[1].eval()
    single = extract_features(net, X)
    shards = [result[f"shard_indices_{shuffle}"] for result in results]
    # The ranks really computed different shards, the padded sampler repeats one sample.
    assert all(shard.numel() == (N_FEATURES + 1) // WORLD_SIZE for shard in shards)
    assert sorted(set(torch.cat(shards).tolist())) == list(range(N_FEATURES))
    if shuffle:
        assert not torch.equal(torch.sort(shards[0]).values, shards[0])
    for result in results:
        features = result[f"features_{shuffle}"]
        assert features.shape == (N_FEATURES, 4)
        torch.testing.assert_close(features, single, rtol=1e-6, atol=1e-6)
    assert torch.equal(results[0][f"features_{shuffle}"], results[1][f"features_{shuffle}"])


def test_extract_features_without_a_distributed_sampler_computes_all_rows_on_every_rank(
    results: List[Dict[str, Any]],
) -> None:
    net = make_net()
    net[1].eval()
    single = extract_features(net, make_inputs(N_FEATURES, seed=1))
    for result in results:
        torch.testing.assert_close(result["features_unsharded"], single, rtol=1e-6, atol=1e-6)
        assert result["modes_restored"]


def test_estep_gives_identical_labels_on_every_rank(results: List[Dict[str, Any]]) -> None:
    first, second = results
    assert torch.equal(first["estep_unseeded"], second["estep_unseeded"])
    assert torch.equal(first["estep_unseeded_centers"], second["estep_unseeded_centers"])
    labels = first["estep_unseeded"]
    assert labels.shape == (N_ESTEP,) and labels.dtype == torch.int64
    assert int(labels.min()) >= 0 and int(labels.max()) < 4
    for call in range(2):
        assert torch.equal(first["estep_seeded"][call], second["estep_seeded"][call])
    assert first["estep_seeded_warm"] == second["estep_seeded_warm"] == [False, True]


def test_estep_over_a_distributed_sampler_equals_the_single_process_estep(results: List[Dict[str, Any]]) -> None:
    net = make_net()
    net[1].eval()
    X = make_inputs(N_ESTEP, seed=2)
    single = EStep(4, n_init=2, seed=0, warm_start=True)
    expected = [single(net, X), single(net, X)]
    for result in results:
        for call in range(2):
            assert torch.equal(result["estep_seeded"][call], expected[call])
