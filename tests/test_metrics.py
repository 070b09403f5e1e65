"""Tests of propos_losses.metrics against scikit-learn and float64 oracles."""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import gammaln
from sklearn.metrics import adjusted_mutual_info_score as sk_ami
from sklearn.metrics import adjusted_rand_score as sk_ari
from sklearn.metrics import normalized_mutual_info_score as sk_nmi
from sklearn.metrics.cluster import contingency_matrix as sk_contingency_matrix

import propos_losses.metrics as metrics_module
from propos_losses._emi import emi_from_sizes as _expected_mutual_information
from propos_losses._emi import emi_windows as _emi_windows
from propos_losses.metrics import (
    ami,
    ari,
    cluster_accuracy,
    contingency_table,
    evaluate_clustering,
    expected_mutual_information,
    nmi,
)

TOL = 1e-9


# --------------------------------------------------------------------------- #
# Strategies and oracles
# --------------------------------------------------------------------------- #


@st.composite
def labelings(draw: st.DrawFn, max_size: int = 120, max_labels: int = 15) -> Tuple[np.ndarray, np.ndarray]:
    """Two labelings of the same length with arbitrary (negative, sparse) integer values."""
    n = draw(st.integers(1, max_size))
    value = st.integers(-(10**6), 10**6)
    alphabet_true = draw(st.lists(value, min_size=1, max_size=max_labels, unique=True))
    alphabet_pred = draw(st.lists(value, min_size=1, max_size=max_labels, unique=True))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    true = np.asarray(alphabet_true, dtype=np.int64)[rng.integers(0, len(alphabet_true), n)]
    pred = np.asarray(alphabet_pred, dtype=np.int64)[rng.integers(0, len(alphabet_pred), n)]
    if draw(st.booleans()):
        # Correlated predictions: copy part of a relabelled truth, so values near 1 are covered.
        keep = rng.random(n) < draw(st.floats(0.0, 1.0))
        pred = np.where(keep, true * 3 + 1, pred)
    return true, pred


def loop_emi(a: List[int], b: List[int]) -> float:
    """EMI written directly from the formula: every cell, every n, float64 log Gamma."""
    n_total = sum(a)
    emi = 0.0
    for ai in a:
        for bj in b:
            for nij in range(max(1, ai + bj - n_total), min(ai, bj) + 1):
                log_p = (
                    gammaln(ai + 1)
                    + gammaln(bj + 1)
                    + gammaln(n_total - ai + 1)
                    + gammaln(n_total - bj + 1)
                    - gammaln(n_total + 1)
                    - gammaln(nij + 1)
                    - gammaln(ai - nij + 1)
                    - gammaln(bj - nij + 1)
                    - gammaln(n_total - ai - bj + nij + 1)
                )
                emi += nij / n_total * math.log(n_total * nij / (ai * bj)) * math.exp(log_p)
    return emi


def brute_force_accuracy(true: np.ndarray, pred: np.ndarray) -> float:
    """Best one-to-one matching by enumerating every injective map of the smaller side."""
    classes = np.unique(true).tolist()
    clusters = np.unique(pred).tolist()
    counts: Dict[Tuple[int, int], int] = {}
    for t, p in zip(true.tolist(), pred.tolist()):
        counts[(p, t)] = counts.get((p, t), 0) + 1
    best = 0
    if len(clusters) <= len(classes):
        for image in itertools.permutations(classes, len(clusters)):
            best = max(best, sum(counts.get((p, t), 0) for p, t in zip(clusters, image)))
    else:
        for image in itertools.permutations(clusters, len(classes)):
            best = max(best, sum(counts.get((p, t), 0) for p, t in zip(image, classes)))
    return best / true.size


def assert_matches_sklearn(true: np.ndarray, pred: np.ndarray) -> None:
    assert abs(nmi(true, pred) - sk_nmi(true, pred)) <= TOL
    assert abs(ami(true, pred) - sk_ami(true, pred)) <= TOL
    assert abs(ari(true, pred) - sk_ari(true, pred)) <= TOL


# --------------------------------------------------------------------------- #
# Agreement with scikit-learn
# --------------------------------------------------------------------------- #


@settings(max_examples=80, deadline=None)
@given(labelings())
def test_metrics_equal_sklearn_on_random_labelings(pair: Tuple[np.ndarray, np.ndarray]) -> None:
    assert_matches_sklearn(*pair)


