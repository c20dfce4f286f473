"""Per-model VAE objectives for a fused ensemble, and their registry.

A loss is a `VAELoss`: an `nn.Module` called as ``loss(x, out, hparams, dataset_size)`` with the
batch `x` (B, C, H, W) in [0, 1], the ensemble's `VAEOutput` (float32), a mapping of its
hyperparameters (the names in its `hyperparameters` attribute) and the size N of the dataset the
batch is drawn from. It returns a `LossOutput`: the loss to minimise, one value per model (M,),
each the batch mean of that model's negative objective; and detached logging terms, (M,) each.
Since the M models have disjoint parameters, backpropagating ``loss.sum()`` gives every model the
gradient of its own loss. `make_loss(name)` builds a registered loss; `register_loss(name)` is the
class decorator that registers one.

The training engine only relies on that protocol: it moves the loss module to the device, calls
it once per optimiser step on the float32 outputs, calls `after_step()` after the optimiser step,
and saves/loads the loss module's `state_dict()` with the member. Objectives still to come fit in
without touching the engine:

* AnnealedVAE (Burgess et al.): hyperparameters ``("gamma", "c_max", "iteration_threshold")``;
  the step counter that drives the capacity schedule is a buffer of the loss, incremented in
  `after_step()`, so it is saved and cloned with the member.
* DIP-VAE-I/II: hyperparameters ``("lambda_od", "lambda_d")``; the regulariser is a function of
  `out.mu` (and of exp(2 * `out.logsigma`) for type II), computed per model with batched
  covariance matrices (M, z, z).
* FactorVAE: the discriminator (fused over the M models like the VAEs) is a submodule of the loss
  and owns its optimiser, whose state travels through `get_extra_state` / `set_extra_state`
  (part of `state_dict()`). `forward` evaluates the total-correlation term through the
  discriminator with its parameters detached and keeps the detached z; `after_step()` trains the
  discriminator on it with its own optimiser, after the VAE update, as disentanglement_lib does.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from rpu_ray.models.vae import VAEOutput

__all__ = [
    "LOSSES",
    "BetaTCVAELoss",
    "BetaVAELoss",
    "ELBOLoss",
    "LossOutput",
    "VAELoss",
    "bernoulli_log_likelihood",
    "gaussian_kl",
    "make_loss",
    "normal_log_density",
    "register_loss",
]

_LOG_2PI = math.log(2 * math.pi)
# The authors' Bernoulli clamping constants (beta-tcvae/lib/dist.py).
_BERNOULLI_EPS = 1e-8


class LossOutput(NamedTuple):
    """Result of a `VAELoss`.

    Attributes:
      loss: (M,) per-model loss to minimise (batch mean), differentiable.
      terms: name -> (M,) detached per-model batch means, for logging.
    """

    loss: Tensor
    terms: dict[str, Tensor]


class VAELoss(nn.Module, ABC):
    """Base class of the registered objectives (see the module docstring for the protocol)."""

    # Names of the hyperparameters `forward` reads from `hparams`.
    hyperparameters: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def forward(
        self, x: Tensor, out: VAEOutput, hparams: Mapping[str, float], dataset_size: int
    ) -> LossOutput:
        """Per-model loss and logging terms for one batch.

        Args:
          x: (B, C, H, W) images in [0, 1].
          out: the ensemble's outputs for `x`, float32.
          hparams: at least the names in `hyperparameters`.
          dataset_size: N, the number of images the batch is drawn from.
        """

    def after_step(self) -> None:
        """Called by the engine after every optimiser step; objectives with state of their own
        (a step counter, a discriminator) update it here. The objectives below have none."""


LOSSES: dict[str, type[VAELoss]] = {}


def register_loss(name: str) -> Callable[[type[VAELoss]], type[VAELoss]]:
    """Class decorator: makes `make_loss(name)` build the decorated `VAELoss` subclass."""

    def register(cls: type[VAELoss]) -> type[VAELoss]:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is already registered")
        LOSSES[name] = cls
        return cls

    return register


def make_loss(name: str) -> VAELoss:
    """A new instance of the loss registered as `name`."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {sorted(LOSSES)}")
    return LOSSES[name]()


def bernoulli_log_likelihood(x: Tensor, logits: Tensor) -> Tensor:
    """log p(x|z) summed over pixels, with the authors' clamping.

    p = (sigmoid(logits) + 1e-8) * (1 - 2e-8); log p(x) = x log(p + 1e-8) + (1-x) log(1-p + 1e-8)
    (continuous x in [0, 1] make this a binary cross-entropy, also for RGB images).

    Args:
      x: (B, C, H, W) targets in [0, 1].
      logits: (M, B, C, H, W).

    Returns:
      (M, B).
    """
    p = (torch.sigmoid(logits) + _BERNOULLI_EPS) * (1 - 2 * _BERNOULLI_EPS)
    log_p = x * torch.log(p + _BERNOULLI_EPS) + (1 - x) * torch.log(1 - p + _BERNOULLI_EPS)
    return log_p.sum(dim=(-3, -2, -1))


