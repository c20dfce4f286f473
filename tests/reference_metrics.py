"""Deliberately literal transcription of disentanglement_lib's metric functions, for tests only.

Written from shared/reference/metrics-spec.md (library commit 86a644d) with the library's
own loops, layout and sklearn/scipy calls, so that rpu_ray.metrics (vectorised, sklearn layout)
can be checked against it. Layout as in the library: codes `mus` (num_codes, num_points),
factors `ys` (num_factors, num_points); the UDR helpers take (num_points, num_latents).
The ground-truth-data sampling and gin plumbing are left out: each function starts from the
arrays the library computes.
"""

from __future__ import annotations

import numpy as np
import scipy.stats
from sklearn import ensemble, linear_model, preprocessing, svm
from sklearn.metrics import mutual_info_score

# --- utils.py ---------------------------------------------------------------------------------


def _histogram_discretize(target, num_bins=20):
    discretized = np.zeros_like(target)
    for i in range(target.shape[0]):
        discretized[i, :] = np.digitize(target[i, :], np.histogram(target[i, :], num_bins)[1][:-1])
    return discretized


def discrete_mutual_info(mus, ys):
    num_codes = mus.shape[0]
    num_factors = ys.shape[0]
    m = np.zeros([num_codes, num_factors])
    for i in range(num_codes):
        for j in range(num_factors):
            m[i, j] = mutual_info_score(ys[j, :], mus[i, :])
    return m


def discrete_entropy(ys):
    num_factors = ys.shape[0]
    h = np.zeros(num_factors)
    for j in range(num_factors):
        h[j] = mutual_info_score(ys[j, :], ys[j, :])
    return h


# --- mig.py -----------------------------------------------------------------------------------


def _compute_mig(mus_train, ys_train, num_bins=20):
    score_dict = {}
    discretized_mus = _histogram_discretize(mus_train, num_bins)
    m = discrete_mutual_info(discretized_mus, ys_train)
    assert m.shape[0] == mus_train.shape[0]
    assert m.shape[1] == ys_train.shape[0]
    entropy = discrete_entropy(ys_train)
    sorted_m = np.sort(m, axis=0)[::-1]
    score_dict["discrete_mig"] = np.mean(np.divide(sorted_m[0, :] - sorted_m[1, :], entropy[:]))
    return score_dict


# --- dci.py -----------------------------------------------------------------------------------


def _compute_dci(mus_train, ys_train, mus_test, ys_test):
    scores = {}
    importance_matrix, train_err, test_err = compute_importance_gbt(
        mus_train, ys_train, mus_test, ys_test
    )
    assert importance_matrix.shape[0] == mus_train.shape[0]
    assert importance_matrix.shape[1] == ys_train.shape[0]
    scores["informativeness_train"] = train_err
    scores["informativeness_test"] = test_err
    scores["disentanglement"] = disentanglement(importance_matrix)
    scores["completeness"] = completeness(importance_matrix)
    return scores


def compute_importance_gbt(x_train, y_train, x_test, y_test):
    num_factors = y_train.shape[0]
    num_codes = x_train.shape[0]
    importance_matrix = np.zeros(shape=[num_codes, num_factors], dtype=np.float64)
    train_loss = []
    test_loss = []
    for i in range(num_factors):
        model = ensemble.GradientBoostingClassifier()
        model.fit(x_train.T, y_train[i, :])
        importance_matrix[:, i] = np.abs(model.feature_importances_)
        train_loss.append(np.mean(model.predict(x_train.T) == y_train[i, :]))
        test_loss.append(np.mean(model.predict(x_test.T) == y_test[i, :]))
    return importance_matrix, np.mean(train_loss), np.mean(test_loss)


def disentanglement_per_code(importance_matrix):
    return 1.0 - scipy.stats.entropy(importance_matrix.T + 1e-11, base=importance_matrix.shape[1])


def disentanglement(importance_matrix):
    per_code = disentanglement_per_code(importance_matrix)
    if importance_matrix.sum() == 0.0:
        importance_matrix = np.ones_like(importance_matrix)
    code_importance = importance_matrix.sum(axis=1) / importance_matrix.sum()
    return np.sum(per_code * code_importance)


def completeness_per_factor(importance_matrix):
    return 1.0 - scipy.stats.entropy(importance_matrix + 1e-11, base=importance_matrix.shape[0])


def completeness(importance_matrix):
    per_factor = completeness_per_factor(importance_matrix)
    if importance_matrix.sum() == 0.0:
        importance_matrix = np.ones_like(importance_matrix)
    factor_importance = importance_matrix.sum(axis=0) / importance_matrix.sum()
    return np.sum(per_factor * factor_importance)


# --- sap_score.py -----------------------------------------------------------------------------


def _compute_sap(mus, ys, mus_test, ys_test, continuous_factors):
    score_matrix = compute_score_matrix(mus, ys, mus_test, ys_test, continuous_factors)
    assert score_matrix.shape[0] == mus.shape[0]
    assert score_matrix.shape[1] == ys.shape[0]
    scores_dict = {}
    scores_dict["SAP_score"] = compute_avg_diff_top_two(score_matrix)
    return scores_dict