def _degenerate_cases() -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    arange = np.arange(50)
    random_labels = rng.integers(0, 5, 50)
    return {
        "n1": (np.array([3]), np.array([-7])),
        "n2_same": (np.array([0, 1]), np.array([5, 6])),
        "n2_swapped": (np.array([0, 1]), np.array([1, 0])),
        "n2_one_vs_two": (np.array([0, 0]), np.array([0, 1])),
        "n2_two_vs_one": (np.array([0, 1]), np.array([4, 4])),
        "n2_both_single": (np.array([2, 2]), np.array([9, 9])),
        "both_single_cluster": (np.zeros(30, dtype=int), np.full(30, 4)),
        "single_vs_many": (np.zeros(30, dtype=int), rng.integers(0, 6, 30)),
        "many_vs_single": (rng.integers(0, 6, 30), np.zeros(30, dtype=int)),
        "one_label_vs_singletons": (np.zeros(40, dtype=int), arange[:40]),
        "identical": (random_labels, random_labels.copy()),
        "identical_relabelled": (random_labels, 100 - 7 * random_labels),
        "all_singletons": (arange, arange[::-1].copy()),
        "singletons_vs_random": (arange, random_labels),
        "random_vs_singletons": (random_labels, arange),
        "singletons_vs_pairs": (arange, arange // 2),
        "independent_2x2": (np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])),
        "negative_noncontiguous": (
            np.array([-5, -5, 100, 100, 7, 7, -5, 100]),
            np.array([-1000, 3, 3, 3, -1000, 8, 8, 8]),
        ),
        "huge_label_values": (
            np.array([-(2**60), 2**60, 0, 0, 2**60, -(2**60)]),
            np.array([1, 2**40, 2**40, 1, 1, 5]),
        ),
    }


@pytest.mark.parametrize("name", list(_degenerate_cases()))
def test_metrics_equal_sklearn_on_degenerate_labelings(name: str) -> None:
    true, pred = _degenerate_cases()[name]
    assert_matches_sklearn(true, pred)


def _narrow_dtype_cases() -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    # Labels at the extremes of narrow and unsigned dtypes: the counting path of the
    # contingency table must not compute `labels - min` in the labels' own dtype.
    pred4 = np.array([0, 1, 1, 0])
    int16 = np.zeros(33_000, dtype=np.int16)  # span 65536 <= 2 N + 1024: counting path
    int16[:2] = np.iinfo(np.int16).min, np.iinfo(np.int16).max
    int16_pred = np.zeros(int16.size, dtype=np.int64)
    int16_pred[:2] = 1
    uint64_max = np.iinfo(np.uint64).max
    return {
        "int8_extremes": (np.array([-128, 127, 0, 5], dtype=np.int8), pred4),
        "int8_extremes_both": (np.array([-128, 127, 0, 5], dtype=np.int8), np.array([127, -128, -128, 0], np.int8)),
        "int16_extremes": (np.array([-32768, 32767, 0, 0], dtype=np.int16), pred4),
        "int16_extremes_counting_path": (int16, int16_pred),
        "uint8_extremes": (np.array([0, 255, 3, 3], dtype=np.uint8), pred4),
        "uint64_above_int64": (np.array([2**63 + 1, 2**63 + 2, 2**63 + 2], dtype=np.uint64), np.array([0, 1, 1])),
        "uint64_extremes": (np.array([uint64_max, 0, 1, 1], dtype=np.uint64), pred4),
        "uint64_top_values": (np.array([uint64_max, uint64_max - 1, uint64_max], dtype=np.uint64), np.array([0, 1, 1])),
    }


@pytest.mark.parametrize("name", list(_narrow_dtype_cases()))
def test_metrics_equal_sklearn_for_extreme_values_of_narrow_and_unsigned_dtypes(name: str) -> None:
    true, pred = _narrow_dtype_cases()[name]
    assert_matches_sklearn(true, pred)
    assert_matches_sklearn(pred, true)
    table = contingency_table(true, pred)
    np.testing.assert_array_equal(table.classes, np.unique(true))
    assert table.classes.dtype == true.dtype
    np.testing.assert_array_equal(table.to_dense(), sk_contingency_matrix(true, pred))


@pytest.mark.parametrize(
    ("dtype", "values"),
    [(torch.int8, [-128, 127, 0, 5]), (torch.uint8, [0, 255, 3, 3]), (torch.int16, [-32768, 32767, 0, 0])],
)
def test_metrics_equal_sklearn_for_extreme_values_of_narrow_torch_dtypes(dtype: torch.dtype, values: List[int]) -> None:
    true = torch.tensor(values, dtype=dtype)
    pred = torch.tensor([0, 1, 1, 0], dtype=dtype)
    assert evaluate_clustering(true, pred) == evaluate_clustering(np.array(values, dtype=np.int64), pred.numpy())
    assert abs(nmi(true, pred) - sk_nmi(true.numpy(), pred.numpy())) <= TOL


