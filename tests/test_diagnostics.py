"""Tests of propos_losses.diagnostics against float64 formulas and hand-made labelings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from propos_losses.diagnostics import (
    alignment,
    cluster_size_stats,
    representation_diagnostics,
    uniformity,
    wang_isola_alignment,
    wang_isola_uniformity,
)


def normalized64(z: torch.Tensor) -> torch.Tensor:
    """Float64 row normalisation written out, zero rows left at zero."""
    z = z.to(torch.float64)
    norms = z.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, z / torch.where(norms > 0, norms, torch.ones_like(norms)), z)


def uniformity_oracle(z: torch.Tensor, t: float) -> float:
    """Wang & Isola's formula, literally: log mean over i<j of exp(-t |z_i - z_j|^2)."""
    x = normalized64(z)
    n = x.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            total += math.exp(-t * float(((x[i] - x[j]) ** 2).sum()))
    return math.log(total / (n * (n - 1) / 2))


def alignment_oracle(z1: torch.Tensor, z2: torch.Tensor, alpha: float) -> float:
    x, y = normalized64(z1), normalized64(z2)
    return sum(float((x[i] - y[i]).norm()) ** alpha for i in range(x.shape[0])) / x.shape[0]


# --------------------------------------------------------------------------- #
# Uniformity and alignment
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64])
@pytest.mark.parametrize("t", [0.5, 2.0])
def test_uniformity_equals_float64_formula_for_any_chunk_size(chunk_size: int, t: float) -> None:
    z = torch.randn(23, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert wang_isola_uniformity(z, t=t, chunk_size=chunk_size) == pytest.approx(uniformity_oracle(z, t), abs=1e-12)


def test_uniformity_equals_wang_isola_pdist_expression() -> None:
    z = torch.randn(200, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = torch.nn.functional.normalize(z, dim=1)
    reference = torch.pdist(x, p=2).pow(2).mul(-2.0).exp().mean().log()
    assert wang_isola_uniformity(z, chunk_size=37) == pytest.approx(float(reference), abs=1e-12)


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.5])
def test_alignment_equals_float64_formula(alpha: float) -> None:
    generator = torch.Generator().manual_seed(2)
    z1 = torch.randn(31, 6, generator=generator, dtype=torch.float64)
    z2 = z1 + 0.3 * torch.randn(31, 6, generator=generator, dtype=torch.float64)
    assert wang_isola_alignment(z1, z2, alpha=alpha) == pytest.approx(alignment_oracle(z1, z2, alpha), abs=1e-12)


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 20), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_scaling_rows_leaves_alignment_and_uniformity_unchanged(n: int, d: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=generator, dtype=torch.float64)
    z2 = torch.randn(n, d, generator=generator, dtype=torch.float64)
    scale = torch.rand(n, 1, generator=generator, dtype=torch.float64) * 100 + 0.01
    assert wang_isola_uniformity(z1 * scale) == pytest.approx(wang_isola_uniformity(z1), abs=1e-10)
    assert wang_isola_alignment(z1 * scale, z2) == pytest.approx(wang_isola_alignment(z1, z2), abs=1e-10)


