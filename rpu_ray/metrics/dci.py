"""DCI disentanglement, completeness and informativeness (Eastwood & Williams, 2018), as
disentanglement_lib's `dci.py`.

One gradient-boosted tree classifier per factor predicts the factor from all codes; the absolute
feature importances form R (num_codes, num_factors), each column summing to 1 (or 0 if no tree
ever split). Disentanglement is the code-importance-weighted mean of 1 - H_F(row of R),
completeness the factor-importance-weighted mean of 1 - H_C(column of R) (entropies in base F
and C, with the library's 1e-11 smoothing). "Informativeness" is, as in the library, the mean
classification *accuracy* over factors (higher is better), on the training and the test split.

Modes:
  * "exact" (the numbers to report): sklearn GradientBoostingClassifier() with the library's
    defaults (100 stages of depth-3 trees, one tree per class per stage, exact splits,
    min_samples_leaf=1). 10,000/5,000 points, 10 codes, dSprites' factor sizes
    (3, 6, 40, 32, 32): 372 s with 2 processes, 499 s sequential, on 2 shared cores.
  * "fast" (PBT scoring): HistGradientBoostingClassifier with the same learning rate (0.1),
    number of stages (100), depth (3), min_samples_leaf (1) and no early stopping, but with
    the codes binned into 255 quantile bins (histogram split search; its split choice is
    hessian-weighted). Importances are GradientBoostingClassifier's (squared-error decrease of
    the fitted residuals per split, see `_hist_gbt_importances`), not the histogram trees' own
    gains, which read ~0.05 higher D and C at 10,000 points. 26 CPU-seconds on the data above
    (12.7 s wall with 2 processes on 2 idle cores; 30-38 s on cores shared with other jobs).
    Measured fast - exact (disentanglement, completeness, informativeness train, test) on the
    synthetic codes of benchmarks/metrics_speed.py (`make_fixture`, default mixing/noise unless
    stated):
      10,000/5,000, dSprites sizes (the benchmark):   +0.023 +0.022 -0.037 +0.008
      3,000/1,500, dSprites sizes:                     +0.001 +0.008 -0.004 +0.018
      3,000/1,500, dSprites sizes, seed 1, mixing 0.5, noise 0.2:
                                                       -0.010 -0.003 -0.011 +0.003
      2,000/1,000, dSprites sizes, seed 4:             -0.013 -0.003 -0.000 +0.014
      400/200, sizes (3, 6, 5), seed 3:                -0.002 +0.002  0.000 +0.013
      400/200, sizes (3, 6, 5), seed 5, mixing 0.5, noise 0.2:
                                                       +0.031 +0.024  0.000 +0.007
      400/200, sizes (2, 5, 3), seed 2, 4 codes:       +0.042 +0.028  0.000 -0.002
    So it is not within 0.02 everywhere: D and C within 0.04, train informativeness up to
    0.04 lower (the binned trees overfit less). Use "fast" as a cheaper proxy for PBT scoring
    (rank agreement with "exact" across members was not measured) and report "exact".
"""

from __future__ import annotations

import numpy as np
from joblib import Parallel, delayed
from scipy.special import expit, softmax
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


# Node record fields of sklearn's histogram trees used below, with the padding value.
_NODE_FIELDS = {
    "feature_idx": 0, "num_threshold": 0.0, "left": 0, "right": 0, "is_leaf": 1, "depth": 0,
    "value": 0.0,
}


def _stage_table(trees: list, field: str, fill: float) -> np.ndarray:
    """One node field of a stage's trees as a (num_trees, max_nodes) table, padded with fill."""
    table = np.full((len(trees), max(len(tree.nodes) for tree in trees)), fill,
                    dtype=trees[0].nodes.dtype[field])
    for k, tree in enumerate(trees):
        table[k, : len(tree.nodes)] = tree.nodes[field]
    return table