@pytest.mark.parametrize(("num_classes", "num_clusters"), [(2, 2), (3, 7), (40, 25)])
def test_metrics_equal_sklearn_when_emi_skips_negligible_terms(num_classes: int, num_clusters: int) -> None:
    # Thousands of samples: the EMI windows leave out tail terms (checked in
    # the EMI tests below), unlike the small random labelings above.
    rng = np.random.default_rng(num_classes)
    sizes = rng.dirichlet(np.ones(num_classes))
    true = rng.choice(num_classes, size=4000, p=sizes)
    pred = np.where(rng.random(4000) < 0.3, true % num_clusters, rng.integers(0, num_clusters, 4000))
    assert_matches_sklearn(true, pred)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 257])
def test_all_singletons_give_one_like_sklearn(n: int) -> None:
    labels = np.arange(n)
    assert nmi(labels, labels[::-1]) == sk_nmi(labels, labels[::-1]) == 1.0
    assert ami(labels, labels[::-1]) == sk_ami(labels, labels[::-1]) == 1.0
    assert ari(labels, labels[::-1]) == sk_ari(labels, labels[::-1]) == 1.0


def test_independent_labelings_give_zero_nmi_exactly() -> None:
    assert nmi([0, 0, 1, 1], [0, 1, 0, 1]) == 0.0


def test_ari_is_bit_identical_to_sklearn() -> None:
    rng = np.random.default_rng(1)
    true = rng.integers(0, 30, 2000)
    pred = np.where(rng.random(2000) < 0.6, true, rng.integers(0, 40, 2000))
    assert ari(true, pred) == sk_ari(true, pred)


@pytest.mark.slow
def test_metrics_equal_sklearn_at_100k_samples() -> None:
    rng = np.random.default_rng(2)
    true = rng.integers(0, 100, 100_000)
    pred = np.where(rng.random(true.size) < 0.5, true, rng.integers(0, 100, true.size))
    assert_matches_sklearn(true, pred)


# --------------------------------------------------------------------------- #
# Invariances
# --------------------------------------------------------------------------- #


@settings(max_examples=40, deadline=None)
@given(labelings())
def test_nmi_ami_ari_are_symmetric(pair: Tuple[np.ndarray, np.ndarray]) -> None:
    true, pred = pair
    assert abs(nmi(true, pred) - nmi(pred, true)) <= 1e-12
    assert abs(ami(true, pred) - ami(pred, true)) <= 1e-12
    assert ari(true, pred) == ari(pred, true)


@settings(max_examples=40, deadline=None)
@given(labelings(), st.integers(0, 2**32 - 1))
def test_relabelling_and_reordering_leave_metrics_unchanged(pair: Tuple[np.ndarray, np.ndarray], seed: int) -> None:
    true, pred = pair
    rng = np.random.default_rng(seed)
    # A random bijection on each label set, and a random order of the samples.
    classes, true_code = np.unique(true, return_inverse=True)
    clusters, pred_code = np.unique(pred, return_inverse=True)
    new_true = rng.permutation(10**6)[: classes.size][true_code] - 500
    new_pred = rng.permutation(10**6)[: clusters.size][pred_code]
    order = rng.permutation(true.size)
    new_true, new_pred = new_true[order], new_pred[order]
    before = evaluate_clustering(true, pred)
    after = evaluate_clustering(new_true, new_pred)
    for key in ("nmi", "ami", "ari"):
        assert abs(before[key] - after[key]) <= 1e-12
    assert before["acc"] == after["acc"]


# --------------------------------------------------------------------------- #
# Clustering accuracy
# --------------------------------------------------------------------------- #


@settings(max_examples=60, deadline=None)
@given(labelings(max_size=60, max_labels=6))
def test_hungarian_accuracy_equals_brute_force_for_any_cluster_count(
    pair: Tuple[np.ndarray, np.ndarray],
) -> None:
    true, pred = pair
    assert cluster_accuracy(true, pred) == pytest.approx(brute_force_accuracy(true, pred), abs=1e-15)


def test_accuracy_is_the_same_for_ids_that_start_at_one_or_have_gaps() -> None:
    # The authors' accuracy scores ids 1..10 far too low and raises IndexError on non-contiguous ids.
    rng = np.random.default_rng(0)
    true = rng.integers(0, 10, 500)
    pred = np.where(rng.random(500) < 0.8, true, rng.integers(0, 10, 500))
    reference = cluster_accuracy(true, pred)
    assert 0.8 < reference < 0.9
    assert cluster_accuracy(true + 1, pred + 1) == reference
    gaps = np.array([0, 3, 7, 12, 20, 33, 41, 58, 60, 99])
    assert cluster_accuracy(gaps[true], gaps[pred]) == reference


