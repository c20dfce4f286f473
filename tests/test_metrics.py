"""rpu_ray.metrics against a literal transcription of disentanglement_lib (reference_metrics.py),
closed-form cases and the library's own unit-test identities."""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import pytest
import reference_metrics as ref
from conftest import load_benchmark
from sklearn.exceptions import ConvergenceWarning

from rpu_ray.metrics import (
    authors_pseudo_kl,
    dci,
    dci_completeness,
    dci_disentanglement,
    dci_importance,
    discrete_entropy,
    discrete_mutual_info,
    gaussian_kl,
    histogram_discretize,
    mig,
    mig_per_factor,
    sap,
    udr,
    udr_member_score,
    udr_pairwise,
)

metrics_speed = load_benchmark("metrics_speed")
make_fixture = metrics_speed.make_fixture
make_udr_fixture = metrics_speed.make_udr_fixture

SMALL_SIZES = (3, 6, 10, 4)

# The literal library transcription divides 0/0 and correlates constant latents on purpose.
pytestmark = [
    pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning"),
]


def _split(num_train, num_test, **kwargs):
    codes, factors = make_fixture(num_train + num_test, **kwargs)
    return codes[:num_train], factors[:num_train], codes[num_train:], factors[num_train:]


def _seed_global_rng(seed):
    """The library's sklearn models use random_state=None, i.e. numpy's global RNG."""
    np.random.seed(seed)  # noqa: NPY002


def _global_rng_state():
    state = np.random.get_state()  # noqa: NPY002
    return state[1].tobytes(), state[2]


def _transposed(*arrays):
    return [a.T for a in arrays]


# Codes covering the discretiser's corner cases: plain, entangled, quantised (ties), an outlier,
# a constant code, float32.
def _mig_cases():
    codes, factors = make_fixture(2000, SMALL_SIZES, num_codes=8, seed=1)
    entangled, _ = make_fixture(2000, SMALL_SIZES, num_codes=8, mixing=1.0, noise=0.3, seed=1)
    quantised = np.round(codes * 4) / 4
    outlier = codes.copy()
    outlier[0, 2] = 50.0
    constant = codes.copy()
    constant[:, 5] = 0.7
    return {
        "plain": (codes, factors),
        "entangled": (entangled, factors),
        "quantised": (quantised, factors),
        "outlier": (outlier, factors),
        "constant_code": (constant, factors),
        "float32": (codes.astype(np.float32), factors),
    }


MIG_CASES = _mig_cases()


# --- representation helpers ---------------------------------------------------------------------


def test_histogram_discretize_matches_library_labels():
    for name, (codes, _) in MIG_CASES.items():
        for num_bins in (5, 20):
            expected = ref._histogram_discretize(codes.T, num_bins).T
            labels = histogram_discretize(codes, num_bins)
            np.testing.assert_array_equal(labels, expected, err_msg=name)
            assert labels.min() >= 1 and labels.max() == num_bins
    constant = histogram_discretize(MIG_CASES["constant_code"][0])[:, 5]
    assert np.unique(constant).size == 1


def test_histogram_discretize_uses_float32_edges_for_float32_codes():
    # Values on the float grid of the bin edges: float32 and float64 edges bin them differently.
    x = (np.arange(21) * 0.1).astype(np.float32)[:, None]
    labels = histogram_discretize(x)[:, 0]
    np.testing.assert_array_equal(labels, ref._histogram_discretize(x.T)[0])
    assert np.any(labels != histogram_discretize(x.astype(np.float64))[:, 0])
    # The library's float32 labels for this column, written out.
    np.testing.assert_array_equal(labels[6:11], [7, 8, 9, 9, 11])