def compute_score_matrix(mus, ys, mus_test, ys_test, continuous_factors):
    num_latents = mus.shape[0]
    num_factors = ys.shape[0]
    score_matrix = np.zeros([num_latents, num_factors])
    for i in range(num_latents):
        for j in range(num_factors):
            mu_i = mus[i, :]
            y_j = ys[j, :]
            if continuous_factors:
                cov_mu_i_y_j = np.cov(mu_i, y_j, ddof=1)
                cov_mu_y = cov_mu_i_y_j[0, 1] ** 2
                var_mu = cov_mu_i_y_j[0, 0]
                var_y = cov_mu_i_y_j[1, 1]
                if var_mu > 1e-12:
                    score_matrix[i, j] = cov_mu_y * 1.0 / (var_mu * var_y)
                else:
                    score_matrix[i, j] = 0.0
            else:
                mu_i_test = mus_test[i, :]
                y_j_test = ys_test[j, :]
                classifier = svm.LinearSVC(C=0.01, class_weight="balanced")
                classifier.fit(mu_i[:, np.newaxis], y_j)
                pred = classifier.predict(mu_i_test[:, np.newaxis])
                score_matrix[i, j] = np.mean(pred == y_j_test)
    return score_matrix


def compute_avg_diff_top_two(matrix):
    sorted_matrix = np.sort(matrix, axis=0)
    return np.mean(sorted_matrix[-1, :] - sorted_matrix[-2, :])


# --- udr/metrics/udr.py -----------------------------------------------------------------------


def relative_strength_disentanglement(corr_matrix):
    score_x = np.nanmean(
        np.nan_to_num(
            np.power(np.ndarray.max(corr_matrix, axis=0), 2) / np.sum(corr_matrix, axis=0), 0
        )
    )
    score_y = np.nanmean(
        np.nan_to_num(
            np.power(np.ndarray.max(corr_matrix, axis=1), 2) / np.sum(corr_matrix, axis=1), 0
        )
    )
    return (score_x + score_y) / 2


def spearman_correlation_conv(vec1, vec2):
    assert vec1.shape == vec2.shape
    corr_matrix = np.zeros((vec1.shape[1], vec2.shape[1]))
    for i in range(vec1.shape[1]):
        for j in range(vec2.shape[1]):
            corr_matrix[i, j] = np.abs(
                scipy.stats.spearmanr(vec1[:, i], vec2[:, j], nan_policy="omit")[0]
            )
    return corr_matrix


def lasso_correlation_matrix(vec1, vec2, random_state=None):
    assert vec1.shape == vec2.shape
    model = linear_model.Lasso(random_state=random_state, alpha=0.1)
    model.fit(vec1, vec2)
    return np.transpose(np.abs(model.coef_))


def compute_udr_sklearn(
    inferred_model_reps,
    kl,
    correlation_matrix="lasso",
    filter_low_kl=True,
    kl_filter_threshold=0.01,
    random_state=None,
):
    """The body of the library's compute_udr_sklearn after `_generate_representation_dataset`
    (which returns the list of (num_points, num_latents) means and the per-model KL vectors)."""
    inferred_model_reps = [np.array(rep) for rep in inferred_model_reps]
    num_models = len(inferred_model_reps)
    latent_dim = inferred_model_reps[0].shape[1]
    corr_matrix_all = np.zeros((num_models, num_models, latent_dim, latent_dim))

    kl_mask = []
    for i in range(len(inferred_model_reps)):
        scaler = preprocessing.StandardScaler()
        scaler.fit(inferred_model_reps[i])
        inferred_model_reps[i] = scaler.transform(inferred_model_reps[i])
        inferred_model_reps[i] = inferred_model_reps[i] * np.greater(kl[i], 0.01)
        kl_mask.append(kl[i] > kl_filter_threshold)

    disentanglement = np.zeros((num_models, num_models, 1))
    for i in range(num_models):
        for j in range(num_models):
            if i == j:
                continue
            if correlation_matrix == "lasso":
                corr_matrix = lasso_correlation_matrix(
                    inferred_model_reps[i], inferred_model_reps[j], random_state
                )
            else:
                corr_matrix = spearman_correlation_conv(
                    inferred_model_reps[i], inferred_model_reps[j]
                )
            corr_matrix_all[i, j, :, :] = corr_matrix
            if filter_low_kl:
                corr_matrix = corr_matrix[kl_mask[i], ...][..., kl_mask[j]]
            disentanglement[i, j] = relative_strength_disentanglement(corr_matrix)

    scores_dict = {}
    scores_dict["raw_correlations"] = corr_matrix_all.tolist()
    scores_dict["pairwise_disentanglement_scores"] = disentanglement.tolist()
    model_scores = []
    for i in range(num_models):
        model_scores.append(np.median(np.delete(disentanglement[:, i], i)))
    scores_dict["model_scores"] = model_scores
    return scores_dict
