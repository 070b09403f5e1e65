"""Tests of the prototype scattering loss (module, functional twin, queue, numerics, validation)."""

from __future__ import annotations

import inspect
import math
from typing import Callable, Dict, Optional, Tuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from typing_extensions import get_overloads

from propos_losses import defaults
from propos_losses.psl import (
    PSL,
    PrototypeScatteringLoss,
    PSLTerms,
    prototype_scattering_loss,
    prototype_scattering_terms,
)
from propos_losses.queue import PrototypeQueue

from helpers import grad_of, queue_of, terms_of
from oracles import psa_oracle, psl_oracle

TAU = defaults.TEMPERATURE


def make_batch(
    seed: int, batch_size: int, dim: int, num_clusters: int, dtype: torch.dtype = torch.float64
) -> Tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    online = torch.randn(batch_size, dim, generator=generator, dtype=dtype)
    target = torch.randn(batch_size, dim, generator=generator, dtype=dtype)
    labels = torch.randint(0, num_clusters, (batch_size,), generator=generator)
    return online, target, labels


def assert_terms_match_oracle(terms: PSLTerms, expected: Dict[str, float]) -> None:
    assert int(terms.num_active) == int(expected["num_active"])
    assert terms.loss.item() == pytest.approx(expected["loss"], rel=1e-10, abs=1e-12)
    assert terms.alignment.item() == pytest.approx(expected["alignment"], rel=1e-10, abs=1e-12)
    if math.isinf(expected["uniformity"]):
        # The oracle writes the log of the empty sum of negatives (-inf); the loss defines it as 0.
        assert terms.uniformity.item() == 0.0
    else:
        assert terms.uniformity.item() == pytest.approx(expected["uniformity"], rel=1e-10, abs=1e-12)


# ---------------------------------------------------------------- float64 oracle


@pytest.mark.parametrize(
    ("batch_size", "num_clusters", "labels"),
    [
        (12, 4, None),  # random labels
        (9, 6, [0, 0, 2, 2, 2, 5, 5, 0, 2]),  # clusters 1, 3, 4 empty
        (5, 40, [3, 17, 17, 39, 0]),  # K much larger than the batch
        (7, 3, [1, 2, 1, 2, 1, 2, 1]),  # cluster 0 empty
        (4, 5, [3, 3, 3, 3]),  # a lone non-empty cluster
    ],
)
@pytest.mark.parametrize("validate_args", [True, False])  # selected vs masked empty clusters
def test_hard_label_loss_and_terms_match_float64_oracle(
    batch_size: int, num_clusters: int, labels: Optional[list], validate_args: bool
) -> None:
    online, target, random_labels = make_batch(0, batch_size, 5, num_clusters)
    assignments = random_labels if labels is None else torch.tensor(labels)
    expected = psl_oracle(online, target, assignments, num_clusters, TAU)
    terms = prototype_scattering_terms(online, target, assignments, num_clusters, validate_args=validate_args)
    assert_terms_match_oracle(terms, expected)
    module = PSL(num_clusters, validate_args=validate_args)
    loss = module(online, target, assignments)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(expected["loss"], rel=1e-10)
    assert module.last_terms is not None
    assert_terms_match_oracle(module.last_terms, expected)


@pytest.mark.parametrize("validate_args", [True, False])
def test_soft_weight_loss_matches_float64_oracle_with_zero_rows_and_empty_clusters(validate_args: bool) -> None:
    online, target, _ = make_batch(1, 8, 6, 5)
    generator = torch.Generator().manual_seed(2)
    weights = torch.rand(8, 5, generator=generator, dtype=torch.float64)
    weights[:, 3] = 0.0  # an empty cluster
    weights[2] = 0.0  # a sample assigned to no cluster
    expected = psl_oracle(online, target, weights, 5, 0.3)
    terms = prototype_scattering_terms(online, target, weights, 5, temperature=0.3, validate_args=validate_args)
    assert_terms_match_oracle(terms, expected)
    loss = PSL(5, temperature=0.3, validate_args=validate_args)(online, target, weights)
    assert loss.item() == pytest.approx(expected["loss"], rel=1e-10)


@pytest.mark.parametrize("validate_args", [True, False])
def test_queue_loss_matches_float64_oracle_and_current_batch_is_enqueued_after_the_loss(validate_args: bool) -> None:
    num_clusters, dim = 6, 4
    module = PSL(num_clusters, queue_size=10, feature_dim=dim, validate_args=validate_args)
    first_online, first_target, _ = make_batch(3, 7, dim, num_clusters)
    first_labels = torch.tensor([0, 1, 5, 5, 1, 0, 4])
    # First step: the queue is empty, so the loss is the plain batch loss.
    expected_first = psl_oracle(first_online, first_target, first_labels, num_clusters, TAU)
    assert module(first_online, first_target, first_labels).item() == pytest.approx(expected_first["loss"], rel=1e-10)
    assert len(queue_of(module)) == 7
    queue_features, queue_labels, _ = queue_of(module).contents()
    # Second step: clusters 4 and 5 are present only through the queue; 2 only in the batch.
    online, target, _ = make_batch(4, 5, dim, num_clusters)
    labels = torch.tensor([2, 0, 0, 1, 2])
    expected = psl_oracle(online, target, labels, num_clusters, TAU, queue_features, queue_labels)
    loss = module(online, target, labels)
    assert loss.item() == pytest.approx(expected["loss"], rel=1e-6)  # the queue stores float32
    assert_terms_match_oracle(
        prototype_scattering_terms(
            online,
            target,
            labels,
            num_clusters,
            queue_features=queue_features,
            queue_labels=queue_labels,
        ),
        expected,
    )
    assert len(queue_of(module)) == 10