def test_discrete_mutual_info_and_entropy_match_sklearn():
    codes, factors = MIG_CASES["outlier"]
    labels = histogram_discretize(codes)
    np.testing.assert_allclose(
        discrete_mutual_info(labels, factors),
        ref.discrete_mutual_info(labels.T, factors.T),
        rtol=0,
        atol=1e-12,
    )
    np.testing.assert_allclose(
        discrete_entropy(factors), ref.discrete_entropy(factors.T), rtol=0, atol=1e-12
    )
    # Arbitrary (negative, sparse) integer labels are allowed.
    np.testing.assert_allclose(discrete_entropy(factors * 7 - 3), np.log(SMALL_SIZES), rtol=0.02)


def test_gaussian_kl_is_the_library_kl_with_logvar_twice_logsigma():
    rs = np.random.RandomState(0)
    mu, logsigma = rs.randn(50, 4), 0.3 * rs.randn(50, 4)
    logvar = 2 * logsigma
    expected = np.mean(0.5 * (mu**2 + np.exp(logvar) - logvar - 1), axis=0)
    np.testing.assert_allclose(gaussian_kl(mu, logsigma), expected, rtol=1e-12)
    np.testing.assert_array_equal(gaussian_kl(np.zeros((3, 2)), np.zeros((3, 2))), [0.0, 0.0])


def test_authors_pseudo_kl_matches_a_loop_over_batches():
    rs = np.random.RandomState(0)
    mu, logsigma = rs.randn(40, 3), rs.randn(40, 3) - 1
    per_batch = []
    for start in range(0, 40, 10):
        a = np.abs(np.mean(logsigma[start : start + 10], axis=0))
        per_batch.append(np.mean(0.5 * (mu[start : start + 10] ** 2 + np.exp(a) - a - 1), axis=0))
    expected = np.mean(per_batch, axis=0)
    np.testing.assert_allclose(authors_pseudo_kl(mu, logsigma), expected, rtol=1e-12)
    assert np.all(np.abs(expected - gaussian_kl(mu, logsigma)) > 0.1)  # not the Gaussian KL
    np.testing.assert_allclose(
        authors_pseudo_kl(mu, logsigma, batch_size=40),
        np.mean(
            0.5 * (mu**2 + np.exp(np.abs(logsigma.mean(0))) - np.abs(logsigma.mean(0)) - 1), axis=0
        ),
    )
    with pytest.raises(ValueError, match="multiple of batch_size"):
        authors_pseudo_kl(mu[:35], logsigma[:35])
    with pytest.raises(ValueError, match="same shape"):
        authors_pseudo_kl(mu, logsigma[:, :2])


# --- MIG ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(MIG_CASES))
@pytest.mark.parametrize("num_bins", [5, 20])
def test_mig_matches_reference(case, num_bins):
    codes, factors = MIG_CASES[case]
    expected = ref._compute_mig(codes.T, factors.T, num_bins)["discrete_mig"]
    assert mig(codes, factors, num_bins) == pytest.approx(expected, abs=1e-9)


def test_mig_per_factor_is_the_library_gap_per_factor():
    codes, factors = MIG_CASES["entangled"]
    m = ref.discrete_mutual_info(ref._histogram_discretize(codes.T), factors.T)
    sorted_m = np.sort(m, axis=0)[::-1]
    expected = (sorted_m[0] - sorted_m[1]) / ref.discrete_entropy(factors.T)
    per_factor = mig_per_factor(codes, factors)
    np.testing.assert_allclose(per_factor, expected, rtol=0, atol=1e-12)
    assert mig(codes, factors) == pytest.approx(np.mean(per_factor), abs=1e-15)


def test_mig_of_a_perfect_code_is_near_one_and_of_noise_near_zero():
    rs = np.random.RandomState(0)
    factors = np.stack([rs.randint(size, size=5000) for size in (3, 6, 20, 16)], axis=1)
    codes = np.hstack([factors + 1e-3 * rs.randn(*factors.shape), rs.randn(5000, 2)])
    assert mig(codes, factors) > 0.97
    assert mig(rs.randn(5000, 6), factors) < 0.03


def test_mig_is_invariant_to_code_permutation_and_depends_on_bins():
    codes, factors = MIG_CASES["entangled"]
    perm = np.random.RandomState(0).permutation(codes.shape[1])
    assert mig(codes[:, perm], factors) == pytest.approx(mig(codes, factors), abs=1e-12)
    assert abs(mig(codes, factors, 5) - mig(codes, factors, 50)) > 1e-3


