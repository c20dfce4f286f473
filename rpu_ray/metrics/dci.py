"""DCI disentanglement, completeness and informativeness (Eastwood & Williams, 2018), as
disentanglement_lib's `dci.py`.

One gradient-boosted tree classifier per factor predicts the factor from all codes; the absolute
feature importances form R (num_codes, num_factors), each column summing to 1 (or 0 if no tree
ever split). Disentanglement is the code-importance-weighted mean of 1 - H_F(row of R),
completeness the factor-importance-weighted mean of 1 - H_C(column of R) (entropies in base F
and C, with the library's 1e-11 smoothing). "Informativeness" is, as in the library, the mean
classification *accuracy* over factors (higher is better), on the training and the test split.
"""

from __future__ import annotations

import numpy as np
from joblib import Parallel, delayed
from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

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


def _hist_gbt_importances(model: HistGradientBoostingClassifier) -> np.ndarray:
    """Total split gain per feature over all trees, normalised to sum to 1 (0 if no split).

    HistGradientBoosting has no `feature_importances_`; this is the analogue of the gain-based
    (impurity decrease) importances of GradientBoostingClassifier. It reads the fitted trees'
    node arrays (`_predictors`, private sklearn API, stable since sklearn 0.21).
    """
    gains = np.zeros(model.n_features_in_)
    for trees in model._predictors:
        for tree in trees:
            split = tree.nodes["is_leaf"] == 0
            np.add.at(gains, tree.nodes["feature_idx"][split], tree.nodes["gain"][split])
    total = gains.sum()
    return gains / total if total > 0 else gains


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
    else:
        # One OpenMP thread: the parallelism is over factors, and HistGradientBoosting's
        # threads slow down badly on a busy 2-core machine.
        with threadpool_limits(1):
            model = HistGradientBoostingClassifier(
                max_depth=3, max_leaf_nodes=None, min_samples_leaf=1, early_stopping=False,
                random_state=random_state,
            )
            model.fit(x_train, y_train)
        importances = _hist_gbt_importances(model)
    train_accuracy = float(np.mean(model.predict(x_train) == y_train))
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
      seed: derives the per-factor `random_state`s (tie-breaking between equally good splits).
      mode: "exact": sklearn GradientBoostingClassifier() with the library's defaults (the
        numbers to report; ~5-10 minutes for 10,000/5,000 points with dSprites' factors on 2
        cores). "fast": HistGradientBoostingClassifier with the library's tree depth (3),
        learning rate (0.1) and 100 stages, 255-bin features, min_samples_leaf=20, no early
        stopping, importances = total split gain per code; for PBT scoring. Measured deviation
        from exact (benchmarks/RESULTS.md, "Metrics (CPU)"; tests/test_metrics.py):
        <= 0.02 on every key on the fixtures tested.
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
