"""Tests of the batched spherical k-means (propos_losses.kmeans)."""

from __future__ import annotations

import math
import warnings
from typing import Tuple

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from propos_losses.kmeans import ConvergenceWarning, SphericalKMeans, spherical_kmeans

FAST = settings(max_examples=15, deadline=None)


def planted(
    n_per_cluster: int, n_clusters: int, dim: int, noise: float, seed: int, dtype: torch.dtype = torch.float64
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rows scattered around ``n_clusters`` orthogonal directions (well separated), random scales."""
    gen = torch.Generator().manual_seed(seed)
    directions = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))[0][:n_clusters]
    labels = torch.arange(n_clusters).repeat_interleave(n_per_cluster)
    rows = directions[labels] + noise * torch.randn(labels.numel(), dim, generator=gen, dtype=torch.float64)
    scales = torch.rand(labels.numel(), 1, generator=gen, dtype=torch.float64) * 4 + 0.5
    return (rows * scales).to(dtype), labels


def random_rows(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def unit(X: torch.Tensor) -> torch.Tensor:
    return X / X.norm(dim=1, keepdim=True)


def cosine_inertia(X: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor) -> float:
    """Literal oracle: sum_i (1 - cos(x_i, c_{a_i}))."""
    return float((1 - (unit(X) * unit(centers)[labels]).sum(dim=1)).sum())


def assert_labels_consistent_with_centres(X: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor) -> None:
    """Every row's centre is a most similar centre (ties allowed)."""
    sims = unit(X) @ centers.t()
    own = sims.gather(1, labels.view(-1, 1)).squeeze(1)
    assert torch.all(own >= sims.max(dim=1).values - 1e-12)


# --------------------------------------------------------------------------- quality


def test_planted_well_separated_clusters_are_recovered_exactly() -> None:
    X, truth = planted(40, 5, 16, noise=0.1, seed=0)
    result = spherical_kmeans(X, 5, random_state=0)
    assert normalized_mutual_info_score(truth, result.labels) == pytest.approx(1.0)
    assert adjusted_rand_score(truth, result.labels) == pytest.approx(1.0)


def test_cosine_inertia_is_no_worse_than_sklearn_kmeans_on_normalised_data() -> None:
    # Overlapping clusters, so that restarts and initialisation matter.
    X, _ = planted(60, 8, 10, noise=0.4, seed=1)
    X_unit = unit(X).numpy()
    reference = KMeans(8, n_init=10, random_state=0).fit(X_unit)
    # Score sklearn's partition with its best spherical centres (normalised means).
    sk_labels = torch.from_numpy(reference.labels_).long()
    sk_centers = torch.zeros(8, 10, dtype=torch.float64).index_add_(0, sk_labels, unit(X))
    sk_inertia = cosine_inertia(X, sk_centers, sk_labels)
    ours = spherical_kmeans(X, 8, random_state=0, tol=0.0)
    assert ours.inertia <= sk_inertia * 1.01


def test_inertia_is_the_sum_of_one_minus_cosine_to_the_assigned_centre() -> None:
    X = random_rows(80, 5, seed=2)
    km = SphericalKMeans(4, random_state=0).fit(X)
    assert km.inertia_ == pytest.approx(cosine_inertia(X, km.cluster_centers_, km.labels_), rel=1e-12)
    assert torch.allclose(km.cluster_centers_.norm(dim=1), torch.ones(4, dtype=torch.float64))


def test_single_cluster_centre_is_the_normalised_mean_direction() -> None:
    X = random_rows(30, 4, seed=3) + 2.0
    km = SphericalKMeans(1, random_state=0).fit(X)
    expected = unit(unit(X).sum(dim=0, keepdim=True))
    assert torch.allclose(km.cluster_centers_, expected, atol=1e-12)
    assert torch.equal(km.labels_, torch.zeros(30, dtype=torch.long))


def test_positive_rescaling_of_rows_leaves_the_result_unchanged() -> None:
    X = random_rows(60, 5, seed=4)
    scales = torch.rand(60, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 10 + 0.1
    a = spherical_kmeans(X, 4, random_state=7)
    b = spherical_kmeans(X * scales, 4, random_state=7)
    assert torch.equal(a.labels, b.labels)
    assert torch.allclose(a.centers, b.centers, atol=1e-12)


# --------------------------------------------------------------------------- invariants


@FAST
@given(
    n=st.integers(8, 60),
    k=st.integers(1, 6),
    dim=st.integers(2, 6),
    seed=st.integers(0, 2**16),
    n_init=st.integers(1, 4),
)
def test_inertia_never_increases_across_iterations(n: int, k: int, dim: int, seed: int, n_init: int) -> None:
    X = random_rows(n, dim, seed)
    km = SphericalKMeans(k, n_init=n_init, random_state=seed, tol=0.0).fit(X)
    history = torch.tensor(km.inertia_history_, dtype=torch.float64)
    assert history.numel() == km.n_iter_ >= 1
    slack = 1e-12 * n
    assert torch.all(history[1:] <= history[:-1] + slack)
    assert km.inertia_ <= history[-1] + slack


@FAST
@given(n=st.integers(6, 50), k=st.integers(1, 5), seed=st.integers(0, 2**16), chunk=st.integers(1, 60))
@example(n=8, k=5, seed=3600, chunk=2)  # two restarts tied at one optimum, numbered differently when chunked
def test_chunked_and_unchunked_runs_give_the_same_clustering(n: int, k: int, seed: int, chunk: int) -> None:
    X = random_rows(n, 4, seed)
    whole = SphericalKMeans(k, n_init=3, random_state=seed).fit(X)
    chunked = SphericalKMeans(k, n_init=3, random_state=seed, chunk_size=chunk).fit(X)
    # The same partition; when two restarts reach the same optimum with their clusters in another
    # order (tied within rounding, which chunking changes), the numbering may differ (n=8, K=5, seed=3600).
    assert adjusted_rand_score(whole.labels_, chunked.labels_) == pytest.approx(1.0)
    order = {int(a): int(b) for a, b in zip(whole.labels_, chunked.labels_)}
    used = sorted(order)
    assert torch.allclose(whole.cluster_centers_[used], chunked.cluster_centers_[[order[c] for c in used]], atol=1e-10)
    assert whole.inertia_ == pytest.approx(chunked.inertia_, rel=1e-10)


@FAST
@given(n=st.integers(10, 50), k=st.integers(1, 5), seed=st.integers(0, 2**16), restarts=st.integers(2, 4))
def test_batched_restarts_equal_the_best_of_separate_runs(n: int, k: int, seed: int, restarts: int) -> None:
    X = random_rows(n, 3, seed)
    gen = torch.Generator().manual_seed(seed)
    init = torch.stack([X[torch.randperm(n, generator=gen)[:k]] for _ in range(restarts)])
    batched = SphericalKMeans(k, init=init, tol=0.0).fit(X)
    separate = [SphericalKMeans(k, n_init=1, init=init[r], tol=0.0).fit(X) for r in range(restarts)]
    inertias = [run.inertia_ for run in separate]
    # Restarts that reach the same optimum (up to rounding) are tied: the first one wins.
    best = next(run for run in separate if run.inertia_ <= min(inertias) * (1 + 1e-12))
    assert batched.inertia_ == pytest.approx(min(inertias), rel=1e-10)
    assert batched.restart_inertias_ == pytest.approx(inertias, rel=1e-10)
    assert torch.allclose(batched.cluster_centers_, best.cluster_centers_, atol=1e-10)


@FAST
@given(n=st.integers(10, 50), k=st.integers(2, 5), seed=st.integers(0, 2**16))
def test_permuting_the_initial_centres_permutes_the_result(n: int, k: int, seed: int) -> None:
    X = random_rows(n, 4, seed)
    gen = torch.Generator().manual_seed(seed)
    init = X[torch.randperm(n, generator=gen)[:k]]
    perm = torch.randperm(k, generator=gen)
    a = SphericalKMeans(k, n_init=1, init=init).fit(X)
    b = SphericalKMeans(k, n_init=1, init=init[perm]).fit(X)
    assert torch.allclose(b.cluster_centers_, a.cluster_centers_[perm], atol=1e-12)
    assert torch.equal(perm[b.labels_], a.labels_)
    assert b.n_iter_ == a.n_iter_


def test_float32_and_float64_agree_on_well_separated_data() -> None:
    X64, truth = planted(30, 4, 8, noise=0.1, seed=6)
    init = X64[[0, 30, 60, 90]]
    a = spherical_kmeans(X64, 4, n_init=1, init=init)
    b = spherical_kmeans(X64.float(), 4, n_init=1, init=init.float())
    assert b.centers.dtype == torch.float32
    assert torch.equal(a.labels, b.labels)
    assert torch.allclose(a.centers, b.centers.double(), atol=1e-5)
    assert b.inertia == pytest.approx(a.inertia, rel=1e-4)
    # With k-means++ the sampled rows may differ (the potentials round differently): same partition.
    c = spherical_kmeans(X64.float(), 4, random_state=3)
    assert adjusted_rand_score(truth, c.labels) == pytest.approx(1.0)
    assert c.inertia == pytest.approx(a.inertia, rel=1e-4)


def test_half_precision_input_is_computed_in_float32() -> None:
    X, truth = planted(20, 3, 8, noise=0.05, seed=7, dtype=torch.float16)
    result = spherical_kmeans(X, 3, random_state=0)
    assert result.centers.dtype == torch.float32
    assert adjusted_rand_score(truth, result.labels) == pytest.approx(1.0)


def test_same_seed_gives_identical_results() -> None:
    X = random_rows(100, 6, seed=8)
    a = SphericalKMeans(5, random_state=11).fit(X)
    b = SphericalKMeans(5, random_state=11).fit(X)
    assert torch.equal(a.labels_, b.labels_)
    assert torch.equal(a.cluster_centers_, b.cluster_centers_)
    assert a.inertia_ == b.inertia_ and a.n_iter_ == b.n_iter_


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_every_restart_reaches_at_least_the_quality_of_its_initial_centres(init: str) -> None:
    X = random_rows(120, 5, seed=9)
    km = SphericalKMeans(6, n_init=4, random_state=1, init=init).fit(X)
    assert len(km.restart_inertias_) == 4
    assert km.inertia_ <= min(km.restart_inertias_) * (1 + 1e-12)
    assert km.inertia_ <= km.inertia_history_[0]


@FAST
@given(n=st.integers(10, 60), k=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_a_loose_tol_still_returns_a_fixed_point_of_lloyd(n: int, k: int, seed: int) -> None:
    # tol only decides when a restart leaves the batch; the winner is refined to convergence.
    X = random_rows(n, 4, seed)
    km = SphericalKMeans(k, n_init=3, tol=0.5, random_state=seed).fit(X)
    assert km.n_iter_ < 300
    means = torch.zeros(k, 4, dtype=torch.float64).index_add_(0, km.labels_, unit(X))
    assert torch.allclose(km.cluster_centers_, unit(means), atol=1e-9)


# --------------------------------------------------------------------------- empty clusters


@pytest.mark.parametrize(
    "n_distinct, n_copies, k", [(3, 4, 8), (5, 2, 10), (1, 6, 6), (12, 1, 12), (4, 3, 11), (4, 3, 4)]
)
def test_duplicated_rows_leave_clusters_empty_only_with_fewer_distinct_rows_than_k_and_warn(
    n_distinct: int, n_copies: int, k: int
) -> None:
    # scikit-learn's convention: labels_ are the assignment to the final centres (== predict(X)),
    # and fewer distinct clusters than K is a ConvergenceWarning, not silently "fixed" labels.
    X = random_rows(n_distinct, 3, seed=n_distinct).repeat(n_copies, 1)
    for init in ("k-means++", "random"):
        if n_distinct < k:
            with pytest.warns(
                ConvergenceWarning, match=rf"distinct clusters \({n_distinct}\) found smaller than n_clusters \({k}\)"
            ):
                km = SphericalKMeans(k, n_init=3, random_state=0, init=init).fit(X)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("error", ConvergenceWarning)
                km = SphericalKMeans(k, n_init=3, random_state=0, init=init).fit(X)
        counts = torch.bincount(km.labels_, minlength=k)
        assert int((counts > 0).sum()) == min(n_distinct, k)
        assert torch.equal(km.predict(X), km.labels_)
        assert_labels_consistent_with_centres(X, km.cluster_centers_, km.labels_)
        assert km.inertia_ == pytest.approx(cosine_inertia(X, km.cluster_centers_, km.labels_), abs=1e-12)
        assert km.inertia_ >= 0


def test_scikit_learn_filters_catch_the_convergence_warning() -> None:
    from sklearn.exceptions import ConvergenceWarning as SklearnConvergenceWarning

    X = random_rows(2, 3, seed=4).repeat(3, 1)
    with pytest.warns(SklearnConvergenceWarning):
        SphericalKMeans(4, n_init=2, random_state=0).fit(X)


def test_identical_initial_centres_are_reseeded_into_distinct_non_empty_clusters() -> None:
    X, _ = planted(20, 4, 6, noise=0.05, seed=10)
    init = unit(X[:1]).repeat(4, 1)  # every centre on the same row: three clusters start empty
    km = SphericalKMeans(4, n_init=1, init=init, tol=0.0).fit(X)
    assert torch.all(torch.bincount(km.labels_, minlength=4) > 0)
    gaps = torch.cdist(km.cluster_centers_, km.cluster_centers_) + torch.eye(4, dtype=torch.float64)
    assert torch.all(gaps > 1e-6)
    # Re-seeding only ever lowers the objective.
    history = torch.tensor(km.inertia_history_)
    assert torch.all(history[1:] <= history[:-1] + 1e-12)


@FAST
@given(n_distinct=st.integers(1, 6), extra=st.integers(0, 6), seed=st.integers(0, 2**16), data=st.data())
def test_no_cluster_is_empty_when_there_are_at_least_k_distinct_rows(
    n_distinct: int, extra: int, seed: int, data: st.DataObject
) -> None:
    gen = torch.Generator().manual_seed(seed)
    distinct = torch.randn(n_distinct, 3, generator=gen, dtype=torch.float64)
    X = distinct[torch.cat([torch.arange(n_distinct), torch.randint(0, n_distinct, (extra,), generator=gen)])]
    k = data.draw(st.integers(1, X.shape[0]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        km = SphericalKMeans(k, n_init=2, random_state=seed).fit(X)
    non_empty = int((torch.bincount(km.labels_, minlength=k) > 0).sum())
    assert non_empty == min(k, n_distinct)
    assert any(issubclass(w.category, ConvergenceWarning) for w in caught) == (n_distinct < k)
    assert torch.equal(km.predict(X), km.labels_)
    assert_labels_consistent_with_centres(X, km.cluster_centers_, km.labels_)


# --------------------------------------------------------------------------- interface


def test_predict_and_transform_are_consistent_with_fit() -> None:
    X = random_rows(90, 5, seed=12)
    km = SphericalKMeans(4, random_state=2)
    labels = km.fit_predict(X)
    assert torch.equal(labels, km.labels_)
    assert torch.equal(km.predict(X), km.labels_)
    sims = km.transform(X)
    assert sims.shape == (90, 4)
    assert torch.allclose(sims, unit(X) @ km.cluster_centers_.t(), atol=1e-12)
    assert torch.equal(sims.argmax(dim=1), km.labels_)
    assert km.inertia_ == pytest.approx(float((1 - sims.max(dim=1).values).sum()), rel=1e-12)


def test_numpy_input_gives_numpy_output_equal_to_the_torch_result() -> None:
    X = random_rows(70, 4, seed=13)
    from_torch = SphericalKMeans(3, random_state=4).fit(X)
    from_numpy = SphericalKMeans(3, random_state=4).fit(X.numpy())
    assert isinstance(from_numpy.cluster_centers_, np.ndarray) and isinstance(from_numpy.labels_, np.ndarray)
    assert from_numpy.labels_.dtype == np.int64
    np.testing.assert_array_equal(from_numpy.labels_, from_torch.labels_.numpy())
    np.testing.assert_allclose(from_numpy.cluster_centers_, from_torch.cluster_centers_.numpy())
    assert isinstance(from_numpy.predict(X.numpy()), np.ndarray)
    assert isinstance(from_numpy.predict(X), torch.Tensor)
    result = spherical_kmeans(X.numpy().astype(np.float32), 3, random_state=4)
    assert isinstance(result.centers, np.ndarray) and result.centers.dtype == np.float32


def test_function_and_estimator_agree() -> None:
    X = random_rows(50, 4, seed=14)
    km = SphericalKMeans(3, n_init=2, max_iter=50, tol=1e-3, random_state=5).fit(X)
    result = spherical_kmeans(X, 3, n_init=2, max_iter=50, tol=1e-3, random_state=5)
    assert torch.equal(result.labels, km.labels_)
    assert torch.equal(result.centers, km.cluster_centers_)
    assert (result.inertia, result.n_iter) == (km.inertia_, km.n_iter_)


def test_max_iter_bounds_the_number_of_iterations() -> None:
    X = random_rows(200, 8, seed=15)
    km = SphericalKMeans(10, n_init=2, max_iter=2, tol=0.0, random_state=0).fit(X)
    assert km.n_iter_ <= 2 and len(km.inertia_history_) == km.n_iter_


def test_single_set_of_initial_centres_warns_and_runs_once() -> None:
    X = random_rows(40, 3, seed=16)
    with pytest.warns(RuntimeWarning, match="identical"):
        km = SphericalKMeans(3, n_init=5, init=X[:3]).fit(X)
    assert len(km.restart_inertias_) == 1


def test_verbose_reports_progress(capsys: pytest.CaptureFixture[str]) -> None:
    spherical_kmeans(random_rows(30, 3, seed=17), 2, random_state=0, verbose=True)
    out = capsys.readouterr().out
    assert "iteration 1" in out and "best restart" in out
    spherical_kmeans(random_rows(30, 3, seed=17), 2, random_state=0)
    assert capsys.readouterr().out == ""


# --------------------------------------------------------------------------- subsampled restarts


def test_sample_size_at_least_n_is_the_unsampled_run() -> None:
    X, _ = planted(30, 4, 6, noise=0.5, seed=21)
    full = SphericalKMeans(4, n_init=3, random_state=5).fit(X)
    same = SphericalKMeans(4, n_init=3, random_state=5, sample_size=X.shape[0]).fit(X)
    assert torch.equal(full.cluster_centers_, same.cluster_centers_)
    assert full.inertia_ == same.inertia_ and full.n_iter_ == same.n_iter_


def test_sampled_restarts_refine_the_winner_on_every_row() -> None:
    X, truth = planted(400, 6, 12, noise=0.6, seed=22)
    km = SphericalKMeans(6, n_init=4, random_state=1, sample_size=300).fit(X)
    full = SphericalKMeans(6, n_init=4, random_state=1).fit(X)
    # The restarts saw 300 rows; the winner was then iterated on all 2,400 to a Lloyd fixed point
    # of the full data (tol: the last step barely moved), and its labels match its centres.
    assert len(km.restart_inertias_) == 4
    assert km.labels_.shape == (2400,)
    assert_labels_consistent_with_centres(X, km.cluster_centers_, km.labels_)
    assert km.inertia_ == pytest.approx(cosine_inertia(X, km.cluster_centers_, km.labels_), rel=1e-12)
    assert km.inertia_history_[-1] >= km.inertia_ - 1e-9
    assert km.inertia_ <= full.inertia_ * 1.001
    assert normalized_mutual_info_score(truth, km.labels_) == pytest.approx(
        normalized_mutual_info_score(truth, full.labels_), abs=0.01
    )


def test_sampled_restarts_are_deterministic_for_a_seed_and_depend_on_it() -> None:
    X = random_rows(500, 5, seed=23)
    first = spherical_kmeans(X, 7, n_init=3, random_state=2, sample_size=100)
    again = spherical_kmeans(X, 7, n_init=3, random_state=2, sample_size=100)
    other = spherical_kmeans(X, 7, n_init=3, random_state=3, sample_size=100)
    assert torch.equal(first.centers, again.centers) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.centers, other.centers)


# --------------------------------------------------------------------------- bad input

GOOD = random_rows(10, 3, seed=18)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"n_clusters": 0}, ValueError, "n_clusters"),
        ({"n_clusters": 2.5}, TypeError, "n_clusters"),
        ({"n_clusters": 11}, ValueError, "n_samples=10 should be >= n_clusters=11"),
        ({"n_init": 0}, ValueError, "n_init"),
        ({"max_iter": 0}, ValueError, "max_iter"),
        ({"tol": -1e-3}, ValueError, "tol"),
        ({"tol": math.nan}, ValueError, "tol"),
        ({"seed": -1}, ValueError, "seed must be an int in"),
        ({"random_state": -1}, ValueError, "random_state must be an int in"),
        ({"random_state": 1.5}, ValueError, "random_state=1.5 cannot be used to seed"),
        ({"random_state": "0"}, ValueError, "random_state='0' cannot be used to seed"),
        ({"random_state": 0, "seed": 0}, ValueError, "pass random_state only"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"init": "kmeans"}, ValueError, "init"),
        ({"init": [[1.0, 0.0, 0.0]]}, TypeError, "init"),
        ({"init": torch.ones(3, 3, dtype=torch.float64)}, ValueError, "init"),
        ({"init": torch.ones(2, 4, dtype=torch.float64)}, ValueError, "init"),
        ({"init": torch.ones(2, 2, 2, 3, dtype=torch.float64)}, ValueError, "init"),
        ({"init": torch.ones(2, 3, dtype=torch.long)}, TypeError, "init"),
        ({"init": torch.zeros(2, 3, dtype=torch.float64)}, ValueError, "zero"),
        ({"verbose": 1}, TypeError, "verbose"),
        ({"sample_size": 0}, ValueError, "sample_size"),
        ({"sample_size": 1}, ValueError, "sample_size must be >= n_clusters=2, got 1"),
        ({"sample_size": 5.0}, TypeError, "sample_size"),
    ],
)
@pytest.mark.filterwarnings("ignore:propos_losses.SphericalKMeans\\(seed=:FutureWarning")
def test_bad_arguments_raise(kwargs: dict, error: type, match: str) -> None:
    arguments = {"n_clusters": 2, "n_init": 1, **kwargs}
    with pytest.raises(error, match=match):
        spherical_kmeans(GOOD, **arguments)


