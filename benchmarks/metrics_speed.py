"""Wall-clock time of the disentanglement metrics on dSprites-sized synthetic codes (CPU).

Sizes are the library's configurations: MIG on 10,000 points; SAP and DCI on 10,000 train /
5,000 test points; UDR on 5 models x 1,000 points (one PBT member). Codes have 10 dimensions;
factors have dSprites' sizes (3, 6, 40, 32, 32) (shape, scale, orientation, posX, posY), and
the codes are a noisy random mixture of the scaled factors (`make_fixture`). DCI is timed in
"exact" mode (the library's GradientBoostingClassifier; minutes) and "fast" mode (the same
classifier reimplemented in numpy, rpu_ray/metrics/gbt.py), and the deviation of fast from
exact is printed per key (it should be rounding only). Every number is the best of `--repeats`
runs (DCI exact: one run).

Examples:
  python benchmarks/metrics_speed.py                  # full sizes, ~7 minutes on 2 cores
  python benchmarks/metrics_speed.py --skip-exact     # without the DCI exact runs
  python benchmarks/metrics_speed.py --sequential     # also time DCI exact with n_jobs=1
  python benchmarks/metrics_speed.py --smoke          # tiny sizes, a few seconds
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rpu_ray.metrics import authors_pseudo_kl, dci, mig, sap, udr

DSPRITES_SIZES = (3, 6, 40, 32, 32)


def make_fixture(
    num_points: int,
    factor_sizes: Sequence[int] = DSPRITES_SIZES,
    num_codes: int = 10,
    mixing: float = 0.2,
    noise: float = 0.05,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Independent uniform factors and codes = scaled factors @ (I + mixing * W) + noise.

    Returns:
      codes (num_points, num_codes) float64 and factors (num_points, len(factor_sizes)) int64.
    """
    rs = np.random.RandomState(seed)
    sizes = np.asarray(factor_sizes)
    factors = np.stack([rs.randint(size, size=num_points) for size in sizes], axis=1)
    scaled = factors / (sizes - 1.0) - 0.5
    weights = np.eye(len(sizes), num_codes) + mixing * rs.randn(len(sizes), num_codes)
    codes = scaled @ weights + noise * rs.randn(num_points, num_codes)
    return codes, factors


def make_udr_fixture(
    num_models: int = 5, num_points: int = 1000, num_latents: int = 10, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Models sharing 6 informative latents (permuted, sign-flipped, noisy); the rest inactive.

    Returns:
      representations (num_models, num_points, num_latents) and their authors' pseudo-KL
      (num_models, num_latents), from log-sigmas near 0 (active) or near -0.001 (inactive).
    """
    rs = np.random.RandomState(seed)
    num_active = min(6, num_latents)
    shared = rs.randn(num_points, num_active)
    reps, kls = [], []
    for _ in range(num_models):
        mu = 0.01 * rs.randn(num_points, num_latents)
        logsigma = -0.001 + 0.0001 * rs.randn(num_points, num_latents)
        active = rs.permutation(num_latents)[:num_active]
        signs = rs.choice([-1.0, 1.0], size=num_active)
        mu[:, active] = shared * signs + 0.1 * rs.randn(num_points, num_active)
        logsigma[:, active] = -2.0 + 0.1 * rs.randn(num_points, num_active)
        reps.append(mu)
        kls.append(authors_pseudo_kl(mu, logsigma))
    return np.stack(reps), np.stack(kls)


def best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Best wall-clock seconds over `repeats` calls, and the last result."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def run(smoke: bool, skip_exact: bool, sequential: bool, repeats: int) -> list[dict[str, Any]]:
    """Times every metric; returns one row per measurement (metric, size, seconds, value)."""
    if smoke:
        num_train, num_test, sizes, udr_points, repeats = 200, 100, (2, 3, 4), 100, 1
    else:
        num_train, num_test, sizes, udr_points = 10_000, 5_000, DSPRITES_SIZES, 1000
    codes, factors = make_fixture(num_train + num_test, sizes)
    train = (codes[:num_train], factors[:num_train])
    split = (*train, codes[num_train:], factors[num_train:])
    reps, kls = make_udr_fixture(num_points=udr_points)
    split_size = f"{num_train:,}/{num_test:,} x {codes.shape[1]} codes x {len(sizes)} factors"
    rows = []

    def measure(name: str, size: str, fn: Callable[[], Any], times: int = repeats) -> Any:
        seconds, value = best_time(fn, times)
        rows.append({"metric": name, "size": size, "seconds": seconds, "value": value})
        print(f"{name:<28} {size:<40} {seconds:9.3f} s", flush=True)
        return value

    measure("MIG", f"{num_train:,} x {codes.shape[1]} codes", lambda: mig(*train))
    for correlation in ("lasso", "spearman"):
        measure(f"UDR ({correlation})", f"{len(reps)} models x {udr_points:,} x 10",
                lambda c=correlation: udr(reps, kls, c))
    measure("SAP", split_size, lambda: sap(*split))
    fast = measure("DCI fast (n_jobs=2)", split_size, lambda: dci(*split, mode="fast"))
    if not skip_exact:
        exact = measure("DCI exact (n_jobs=2)", split_size, lambda: dci(*split), 1)
        if sequential:
            measure("DCI exact (n_jobs=1)", split_size, lambda: dci(*split, n_jobs=1), 1)
        for key in exact:
            print(f"DCI {key}: exact {exact[key]:.6f}, fast {fast[key]:.6f}, "
                  f"fast - exact {fast[key] - exact[key]:+.1e}")
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--skip-exact", action="store_true", help="skip DCI exact (minutes)")
    parser.add_argument("--sequential", action="store_true", help="also DCI exact, n_jobs=1")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"numpy {np.__version__}")
    return run(args.smoke, args.skip_exact, args.sequential, args.repeats)


if __name__ == "__main__":
    main()
