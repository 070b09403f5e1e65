"""SphericalKMeans follows scikit-learn's estimator conventions (``random_state``, ``seed`` deprecated,
feature names, ``set_output``, pipelines), and works without scikit-learn installed."""

from __future__ import annotations

import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from propos_losses import SphericalKMeans, spherical_kmeans
from propos_losses.kmeans import NotFittedError

sklearn = pytest.importorskip("sklearn", minversion="1.6")  # estimator tags
from sklearn.base import clone  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402


def data(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(c, 0.1, (20, 3)) for c in np.eye(3) * 3])


def test_pipeline_fits_predicts_and_scores() -> None:
    X = data()
    pipeline = make_pipeline(StandardScaler(), SphericalKMeans(n_clusters=3, random_state=0)).fit(X)
    labels = pipeline.predict(X)
    assert labels.shape == (60,) and len(set(labels.tolist())) == 3
    assert pipeline.score(X) <= 0


def test_clone_get_params_set_params_and_repr() -> None:
    km = SphericalKMeans(n_clusters=3, random_state=4, n_init=2)
    copy = clone(km)
    assert copy.get_params() == km.get_params() and copy is not km
    assert clone(SphericalKMeans(n_clusters=np.int64(3), random_state=np.int64(4))).random_state == 4
    assert repr(km) == "SphericalKMeans(n_clusters=3, n_init=2, random_state=4)"
    assert km.set_params(n_init=5) is km and km.n_init == 5
    km.set_params(n_init=0)  # stored; fit checks it (scikit-learn's convention)
    with pytest.raises(ValueError, match="n_init must be >= 1, got 0"):
        km.fit(data())
    with pytest.raises(ValueError, match="Invalid parameter"):
        km.set_params(n_neighbours=0)


def test_default_number_of_clusters_is_kmeans_default() -> None:
    from sklearn.cluster import KMeans

    assert SphericalKMeans().n_clusters == KMeans().n_clusters == 8
    assert len(np.unique(SphericalKMeans(random_state=0).fit_predict(data()))) == 8


def test_fit_accepts_y_and_fit_transform_score_predict_agree() -> None:
    X = data(1)
    km = SphericalKMeans(n_clusters=3, random_state=0)
    similarities = km.fit_transform(X, np.zeros(60))
    assert similarities.shape == (60, 3)
    assert np.array_equal(similarities.argmax(axis=1), km.predict(X))
    assert km.score(X) == pytest.approx(-km.inertia_, rel=1e-9)
    assert np.array_equal(SphericalKMeans(n_clusters=3, random_state=0).fit_predict(X, None), km.labels_)


def test_use_before_fit_is_both_value_and_attribute_error() -> None:
    km = SphericalKMeans(n_clusters=2)
    for method in (km.predict, km.transform, km.score):
        with pytest.raises(NotFittedError) as info:
            method(data())
        assert isinstance(info.value, ValueError) and isinstance(info.value, AttributeError)
        assert isinstance(info.value, sklearn.exceptions.NotFittedError)
    with pytest.raises(NotFittedError):
        km.get_feature_names_out()


# --------------------------------------------------------------------------- random_state and seed


@pytest.mark.parametrize("seed", [np.int64(3), np.int32(3), np.uint8(3), 3])
def test_integer_random_states_of_any_type_give_the_same_result(seed: object) -> None:
    X = data(2)
    reference = SphericalKMeans(n_clusters=3, random_state=3).fit(X)
    assert np.array_equal(SphericalKMeans(n_clusters=3, random_state=seed).fit(X).labels_, reference.labels_)
    assert spherical_kmeans(X, 3, random_state=seed).inertia == pytest.approx(reference.inertia_)


def test_deprecated_seed_warns_and_gives_the_random_state_result() -> None:
    X = data(2)
    reference = SphericalKMeans(n_clusters=3, n_init=2, random_state=7).fit(X)
    with pytest.warns(FutureWarning, match=r"SphericalKMeans\(seed=\.\.\.\) is deprecated .* use random_state") as info:
        old = SphericalKMeans(n_clusters=3, n_init=2, seed=7).fit(X)
    assert info[0].filename == __file__  # points at the caller's line
    assert np.array_equal(old.cluster_centers_, reference.cluster_centers_)
    with pytest.warns(FutureWarning, match="use random_state") as info:
        result = spherical_kmeans(X, 3, n_init=2, seed=7)
    assert info[0].filename == __file__
    assert np.array_equal(result.centers, reference.cluster_centers_)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # random_state alone: no warning
        SphericalKMeans(n_clusters=3, n_init=2, random_state=7).fit(X)


def test_random_state_objects_are_drawn_from_once_per_fit_like_scikit_learn() -> None:
    X = np.random.default_rng(3).normal(size=(200, 5))
    for make in (np.random.RandomState, np.random.default_rng):
        shared = make(5)
        # One iteration from one k-means++ start: the centres show which rows the start drew.
        first = SphericalKMeans(8, n_init=1, max_iter=1, random_state=shared).fit(X)
        second = SphericalKMeans(8, n_init=1, max_iter=1, random_state=shared).fit(X)
        assert not np.array_equal(first.cluster_centers_, second.cluster_centers_)  # the state moved on
        again = SphericalKMeans(8, n_init=1, max_iter=1, random_state=make(5)).fit(X)
        assert np.array_equal(again.cluster_centers_, first.cluster_centers_)  # same state, same draw


