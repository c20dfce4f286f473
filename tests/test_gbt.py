"""rpu_ray.metrics.gbt against sklearn's GradientBoostingClassifier, which it reproduces split
for split (including sklearn's tie-breaking), and its exact helpers against literal
transcriptions of sklearn's loops."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_benchmark
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.tree import DecisionTreeRegressor

from rpu_ray.metrics.gbt import (
    RAND_R_MAX,
    GradientBoostedTrees,
    _SplitterRng,
    swap_partition_order,
)

metrics_speed = load_benchmark("metrics_speed")
make_fixture = metrics_speed.make_fixture


def _fit_both(x, y, x_test, seed=0, **kwargs):
    sklearn_kwargs = {"n_estimators": kwargs.pop("n_stages", 100), **kwargs}
    reference = GradientBoostingClassifier(random_state=seed, **sklearn_kwargs).fit(x, y)
    model = GradientBoostedTrees(random_state=seed, n_stages=sklearn_kwargs["n_estimators"],
                                 **kwargs).fit(x, y)
    return reference, model


def _assert_same_model(reference, model, x, x_test):
    np.testing.assert_array_equal(model.classes_, reference.classes_)
    np.testing.assert_allclose(model.feature_importances_, reference.feature_importances_,
                               rtol=0, atol=1e-9)
    raw = reference.decision_function(x).reshape(len(x), -1)
    np.testing.assert_allclose(model.train_raw_, raw, rtol=0, atol=1e-9)
    np.testing.assert_allclose(model.decision_function(x), raw, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(model.labels_of(model.train_raw_), reference.predict(x))
    np.testing.assert_array_equal(model.predict(x_test), reference.predict(x_test))


# (num_points, factor sizes, factor index, num_codes, make_fixture seed): binary, 3-class and
# 40-class targets from the benchmark's synthetic codes.
CASES = [
    (300, (2, 3, 5), 0, 3, 0),
    (600, (3, 6, 5), 0, 10, 1),
    (500, (3, 6, 40), 2, 5, 0),
    (1000, (3, 6, 40, 32, 32), 1, 10, 2),
]


@pytest.mark.parametrize(("num_points", "sizes", "factor", "num_codes", "seed"), CASES)
def test_matches_sklearn(num_points, sizes, factor, num_codes, seed):
    codes, factors = make_fixture(num_points + num_points // 2, sizes, num_codes=num_codes,
                                  seed=seed)
    x, x_test = codes[:num_points], codes[num_points:]
    reference, model = _fit_both(x, factors[:num_points, factor], x_test, seed=seed + 7)
    _assert_same_model(reference, model, x, x_test)


def test_matches_sklearn_with_ties_between_features_and_other_labels():
    # Duplicated codes: every split has an exact twin, which sklearn's splitter RNG (feature
    # visit order) breaks; labels are strings, not 0-based.
    rs = np.random.RandomState(0)
    base = rs.randn(450, 2)
    x = np.hstack([base[:, :1]] * 3 + [base[:, 1:]] * 2)
    labels = np.array(["low", "mid", "top"])[
        (base[:, 0] + 0.5 * base[:, 1] + 0.3 * rs.randn(450) > 0).astype(int) + (base[:, 1] > 0.5)]
    reference, model = _fit_both(x[:300], labels[:300], x[300:], seed=3, n_stages=40)
    _assert_same_model(reference, model, x[:300], x[300:])


@pytest.mark.parametrize("max_depth", [1, 2])
def test_matches_sklearn_shallower_trees(max_depth):
    codes, factors = make_fixture(600, (3, 6, 5), seed=5, mixing=0.5, noise=0.2)
    reference, model = _fit_both(codes[:400], factors[:400, 1], codes[400:], seed=1,
                                 n_stages=30, max_depth=max_depth)
    _assert_same_model(reference, model, codes[:400], codes[400:])


def test_constant_and_tiny_codes():
    # A constant code (never split; the splitter RNG skips it) and one whose values differ by
    # less than FEATURE_THRESHOLD (never split between them either).
    codes, factors = make_fixture(450, (3, 4), num_codes=4, seed=6)
    codes[:, 1] = 0.25
    codes[:, 2] = 1.0 + 1e-9 * np.arange(450)
    reference, model = _fit_both(codes[:300], factors[:300, 0], codes[300:], n_stages=30)
    _assert_same_model(reference, model, codes[:300], codes[300:])
    assert model.feature_importances_[1] == 0.0


# DCI fast against exact on whole fixtures: tests/test_metrics.py (test_dci_fast_equals_exact).


def _literal_partition(is_left):
    """sklearn's partition_samples_final loop, transcribed."""
    samples = list(range(len(is_left)))
    start, end = 0, len(samples)
    while start < end:
        if is_left[samples[start]]:
            start += 1
        else:
            end -= 1
            samples[start], samples[end] = samples[end], samples[start]
    return samples[:start], samples[start:]


def test_swap_partition_order_matches_sklearns_loop():
    rs = np.random.RandomState(0)
    for _ in range(2000):
        is_left = rs.rand(rs.randint(1, 40)) < rs.rand()
        left, right = swap_partition_order(is_left)
        expected_left, expected_right = _literal_partition(is_left)
        np.testing.assert_array_equal(left, expected_left)
        np.testing.assert_array_equal(right, expected_right)


def test_splitter_rng_draws_like_sklearn():
    # Fisher-Yates over 4 features with feature 2 constant: the evaluated order is a
    # permutation of the others, the constant one is passed on to the children, and the draws
    # follow sklearn's xorshift rand_r (seed 0 is replaced by 1, as sklearn does).
    rng = _SplitterRng(0, 4)
    visited, last_sorted, n_constant = rng.draw(np.array([False, False, True, False]), 0)
    assert sorted(visited) == [0, 1, 3]
    assert n_constant == 1 and rng.constant_features[0] == 2
    assert last_sorted in (0, 1, 2, 3)
    again = _SplitterRng(1, 4).draw(np.array([False, False, True, False]), 0)
    assert again[0] == visited  # seed 0 behaves as seed 1


def test_splitter_draws_pick_sklearns_split_among_identical_features():
    # Six identical features tie on every split; sklearn keeps the first one its draws visit.
    chosen = []
    for seed in range(8):
        rs = np.random.RandomState(seed)
        x = np.repeat(rs.randn(40, 1), 6, axis=1)
        y = (x[:, 0] > 0) + 0.1 * rs.randn(40)
        tree = DecisionTreeRegressor(max_depth=1, random_state=seed).fit(x, y)
        tree_seed = int(np.random.RandomState(seed).randint(0, RAND_R_MAX))  # sklearn's
        visited, _, _ = _SplitterRng(tree_seed, 6).draw(np.zeros(6, bool), 0)
        assert tree.tree_.feature[0] == visited[0], seed
        chosen.append(visited[0])
    assert len(set(chosen)) > 2  # the seeds draw different features first


def test_validation():
    x = np.random.RandomState(0).randn(20, 3)
    with pytest.raises(ValueError, match="max_depth"):
        GradientBoostedTrees(max_depth=4)
    with pytest.raises(ValueError, match="2 classes"):
        GradientBoostedTrees().fit(x, np.zeros(20))
