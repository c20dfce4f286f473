"""Scoring a member between generations: UDR (unsupervised) or MIG/DCI on labels (supervised).

These are the PBT `eval` functions of the paper. They encode a fixed evaluation subset of the
current data set with every VAE of the member (encoder means; eval mode) and compute:

* UDR (PBT-U-VAE): per-model UDR scores of the member's M VAEs, per-latent KL of each VAE (the
  true Gaussian KL by default, the authors' batch pseudo-KL with `kl="authors"`); the member's
  score is the mean of the model scores and a VAE without active latents scores 0, as in the
  authors' code (original-code-spec §3.4).
* MIG or DCI (PBT-S-VAE): the metric of each VAE's means against the ground-truth (or
  surrogate) factors of the same subset; the member's score is the mean over its VAEs.

The evaluation subset is `RandomState(score_seed).permutation(N)[:points]`, the same images in
every generation and for every member, as the authors do; with `labels=L` (the paper's
semi-supervised 1000-PBT-S-VAE) only the first L images of that permutation ever have labels.
Factors that are constant on the subset carry no information and are dropped (the metrics are
undefined for them). A diverged member, or one whose codes are not finite, scores NaN, which
the scheduler treats as the worst score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from rpu_ray.config import EvalConfig
from rpu_ray.engine import Member
from rpu_ray.metrics import (
    authors_pseudo_kl,
    dci,
    discrete_entropy,
    discrete_mutual_info,
    gaussian_kl,
    histogram_discretize,
    mig,
    mig_per_factor,
    sap,
    udr,
)
from rpu_ray.models import VAEEnsemble

__all__ = ["best_model", "encode_images", "evaluate_model", "evaluation_positions",
           "label_ground_truth", "mig_columns", "per_latent_kl", "score_leaf_mig",
           "score_supervised", "score_udr"]

LabelChain = list[tuple[np.ndarray, np.ndarray]]  # (indices into the full set, labels) per level


def evaluation_positions(num_images: int, num_points: int, seed: int) -> np.ndarray:
    """The fixed evaluation subset: the first `num_points` of RandomState(seed).permutation(N)."""
    if num_images < 2:
        raise ValueError(f"cannot evaluate on {num_images} image(s)")
    return np.random.RandomState(seed).permutation(num_images)[:min(num_points, num_images)]


def _encode(member: Member, images: torch.Tensor, positions: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    index = torch.as_tensor(positions, device=images.device)
    mu, logsigma = member.encode(images[index])
    return mu.double().cpu().numpy(), logsigma.double().cpu().numpy()


def _per_model_kl(mu: np.ndarray, logsigma: np.ndarray, config: EvalConfig) -> np.ndarray:
    """(M, z) per-latent KL of each model (the authors' version in UDR's batches of 10, over
    the points that fill whole batches: their UDR data set drops the rest, spec 3.3)."""
    if config.kl == "authors":
        whole = len(mu[0]) - len(mu[0]) % config.udr_batch_size
        mu, logsigma = mu[:, :whole], logsigma[:, :whole]
    return np.stack([per_latent_kl(m, s, config.kl, config.udr_batch_size)
                     for m, s in zip(mu, logsigma, strict=True)])


def score_udr(member: Member, images: torch.Tensor, config: EvalConfig) -> dict[str, Any]:
    """UDR score of a member on its current data set (`images`: uint8 (N, C, H, W) tensor).

    Returns `score` (mean model score, NaN if not computable), `model_scores` (M,) and `kl`
    (M, z) as lists, ready for a Tune result, and `filtered_latents`: how many latents of
    all M VAEs UDR's KL filter left out (KL <= `config.udr_kl_threshold`). None filtered at
    the end of a run means the unused latents have not collapsed, and UDR then compares them
    too (`_progress_printer` says so).
    """
    positions = evaluation_positions(len(images), config.udr_points, config.score_seed)
    mu, logsigma = _encode(member, images, positions)
    if not (np.isfinite(mu).all() and np.isfinite(logsigma).all()):
        return {"score": float("nan"), "model_scores": [float("nan")] * member.num_models,
                "kl": np.full(mu.shape[::2], np.nan).tolist()}
    if member.num_models < 2:
        raise ValueError("UDR compares the VAEs of a member: num_models must be >= 2")
    kl = _per_model_kl(mu, logsigma, config)
    if not np.isfinite(kl).all():  # finite codes, but a posterior variance overflowed
        return {"score": float("nan"), "model_scores": [float("nan")] * member.num_models,
                "kl": kl.tolist()}
    model_scores = udr(mu, kl, correlation=config.udr_correlation, filter_low_kl=True,
                       kl_threshold=config.udr_kl_threshold, empty_model_score=0.0)
    return {"score": float(np.mean(model_scores)), "model_scores": model_scores.tolist(),
            "kl": kl.tolist(), "filtered_latents": int((kl <= config.udr_kl_threshold).sum())}


def _informative(factors: np.ndarray) -> np.ndarray:
    """Columns of `factors` that are not constant."""
    return np.flatnonzero((factors != factors[:1]).any(axis=0))


def score_supervised(member: Member, images: torch.Tensor, factors: np.ndarray,
                     config: EvalConfig, metric: str = "mig") -> dict[str, Any]:
    """MIG (default) or DCI disentanglement of each VAE on labelled images; `score` = mean.

    `factors` are the integer factors (N, F) of the N images (ground truth or discretised
    surrogate labels).
    """
    if metric not in ("mig", "dci"):
        raise ValueError(f"unknown supervised metric {metric!r} (mig or dci)")
    pool = len(images) if config.labels is None else min(config.labels, len(images))
    positions = evaluation_positions(len(images), min(config.mig_points, pool), config.score_seed)
    mu, _ = _encode(member, images, positions)
    labels = factors[positions]
    columns = _informative(labels)
    if columns.size == 0:
        raise ValueError("every factor is constant on the evaluation subset")
    labels = labels[:, columns]
    if not np.isfinite(mu).all():
        nan_scores = [float("nan")] * member.num_models
        return {"score": float("nan"), "model_scores": nan_scores}
    if metric == "mig":
        scores = [mig(codes, labels, num_bins=config.mig_bins) for codes in mu]
    else:  # DCI disentanglement, trained and tested on halves of the labelled subset
        half = len(positions) // 2
        scores = [dci(codes[:half], labels[:half], codes[half:], labels[half:],
                      seed=config.score_seed, mode=config.dci_mode)["disentanglement"]
                  for codes in mu]
    return {"score": float(np.mean(scores)), "model_scores": [float(s) for s in scores]}


def _leaf_mig_of_model(codes_by_level: list[np.ndarray], labels_by_level: list[np.ndarray],
                       num_bins: int) -> float:
    """The authors' leaf-MIG of one model on one label chain (original-code-spec §5.6).

    Per level: codes and the continuous surrogate labels are both discretised with a
    `num_bins` histogram over that level's sample; the MI columns of all levels are
    concatenated and MIG is averaged over every label column (constant columns skipped).
    """
    gaps = []
    for codes, labels in zip(codes_by_level, labels_by_level, strict=True):
        discrete_labels = histogram_discretize(labels, num_bins)
        mutual_info = discrete_mutual_info(histogram_discretize(codes, num_bins), discrete_labels)
        entropy = discrete_entropy(discrete_labels)
        top_two = -np.partition(-mutual_info, 1, axis=0)[:2]
        informative = entropy > 0
        gaps.extend((top_two[0] - top_two[1])[informative] / entropy[informative])
    return float(np.mean(gaps)) if gaps else float("nan")


def score_leaf_mig(member: Member, images: torch.Tensor, chains: list[LabelChain],
                   config: EvalConfig) -> dict[str, Any]:
    """The final run's score: leaf-MIG on the surrogate labels of every leaf-run, median over
    leaf-runs, mean over the member's VAEs (original-code-spec §5.6).

    `images` is the full data set; each chain holds, per level, the positions of the labelled
    images in it and their labels. One RandomState(score_seed) draws, in order over chains and
    levels, up to `mig_points` images of each level, as the authors do (so every generation
    and every member sees the same images).
    """
    rng = np.random.RandomState(config.score_seed)
    per_chain = []  # (M,) leaf-MIG of every VAE, one entry per chain
    for chain in chains:
        codes_by_level, labels_by_level = [], []
        for indices, labels in chain:
            take = rng.choice(len(indices), size=min(config.mig_points, len(indices)),
                              replace=False)
            mu, _ = _encode(member, images, indices[take])
            if not np.isfinite(mu).all():
                nan_scores = [float("nan")] * member.num_models
                return {"score": float("nan"), "model_scores": nan_scores}
            codes_by_level.append(mu)
            labels_by_level.append(labels[take])
        per_chain.append([_leaf_mig_of_model([c[m] for c in codes_by_level], labels_by_level,
                                             config.mig_bins)
                          for m in range(member.num_models)])
    model_scores = np.median(np.asarray(per_chain), axis=0)
    return {"score": float(np.mean(model_scores)), "model_scores": model_scores.tolist()}


def best_model(model_scores: list[float] | np.ndarray) -> int:
    """Index of the best VAE of a member (first on ties; NaN never wins)."""
    scores = np.nan_to_num(np.asarray(model_scores, dtype=float), nan=-np.inf)
    return int(np.argmax(scores))


@torch.no_grad()
def encode_images(model: VAEEnsemble, images: np.ndarray, batch_size: int = 512
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means and log standard deviations (M, N, z) of uint8 (N, C, H, W) images,
    in eval mode, batch by batch on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    mus, logsigmas = [], []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))
        mu, logsigma = model.encode(batch.to(device).float().div_(255))
        mus.append(mu.double().cpu().numpy())
        logsigmas.append(logsigma.double().cpu().numpy())
    return np.concatenate(mus, axis=1), np.concatenate(logsigmas, axis=1)


def per_latent_kl(mu: np.ndarray, logsigma: np.ndarray, kind: str, batch_size: int = 32
                  ) -> np.ndarray:
    """Per-latent KL (z,) of one model's (N, z) posteriors: the true Gaussian KL, or the
    authors' pseudo-KL over consecutive batches (they label in batches of 32, spec 5.3),
    averaged unweighted over the batches. A last partial batch counts as one batch, as in
    their unshuffled DataLoader; the UDR points are a whole number of batches."""
    if kind == "gaussian":
        return gaussian_kl(mu, logsigma)
    if len(mu) == 0:
        raise ValueError("the authors' pseudo-KL needs at least one point")
    whole, rest = divmod(len(mu), batch_size)
    cut = whole * batch_size
    total = whole * authors_pseudo_kl(mu[:cut], logsigma[:cut], batch_size) if whole else 0.0
    if rest:
        total = total + authors_pseudo_kl(mu[cut:], logsigma[cut:], rest)
    return total / (whole + (rest > 0))


def label_ground_truth(codes: np.ndarray, active: np.ndarray, factors: np.ndarray,
                       factor_names: tuple[str, ...] | list[str], num_bins: int = 20
                       ) -> dict[str, Any]:
    """How a metaEpoch's surrogate labels relate to known factors (reports only; never used
    by the algorithm).

    Args:
      codes: encoder means (N, C) of all latents of the metaEpoch's best VAE on its subset.
      active: the active latents (the labels are `codes[:, active]`).
      factors: integer factors (N, F) of the same images; factors constant on the subset are
        left out.
      factor_names: the F names.
      num_bins: histogram bins of the codes, as MIG.

    Returns a dict with `mig_per_factor` ({factor: MIG of all C latents}, as `mig_per_factor`)
    and `labels` ({active latent: [best-matching factor, its mutual information normalised
    by the factor's entropy]}).
    """
    columns = _informative(factors)
    names = [factor_names[c] for c in columns]
    if not len(columns) or codes.shape[1] < 2:
        return {"mig_per_factor": {}, "labels": {}}
    factors = factors[:, columns]
    per_factor = mig_per_factor(codes, factors, num_bins)
    normalised = (discrete_mutual_info(histogram_discretize(codes, num_bins), factors)
                  / discrete_entropy(factors))  # (C, F)
    return {
        "mig_per_factor": {n: float(v) for n, v in zip(names, per_factor, strict=True)},
        "labels": {int(z): [names[int(np.argmax(normalised[z]))],
                            float(np.max(normalised[z]))] for z in active},
    }


def evaluate_model(model: VAEEnsemble, images: np.ndarray, factors: np.ndarray,
                   seed: int = 0, mig_points: int = 10_000, dci_train: int = 10_000,
                   dci_test: int = 5_000, num_bins: int = 20, dci_mode: str = "exact",
                   model_index: int = 0) -> dict[str, Any]:
    """The paper's evaluation protocol on a labelled data set (disentanglement_lib's).

    Points are drawn uniformly with replacement (on a full factor grid this is sampling the
    factors uniformly, as the library does) from RandomState(seed): MIG on `mig_points` with
    `num_bins` bins, then DCI and SAP on `dci_train` / `dci_test` points from the continuing
    generator. Constant factors are left out. Uses the encoder means of the model's VAE
    `model_index` (the first by default).
    """
    rng = np.random.RandomState(seed)
    columns = _informative(factors)

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        positions = rng.randint(len(images), size=count)
        codes = encode_images(model, images[positions])[0][model_index]
        return codes, factors[positions][:, columns]

    codes, labels = draw(mig_points)
    per_factor = mig_per_factor(codes, labels, num_bins)
    train_codes, train_labels = draw(dci_train)
    test_codes, test_labels = draw(dci_test)
    dci_scores = dci(train_codes, train_labels, test_codes, test_labels, seed=seed,
                     mode=dci_mode)
    return {
        "mig": float(np.mean(per_factor)),
        "mig_per_factor": {int(c): float(v) for c, v in zip(columns, per_factor, strict=True)},
        "dci": dci_scores,
        "dci_mode": dci_mode,
        "sap": sap(train_codes, train_labels, test_codes, test_labels),
        "points": {"mig": mig_points, "dci_train": dci_train, "dci_test": dci_test},
    }


def mig_columns(metrics: dict[str, Any], factor_names: Sequence[str]) -> dict[str, float]:
    """Table columns `mig_<factor name>` of an `evaluate_model` result (MIG is their mean;
    constant factors, which MIG leaves out, have none)."""
    return {f"mig_{factor_names[int(c)]}": v for c, v in metrics["mig_per_factor"].items()}