def test_random_state_none_draws_from_numpy_global_state_like_scikit_learn() -> None:
    X = np.random.default_rng(4).normal(size=(200, 5))
    state = np.random.get_state()
    try:
        np.random.seed(11)
        first = SphericalKMeans(8, n_init=1, max_iter=1).fit(X)
        np.random.seed(11)
        again = SphericalKMeans(8, n_init=1, max_iter=1).fit(X)
        other = SphericalKMeans(8, n_init=1, max_iter=1).fit(X)
    finally:
        np.random.set_state(state)
    assert np.array_equal(first.cluster_centers_, again.cluster_centers_)
    assert not np.array_equal(first.cluster_centers_, other.cluster_centers_)


# --------------------------------------------------------------------------- feature names, set_output


def test_feature_names_are_stored_and_checked_like_scikit_learn() -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(data(5), columns=["a", "b", "c"])
    km = SphericalKMeans(3, random_state=0).fit(frame)
    assert km.feature_names_in_.tolist() == ["a", "b", "c"]
    assert km.get_feature_names_out().tolist() == ["sphericalkmeans0", "sphericalkmeans1", "sphericalkmeans2"]
    with pytest.raises(ValueError, match="The feature names should match those that were passed during fit"):
        km.predict(frame.rename(columns={"a": "x"}))
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        km.predict(frame.to_numpy())
    with pytest.raises(ValueError, match="input_features is not equal to feature_names_in_"):
        km.get_feature_names_out(["x", "b", "c"])
    refitted = km.fit(frame.to_numpy())
    assert not hasattr(refitted, "feature_names_in_")


def test_set_output_pandas_gives_named_similarity_columns_with_the_input_index() -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(data(6), columns=["a", "b", "c"], index=np.arange(100, 160))
    km = SphericalKMeans(3, random_state=0).set_output(transform="pandas")
    out = km.fit_transform(frame)
    assert isinstance(out, pd.DataFrame)
    assert out.columns.tolist() == ["sphericalkmeans0", "sphericalkmeans1", "sphericalkmeans2"]
    assert out.index.tolist() == list(range(100, 160))
    np.testing.assert_allclose(out.to_numpy(), SphericalKMeans(3, random_state=0).fit(frame).transform(frame))
    pipeline = make_pipeline(StandardScaler(), SphericalKMeans(3, random_state=0)).set_output(transform="pandas")
    assert isinstance(pipeline.fit_transform(frame), pd.DataFrame)


# --------------------------------------------------------------------------- misc


def test_lists_and_numpy_float16_are_accepted_like_arrays_and_torch_half() -> None:
    X = data(3)
    from_list = SphericalKMeans(n_clusters=3, random_state=0).fit(X.tolist())
    assert isinstance(from_list.labels_, np.ndarray)
    assert np.array_equal(from_list.labels_, SphericalKMeans(n_clusters=3, random_state=0).fit(X).labels_)
    half_numpy = SphericalKMeans(n_clusters=3, random_state=0).fit(X.astype(np.float16))
    half_torch = SphericalKMeans(n_clusters=3, random_state=0).fit(torch.from_numpy(X.astype(np.float16)))
    assert half_numpy.cluster_centers_.dtype == np.float32
    assert np.array_equal(half_numpy.labels_, half_torch.labels_.numpy())


def test_pickle_round_trip_of_a_fitted_estimator() -> None:
    X = data(4)
    km = SphericalKMeans(n_clusters=3, random_state=0).fit(X)
    restored = pickle.loads(pickle.dumps(km))
    assert np.array_equal(restored.predict(X), km.predict(X))


WITHOUT_SKLEARN = """
import sys
sys.modules["sklearn"] = None  # import sklearn raises ImportError
import numpy as np
import propos_losses
from propos_losses import SphericalKMeans
km = SphericalKMeans(3, random_state=0, n_init=2)
assert repr(km) == "SphericalKMeans(n_clusters=3, n_init=2, random_state=0)", repr(km)
X = np.concatenate([np.random.default_rng(0).normal(c, 0.1, (20, 3)) for c in np.eye(3)])
assert sorted(np.bincount(km.fit_predict(X)).tolist()) == [20, 20, 20]
assert km.set_params(n_init=1) is km and km.get_params()["n_init"] == 1
assert km.set_output(transform="default") is km
try:
    km.set_output(transform="pandas")
except ValueError as error:
    assert "needs scikit-learn" in str(error)
else:
    raise AssertionError("set_output(transform='pandas') without scikit-learn should raise")
assert "sklearn" not in sys.modules or sys.modules["sklearn"] is None
print("ok")
"""


def test_package_imports_and_clusters_without_scikit_learn() -> None:
    result = subprocess.run([sys.executable, "-c", WITHOUT_SKLEARN], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"