def normal_log_density(z: Tensor, mu: Tensor, logsigma: Tensor) -> Tensor:
    """Elementwise log N(z; mu, exp(logsigma)^2) (broadcasting)."""
    scaled = (z - mu) * torch.exp(-logsigma)
    return -0.5 * (scaled * scaled + 2 * logsigma + _LOG_2PI)


def gaussian_kl(mu: Tensor, logsigma: Tensor) -> Tensor:
    """Analytic KL(N(mu, exp(logsigma)^2) || N(0, 1)) summed over the last dim."""
    return 0.5 * (mu * mu + torch.exp(2 * logsigma) - 2 * logsigma - 1).sum(-1)


@register_loss("betatcvae")
class BetaTCVAELoss(VAELoss):
    """beta-TCVAE with minibatch-weighted sampling (original-code-spec §1.3).

    With a batch of size B from a dataset of size N and M[i, j, d] = log q(z_i,d | x_j):
    log q(z_i) = logsumexp_j sum_d M[i, j, d] - log(B N) and
    log prod_d q(z_i,d) = sum_d (logsumexp_j M[i, j, d] - log(B N)). The objective per sample is
    log p(x|z) - MI - beta * TC - dimension-wise KL (alpha = gamma = 1), all single-sample terms;
    at beta = 1 it equals the ELBO log p(x|z) + log p(z) - log q(z|x).

    Terms: recon (-log p(x|z)), mi, tc, dwkl, kl (sampled log q(z|x) - log p(z)), elbo.
    """

    hyperparameters = ("beta",)

    def forward(
        self, x: Tensor, out: VAEOutput, hparams: Mapping[str, float], dataset_size: int
    ) -> LossOutput:
        batch = x.shape[0]
        logpx = bernoulli_log_likelihood(x, out.logits)  # (M, B)
        logpz = (-0.5 * (out.z * out.z + _LOG_2PI)).sum(-1)  # prior N(0, I)
        logqz_condx = normal_log_density(out.z, out.mu, out.logsigma).sum(-1)
        # (M, B, B, z): row i is sample z_i scored under the posterior of every image j.
        pairwise = normal_log_density(
            out.z.unsqueeze(2), out.mu.unsqueeze(1), out.logsigma.unsqueeze(1)
        )
        log_bn = math.log(batch * dataset_size)
        logqz = torch.logsumexp(pairwise.sum(-1), dim=2) - log_bn
        logqz_prodmarginals = (torch.logsumexp(pairwise, dim=2) - log_bn).sum(-1)
        mi = logqz_condx - logqz
        tc = logqz - logqz_prodmarginals
        dwkl = logqz_prodmarginals - logpz
        objective = logpx - mi - hparams["beta"] * tc - dwkl
        terms = {
            "recon": -logpx,
            "mi": mi,
            "tc": tc,
            "dwkl": dwkl,
            "kl": logqz_condx - logpz,
            "elbo": logpx + logpz - logqz_condx,
        }
        return LossOutput(-objective.mean(1), _batch_means(terms))


def _kl_objective(x: Tensor, out: VAEOutput, beta: float) -> LossOutput:
    """log p(x|z) - beta * KL(q(z|x) || p(z)) with the analytic Gaussian KL."""
    logpx = bernoulli_log_likelihood(x, out.logits)
    kl = gaussian_kl(out.mu, out.logsigma)
    terms = {"recon": -logpx, "kl": kl, "elbo": logpx - kl}
    return LossOutput(-(logpx - beta * kl).mean(1), _batch_means(terms))


def _batch_means(terms: dict[str, Tensor]) -> dict[str, Tensor]:
    return {name: value.detach().mean(1) for name, value in terms.items()}


@register_loss("betavae")
class BetaVAELoss(VAELoss):
    """beta-VAE (Higgins et al.) with the analytic KL, as in disentanglement_lib.

    Terms: recon, kl, elbo.
    """

    hyperparameters = ("beta",)

    def forward(
        self, x: Tensor, out: VAEOutput, hparams: Mapping[str, float], dataset_size: int
    ) -> LossOutput:
        return _kl_objective(x, out, hparams["beta"])


@register_loss("vae")
class ELBOLoss(VAELoss):
    """The plain VAE: negative ELBO with the analytic KL (beta-VAE at beta = 1).

    Terms: recon, kl, elbo.
    """

    def forward(
        self, x: Tensor, out: VAEOutput, hparams: Mapping[str, float], dataset_size: int
    ) -> LossOutput:
        return _kl_objective(x, out, 1.0)