def test_queue_holds_normalised_target_features_labels_and_indices_of_pushed_batches() -> None:
    module = PSL(3, queue_size=8, feature_dim=4)
    online, target, labels = make_batch(5, 6, 4, 3, dtype=torch.float32)
    indices = torch.arange(10, 16)
    module(online, target, labels, indices)
    features, queue_labels, queue_indices = queue_of(module).contents()
    torch.testing.assert_close(features, torch.nn.functional.normalize(target, dim=1))
    assert queue_labels.tolist() == labels.tolist()
    assert queue_indices.tolist() == indices.tolist()


def test_eval_mode_uses_the_queue_but_does_not_enqueue() -> None:
    module = PSL(3, queue_size=8, feature_dim=4)
    online, target, labels = make_batch(6, 4, 4, 3)
    module(online, target, labels)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    module.eval()
    other_online, other_target, other_labels = make_batch(7, 4, 4, 3)
    loss = module(other_online, other_target, other_labels)
    for key, value in module.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    queue_features, queue_labels, _ = queue_of(module).contents()
    expected = prototype_scattering_loss(
        other_online, other_target, other_labels, 3, queue_features=queue_features, queue_labels=queue_labels
    )
    # The functional re-normalises the float32 queue rows in float64; the module uses them as stored.
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)


def test_relabel_queue_uses_dataset_indices_and_reset_empties_it() -> None:
    module = PSL(4, queue_size=8, feature_dim=3)
    online, target, _ = make_batch(8, 3, 3, 4)
    module(online, target, torch.tensor([0, 1, 2]), torch.tensor([2, 0, 1]))
    module.relabel_queue(torch.tensor([3, 3, 1]))
    assert queue_of(module).contents()[1].tolist() == [1, 3, 3]
    with pytest.raises(ValueError, match="new_labels"):
        module.relabel_queue(torch.tensor([4, 0, 0]))  # 4 is out of [0, 4)
    assert queue_of(module).contents()[1].tolist() == [1, 3, 3]
    module.reset_queue()
    assert len(queue_of(module)) == 0


def test_queue_state_dict_round_trip_gives_the_same_loss() -> None:
    module = PSL(5, queue_size=6, feature_dim=4)
    for seed in range(3):
        online, target, labels = make_batch(seed, 4, 4, 5)
        module(online, target, labels)
    restored = PSL(5, queue_size=6, feature_dim=4)
    restored.load_state_dict(module.state_dict())
    module.eval()
    restored.eval()
    online, target, labels = make_batch(9, 4, 4, 5)
    torch.testing.assert_close(restored(online, target, labels), module(online, target, labels), rtol=0, atol=0)


# ---------------------------------------------------------------- invariants (hypothesis)

batch_shapes = st.tuples(
    st.integers(0, 2**31 - 1), st.integers(1, 10), st.integers(2, 6), st.integers(2, 5)
)  # seed, batch size, K, d