def test_zero_rows_stay_zero_instead_of_producing_nan() -> None:
    z1 = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]], dtype=torch.float64)
    z2 = torch.tensor([[1.0, 0.0], [3.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
    assert wang_isola_alignment(z1, z2) == pytest.approx(alignment_oracle(z1, z2, 2.0), abs=1e-15)
    assert wang_isola_uniformity(z1) == pytest.approx(uniformity_oracle(z1, 2.0), abs=1e-15)


def test_uniformity_limits_collapse_and_antipodal_pair() -> None:
    collapsed = torch.ones(10, 4)
    assert wang_isola_uniformity(collapsed) == pytest.approx(0.0, abs=1e-6)
    antipodal = torch.tensor([[0.0, 2.0], [0.0, -5.0]], dtype=torch.float64)
    assert wang_isola_uniformity(antipodal, t=3.0) == pytest.approx(-12.0, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs_agree_with_float64(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(3)
    z1 = torch.randn(64, 8, generator=generator).to(dtype)
    z2 = (z1.float() + 0.2 * torch.randn(64, 8, generator=generator)).to(dtype)
    z1_64, z2_64 = z1.to(torch.float64), z2.to(torch.float64)
    assert wang_isola_uniformity(z1, chunk_size=16) == pytest.approx(wang_isola_uniformity(z1_64), abs=1e-5)
    assert wang_isola_alignment(z1, z2) == pytest.approx(wang_isola_alignment(z1_64, z2_64), abs=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inputs_agree_with_cpu() -> None:
    z = torch.randn(100, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert wang_isola_uniformity(z.cuda()) == pytest.approx(wang_isola_uniformity(z), abs=1e-10)
    assert wang_isola_alignment(z.cuda(), z.flip(0).cuda()) == pytest.approx(
        wang_isola_alignment(z, z.flip(0)), abs=1e-10
    )


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: wang_isola_uniformity(torch.randn(1, 3)), ValueError, "at least 2 rows"),
        (lambda: wang_isola_uniformity(torch.randn(5)), ValueError, "2-D"),
        (lambda: wang_isola_uniformity(torch.zeros(4, 0)), ValueError, "non-empty"),
        (lambda: wang_isola_uniformity(torch.ones(4, 3, dtype=torch.long)), TypeError, "floating"),
        (lambda: wang_isola_uniformity(np.ones((4, 3))), TypeError, "torch.Tensor"),
        (lambda: wang_isola_uniformity(torch.tensor([[0.0, 1.0], [float("nan"), 1.0]])), ValueError, "finite"),
        (lambda: wang_isola_uniformity(torch.randn(4, 3), t=0.0), ValueError, "t must be > 0"),
        (lambda: wang_isola_uniformity(torch.randn(4, 3), chunk_size=0), ValueError, "chunk_size"),
        (lambda: wang_isola_alignment(torch.randn(4, 3), torch.randn(5, 3)), ValueError, "same shape"),
        (lambda: wang_isola_alignment(torch.randn(4, 3), torch.randn(4, 3), alpha=-1.0), ValueError, "alpha"),
        (lambda: wang_isola_alignment(torch.randn(4, 3), torch.randn(4, 3), alpha="2"), TypeError, "alpha"),
    ],
)
def test_bad_feature_inputs_raise_clear_errors(call, error, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=match):
        call()


# --------------------------------------------------------------------------- #
# Cluster sizes
# --------------------------------------------------------------------------- #


def test_cluster_size_stats_counts_empty_clusters_when_num_clusters_is_given() -> None:
    stats = cluster_size_stats(torch.tensor([3, 3, 0, 3, 0, 3]), num_clusters=5)
    assert stats["sizes"] == [2, 0, 0, 4, 0]
    assert stats["num_clusters"] == 5
    assert stats["num_empty"] == 3
    assert stats["min"] == 0
    assert stats["max"] == 4
    assert stats["imbalance_ratio"] == 2.0
    entropy = -(2 / 6) * math.log(2 / 6) - (4 / 6) * math.log(4 / 6)
    assert stats["entropy"] == pytest.approx(entropy, abs=1e-15)
    assert stats["normalized_entropy"] == pytest.approx(entropy / math.log(5), abs=1e-15)


def test_cluster_size_stats_of_balanced_labels_has_unit_ratio_and_entropy() -> None:
    stats = cluster_size_stats([7, -1, 4, 7, -1, 4, 7, -1, 4])
    assert stats["sizes"] == [3, 3, 3]
    assert stats["num_empty"] == 0
    assert stats["imbalance_ratio"] == 1.0
    assert stats["entropy"] == pytest.approx(math.log(3), abs=1e-15)
    assert stats["normalized_entropy"] == pytest.approx(1.0, abs=1e-15)


def test_cluster_size_stats_of_a_single_cluster() -> None:
    stats = cluster_size_stats(np.zeros(5, dtype=np.int32))
    assert stats["sizes"] == [5]
    assert stats["entropy"] == 0.0
    assert stats["normalized_entropy"] == 1.0
    collapsed = cluster_size_stats(np.zeros(5, dtype=np.int32), num_clusters=10)
    assert collapsed["num_empty"] == 9
    assert collapsed["normalized_entropy"] == 0.0


@pytest.mark.parametrize(
    ("labels", "num_clusters", "error", "match"),
    [
        ([0, 1, 5], 5, ValueError, r"in \[0, 5\)"),
        ([-1, 0], 3, ValueError, r"in \[0, 3\)"),
        ([0, 1], 0, ValueError, "num_clusters"),
        ([0, 1], 2.0, TypeError, "num_clusters"),
        ([], None, ValueError, "empty"),
        ([[0, 1]], None, ValueError, "1-D"),
        ([0.5, 1.0], None, ValueError, "integral"),
    ],
)
def test_cluster_size_stats_rejects_bad_input(  # type: ignore[no-untyped-def]
    labels, num_clusters, error, match
) -> None:
    with pytest.raises(error, match=match):
        cluster_size_stats(labels, num_clusters=num_clusters)


# --------------------------------------------------------------------------- #
# representation_diagnostics
# --------------------------------------------------------------------------- #


def test_representation_diagnostics_equals_the_individual_functions() -> None:
    generator = torch.Generator().manual_seed(5)
    z1 = torch.randn(50, 4, generator=generator, dtype=torch.float64) * 3
    z2 = z1 + torch.randn(50, 4, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 4, (50,), generator=generator)
    out = representation_diagnostics(z1, z2, labels, num_clusters=6, t=1.0, alpha=1.0)
    assert out["uniformity"] == wang_isola_uniformity(z1, t=1.0)
    assert out["alignment"] == wang_isola_alignment(z1, z2, alpha=1.0)
    assert out["feature_norm_mean"] == pytest.approx(float(z1.norm(dim=1).mean()), abs=1e-12)
    x = normalized64(z1)
    assert out["feature_std_mean"] == pytest.approx(float(x.std(dim=0, correction=0).mean()), abs=1e-12)
    for key, value in cluster_size_stats(labels, num_clusters=6).items():
        assert out[f"cluster_{key}"] == value


def test_collapsed_features_have_zero_std_and_zero_uniformity() -> None:
    out = representation_diagnostics(torch.ones(20, 8))
    assert out["feature_std_mean"] == pytest.approx(0.0, abs=1e-7)
    assert out["uniformity"] == pytest.approx(0.0, abs=1e-6)
    assert set(out) == {"uniformity", "feature_norm_mean", "feature_std_mean"}


def test_subsampled_uniformity_is_reproducible_and_exact_when_not_needed() -> None:
    z = torch.randn(300, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    first = representation_diagnostics(z, max_samples=50, seed=1)["uniformity"]
    assert representation_diagnostics(z, max_samples=50, seed=1)["uniformity"] == first
    index = torch.randperm(300, generator=torch.Generator().manual_seed(1))[:50]
    assert first == wang_isola_uniformity(z[index])
    assert representation_diagnostics(z, max_samples=300)["uniformity"] == wang_isola_uniformity(z)


def test_representation_diagnostics_rejects_mismatched_labels() -> None:
    with pytest.raises(ValueError, match="one entry per row"):
        representation_diagnostics(torch.randn(5, 2), labels=[0, 1])
    with pytest.raises(ValueError, match="max_samples"):
        representation_diagnostics(torch.randn(5, 2), max_samples=1)


@pytest.mark.parametrize(
    "scale, dtype",
    [
        (1e-30, torch.float32),
        (1e-23, torch.float32),
        (1e30, torch.float32),
        (1e-300, torch.float64),
        (1e300, torch.float64),
    ],
)
def test_rows_whose_squared_norm_under_or_overflows_are_normalised_like_any_row(
    scale: float, dtype: torch.dtype
) -> None:
    # ||x||^2 underflows to 0 (or overflows) although x has a direction: scaled by max |x_i| first.
    generator = torch.Generator().manual_seed(5)
    z1 = torch.randn(40, 6, generator=generator, dtype=torch.float64)
    z2 = z1 + 0.5 * torch.randn(40, 6, generator=generator, dtype=torch.float64)
    small1, small2 = (z1 * scale).to(dtype), (z2 * scale).to(dtype)
    value = wang_isola_alignment(small1, small2)
    assert 0.0 <= value <= 4.0  # the documented range of alignment with alpha = 2
    assert value == pytest.approx(wang_isola_alignment(z1, z2), abs=1e-5)
    assert -4.0 <= wang_isola_uniformity(small1) <= 0.0
    assert wang_isola_uniformity(small1) == pytest.approx(wang_isola_uniformity(z1), abs=1e-5)
    stats = representation_diagnostics(small1, small2)
    assert stats["alignment"] == pytest.approx(value)
    assert stats["feature_std_mean"] == pytest.approx(representation_diagnostics(z1, z2)["feature_std_mean"], abs=1e-5)


def test_the_old_names_are_deprecated_aliases_of_the_wang_isola_measures() -> None:
    z1 = torch.randn(12, 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    z2 = z1 + 0.1
    with pytest.warns(FutureWarning, match="use wang_isola_alignment"):
        assert alignment(z1, z2) == wang_isola_alignment(z1, z2)
    with pytest.warns(FutureWarning, match="use wang_isola_uniformity"):
        assert uniformity(z1, t=3.0) == wang_isola_uniformity(z1, t=3.0)
