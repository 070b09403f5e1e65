"""Spherical k-means on sparse input (SciPy and torch) and with sample weights (propos_losses.kmeans)."""

from __future__ import annotations

from typing import Callable, List

import numpy as np
import pytest
import scipy.sparse
import torch

import propos_losses.kmeans._init as init_module
import propos_losses.kmeans._rows as rows_module
from propos_losses import SphericalKMeans, spherical_kmeans
from propos_losses.kmeans._rows import DenseRows, SparseRows, normalise_rows


def documents(n: int, d: int, n_topics: int, seed: int, density: float = 0.05) -> scipy.sparse.csr_matrix:
    """TF-IDF-like rows: each row draws its non-zero terms mostly from its topic's block of columns."""
    rng = np.random.default_rng(seed)
    topic = rng.integers(0, n_topics, size=n)
    block = d // n_topics
    per_row = max(2, int(density * d))
    rows, cols = [], []
    for i, t in enumerate(topic):
        own = rng.integers(t * block, (t + 1) * block, size=per_row)
        noise = rng.integers(0, d, size=max(1, per_row // 4))
        picked = np.unique(np.concatenate([own, noise]))
        rows.append(np.full(picked.size, i))
        cols.append(picked)
    r, c = np.concatenate(rows), np.concatenate(cols)
    values = rng.exponential(1.0, size=r.size)
    return scipy.sparse.csr_matrix((values, (r, c)), shape=(n, d))


SPARSE_FORMS: List[Callable[[scipy.sparse.csr_matrix], object]] = [
    lambda X: X,
    lambda X: X.tocsc(),
    lambda X: scipy.sparse.coo_array(X),
    lambda X: scipy.sparse.csr_array(X),
    lambda X: torch.from_numpy(X.toarray()).to_sparse(),
    lambda X: torch.from_numpy(X.toarray()).to_sparse_csr(),
]


@pytest.mark.parametrize("form", range(len(SPARSE_FORMS)))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sparse_input_gives_the_dense_result(form: int, dtype: type) -> None:
    X = documents(300, 120, 4, seed=form).astype(dtype)
    dense = SphericalKMeans(4, n_init=3, random_state=0).fit(X.toarray())
    sparse = SphericalKMeans(4, n_init=3, random_state=0).fit(SPARSE_FORMS[form](X))
    labels = np.asarray(sparse.labels_)
    centers = np.asarray(sparse.cluster_centers_)
    assert np.array_equal(labels, dense.labels_)
    assert centers.dtype == dtype and not scipy.sparse.issparse(centers)
    np.testing.assert_allclose(centers, dense.cluster_centers_, atol=1e-5 if dtype == np.float32 else 1e-12)
    assert sparse.inertia_ == pytest.approx(dense.inertia_, rel=1e-5 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(
        np.asarray(sparse.transform(SPARSE_FORMS[form](X))), dense.transform(X.toarray()), atol=1e-5
    )
    assert np.array_equal(np.asarray(sparse.predict(SPARSE_FORMS[form](X))), labels)


def test_subsampled_restarts_on_sparse_rows_give_the_dense_result() -> None:
    X = documents(2500, 200, 2, seed=7, density=0.02)  # 2,500 rows > "auto" = 1,024 rows for K = 2
    dense = SphericalKMeans(2, random_state=3).fit(X.toarray())
    sparse = SphericalKMeans(2, random_state=3).fit(X)
    assert np.array_equal(sparse.labels_, dense.labels_)
    assert sparse.inertia_ == pytest.approx(dense.inertia_, rel=1e-10)


def test_integer_counts_in_a_sparse_matrix_are_clustered_as_float64() -> None:
    counts = documents(200, 60, 3, seed=8)
    counts.data = np.ceil(counts.data * 3).astype(np.int64)
    km = SphericalKMeans(3, random_state=0).fit(counts)
    reference = SphericalKMeans(3, random_state=0).fit(counts.toarray().astype(np.float64))
    assert km.cluster_centers_.dtype == np.float64
    assert np.array_equal(km.labels_, reference.labels_)


def test_the_data_set_is_never_densified(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only gathered rows are made dense: sampled candidates (R x (2 + ln K) per step) and re-seeding rows.
    densified: List[int] = []
    original = SparseRows.to_dense

    def recording(self: SparseRows) -> torch.Tensor:
        densified.append(self.n)
        return original(self)

    monkeypatch.setattr(SparseRows, "to_dense", recording)
    X = documents(2000, 300, 5, seed=9, density=0.02)
    SphericalKMeans(5, n_init=4, random_state=0, sample_size=None).fit(X)
    assert densified and max(densified) <= 4 * (2 + int(np.log(5)))
    densified.clear()
    SphericalKMeans(5, n_init=4, random_state=0, init="random").fit(X)
    assert max(densified) <= 4 * 5


def test_sparse_rows_are_normalised_like_dense_rows_even_at_extreme_scales() -> None:
    X = documents(50, 40, 2, seed=10)
    dense = torch.from_numpy(X.toarray())
    for scale in (1.0, 1e300, 1e-300):
        rows = rows_module._normalise_sparse("X", rows_module._scipy_sparse_rows("X", X * scale))
        expected = normalise_rows("X", dense * scale, allow_zero=True)
        torch.testing.assert_close(rows.to_dense(), expected, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("value, match", [(np.nan, "Input X contains NaN"), (np.inf, "Input X contains infinity")])
def test_non_finite_sparse_values_raise_with_scikit_learn_wording(value: float, match: str) -> None:
    X = documents(20, 10, 2, seed=11)
    X.data[3] = value
    with pytest.raises(ValueError, match=match):
        SphericalKMeans(2).fit(X)


def test_empty_documents_count_as_cosine_zero_and_never_become_centres() -> None:
    X = documents(100, 50, 2, seed=12).tolil()
    X[::7] = 0  # documents with no known term: all-zero TF-IDF rows
    X = X.tocsr()
    X.eliminate_zeros()
    km = SphericalKMeans(2, n_init=3, random_state=0).fit(X)
    empty = np.flatnonzero(np.asarray(X.getnnz(axis=1)) == 0)
    assert empty.size == 15
    assert np.all(km.transform(X)[empty] == 0)
    np.testing.assert_allclose(np.linalg.norm(km.cluster_centers_, axis=1), 1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sparse_torch_input_on_cuda_gives_the_cpu_result() -> None:
    X = torch.from_numpy(documents(300, 80, 3, seed=13).toarray()).to_sparse_csr()
    cpu = SphericalKMeans(3, n_init=2, random_state=0).fit(X)
    gpu = SphericalKMeans(3, n_init=2, random_state=0).fit(X.cuda())
    assert gpu.labels_.is_cuda and torch.equal(gpu.labels_.cpu(), cpu.labels_)


# --------------------------------------------------------------------------- sample weights


@pytest.mark.parametrize("sparse", [False, True])
def test_integer_weights_equal_repeated_rows_from_the_same_centres(sparse: bool) -> None:
    # The objective with a weight of w is the objective with w copies: from the same initial centres,
    # Lloyd's iterations are the same steps (k-means++ draws differ; see test_sklearn_estimator_checks.py).
    X = documents(120, 30, 3, seed=14, density=0.2).toarray()
    weights = np.random.default_rng(14).integers(0, 4, size=120)
    repeated = np.repeat(X, weights, axis=0)
    init = X[[0, 40, 80]] + 0.1
    data = scipy.sparse.csr_matrix(X) if sparse else X
    data_repeated = scipy.sparse.csr_matrix(repeated) if sparse else repeated
    weighted = SphericalKMeans(3, init=init, n_init=1, tol=0.0).fit(data, sample_weight=weights)
    copies = SphericalKMeans(3, init=init, n_init=1, tol=0.0).fit(data_repeated)
    np.testing.assert_allclose(weighted.cluster_centers_, copies.cluster_centers_, atol=1e-12)
    assert weighted.inertia_ == pytest.approx(copies.inertia_, rel=1e-10)
    assert np.array_equal(weighted.predict(X), copies.predict(X))
    assert weighted.score(X, sample_weight=weights) == pytest.approx(copies.score(repeated), rel=1e-10)


def test_weighted_k_means_plus_plus_samples_in_proportion_to_the_weights() -> None:
    X = np.eye(4)
    rows = DenseRows(torch.from_numpy(X), weight=torch.tensor([0.0, 1.0, 3.0, 0.0]))
    draws = init_module._sample_rows(rows, None, 1, 8000, torch.Generator().manual_seed(0))[0]
    counts = draws.sum(dim=0)
    assert counts[0] == 0 and counts[3] == 0
    assert float(counts[2] / counts[1]) == pytest.approx(3.0, rel=0.1)


def test_a_row_of_weight_zero_changes_nothing() -> None:
    X = documents(90, 30, 3, seed=15, density=0.2).toarray()
    init = X[[0, 30, 60]]
    weights = np.ones(90)
    weights[5] = 0.0
    X_moved = X.copy()
    X_moved[5] = np.random.default_rng(0).normal(size=30)  # wherever it lies
    a = SphericalKMeans(3, init=init, n_init=1).fit(X, sample_weight=weights)
    b = SphericalKMeans(3, init=init, n_init=1).fit(X_moved, sample_weight=weights)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, atol=1e-12)
    assert a.inertia_ == pytest.approx(b.inertia_, rel=1e-12)


def test_function_takes_sample_weight_and_fit_predict_agrees() -> None:
    X = documents(100, 30, 2, seed=16, density=0.2)
    weights = np.linspace(0.5, 2.0, 100)
    km = SphericalKMeans(2, random_state=1)
    labels = km.fit_predict(X, sample_weight=weights)
    result = spherical_kmeans(X, 2, random_state=1, sample_weight=weights)
    assert np.array_equal(labels, result.labels) and result.inertia == km.inertia_
    assert km.inertia_ == pytest.approx(-km.score(X, sample_weight=weights), rel=1e-12)


@pytest.mark.parametrize(
    "weights, match",
    [
        (np.ones(9), r"sample_weight.shape == \(9,\), expected \(10,\)"),
        (np.ones((10, 1)), r"sample_weight.shape == \(10, 1\), expected \(10,\)"),
        (-np.ones(10), "sample_weight must be non-negative"),
        (np.full(10, np.nan), "sample_weight must be finite"),
        (np.zeros(10), "Sample weights must contain at least one non-zero number"),
    ],
)
def test_bad_sample_weights_raise_before_any_state_changes(weights: np.ndarray, match: str) -> None:
    X = documents(10, 8, 2, seed=17, density=0.5)
    km = SphericalKMeans(2, random_state=0).fit(X)
    centers = km.cluster_centers_.copy()
    with pytest.raises(ValueError, match=match):
        km.fit(X, sample_weight=weights)
    assert np.array_equal(km.cluster_centers_, centers)


def test_sample_weights_are_not_modified() -> None:
    weights = np.linspace(1.0, 2.0, 50)
    copy = weights.copy()
    SphericalKMeans(2, random_state=0).fit(documents(50, 20, 2, seed=18, density=0.3), sample_weight=weights)
    assert np.array_equal(weights, copy)


def test_tfidf_pipeline_recovers_the_topics_of_the_shipped_corpus() -> None:
    pytest.importorskip("sklearn")
    from pathlib import Path

    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline

    from propos_losses import nmi

    lines = (Path(__file__).parent / "data" / "text_corpus.tsv").read_text(encoding="utf-8").splitlines()
    topics, texts = zip(*(line.split("\t", 1) for line in lines))
    pipeline = make_pipeline(TfidfVectorizer(stop_words="english"), SphericalKMeans(3, random_state=0))
    labels = pipeline.fit_predict(list(texts))
    assert nmi(list(topics), labels) == 1.0
    tfidf = pipeline[0].transform(list(texts))
    assert scipy.sparse.issparse(tfidf)
    dense = SphericalKMeans(3, random_state=0).fit(tfidf.toarray())
    assert np.array_equal(dense.labels_, labels)
    assert pipeline[1].inertia_ == pytest.approx(dense.inertia_, rel=1e-12)
