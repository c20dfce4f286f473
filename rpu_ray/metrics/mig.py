"""Mutual Information Gap (Chen et al., 2018), as disentanglement_lib's `mig.py` (`discrete_mig`).

MIG = mean over factors j of (I(z_a; v_j) - I(z_b; v_j)) / H(v_j), where z_a and z_b are the codes
with the largest and second-largest mutual information with factor v_j. Codes are discretised
with a 20-bin histogram per code (bins from the evaluated points themselves); factors are used
as given (integer labels, not discretised); MI and entropy are plug-in estimates in nats.
"""

from __future__ import annotations

import numpy as np

from rpu_ray.metrics.representation import histogram_discretize
from rpu_ray.metrics.utils import check_codes, check_factors, discrete_entropy, discrete_mutual_info


def mig_per_factor(codes: np.ndarray, factors: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """The normalised gap of every factor, (num_factors,): MIG is their unweighted mean.

    Arguments as `mig`.
    """
    codes = check_codes(codes, min_dims=2)
    factors = check_factors(factors, codes.shape[0])
    m = discrete_mutual_info(histogram_discretize(codes, num_bins), factors)  # (C, F)
    top_two = -np.partition(-m, 1, axis=0)[:2]  # largest and second-largest MI per factor
    return (top_two[0] - top_two[1]) / discrete_entropy(factors)


def mig(codes: np.ndarray, factors: np.ndarray, num_bins: int = 20) -> float:
    """Computes MIG.

    Args:
      codes: (num_points, num_codes) representation (e.g. encoder means), num_codes >= 2.
      factors: (num_points, num_factors) integer ground-truth factor indices, none constant
        (a constant factor has zero entropy; the library returns nan, this raises ValueError).
      num_bins: histogram bins per code (library default 20; the score depends on it).

    Returns:
      MIG in [0, 1].
    """
    return float(np.mean(mig_per_factor(codes, factors, num_bins)))
