"""k-means numerics: extreme row scales, non-negative inertia, labels that match predict, the
bounded full-data iterations and the ``sample_size="auto"`` default (propos_losses.kmeans)."""

from __future__ import annotations

from typing import Optional

import pytest
import torch

import propos_losses.kmeans._kernels as kernels_module
import propos_losses.kmeans._lloyd as lloyd_module
from propos_losses.kmeans import SphericalKMeans, spherical_kmeans
from propos_losses.kmeans._init import auto_sample_size, kmeans_plus_plus
from propos_losses.kmeans._lloyd import lloyd, lloyd_bounded
from propos_losses.kmeans._params import Settings
from propos_losses.kmeans._rows import DenseRows


def lloyd_settings(n_clusters: int, max_iter: int, tol: float, chunk_size: Optional[int]) -> Settings:
    """The checked settings that the Lloyd loops get from SphericalKMeans(n_clusters, ...)."""
    estimator = SphericalKMeans(n_clusters, max_iter=max_iter, tol=tol, chunk_size=chunk_size, verbose=False)
    return Settings.from_params(estimator.get_params())


def rows(n: int, dim: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def blobs(n_per_cluster: int, n_clusters: int, dim: int, noise: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_clusters, dim, generator=gen)
    labels = torch.arange(n_clusters).repeat_interleave(n_per_cluster)
    return centres[labels] + noise * torch.randn(labels.numel(), dim, generator=gen)


def normalised_means(X: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    unit = X.to(torch.float64) / X.to(torch.float64).norm(dim=1, keepdim=True)
    sums = torch.zeros(k, X.shape[1], dtype=torch.float64).index_add_(0, labels, unit)
    return sums / sums.norm(dim=1, keepdim=True)


# --------------------------------------------------------------------------- (a) extreme scales


@pytest.mark.parametrize(
    "scale, dtype", [(1e-23, torch.float32), (1e-30, torch.float32), (1e-160, torch.float64), (1e30, torch.float32)]
)
def test_rows_whose_squared_norm_under_or_overflows_are_clustered_like_unscaled_rows(
    scale: float, dtype: torch.dtype
) -> None:
    X = rows(60, 5, seed=1, dtype=torch.float64)
    reference = SphericalKMeans(3, n_init=2, random_state=0).fit(X.to(dtype))
    tiny = SphericalKMeans(3, n_init=2, random_state=0).fit((X * scale).to(dtype))  # no "all-zero rows" error
    assert torch.equal(tiny.labels_, reference.labels_)
    assert tiny.inertia_ == pytest.approx(reference.inertia_, rel=1e-5)
    assert torch.equal(tiny.predict((X * scale).to(dtype)), tiny.labels_)


def test_a_row_that_is_really_zero_has_cosine_zero_to_every_centre_and_never_becomes_one() -> None:
    # scikit-learn's convention for cosine similarity (normalize and cosine_similarity leave zero rows at 0):
    # an all-zero row adds 1 to the inertia, nothing to the centres, and is never chosen as a centre.
    X = rows(30, 3, seed=2, dtype=torch.float32) * 1e-30
    zero = torch.zeros(6, 3, dtype=torch.float32)
    with_zeros = torch.cat([zero[:3], X, zero[3:]])
    for init in ("k-means++", "random"):
        km = SphericalKMeans(4, n_init=3, random_state=0, init=init).fit(with_zeros)
        assert torch.all(km.cluster_centers_.norm(dim=1) > 0.99)  # no centre on a zero row
        assert torch.all(km.transform(zero) == 0)
        assert torch.equal(km.predict(with_zeros), km.labels_)
    # k-means++ samples rows in proportion to their potential: zero rows get probability 0,
    # so the same draws pick the same rows, and the zero rows add exactly 1 each to the inertia.
    km = SphericalKMeans(4, n_init=3, random_state=0).fit(with_zeros)
    reference = SphericalKMeans(4, n_init=3, random_state=0).fit(X)
    assert km.inertia_ == pytest.approx(reference.inertia_ + 6, rel=1e-6)
    assert torch.equal(km.labels_[3:33], reference.labels_)
    assert torch.allclose(km.cluster_centers_, reference.cluster_centers_, atol=1e-6)


# --------------------------------------------------------------------------- (b) inertia >= 0


@pytest.mark.parametrize("seed", range(8))
def test_inertia_is_never_negative_when_every_row_is_its_own_cluster(seed: int) -> None:
    # K == N: every row sits on its centre, and float32 rounding can make cos exceed 1 by an ulp.
    X = rows(12, 5, seed=seed, dtype=torch.float32)
    km = SphericalKMeans(12, random_state=0).fit(X)
    assert 0.0 <= km.inertia_ < 1e-5
    assert all(value >= 0 for value in km.inertia_history_)
    assert km.score(X) <= 0.0


# --------------------------------------------------------------------------- (c, d) labels and centres


@pytest.mark.parametrize("sample_size", [None, 150, "auto"])
def test_labels_are_the_assignment_to_the_final_centres(sample_size: object) -> None:
    X = blobs(200, 6, 8, noise=1.5, seed=3)
    km = SphericalKMeans(6, n_init=3, random_state=0, sample_size=sample_size).fit(X)
    assert torch.equal(km.predict(X), km.labels_)
    assert km.inertia_ == pytest.approx(-km.score(X), rel=1e-12)


def test_tol_zero_ends_at_a_fixed_point_also_with_subsampled_restarts() -> None:
    # No label changes any more: the centres are the normalised means of labels_, labels_ their assignment.
    X = blobs(300, 5, 6, noise=2.0, seed=4).to(torch.float64)
    km = SphericalKMeans(5, n_init=3, random_state=0, sample_size=200, tol=0.0).fit(X)
    assert km.n_iter_ < 300
    assert torch.allclose(km.cluster_centers_, normalised_means(X, km.labels_, 5), atol=1e-9)
    assert torch.equal(km.predict(X), km.labels_)


# --------------------------------------------------------------------------- bounded iterations


@pytest.mark.parametrize("elkan", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bounded_iterations_take_the_same_steps_as_plain_lloyd(
    elkan: bool, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Skipping the rows whose bounds prove their label cannot change must not change any step.
    if not elkan:  # per-centre bounds do not fit: one bound for all other centres (Hamerly)
        monkeypatch.setattr(kernels_module, "DEFAULT_CHUNK_BYTES", 64)
    X = blobs(40, 7, 5, noise=1.2, seed=seed).to(torch.float64)
    unit = X / X.norm(dim=1, keepdim=True)
    start = unit[torch.randperm(unit.shape[0], generator=torch.Generator().manual_seed(seed))[:7]]
    settings = lloyd_settings(7, max_iter=60, tol=0.0, chunk_size=64)
    rows = DenseRows(unit)
    plain, n_plain, history = lloyd(rows, start.unsqueeze(0), settings)
    bounded, n_bounded, bounded_history = lloyd_bounded(rows, start, settings)
    n = int(n_plain[0])
    assert n_bounded in (n, n - 1)  # it also stops as soon as no label changed
    assert torch.allclose(bounded, plain[0], atol=1e-12)
    assert bounded_history == pytest.approx(history[0, :n_bounded].tolist(), rel=1e-12)


# --------------------------------------------------------------------------- sample_size="auto"


def test_auto_is_the_default_and_equals_the_unsampled_run_on_small_data() -> None:
    assert SphericalKMeans(3).sample_size == "auto"
    X = blobs(50, 3, 4, noise=1.0, seed=5)
    auto = spherical_kmeans(X, 3, n_init=3, random_state=1)
    full = spherical_kmeans(X, 3, n_init=3, random_state=1, sample_size=None)
    assert torch.equal(auto.centers, full.centers) and torch.equal(auto.labels, full.labels)


def test_auto_subsamples_large_data_with_its_documented_size() -> None:
    size = auto_sample_size(2)
    assert size == 1024  # 512 rows per cluster at most
    assert auto_sample_size(10) == 5_120 and auto_sample_size(100) == 19_200
    assert auto_sample_size(1000) == 16_000 and auto_sample_size(10_000) == 160_000
    X = blobs(700, 2, 4, noise=1.0, seed=6)
    auto = spherical_kmeans(X, 2, n_init=3, random_state=2)
    explicit = spherical_kmeans(X, 2, n_init=3, random_state=2, sample_size=size)
    assert torch.equal(auto.centers, explicit.centers) and torch.equal(auto.labels, explicit.labels)


def test_auto_does_not_subsample_given_centres() -> None:
    X = blobs(700, 2, 4, noise=1.0, seed=7)
    init = X[:2]
    auto = spherical_kmeans(X, 2, init=init, n_init=1)
    full = spherical_kmeans(X, 2, init=init, n_init=1, sample_size=None)
    assert torch.equal(auto.centers, full.centers)


@pytest.mark.parametrize("value", ["Auto", "all", ""])
def test_an_unknown_sample_size_string_is_rejected(value: str) -> None:
    with pytest.raises(ValueError, match=f"sample_size must be 'auto', None or an int >= n_clusters, got '{value}'"):
        SphericalKMeans(3, sample_size=value).check_params()


def test_restarts_continued_alone_with_bounds_take_the_same_steps_as_the_batched_iterations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With K >= 32 the batched restarts go on one by one with the bounded iterations once few rows move.
    X = blobs(60, 40, 6, noise=1.5, seed=8).to(torch.float64)
    unit = DenseRows(X / X.norm(dim=1, keepdim=True))
    start = kmeans_plus_plus(unit, 40, 3, torch.Generator().manual_seed(0), None)
    settings = lloyd_settings(40, max_iter=100, tol=1e-6, chunk_size=None)
    assert 40 >= lloyd_module._BOUNDED_MIN_CLUSTERS
    hybrid = lloyd(unit, start, settings)
    monkeypatch.setattr(lloyd_module, "_BOUNDED_SWITCH_FRACTION", -1.0)  # never switch: batched to the end
    batched = lloyd(unit, start, settings)
    # The bounded iterations also stop as soon as no label changed (the batched ones need one more pass).
    assert torch.all((batched[1] - hybrid[1] >= 0) & (batched[1] - hybrid[1] <= 1))
    assert torch.allclose(hybrid[0], batched[0], atol=1e-10)
    for r in range(3):
        n = int(hybrid[1][r])
        assert torch.allclose(hybrid[2][r, :n], batched[2][r, :n], rtol=1e-12)
