"""Tests of per-cluster sums and normalised prototypes (Eq. 6, 7)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from propos_losses.prototypes import cluster_sums, compute_prototypes, normalize_features, normalize_prototypes
from propos_losses.psl import prototype_scattering_loss


def grad_of(tensor: Tensor) -> Tensor:
    """The gradient of a leaf after ``backward`` (asserted to exist)."""
    assert tensor.grad is not None
    return tensor.grad


def _loop_sums(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    sums = torch.zeros(weights.shape[1], features.shape[1], dtype=torch.float64)
    for i in range(features.shape[0]):
        for k in range(weights.shape[1]):
            sums[k] += float(weights[i, k]) * features[i].double()
    return sums


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), batch_size=st.integers(0, 12), num_clusters=st.integers(1, 7))
def test_hard_label_sums_and_counts_equal_a_loop_over_samples(seed: int, batch_size: int, num_clusters: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch_size, 3, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, num_clusters, (batch_size,), generator=generator)
    sums, counts = cluster_sums(features, labels, num_clusters)
    one_hot = torch.nn.functional.one_hot(labels, num_clusters).double()
    torch.testing.assert_close(sums, _loop_sums(features, one_hot))
    assert counts.tolist() == [float((labels == k).sum()) for k in range(num_clusters)]
    assert sums.dtype == counts.dtype == torch.float64


def test_soft_weight_sums_and_counts_equal_a_loop_over_samples() -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(9, 4, generator=generator, dtype=torch.float64)
    weights = torch.rand(9, 5, generator=generator, dtype=torch.float64)
    weights[3] = 0.0
    sums, counts = cluster_sums(features, weights, 5)
    torch.testing.assert_close(sums, _loop_sums(features, weights))
    torch.testing.assert_close(counts, weights.sum(dim=0))


def test_integer_label_dtypes_other_than_int64_are_accepted() -> None:
    features = torch.eye(4)
    expected, _ = cluster_sums(features, torch.tensor([1, 0, 1, 2]), 3)
    for dtype in (torch.int32, torch.int16, torch.uint8):
        sums, _ = cluster_sums(features, torch.tensor([1, 0, 1, 2], dtype=dtype), 3)
        torch.testing.assert_close(sums, expected)


def test_hard_label_sums_are_differentiable_like_the_dense_product() -> None:
    features = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([2, 0, 2, 2, 1, 0])
    weight = torch.randn(3, 3, dtype=torch.float64)
    (cluster_sums(features, labels, 3)[0] * weight).sum().backward()
    # d/dx_i of sum_k <sums_k, W_k> is W_{label_i}.
    torch.testing.assert_close(grad_of(features), weight[labels])


def test_prototypes_have_unit_norm_and_empty_clusters_are_zero() -> None:
    features = torch.randn(10, 6, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 0, 3, 3, 3, 0, 4, 4, 0, 3])
    prototypes = compute_prototypes(features, labels, 6)
    norms = prototypes.norm(dim=1)
    torch.testing.assert_close(norms[[0, 3, 4]], torch.ones(3))
    assert torch.equal(prototypes[[1, 2, 5]], torch.zeros(3, 6))


def test_prototype_is_the_normalised_mean_of_normalised_features() -> None:
    features = torch.randn(8, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0, 1, 1, 0, 0])
    prototypes = compute_prototypes(features, labels, 2)
    for k in range(2):
        unit = features[labels == k] / features[labels == k].norm(dim=1, keepdim=True)
        mean = unit.mean(dim=0)
        torch.testing.assert_close(prototypes[k], mean / mean.norm())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_zero_rows_normalise_to_zero_with_zero_gradient(dtype: torch.dtype) -> None:
    features = torch.tensor([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]], dtype=dtype, requires_grad=True)
    normalised = normalize_features(features)
    assert torch.equal(normalised[1], torch.zeros(2, dtype=dtype))
    torch.testing.assert_close(normalised[0], torch.tensor([0.6, 0.8], dtype=dtype))
    normalised.sum().backward()
    assert torch.isfinite(grad_of(features)).all()
    assert torch.equal(grad_of(features)[1], torch.zeros(2, dtype=dtype))


def test_normalize_features_gradient_matches_finite_differences_away_from_zero() -> None:
    features = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(normalize_features, (features,))


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from([torch.bfloat16, torch.float16, torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
    power=st.floats(0.0, 1.0),
)
def test_normalize_features_is_invariant_to_any_power_of_two_scale_bit_for_bit(
    dtype: torch.dtype, seed: int, power: float
) -> None:
    # Entries of magnitude in [1/2, 2] (or 0): every scale 2^k that keeps them normal numbers is exact,
    # down to tiny rows whose squared norm underflows (bf16 * 2^-100, float32 * 2^-120).
    generator = torch.Generator().manual_seed(seed)
    magnitude = torch.empty(5, 4, dtype=torch.float64).uniform_(0.5, 2.0, generator=generator)
    sign = torch.randint(-1, 2, (5, 4), generator=generator).to(torch.float64)  # -1, 0 or +1
    features = (magnitude * sign).to(dtype)
    info = torch.finfo(dtype)
    low, high = math.log2(info.tiny) + 1, math.log2(info.max) - 1  # keeps 2 * 2^k and 2^k / 2 normal
    exponent = math.floor(low + power * (high - low))
    scaled = features * 2.0**exponent
    assert torch.equal(scaled / 2.0**exponent, features)  # the scaling itself was exact
    assert torch.equal(normalize_features(scaled), normalize_features(features))


@pytest.mark.parametrize(
    ("dtype", "scale"),
    [(torch.bfloat16, 1e-25), (torch.float32, 1e-30), (torch.float32, 1e30), (torch.float64, 1e-200)],
)
def test_tiny_and_huge_non_zero_rows_normalise_to_unit_norm_with_the_direction_kept(
    dtype: torch.dtype, scale: float
) -> None:
    features = torch.tensor([[3.0, 4.0], [-1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    scaled = (features * scale).to(dtype).requires_grad_(True)
    normalised = normalize_features(scaled)
    tolerance = torch.finfo(dtype).eps * 4
    torch.testing.assert_close(normalised.double(), normalize_features(features), rtol=tolerance, atol=tolerance)
    assert torch.equal(normalised[2], torch.zeros(2, dtype=dtype))  # zero rows stay zero
    normalised[:, 0].sum().backward()
    assert torch.isfinite(grad_of(scaled)).all()
    assert torch.equal(grad_of(scaled)[2], torch.zeros(2, dtype=dtype))


def test_prototypes_are_invariant_to_the_scale_of_soft_weights() -> None:
    features = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    weights = torch.rand(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    weights[:, 3] = 0.0
    reference = compute_prototypes(features, weights, 4)
    for scale in (1e-300, 1e-50, 1e300):
        torch.testing.assert_close(compute_prototypes(features, weights * scale, 4), reference)
    big = (weights / weights.max() * torch.finfo(torch.float32).max).float()  # the sums overflow float32
    torch.testing.assert_close(compute_prototypes(features.float(), big, 4), reference.float())


def test_normalize_prototypes_maps_zero_sums_to_zero() -> None:
    prototypes = normalize_prototypes(torch.tensor([[0.0, 2.0], [0.0, 0.0]]))
    assert prototypes.tolist() == [[0.0, 1.0], [0.0, 0.0]]
    assert not math.isnan(prototypes.sum().item())


@pytest.mark.parametrize(
    ("features", "assignments", "num_clusters", "error", "match"),
    [
        (torch.randn(4), torch.zeros(4, dtype=torch.long), 2, ValueError, "features"),
        (torch.ones(4, 2, dtype=torch.long), torch.zeros(4, dtype=torch.long), 2, TypeError, "features"),
        (torch.randn(4, 2), torch.zeros(5, dtype=torch.long), 2, ValueError, "assignments"),
        (torch.randn(4, 2), torch.tensor([0, 1, 2, 0]), 2, ValueError, "assignments"),
        (torch.randn(4, 2), torch.zeros(4), 2, TypeError, "assignments"),
        (torch.randn(4, 2), torch.full((4, 3), 0.5), 2, ValueError, "num_clusters"),
        (torch.randn(4, 2), -torch.ones(4, 2), 2, ValueError, "non-negative"),
        (torch.randn(4, 2), torch.zeros(4, 2), 2, ValueError, "all zero"),
        (torch.randn(4, 2), torch.zeros(4, dtype=torch.long), 0, ValueError, "num_clusters"),
    ],
)
def test_bad_input_raises(
    features: torch.Tensor, assignments: torch.Tensor, num_clusters: int, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        cluster_sums(features, assignments, num_clusters)
    with pytest.raises(error, match=match):
        compute_prototypes(features, assignments, num_clusters)


class _LargestOutput(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


def test_hard_labels_never_build_a_dense_cluster_by_sample_matrix() -> None:
    num_clusters, batch_size, dim = 100, 1000, 4
    features = torch.randn(batch_size, dim, requires_grad=True)
    labels = torch.randint(0, num_clusters, (batch_size,))
    with _LargestOutput() as mode:
        loss = prototype_scattering_loss(features, torch.randn(batch_size, dim), labels, num_clusters)
        loss.backward()
    # Largest legitimate tensors: the (K, K + 1) logits and the (B, d) features.
    assert mode.largest < num_clusters * batch_size
    assert mode.largest <= max(num_clusters * (num_clusters + 1), batch_size * dim)