@pytest.mark.parametrize(
    "X, error, match",
    [
        (GOOD[0], ValueError, "2-D"),
        (GOOD.view(2, 5, 3), ValueError, "2-D"),
        (torch.ones(4, 0, dtype=torch.float64), ValueError, "feature"),
        (torch.cat([GOOD, torch.full((1, 3), math.nan, dtype=torch.float64)]), ValueError, "Input X contains NaN"),
        (
            torch.cat([GOOD, torch.full((1, 3), math.inf, dtype=torch.float64)]),
            ValueError,
            r"Input X contains infinity or a value too large for dtype\('float64'\)",
        ),
        (torch.zeros(10, 3, dtype=torch.float64), ValueError, "no row that is not all zero"),
        (GOOD.to(torch.complex128), ValueError, "Complex data not supported"),
        ([[1.0, 2.0], [3.0]], ValueError, "2-D array of numbers"),  # ragged; rectangular lists are accepted
        ("not an array", TypeError, "numpy"),
    ],
)
def test_bad_data_raises(X: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        spherical_kmeans(X, 2, n_init=1)  # type: ignore[arg-type]


def test_bad_parameters_raise_at_fit_naming_the_value_and_leave_a_fitted_estimator_unchanged() -> None:
    km = SphericalKMeans(3, n_init=0)  # the constructor only stores (scikit-learn's convention)
    with pytest.raises(ValueError, match="n_init must be >= 1, got 0"):
        km.fit(GOOD)
    with pytest.raises(ValueError, match="n_init must be >= 1, got 0"):
        km.check_params()
    fitted = SphericalKMeans(3, n_init=1, random_state=0).fit(GOOD)
    centers, labels = fitted.cluster_centers_.clone(), fitted.labels_.clone()
    fitted.set_params(tol=-1.0)
    with pytest.raises(ValueError, match="tol must be >= 0"):
        fitted.fit(GOOD[:5])
    assert torch.equal(fitted.cluster_centers_, centers) and torch.equal(fitted.labels_, labels)


def test_predict_before_fit_raises() -> None:
    with pytest.raises(ValueError, match="not fitted"):
        SphericalKMeans(2).predict(GOOD)
    with pytest.raises(ValueError, match="not fitted"):
        SphericalKMeans(2).transform(GOOD)


def test_predict_with_a_different_number_of_features_raises() -> None:
    km = SphericalKMeans(2, n_init=1, random_state=0).fit(GOOD)
    with pytest.raises(ValueError, match="X has 5 features, but SphericalKMeans is expecting 3 features"):
        km.predict(torch.ones(4, 5, dtype=torch.float64))


def test_integer_and_boolean_data_are_clustered_as_float64_like_kmeans() -> None:
    X = (GOOD.abs() * 10).round().long() + 1
    as_float = SphericalKMeans(2, random_state=0).fit(X.to(torch.float64))
    for data in (X, X.numpy(), X.numpy().astype(np.uint8), X.numpy().astype(np.int32)):
        km = SphericalKMeans(2, random_state=0).fit(data)
        assert np.array_equal(np.asarray(km.labels_), as_float.labels_.numpy())
        assert km.cluster_centers_.dtype in (torch.float64, np.float64)
    flags = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 0]], dtype=bool)
    assert SphericalKMeans(2, random_state=0).fit(flags).cluster_centers_.dtype == np.float64