@settings(max_examples=25, deadline=None)
@given(shape=batch_shapes)
def test_relabelling_clusters_leaves_loss_unchanged(shape: Tuple[int, int, int, int]) -> None:
    seed, batch_size, num_clusters, dim = shape
    online, target, labels = make_batch(seed, batch_size, dim, num_clusters)
    permutation = torch.randperm(num_clusters, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(
        prototype_scattering_loss(online, target, permutation[labels], num_clusters),
        prototype_scattering_loss(online, target, labels, num_clusters),
    )


@settings(max_examples=40, deadline=None)
@given(
    shape=batch_shapes,
    dtype=st.sampled_from([torch.float64, torch.float32]),
    log10_scales=st.lists(st.floats(-30.0, 30.0), min_size=20, max_size=20),
)
def test_positive_row_scaling_of_features_leaves_loss_unchanged(
    shape: Tuple[int, int, int, int], dtype: torch.dtype, log10_scales: list
) -> None:
    # Scales 1e-30 .. 1e30: the squared norms of such float32 rows under- or overflow, the loss must not.
    seed, batch_size, num_clusters, dim = shape
    online, target, labels = make_batch(seed, batch_size, dim, num_clusters)
    scales = 10.0 ** torch.tensor(log10_scales, dtype=torch.float64)
    scaled_online = (online * scales[:batch_size, None]).to(dtype).requires_grad_(True)
    scaled_target = (target * scales[10 : 10 + batch_size, None]).to(dtype)
    loss = prototype_scattering_loss(scaled_online, scaled_target, labels, num_clusters)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(
        loss.double(), prototype_scattering_loss(online, target, labels, num_clusters), rtol=tolerance, atol=tolerance
    )
    loss.backward()
    assert torch.isfinite(grad_of(scaled_online)).all()


@pytest.mark.parametrize(
    ("weight_dtype", "feature_dtype", "scale"),
    [
        (torch.float64, torch.float32, 1e-50),  # underflows to 0 when cast to float32
        (torch.float64, torch.float32, 1e300),  # overflows when cast to float32
        (torch.float64, torch.float64, 1e-300),
        (torch.float64, torch.float64, 1e300),  # the per-cluster sums' squared norms overflow
        (torch.float32, torch.float32, 3e38 / 2),  # the column sums overflow float32
        (torch.float16, torch.float32, 6e4),
    ],
)
def test_soft_weights_of_extreme_magnitude_give_the_loss_of_unit_scale_weights(
    weight_dtype: torch.dtype, feature_dtype: torch.dtype, scale: float
) -> None:
    # The prototypes are normalised sums: a common positive scale of the weights changes nothing.
    online, target, _ = make_batch(19, 6, 4, 3, dtype=feature_dtype)
    weights = torch.rand(6, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64) + 0.5
    weights[:, 1] = 0.0
    weights[2] = 0.0
    extreme = (weights / weights.max() * scale).to(weight_dtype)
    unit = extreme.double() / extreme.double().max()  # the same ratios, rounding to weight_dtype included
    reference = prototype_scattering_terms(online, target, unit.to(feature_dtype), 3)
    online.requires_grad_(True)
    terms = prototype_scattering_terms(online, target, extreme, 3)
    tolerance = 1e-12 if feature_dtype == torch.float64 else 1e-5
    for got, expected in zip(terms, reference):
        torch.testing.assert_close(got.detach(), expected, rtol=tolerance, atol=tolerance)
    terms.loss.backward()
    assert torch.isfinite(grad_of(online)).all()


@settings(max_examples=25, deadline=None)
@given(shape=batch_shapes, extra=st.integers(1, 50))
def test_adding_unused_cluster_ids_leaves_loss_and_terms_unchanged(
    shape: Tuple[int, int, int, int], extra: int
) -> None:
    seed, batch_size, num_clusters, dim = shape
    online, target, labels = make_batch(seed, batch_size, dim, num_clusters)
    small = prototype_scattering_terms(online, target, labels, num_clusters)
    large = prototype_scattering_terms(online, target, labels, num_clusters + extra)
    torch.testing.assert_close(large.loss, small.loss)
    torch.testing.assert_close(large.alignment, small.alignment)
    torch.testing.assert_close(large.uniformity, small.uniformity)
    assert int(large.num_active) == int(small.num_active)


@settings(max_examples=25, deadline=None)
@given(shape=batch_shapes)
def test_one_hot_soft_weights_equal_hard_labels(shape: Tuple[int, int, int, int]) -> None:
    seed, batch_size, num_clusters, dim = shape
    online, target, labels = make_batch(seed, batch_size, dim, num_clusters)
    one_hot = torch.nn.functional.one_hot(labels, num_clusters).to(torch.float64)
    online_hard = online.clone().requires_grad_(True)
    online_soft = online.clone().requires_grad_(True)
    hard = prototype_scattering_loss(online_hard, target, labels, num_clusters)
    soft = prototype_scattering_loss(online_soft, target, one_hot, num_clusters)
    torch.testing.assert_close(soft, hard)
    hard.backward()
    soft.backward()
    torch.testing.assert_close(grad_of(online_soft), grad_of(online_hard))


@settings(max_examples=20, deadline=None)
@given(shape=batch_shapes, queue_length=st.integers(0, 12))
def test_queue_rows_count_like_batch_rows_and_relabelling_keeps_the_loss(
    shape: Tuple[int, int, int, int], queue_length: int
) -> None:
    seed, batch_size, num_clusters, dim = shape
    online, target, labels = make_batch(seed, batch_size, dim, num_clusters)
    queue_features, _, queue_labels = make_batch(seed + 1, queue_length, dim, num_clusters)
    with_queue = prototype_scattering_loss(
        online, target, labels, num_clusters, queue_features=queue_features, queue_labels=queue_labels
    )
    # In value, a queue row is a batch row whose online and target features are both the queue feature.
    as_batch = prototype_scattering_loss(
        torch.cat([online, queue_features]),
        torch.cat([target, queue_features]),
        torch.cat([labels, queue_labels]),
        num_clusters,
    )
    torch.testing.assert_close(with_queue, as_batch)
    permutation = torch.randperm(num_clusters, generator=torch.Generator().manual_seed(seed))
    relabelled = prototype_scattering_loss(
        online,
        target,
        permutation[labels],
        num_clusters,
        queue_features=queue_features,
        queue_labels=permutation[queue_labels],
    )
    torch.testing.assert_close(relabelled, with_queue)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("validate_args", [True, False])
def test_gradcheck_hard_labels_with_empty_cluster(validate_args: bool) -> None:
    online, target, _ = make_batch(10, 7, 4, 4)
    labels = torch.tensor([0, 1, 1, 3, 0, 3, 3])
    online.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: prototype_scattering_loss(x, target, labels, 4, validate_args=validate_args), (online,)
    )
    assert torch.autograd.gradgradcheck(
        lambda x: prototype_scattering_loss(x, target, labels, 4, validate_args=validate_args), (online,)
    )


@pytest.mark.parametrize("validate_args", [True, False])
def test_gradcheck_soft_weights(validate_args: bool) -> None:
    online, target, _ = make_batch(11, 6, 3, 3)
    weights = torch.rand(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    weights[:, 1] = 0.0  # an empty cluster
    online.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: prototype_scattering_loss(x, target, weights, 3, validate_args=validate_args), (online,)
    )


