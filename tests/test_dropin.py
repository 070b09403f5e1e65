"""Tests of the drop-in helpers: WithIndex, extract_features, EStep, ProPosLoss, and the drop-in related
changes of PSA (model-owned predictor), MomentumUpdater (lists of modules, buffer policy), PSL (NumPy
assignments) and SphericalKMeans (``distributed=``)."""

from __future__ import annotations

import copy
import io
import pickle
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, RandomSampler, TensorDataset

import propos_losses
from propos_losses import (
    PSA,
    PSL,
    EStep,
    MomentumUpdater,
    ProPosLoss,
    SphericalKMeans,
    WithIndex,
    extract_features,
    positive_sampling_alignment,
)

# ---------------------------------------------------------------- shared helpers


class ListItems(Dataset):
    """Items are lists ``[x, 2x]``."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> List[Tensor]:
        x = torch.full((2,), float(index))
        return [x, 2 * x]


class BareItems(Dataset):
    """Items are plain tensors (no tuple)."""

    def __init__(self, data: Tensor) -> None:
        self.data = data

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        return self.data[index]


class Stream(IterableDataset):
    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(range(3))


class NoLen:
    def __getitem__(self, index: int) -> int:
        return index


class Raising(nn.Module):
    """Raises on its ``fail_on``-th forward call."""

    def __init__(self, fail_on: int) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.calls = 0
        self.fail_on = fail_on

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("boom inside the module")
        return self.linear(x)


def make_net(seed: int = 0) -> nn.Sequential:
    """Linear, BatchNorm (with non-trivial running statistics) and dropout, in train mode."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Dropout(0.5), nn.Linear(5, 4))
    net.train()
    with torch.no_grad():
        net(torch.randn(16, 3))  # moves the running statistics away from (0, 1)
    return net


def direct_eval_features(net: nn.Module, x: Tensor) -> Tensor:
    clone = copy.deepcopy(net).eval()
    with torch.no_grad():
        return clone(x).reshape(x.shape[0], -1)


