"""DCI disentanglement, completeness and informativeness (Eastwood & Williams, 2018), as
disentanglement_lib's `dci.py`.

One gradient-boosted tree classifier per factor predicts the factor from all codes; the absolute
feature importances form R (num_codes, num_factors), each column summing to 1 (or 0 if no tree
ever split). Disentanglement is the code-importance-weighted mean of 1 - H_F(row of R),
completeness the factor-importance-weighted mean of 1 - H_C(column of R) (entropies in base F
and C, with the library's 1e-11 smoothing). "Informativeness" is, as in the library, the mean
classification *accuracy* over factors (higher is better), on the training and the test split.

Modes:
  * "exact": sklearn GradientBoostingClassifier(random_state=per-factor seed) with the library's
    defaults (100 stages of depth-3 trees, one tree per class per stage, exact splits,
    min_samples_leaf=1). 10,000/5,000 points, 10 codes, dSprites' factor sizes
    (3, 6, 40, 32, 32): 372 s with 2 processes, 499 s sequential, on 2 shared cores (2026-11-28);
    138 s with 2 processes at load ~2 and 256 s at load ~4 (2026-11-29).
  * "fast": the same classifier, same seeds, reimplemented in numpy (`rpu_ray.metrics.gbt`): all
    trees of a stage grow together, level by level, on features presorted once, and sklearn's
    tie-breaking (its splitter RNG's feature order, float64 running sums, sample order) is
    replayed where candidates tie. It reproduces exact mode's models: on the synthetic codes of
    benchmarks/metrics_speed.py (`make_fixture`) importances agree to ~1e-15 and raw scores to
    the bit at 300-2,000 points (tests/test_gbt.py), so D, C and I agree to ~1e-14 (the three
    DCI_CASES of tests/test_metrics.py and 2,000/1,000 dSprites sizes). On the 10,000/5,000
    benchmark data: importance matrices within 2.3e-14 of exact mode's, accuracies identical, D
    and C within 2e-15; 22.3 s with 2 processes at load ~2 (one other busy process; exact 138 s
    in the same run), 39.5 s while another job kept both cores busy (load 3.5-4; exact 256 s),
    i.e. 6-7x faster than exact mode; ~40 CPU-seconds under that load. The worker that gets
    both 32-class factors grows 64 of the 113 trees per stage, so wall time is >= 57% of CPU.
    Where it can differ: codes with repeated values *and* different residuals (e.g. quantised
    codes) are tied in sklearn's sort, whose order among equal values (introsort) is not
    replayed, so near-tied splits can go to another feature. tests/test_metrics.py's tied-codes
    case (400/200 points, 10 codes rounded to multiples of 1/3 plus 2 duplicates, factor sizes
    (3, 4)): completeness -0.005, disentanglement -0.0001, accuracies equal.
    Identical rows (the same image drawn twice) are harmless: equal codes, equal residuals.
"""

from __future__ import annotations

import numpy as np
from joblib import Parallel, delayed
from sklearn.ensemble import GradientBoostingClassifier
from threadpoolctl import threadpool_limits

from rpu_ray.metrics.gbt import GradientBoostedTrees
from rpu_ray.metrics.utils import check_split

# Added to R inside the entropies only (not in the weights), as the library does.
_EPSILON = 1e-11
_MODES = ("exact", "fast")


def _normalised_entropy(p: np.ndarray, base: int) -> np.ndarray:
    """scipy.stats.entropy(p, base=base) along axis 0: p is normalised per column first."""
    p = p / p.sum(axis=0)
    return -np.sum(p * np.log(p), axis=0) / np.log(base)


def dci_disentanglement(importance: np.ndarray) -> float:
    """Disentanglement of an importance matrix R (num_codes, num_factors), num_factors >= 2.

    Per code i: 1 - H(R_i. / sum R_i.) / log(num_factors); weighted by rho_i = sum R_i. / sum R
    (uniform weights if R is all zero), so a code no factor uses does not lower the score.
    """
    importance = np.asarray(importance, dtype=np.float64)
    per_code = 1.0 - _normalised_entropy(importance.T + _EPSILON, importance.shape[1])
    if importance.sum() == 0.0:
        importance = np.ones_like(importance)
    return float(np.sum(per_code * importance.sum(axis=1) / importance.sum()))


