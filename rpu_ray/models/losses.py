"""Per-model VAE objectives for a fused ensemble, and their registry.

A loss is a `VAELoss`: an `nn.Module` built for an ensemble of M models with z latents each
(``make_loss(name, num_models, z_dim)``) and called as ``loss(x, out, hparams, dataset_size)``
with the batch `x` (B, C, H, W) in [0, 1], the ensemble's `VAEOutput` (float32), a mapping of its
hyperparameters (the names in its `hyperparameters` attribute) and the size N of the dataset the
batch is drawn from. It returns a `LossOutput`: the loss to minimise, one value per model (M,),
each the batch mean of that model's negative objective; and detached logging terms, (M,) each.
Since the M models have disjoint parameters, backpropagating ``loss.sum()`` gives every model the
gradient of its own loss. `make_loss(name)` builds a registered loss; `register_loss(name)` is the
class decorator that registers one.

Hyperparameters come in two kinds. Those in a loss's `defaults` are fixed for a whole run (the
literature's values, overridden by the config's ``model.loss_hyperparameters`` through
`VAELoss.fixed_hyperparameters`); the others (beta) are given per member, by PBT.

The training engine only relies on that protocol: it builds the loss under the member's seed (so
weights of its own are initialised reproducibly), moves it to the device, sets `loss.generator`
to the member's generator (random numbers of an objective come from it: reproducible, restored
with the member and reseeded with a PBT clone), calls the loss once per optimiser step on the
float32 outputs, calls `after_step()` after the optimiser step, and saves/loads the loss module's
`state_dict()` with the member. The objectives, all with the analytic Gaussian KL and the
Bernoulli reconstruction term of `bernoulli_log_likelihood` (with the authors' clamping, which
only departs from disentanglement_lib's sigmoid cross-entropy for saturated logits):

* ``"vae"``, ``"betavae"``, ``"betatcvae"``: the ELBO, beta-VAE and beta-TCVAE (the rPU-VAE
  authors' objective). The baselines below follow disentanglement_lib's definitions (Locatello
  et al. 2019), with its test configurations' values as `defaults`.
* ``"annealedvae"`` (Burgess et al.): ``("gamma", "c_max", "iteration_threshold")``; recon +
  gamma * |KL - C| on the batch-mean KL with the capacity C growing linearly to c_max. The step
  counter that drives the schedule is a buffer of the loss, incremented in `after_step()`, so it
  is saved and cloned with the member.
* ``"dipvae1"``, ``"dipvae2"`` (Kumar et al.): ``("lambda_od", "lambda_d")``; recon + KL + a
  penalty on a covariance matrix's distance to the identity, computed per model with batched
  (M, z, z) matrices: the covariance of `out.mu` over the batch (I), plus the batch mean of the
  posterior variances exp(2 * `out.logsigma`) on its diagonal (II).
* ``"factorvae"`` (Kim & Mnih): ``("gamma",)``; recon + KL + gamma * TC, TC estimated by a
  discriminator that tells z from z with each latent shuffled across the batch. The
  discriminator (fused over the M models like the VAEs) is a submodule of the loss and owns its
  optimiser, whose state travels through `get_extra_state` / `set_extra_state` (part of
  `state_dict()`). `forward` evaluates the total-correlation term through the discriminator with
  its parameters detached and keeps the detached z; `after_step()` trains the discriminator on it
  with its own optimiser, on the same batch as the VAE step, as disentanglement_lib does.
"""

from __future__ import annotations

import copy
import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from rpu_ray.models.vae import VAEOutput