def _hist_gbt_importances(
    model: HistGradientBoostingClassifier, x_train: np.ndarray, y_train: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """GradientBoostingClassifier-style importances of a fitted HistGradientBoostingClassifier.

    HistGradientBoosting has no `feature_importances_`, and its split gains are hessian-weighted
    (summing them reads ~0.05 higher D and C than exact mode at 10,000 points). Gradient boosting
    scores a split by the decrease of squared error of the residuals its tree fits,
    S_l^2/n_l + S_r^2/n_r - S^2/n (S = sum of the residuals y_k - p_k in a node, n = its size),
    summed over all trees. This replays the boosting on the training points: per stage,
    residuals from the current raw predictions, one walk of every point down all the stage's
    trees (one per class) for the node sums, then the stage's leaf values (shrinkage included)
    are added to the raw predictions. Reads private sklearn attributes (`_predictors`,
    `_baseline_prediction` and the trees' node records).

    Returns:
      importances (num_codes,) summing to 1 (all zero if no tree split), and the model's
      predictions on x_train (from the replayed raw predictions, as `model.predict`).
    """
    num_points, num_codes = x_train.shape
    onehot = (y_train[:, None] == model.classes_[None, :]).astype(np.float64)
    raw = np.tile(np.asarray(model._baseline_prediction, dtype=np.float64), (num_points, 1))
    importances = np.zeros(num_codes)
    x_flat = np.ascontiguousarray(x_train, dtype=np.float64).ravel()
    row_offset = (np.arange(num_points) * num_codes)[:, None]
    for trees in model._predictors:
        if len(trees) == 1:  # binary: one tree on the log-odds of classes_[1]
            residuals = onehot[:, 1:] - expit(raw)
        else:
            residuals = onehot - softmax(raw, axis=1)
        table = {field: _stage_table(trees, field, fill) for field, fill in _NODE_FIELDS.items()}
        is_leaf = table["is_leaf"].astype(bool)
        num_trees, num_nodes = is_leaf.shape
        # Nodes are flat indices into the (num_trees, num_nodes) tables; children[2 * node + 1]
        # is the left child (x <= threshold), children[2 * node] the right one, and a leaf is
        # its own child, so every point can take max-depth steps.
        flat_id = np.arange(num_trees * num_nodes).reshape(num_trees, num_nodes)
        tree_offset = flat_id[:, :1]
        children = np.stack([np.where(is_leaf, flat_id, table[side] + tree_offset)
                             for side in ("right", "left")], axis=-1).ravel()
        feature, threshold = table["feature_idx"].ravel(), table["num_threshold"].ravel()
        node = np.broadcast_to(tree_offset.T, (num_points, num_trees))
        for _ in range(int(table["depth"].max())):
            goes_left = x_flat[row_offset + feature[node]] <= threshold[node]
            node = children[2 * node + goes_left]
        # Sums and sizes of the leaves, then of every split node (children come after their
        # parent in the node records, so a reverse sweep sees the children first).
        sums = np.bincount(node.ravel(), residuals.ravel(), minlength=num_trees * num_nodes)
        counts = np.bincount(node.ravel(), minlength=num_trees * num_nodes).astype(np.float64)
        sums, counts = sums.reshape(num_trees, num_nodes), counts.reshape(num_trees, num_nodes)
        split = ~is_leaf
        rows = np.arange(num_trees)
        for i in range(num_nodes - 1, -1, -1):
            left, right = table["left"][:, i], table["right"][:, i]
            sums[:, i] = np.where(split[:, i], sums[rows, left] + sums[rows, right], sums[:, i])
            counts[:, i] = np.where(split[:, i], counts[rows, left] + counts[rows, right],
                                    counts[:, i])
        with np.errstate(divide="ignore", invalid="ignore"):
            explained = np.where(counts > 0, sums**2 / counts, 0.0)
        gain = (explained[rows[:, None], table["left"]] + explained[rows[:, None], table["right"]]
                - explained)
        importances += np.bincount(table["feature_idx"][split], gain[split], minlength=num_codes)
        raw += table["value"].ravel()[node]
    total = importances.sum()
    if raw.shape[1] == 1:
        encoded = (raw[:, 0] > 0).astype(np.intp)
    else:
        encoded = np.argmax(raw, axis=1)
    return (importances / total if total > 0 else importances), model.classes_[encoded]


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
        model = HistGradientBoostingClassifier(
            max_depth=3, max_leaf_nodes=None, min_samples_leaf=1, early_stopping=False,
            random_state=random_state,
        )
        model.fit(x_train, y_train)
        importances, train_predictions = _hist_gbt_importances(model, x_train, y_train)
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
    # One OpenMP thread per fit (HistGradientBoosting): the parallelism is over factors, and
    # its threads slow down badly on a busy 2-core machine. GradientBoosting is single-threaded.
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
      seed: derives the per-factor `random_state`s (tie-breaking between equally good splits).
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