def dci_completeness(importance: np.ndarray) -> float:
    """Completeness of an importance matrix R (num_codes, num_factors), num_codes >= 2.

    Per factor j: 1 - H(R_.j / sum R_.j) / log(num_codes); weighted by sum R_.j / sum R.
    """
    importance = np.asarray(importance, dtype=np.float64)
    per_factor = 1.0 - _normalised_entropy(importance + _EPSILON, importance.shape[0])
    if importance.sum() == 0.0:
        importance = np.ones_like(importance)
    return float(np.sum(per_factor * importance.sum(axis=0) / importance.sum()))


def _fit_factor(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    mode: str,
    random_state: int,
) -> tuple[np.ndarray, float, float]:
    """Fits one factor; returns (|importances| (num_codes,), train accuracy, test accuracy)."""
    if mode == "exact":
        model = GradientBoostingClassifier(random_state=random_state)
        model.fit(x_train, y_train)
        importances = np.abs(model.feature_importances_)
        train_predictions = model.predict(x_train)
    else:
        model = GradientBoostedTrees(random_state=random_state).fit(x_train, y_train)
        importances = np.abs(model.feature_importances_)
        train_predictions = model.labels_of(model.train_raw_)
    train_accuracy = float(np.mean(train_predictions == y_train))
    test_accuracy = float(np.mean(model.predict(x_test) == y_test))
    return importances, train_accuracy, test_accuracy


def dci_importance(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    seed: int = 0,
    mode: str = "exact",
    n_jobs: int = 2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Importance matrix and per-factor accuracies (the library's `compute_importance_gbt`).

    Args: as `dci`.

    Returns:
      importance (num_codes, num_factors), train accuracy (num_factors,), test accuracy
      (num_factors,).
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    codes_train, factors_train, codes_test, factors_test = check_split(
        codes_train, factors_train, codes_test, factors_test, min_codes=2, min_factors=2
    )
    num_factors = factors_train.shape[1]
    # One independent seed per factor: results depend on `seed` only, not on numpy's global RNG
    # (which the library's random_state=None uses) nor on which worker fits which factor.
    seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(num_factors)]
    # Many-class factors cost most (one tree per class per stage): start them first.
    order = np.argsort([-np.unique(factors_train[:, j]).size for j in range(num_factors)],
                       kind="stable")
    # One BLAS/OpenMP thread per worker: the parallelism is over factors (both modes are
    # single-threaded numpy/Cython; this guards against oversubscription on a busy machine).
    with threadpool_limits(1):
        fitted = Parallel(n_jobs=n_jobs, batch_size=1)(
            delayed(_fit_factor)(
                codes_train, factors_train[:, j], codes_test, factors_test[:, j], mode, seeds[j]
            )
            for j in order
        )
    importance = np.empty((codes_train.shape[1], num_factors))
    train_accuracy = np.empty(num_factors)
    test_accuracy = np.empty(num_factors)
    for j, (importances, train_acc, test_acc) in zip(order, fitted, strict=True):
        importance[:, j], train_accuracy[j], test_accuracy[j] = importances, train_acc, test_acc
    return importance, train_accuracy, test_accuracy


def dci(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    seed: int = 0,
    mode: str = "exact",
    *,
    n_jobs: int = 2,
) -> dict[str, float]:
    """Computes DCI.

    Args:
      codes_train: (num_train, num_codes) representation, num_codes >= 2 (completeness uses
        entropies in base num_codes).
      factors_train: (num_train, num_factors) integer factor indices, num_factors >= 2
        (disentanglement uses base num_factors; the library gives nan for one factor), none
        constant (the library's classifier raises on them).
      codes_test: (num_test, num_codes) test representation.
      factors_test: (num_test, num_factors) test factor indices.
      seed: derives the per-factor `random_state`s (tie-breaking between equally good splits;
        both modes use the same ones and break ties the same way).
      mode: "exact" or "fast", see the module docstring.
      n_jobs: joblib processes over factors (1 = sequential). Results do not depend on it.

    Returns:
      dict with `disentanglement`, `completeness`, `informativeness_train`,
      `informativeness_test` (the latter two are mean accuracies).
    """
    importance, train_accuracy, test_accuracy = dci_importance(
        codes_train, factors_train, codes_test, factors_test, seed, mode, n_jobs
    )
    return {
        "disentanglement": dci_disentanglement(importance),
        "completeness": dci_completeness(importance),
        "informativeness_train": float(np.mean(train_accuracy)),
        "informativeness_test": float(np.mean(test_accuracy)),
    }
