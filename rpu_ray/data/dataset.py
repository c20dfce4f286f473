"""The in-memory data set type shared by every part of rpu-ray.

Images are stored once, as uint8 (N, C, H, W) with values 0..255. A subset is an index array
into that storage, never a copy (DESIGN principle 2): reductions of the data set in the rPU-VAE
recursion, labelled evaluation subsets and the final run all refer to one image array.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


class DataError(ValueError):
    """Bad input data. The message names the file (or data set) and the problem."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images with optional integer ground-truth factors.

    Attributes:
        images: uint8 array (N_storage, C, H, W), values 0..255, shared by all subsets.
        factors: optional integer array (N_storage, F) of factor class indices.
        factor_names: names of the F factors (empty without factors).
        factor_sizes: number of classes of each factor (empty without factors).
        source: "<name> (procedural)" or the path the data came from.
        indices: positions into `images` that make up this data set; None means all of them.
    """

    images: np.ndarray
    factors: np.ndarray | None = None
    factor_names: tuple[str, ...] = ()
    factor_sizes: tuple[int, ...] = ()
    source: str = "in-memory"
    indices: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        images = self.images
        if images.dtype != np.uint8 or images.ndim != 4:
            raise DataError(f"{self.source}: images must be uint8 (N, C, H, W), "
                            f"got {images.dtype} {images.shape}")
        if self.factors is not None:
            if self.factors.shape[0] != images.shape[0] or self.factors.ndim != 2:
                raise DataError(
                    f"{self.source}: factors {self.factors.shape} do not match "
                    f"{images.shape[0]} images"
                )
            if len(self.factor_names) != self.factors.shape[1]:
                raise DataError(f"{self.source}: {len(self.factor_names)} factor names for "
                                f"{self.factors.shape[1]} factor columns")
        if self.indices is not None:
            if self.indices.ndim != 1 or not np.issubdtype(self.indices.dtype, np.integer):
                raise DataError(f"{self.source}: subset indices must be a 1-D integer array")
            if len(self.indices) and (self.indices.min() < 0
                                      or self.indices.max() >= images.shape[0]):
                raise DataError(f"{self.source}: subset indices out of range")

    def __len__(self) -> int:
        return self.images.shape[0] if self.indices is None else len(self.indices)

    @property
    def num_channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[2]

    @property
    def has_factors(self) -> bool:
        return self.factors is not None

    def storage_indices(self, positions: np.ndarray | Sequence[int] | slice | None = None
                        ) -> np.ndarray:
        """Map positions in this data set to positions in the shared image storage."""
        base = np.arange(self.images.shape[0]) if self.indices is None else self.indices
        return base if positions is None else base[positions]

    def subset(self, positions: np.ndarray | Sequence[int]) -> Dataset:
        """The data set restricted to `positions` (indices into this data set); no image copy."""
        positions = np.asarray(positions)
        if positions.dtype == bool:
            positions = np.flatnonzero(positions)
        if positions.ndim != 1 or (positions.size and not np.issubdtype(positions.dtype,
                                                                          np.integer)):
            raise DataError(f"{self.source}: subset positions must be a 1-D integer array")
        if positions.size and (positions.min() < -len(self) or positions.max() >= len(self)):
            raise DataError(f"{self.source}: subset positions out of range for {len(self)} images")
        return Dataset(self.images, self.factors, self.factor_names, self.factor_sizes,
                       self.source, self.storage_indices(positions.astype(np.int64)))

    def batch(self, positions: np.ndarray | Sequence[int]) -> np.ndarray:
        """uint8 images (B, C, H, W) at `positions` of this data set (a copy of B images)."""
        return self.images[self.storage_indices(np.asarray(positions))]

    def batch_factors(self, positions: np.ndarray | Sequence[int]) -> np.ndarray:
        """Integer factors (B, F) at `positions`; raises DataError without factors."""
        if self.factors is None:
            raise DataError(f"{self.source}: this data set has no ground-truth factors")
        return self.factors[self.storage_indices(np.asarray(positions))]

    def sample(self, num: int, rng: np.random.Generator) -> np.ndarray:
        """`num` positions drawn uniformly without replacement (all of them if num >= len)."""
        if num >= len(self):
            return np.arange(len(self))
        return np.sort(rng.choice(len(self), size=num, replace=False))

    def all_images(self) -> np.ndarray:
        """The images of this data set as one array (no copy when it is not a subset)."""
        return self.images if self.indices is None else self.images[self.indices]

    def standalone(self) -> Dataset:
        """This data set with storage of its own: itself when it is not a subset, else a copy
        of its images (and factors) in which positions and storage positions coincide."""
        if self.indices is None:
            return self
        return Dataset(self.all_images(), self.all_factors() if self.has_factors else None,
                       self.factor_names, self.factor_sizes, self.source)

    def all_factors(self) -> np.ndarray:
        """The factors of this data set (N, F); raises DataError without factors."""
        if self.factors is None:
            raise DataError(f"{self.source}: this data set has no ground-truth factors")
        return self.factors if self.indices is None else self.factors[self.indices]

    def describe(self) -> str:
        """One line for progress output and reports."""
        text = (f"{self.source}: {len(self):,} images, {self.num_channels}x{self.image_size}"
                f"x{self.image_size}")
        if self.factors is not None:
            text += ", factors " + ", ".join(
                f"{n}({s})" for n, s in zip(self.factor_names, self.factor_sizes, strict=True))
        return text