def test_soft_weights_are_treated_as_constants() -> None:
    online, target, _ = make_batch(11, 6, 3, 3)
    weights = torch.rand(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    weights.requires_grad_(True)
    online.requires_grad_(True)
    prototype_scattering_loss(online, target, weights, 3).backward()
    assert weights.grad is None
    assert online.grad is not None


def test_gradcheck_with_prefilled_queue() -> None:
    module = PSL(5, queue_size=12, feature_dim=4)
    for seed in range(2):
        online, target, labels = make_batch(20 + seed, 6, 4, 5)
        module(online, target, labels)
    module.eval()  # no enqueueing while gradcheck evaluates the loss many times
    online, target, _ = make_batch(30, 5, 4, 5)
    labels = torch.tensor([0, 0, 1, 2, 2])  # clusters 3, 4 come only from the queue
    online.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: module(x, target, labels), (online,))


def test_target_side_receives_no_gradient() -> None:
    online, target, labels = make_batch(12, 6, 4, 3)
    online.requires_grad_(True)
    target.requires_grad_(True)
    PSL(3)(online, target, labels).backward()
    assert target.grad is None
    assert online.grad is not None


def test_gradient_of_a_sample_in_its_own_cluster_only_flows_through_that_prototype() -> None:
    # L depends on sample i only through the online sum S_k of its cluster k, so by the chain rule
    # dL/dx_i = J_normalize(x_i)^T dL/dS_k = (I - z_i z_i^T) dL/dS_k / ||x_i||, with nothing from the
    # other prototypes. dL/dS_k is measured independently: a batch of one sample per cluster equal
    # to S_k (and the target sums as targets) has the same prototypes, hence the same loss in S.
    online, target, _ = make_batch(13, 7, 5, 4)
    labels = torch.tensor([0, 1, 1, 2, 1, 0, 2])  # cluster 3 empty
    online.requires_grad_(True)
    prototype_scattering_loss(online, target, labels, 4).backward()
    z = online.detach() / online.detach().norm(dim=1, keepdim=True)
    z_target = target / target.norm(dim=1, keepdim=True)
    active = [0, 1, 2]
    sums = torch.stack([z[labels == k].sum(0) for k in active]).requires_grad_(True)
    target_sums = torch.stack([z_target[labels == k].sum(0) for k in active])
    prototype_scattering_loss(sums, target_sums, torch.tensor(active), 4).backward()
    sum_grad = grad_of(sums)  # dL/dS_k, one row per non-empty cluster
    for i, k in enumerate(labels.tolist()):
        tangent = torch.eye(5, dtype=torch.float64) - torch.outer(z[i], z[i])
        expected = tangent @ sum_grad[k] / online[i].detach().norm()
        torch.testing.assert_close(grad_of(online)[i], expected, rtol=1e-10, atol=1e-12)
    # Not vacuous: samples of different clusters receive different gradients.
    assert not torch.allclose(sum_grad[0], sum_grad[1])


# ---------------------------------------------------------------- degenerate input


def test_lone_non_empty_cluster_gives_exactly_zero_loss_and_zero_finite_gradient() -> None:
    online, target, _ = make_batch(14, 6, 4, 3, dtype=torch.float32)
    online.requires_grad_(True)
    module = PSL(7)
    loss = module(online, target, torch.full((6,), 4))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(grad_of(online)).all()
    assert torch.equal(grad_of(online), torch.zeros_like(grad_of(online)))
    assert int(terms_of(module).num_active) == 1
    assert terms_of(module).uniformity.item() == 0.0  # no negatives: 0 by convention, not log(0)


