"""Separated Attribute Predictability (Kumar et al., 2018), as disentanglement_lib's
`sap_score.py` (`SAP_score`).

Score matrix S (num_codes, num_factors): for discrete factors (the library's configured mode),
S_ij = test accuracy of a linear SVM predicting factor j from code i alone; for continuous
factors, S_ij = squared correlation of code i and factor j on the training split (0 where the
code's variance is <= 1e-12). SAP = mean over factors of (largest - second-largest S_ij over codes).
"""

from __future__ import annotations

import numpy as np
from sklearn.svm import LinearSVC

from rpu_ray.metrics.utils import check_split


def _svm_accuracy(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> float:
    """Test accuracy of LinearSVC(C=0.01, class_weight="balanced") fitted on one code.

    With one feature, sklearn >= 1.5's `dual="auto"` picks liblinear's primal (Newton) solver,
    which does not use its seed: the fixed random_state only stops sklearn from drawing one from
    numpy's global RNG (the library's random_state=None does, with the same numbers). The
    library era defaulted to the dual solver: numbers from sklearn < 1.5 differ slightly.
    """
    classifier = LinearSVC(C=0.01, class_weight="balanced", random_state=0)
    classifier.fit(x_train, y_train)
    return float(np.mean(classifier.predict(x_test) == y_test))


def _discrete_score_matrix(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
) -> np.ndarray:
    """S_ij = test accuracy of the linear SVM predicting factor j from code i alone.

    (Running the fits in threads gave no measurable speed-up on 2 cores.)
    """
    num_codes, num_factors = codes_train.shape[1], factors_train.shape[1]
    scores = np.empty((num_codes, num_factors))
    for i in range(num_codes):
        for j in range(num_factors):
            scores[i, j] = _svm_accuracy(
                codes_train[:, i : i + 1], factors_train[:, j], codes_test[:, i : i + 1],
                factors_test[:, j],
            )
    return scores


def _continuous_score_matrix(codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """S_ij = cov(z_i, v_j)^2 / (var z_i * var v_j) (ddof=1), 0 where var z_i <= 1e-12."""
    n = codes.shape[0]
    centred_codes = codes - codes.mean(axis=0)
    centred_factors = factors - factors.mean(axis=0)
    cov = centred_codes.T @ centred_factors / (n - 1)
    var_codes = np.sum(centred_codes**2, axis=0) / (n - 1)
    var_factors = np.sum(centred_factors**2, axis=0) / (n - 1)
    active = var_codes > 1e-12
    scores = np.zeros_like(cov)
    scores[active] = cov[active] ** 2 / (var_codes[active, None] * var_factors)
    return scores


def sap_from_score_matrix(scores: np.ndarray) -> float:
    """Mean over factors (columns) of the gap between the two largest scores over codes (rows)."""
    top_two = -np.partition(-scores, 1, axis=0)[:2]
    return float(np.mean(top_two[0] - top_two[1]))


def sap(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    continuous: bool = False,
) -> float:
    """Computes SAP.

    Args:
      codes_train: (num_train, num_codes) representation, num_codes >= 2.
      factors_train: (num_train, num_factors) factor labels, none constant.
      codes_test: (num_test, num_codes) representation of the test points.
      factors_test: (num_test, num_factors) factor labels of the test points.
      continuous: False (library configuration): integer factors, SVM test accuracy.
        True: squared correlation on the training split only (the test split is validated but
        not used, as in the library); factors may then be real-valued.

    Returns:
      SAP in [0, 1].
    """
    codes_train, factors_train, codes_test, factors_test = check_split(
        codes_train, factors_train, codes_test, factors_test, min_codes=2, integer=not continuous
    )
    if continuous:
        scores = _continuous_score_matrix(codes_train, factors_train)
    else:
        scores = _discrete_score_matrix(codes_train, factors_train, codes_test, factors_test)
    return sap_from_score_matrix(scores)
