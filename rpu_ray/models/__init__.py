"""Fused VAE ensembles (M models in one module) and their per-model objectives."""

from rpu_ray.models.losses import (
    LOSSES,
    AnnealedVAELoss,
    BetaTCVAELoss,
    BetaVAELoss,
    DIPVAEIILoss,
    DIPVAEILoss,
    ELBOLoss,
    FactorVAELoss,
    LossOutput,
    VAELoss,
    make_loss,
    register_loss,
)
from rpu_ray.models.supervised import SUPERVISED_LOSSES, SupervisedRegulariser
from rpu_ray.models.vae import (
    ARCHITECTURES,
    VAE,
    VAEEnsemble,
    VAEOutput,
    fuse_models,
    split_ensemble,
)

__all__ = [
    "ARCHITECTURES",
    "LOSSES",
    "SUPERVISED_LOSSES",
    "VAE",
    "AnnealedVAELoss",
    "BetaTCVAELoss",
    "BetaVAELoss",
    "DIPVAEIILoss",
    "DIPVAEILoss",
    "ELBOLoss",
    "FactorVAELoss",
    "LossOutput",
    "SupervisedRegulariser",
    "VAEEnsemble",
    "VAELoss",
    "VAEOutput",
    "fuse_models",
    "make_loss",
    "register_loss",
    "split_ensemble",
]
