"""Generated benchmark data sets: factor grids, subsampling, resizing and the on-disk cache.

The full grids are rendered once and cached under `$RPU_RAY_CACHE` (default
`~/.cache/rpu-ray`) in a file whose name carries the generator version and the image size, so
a renderer change never serves stale pixels. Subsamples are rendered directly (or sliced from
an existing cache) and never written to disk.
"""

from __future__ import annotations

import importlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rpu_ray.data.dataset import DataError, Dataset
from rpu_ray.data.resize import resize_images

log = logging.getLogger(__name__)

# Rows rendered at a time: bounds the temporary full-resolution memory during generation.
_CHUNK = 49_152


@dataclass(frozen=True)
class ProceduralSpec:
    """A renderer module: factor grid, channels, version and `render(classes) -> uint8 NCHW`."""

    name: str
    factor_names: tuple[str, ...]
    factor_sizes: tuple[int, ...]
    num_channels: int
    version: int
    render: Callable[[np.ndarray], np.ndarray]
    native_size: int = 64

    @property
    def num_images(self) -> int:
        return int(np.prod(self.factor_sizes))


PROCEDURAL = ("dsprites", "shapes3d")


def get_spec(name: str) -> ProceduralSpec:
    """The renderer of a procedural data set ("dsprites" or "shapes3d")."""
    if name not in PROCEDURAL:
        raise DataError(f"unknown procedural data set {name!r}; known: {', '.join(PROCEDURAL)}")
    module = importlib.import_module(f"rpu_ray.data.{name}")
    return ProceduralSpec(name, tuple(module.FACTOR_NAMES), tuple(module.FACTOR_SIZES),
                          module.NUM_CHANNELS, module.GENERATOR_VERSION, module.render)


def cache_dir() -> Path:
    """Where generated grids are cached: `$RPU_RAY_CACHE`, default `~/.cache/rpu-ray`."""
    return Path(os.environ.get("RPU_RAY_CACHE") or Path.home() / ".cache" / "rpu-ray")


def cache_path(spec: ProceduralSpec, image_size: int) -> Path:
    return cache_dir() / f"{spec.name}-v{spec.version}-{image_size}px.npy"


def grid_classes(factor_sizes: Sequence[int], flat: np.ndarray) -> np.ndarray:
    """Factor classes (N, F) of flat indices into the C-order factor grid."""
    return np.stack(np.unravel_index(flat, tuple(factor_sizes)), axis=1).astype(np.int64)


def subsample_indices(factor_sizes: Sequence[int], subsample: int | Sequence[int] | None,
                      seed: int) -> np.ndarray | None:
    """Flat grid indices selected by `subsample`, in grid order; None for the whole grid.

    `subsample` is either a count (that many grid points, drawn without replacement with
    `seed`) or one stride per factor (every k-th class of each factor: a smaller full grid).
    """
    total = int(np.prod(factor_sizes))
    if subsample is None:
        return None
    if isinstance(subsample, (int, np.integer)) and not isinstance(subsample, bool):
        if not 0 < subsample <= total:
            raise DataError(f"subsample count must be in 1..{total}, got {subsample}")
        if subsample == total:
            return None
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(total, size=int(subsample), replace=False))
    strides = list(subsample)
    if len(strides) != len(factor_sizes) or any(
            not isinstance(s, (int, np.integer)) or s < 1 for s in strides):
        raise DataError(f"subsample strides must be {len(factor_sizes)} positive integers "
                        f"(one per factor), got {subsample}")
    if all(s == 1 for s in strides):
        return None
    axes = [np.arange(0, n, s) for n, s in zip(factor_sizes, strides, strict=True)]
    classes = np.stack([a.ravel() for a in np.meshgrid(*axes, indexing="ij")], axis=0)
    return np.ravel_multi_index(tuple(classes), tuple(factor_sizes))


def render_resized(spec: ProceduralSpec, flat: np.ndarray, image_size: int) -> np.ndarray:
    """Render the grid points `flat` at `image_size`, chunk by chunk."""
    out = np.empty((len(flat), spec.num_channels, image_size, image_size), np.uint8)
    for start in range(0, len(flat), _CHUNK):
        stop = min(start + _CHUNK, len(flat))
        images = spec.render(grid_classes(spec.factor_sizes, flat[start:stop]))
        out[start:stop] = resize_images(images, image_size, source=f"{spec.name} (procedural)")
    return out


def _write_atomically(path: Path, array: np.ndarray) -> None:
    """np.save to a temporary file in the same folder, then rename: never a half-written cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_cached(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached grid, or None (missing, or unreadable / wrong shape: then it is regenerated)."""
    if not path.exists():
        return None
    try:
        images = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable cache %s (%s); regenerating", path, err)
        return None
    if images.shape != shape or images.dtype != np.uint8:
        log.warning("ignoring cache %s with shape %s %s; regenerating", path, images.shape,
                    images.dtype)
        return None
    return images


def full_grid(spec: ProceduralSpec, image_size: int, use_cache: bool = True) -> np.ndarray:
    """All images of the grid at `image_size`, from the cache or rendered (then cached)."""
    shape = (spec.num_images, spec.num_channels, image_size, image_size)
    path = cache_path(spec, image_size)
    if use_cache:
        cached = _load_cached(path, shape)
        if cached is not None:
            return cached
    log.info("rendering %s (procedural): %d images at %dpx (first time only; cached in %s)",
             spec.name, spec.num_images, image_size, path.parent)
    start = time.perf_counter()
    images = render_resized(spec, np.arange(spec.num_images), image_size)
    log.info("rendered %s in %.1f s", spec.name, time.perf_counter() - start)
    if use_cache:
        try:
            _write_atomically(path, images)
        except OSError as err:  # a read-only or full disk must not stop the run
            log.warning("could not write the cache %s: %s", path, err)
    return images


def load_procedural(name: str, image_size: int = 64, subsample: int | Sequence[int] | None = None,
                    seed: int = 0, use_cache: bool = True) -> Dataset:
    """A procedural data set with its integer factors, optionally subsampled (see module doc)."""
    spec = get_spec(name)
    try:
        flat = subsample_indices(spec.factor_sizes, subsample, seed)
    except DataError as err:
        raise DataError(f"{name}: {err}") from None
    if flat is None:
        images = full_grid(spec, image_size, use_cache)
        flat = np.arange(spec.num_images)
    else:
        path = cache_path(spec, image_size)
        shape = (spec.num_images, spec.num_channels, image_size, image_size)
        cached = _load_cached(path, shape) if use_cache else None
        images = cached[flat] if cached is not None else render_resized(spec, flat, image_size)
    return Dataset(images=images, factors=grid_classes(spec.factor_sizes, flat),
                   factor_names=spec.factor_names, factor_sizes=spec.factor_sizes,
                   source=f"{name} (procedural)")