__all__ = [
    "LOSSES",
    "AnnealedVAELoss",
    "BetaTCVAELoss",
    "BetaVAELoss",
    "DIPVAEIILoss",
    "DIPVAEILoss",
    "ELBOLoss",
    "FactorVAELoss",
    "FusedMLP",
    "LossOutput",
    "VAELoss",
    "batch_covariance",
    "bernoulli_log_likelihood",
    "dip_regulariser",
    "gaussian_kl",
    "make_loss",
    "normal_log_density",
    "register_loss",
    "shuffle_codes",
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
    """Base class of the registered objectives (see the module docstring for the protocol).

    Args:
      num_models: M, the models of the ensemble the loss is built for.
      z_dim: their latent dimensions. Only objectives with weights of their own (FactorVAE's
        discriminator) depend on the two.
    """

    # Names of the hyperparameters `forward` reads from `hparams`.
    hyperparameters: ClassVar[tuple[str, ...]] = ()
    # Values of those that are fixed for a whole run; the others are given per member (PBT).
    defaults: ClassVar[Mapping[str, float]] = {}

    def __init__(self, num_models: int, z_dim: int) -> None:
        super().__init__()
        self.num_models = num_models
        self.z_dim = z_dim
        # Source of the objective's random numbers; the engine sets the member's generator.
        # None draws from the global RNG.
        self.generator: torch.Generator | None = None

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
        (a step counter, a discriminator) update it here. The others have none."""

    @classmethod
    def fixed_hyperparameters(cls, values: Mapping[str, float]) -> dict[str, float]:
        """The run's fixed hyperparameters: `defaults` updated with `values` (the config's).

        Checked here, with the objective, so that a bad configuration fails before anything
        trains: weights that are not finite and >= 0 make no sense for any of the objectives.

        Raises:
          ValueError: a one-line message naming the first name that is not a fixed
            hyperparameter of the objective, or the first value out of range.
        """
        fixed = ", ".join(cls.defaults) or "none"
        for name in values:
            if name not in cls.defaults:
                reason = ("is tuned per member (PBT), not fixed" if name in cls.hyperparameters
                          else "is not one of its hyperparameters")
                raise ValueError(f"{name!r} {reason} (fixed ones: {fixed})")
        resolved = {**cls.defaults, **{name: float(value) for name, value in values.items()}}
        for name, value in resolved.items():
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        return resolved


LOSSES: dict[str, type[VAELoss]] = {}


def register_loss(name: str) -> Callable[[type[VAELoss]], type[VAELoss]]:
    """Class decorator: makes `make_loss(name)` build the decorated `VAELoss` subclass."""

    def register(cls: type[VAELoss]) -> type[VAELoss]:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is already registered")
        LOSSES[name] = cls
        return cls

    return register


def make_loss(name: str, num_models: int = 1, z_dim: int = 10) -> VAELoss:
    """A new instance of the loss registered as `name`, for `num_models` models of `z_dim`
    latents (the defaults suit every objective without weights of its own)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {sorted(LOSSES)}")
    return LOSSES[name](num_models, z_dim)


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