@pytest.mark.parametrize("soft", [False, True])
def test_uniformity_is_zero_with_zero_gradient_when_fewer_than_two_clusters_are_non_empty(soft: bool) -> None:
    online, target, _ = make_batch(16, 5, 3, 3)
    online.requires_grad_(True)
    assignments: Tensor = torch.full((5,), 2)
    if soft:
        assignments = torch.zeros(5, 3, dtype=torch.float64)
        assignments[:, 2] = torch.rand(5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    terms = prototype_scattering_terms(online, target, assignments, 3)
    assert int(terms.num_active) == 1
    assert terms.uniformity.item() == 0.0
    for term in (terms.loss, terms.alignment, terms.uniformity):
        assert torch.isfinite(term)
    (gradient,) = torch.autograd.grad(terms.uniformity, online, retain_graph=True)
    assert torch.equal(gradient, torch.zeros_like(gradient))
    (gradient,) = torch.autograd.grad(terms.alignment, online)
    assert torch.isfinite(gradient).all() and bool(gradient.abs().sum() > 0)


def test_scattering_terms_without_a_non_empty_cluster_give_zero_not_nan() -> None:
    # The static-shape core never averages over an empty set (validation rules this input out anyway).
    from propos_losses._psl_core import scattering_scores as _scattering_scores

    sums = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    terms = _scattering_scores(sums, sums.detach(), torch.zeros(3, dtype=torch.float64), 0.5).terms()
    assert int(terms.num_active) == 0
    for term in (terms.loss, terms.alignment, terms.uniformity):
        assert term.item() == 0.0
    (gradient,) = torch.autograd.grad(terms.loss + terms.uniformity, sums)
    assert torch.equal(gradient, torch.zeros_like(gradient))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_zero_feature_vectors_give_finite_loss_and_gradient(dtype: torch.dtype) -> None:
    online, target, labels = make_batch(15, 8, 4, 3, dtype=dtype)
    online[[0, 5]] = 0.0
    target[[1, 5]] = 0.0
    online[labels == labels[2]] = 0.0  # a whole cluster of zero vectors: a zero prototype
    online.requires_grad_(True)
    loss = prototype_scattering_loss(online, target, labels, 3)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(grad_of(online)).all()
    everything_zero = torch.zeros(4, 3, dtype=dtype, requires_grad=True)
    loss = prototype_scattering_loss(everything_zero, torch.zeros(4, 3), torch.tensor([0, 1, 1, 2]), 3)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(grad_of(everything_zero)).all()


def test_many_empty_clusters_with_k_much_larger_than_batch_is_finite() -> None:
    online, target, labels = make_batch(16, 3, 8, 2000, dtype=torch.float32)
    online.requires_grad_(True)
    terms = prototype_scattering_terms(online, target, labels, 2000)
    terms.loss.backward()
    assert int(terms.num_active) == len(set(labels.tolist()))
    assert torch.isfinite(grad_of(online)).all()


# ---------------------------------------------------------------- precision


def test_loss_under_bfloat16_autocast_equals_float32_loss() -> None:
    online, target, labels = make_batch(17, 16, 8, 4, dtype=torch.float32)
    reference = prototype_scattering_loss(online, target, labels, 4)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = prototype_scattering_loss(online, target, labels, 4)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference, rtol=0, atol=0)