@settings(max_examples=30, deadline=None)
@given(labelings(max_size=80, max_labels=8), st.integers(0, 2**32 - 1))
def test_relabelling_predicted_clusters_leaves_accuracy_unchanged(
    pair: Tuple[np.ndarray, np.ndarray], seed: int
) -> None:
    true, pred = pair
    clusters, code = np.unique(pred, return_inverse=True)
    renamed = np.random.default_rng(seed).permutation(1000)[: clusters.size] - 300
    new_pred = renamed[code]
    for method in ("hungarian", "majority"):
        accuracy, mapping = cluster_accuracy(true, pred, return_mapping=True, method=method)
        new_accuracy, new_mapping = cluster_accuracy(true, new_pred, return_mapping=True, method=method)
        assert new_accuracy == accuracy
        hits = [new_mapping.get(p) == t for p, t in zip(new_pred.tolist(), true.tolist())]
        assert np.mean(hits) == new_accuracy
    # Majority mapping has no ties between clusters: it follows the renaming exactly.
    _, majority = cluster_accuracy(true, pred, return_mapping=True, method="majority")
    _, new_majority = cluster_accuracy(true, new_pred, return_mapping=True, method="majority")
    assert new_majority == {int(renamed[i]): majority[int(c)] for i, c in enumerate(clusters)}


@settings(max_examples=40, deadline=None)
@given(labelings(max_size=60, max_labels=6))
def test_sparse_matching_solver_equals_brute_force(pair: Tuple[np.ndarray, np.ndarray]) -> None:
    true, pred = pair
    with pytest.MonkeyPatch.context() as patch:
        # Force the sparse LAPJVsp path used for tables with very many cells.
        patch.setattr(metrics_module, "_DENSE_MATCHING_MAX_CELLS", 0)
        accuracy, mapping = cluster_accuracy(true, pred, return_mapping=True)
    assert accuracy == pytest.approx(brute_force_accuracy(true, pred), abs=1e-15)
    assert len(mapping) == min(np.unique(true).size, np.unique(pred).size)
    assert len(set(mapping.values())) == len(mapping)
    hits = [mapping.get(p) == t for p, t in zip(pred.tolist(), true.tolist())]
    assert np.mean(hits) == accuracy


@pytest.mark.parametrize("num_clusters", [2, 4, 7])
def test_accuracy_equals_brute_force_when_cluster_and_class_counts_differ(num_clusters: int) -> None:
    rng = np.random.default_rng(num_clusters)
    true = rng.integers(0, 4, 200)
    pred = np.where(rng.random(200) < 0.7, true * 10 % num_clusters, rng.integers(0, num_clusters, 200))
    assert np.unique(pred).size == num_clusters
    assert cluster_accuracy(true, pred) == brute_force_accuracy(true, pred)


def test_extra_clusters_count_as_wrong() -> None:
    # Two classes split into three clusters: the best one-to-one matching uses
    # clusters 10 and 20; cluster 30 (2 samples) is unmatched and counts as wrong.
    true = [0, 0, 0, 0, 1, 1, 1, 1]
    pred = [10, 10, 10, 30, 20, 20, 20, 30]
    accuracy, mapping = cluster_accuracy(true, pred, return_mapping=True)
    assert accuracy == 6 / 8
    assert mapping == {10: 0, 20: 1}


def test_mapping_reproduces_the_accuracy_and_is_one_to_one() -> None:
    rng = np.random.default_rng(3)
    true = rng.integers(-3, 5, 300)
    pred = np.where(rng.random(300) < 0.8, 2 * true + 11, rng.integers(0, 12, 300))
    accuracy, mapping = cluster_accuracy(torch.as_tensor(true), pred, return_mapping=True)
    assert len(set(mapping.values())) == len(mapping) == min(np.unique(true).size, np.unique(pred).size)
    mapped = np.array([mapping.get(p, None) == t for p, t in zip(pred.tolist(), true.tolist())])
    assert accuracy == mapped.mean()


def test_majority_accuracy_maps_each_cluster_to_its_most_frequent_class() -> None:
    true = [0, 0, 1, 1, 1, 2, 2, 2, 2]
    pred = [5, 5, 5, 6, 6, 6, 7, 7, 7]
    accuracy, mapping = cluster_accuracy(true, pred, return_mapping=True, method="majority")
    assert mapping == {5: 0, 6: 1, 7: 2}
    assert accuracy == 7 / 9
    # Every singleton cluster is pure under majority mapping, not under Hungarian.
    assert cluster_accuracy(true, list(range(9)), method="majority") == 1.0
    assert cluster_accuracy(true, list(range(9))) == 3 / 9


@settings(max_examples=30, deadline=None)
@given(labelings(max_size=80, max_labels=8))
def test_majority_accuracy_is_at_least_hungarian(pair: Tuple[np.ndarray, np.ndarray]) -> None:
    true, pred = pair
    assert cluster_accuracy(true, pred, method="majority") >= cluster_accuracy(true, pred)


