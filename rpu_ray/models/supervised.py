"""Supervised regularisers of Locatello et al.'s few-label semi-supervised VAEs, per model.

Locatello, Tschannen, Bauer, Rätsch, Schölkopf, Bachem, "Disentangling Factors of Variation Using
Few Labels" (ICLR 2020, arXiv 1905.01258), Eq. 2, adds to an unsupervised objective (beta-VAE,
beta-TCVAE, FactorVAE, DIP-VAE) a supervised term on a few labelled images:

    loss = -E[log p(x|z)] + R_u(q(z)) + gamma_sup * R_s(mu(x_labelled), y)

The definitions follow their reference implementation, disentanglement_lib's
`methods/semi_supervised/semi_supervised_vae.py` (`BaseS2VAE.model_fn`, the
`supervised_regularizer_*` functions and `normalize_labels`):

* R_s acts on the posterior *means* of the labelled batch (the encoder run on that batch on its
  own, in training mode), never on samples.
* The first F latents are the supervised ones, F the number of labelled factors; the other
  latents are left to the unsupervised objective (xent and l2 need z >= F).
* Every regulariser is a *sum* over the labelled batch and the factors (disentanglement_lib's
  `reduce_sum` / `2 * l2_loss`), whereas the reconstruction term is a batch mean: gamma_sup
  weighs a sum, which is why its useful values depend on the batch size.
* Labels are factor class indices y in 0..k-1; `normalize_labels` divides them by the number k of
  classes of their factor, into [0, 1).

The regularisers (`SUPERVISED_LOSSES`):

* ``"xent"``: sum of the sigmoid cross-entropy of the means as logits against the normalised
  labels, BCE(sigmoid(mu_f), y_f / k_f): the loss of disentanglement_lib's own semi-supervised
  test configuration (`supervised_loss.loss_fn = @xent`), our default.
* ``"l2"``: sum of (b * mu_f - y_f)^2 on the raw labels with a learned scale b (one scalar per
  model, initialised to 1), disentanglement_lib's `l2` with its default `learn_scale=True`.
* ``"l2_sigmoid"``: sum of (sigmoid(mu_f) - y_f / k_f)^2, the `learn_scale=False` variant as its
  docstring describes it. Departure: disentanglement_lib's code inserts an axis into the means
  before subtracting, which broadcasts (B, 1, F) against (B, F) and sums over all B x B pairs of
  images; we compare each image with its own labels.
* ``"cov"``: sum of the squared entries of the batch covariance between all z means and the raw
  labels, (z, F), with its diagonal (latent i against factor i) set to zero: it only penalises
  latents that covary with another latent's factor.

disentanglement_lib's fourth loss, ``embed`` (a learned embedding of every factor's classes and a
softmax over them), and its MINE-based variant are not implemented. Its annealers of gamma_sup
(`fixed`, `anneal`, `fine_tune`) reduce to the constant weight here (`fixed`, the one its test
configuration uses).

All functions work on the fused layout: means (M, B, z) of M models, returning (M,) so that the
engine adds model m's term to model m's loss only (backpropagating the sum gives every model the
gradient of its own loss, as for the unsupervised objectives).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "SUPERVISED_LOSSES",
    "SupervisedRegulariser",
    "normalize_labels",
    "supervised_cov",
    "supervised_l2",
    "supervised_l2_sigmoid",
    "supervised_xent",
]


def normalize_labels(labels: Tensor, factor_sizes: Tensor) -> Tensor:
    """Labels in [0, 1): class indices divided by their factor's number of classes.

    disentanglement_lib's `normalize_labels` (classes 0..k-1 map to 0, 1/k, ..., (k-1)/k), which
    puts every factor on the scale of a sigmoid whatever its number of classes.

    Args:
      labels: (B, F) class indices (any real dtype).
      factor_sizes: (F,) number of classes of every factor.
    """
    return labels / factor_sizes.to(labels.dtype)


def _supervised_means(mu: Tensor, num_factors: int) -> Tensor:
    """The first `num_factors` latents of (M, B, z) means; checks that there are enough."""
    if mu.shape[-1] < num_factors:
        raise ValueError(f"{num_factors} labelled factors need at least as many latents, "
                         f"got {mu.shape[-1]}")
    return mu[..., :num_factors]


def supervised_xent(mu: Tensor, labels: Tensor, factor_sizes: Tensor) -> Tensor:
    """Summed sigmoid cross-entropy of the first F means (logits) against normalised labels.

    disentanglement_lib's `supervised_regularizer_xent`.

    Args:
      mu: (M, B, z) posterior means of the labelled images; labels: (B, F) class indices;
        factor_sizes: (F,).

    Returns:
      (M,): sum over the B images and F factors, per model.
    """
    logits = _supervised_means(mu, labels.shape[-1])
    targets = normalize_labels(labels, factor_sizes).expand_as(logits)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum((1, 2))


def supervised_l2(mu: Tensor, labels: Tensor, scale: Tensor) -> Tensor:
    """Summed squared error of the scaled first F means against the raw labels.

    disentanglement_lib's `supervised_regularizer_l2` with `learn_scale=True`: 2 * l2_loss(b * mu_f
    - y_f), b a learned scalar per model, which lets the means match class indices of any range.

    Args:
      mu: (M, B, z); labels: (B, F) class indices; scale: (M,) the learned scales.

    Returns:
      (M,).
    """
    means = _supervised_means(mu, labels.shape[-1])
    return (means * scale.view(-1, 1, 1) - labels).square().sum((1, 2))


def supervised_l2_sigmoid(mu: Tensor, labels: Tensor, factor_sizes: Tensor) -> Tensor:
    """Summed squared error of sigmoid(first F means) against normalised labels, image by image.

    disentanglement_lib's `supervised_regularizer_l2` with `learn_scale=False`, as documented
    (its code compares every image with every other image's labels; see the module docstring).

    Returns:
      (M,).
    """
    means = _supervised_means(mu, labels.shape[-1])
    return (torch.sigmoid(means) - normalize_labels(labels, factor_sizes)).square().sum((1, 2))


def supervised_cov(mu: Tensor, labels: Tensor) -> Tensor:
    """Sum of squared off-diagonal covariances between the means and the raw labels.

    disentanglement_lib's `supervised_regularizer_cov`: C[i, j] = the batch mean of
    (mu_i - E mu_i)(y_j - E y_j) for every latent i and factor j (the biased estimate), the
    entries C[i, i] (i < min(z, F)) set to zero, then 2 * l2_loss(C) = sum of squares.

    Args:
      mu: (M, B, z); labels: (B, F).

    Returns:
      (M,).
    """
    centred_mu = mu - mu.mean(1, keepdim=True)
    centred_labels = labels - labels.mean(0, keepdim=True)
    covariance = centred_mu.transpose(1, 2) @ centred_labels / mu.shape[1]  # (M, z, F)
    keep = 1 - torch.eye(*covariance.shape[-2:], dtype=mu.dtype, device=mu.device)
    return (covariance * keep).square().sum((1, 2))


class SupervisedRegulariser(nn.Module):
    """R_s of M fused models: one of `SUPERVISED_LOSSES`, with its learned parameters (only the
    ``"l2"`` scale, one per model), which train with the VAEs (the member's optimiser).

    Args:
      num_models: M.
      kind: a key of `SUPERVISED_LOSSES`.

    Call: ``regulariser(mu, labels, factor_sizes)`` with the labelled batch's means (M, B, z),
    its labels (B, F) (class indices, float) and the factors' class counts (F,); returns (M,).
    """

    kinds: ClassVar[tuple[str, ...]] = ("xent", "l2", "l2_sigmoid", "cov")

    def __init__(self, num_models: int, kind: str = "xent") -> None:
        super().__init__()
        if kind not in self.kinds:
            raise ValueError(f"unknown supervised loss {kind!r}; known: {', '.join(self.kinds)}")
        self.kind = kind
        self.num_models = num_models
        # disentanglement_lib's tf.get_variable("b", initializer=1.).
        self.scale = nn.Parameter(torch.ones(num_models)) if kind == "l2" else None

    def forward(self, mu: Tensor, labels: Tensor, factor_sizes: Tensor) -> Tensor:
        if mu.shape[0] != self.num_models:
            raise ValueError(f"regulariser built for {self.num_models} models, got {mu.shape[0]}")
        if labels.dim() != 2 or labels.shape[0] != mu.shape[1]:
            raise ValueError(f"labels must be (B, F) for B = {mu.shape[1]} images, "
                             f"got {tuple(labels.shape)}")
        if self.kind == "xent":
            return supervised_xent(mu, labels, factor_sizes)
        if self.kind == "l2":
            assert self.scale is not None
            return supervised_l2(mu, labels, self.scale)
        if self.kind == "l2_sigmoid":
            return supervised_l2_sigmoid(mu, labels, factor_sizes)
        return supervised_cov(mu, labels)


SUPERVISED_LOSSES: tuple[str, ...] = SupervisedRegulariser.kinds
