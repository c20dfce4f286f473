"""Disentanglement metrics matching google-research/disentanglement_lib numerically.

Layout: codes and factors are (num_points, dims) (the library's internals use the transpose);
factors are integer class indices; constant factors raise ValueError (see `utils`). Each module
documents the library behaviour it reproduces and where it deliberately differs.
"""

from rpu_ray.metrics.dci import dci, dci_completeness, dci_disentanglement, dci_importance
from rpu_ray.metrics.mig import mig, mig_per_factor
from rpu_ray.metrics.representation import authors_pseudo_kl, gaussian_kl, histogram_discretize
from rpu_ray.metrics.sap import sap
from rpu_ray.metrics.udr import udr, udr_member_score, udr_pairwise
from rpu_ray.metrics.utils import discrete_entropy, discrete_mutual_info

__all__ = [
    "authors_pseudo_kl",
    "dci",
    "dci_completeness",
    "dci_disentanglement",
    "dci_importance",
    "discrete_entropy",
    "discrete_mutual_info",
    "gaussian_kl",
    "histogram_discretize",
    "mig",
    "mig_per_factor",
    "sap",
    "udr",
    "udr_member_score",
    "udr_pairwise",
]