# --------------------------------------------------------------------------- #
# Expected mutual information
# --------------------------------------------------------------------------- #


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(1, 40), min_size=1, max_size=8),
    st.integers(0, 2**32 - 1),
    st.integers(1, 8),
)
def test_vectorised_emi_equals_loop_emi_on_small_tables(row_sums: List[int], seed: int, num_cols: int) -> None:
    # Random column sums with the same total as the row sums.
    n_total = sum(row_sums)
    num_cols = min(num_cols, n_total)
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, n_total), size=num_cols - 1, replace=False)) if num_cols > 1 else []
    col_sums = np.diff(np.concatenate([[0], cuts, [n_total]])).astype(int).tolist()
    expected = loop_emi(row_sums, col_sums) if len(row_sums) > 1 and num_cols > 1 else 0.0
    assert expected_mutual_information(row_sums, col_sums) == pytest.approx(expected, rel=1e-12, abs=1e-14)


@pytest.mark.parametrize(
    ("row_sums", "col_sums"),
    [
        ([1000, 1000], [1000, 700, 300]),
        ([1500, 400, 100], [900, 900, 200]),
        ([2500, 2500], [4000, 1000]),
    ],
)
def test_emi_equals_loop_emi_when_negligible_terms_are_skipped(row_sums: List[int], col_sums: List[int]) -> None:
    a = np.unique(np.asarray(row_sums, dtype=np.int64))
    b = np.unique(np.asarray(col_sums, dtype=np.int64))
    pair_a, pair_b = np.repeat(a, b.size), np.tile(b, a.size)
    n_total = sum(row_sums)
    log_budget = math.log(np.finfo(np.float64).eps) - math.log(len(row_sums) * len(col_sums))
    low, high, _ = _emi_windows(pair_a, pair_b, n_total, log_budget)
    support_low = np.maximum(0, pair_a + pair_b - n_total)
    support_high = np.minimum(pair_a, pair_b)
    # The case is only meaningful if some window really leaves terms out.
    assert ((low > support_low) | (high < support_high)).any()
    assert expected_mutual_information(row_sums, col_sums) == pytest.approx(loop_emi(row_sums, col_sums), rel=1e-11)


def test_emi_matches_exact_rational_arithmetic() -> None:
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    row_sums, col_sums = [1200, 500, 300], [1000, 600, 400]
    n_total = sum(row_sums)
    exact = mpmath.mpf(0)
    for a in row_sums:
        for b in col_sums:
            denominator = mpmath.binomial(n_total, b)
            for n in range(max(1, a + b - n_total), min(a, b) + 1):
                p = mpmath.binomial(a, n) * mpmath.binomial(n_total - a, b - n) / denominator
                exact += mpmath.mpf(n) / n_total * mpmath.log(mpmath.mpf(n_total * n) / (a * b)) * p
    assert abs(expected_mutual_information(row_sums, col_sums) - float(exact)) <= 1e-14


def test_emi_of_all_singletons_is_log_n() -> None:
    n = 100_000
    ones = np.ones(n, dtype=np.int64)
    assert _expected_mutual_information(ones, ones, n) == pytest.approx(math.log(n), rel=1e-13)


def test_emi_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="same total"):
        expected_mutual_information([2, 2], [3, 2])
    with pytest.raises(ValueError, match="positive"):
        expected_mutual_information([0, 4], [2, 2])
    with pytest.raises(TypeError, match="integers"):
        expected_mutual_information([2.0, 2.0], [2, 2])
    with pytest.raises(ValueError, match="1-D"):
        expected_mutual_information([], [2, 2])


# --------------------------------------------------------------------------- #
# Inputs, table, evaluate_clustering
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("true", "pred"),
    [
        (np.array([4, 4, -2, 9, 9, 9]), np.array([0, 1, 1, 2, 2, 0])),
        (np.arange(40) % 7 - 3, np.arange(40) * 13 % 11),  # dense (bincount) path
        (np.array([10**15, -(10**15), 3]), np.array([2**62, 0, 0])),  # sparse (np.unique) path
    ],
)
def test_contingency_table_equals_sklearn_contingency_matrix(true: np.ndarray, pred: np.ndarray) -> None:
    table = contingency_table(true, pred)
    np.testing.assert_array_equal(table.to_dense(), sk_contingency_matrix(true, pred))
    np.testing.assert_array_equal(table.to_sparse().toarray(), table.to_dense())
    np.testing.assert_array_equal(table.classes, np.unique(true))
    np.testing.assert_array_equal(table.clusters, np.unique(pred))
    assert table.n_samples == true.size == table.row_sums.sum() == table.col_sums.sum()