def _recon_and_kl(x: Tensor, out: VAEOutput) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Batch means (M,) of -log p(x|z) and of the analytic KL(q(z|x) || p(z)), differentiable,
    and the logging terms recon, kl and elbo."""
    logpx = bernoulli_log_likelihood(x, out.logits)
    kl = gaussian_kl(out.mu, out.logsigma)
    terms = _batch_means({"recon": -logpx, "kl": kl, "elbo": logpx - kl})
    return -logpx.mean(1), kl.mean(1), terms


def _kl_objective(x: Tensor, out: VAEOutput, beta: float) -> LossOutput:
    """log p(x|z) - beta * KL(q(z|x) || p(z)) with the analytic Gaussian KL."""
    recon, kl, terms = _recon_and_kl(x, out)
    return LossOutput(recon + beta * kl, terms)


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


@register_loss("annealedvae")
class AnnealedVAELoss(VAELoss):
    """AnnealedVAE (Burgess et al. 2018, Eq. 8) as disentanglement_lib: recon + gamma * |KL - C|.

    KL is the batch mean of the analytic KL (the capacity bounds the code's average information,
    not each image's), and the capacity C = min(c_max, c_max * step / iteration_threshold) grows
    linearly from 0 at the first optimiser step to c_max. `step` counts the optimiser steps taken
    (a buffer, incremented by `after_step`), so a loaded or cloned member resumes the schedule
    where it was.

    Terms: recon, kl, elbo, capacity (C).
    """

    hyperparameters = ("gamma", "c_max", "iteration_threshold")
    # Burgess et al.'s dSprites values (C to 25 nats in 100,000 steps), disentanglement_lib's too.
    defaults: ClassVar[Mapping[str, float]] = {
        "gamma": 1000.0, "c_max": 25.0, "iteration_threshold": 100_000.0,
    }

    step: Tensor

    def __init__(self, num_models: int, z_dim: int) -> None:
        super().__init__(num_models, z_dim)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @classmethod
    def fixed_hyperparameters(cls, values: Mapping[str, float]) -> dict[str, float]:
        """As `VAELoss.fixed_hyperparameters`; the schedule also divides by iteration_threshold."""
        resolved = super().fixed_hyperparameters(values)
        threshold = resolved["iteration_threshold"]
        if threshold <= 0:
            raise ValueError(f"iteration_threshold must be > 0, got {threshold}")
        return resolved

    def capacity(self, c_max: float, iteration_threshold: float) -> Tensor:
        """C at the current step, a 0-d tensor on the loss's device."""
        return torch.clamp(c_max * self.step / iteration_threshold, max=c_max)

    def forward(
        self, x: Tensor, out: VAEOutput, hparams: Mapping[str, float], dataset_size: int
    ) -> LossOutput:
        recon, kl, terms = _recon_and_kl(x, out)
        capacity = self.capacity(hparams["c_max"], hparams["iteration_threshold"])
        terms["capacity"] = capacity.expand_as(recon)
        return LossOutput(recon + hparams["gamma"] * (kl - capacity).abs(), terms)

    def after_step(self) -> None:
        self.step.add_(1)


def batch_covariance(values: Tensor) -> Tensor:
    """Per-model covariance over the batch, normalised by B (the biased estimate).

    disentanglement_lib's `compute_covariance_z_mean`, E[v v^T] - E[v] E[v]^T, computed from
    centred values: the same matrix without the cancellation of two large terms.

    Args:
      values: (M, B, z).

    Returns:
      (M, z, z).
    """
    centred = values - values.mean(1, keepdim=True)
    return centred.transpose(1, 2) @ centred / values.shape[1]


def dip_regulariser(covariance: Tensor, lambda_od: float, lambda_d: float) -> Tensor:
    """disentanglement_lib's `regularize_diag_off_diag_dip` for every model: lambda_od * the sum of
    the squared off-diagonal entries + lambda_d * the sum of (diagonal - 1)^2.

    Args:
      covariance: (M, z, z).

    Returns:
      (M,).
    """
    diagonal = covariance.diagonal(dim1=-2, dim2=-1)
    off_diagonal = covariance - torch.diag_embed(diagonal)
    return (lambda_od * off_diagonal.square().sum((-2, -1))
            + lambda_d * (diagonal - 1).square().sum(-1))


class _DIPVAELoss(VAELoss):
    """DIP-VAE (Kumar et al. 2018) as disentanglement_lib: recon + KL + `dip_regulariser` of the
    covariance that `covariance` defines, which pushes the aggregate posterior's covariance towards
    the identity of the prior (decorrelated latents of unit variance).

    Terms: recon, kl, elbo, dip (the regulariser).
    """

    hyperparameters = ("lambda_od", "lambda_d")

    @staticmethod
    @abstractmethod
    def covariance(out: VAEOutput) -> Tensor:
        """(M, z, z) covariance the regulariser acts on."""

    def forward(
        self, x: Tensor, out: VAEOutput, hparams: Mapping[str, float], dataset_size: int
    ) -> LossOutput:
        recon, kl, terms = _recon_and_kl(x, out)
        dip = dip_regulariser(self.covariance(out), hparams["lambda_od"], hparams["lambda_d"])
        terms["dip"] = dip.detach()
        return LossOutput(recon + kl + dip, terms)


@register_loss("dipvae1")
class DIPVAEILoss(_DIPVAELoss):
    """DIP-VAE-I (Eq. 6): the covariance over the batch of the posterior means, Cov[mu(x)]."""

    # disentanglement_lib's test values: lambda_d = 10 * lambda_od for type I, as Kumar et al.
    defaults: ClassVar[Mapping[str, float]] = {"lambda_od": 10.0, "lambda_d": 100.0}

    @staticmethod
    def covariance(out: VAEOutput) -> Tensor:
        return batch_covariance(out.mu)


@register_loss("dipvae2")
class DIPVAEIILoss(_DIPVAELoss):
    """DIP-VAE-II (Eq. 7): the covariance of z under the aggregate posterior,
    Cov[mu(x)] + E[diag sigma^2(x)]."""

    # disentanglement_lib's test values: lambda_d = lambda_od for type II, as Kumar et al.
    defaults: ClassVar[Mapping[str, float]] = {"lambda_od": 10.0, "lambda_d": 10.0}

    @staticmethod
    def covariance(out: VAEOutput) -> Tensor:
        # The encoder returns log sigma (disentanglement_lib's: log variance).
        variance = torch.exp(2 * out.logsigma).mean(1)
        return batch_covariance(out.mu) + torch.diag_embed(variance)


def shuffle_codes(z: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Every latent dimension of every model permuted across the batch on its own
    (disentanglement_lib's `shuffle_codes`): samples of the product of q(z)'s marginals.

    Args:
      z: (M, B, z).
      generator: source of the permutations, on z's device; None: the global RNG.
    """
    order = torch.rand(z.shape, generator=generator, device=z.device).argsort(dim=1)
    return z.gather(1, order)


class FusedMLP(nn.Module):
    """M independent MLPs computed together, as the VAEs of an ensemble: every layer is one
    batched matmul with an (M, in, out) weight tensor, so one forward serves all M.

    Initialised like disentanglement_lib's (TensorFlow) dense layers: Glorot-uniform weights and
    zero biases.

    Args:
      num_models: M.
      sizes: units of every layer, input first.
      negative_slope: of the leaky ReLU between layers (none after the last).

    Shape:
      (M, B, sizes[0]) -> (M, B, sizes[-1]); row m only meets model m's weights.
    """

    def __init__(self, num_models: int, sizes: Sequence[int], negative_slope: float) -> None:
        super().__init__()
        self.negative_slope = negative_slope
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in itertools.pairwise(sizes):
            bound = math.sqrt(6 / (fan_in + fan_out))
            weight = torch.empty(num_models, fan_in, fan_out).uniform_(-bound, bound)
            self.weights.append(nn.Parameter(weight))
            self.biases.append(nn.Parameter(torch.zeros(num_models, 1, fan_out)))

    def forward(self, h: Tensor) -> Tensor:
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(bias, h, weight)
            if i < last:
                h = F.leaky_relu(h, self.negative_slope)
        return h


# Kim & Mnih's discriminator optimiser, which disentanglement_lib's FactorVAE configuration uses.
_DISCRIMINATOR_ADAM: dict[str, Any] = {"lr": 1e-4, "betas": (0.5, 0.9), "eps": 1e-8}


# Discriminator probabilities are clipped to [clip, 1 - clip] (disentanglement_lib).
_PROBABILITY_CLIP = 1e-6


@register_loss("factorvae")
class FactorVAELoss(VAELoss):
    """FactorVAE (Kim & Mnih 2018, Eq. 2) as disentanglement_lib: recon + KL + gamma * TC.

    TC is the density-ratio estimate of the total correlation, the batch mean of
    logits[0] - logits[1] of a discriminator that tells samples of q(z) (class 0) from samples of
    the product of its marginals (class 1, `shuffle_codes`). Every model has its own
    discriminator (`FusedMLP`): `hidden_layers` layers of `width` units with leaky ReLU 0.2 and 2
    logits, disentanglement_lib's `fc_discriminator` by default. It has its own Adam (lr 1e-4,
    betas (0.5, 0.9)): the member's optimiser, and PBT's lr, only concern the VAEs.

    `forward` reads the discriminator through detached parameters, so the VAE loss moves only the
    VAEs, and keeps the batch's detached z; `after_step` trains the discriminator on them with
    the cross-entropy 0.5 * (CE(z, 0) + CE(shuffled z, 1)) (disentanglement_lib's negated
    `discr_loss`). So the discriminator learns from the same batch, as it was for the VAE step,
    like disentanglement_lib's grouped train op. Shuffling draws from `generator`. Move the loss
    to its device before its first step: its Adam's state is created where the parameters are.

    Terms: recon, kl, elbo, tc.
    """

    hyperparameters = ("gamma",)
    # disentanglement_lib's test value (its study sweeps 10 to 100).
    defaults: ClassVar[Mapping[str, float]] = {"gamma": 10.0}

    def __init__(
        self, num_models: int, z_dim: int, width: int = 1000, hidden_layers: int = 6
    ) -> None:
        super().__init__(num_models, z_dim)
        sizes = [z_dim, *[width] * hidden_layers, 2]
        self.discriminator = FusedMLP(num_models, sizes, negative_slope=0.2)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), **_DISCRIMINATOR_ADAM)
        self._codes: Tensor | None = None

    def forward(
        self, x: Tensor, out: VAEOutput, hparams: Mapping[str, float], dataset_size: int
    ) -> LossOutput:
        models, _, z_dim = out.z.shape
        if (models, z_dim) != (self.num_models, self.z_dim):
            raise ValueError(f"loss built for {self.num_models} models of {self.z_dim} latents, "
                             f"got {models} of {z_dim}")
        recon, kl, terms = _recon_and_kl(x, out)
        detached = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        logits = functional_call(self.discriminator, detached, (out.z,))
        tc = (logits[..., 0] - logits[..., 1]).mean(1)
        terms["tc"] = tc.detach()
        self._codes = out.z.detach()
        return LossOutput(recon + kl + hparams["gamma"] * tc, terms)

    def discriminator_loss(self, codes: Tensor, shuffled: Tensor) -> Tensor:
        """Per-model (M,) cross-entropy 0.5 * (CE(codes, 0) + CE(shuffled, 1)), batch means, of
        the clipped probabilities.

        Args:
          codes: (M, B, z) samples of q(z); shuffled: (M, B', z) samples of the marginals.
        """
        logits = self.discriminator(torch.cat([codes, shuffled], dim=1))
        # disentanglement_lib's make_discriminator clips the probabilities to [1e-6, 1 - 1e-6]
        # (no gradient beyond): a saturated discriminator stops sharpening.
        log_probs = torch.log(F.softmax(logits, dim=-1).clamp(_PROBABILITY_CLIP,
                                                              1 - _PROBABILITY_CLIP))
        batch = codes.shape[1]
        return -0.5 * (log_probs[:, :batch, 0].mean(1) + log_probs[:, batch:, 1].mean(1))

    def after_step(self) -> None:
        """One Adam step of the discriminators on the codes of the last `forward`."""
        if self._codes is None:
            raise RuntimeError("after_step() trains the discriminator on the codes of a forward(); "
                               "there was none since the last step")
        codes, self._codes = self._codes, None
        loss = self.discriminator_loss(codes, shuffle_codes(codes, self.generator))
        self.optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        self.optimizer.step()

    def get_extra_state(self) -> dict[str, Any]:
        """The discriminator's Adam state, which makes it part of `state_dict()` (live tensors,
        as `state_dict()` returns the live parameters)."""
        return self.optimizer.state_dict()

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Loads a copy of a saved Adam state: `load_state_dict` copies parameters, and the state
        must not alias the source's either, since Adam updates it in place."""
        self.optimizer.load_state_dict(copy.deepcopy(state))