def test_mig_validation():
    codes, factors = MIG_CASES["plain"]
    with pytest.raises(ValueError, match="at least 2 code"):
        mig(codes[:, :1], factors)
    with pytest.raises(ValueError, match="1999 points but the codes have 2000"):
        mig(codes, factors[1:])
    with pytest.raises(ValueError, match="integer class indices"):
        mig(codes, factors + 0.5)
    with pytest.raises(ValueError, match="2-D"):
        mig(codes, factors[:, 0])
    with pytest.raises(ValueError, match="NaN"):
        mig(np.where(codes > 0.4, np.nan, codes), factors)
    constant = factors.copy()
    constant[:, [0, 2]] = 1
    with pytest.raises(ValueError, match=r"columns \[0, 2\] are constant"):
        mig(codes, constant)
    # Integral floats are accepted as class indices.
    assert mig(codes, factors.astype(np.float32)) == mig(codes, factors)


# --- DCI ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("importance", "expected_d", "expected_c"),
    [
        # The library's dci_test.py cases (5 x 5 diagonal of 5s and its stacks).
        (np.diag(5.0 * np.ones(5)), 1.0, 1.0),
        (np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), 1.0, 1.0),  # an empty code
        (np.diag(5.0 * np.ones(5))[:2], 1.0, 1.0),  # missed factors
        (np.vstack([np.diag(5.0 * np.ones(5))] * 2), 1.0, 1 - math.log(2) / math.log(10)),
        (np.hstack([np.diag(5.0 * np.ones(5))] * 2), 1 - math.log(2) / math.log(10), 1.0),
        (np.zeros((10, 10)), 0.0, 0.0),
    ],
)
def test_dci_scores_library_identities(importance, expected_d, expected_c):
    # Exact up to the library's 1e-11 smoothing (1 - D ~ 1e-9 for a diagonal matrix).
    assert dci_disentanglement(importance) == pytest.approx(expected_d, abs=1e-8)
    assert dci_completeness(importance) == pytest.approx(expected_c, abs=1e-8)


def test_dci_scores_match_reference_on_random_importances():
    rs = np.random.RandomState(0)
    matrices = [rs.rand(10, 5), rs.rand(6, 3) ** 8, np.zeros((5, 4))]
    matrices[0][:, 2] = 0.0  # a factor no tree split on
    matrices[1][3] = 0.0  # an unused code
    for importance in matrices:
        assert dci_disentanglement(importance) == pytest.approx(
            ref.disentanglement(importance), abs=1e-12
        )
        assert dci_completeness(importance) == pytest.approx(
            ref.completeness(importance), abs=1e-12
        )


# Small DCI fixtures (400 train / 200 test points): name -> make_fixture arguments.
DCI_CASES = {
    "clean": {"factor_sizes": (3, 6, 5), "seed": 3},
    "entangled": {"factor_sizes": (3, 6, 5), "seed": 5, "mixing": 0.5, "noise": 0.2},
    "few_codes": {"factor_sizes": (2, 5, 3), "seed": 2, "num_codes": 4},
}


@functools.cache
def _dci_case(case, mode):
    """DCI of a DCI_CASES fixture, computed once per test session."""
    return dci(*_split(400, 200, **DCI_CASES[case]), mode=mode)


@pytest.mark.parametrize("case", sorted(DCI_CASES))
def test_dci_exact_matches_reference(case):
    codes_train, factors_train, codes_test, factors_test = _split(400, 200, **DCI_CASES[case])
    _seed_global_rng(0)
    expected = ref._compute_dci(*_transposed(codes_train, factors_train, codes_test, factors_test))
    before = _global_rng_state()
    result = _dci_case(case, "exact")
    assert _global_rng_state() == before  # per-factor seeds, the global RNG is left alone
    assert set(result) == set(expected)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=5e-3), key


