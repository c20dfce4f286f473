"""Shared fixtures. Ray tests use one session-scoped local Ray (see tests that request it)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def load_benchmark(name: str) -> ModuleType:
    """The script benchmarks/<name>.py as a module (benchmarks/ is not a package), registered
    in `sys.modules` so that its dataclasses can look their module up. benchmarks/ goes on
    `sys.path`, as it is when a script runs, so that the scripts can import each other."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    path = folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
                   ) -> None:
    """Tests never read or write the user's real cache of generated data sets."""
    monkeypatch.setenv("RPU_RAY_CACHE", str(tmp_path_factory.getbasetemp() / "rpu-ray-cache"))


@pytest.fixture
def one_cpu_thread():
    """Tiny models train as fast on one thread, and far faster on a shared, busy CPU where
    OpenMP threads would wait on each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Positions (pixels) of the square along each axis in `clustered_squares`.
SQUARE_POSITIONS = (2, 9, 16, 23)


def clustered_squares(copies: int = 24, seed: int = 0) -> tuple:
    """A generated set whose answer is known: an 8x8 square at one of 4 x 4 positions of a
    32x32 image, `copies` noisy copies of each (uint8 (N, 32, 32), integer factors (N, 2)).
    Images of one position differ only by faint noise, so any encoder maps them close
    together and far from the other positions: a correct reduction keeps or drops whole
    positions, never part of one."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images, factors = [], []
    for ix, x in enumerate(SQUARE_POSITIONS):
        for iy, y in enumerate(SQUARE_POSITIONS):
            base = np.zeros((32, 32), np.float64)
            base[y:y + 8, x:x + 8] = 255.0
            for _ in range(copies):
                images.append(np.clip(base + rng.normal(0.0, 6.0, base.shape), 0, 255))
                factors.append((ix, iy))
    return np.asarray(images).astype(np.uint8), np.asarray(factors, np.int64)


@pytest.fixture
def squares_npz(tmp_path):
    """`clustered_squares` saved as a user data file (`images`, `labels`)."""
    import numpy as np

    images, factors = clustered_squares()
    path = tmp_path / "squares.npz"
    np.savez(path, images=images, labels=factors)
    return path


# `rpu-ray run` arguments for the smoke preset on `squares_npz` (a file: no dSprites strides;
# no end condition on the low UDR of models trained for seconds).
# The smoke preset on `clustered_squares`, made to recurse twice. At the root (384 points) the
# peak distance (N - 1) // 10 = 38 exceeds a cluster's 24 points, so find_peaks keeps only some
# of the gaps between positions and the chosen interval holds two or more positions; on that
# subset (48-120 points, distance <= 11) every gap between positions is a peak, so the second
# metaEpoch's reduction keeps one position. Leaf metaEpochs train three times the smoke
# preset's images, enough to separate up to five positions.
SMOKE_ON_SQUARES = ["--preset", "smoke", "--set", "data.subsample=",
                    "--set", "pbt.policy.min_score=", "--set", "rpu.reduction.distance_divisor=10",
                    "--set", "rpu.leaf_generation_images=1500"]
CLI_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
CLI = [sys.executable, "-m", "rpu_ray.cli", "-q"]


def run_cli(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    """`rpu-ray -q ARGS` in a subprocess; fails the test with its output if it fails."""
    done = subprocess.run([*CLI, *args], env=CLI_ENV, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done