def snapshot(module: nn.Module) -> Dict[str, Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def assert_same_state(module: nn.Module, before: Dict[str, Tensor]) -> None:
    after = module.state_dict()
    assert set(after) == set(before)
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name


def modes(module: nn.Module) -> List[bool]:
    return [sub.training for sub in module.modules()]


def blobs(n: int = 60, d: int = 4, k: int = 3, seed: int = 0) -> Tensor:
    """Well separated clusters on the sphere."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.eye(d)[:k] * 5.0
    labels = torch.arange(n) % k
    return centres[labels] + 0.3 * torch.randn(n, d, generator=gen)


# ---------------------------------------------------------------- WithIndex


def test_with_index_appends_the_index_to_tuple_items() -> None:
    x, y = torch.randn(6, 3), torch.arange(6) % 2
    data = WithIndex(TensorDataset(x, y))
    item = data[4]
    assert isinstance(item, tuple) and len(item) == 3
    assert torch.equal(item[0], x[4]) and torch.equal(item[1], y[4]) and item[2] == 4
    assert len(data) == 6


def test_with_index_appends_the_index_to_list_items_as_a_tuple() -> None:
    item = WithIndex(ListItems(5))[3]
    assert isinstance(item, tuple) and len(item) == 3
    assert torch.equal(item[0], torch.full((2,), 3.0)) and torch.equal(item[1], torch.full((2,), 6.0))
    assert item[2] == 3


def test_with_index_pairs_non_tuple_items_with_their_index() -> None:
    data = torch.randn(5, 2)
    item = WithIndex(BareItems(data))[2]
    assert isinstance(item, tuple) and len(item) == 2
    assert torch.equal(item[0], data[2]) and item[1] == 2


def test_with_index_collates_to_an_int64_index_tensor_matching_the_rows() -> None:
    x = torch.randn(10, 3)
    loader = DataLoader(
        WithIndex(TensorDataset(x)), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    seen = []
    for inputs, indices in loader:
        assert indices.dtype == torch.int64 and indices.dim() == 1
        assert torch.equal(inputs, x[indices])
        seen.append(indices)
    assert sorted(torch.cat(seen).tolist()) == list(range(10))


def test_with_index_pickles_and_works_in_a_dataloader_worker() -> None:
    x = torch.randn(7, 2)
    data = WithIndex(TensorDataset(x, torch.arange(7)))
    clone = pickle.loads(pickle.dumps(data))
    assert isinstance(clone, WithIndex) and len(clone) == 7
    assert torch.equal(clone[5][0], x[5]) and clone[5][2] == 5
    batches = list(DataLoader(data, batch_size=3, num_workers=1))
    indices = torch.cat([batch[2] for batch in batches])
    assert indices.dtype == torch.int64
    assert indices.tolist() == list(range(7))
    assert torch.equal(torch.cat([batch[0] for batch in batches]), x)


@pytest.mark.parametrize("dataset", [Stream(), NoLen(), object()], ids=["iterable", "no_len", "object"])
def test_with_index_rejects_datasets_without_stable_indices(dataset: object) -> None:
    with pytest.raises(TypeError, match="dataset must be a map-style dataset"):
        WithIndex(dataset)  # type: ignore[arg-type]


# ---------------------------------------------------------------- extract_features


def test_extract_features_gives_the_same_features_for_tensor_dataset_and_ordered_loader() -> None:
    net = make_net()
    x = torch.randn(11, 3)
    expected = direct_eval_features(net, x)
    from_tensor = extract_features(net, x, batch_size=4)
    from_dataset = extract_features(net, TensorDataset(x, torch.arange(11)), batch_size=3)
    from_bare_dataset = extract_features(net, BareItems(x), batch_size=5)
    from_loader = extract_features(net, DataLoader(WithIndex(TensorDataset(x)), batch_size=4, shuffle=False))
    for features in (from_tensor, from_dataset, from_bare_dataset, from_loader):
        assert features.shape == (11, 4)
        torch.testing.assert_close(features, expected, rtol=1e-6, atol=1e-6)
    # Bit-identical where the batches are the same (BLAS may round other batch sizes differently).
    same_batches = extract_features(net, TensorDataset(x, torch.arange(11)), batch_size=4)
    assert torch.equal(from_tensor, same_batches) and torch.equal(from_tensor, from_loader)


def test_extract_features_flattens_pooled_backbone_outputs() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 5, 3, padding=1), nn.AdaptiveAvgPool2d(1))
    x = torch.randn(6, 2, 4, 4)
    features = extract_features(net, x, batch_size=4)
    with torch.no_grad():
        expected = net(x)
    assert expected.shape == (6, 5, 1, 1)
    assert features.shape == (6, 5)
    torch.testing.assert_close(features, expected.flatten(1))


def test_extract_features_runs_in_eval_mode_without_touching_batchnorm_statistics() -> None:
    net = make_net()
    before = snapshot(net)
    x = torch.randn(9, 3)
    first = extract_features(net, x, batch_size=4)
    second = extract_features(net, x, batch_size=2)
    assert_same_state(net, before)  # running stats and num_batches_tracked unchanged
    # Dropout off and running statistics used: deterministic and batch-size independent.
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(first, direct_eval_features(net, x))
    assert all(modes(net))


def test_extract_features_restores_each_submodules_mode() -> None:
    net = make_net()
    net[1].eval()  # BatchNorm in eval, the rest in train
    net[2].train()
    net.train(True)
    net[1].training = False
    expected = modes(net)
    assert expected.count(True) and expected.count(False)
    extract_features(net, torch.randn(5, 3), batch_size=2)
    assert modes(net) == expected
    net.eval()
    net[3].training = True
    expected = modes(net)
    extract_features(net, torch.randn(5, 3), batch_size=2)
    assert modes(net) == expected


def test_extract_features_restores_each_submodules_mode_after_an_error_in_the_module() -> None:
    module = Raising(fail_on=2)
    module.train()
    module.linear.eval()
    expected = modes(module)
    seen_modes: List[List[bool]] = []
    module.register_forward_pre_hook(lambda m, inputs: seen_modes.append(modes(m)))
    with pytest.raises(RuntimeError, match="boom inside the module"):
        extract_features(module, torch.randn(6, 3), batch_size=2)
    assert seen_modes and all(not any(m) for m in seen_modes)  # eval everywhere while extracting
    assert modes(module) == expected


def test_extract_features_builds_no_graph() -> None:
    net = make_net()
    x = torch.randn(5, 3, requires_grad=True)
    features = extract_features(net, x)
    assert not features.requires_grad and features.grad_fn is None
    assert all(parameter.requires_grad for parameter in net.parameters())


def test_extract_features_rejects_a_shuffling_dataloader_and_changes_nothing() -> None:
    net = make_net()
    net[1].eval()
    expected_modes, before = modes(net), snapshot(net)
    loader = DataLoader(TensorDataset(torch.randn(8, 3)), batch_size=4, shuffle=True)
    with pytest.raises(ValueError, match="shuffle=False"):
        extract_features(net, loader)
    assert modes(net) == expected_modes
    assert_same_state(net, before)


def test_extract_features_rejects_a_dataloader_whose_batch_sampler_shuffles() -> None:
    x = torch.arange(10.0).view(10, 1)
    dataset = TensorDataset(x)
    loader = DataLoader(
        dataset,
        batch_sampler=BatchSampler(RandomSampler(dataset, generator=torch.Generator().manual_seed(0)), 4, False),
    )
    with pytest.raises(ValueError, match="shuffle=False"):
        extract_features(nn.Identity(), loader)  # today: returns the rows in the shuffled order, silently


def test_extract_features_of_a_dataset_does_not_consume_the_global_rng() -> None:
    net = make_net()
    data = TensorDataset(torch.randn(7, 3))
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    features = extract_features(net, data, batch_size=3)
    after = torch.random.get_rng_state()
    assert features.shape == (7, 4)
    assert torch.equal(before, after)


@pytest.mark.parametrize(
    ("batch_size", "error", "match"),
    [
        (0, ValueError, "batch_size must be >= 1"),
        (-3, ValueError, "batch_size"),
        (2.0, TypeError, "batch_size"),
        (True, TypeError, "batch_size"),
        ("4", TypeError, "batch_size"),
    ],
)
def test_extract_features_validates_batch_size_and_changes_nothing(batch_size: Any, error: type, match: str) -> None:
    net = make_net()
    net[1].eval()
    expected_modes, before = modes(net), snapshot(net)
    with pytest.raises(error, match=match):
        extract_features(net, torch.randn(4, 3), batch_size=batch_size)
    assert modes(net) == expected_modes
    assert_same_state(net, before)


def test_extract_features_rejects_bad_module_and_data_types() -> None:
    with pytest.raises(TypeError, match="module must be an nn.Module"):
        extract_features(lambda x: x, torch.randn(3, 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="data must be"):
        extract_features(nn.Identity(), [torch.randn(2)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="data must"):
        extract_features(nn.Identity(), torch.randn(0, 2))


def test_extract_features_device_argument_moves_inputs_and_features() -> None:
    net = make_net()
    x = torch.randn(6, 3)
    on_cpu = extract_features(net, x, device="cpu")
    assert on_cpu.device == torch.device("cpu")
    assert torch.equal(on_cpu, extract_features(net, x, device=torch.device("cpu")))
    # A module on the meta device: the CPU inputs must be moved there (explicitly, or by default).
    meta_net = nn.Linear(3, 4, device="meta")
    explicit = extract_features(meta_net, x, batch_size=4, device="meta")
    default = extract_features(meta_net, x, batch_size=4)
    assert explicit.device.type == "meta" and explicit.shape == (6, 4)
    assert default.device.type == "meta" and default.shape == (6, 4)
    # Without parameters the default device is the CPU.
    assert extract_features(nn.Flatten(), x).device == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_extract_features_moves_cpu_inputs_to_the_modules_cuda_device() -> None:
    net = make_net().cuda()
    x = torch.randn(6, 3)
    features = extract_features(net, x, batch_size=4)
    assert features.device.type == "cuda"
    torch.testing.assert_close(features.cpu(), direct_eval_features(net.cpu(), x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- EStep


def test_estep_returns_int64_labels_in_range_for_every_sample() -> None:
    net = nn.Identity()
    X = blobs()
    estep = EStep(3, n_init=2, seed=0)
    labels = estep(net, X)
    assert labels.shape == (60,) and labels.dtype == torch.int64
    assert int(labels.min()) >= 0 and int(labels.max()) < 3
    assert torch.equal(labels, estep.labels_)
    assert estep.cluster_centers_ is not None and estep.cluster_centers_.shape == (3, 4)
    assert len(estep.history_) == 1 and estep.history_[0]["warm"] is False
    # The well separated blobs are found.
    assert propos_losses.nmi(labels.numpy(), (torch.arange(60) % 3).numpy()) == pytest.approx(1.0)


def test_estep_seed_makes_calls_reproducible_and_call_n_uses_seed_plus_n() -> None:
    X = torch.randn(50, 5, generator=torch.Generator().manual_seed(1))  # no clear clusters: seeds matter
    a, b = EStep(4, n_init=1, seed=3), EStep(4, n_init=1, seed=3)
    first_a, first_b = a.fit_features(X), b.fit_features(X)
    assert torch.equal(first_a, first_b)
    second_a = a.fit_features(X)
    assert torch.equal(second_a, EStep(4, n_init=1, seed=4).fit_features(X))
    direct = SphericalKMeans(4, n_init=1, random_state=3).fit(X)
    assert torch.equal(first_a, direct.labels_)


def test_estep_warm_start_starts_from_the_previous_centres() -> None:
    X = torch.randn(50, 5, generator=torch.Generator().manual_seed(2))
    Y = X + 0.3 * torch.randn(50, 5, generator=torch.Generator().manual_seed(3))
    estep = EStep(4, n_init=3, seed=0, warm_start=True)
    estep.fit_features(X)
    previous = estep.cluster_centers_.clone()  # type: ignore[union-attr]
    labels = estep.fit_features(Y)
    assert [h["warm"] for h in estep.history_] == [False, True]
    expected = SphericalKMeans(4, n_init=1, init=previous, random_state=1).fit(Y)
    assert torch.equal(labels, expected.labels_)
    torch.testing.assert_close(estep.cluster_centers_, expected.cluster_centers_)


def test_estep_warm_start_on_unchanged_features_keeps_the_labels() -> None:
    net = nn.Linear(6, 4)
    X = torch.randn(40, 6, generator=torch.Generator().manual_seed(4))
    estep = EStep(3, seed=0, warm_start=True)
    first, second = estep(net, X), estep(net, X)
    assert torch.equal(first, second)
    assert [h["warm"] for h in estep.history_] == [False, True]


def test_estep_state_dict_round_trip_resumes_the_same_warm_start() -> None:
    X = torch.randn(40, 5, generator=torch.Generator().manual_seed(5))
    Y = X + 0.3 * torch.randn(40, 5, generator=torch.Generator().manual_seed(6))
    original = EStep(3, seed=0, warm_start=True)
    original.fit_features(X)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    resumed = EStep(3, seed=0, warm_start=True)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(resumed.labels_, original.labels_)  # type: ignore[arg-type]
    assert torch.equal(resumed.cluster_centers_, original.cluster_centers_)  # type: ignore[arg-type]
    assert resumed.inertia_ == original.inertia_ and resumed.history_ == original.history_
    assert torch.equal(resumed.fit_features(Y), original.fit_features(Y))
    assert [h["warm"] for h in resumed.history_] == [False, True]


def _estep_state(estep: EStep) -> Tuple[Any, ...]:
    return (
        None if estep.labels_ is None else estep.labels_.clone(),
        None if estep.cluster_centers_ is None else estep.cluster_centers_.clone(),
        estep.inertia_,
        copy.deepcopy(estep.history_),
    )


def _assert_estep_state(estep: EStep, state: Tuple[Any, ...]) -> None:
    labels, centres, inertia, history = state
    assert estep.labels_ is not None and torch.equal(estep.labels_, labels)
    assert estep.cluster_centers_ is not None and torch.equal(estep.cluster_centers_, centres)
    assert estep.inertia_ == inertia and estep.history_ == history


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda s: {k: v for k, v in s.items() if k != "history"}, "state must be a dict from EStep.state_dict"),
        (lambda s: {**s, "extra": 1}, "state must be a dict from EStep.state_dict"),
        (lambda s: {**s, "cluster_centers": torch.zeros(2, 5)}, r"cluster_centers must be \(3, d\)"),
        (lambda s: {**s, "cluster_centers": torch.zeros(3)}, r"cluster_centers must be \(3, d\)"),
        (lambda s: [1, 2], "state must be a dict"),
    ],
)
def test_estep_load_state_dict_rejects_a_bad_state_and_changes_nothing(change: Any, match: str) -> None:
    estep = EStep(3, seed=0)
    estep.fit_features(torch.randn(30, 5, generator=torch.Generator().manual_seed(7)))
    before = _estep_state(estep)
    bad = change(estep.state_dict())
    with pytest.raises(ValueError, match=match):
        estep.load_state_dict(bad)
    _assert_estep_state(estep, before)


def test_estep_load_state_dict_rejects_a_bad_history_and_changes_nothing() -> None:
    estep = EStep(3, seed=0)
    estep.fit_features(torch.randn(30, 5, generator=torch.Generator().manual_seed(7)))
    before = _estep_state(estep)
    bad = {"labels": torch.zeros(4, dtype=torch.int64), "cluster_centers": None, "inertia": 0.0, "history": None}
    with pytest.raises((TypeError, ValueError)):
        estep.load_state_dict(bad)
    _assert_estep_state(estep, before)


def test_estep_rejects_fewer_rows_than_clusters_and_changes_nothing() -> None:
    estep = EStep(5, seed=0)
    with pytest.raises(ValueError, match="num_clusters=5"):
        estep(nn.Identity(), torch.randn(4, 3))
    assert estep.labels_ is None and estep.cluster_centers_ is None and estep.history_ == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_clusters": 1}, ValueError, "num_clusters"),
        ({"num_clusters": 3, "warm_start": 1}, TypeError, "warm_start"),
        ({"num_clusters": 3, "batch_size": 0}, ValueError, "batch_size"),
        ({"num_clusters": 3, "seed": -1}, ValueError, "seed"),
        ({"num_clusters": 3, "n_init": 0}, ValueError, "n_init"),
    ],
)
def test_estep_validates_its_arguments(kwargs: Dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        EStep(**kwargs)


# ---------------------------------------------------------------- ProPosLoss

N_SAMPLES, K, D, B = 30, 3, 6, 12


def make_criterion(psl_start: Any = "auto", lambda_psl: float = 0.5, sigma: float = 0.0, **kwargs: Any) -> ProPosLoss:
    torch.manual_seed(0)
    return ProPosLoss(PSA(nn.Linear(D, D), sigma=sigma), PSL(num_clusters=K), lambda_psl, psl_start=psl_start, **kwargs)


def make_views(seed: int = 0) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q1, q2, z1, z2 = torch.randn(4, B, D, generator=gen, dtype=torch.float64).unbind(0)
    return q1.requires_grad_(), q2.requires_grad_(), z1, z2


def pseudo_labels(seed: int = 0) -> Tensor:
    return torch.randint(0, K, (N_SAMPLES,), generator=torch.Generator().manual_seed(seed))


BATCH_INDICES = torch.tensor([27, 3, 14, 8, 0, 21, 29, 11, 5, 17, 24, 9])


def by_hand_alignment(criterion: ProPosLoss, q1: Tensor, q2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    return 0.5 * (criterion.psa(q1, z2) + criterion.psa(q2, z1))


def test_propos_loss_is_the_averaged_alignment_with_sigma_zero_before_psl_start() -> None:
    criterion = make_criterion(psl_start=2, sigma=0.5).double()
    criterion.set_pseudo_labels(pseudo_labels())
    q1, q2, z1, z2 = make_views()
    for epoch in (0, 1):
        criterion.set_epoch(epoch)
        assert not criterion.psl_active and criterion.psa.sigma == 0.0
        loss = criterion(q1, q2, z1, z2, BATCH_INDICES)
        assert torch.equal(loss, by_hand_alignment(criterion, q1, q2, z1, z2))
        assert torch.equal(criterion(q1, q2, z1, z2), loss)  # indices not needed while PSL is off
        assert float(criterion.last_terms["psl"]) == 0.0
    criterion.set_epoch(2)
    assert criterion.psl_active and criterion.psa.sigma == 0.5


def test_propos_loss_adds_weighted_psl_on_the_looked_up_pseudo_labels_from_psl_start() -> None:
    criterion = make_criterion(psl_start=2, lambda_psl=0.7, psl_pairing="same").double()
    labels = pseudo_labels()
    criterion.set_pseudo_labels(labels)
    criterion.set_epoch(2)
    assert criterion.psl_active
    q1, q2, z1, z2 = make_views()
    loss = criterion(q1, q2, z1, z2, BATCH_INDICES)
    batch_labels = labels[BATCH_INDICES]
    alignment = by_hand_alignment(criterion, q1, q2, z1, z2)
    scattering = 0.5 * (criterion.psl(q1, z1, batch_labels) + criterion.psl(q2, z2, batch_labels))
    torch.testing.assert_close(loss, alignment + 0.7 * scattering, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(criterion.last_terms["psl"], scattering.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(criterion.last_terms["psa"], alignment.detach(), rtol=1e-12, atol=1e-12)
    # The lookup uses the indices: other labels give another loss.
    wrong = 0.5 * (criterion.psl(q1, z1, labels[:B]) + criterion.psl(q2, z2, labels[:B]))
    assert not torch.allclose(scattering, wrong)
    # Once on, PSL stays on.
    criterion.set_epoch(0)
    assert criterion.psl_active


def test_propos_loss_auto_switches_psl_on_once_successive_labelings_agree() -> None:
    criterion = make_criterion(psl_start="auto", sigma=0.25)
    first = pseudo_labels(0)
    other = first.clone()
    other[:12] = (other[:12] + 1) % K  # a different partition
    assert propos_losses.nmi(first.numpy(), other.numpy()) < 0.9
    criterion.set_epoch(50)
    assert not criterion.psl_active and criterion.psa.sigma == 0.0
    criterion.set_pseudo_labels(first)
    assert criterion.agreement is None and not criterion.psl_active
    criterion.set_pseudo_labels(other)
    assert criterion.agreement == pytest.approx(propos_losses.nmi(first.numpy(), other.numpy()), abs=1e-12)
    assert not criterion.psl_active and criterion.psa.sigma == 0.0
    relabelled = (other + 2) % K  # the same partition under other cluster ids
    criterion.set_pseudo_labels(relabelled)
    assert criterion.agreement == pytest.approx(1.0)
    assert criterion.psl_active and criterion.psa.sigma == 0.25
    criterion.set_pseudo_labels(first)  # disagreement later does not switch it off
    assert criterion.agreement < 0.9 and criterion.psl_active


def test_propos_loss_auto_respects_a_custom_agreement_threshold() -> None:
    first = pseudo_labels(0)
    other = first.clone()
    other[:6] = (other[:6] + 1) % K
    agreement = propos_losses.nmi(first.numpy(), other.numpy())
    assert 0.0 < agreement < 1.0
    below = make_criterion(agreement_threshold=min(1.0, agreement + 0.01))
    at = make_criterion(agreement_threshold=agreement)
    for criterion in (below, at):
        criterion.set_pseudo_labels(first)
        criterion.set_pseudo_labels(other)
    assert not below.psl_active and at.psl_active


def test_propos_loss_cross_pairing_pairs_each_views_online_prototypes_with_the_other_views_targets() -> None:
    psa = PSA(nn.Linear(D, D), sigma=0.0)
    psl = PSL(num_clusters=3)
    criterion = ProPosLoss(psa, psl, lambda_psl=0.5, psl_start=0)  # "cross" is the default
    assert criterion.psl_pairing == "cross" == propos_losses.defaults.PSL_PAIRING
    labels = torch.randint(0, 3, (30,), generator=torch.Generator().manual_seed(1))
    criterion.set_pseudo_labels(labels)
    q1, q2, z1, z2 = torch.randn(4, 8, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64).unbind(0)
    indices = torch.arange(8)
    expected = 0.5 * (psa(q1, z2) + psa(q2, z1)) + 0.5 * 0.5 * (psl(q1, z2, labels[:8]) + psl(q2, z1, labels[:8]))
    torch.testing.assert_close(criterion(q1, q2, z1, z2, indices), expected)
    with pytest.raises(ValueError, match="psl_pairing"):
        ProPosLoss(psa, psl, psl_pairing="both")


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8])
def test_propos_loss_accepts_numpy_pseudo_labels(dtype: Any) -> None:
    criterion = make_criterion(psl_start=0)
    labels = pseudo_labels()
    criterion.set_pseudo_labels(labels.numpy().astype(dtype))
    assert criterion.pseudo_labels is not None and criterion.pseudo_labels.dtype == torch.int64
    assert torch.equal(criterion.pseudo_labels, labels)
    reference = make_criterion(psl_start=0)
    reference.set_pseudo_labels(labels)
    q1, q2, z1, z2 = make_views()
    assert torch.equal(criterion(q1, q2, z1, z2, BATCH_INDICES), reference(q1, q2, z1, z2, BATCH_INDICES))


def test_propos_loss_with_psl_on_requires_pseudo_labels() -> None:
    criterion = make_criterion(psl_start=0)
    q1, q2, z1, z2 = make_views()
    with pytest.raises(ValueError, match="no pseudo-labels were set"):
        criterion(q1, q2, z1, z2, BATCH_INDICES)


def test_propos_loss_with_psl_on_requires_indices() -> None:
    criterion = make_criterion(psl_start=0)
    criterion.set_pseudo_labels(pseudo_labels())
    q1, q2, z1, z2 = make_views()
    with pytest.raises(ValueError, match="indices"):
        criterion(q1, q2, z1, z2)


@pytest.mark.parametrize(
    ("indices", "error", "match"),
    [
        (torch.arange(B) + N_SAMPLES - B + 1, ValueError, r"indices must be in \[0, 30\)"),
        (torch.arange(B) - 1, ValueError, r"indices must be in \[0, 30\)"),
        (torch.arange(B - 1), ValueError, r"indices must have shape \(12,\)"),
        (torch.arange(B).float(), TypeError, "indices must have an integer dtype"),
        (torch.arange(B).view(3, 4), ValueError, "indices must be 1-D"),
    ],
)
def test_propos_loss_rejects_bad_indices(indices: Tensor, error: type, match: str) -> None:
    criterion = make_criterion(psl_start=0)
    criterion.set_pseudo_labels(pseudo_labels())
    q1, q2, z1, z2 = make_views()
    with pytest.raises(error, match=match):
        criterion(q1, q2, z1, z2, indices)


@pytest.mark.parametrize(
    ("labels", "error", "match"),
    [
        (torch.tensor([0, 1, 3]), ValueError, r"labels must be in \[0, num_clusters=3\), got label 3"),
        (torch.tensor([0, -1, 2]), ValueError, "got label -1"),
        (np.array([0, 1, 5]), ValueError, "got label 5"),
        (torch.tensor([0.0, 1.0]), TypeError, "labels must have an integer dtype"),
        (np.array([0.0, 1.0]), TypeError, "labels must hold integer cluster labels"),
        (torch.zeros(2, 3, dtype=torch.int64), ValueError, "labels must be 1-D"),
        (torch.zeros(0, dtype=torch.int64), ValueError, "labels must hold one label per sample"),
        ([0, 1, 2], TypeError, "labels must be a torch.Tensor"),
        (torch.tensor([0, 1]), ValueError, "one label per sample of the data set"),
    ],
)
def test_propos_loss_rejects_bad_pseudo_labels_and_changes_nothing(labels: Any, error: type, match: str) -> None:
    criterion = make_criterion()
    first = pseudo_labels(0)
    criterion.set_pseudo_labels(first)
    criterion.set_pseudo_labels(first)
    assert criterion.psl_active and criterion.agreement == pytest.approx(1.0)
    with pytest.raises(error, match=match):
        criterion.set_pseudo_labels(labels)
    assert torch.equal(criterion.pseudo_labels, first)  # type: ignore[arg-type]
    assert criterion.agreement == pytest.approx(1.0) and criterion.psl_active


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"psl_start": "later"}, ValueError, "psl_start must be an epoch"),
        ({"psl_start": -1}, ValueError, "psl_start must be >= 0"),
        ({"psl_start": 1.5}, TypeError, "psl_start must be an int"),
        ({"psl_start": True}, TypeError, "psl_start must be an int"),
        ({"psl_start": None}, TypeError, "psl_start must be an int"),
        ({"agreement_threshold": 0.0}, ValueError, "agreement_threshold must be > 0"),
        ({"agreement_threshold": 1.5}, ValueError, "agreement_threshold must be <= 1"),
        ({"agreement_threshold": -0.1}, ValueError, "agreement_threshold must be >= 0"),
        ({"agreement_threshold": "high"}, TypeError, "agreement_threshold must be a real number"),
        ({"lambda_psl": -1.0}, ValueError, "lambda_psl must be >= 0"),
        ({"lambda_psl": float("nan")}, ValueError, "lambda_psl must be finite"),
        ({"lambda_psl": "0.5"}, TypeError, "lambda_psl must be a real number"),
        ({"lambda_psl": None}, TypeError, "lambda_psl must be a real number"),
    ],
)
def test_propos_loss_validates_its_arguments(kwargs: Dict[str, Any], error: type, match: str) -> None:
    arguments: Dict[str, Any] = {"lambda_psl": 0.5, **kwargs}
    lambda_psl = arguments.pop("lambda_psl")
    with pytest.raises(error, match=match):
        ProPosLoss(PSA(nn.Linear(D, D)), PSL(num_clusters=K), lambda_psl, **arguments)


def test_propos_loss_rejects_psa_and_psl_of_the_wrong_type() -> None:
    with pytest.raises(TypeError, match="psa must be a PositiveSamplingAlignment"):
        ProPosLoss(nn.Linear(D, D), PSL(num_clusters=K))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="psl must be a PrototypeScatteringLoss"):
        ProPosLoss(PSA(nn.Linear(D, D)), PSA(nn.Linear(D, D)))  # type: ignore[arg-type]


def test_propos_loss_set_epoch_validates_and_changes_nothing() -> None:
    criterion = make_criterion(psl_start=3)
    criterion.set_epoch(1)
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        criterion.set_epoch(-1)
    with pytest.raises(TypeError, match="epoch must be an int"):
        criterion.set_epoch(2.0)  # type: ignore[arg-type]
    assert criterion.epoch == 1 and not criterion.psl_active


def test_propos_loss_state_dict_round_trip_into_a_fresh_criterion() -> None:
    original = make_criterion(psl_start="auto", sigma=0.3).double()
    original.set_pseudo_labels(pseudo_labels(0))
    original.set_pseudo_labels(pseudo_labels(0))
    original.set_epoch(4)
    assert original.psl_active
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(99)
    fresh = ProPosLoss(PSA(nn.Linear(D, D), sigma=0.3), PSL(num_clusters=K), 0.5).double()
    assert not fresh.psl_active and fresh.psa.sigma == 0.0
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh.pseudo_labels is not None and torch.equal(fresh.pseudo_labels, pseudo_labels(0))
    assert fresh.psl_active and fresh.epoch == 4 and fresh.agreement == original.agreement
    assert fresh.psa.sigma == 0.3
    assert torch.equal(fresh.psa.predictor.weight, original.psa.predictor.weight)
    fresh.eval()  # no PSA noise: the two losses must agree exactly
    original.eval()
    q1, q2, z1, z2 = make_views()
    assert torch.equal(fresh(q1, q2, z1, z2, BATCH_INDICES), original(q1, q2, z1, z2, BATCH_INDICES))


class LightlyBYOL(nn.Module):
    """lightly's BYOL layout: the model owns its prediction head and momentum copies."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(5, 8), nn.ReLU())
        self.projection_head = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, D))
        self.prediction_head = nn.Sequential(nn.Linear(D, 8), nn.ReLU(), nn.Linear(8, D))
        self.backbone_momentum = MomentumUpdater.make_target(self.backbone)
        self.projection_head_momentum = MomentumUpdater.make_target(self.projection_head)
        with torch.no_grad():  # a target that differs from the online network
            for parameter in self.projection_head_momentum.parameters():
                parameter.add_(0.1)

    def forward(self, x: Tensor) -> Tensor:
        """The projection (not the prediction), as PSA(model.prediction_head) needs."""
        return self.projection_head(self.backbone(x))

    def forward_momentum(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.projection_head_momentum(self.backbone_momentum(x))


def lightly_negative_cosine(x0: Tensor, x1: Tensor) -> Tensor:
    """lightly.loss.NegativeCosineSimilarity."""
    return -F.cosine_similarity(x0, x1, dim=1, eps=1e-8).mean()


def test_half_propos_loss_without_psl_has_lightlys_byol_gradient() -> None:
    x0, x1 = torch.randn(2, 10, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64).unbind(0)

    lightly_model = LightlyBYOL().double()
    p0 = lightly_model.prediction_head(lightly_model(x0))
    p1 = lightly_model.prediction_head(lightly_model(x1))
    z0, z1 = lightly_model.forward_momentum(x0), lightly_model.forward_momentum(x1)
    lightly_loss = 0.5 * (lightly_negative_cosine(p0, z1) + lightly_negative_cosine(p1, z0))
    lightly_loss.backward()

    model = LightlyBYOL().double()
    criterion = ProPosLoss(PSA(model.prediction_head, sigma=0.5), PSL(num_clusters=K), psl_start=5)
    assert criterion.psa.predictor is model.prediction_head and not criterion.psl_active
    q0, q1 = model(x0), model(x1)
    t0, t1 = model.forward_momentum(x0), model.forward_momentum(x1)
    loss = 0.5 * criterion(q0, q1, t0, t1)
    loss.backward()

    torch.testing.assert_close(loss, lightly_loss + 1.0, rtol=1e-12, atol=1e-12)  # 2 - 2cos vs -cos, halved
    for (name, expected), (other, got) in zip(lightly_model.named_parameters(), model.named_parameters()):
        assert name == other
        if expected.grad is None:
            assert got.grad is None, name  # the momentum copies
            continue
        assert got.grad is not None, name
        torch.testing.assert_close(got.grad, expected.grad, rtol=1e-10, atol=1e-12)
    assert model.prediction_head[0].weight.grad.abs().sum() > 0  # type: ignore[union-attr]


# ---------------------------------------------------------------- PSA with a model-owned predictor


def test_psa_with_a_model_owned_predictor_applies_it_to_the_projection() -> None:
    model = LightlyBYOL()
    psa = PSA(model.prediction_head, sigma=0.0)
    assert psa.predictor is model.prediction_head
    x0, x1 = torch.randn(2, 6, 5).unbind(0)
    q0, z1 = model(x0), model.forward_momentum(x1)
    loss = psa(q0, z1)
    expected = positive_sampling_alignment(q0, z1, model.prediction_head, sigma=0.0)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(parameter.grad is not None for parameter in model.prediction_head.parameters())
    assert all(parameter.grad is not None for parameter in model.backbone.parameters())
    # psa adds no parameters of its own.
    assert {id(p) for p in psa.parameters()} == {id(p) for p in model.prediction_head.parameters()}


def test_psa_rejects_the_predictions_of_its_own_predictor() -> None:
    model = LightlyBYOL()
    psa = PSA(model.prediction_head, sigma=0.0)
    q, z = model(torch.randn(6, 5)), model.forward_momentum(torch.randn(6, 5))
    prediction = model.prediction_head(q)
    with pytest.raises(ValueError, match="prediction"):
        psa(prediction, z)
    # A different tensor with the same values (e.g. a projection that happens to be equal) is accepted.
    same_values = prediction.clone()
    assert torch.equal(same_values, prediction)
    assert torch.isfinite(psa(same_values, z))


def test_psa_rejects_both_predictions_of_a_lightly_style_loop() -> None:
    # lightly computes p0 and p1 before the loss: the first prediction is no longer the latest output.
    model = LightlyBYOL()
    psa = PSA(model.prediction_head, sigma=0.0)
    q0, q1 = model(torch.randn(6, 5)), model(torch.randn(6, 5))
    z0, z1 = model.forward_momentum(torch.randn(6, 5)), model.forward_momentum(torch.randn(6, 5))
    p0, p1 = model.prediction_head(q0), model.prediction_head(q1)
    for prediction, target in ((p0, z1), (p1, z0)):
        with pytest.raises(ValueError, match="prediction"):
            psa(prediction, target)
    criterion = ProPosLoss(psa, PSL(num_clusters=3), psl_start=10)
    with pytest.raises(ValueError, match="prediction"):
        criterion(p0, p1, z0, z1)


def test_two_psa_modules_sharing_a_predictor_both_catch_its_outputs() -> None:
    head = nn.Linear(D, D)
    first, second = PSA(head, sigma=0.0), PSA(head, sigma=0.0)
    prediction = head(torch.randn(5, D))
    for psa in (first, second):
        with pytest.raises(ValueError, match="prediction"):
            psa(prediction, torch.randn(5, D))


def test_psa_rejects_its_predictors_output_after_deepcopy() -> None:
    model = LightlyBYOL()
    psa = PSA(model.prediction_head, sigma=0.0)
    copied = copy.deepcopy(psa)
    assert copied.predictor is not psa.predictor
    q, z = model(torch.randn(6, 5)), model.forward_momentum(torch.randn(6, 5))
    with pytest.raises(ValueError, match="prediction"):
        copied(copied.predictor(q), z)
    with pytest.raises(ValueError, match="prediction"):
        psa(psa.predictor(q), z)  # the original still detects its own
    # Each copy watches its own predictor only.
    other = copied.predictor(q)
    torch.testing.assert_close(psa(other, z), positive_sampling_alignment(other, z, psa.predictor, sigma=0.0))


def test_psa_rejects_its_predictors_output_after_a_pickle_round_trip() -> None:
    psa = PSA(nn.Linear(D, D), sigma=0.0)
    q, z = torch.randn(5, D), torch.randn(5, D)
    psa(q, z)  # a tracked prediction exists: it must not break pickling
    restored = pickle.loads(pickle.dumps(psa))
    assert torch.equal(restored.predictor.weight, psa.predictor.weight)
    with pytest.raises(ValueError, match="prediction"):
        restored(restored.predictor(q), z)
    torch.testing.assert_close(restored(q, z), psa(q, z))


# ---------------------------------------------------------------- MomentumUpdater with lists of modules


def make_pair(seed: int) -> Tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    target = MomentumUpdater.make_target(online)
    with torch.no_grad():
        for parameter in online.parameters():
            parameter.add_(1.0)
        online(torch.randn(8, 3))  # online BatchNorm statistics move away from the target's
    return online, target


def test_momentum_update_of_module_lists_is_one_step_equal_to_per_pair_updates() -> None:
    (a, a_m), (b, b_m) = make_pair(0), make_pair(1)
    a_ref, b_ref = copy.deepcopy(a_m), copy.deepcopy(b_m)
    updater = MomentumUpdater(0.9, 1.0, total_steps=4)
    momentum = updater.update([a, b], [a_m, b_m])
    assert momentum == 0.9 and int(updater.step) == 1
    assert updater.momentum == updater.momentum_at(1)
    MomentumUpdater(0.9, 1.0, total_steps=4).update(a, a_ref)
    MomentumUpdater(0.9, 1.0, total_steps=4).update(b, b_ref)
    assert_same_state(a_m, snapshot(a_ref))
    assert_same_state(b_m, snapshot(b_ref))
    assert not torch.equal(a_m[0].weight, a[0].weight)  # a real EMA, not a copy
    tuple_updater = MomentumUpdater(0.9, 1.0, total_steps=4)
    tuple_updater.update((a, b), (a_ref, b_ref))
    assert int(tuple_updater.step) == 1


def _rejected_update(
    online: Any, target: Any, error: type, match: str, targets: List[nn.Module], onlines: List[nn.Module]
) -> None:
    updater = MomentumUpdater(0.5, total_steps=10, buffers="copy")
    before_targets = [snapshot(module) for module in targets]
    before_onlines = [snapshot(module) for module in onlines]
    with pytest.raises(error, match=match):
        updater.update(online, target)
    assert int(updater.step) == 0
    for module, before in zip(targets, before_targets):
        assert_same_state(module, before)
    for module, before in zip(onlines, before_onlines):
        assert_same_state(module, before)


def test_momentum_update_rejects_lists_of_different_lengths_and_changes_nothing() -> None:
    (a, a_m), (b, b_m) = make_pair(0), make_pair(1)
    _rejected_update([a, b], [a_m], ValueError, "same number of modules, got 2 and 1", [a_m, b_m], [a, b])
    _rejected_update(a, [a_m, b_m], ValueError, "same number of modules, got 1 and 2", [a_m, b_m], [a, b])


def test_momentum_update_rejects_empty_lists_and_changes_nothing() -> None:
    a, a_m = make_pair(0)
    _rejected_update([], [a_m], ValueError, "online must hold at least one module", [a_m], [a])
    _rejected_update([a], (), ValueError, "target must hold at least one module", [a_m], [a])


def test_momentum_update_rejects_non_module_elements_and_changes_nothing() -> None:
    (a, a_m), (b, b_m) = make_pair(0), make_pair(1)
    _rejected_update([a, "b"], [a_m, b_m], TypeError, r"online\[1\] must be an nn.Module", [a_m, b_m], [a, b])
    _rejected_update(
        [a, b], [a_m, b_m.state_dict()], TypeError, r"target\[1\] must be an nn.Module", [a_m, b_m], [a, b]
    )
    _rejected_update({"a": a}, a_m, TypeError, "online must be an nn.Module or a list/tuple", [a_m], [a])


def test_momentum_update_rejects_a_target_that_is_an_online_module_and_changes_nothing() -> None:
    (a, a_m), (b, b_m) = make_pair(0), make_pair(1)
    _rejected_update([a, b], [a_m, a], ValueError, "online and target must be different modules", [a_m, b_m], [a, b])
    _rejected_update([a, b], [b, a], ValueError, "online and target must be different modules", [a_m, b_m], [a, b])
    _rejected_update(a, a, ValueError, "online and target must be different modules", [a_m], [a])


def test_momentum_update_rejects_a_target_listed_twice_and_changes_nothing() -> None:
    (a, a_m), (b, _) = make_pair(0), make_pair(1)
    _rejected_update([a, b], [a_m, a_m], ValueError, "same module twice", [a_m], [a, b])


def test_momentum_update_rejects_mismatched_pairs_in_a_list_and_changes_nothing() -> None:
    (a, a_m), (b, b_m) = make_pair(0), make_pair(1)
    other = nn.Linear(3, 2)
    _rejected_update([a, b], [a_m, other], ValueError, "same parameters", [a_m, b_m, other], [a, b])


def test_momentum_default_buffer_policy_leaves_target_batchnorm_statistics_alone() -> None:
    a, a_m = make_pair(0)
    updater = MomentumUpdater(0.5, total_steps=10)
    assert updater.buffers_policy == "none"
    buffers_before = {name: b.clone() for name, b in a_m.named_buffers()}
    assert not torch.equal(buffers_before["1.running_mean"], a[1].running_mean)
    updater.update(a, a_m)
    for name, buffer in a_m.named_buffers():
        assert torch.equal(buffer, buffers_before[name]), name
    torch.testing.assert_close(a_m[0].weight, 0.5 * (a[0].weight - 1.0) + 0.5 * a[0].weight)


def test_momentum_copy_buffer_policy_still_copies_the_online_buffers() -> None:
    (a, a_m), (b, b_m) = make_pair(0), make_pair(1)
    MomentumUpdater(0.5, total_steps=10, buffers="copy").update([a, b], [a_m, b_m])
    for online, target in ((a, a_m), (b, b_m)):
        for (name, expected), (_, got) in zip(online.named_buffers(), target.named_buffers()):
            assert torch.equal(got, expected), name


# ---------------------------------------------------------------- PSL with NumPy assignments


def psl_batch(seed: int = 0) -> Tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    online = torch.randn(10, D, generator=gen, requires_grad=True)
    target = torch.randn(10, D, generator=gen)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 2])
    return online, target, labels


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.int16, np.uint64])
def test_psl_numpy_integer_labels_give_exactly_the_tensor_result(dtype: Any) -> None:
    online, target, labels = psl_batch()
    psl = PSL(num_clusters=4)
    expected = psl(online, target, labels)
    (expected_grad,) = torch.autograd.grad(expected, online)
    got = psl(online, target, labels.numpy().astype(dtype))
    (got_grad,) = torch.autograd.grad(got, online)
    assert torch.equal(got, expected) and torch.equal(got_grad, expected_grad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_psl_numpy_float_weights_equal_tensor_weights(dtype: Any) -> None:
    online, target, _ = psl_batch()
    weights = torch.rand(10, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(
        torch.float32 if dtype == np.float32 else torch.float64
    )
    psl = PSL(num_clusters=4)
    assert torch.equal(psl(online, target, weights.numpy()), psl(online, target, weights))
    functional = propos_losses.prototype_scattering_loss(online, target, weights.numpy(), 4)
    assert torch.equal(functional, psl(online, target, weights))


def test_psl_numpy_labels_in_the_functional_form_equal_tensor_labels() -> None:
    online, target, labels = psl_batch()
    assert torch.equal(
        propos_losses.prototype_scattering_loss(online, target, labels.numpy().astype(np.int32), 4),
        propos_losses.prototype_scattering_loss(online, target, labels, 4),
    )


@pytest.mark.parametrize(
    ("assignments", "error", "match"),
    [
        (np.zeros(10, dtype=np.float32), TypeError, r"assignments given as \(B,\) must hold integer cluster labels"),
        (np.array([0, 1, 2, 4, 0, 1, 2, 3, 0, 2]), ValueError, r"assignments must be in \[0, 4\), got label 4"),
        (np.array([0, 1, 2, -1, 0, 1, 2, 3, 0, 2], dtype=np.int8), ValueError, "got label -1"),
        (np.array([2**63] * 10, dtype=np.uint64), ValueError, r"assignments must be in \[0, K\)"),
        (np.array(["0"] * 10), TypeError, "assignments must hold integer labels or floating-point weights"),
        (np.array([0] * 10, dtype=object), TypeError, "assignments must hold integer labels or floating-point weights"),
        (np.zeros(10, dtype=bool), TypeError, "assignments must hold integer labels or floating-point weights"),
    ],
)
def test_psl_rejects_bad_numpy_assignments(assignments: np.ndarray, error: type, match: str) -> None:
    online, target, _ = psl_batch()
    psl = PSL(num_clusters=4)
    with pytest.raises(error, match=match):
        psl(online, target, assignments)
    assert psl.last_terms is None


def test_psl_with_a_queue_enqueues_numpy_labels_as_int64() -> None:
    online, target, labels = psl_batch()
    psl = PSL(num_clusters=4, queue_size=16, feature_dim=D)
    psl(online, target, labels.numpy().astype(np.uint8), torch.arange(10))
    queued_labels = psl.queue.contents()[1]  # type: ignore[union-attr]
    assert queued_labels.dtype == torch.int64 and torch.equal(queued_labels, labels)


# ---------------------------------------------------------------- SphericalKMeans(distributed=...)


def test_spherical_kmeans_distributed_true_needs_a_process_group() -> None:
    with pytest.raises(ValueError, match="distributed=True needs an initialised torch.distributed process group"):
        SphericalKMeans(3, distributed=True).check_params()


@pytest.mark.parametrize("value", ["yes", 1, 0.0])
def test_spherical_kmeans_rejects_a_non_bool_distributed(value: Any) -> None:
    with pytest.raises(TypeError, match="distributed must be None, True or False"):
        SphericalKMeans(3, distributed=value).check_params()  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="distributed must be None, True or False"):
        propos_losses.spherical_kmeans(blobs(), 3, distributed=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("distributed", [None, False])
def test_spherical_kmeans_without_a_process_group_is_the_same_for_none_and_false(distributed: Any) -> None:
    X = blobs(seed=3)
    reference = SphericalKMeans(3, n_init=2, random_state=5).fit(X)
    got = SphericalKMeans(3, n_init=2, random_state=5, distributed=distributed).fit(X)
    assert torch.equal(got.labels_, reference.labels_)
    assert torch.equal(got.cluster_centers_, reference.cluster_centers_)


def test_propos_loss_with_a_psl_queue_enqueues_each_sample_once_per_step() -> None:
    psl = PSL(num_clusters=K, queue_size=64, feature_dim=D)
    criterion = ProPosLoss(PSA(nn.Linear(D, D), sigma=0.0), psl, 0.5, psl_start=0)
    criterion.set_pseudo_labels(pseudo_labels())
    q1, q2, z1, z2 = make_views()
    batch = q1.shape[0]
    indices = torch.arange(batch)
    criterion(q1, q2, z1, z2, indices).backward()
    # Two PSL calls per step (one per view order) used to push the batch twice.
    assert len(psl.queue) == batch  # type: ignore[arg-type]
    assert psl.queue.contents()[2].tolist() == indices.tolist()  # type: ignore[union-attr]