def test_dci_exact_with_tied_codes_is_deterministic_and_close_to_reference():
    codes_train, factors_train, codes_test, factors_test = _split(400, 200, factor_sizes=(3, 4))
    # Quantised and duplicated codes: many equally good splits, broken by the tree's seed.
    codes_train = np.round(np.hstack([codes_train, codes_train[:, :2]]) * 3)
    codes_test = np.round(np.hstack([codes_test, codes_test[:, :2]]) * 3)
    _seed_global_rng(123)
    expected = ref._compute_dci(*_transposed(codes_train, factors_train, codes_test, factors_test))
    _seed_global_rng(0)
    parallel = dci_importance(codes_train, factors_train, codes_test, factors_test, n_jobs=2)
    _seed_global_rng(99)
    sequential = dci_importance(codes_train, factors_train, codes_test, factors_test, n_jobs=1)
    for a, b in zip(parallel, sequential, strict=True):
        np.testing.assert_array_equal(a, b)
    importance, train_accuracy, test_accuracy = parallel
    result = {
        "disentanglement": dci_disentanglement(importance),
        "completeness": dci_completeness(importance),
        "informativeness_train": np.mean(train_accuracy),
        "informativeness_test": np.mean(test_accuracy),
    }
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=5e-3), key


# Fast mode reproduces exact mode's classifier (rpu_ray/metrics/gbt.py): equal up to rounding.
@pytest.mark.parametrize("case", sorted(DCI_CASES))
def test_dci_fast_equals_exact(case):
    exact, fast = _dci_case(case, "exact"), _dci_case(case, "fast")
    for key in exact:
        assert fast[key] == pytest.approx(exact[key], abs=1e-6), key