def test_bfloat16_autocast_training_step_has_finite_loss_and_gradients_close_to_float32() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(12, 8)
    inputs = torch.randn(32, 12)
    target = torch.randn(32, 8)
    labels = torch.randint(0, 5, (32,))
    module = PSL(5)
    module(layer(inputs), target, labels).backward()
    reference = grad_of(layer.weight).clone()
    layer.zero_grad()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        online = layer(inputs)
        assert online.dtype == torch.bfloat16
        loss = module(online, target, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(grad_of(layer.weight)).all()
    # bfloat16 keeps 8 bits of mantissa: the linear layer's output is only that precise.
    torch.testing.assert_close(grad_of(layer.weight), reference, rtol=0.05, atol=0.05 * reference.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(dtype: torch.dtype) -> None:
    online, target, labels = make_batch(18, 16, 8, 4, dtype=dtype)
    online.requires_grad_(True)
    loss = prototype_scattering_loss(online, target, labels, 4)
    loss.backward()
    assert loss.dtype == torch.float32
    assert grad_of(online).dtype == dtype
    # The same (rounded) values in float32 give the same float32 computation.
    online32 = online.detach().float().requires_grad_(True)
    reference = prototype_scattering_loss(online32, target.float(), labels, 4)
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=0, atol=0)
    torch.testing.assert_close(grad_of(online).float(), grad_of(online32).to(dtype).float(), rtol=0, atol=0)


# ---------------------------------------------------------------- API


def test_module_logs_detached_terms_equal_to_functional_terms() -> None:
    online, target, labels = make_batch(19, 10, 6, 4)
    online.requires_grad_(True)
    module = PrototypeScatteringLoss(4, temperature=0.2)
    loss = module(online, target, labels)
    terms = prototype_scattering_terms(online, target, labels, 4, temperature=0.2)
    assert module.last_terms is not None
    for logged, fresh in zip(module.last_terms, terms):
        assert not logged.requires_grad
        torch.testing.assert_close(logged, fresh.detach())
    torch.testing.assert_close(loss, terms.loss)
    assert loss.dim() == 0


def test_alias_and_defaults() -> None:
    assert PSL is PrototypeScatteringLoss
    module = PSL(num_clusters=10)
    assert module.temperature == defaults.TEMPERATURE
    assert module.queue is None
    assert module.state_dict() == {}
    assert "num_clusters=10" in repr(module)


# ---------------------------------------------------------------- bad input

B, D, K = 6, 4, 3


def _good() -> Dict[str, Tensor]:
    online, target, labels = make_batch(21, B, D, K, dtype=torch.float32)
    return {"online": online, "target": target, "assignments": labels, "indices": torch.arange(B)}


def _with(**changes: object) -> Callable[[], Dict[str, object]]:
    def build() -> Dict[str, object]:
        arguments: Dict[str, object] = dict(_good())
        for key, value in changes.items():
            arguments[key] = value() if callable(value) else value
        return arguments

    return build


def _nan_at(name: str) -> Callable[[], Dict[str, object]]:
    def build() -> Dict[str, object]:
        arguments: Dict[str, object] = dict(_good())
        tensor = _good()[name].clone()
        tensor[1, 2] = float("nan") if name == "online" else float("inf")
        arguments[name] = tensor
        return arguments

    return build


BAD_FORWARD_INPUTS = {
    "online_1d": (_with(online=lambda: torch.randn(B)), ValueError, "online"),
    "online_integer": (_with(online=lambda: torch.ones(B, D, dtype=torch.int64)), TypeError, "online"),
    "online_not_tensor": (_with(online=[[0.0] * D] * B), TypeError, "online"),
    "target_shape_mismatch": (_with(target=lambda: torch.randn(B, D + 1)), ValueError, "target"),
    "target_batch_mismatch": (_with(target=lambda: torch.randn(B + 1, D)), ValueError, "target"),
    "online_nan": (_nan_at("online"), ValueError, "online"),
    "target_inf": (_nan_at("target"), ValueError, "target"),
    "empty_batch": (_with(online=lambda: torch.randn(0, D), target=lambda: torch.randn(0, D)), ValueError, "online"),
    "labels_batch_mismatch": (
        _with(assignments=lambda: torch.zeros(B + 1, dtype=torch.long)),
        ValueError,
        "assignments",
    ),
    "label_too_large": (_with(assignments=lambda: torch.tensor([0, 1, 2, 3, 0, 0])), ValueError, "assignments"),
    "label_negative": (_with(assignments=lambda: torch.tensor([0, -1, 2, 0, 0, 0])), ValueError, "assignments"),
    "float_labels_1d": (_with(assignments=lambda: torch.zeros(B)), TypeError, "assignments"),
    "bool_labels": (_with(assignments=lambda: torch.zeros(B, dtype=torch.bool)), TypeError, "assignments"),
    "assignments_3d": (_with(assignments=lambda: torch.zeros(B, K, 1)), ValueError, "assignments"),
    "assignments_not_tensor": (_with(assignments=[0] * B), TypeError, "assignments"),
    "soft_with_queue": (_with(assignments=lambda: torch.full((B, K), 0.5)), ValueError, "assignments"),
    "feature_size_differs_from_queue": (
        _with(online=lambda: torch.randn(B, D + 1), target=lambda: torch.randn(B, D + 1)),
        ValueError,
        "feature_dim",
    ),
    "indices_float": (_with(indices=lambda: torch.arange(B, dtype=torch.float32)), TypeError, "indices"),
    "indices_bool": (_with(indices=lambda: torch.ones(B, dtype=torch.bool)), TypeError, "indices"),
    "indices_wrong_length": (_with(indices=lambda: torch.arange(B + 2)), ValueError, "indices"),
    "indices_negative": (_with(indices=lambda: torch.arange(B) - 1), ValueError, "indices"),
    "indices_2d": (_with(indices=lambda: torch.arange(B)[:, None]), ValueError, "indices"),
}


@pytest.mark.parametrize("case", sorted(BAD_FORWARD_INPUTS))
def test_bad_forward_input_raises_before_the_queue_changes(case: str) -> None:
    build, error, name = BAD_FORWARD_INPUTS[case]
    module = PSL(K, queue_size=8, feature_dim=D)
    module(**_good())  # the queue holds one batch
    state = {key: value.clone() for key, value in module.state_dict().items()}
    with pytest.raises(error, match=name):
        module(**build())
    for key, value in module.state_dict().items():
        assert torch.equal(value, state[key]), key


BAD_SOFT_WEIGHTS = {
    "negative_weight": (lambda: torch.tensor([[0.5, -0.1, 0.0]] * B), ValueError, "non-negative"),
    "all_zero_weights": (lambda: torch.zeros(B, K), ValueError, "all zero"),
    "wrong_number_of_clusters": (lambda: torch.full((B, K + 1), 0.5), ValueError, "num_clusters"),
    "nan_weight": (lambda: torch.full((B, K), float("nan")), ValueError, "assignments"),
    "integer_matrix": (lambda: torch.ones(B, K, dtype=torch.long), TypeError, "assignments"),
    "wrong_batch": (lambda: torch.full((B + 1, K), 0.5), ValueError, "assignments"),
}


@pytest.mark.parametrize("case", sorted(BAD_SOFT_WEIGHTS))
def test_bad_soft_weights_raise(case: str) -> None:
    build, error, match = BAD_SOFT_WEIGHTS[case]
    arguments = _good()
    with pytest.raises(error, match=match):
        PSL(K)(arguments["online"], arguments["target"], build())
    with pytest.raises(error, match=match):
        prototype_scattering_loss(arguments["online"], arguments["target"], build(), K)


BAD_QUEUE_ARGUMENTS = {
    "features_without_labels": ({"queue_features": torch.randn(3, D)}, ValueError, "queue_labels"),
    "labels_without_features": ({"queue_labels": torch.zeros(3, dtype=torch.long)}, ValueError, "queue_features"),
    "feature_size_mismatch": (
        {"queue_features": torch.randn(3, D + 1), "queue_labels": torch.zeros(3, dtype=torch.long)},
        ValueError,
        "queue_features",
    ),
    "label_count_mismatch": (
        {"queue_features": torch.randn(3, D), "queue_labels": torch.zeros(2, dtype=torch.long)},
        ValueError,
        "queue_labels",
    ),
    "label_out_of_range": (
        {"queue_features": torch.randn(2, D), "queue_labels": torch.tensor([0, K])},
        ValueError,
        "queue_labels",
    ),
    "non_finite_features": (
        {"queue_features": torch.full((2, D), float("inf")), "queue_labels": torch.tensor([0, 1])},
        ValueError,
        "queue_features",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_QUEUE_ARGUMENTS))
def test_bad_functional_queue_arguments_raise(case: str) -> None:
    extra, error, match = BAD_QUEUE_ARGUMENTS[case]
    arguments = _good()
    with pytest.raises(error, match=match):
        prototype_scattering_loss(
            arguments["online"],
            arguments["target"],
            arguments["assignments"],
            K,
            queue_features=extra.get("queue_features"),
            queue_labels=extra.get("queue_labels"),
        )


BAD_CONSTRUCTOR_ARGUMENTS = {
    "one_cluster": ({"num_clusters": 1}, ValueError, "num_clusters"),
    "float_clusters": ({"num_clusters": 2.5}, TypeError, "num_clusters"),
    "zero_temperature": ({"num_clusters": 3, "temperature": 0.0}, ValueError, "temperature"),
    "negative_temperature": ({"num_clusters": 3, "temperature": -0.5}, ValueError, "temperature"),
    "nan_temperature": ({"num_clusters": 3, "temperature": float("nan")}, ValueError, "temperature"),
    "string_temperature": ({"num_clusters": 3, "temperature": "0.5"}, TypeError, "temperature"),
    "negative_queue_size": ({"num_clusters": 3, "queue_size": -1}, ValueError, "queue_size"),
    "queue_without_feature_dim": ({"num_clusters": 3, "queue_size": 16}, ValueError, "feature_dim"),
    "zero_feature_dim": ({"num_clusters": 3, "queue_size": 16, "feature_dim": 0}, ValueError, "feature_dim"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONSTRUCTOR_ARGUMENTS))
def test_bad_constructor_arguments_raise(case: str) -> None:
    kwargs, error, match = BAD_CONSTRUCTOR_ARGUMENTS[case]
    with pytest.raises(error, match=match):
        PSL(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_clusters": 1}, ValueError, "num_clusters"),
        ({"num_clusters": 3, "temperature": 0.0}, ValueError, "temperature"),
    ],
)
def test_bad_functional_hyper_parameters_raise(kwargs: dict, error: type, match: str) -> None:
    arguments = _good()
    with pytest.raises(error, match=match):
        prototype_scattering_loss(arguments["online"], arguments["target"], arguments["assignments"], **kwargs)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8])