def test_singleton_labelings_use_sparse_cells_not_dense_grid() -> None:
    # R * C = 10^10 cells would not fit densely; the table must stay O(N).
    n = 100_000
    table = contingency_table(np.arange(n), np.arange(n)[::-1])
    assert table.counts.size == n
    assert ami(np.arange(n), np.arange(n)[::-1]) == 1.0


def test_numpy_list_and_torch_inputs_agree() -> None:
    rng = np.random.default_rng(4)
    true = rng.integers(-4, 6, 150)
    pred = np.where(rng.random(150) < 0.5, true + 3, rng.integers(0, 9, 150))
    reference = evaluate_clustering(true, pred)
    variants = [
        (true.tolist(), pred.tolist()),
        (torch.as_tensor(true), torch.as_tensor(pred)),
        (torch.as_tensor(true, dtype=torch.int32), torch.as_tensor(pred, dtype=torch.int16)),
        (torch.as_tensor(true, dtype=torch.float32), pred.astype(np.float64)),  # integral floats
        (torch.as_tensor(true).requires_grad_(False), torch.as_tensor(pred, dtype=torch.bfloat16)),
    ]
    if torch.cuda.is_available():
        variants.append((torch.as_tensor(true, device="cuda"), torch.as_tensor(pred, device="cuda")))
    for variant in variants:
        assert evaluate_clustering(*variant) == reference


def test_evaluate_clustering_equals_individual_metrics() -> None:
    rng = np.random.default_rng(5)
    true = rng.integers(0, 10, 500)
    pred = np.where(rng.random(500) < 0.6, true, rng.integers(0, 13, 500))
    result = evaluate_clustering(true, pred)
    assert result == {
        "nmi": nmi(true, pred),
        "ami": ami(true, pred),
        "ari": ari(true, pred),
        "acc": cluster_accuracy(true, pred),
    }
    assert evaluate_clustering(true, pred, method="majority")["acc"] == cluster_accuracy(true, pred, method="majority")
    assert all(type(value) is float for value in result.values())


@pytest.mark.parametrize("metric", [nmi, ami, ari, cluster_accuracy, evaluate_clustering, contingency_table])
@pytest.mark.parametrize(
    ("true", "pred", "error", "match"),
    [
        ([], [], ValueError, "empty"),
        (np.zeros((2, 2), dtype=int), np.zeros(4, dtype=int), ValueError, r"labels_true must be 1D: shape is \(2, 2\)"),
        (np.zeros(4, dtype=int), np.zeros((4, 1), dtype=int), ValueError, "labels_pred must be 1D"),
        (5, [5], ValueError, r"must be 1D: shape is \(\)"),
        ([0, 1, 2], [0, 1], ValueError, r"inconsistent numbers of samples: \[3, 2\]"),
        ([0.0, 1.5], [0, 1], ValueError, "non-integral"),
        ([0, 1], [0.0, float("nan")], ValueError, "Input labels_pred contains NaN"),
        (np.array(["a", 1, None], dtype=object), [0, 1, 2], TypeError, "one sortable type"),
        ([0, 1], np.array([1j, 2j]), TypeError, "integer labels"),
        (torch.tensor([0.5, 1.0]), [0, 1], ValueError, "labels_true must hold integral"),
    ],
)
def test_bad_labels_raise_clear_errors(metric, true, pred, error, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=match):
        metric(true, pred)


def test_accuracy_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="method"):
        cluster_accuracy([0, 1], [0, 1], method="greedy")
    with pytest.raises(ValueError, match="method"):
        evaluate_clustering([0, 1], [0, 1], method="greedy")
    with pytest.raises(TypeError, match="return_mapping"):
        cluster_accuracy([0, 1], [0, 1], return_mapping=1)  # type: ignore[call-overload]


# --------------------------------------------------------------------------- #
# scikit-learn's metrics/cluster/tests/test_common.py and test_supervised.py,
# adapted to nmi/ami/ari (sklearn 1.9). Documented differences (metrics module
# docstring): empty labelings raise ValueError (sklearn: 1.0), and
# non-integral float labels raise ValueError (sklearn warns "Clustering metrics
# expects discrete values" and uses them as categories).
# --------------------------------------------------------------------------- #

OURS = {"nmi": nmi, "ami": ami, "ari": ari}
SKLEARN_RNG = np.random.RandomState(0)
Y1 = SKLEARN_RNG.randint(3, size=30)
Y2 = SKLEARN_RNG.randint(3, size=30)


@pytest.mark.parametrize("name", OURS)
def test_sklearn_common_symmetry(name: str) -> None:
    assert OURS[name](Y1, Y2) == pytest.approx(OURS[name](Y2, Y1))


