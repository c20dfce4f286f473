"""Pure numpy helpers on encoder outputs: per-latent KL estimates and histogram discretisation.

All arrays use the (num_points, num_latents) layout. The encoder outputs the mean `mu` and the
log *standard deviation* `logsigma` of a diagonal Gaussian posterior (beta-TCVAE convention).
"""

from __future__ import annotations

import numpy as np


def _check_pair(mu: np.ndarray, logsigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = np.asarray(mu, dtype=np.float64)
    logsigma = np.asarray(logsigma, dtype=np.float64)
    if mu.ndim != 2 or mu.shape != logsigma.shape:
        raise ValueError(
            f"mu and logsigma must be 2-D arrays of the same shape (num_points, num_latents), "
            f"got {mu.shape} and {logsigma.shape}"
        )
    if mu.shape[0] == 0:
        raise ValueError("mu and logsigma need at least one point")
    return mu, logsigma


def gaussian_kl(mu: np.ndarray, logsigma: np.ndarray) -> np.ndarray:
    """Mean over points of KL(N(mu, sigma^2) || N(0, 1)) per latent, in nats.

    Args:
      mu: (num_points, num_latents) posterior means.
      logsigma: (num_points, num_latents) posterior log standard deviations.

    Returns:
      (num_latents,) array. With logvar = 2 * logsigma this is the quantity disentanglement_lib's
      UDR computes: mean of 0.5 * (mu^2 + exp(logvar) - logvar - 1).
    """
    mu, logsigma = _check_pair(mu, logsigma)
    logvar = 2.0 * logsigma
    return np.mean(0.5 * (mu**2 + np.exp(logvar) - logvar - 1.0), axis=0)


def authors_pseudo_kl(mu: np.ndarray, logsigma: np.ndarray, batch_size: int = 10) -> np.ndarray:
    """The rPU-VAE authors' per-latent "KL" (shared/reference/original-code-spec.md, 3.2-3.3).

    The points are split into consecutive batches of `batch_size` (the authors' UDR uses 100
    batches of 10 images). Per batch: a_d = |mean over the batch of logsigma_d| and
    kl_d = mean over the batch of 0.5 * (mu_d^2 + exp(a_d) - a_d - 1); the result is the mean of
    the per-batch vectors. This is not a Gaussian KL (it plugs the batch-averaged log *std*, made
    positive, into the log-variance slot), but the authors' thresholds (0.01 for UDR, 1 for
    active latents) are calibrated on it.

    Args:
      mu: (num_points, num_latents) posterior means, num_points a multiple of batch_size.
      logsigma: (num_points, num_latents) posterior log standard deviations.
      batch_size: points per batch.

    Returns:
      (num_latents,) array.
    """
    mu, logsigma = _check_pair(mu, logsigma)
    if batch_size < 1 or mu.shape[0] % batch_size:
        raise ValueError(
            f"num_points ({mu.shape[0]}) must be a positive multiple of batch_size ({batch_size}); "
            "the authors drop the remainder (N - N mod 10 points) before computing this"
        )
    num_batches = mu.shape[0] // batch_size
    mu_b = mu.reshape(num_batches, batch_size, -1)
    a = np.abs(np.mean(logsigma.reshape(num_batches, batch_size, -1), axis=1, keepdims=True))
    per_batch = np.mean(0.5 * (mu_b**2 + np.exp(a) - a - 1.0), axis=1)
    return np.mean(per_batch, axis=0)


def histogram_discretize(values: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """Discretises every column into `num_bins` equal-width bins over its own [min, max].

    Reproduces disentanglement_lib's `_histogram_discretize`: edges = np.histogram(x, num_bins)[1],
    labels = np.digitize(x, edges[:-1]). Labels are 1..num_bins (never 0); the column maximum
    falls in bin num_bins. Edges are computed in the column's own floating dtype (float32 codes
    get float32 edges, as numpy does), so points near an edge land in the same bin as in the
    library. A constant column gets a single label. The library stores labels in the code dtype;
    they are only ever compared, so int64 is returned here.

    Args:
      values: (num_points, num_columns) finite real array.
      num_bins: number of bins per column.

    Returns:
      (num_points, num_columns) int64 array of labels in 1..num_bins.
    """
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"values must be 2-D (num_points, num_columns), got shape {values.shape}")
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    labels = np.empty(values.shape, dtype=np.int64)
    for i in range(values.shape[1]):
        column = values[:, i]
        left_edges = np.histogram_bin_edges(column, num_bins)[:-1]
        # np.digitize(x, increasing_bins) is searchsorted(bins, x, side="right").
        labels[:, i] = np.searchsorted(left_edges, column, side="right")
    return labels