def test_indices_of_any_integer_dtype_are_accepted_and_stored_as_int64(dtype: torch.dtype) -> None:
    # Like PrototypeQueue.push, which the module feeds.
    module = PSL(K, queue_size=8, feature_dim=D)
    arguments = _good()
    module(arguments["online"], arguments["target"], arguments["assignments"], torch.arange(B, dtype=dtype) + 3)
    _, _, indices = queue_of(module).contents()
    assert indices.dtype == torch.int64
    assert indices.tolist() == list(range(3, 3 + B))
    direct = PrototypeQueue(8, D)
    direct.push(arguments["target"], arguments["assignments"], torch.arange(B, dtype=dtype) + 3)
    assert torch.equal(direct.contents()[2], indices)


@pytest.mark.parametrize("temperature", [1e-40, torch.finfo(torch.float32).tiny / 2, 5e-324])
def test_temperature_whose_reciprocal_overflows_float32_raises_naming_the_value(temperature: float) -> None:
    arguments = _good()
    with pytest.raises(ValueError, match=f"temperature.*got {temperature}"):
        PSL(K, temperature=temperature)
    with pytest.raises(ValueError, match=f"temperature.*got {temperature}"):
        prototype_scattering_loss(
            arguments["online"], arguments["target"], arguments["assignments"], K, temperature=temperature
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_smallest_allowed_temperature_gives_finite_loss_terms_and_gradient(dtype: torch.dtype) -> None:
    online, target, labels = make_batch(17, 8, 4, 3, dtype=dtype)
    online.requires_grad_(True)
    module = PSL(3, temperature=torch.finfo(torch.float32).tiny)
    loss = module(online, target, labels)
    loss.backward()
    for term in terms_of(module)[:3]:
        assert torch.isfinite(term)
    assert torch.isfinite(grad_of(online)).all()


def test_relabel_without_queue_raises() -> None:
    with pytest.raises(ValueError, match="queue_size"):
        PSL(3).relabel_queue(torch.zeros(4, dtype=torch.long))


def test_queue_labels_outside_the_clusters_raise_before_anything_changes() -> None:
    module = PSL(K, queue_size=8, feature_dim=D)
    module(**_good())
    # load_state_dict refuses such labels (tests/test_state_safety.py); the queue's own push takes any label >= 0.
    queue_of(module).push(torch.ones(1, D), torch.tensor([K]))
    before = {key: value.clone() for key, value in module.state_dict().items()}
    with pytest.raises(ValueError, match="queue labels"):
        module(**_good())
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key]), key


# ---------------------------------------------------------------- the oracles themselves


def test_psa_oracle_equals_two_minus_two_cosine_of_the_noisy_prediction() -> None:
    # The PSA engineer imports psa_oracle; check it against the closed form 2 - 2 cos (Eq. 10).
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    z_plus = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    eps = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    predictor = torch.nn.Linear(4, 3).double()
    sigma = 0.3
    with torch.no_grad():
        cosine = torch.nn.functional.cosine_similarity(predictor(q + sigma * eps), z_plus, dim=1)
        expected = (2 - 2 * cosine).mean().item()
        assert psa_oracle(q, z_plus, predictor, eps, sigma) == pytest.approx(expected, rel=1e-12)
        # sigma = 0 ignores the noise (plain BYOL).
        assert psa_oracle(q, z_plus, predictor, eps, 0.0) == pytest.approx(
            psa_oracle(q, z_plus, predictor, torch.zeros_like(eps), 0.3), rel=1e-12
        )


