"""The drop-in objects keep their state safe: checks before any change, all-or-nothing loads (issue 26).

Items 1, 2, 3 and 5 of the issue (``ProPosLoss`` calls and loads, ``EStep``
loads); item 7 for ``ProPosLoss``, ``EStep.fit_features`` and
``extract_features`` under two gloo processes, with timeouts so that a hang
fails.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List

import pytest
import torch
from torch import Tensor, nn

from propos_losses import PSA, PSL, EStep, ProPosLoss, extract_features

from helpers import WORLD_SIZE, outcome, run_scenarios

B, D, K, N = 8, 6, 3, 40


def make_criterion(queue_size: int = 0, **kwargs: Any) -> ProPosLoss:
    torch.manual_seed(0)
    predictor = nn.Sequential(nn.Linear(D, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, D))
    psl = PSL(num_clusters=K, queue_size=queue_size, feature_dim=D)
    criterion = ProPosLoss(PSA(predictor), psl, psl_start=0, **kwargs)
    criterion.set_pseudo_labels(torch.arange(N) % K)
    criterion.set_epoch(0)
    return criterion


def views(batch: int = B) -> List[Tensor]:
    return list(torch.randn(4, batch, D, generator=torch.Generator().manual_seed(1)).unbind(0))


def snapshot(module: nn.Module) -> Dict[str, Any]:
    return copy.deepcopy(module.state_dict())


def assert_same_state(module: nn.Module, before: Dict[str, Any]) -> None:
    after = module.state_dict()
    assert set(after) == set(before)
    for key, value in before.items():
        if isinstance(value, Tensor):
            assert torch.equal(after[key], value), key
        elif key.endswith("_extra_state"):
            for name, item in value.items():
                other = after[key][name]
                assert torch.equal(other, item) if isinstance(item, Tensor) else other == item, name


# ---------------------------------------------------------------- item 1: a failing call changes nothing


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("indices out of range", "indices must be in"),
        ("indices missing", "pass the batch's sample indices"),
        ("indices of another length", "indices must have shape"),
        ("float indices", "integer dtype"),
        ("second view of another shape", "online_2 must have the shape"),
        ("target of another batch", "target_1 and target_2"),
        ("non-finite target", "target_2 must be finite"),
    ],
)
def test_a_failing_propos_loss_call_leaves_predictor_statistics_queue_and_noise_stream_unchanged(
    case: str, match: str
) -> None:
    criterion = make_criterion(queue_size=16)
    criterion(*views(), torch.arange(B))  # a good call first: the queue holds rows
    before = snapshot(criterion)
    q1, q2, z1, z2 = views()
    indices: Any = torch.arange(B)
    if case == "indices out of range":
        indices = torch.arange(B) + 100
    elif case == "indices missing":
        indices = None
    elif case == "indices of another length":
        indices = torch.arange(B - 1)
    elif case == "float indices":
        indices = torch.arange(B).float()
    elif case == "second view of another shape":
        q2 = torch.randn(B + 1, D)
    elif case == "target of another batch":
        z1 = torch.randn(B - 2, D)
    elif case == "non-finite target":
        z2 = z2.clone()
        z2[0, 0] = float("nan")
    noise = criterion.psa.generator.get_state() if criterion.psa.generator is not None else torch.get_rng_state()
    with pytest.raises((ValueError, TypeError), match=match):
        criterion(q1, q2, z1, z2, indices)
    assert_same_state(criterion, before)
    after = criterion.psa.generator.get_state() if criterion.psa.generator is not None else torch.get_rng_state()
    assert torch.equal(after, noise)


# ---------------------------------------------------------------- items 2, 3: all-or-nothing loads


def _bad_states(good: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    extra = good["_extra_state"]
    missing = {k: v for k, v in good.items() if k != "psa.predictor.0.weight"}
    return {
        "queue of another size": snapshot(make_criterion(queue_size=8)),
        "missing predictor key": missing,
        "unexpected key": {**good, "psa.predictor.9.weight": torch.zeros(1)},
        "wrong shape": {**good, "psa.predictor.0.weight": torch.zeros(3, 3)},
        "negative sigma": {**good, "_extra_state": {**extra, "sigma": -1.0}},
        "text sigma": {**good, "_extra_state": {**extra, "sigma": "abc"}},
        "negative epoch": {**good, "_extra_state": {**extra, "epoch": -4}},
        "labels >= K": {**good, "_extra_state": {**extra, "pseudo_labels": torch.arange(N) % K + 1}},
        "float labels": {**good, "_extra_state": {**extra, "pseudo_labels": (torch.arange(N) % K).float()}},
        "agreement above 1": {**good, "_extra_state": {**extra, "agreement": 1.5}},
        "extra state missing a key": {**good, "_extra_state": {k: v for k, v in extra.items() if k != "epoch"}},
    }


@pytest.mark.parametrize("case", sorted(_bad_states(snapshot(make_criterion(queue_size=16)))))
def test_propos_loss_load_state_dict_is_all_or_nothing(case: str) -> None:
    source = make_criterion(queue_size=16)
    source(*views(), torch.arange(B))
    bad = _bad_states(snapshot(source))[case]
    target = make_criterion(queue_size=16)
    with torch.no_grad():
        for param in target.parameters():
            param.add_(1.0)  # differs from the source everywhere
    target.set_pseudo_labels((torch.arange(N) + 1) % K)
    before = snapshot(target)
    with pytest.raises((ValueError, RuntimeError, TypeError)):
        target.load_state_dict(bad)
    assert_same_state(target, before)


def test_propos_loss_load_state_dict_copies_the_pseudo_labels_and_round_trips() -> None:
    source = make_criterion(queue_size=16)
    source(*views(), torch.arange(B))
    state = source.state_dict()
    target = make_criterion(queue_size=16)
    target.load_state_dict(state)
    assert target.pseudo_labels is not state["_extra_state"]["pseudo_labels"]
    state["_extra_state"]["pseudo_labels"].zero_()  # the caller's tensor changes; the criterion's does not
    assert torch.equal(target.pseudo_labels, torch.arange(N) % K)
    assert target.psl_active and target.epoch == 0


# ---------------------------------------------------------------- item 5: EStep loads


def _fitted_estep() -> EStep:
    estep = EStep(num_clusters=K, n_init=2, seed=0)
    estep(nn.Linear(4, 3), torch.randn(N, 4, generator=torch.Generator().manual_seed(0)))
    return estep


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"labels": "big"}, "labels must be in"),
        ({"labels": "negative"}, "labels must be in"),
        ({"cluster_centers": "nan"}, "cluster_centers must be finite"),
        ({"cluster_centers": "int"}, r"cluster_centers must be \(3, d\)"),
        ({"inertia": float("nan")}, "inertia must be a finite number"),
        ({"inertia": -1.0}, "inertia must be a finite number"),
    ],
)
def test_estep_load_state_dict_refuses_bad_values_and_changes_nothing(change: Dict[str, Any], match: str) -> None:
    good = _fitted_estep().state_dict()
    state = dict(good)
    for key, how in change.items():
        value = good[key]
        if how == "big":
            value = value + K
        elif how == "negative":
            value = value - K
        elif how == "nan":
            value = value * float("nan")
        elif how == "int":
            value = value.long()
        else:
            value = how
        state[key] = value
    target = EStep(num_clusters=K)
    with pytest.raises(ValueError, match=match):
        target.load_state_dict(state)
    assert target.labels_ is None and target.cluster_centers_ is None and target.history_ == []


def test_estep_load_state_dict_keeps_copies_of_the_callers_tensors() -> None:
    state = _fitted_estep().state_dict()
    target = EStep(num_clusters=K)
    target.load_state_dict(state)
    expected_labels, expected_centers = state["labels"].clone(), state["cluster_centers"].clone()
    state["labels"].zero_()
    state["cluster_centers"].zero_()
    assert torch.equal(target.labels_, expected_labels) and torch.equal(target.cluster_centers_, expected_centers)


# ---------------------------------------------------------------- item 7: every rank raises together

TIMEOUT_S = 150.0
COLLECTIVE_TIMEOUT_S = 30.0


def _scenarios(rank: int) -> Dict[str, Dict[str, Any]]:
    other = rank == 1
    outcomes: Dict[str, Dict[str, Any]] = {}
    criterion = make_criterion()
    q1, q2, z1, z2 = views()
    bad = torch.arange(B) + (100 if other else 0)
    outcomes["propos bad indices"] = outcome(lambda: criterion(q1, q2, z1, z2, bad))
    outcomes["propos missing indices"] = outcome(lambda: criterion(q1, q2, z1, z2, None if other else torch.arange(B)))
    features = torch.randn(N, 3)
    if other:
        features[0, 0] = float("nan")
    outcomes["estep nan"] = outcome(lambda: EStep(num_clusters=K, n_init=1).fit_features(features))
    few = torch.randn(2 if other else N, 3)
    outcomes["estep few rows"] = outcome(lambda: EStep(num_clusters=K, n_init=1).fit_features(few))
    net = nn.Linear(4, 5 if other else 3)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(N, 4)),
        batch_size=8,
        sampler=torch.utils.data.DistributedSampler(torch.arange(N), shuffle=False),
    )
    outcomes["features width"] = outcome(lambda: extract_features(net, loader))
    return outcomes


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> List[Dict[str, Dict[str, Any]]]:
    return run_scenarios(
        _scenarios,
        tmp_path_factory.mktemp("dropin_agreement"),
        timeout_s=TIMEOUT_S,
        collective_timeout_s=COLLECTIVE_TIMEOUT_S,
    )


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("propos bad indices", "indices must be in"),
        ("propos missing indices", "sample indices"),
        ("estep nan", "finite"),
        ("estep few rows", "at least num_clusters"),
        ("features width", "feature size"),
    ],
)
def test_drop_in_objects_with_bad_input_on_one_rank_raise_on_every_rank(
    outcomes: List[Dict[str, Dict[str, Any]]], case: str, needle: str
) -> None:
    for result in outcomes:
        assert result[case]["error"] in ("ValueError", "TypeError"), (case, result[case])
    assert needle in outcomes[1][case]["message"] or needle in outcomes[0][case]["message"]
    for result in outcomes:
        assert result["after"]["sum"] == WORLD_SIZE
