"""Input validation and discrete information measures shared by the metrics.

Layout: codes and factors are (num_points, dims), the sklearn layout (disentanglement_lib's
internal functions use the transposed one). Factors are integer class indices.

Constant factors: the library produces nan (MIG: 0/0 entropy normalisation; continuous SAP:
0/0) or raises inside sklearn (DCI's GradientBoostingClassifier, discrete SAP's LinearSVC need
two classes). Every metric here instead raises a ValueError naming the constant columns of the
training factors, so the caller drops them explicitly (e.g. dSprites' colour factor).
"""

from __future__ import annotations

import numpy as np


def check_codes(codes: np.ndarray, name: str = "codes", min_dims: int = 1) -> np.ndarray:
    """Validates a (num_points, num_codes) real, finite array; integer input becomes float64.

    Floating dtypes are kept (float32 codes are discretised on float32 edges, like the library).
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"{name} must be 2-D (num_points, num_codes), got shape {codes.shape}")
    if codes.shape[0] == 0:
        raise ValueError(f"{name} has no points")
    if codes.shape[1] < min_dims:
        raise ValueError(f"{name} needs at least {min_dims} code dimensions, got {codes.shape[1]}")
    if not (np.issubdtype(codes.dtype, np.floating) or np.issubdtype(codes.dtype, np.integer)):
        raise ValueError(f"{name} must be a real-valued array, got dtype {codes.dtype}")
    if not np.issubdtype(codes.dtype, np.floating):
        codes = codes.astype(np.float64)
    if not np.all(np.isfinite(codes)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return codes


def check_factors(
    factors: np.ndarray,
    num_points: int,
    name: str = "factors",
    integer: bool = True,
    reject_constant: bool = True,
    min_dims: int = 1,
) -> np.ndarray:
    """Validates a (num_points, num_factors) array of factor labels.

    Args:
      factors: the factor array.
      num_points: required number of rows (that of the matching codes).
      name: name used in error messages.
      integer: require integral values (class indices) and return int64; otherwise float64.
      reject_constant: raise if a column takes a single value (see the module docstring).
      min_dims: minimum number of factor columns.

    Returns:
      int64 (integer=True) or float64 array of shape (num_points, num_factors).
    """
    factors = np.asarray(factors)
    if factors.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (num_points, num_factors), got shape {factors.shape}"
        )
    if factors.shape[0] != num_points:
        raise ValueError(
            f"{name} has {factors.shape[0]} points but the codes have {num_points}"
        )
    if factors.shape[1] < min_dims:
        raise ValueError(f"{name} needs at least {min_dims} factors, got {factors.shape[1]}")
    if not (
        np.issubdtype(factors.dtype, np.number) or np.issubdtype(factors.dtype, np.bool_)
    ) or np.issubdtype(factors.dtype, np.complexfloating):
        raise ValueError(f"{name} must be numeric, got dtype {factors.dtype}")
    if not np.all(np.isfinite(factors)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if integer:
        if np.issubdtype(factors.dtype, np.floating) and np.any(factors != np.round(factors)):
            raise ValueError(
                f"{name} must be integer class indices (not the data set's real-valued latent "
                "values)"
            )
        factors = factors.astype(np.int64)
    else:
        factors = factors.astype(np.float64)
    if reject_constant:
        constant = np.flatnonzero(np.all(factors == factors[:1], axis=0))
        if constant.size:
            raise ValueError(
                f"{name} columns {constant.tolist()} are constant; the metric is undefined for "
                "them (disentanglement_lib gives nan or raises): drop these factors first"
            )
    return factors


def check_split(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    min_codes: int = 1,
    min_factors: int = 1,
    integer: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validates a train/test split (see check_factors); the test set has the train's columns.

    Only the training factors must be non-constant (the models are fitted on them).
    """
    codes_train = check_codes(codes_train, "codes_train", min_codes)
    factors_train = check_factors(
        factors_train, codes_train.shape[0], "factors_train", integer, min_dims=min_factors
    )
    codes_test = check_codes(codes_test, "codes_test")
    factors_test = check_factors(
        factors_test, codes_test.shape[0], "factors_test", integer, reject_constant=False
    )
    if codes_test.shape[1] != codes_train.shape[1]:
        raise ValueError(
            f"codes_test has {codes_test.shape[1]} codes, codes_train has {codes_train.shape[1]}"
        )
    if factors_test.shape[1] != factors_train.shape[1]:
        raise ValueError(
            f"factors_test has {factors_test.shape[1]} factors, factors_train has "
            f"{factors_train.shape[1]}"
        )
    return codes_train, factors_train, codes_test, factors_test


def _dense_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maps every column of an integer (N, D) array to 0..K_d-1; returns labels and K (D,)."""
    dense = np.empty(labels.shape, dtype=np.int64)
    sizes = np.empty(labels.shape[1], dtype=np.int64)
    for d in range(labels.shape[1]):
        values, dense[:, d] = np.unique(labels[:, d], return_inverse=True)
        sizes[d] = values.size
    return dense, sizes


def _mutual_info_from_counts(joint: np.ndarray) -> np.ndarray:
    """Plug-in mutual information (nats) of contingency tables joint[..., a, b]."""
    n = joint.sum(axis=(-2, -1), keepdims=True)
    marginal_a = joint.sum(axis=-1, keepdims=True)
    marginal_b = joint.sum(axis=-2, keepdims=True)
    # Empty cells (and empty code bins) give 0 * log(0) = nan here and contribute 0.
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = joint * np.log(joint * n / (marginal_a * marginal_b))
    terms = np.where(joint > 0, terms, 0.0)
    mi = terms.sum(axis=(-2, -1)) / n[..., 0, 0]
    # Like sklearn.metrics.mutual_info_score: rounding can make MI slightly negative.
    return np.maximum(mi, 0.0)


def discrete_mutual_info(codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """m[i, j] = I(codes[:, i]; factors[:, j]) in nats, plug-in estimate.

    Equals disentanglement_lib's `discrete_mutual_info` (sklearn's mutual_info_score per pair),
    computed from one bincount per factor over all codes at once.

    Args:
      codes: (num_points, num_codes) integer labels (e.g. from histogram_discretize).
      factors: (num_points, num_factors) integer labels.

    Returns:
      (num_codes, num_factors) float64 array.
    """
    codes, code_sizes = _dense_labels(np.asarray(codes))
    factors, factor_sizes = _dense_labels(np.asarray(factors))
    num_codes = codes.shape[1]
    code_bins = int(code_sizes.max())
    # Code i's labels live in their own block of code_bins rows of one stacked table.
    code_offsets = codes + code_bins * np.arange(num_codes)
    m = np.empty((num_codes, factors.shape[1]))
    for j, size in enumerate(factor_sizes):
        flat = (code_offsets * size + factors[:, j : j + 1]).ravel()
        joint = np.bincount(flat, minlength=num_codes * code_bins * size)
        m[:, j] = _mutual_info_from_counts(joint.reshape(num_codes, code_bins, size))
    return m


def discrete_entropy(factors: np.ndarray) -> np.ndarray:
    """h[j] = H(factors[:, j]) in nats, plug-in estimate (the library's `discrete_entropy`).

    Args:
      factors: (num_points, num_factors) integer labels.

    Returns:
      (num_factors,) float64 array.
    """
    factors, sizes = _dense_labels(np.asarray(factors))
    h = np.empty(factors.shape[1])
    for j, size in enumerate(sizes):
        p = np.bincount(factors[:, j], minlength=size) / factors.shape[0]
        h[j] = -np.sum(p * np.log(p))
    return h