def test_rows_with_huge_finite_values_are_normalised_not_rejected() -> None:
    X = random_rows(20, 3, seed=19)
    huge = X.clone()
    huge[0] *= 1e306  # the norm of this row overflows float64
    a = spherical_kmeans(X, 2, random_state=0)
    b = spherical_kmeans(huge, 2, random_state=0)
    assert torch.equal(a.labels, b.labels)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    scales=st.lists(st.sampled_from(["tiny", "small", "one", "large", "huge"]), min_size=1, max_size=12),
    zero_row=st.booleans(),
    double=st.booleans(),
)
def test_kmeans_rows_follow_the_package_row_normaliser(seed: int, scales: list, zero_row: bool, double: bool) -> None:
    """One rule: k-means' row normalisation equals ``normalize_features`` (a few ulp), zero rows stay zero.

    Ordinary rows take a plain division by their norm (the k-means' fast path); rows whose squared
    norm over- or underflows ("tiny", "huge") go through ``normalize_features`` itself.
    """
    from propos_losses.kmeans._rows import normalise_rows
    from propos_losses.prototypes import normalize_features

    dtype = torch.float64 if double else torch.float32
    exponent = {"tiny": -200 if double else -25, "small": -3, "one": 0, "large": 3, "huge": 300 if double else 30}
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(len(scales), 6, generator=generator, dtype=torch.float64)
    X = (X * torch.tensor([10.0 ** exponent[s] for s in scales], dtype=torch.float64).unsqueeze(1)).to(dtype)
    if zero_row:
        X[0] = 0
    out = normalise_rows("X", X, allow_zero=True)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(out, normalize_features(X), rtol=4 * eps, atol=4 * eps)
    if zero_row:
        assert bool((out[0] == 0).all())
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unit_rows_are_used_as_they_are_and_other_rows_are_normalised(dtype: torch.dtype) -> None:
    from propos_losses.kmeans._rows import normalise_rows

    X = random_rows(50, 7, seed=21).to(dtype)
    X = X / torch.linalg.vector_norm(X, dim=1, keepdim=True)
    assert normalise_rows("X", X) is X  # no copy of data that is already unit-norm
    stretched = X.clone()
    stretched[3] *= 1 + 1e-4  # visibly off the sphere: divided by its norm
    out = normalise_rows("X", stretched)
    assert out is not stretched
    assert torch.allclose(torch.linalg.vector_norm(out, dim=1), torch.ones(50, dtype=dtype), atol=1e-6)
    # Either way the clustering sees the same directions.
    a, b = spherical_kmeans(X, 3, random_state=0), spherical_kmeans(stretched, 3, random_state=0)
    assert torch.equal(a.labels, b.labels)
