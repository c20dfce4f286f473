"""Data sets for rpu-ray: procedural dSprites and Shapes3D, real files, image folders.

    >>> from rpu_ray import data
    >>> ds = data.load("dsprites", image_size=32, subsample=2000)
    >>> ds.images.shape, ds.factor_names
    ((2000, 1, 32, 32), ('shape', 'scale', 'orientation', 'posX', 'posY'))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rpu_ray.data.dataset import DataError, Dataset
from rpu_ray.data.files import load_path
from rpu_ray.data.procedural import PROCEDURAL, load_procedural
from rpu_ray.data.resize import SUPPORTED_SIZES

__all__ = ["PROCEDURAL", "DataError", "Dataset", "load"]


def load(spec: str | Path, image_size: int = 64, subsample: int | Sequence[int] | None = None,
         seed: int = 0, use_cache: bool = True) -> Dataset:
    """Resolve a data specification to a `Dataset`.

    Args:
        spec: "dsprites" or "shapes3d" (procedural, rendered and cached on first use), or the
            path of a file (.npz, .h5, .hdf5) or a folder of PNG/JPEG images.
        image_size: 32, 64 or 128; images are resized to it (2x2 block means for halvings).
        subsample: for tests and small runs: a count of images drawn with `seed`, or one
            stride per factor (every k-th class, keeping a full factor grid). Procedural data
            is then rendered directly; for files the selection is taken after loading.
        seed: seed of a count subsample.
        use_cache: read and write the procedural cache under $RPU_RAY_CACHE.
    """
    if image_size not in SUPPORTED_SIZES:
        raise DataError(f"{spec}: image_size must be one of {SUPPORTED_SIZES}, got {image_size}")
    name = str(spec).lower()
    if name in PROCEDURAL:
        return load_procedural(name, image_size, subsample, seed, use_cache)
    if not Path(spec).expanduser().exists():
        raise DataError(f"{spec}: no such file or folder, and not a procedural data set "
                        f"({', '.join(PROCEDURAL)})")
    dataset = load_path(spec, image_size)
    return dataset if subsample is None else _subsample_loaded(dataset, subsample, seed)


def _subsample_loaded(dataset: Dataset, subsample: int | Sequence[int], seed: int) -> Dataset:
    import numpy as np

    if isinstance(subsample, (int, np.integer)) and not isinstance(subsample, bool):
        if not 0 < subsample <= len(dataset):
            raise DataError(f"{dataset.source}: subsample count must be in "
                            f"1..{len(dataset)}, got {subsample}")
        # A copy, not a subset view: the rest of the file is freed, and storage positions (what
        # surrogate labels and Ray's object store refer to) are positions in the data set.
        positions = dataset.sample(int(subsample), np.random.default_rng(seed))
        return dataset.subset(positions).standalone()
    raise DataError(f"{dataset.source}: subsample {list(subsample)}: per-factor strides only "
                    "apply to procedural data sets; give a count, or none for all images "
                    "(--set data.subsample=null where a preset, as smoke and demo, sets strides)")