def test_dci_fast_importance_matrix_equals_exact():
    split = _split(300, 150, factor_sizes=(2, 5, 3), seed=7, num_codes=4)
    exact = dci_importance(*split, seed=5)
    fast = dci_importance(*split, seed=5, mode="fast")
    np.testing.assert_allclose(fast[0], exact[0], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(fast[1], exact[1])
    np.testing.assert_array_equal(fast[2], exact[2])


@pytest.mark.slow
def test_dci_fast_equals_exact_on_dsprites_sized_factors():
    split = _split(2000, 1000, seed=4)
    exact, fast = dci(*split), dci(*split, mode="fast")
    for key in exact:
        assert fast[key] == pytest.approx(exact[key], abs=1e-6), key


def test_dci_validation():
    split = _split(50, 20, factor_sizes=(2, 3))
    with pytest.raises(ValueError, match="mode"):
        dci(*split, mode="approximate")
    with pytest.raises(ValueError, match="at least 2 factors"):
        dci(split[0], split[1][:, :1], split[2], split[3][:, :1])
    with pytest.raises(ValueError, match="codes_test has 9 codes"):
        dci(split[0], split[1], split[2][:, 1:], split[3])
    constant = split[1].copy()
    constant[:, 1] = 0
    with pytest.raises(ValueError, match=r"factors_train columns \[1\] are constant"):
        dci(split[0], constant, split[2], split[3])


# --- SAP ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("continuous", [False, True])
def test_sap_matches_reference(seed, continuous):
    codes_train, factors_train, codes_test, factors_test = _split(
        400, 200, factor_sizes=(3, 6, 10), num_codes=6, mixing=0.5 * seed, seed=seed
    )
    codes_train[:, 4] = 3.0 + 1e-8 * codes_train[:, 4]  # variance <= 1e-12: scores 0
    expected = ref._compute_sap(
        *_transposed(codes_train, factors_train, codes_test, factors_test), continuous
    )["SAP_score"]
    before = _global_rng_state()
    result = sap(codes_train, factors_train, codes_test, factors_test, continuous)
    assert _global_rng_state() == before
    assert result == pytest.approx(expected, abs=1e-9)
    assert 0.0 < result < 1.0


def test_sap_continuous_accepts_real_valued_factors():
    codes, factors = make_fixture(300, (3, 6, 10), num_codes=4)
    real = factors / 7.0
    expected = ref._compute_sap(codes.T, real.T, codes.T, real.T, True)["SAP_score"]
    assert sap(codes, real, codes, real, continuous=True) == pytest.approx(expected, abs=1e-9)
    with pytest.raises(ValueError, match="integer class indices"):
        sap(codes, real, codes, real)


# --- UDR ----------------------------------------------------------------------------------------


def _udr_case():
    reps, kls = make_udr_fixture(num_models=4, num_points=300)
    kls = kls.copy()
    kls[1, np.argmin(kls[1])] = 0.007  # zeroed (<= 0.01) but kept by a 0.005 filter: NaN rows
    kls[2, np.argmin(kls[2])] = 0.015  # not zeroed, dropped by a 0.02 filter
    return reps, kls


@pytest.mark.parametrize("correlation", ["lasso", "spearman"])
@pytest.mark.parametrize("filter_low_kl", [True, False])
@pytest.mark.parametrize("threshold", [0.01, 0.005, 0.02])
def test_udr_matches_reference(correlation, filter_low_kl, threshold):
    reps, kls = _udr_case()
    expected = ref.compute_udr_sklearn(list(reps), kls, correlation, filter_low_kl, threshold)
    pairwise = udr_pairwise(reps, kls, correlation, filter_low_kl, threshold)
    np.testing.assert_allclose(
        pairwise,
        np.asarray(expected["pairwise_disentanglement_scores"])[..., 0],
        rtol=0,
        atol=1e-9,
    )
    scores = udr(list(reps), kls, correlation, filter_low_kl, threshold)
    np.testing.assert_allclose(scores, expected["model_scores"], rtol=0, atol=1e-9)


def test_udr_float32_representations_match_reference():
    reps, kls = _udr_case()
    reps = reps.astype(np.float32)
    for correlation in ("lasso", "spearman"):
        expected = ref.compute_udr_sklearn(list(reps), kls, correlation)["model_scores"]
        np.testing.assert_allclose(udr(reps, kls, correlation), expected, rtol=0, atol=1e-9)


def test_udr_lasso_keeps_the_library_iterations_without_warning():
    # Collinear latents: sklearn's Lasso stops unconverged at 1,000 iterations and warns.
    rs = np.random.RandomState(1)
    z_a = rs.randn(300, 1) * rs.randn(1, 6) + 0.05 * rs.randn(300, 6)
    z_b = z_a @ rs.randn(6, 6) + 0.01 * rs.randn(300, 6)
    reps, kls = np.stack([z_a, z_b]), np.ones((2, 6))
    with pytest.warns(ConvergenceWarning):
        expected = ref.compute_udr_sklearn(list(reps), kls, "lasso")["model_scores"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = udr(reps, kls, "lasso")
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-9)


def test_udr_spearman_nan_poisoning():
    # Two identical models, one latent zeroed (KL 0.005 <= 0.01) but not filtered out.
    rep = np.random.RandomState(0).randn(200, 4)
    reps, kls = np.stack([rep, rep]), np.array([[1.0, 1.0, 1.0, 0.005]] * 2)
    # Filtered: the 3 live latents (independent noise gives off-diagonal |rho| ~ 0.05).
    assert np.all(udr(reps, kls, "spearman") > 0.8)
    # The NaN row/column of the dead latent reaches every max: every term becomes 0.
    np.testing.assert_array_equal(udr(reps, kls, "spearman", filter_low_kl=False), [0.0, 0.0])
    np.testing.assert_array_equal(udr(reps, kls, "spearman", kl_threshold=0.001), [0.0, 0.0])
    # Lasso just gets a zero row and column, whose terms count as 0 in the means.
    lasso = udr(reps, kls, "lasso", filter_low_kl=False)
    np.testing.assert_allclose(lasso, [0.9 * 3 / 4] * 2, atol=1e-3)


def test_udr_of_permuted_sign_flipped_copies_is_the_lasso_ceiling():
    rs = np.random.RandomState(0)
    base = rs.randn(1000, 10)
    reps = [base[:, rs.permutation(10)] * rs.choice([-1.0, 1.0], size=10) for _ in range(5)]
    kls = np.ones((5, 10))
    # Lasso(alpha=0.1) shrinks the matching coefficient to 0.9 and zeroes the chance ones.
    np.testing.assert_allclose(udr(reps, kls), 0.9, atol=1e-3)
    assert udr_member_score(reps, kls) == pytest.approx(0.9, abs=1e-3)


def test_udr_lasso_pairwise_is_oriented_and_median_is_over_targets():
    reps, kls = _udr_case()
    pairwise = udr_pairwise(reps, kls)
    assert np.all(np.diag(pairwise) == 0)
    assert np.max(np.abs(pairwise - pairwise.T)) > 1e-4  # Lasso is not symmetric
    expected = [np.median(np.delete(pairwise[:, i], i)) for i in range(4)]
    np.testing.assert_allclose(udr(reps, kls), expected, rtol=0, atol=0)


def test_udr_all_inactive_model_raises_like_the_library_and_scores_zero_for_the_authors():
    reps, kls = make_udr_fixture(num_models=5, num_points=200)
    kls = kls.copy()
    kls[3] = 0.001
    with pytest.raises(ValueError):
        ref.compute_udr_sklearn(list(reps), kls)
    with pytest.raises(ValueError, match=r"models \[3\] have no latent"):
        udr(reps, kls)
    scores = udr(reps, kls, empty_model_score=0.0)
    assert scores[3] == 0.0
    assert np.all(scores[[0, 1, 2, 4]] > 0.5)
    pairwise = udr_pairwise(reps, kls, empty_model_score=0.0)
    assert np.all(pairwise[3] == 0) and np.all(pairwise[:, 3] == 0)
    assert udr_member_score(reps, kls) == pytest.approx(np.mean(scores), abs=1e-12)
    # Without the filter nothing is empty: the dead model's latents are all-zero rows/columns.
    np.testing.assert_allclose(
        udr(reps, kls, filter_low_kl=False),
        ref.compute_udr_sklearn(list(reps), kls, filter_low_kl=False)["model_scores"],
        rtol=0,
        atol=1e-9,
    )


def test_udr_validation():
    reps, kls = make_udr_fixture(num_models=3, num_points=50)
    with pytest.raises(ValueError, match="correlation"):
        udr(reps, kls, "pearson")
    with pytest.raises(ValueError, match="same shape"):
        udr([reps[0], reps[1][:, :5]], kls[:2])
    with pytest.raises(ValueError, match="kls must be"):
        udr(reps, kls[:, :5])
    with pytest.raises(ValueError, match="num_models >= 2"):
        udr(reps[:1], kls[:1])


# --- benchmark script ---------------------------------------------------------------------------


def test_metrics_speed_smoke_runs():
    rows = metrics_speed.main(["--smoke"])
    by_metric = {row["metric"]: row for row in rows}
    assert set(by_metric) == {
        "MIG",
        "UDR (lasso)",
        "UDR (spearman)",
        "SAP",
        "DCI fast (n_jobs=2)",
        "DCI exact (n_jobs=2)",
    }
    assert 0.1 < by_metric["MIG"]["value"] < 0.9
    assert by_metric["DCI exact (n_jobs=2)"]["value"]["informativeness_test"] > 0.8
    np.testing.assert_array_less(0.5, by_metric["UDR (lasso)"]["value"])
    # the values are the metrics of the smoke fixture (200 train / 100 test points)
    codes, factors = metrics_speed.make_fixture(300, (2, 3, 4))
    assert by_metric["MIG"]["value"] == mig(codes[:200], factors[:200])
    assert by_metric["SAP"]["value"] == sap(codes[:200], factors[:200], codes[200:],
                                            factors[200:])
    fast, exact = (by_metric[f"DCI {mode} (n_jobs=2)"]["value"] for mode in ("fast", "exact"))
    assert fast == pytest.approx(exact, abs=1e-9)  # the fixture's codes have no ties