@pytest.mark.parametrize("name", OURS)
def test_sklearn_common_normalized_output(name: str) -> None:
    metric = OURS[name]
    assert metric([0, 0, 0, 1, 1], [0, 0, 0, 1, 2]) > 0.0
    assert metric([0, 0, 1, 1, 2], [0, 0, 1, 1, 1]) > 0.0
    assert metric([0, 0, 0, 1, 2], [0, 1, 1, 1, 1]) < 1.0
    assert metric([0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1]) == pytest.approx(1.0)
    lower_1, lower_2 = [0, 0, 0, 0, 0, 0], [0, 1, 2, 3, 4, 5]
    assert not (np.array([metric(lower_1, lower_2), metric(lower_2, lower_1)]) < 0).any()


@pytest.mark.parametrize("name", OURS)
def test_sklearn_common_permute_labels(name: str) -> None:
    metric = OURS[name]
    y_label = np.array([0, 0, 0, 1, 1, 0, 1])
    y_pred = np.array([1, 0, 1, 0, 1, 1, 0])
    score = metric(y_pred, y_label)
    for a, b in ((1 - y_pred, y_label), (1 - y_pred, 1 - y_label), (y_pred, 1 - y_label)):
        np.testing.assert_allclose(score, metric(a, b))


@pytest.mark.parametrize("name", [*OURS, "acc"])
def test_sklearn_common_format_invariance_strings_objects_lists_negative_ints(name: str) -> None:
    metric = OURS.get(name, cluster_accuracy)
    y_true = [0, 0, 0, 0, 1, 1, 1, 1]
    y_pred = [0, 1, 2, 3, 4, 5, 6, 7]

    def formats(y: List[int]) -> List[object]:
        array = np.array(y)
        return [
            array,
            array.tolist(),
            [f"{x}-a" for x in y],
            np.array([f"{x}-a" for x in y], dtype=object),
            array - 1,
            array + 1,
        ]

    score = metric(y_true, y_pred)
    for true, pred in zip(formats(y_true), formats(y_pred)):
        assert metric(true, pred) == score  # exactly, as scikit-learn's test asks


@pytest.mark.parametrize("name", OURS)
def test_sklearn_common_single_sample(name: str) -> None:
    for i, j in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        assert OURS[name]([i], [j]) == 1.0  # one sample: identical partitions


@pytest.mark.parametrize("name", [*OURS, "acc"])
@pytest.mark.parametrize("bad", [[np.inf, np.inf], [np.nan, np.nan], [np.nan, np.inf]])
def test_sklearn_common_inf_nan_input_raises_with_scikit_learn_wording(name: str, bad: List[float]) -> None:
    metric = OURS.get(name, cluster_accuracy)
    with pytest.raises(ValueError, match=r"contains (NaN|infinity)"):
        metric([0, 1], bad)
    with pytest.raises(ValueError, match=r"contains (NaN|infinity)"):
        metric(np.array(bad, dtype=object), [0, 1])
    with pytest.raises(ValueError, match=r"contains (NaN|infinity)"):
        metric(torch.tensor(bad), [0, 1])


@pytest.mark.parametrize("name", [*OURS, "acc"])
def test_sklearn_common_returned_value_is_a_python_float(name: str) -> None:
    rng = np.random.RandomState(0)
    score = OURS.get(name, cluster_accuracy)(rng.randint(0, 3, size=20), rng.randint(0, 3, size=20))
    assert isinstance(score, float) and not isinstance(score, (np.float64, np.float32))


@pytest.mark.parametrize("name", OURS)
def test_sklearn_supervised_error_messages_on_wrong_input(name: str) -> None:
    metric = OURS[name]
    with pytest.raises(ValueError, match=r"Found input variables with inconsistent numbers of samples: \[2, 3\]"):
        metric([0, 1], [1, 1, 1])
    with pytest.raises(ValueError, match=r"labels_true must be 1D: shape is \(2, 2\)"):
        metric([[0, 1], [1, 0]], [1, 1, 1])
    with pytest.raises(ValueError, match=r"labels_pred must be 1D: shape is \(2, 2\)"):
        metric([0, 1, 0], [[1, 1], [0, 0]])


@pytest.mark.parametrize("name", OURS)
def test_sklearn_supervised_perfect_matches(name: str) -> None:
    metric = OURS[name]
    for true, pred in [
        ([0], [1]),
        ([0, 0, 0], [0, 0, 0]),
        ([0, 1, 0], [42, 7, 42]),
        ([0.0, 1.0, 0.0], [42.0, 7.0, 42.0]),
        (["a", "b", "a"], [42, 7, 42]),
        ([0.0, 1.0, 2.0], [42.0, 7.0, 2.0]),
    ]:
        assert metric(true, pred) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="empty"):  # documented difference: scikit-learn returns 1.0
        metric([], [])