def test_psl_oracle_of_two_orthogonal_clusters_is_the_closed_form() -> None:
    # Two clusters with orthogonal online prototypes and target == online:
    # each term is -log(e^(1/tau) / (e^(1/tau) + e^0)).
    online = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    expected = -math.log(math.exp(1 / TAU) / (math.exp(1 / TAU) + 1.0))
    assert psl_oracle(online, online, labels, 2, TAU)["loss"] == pytest.approx(expected, rel=1e-14)
    assert prototype_scattering_loss(online, online, labels, 2).item() == pytest.approx(expected, rel=1e-14)


def test_assignments_on_another_device_get_a_clear_error() -> None:
    online, target, labels = make_batch(0, 6, 4, 3)
    for assignments in (labels.to("meta"), torch.ones(6, 3, dtype=torch.float64, device="meta")):
        with pytest.raises(ValueError, match="assignments are on meta"):
            PSL(3)(online, target, assignments)
        with pytest.raises(ValueError, match="assignments are on meta"):
            prototype_scattering_loss(online, target, assignments, 3, validate_args=False)


def test_enqueue_decides_explicitly_whether_a_call_pushes_to_the_queue() -> None:
    generator = torch.Generator().manual_seed(0)
    online, target = torch.randn(2, 6, 4, generator=generator).unbind(0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    psl = PSL(3, queue_size=32, feature_dim=4)
    psl(online, target, labels, enqueue=False)  # training mode, but told not to
    assert len(queue_of(psl)) == 0
    psl.eval()
    psl(online, target, labels, enqueue=True)  # eval mode, but told to
    assert len(queue_of(psl)) == 6
    psl(online, target, labels)  # default: eval mode does not enqueue
    assert len(queue_of(psl)) == 6
    with pytest.raises(TypeError, match=r"enqueue must be None or a bool, got 1"):
        psl(online, target, labels, enqueue=1)  # type: ignore[arg-type]
    assert len(queue_of(psl)) == 6


def test_symmetric_pairs_the_views_crosswise_and_enqueues_each_sample_once() -> None:
    generator = torch.Generator().manual_seed(1)
    o1, o2, t1, t2 = torch.randn(4, 6, 4, generator=generator, dtype=torch.float64).unbind(0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    indices = torch.arange(10, 16)
    psl = PSL(3, queue_size=32, feature_dim=4)
    reference = PSL(3, queue_size=32, feature_dim=4)
    expected = reference(o1, t2, labels, indices, enqueue=False) + reference(o2, t1, labels, indices)
    torch.testing.assert_close(psl.symmetric(o1, o2, t1, t2, labels, indices), expected, rtol=0, atol=0)
    features, queued_labels, queued_indices = queue_of(psl).contents()
    assert queued_indices.tolist() == indices.tolist() and queued_labels.tolist() == labels.tolist()
    torch.testing.assert_close(features, torch.nn.functional.normalize(t1, dim=1).float())


def test_return_terms_is_deprecated_in_favour_of_prototype_scattering_terms() -> None:
    generator = torch.Generator().manual_seed(2)
    online, target = torch.randn(2, 6, 4, generator=generator).unbind(0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    terms = prototype_scattering_terms(online, target, labels, 3)
    with pytest.warns(FutureWarning, match=r"use prototype_scattering_terms"):
        old = prototype_scattering_loss(online, target, labels, 3, return_terms=True)
    assert isinstance(old, PSLTerms) and all(torch.equal(a, b) for a, b in zip(old, terms))
    assert torch.equal(prototype_scattering_loss(online, target, labels, 3), terms.loss)
    with pytest.raises(TypeError, match=r"return_terms must be a bool, got 'yes'"):
        prototype_scattering_loss(online, target, labels, 3, return_terms="yes")  # type: ignore[call-overload]
    # Type checkers see the deprecation too: exactly the return_terms=True overload is @deprecated.
    marked = [o for o in get_overloads(prototype_scattering_loss) if getattr(o, "__deprecated__", None)]
    assert len(marked) == 1 and "prototype_scattering_terms" in marked[0].__deprecated__
    assert "return_terms" in inspect.signature(marked[0]).parameters


def test_last_terms_are_those_of_the_last_forward_and_detached() -> None:
    # Read lazily from the last call's detached scores: a second call replaces them.
    online, target, labels = make_batch(0, 12, 6, 4)
    psl = PrototypeScatteringLoss(4)
    assert psl.last_terms is None
    psl(online.requires_grad_(True), target, labels)
    later = make_batch(1, 12, 6, 4)
    psl(*later)
    expected = prototype_scattering_terms(*later, 4)
    for got, want in zip(psl.last_terms, expected):
        assert not got.requires_grad
        torch.testing.assert_close(got, want.detach(), rtol=0, atol=0)
    assert psl.last_terms is psl.last_terms  # computed once per forward
