"""Unsupervised Disentanglement Ranking (Duan et al., 2020), as disentanglement_lib's
`udr/metrics/udr.py::compute_udr_sklearn`, plus the rPU-VAE authors' variant.

Given M models' representations of the same points, every ordered pair (a, b), a != b, gets a
similarity matrix R (latents of a x latents of b) and a "relative strength" score; a model's
score is the median of the pair scores where it is the target b. Library behaviour, kept on
purpose (shared/reference/metrics-spec.md, section 6):
  * latents are standardised (StandardScaler, population std, constant latents -> 0) and zeroed
    where KL <= 0.01 (hard-coded), independently of `kl_threshold`, which only drives the filter;
  * Lasso R is |coef| of Lasso(alpha=0.1) regressing model b's latents on model a's (rows = a);
  * Spearman R is |rank correlation|; a zeroed latent gives NaN, and an unfiltered NaN row turns
    every column term into 0 (NaN poisoning via np.max);
  * pair score = (mean over columns + mean over rows) / 2 of max(R)^2 / sum(R), 0/0 -> 0.
Authors' variant (shared/reference/original-code-spec.md, section 3.4): a pair where either
model has no latent above the threshold scores 0 instead of raising, and a PBT member (5 VAEs)
scores the mean of its model scores (`udr_member_score`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Lasso
from sklearn.preprocessing import StandardScaler

# The library zeroes latents with KL <= 0.01 whatever kl_filter_threshold is.
_ZEROING_KL = 0.01
_CORRELATIONS = ("lasso", "spearman")


def _check_inputs(
    representations: np.ndarray | Sequence[np.ndarray], kls: np.ndarray, correlation: str
) -> tuple[np.ndarray, np.ndarray]:
    if correlation not in _CORRELATIONS:
        raise ValueError(f"correlation must be one of {_CORRELATIONS}, got {correlation!r}")
    shapes = {np.shape(rep) for rep in representations}
    if len(shapes) != 1:
        raise ValueError(f"all representations must have the same shape, got {sorted(shapes)}")
    reps = np.asarray(representations)
    if not np.issubdtype(reps.dtype, np.floating):
        reps = reps.astype(np.float64)
    if reps.ndim != 3 or reps.shape[0] < 2 or reps.shape[1] < 2:
        raise ValueError(
            "representations must be (num_models >= 2, num_points >= 2, num_latents), got "
            f"shape {reps.shape}"
        )
    kls = np.asarray(kls, dtype=np.float64)
    if kls.shape != (reps.shape[0], reps.shape[2]):
        raise ValueError(
            f"kls must be (num_models, num_latents) = {(reps.shape[0], reps.shape[2])}, "
            f"got {kls.shape}"
        )
    if not (np.all(np.isfinite(reps)) and np.all(np.isfinite(kls))):
        raise ValueError("representations and kls must be finite")
    return reps, kls


def _normalise(reps: np.ndarray, kls: np.ndarray) -> list[np.ndarray]:
    """Per model: StandardScaler (the library's, for its constant-latent rule and its float32
    handling), then zero the latents with KL <= 0.01."""
    return [
        StandardScaler().fit_transform(rep) * (kl > _ZEROING_KL)
        for rep, kl in zip(reps, kls, strict=True)
    ]


def _lasso_matrix(z_a: np.ndarray, z_b: np.ndarray) -> np.ndarray:
    """|coef| of Lasso(alpha=0.1) predicting z_b from z_a, shape (latents of a, latents of b).

    The library's Lasso stops at sklearn's default 1,000 iterations whether or not it has
    converged; we keep that (the scores must equal the library's), so its ConvergenceWarning,
    printed once per pair and PBT generation into every log, says nothing a user can act on.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return np.abs(Lasso(alpha=0.1).fit(z_a, z_b).coef_).T


def _unit_ranks(z: np.ndarray) -> np.ndarray:
    """Centred, unit-norm average ranks per column; NaN columns for constant latents.

    The inner product of two such columns is their Spearman correlation, so one matrix product
    replaces the library's num_latents^2 scipy.stats.spearmanr calls per pair.
    """
    ranks = rankdata(z, axis=0)
    ranks -= ranks.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return ranks / np.sqrt(np.sum(ranks**2, axis=0))


def relative_strength(corr: np.ndarray) -> float:
    """The library's `relative_strength_disentanglement` of a (latents of a, latents of b) matrix.

    (mean_b max_a(R)^2 / sum_a R + mean_a max_b(R)^2 / sum_b R) / 2, where NaN terms (all-zero
    rows/columns, NaN-poisoned Spearman matrices) count as 0. Raises ValueError on an empty
    matrix, as the library does (np.max of an empty axis).
    """
    if corr.size == 0:
        raise ValueError(f"empty similarity matrix of shape {corr.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        per_column = np.max(corr, axis=0) ** 2 / np.sum(corr, axis=0)
        per_row = np.max(corr, axis=1) ** 2 / np.sum(corr, axis=1)
    return float((np.mean(np.nan_to_num(per_column)) + np.mean(np.nan_to_num(per_row))) / 2)


def udr_pairwise(
    representations: np.ndarray | Sequence[np.ndarray],
    kls: np.ndarray,
    correlation: str = "lasso",
    filter_low_kl: bool = True,
    kl_threshold: float = 0.01,
    empty_model_score: float | None = None,
) -> np.ndarray:
    """Pair scores of every ordered pair of models (the library's pairwise_disentanglement_scores).

    Args:
      representations: (num_models, num_points, num_latents) array, or a list of
        (num_points, num_latents) arrays: each model's encoder means on the same points.
      kls: (num_models, num_latents) per-latent KL of each model (`gaussian_kl` for the
        library, `authors_pseudo_kl` for the rPU-VAE authors).
      correlation: "lasso" or "spearman".
      filter_low_kl: drop latents with KL <= kl_threshold from the similarity matrices.
      kl_threshold: the filter threshold (the 0.01 zeroing is fixed, see the module docstring).
      empty_model_score: None (library): raise ValueError if filtering leaves a model without
        latents. A float (authors: 0.0): the score of every pair involving such a model.

    Returns:
      (num_models, num_models) array P, P[a, b] = score of the pair with regressors a and
      targets b; the diagonal is 0.
    """
    reps, kls = _check_inputs(representations, kls, correlation)
    num_models = reps.shape[0]
    keep = kls > kl_threshold if filter_low_kl else np.ones(kls.shape, dtype=bool)
    empty = ~keep.any(axis=1)
    if empty.any() and empty_model_score is None:
        raise ValueError(
            f"models {np.flatnonzero(empty).tolist()} have no latent with KL > {kl_threshold}: "
            "disentanglement_lib's UDR raises here; pass empty_model_score=0.0 for the rPU-VAE "
            "authors' behaviour"
        )
    zs = _normalise(reps, kls)
    if correlation == "lasso":

        def similarity(a: int, b: int) -> np.ndarray:
            return _lasso_matrix(zs[a], zs[b])

    else:
        unit_ranks = [_unit_ranks(z) for z in zs]

        def similarity(a: int, b: int) -> np.ndarray:
            return np.minimum(np.abs(unit_ranks[a].T @ unit_ranks[b]), 1.0)

    pairwise = np.zeros((num_models, num_models))
    for a in range(num_models):
        for b in range(num_models):
            if a == b:
                continue
            if empty[a] or empty[b]:
                pairwise[a, b] = empty_model_score
                continue
            pairwise[a, b] = relative_strength(similarity(a, b)[keep[a]][:, keep[b]])
    return pairwise


def udr(
    representations: np.ndarray | Sequence[np.ndarray],
    kls: np.ndarray,
    correlation: str = "lasso",
    filter_low_kl: bool = True,
    kl_threshold: float = 0.01,
    empty_model_score: float | None = None,
) -> np.ndarray:
    """Per-model UDR scores (the library's `model_scores`); arguments as `udr_pairwise`.

    Returns:
      (num_models,) array: model i scores the median over j != i of P[j, i] (the pairs where
      model i is the Lasso target).
    """
    pairwise = udr_pairwise(
        representations, kls, correlation, filter_low_kl, kl_threshold, empty_model_score
    )
    return np.array([np.median(np.delete(pairwise[:, i], i)) for i in range(len(pairwise))])


def udr_member_score(
    representations: np.ndarray | Sequence[np.ndarray],
    kls: np.ndarray,
    correlation: str = "lasso",
    filter_low_kl: bool = True,
    kl_threshold: float = 0.01,
) -> float:
    """The rPU-VAE authors' PBT score of a member (its 5 VAEs = the models): the mean of the
    model scores, with pairs involving a model without active latents scoring 0."""
    return float(
        np.mean(udr(representations, kls, correlation, filter_low_kl, kl_threshold, 0.0))
    )