def test_sklearn_supervised_non_consecutive_labels_equal_scikit_learn() -> None:
    pairs = [
        ([0, 0, 0, 2, 2, 2], [0, 1, 0, 1, 2, 2]),
        ([0, 0, 0, 1, 1, 1], [0, 4, 0, 4, 2, 2]),
        ([0, 0, 0, 2, 2, 2], [0, 4, 0, 4, 2, 2]),
        (["b", "b", "b", "z", "z", "z"], ["x", "y", "x", "y", "q", "q"]),
    ]
    for true, pred in pairs:
        assert ari(true, pred) == pytest.approx(sk_ari(true, pred), abs=1e-12)
        assert ami(true, pred) == pytest.approx(sk_ami(true, pred), abs=1e-12)
        assert nmi(true, pred) == pytest.approx(sk_nmi(true, pred), abs=1e-12)


def test_sklearn_supervised_adjusted_mutual_info_values() -> None:
    labels_a = np.array([1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3])
    labels_b = np.array([1, 1, 1, 1, 2, 1, 2, 2, 2, 2, 3, 1, 3, 3, 3, 2, 2])[:14]
    assert ami(labels_a, labels_b) == pytest.approx(sk_ami(labels_a, labels_b), abs=1e-12)
    assert ami(labels_a, labels_a) == pytest.approx(1.0)
    a110 = np.array([list(labels_a) * 110]).flatten()
    b110 = np.array([list(labels_b) * 110]).flatten()
    assert ami(a110, b110) == pytest.approx(sk_ami(a110, b110), abs=1e-10)


def test_sklearn_supervised_exactly_zero_info_score() -> None:
    for i in np.logspace(1, 4, 4).astype(int):
        labels_a, labels_b = np.ones(i, dtype=int), np.arange(i, dtype=int)
        assert nmi(labels_a, labels_b) == 0.0
        assert ami(labels_a, labels_b) == 0.0


def test_sklearn_supervised_int_overflow_and_large_emi() -> None:
    # scikit-learn's overflow tests: large N where N^2 or the EMI terms exceed 32/64-bit products.
    x = np.concatenate([np.full(52632, 0), np.full(52632, 1), np.full(52632, 2)])
    y = np.concatenate([np.full(52632, 0), np.full(52632, 1), np.full(52632, 0)])
    assert ari(x, y) == pytest.approx(sk_ari(x, y), abs=1e-12)
    assert nmi(x, y) == pytest.approx(sk_nmi(x, y), abs=1e-12)
    a = np.array([1] * 500 + [2] * 300 + [3] * 200)
    b = np.array([1] * 300 + [2] * 200 + [3] * 500)
    assert ami(a, b) == pytest.approx(sk_ami(a, b), abs=1e-10)


@pytest.mark.parametrize("seed", range(5))
def test_sklearn_supervised_nmi_is_bounded(seed: int) -> None:
    rng = np.random.RandomState(seed)
    true, pred = rng.randint(0, 10, size=50), rng.randint(0, 4, size=50)
    assert 0.0 <= nmi(true, pred) <= 1.0


def test_sklearn_supervised_continuous_labels_are_refused_not_warned() -> None:
    # Documented difference: scikit-learn warns ("expects discrete values") and uses the floats as categories.
    with pytest.raises(ValueError, match="non-integral"):
        nmi(np.random.RandomState(0).rand(10), [0] * 10)


def test_string_and_object_labels_give_the_integer_result_and_accuracy_maps_names() -> None:
    truth = ["cat", "cat", "dog", "dog", "eel"]
    clusters = np.array(["c1", "c1", "c2", "c2", "c2"], dtype=object)
    codes = ([0, 0, 1, 1, 2], [0, 0, 1, 1, 1])
    assert evaluate_clustering(truth, clusters) == evaluate_clustering(*codes)
    assert cluster_accuracy(truth, clusters, return_mapping=True) == (0.8, {"c1": "cat", "c2": "dog"})
    assert contingency_table(truth, clusters).classes.tolist() == ["cat", "dog", "eel"]


def test_float16_and_object_integer_labels_are_numbers_without_warnings() -> None:
    truth = np.array([0, 1, 1, 2, 2, 2])
    predicted = np.array([1, 1, 0, 2, 2, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nmi(truth.astype(np.float16), predicted) == nmi(truth, predicted)
    assert ami(truth.astype(object), predicted) == ami(truth, predicted)
    with pytest.raises(ValueError, match="non-integral"):
        nmi(np.array([0, 1.5, 1, 2, 2, 2], dtype=object), predicted)
    with pytest.raises(TypeError, match="one sortable type"):
        nmi(np.array([0, None, 1, 2, 2, 2], dtype=object), predicted)
