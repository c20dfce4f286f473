"""Preview grids: what a data set looks like before anything is trained on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from rpu_ray.data.dataset import Dataset

_GAP = 2
_LABEL_WIDTH = 110
_MIN_TILE = 64


def factor_traversals(dataset: Dataset, num_steps: int = 8, seed: int = 0,
                      tries: int = 64) -> list[tuple[str, np.ndarray]]:
    """One row per factor: positions of images that differ only in that factor.

    For each factor a base image is drawn at random and the images sharing all of its other
    factors are sorted by the factor's class; up to `num_steps` of them, evenly spaced, form
    the row. Factors that never vary with the others fixed (possible in random subsamples)
    are left out.
    """
    factors = dataset.all_factors()
    rng = np.random.default_rng(seed)
    rows = []
    for f, name in enumerate(dataset.factor_names):
        others = np.delete(factors, f, axis=1)
        for base in rng.integers(len(dataset), size=tries):
            same = np.flatnonzero((others == others[base]).all(axis=1))
            values, first = np.unique(factors[same, f], return_index=True)
            if len(values) >= 2:
                pick = np.unique(np.linspace(0, len(values) - 1, num_steps).round().astype(int))
                rows.append((f"{name}", same[first[pick]]))
                break
    return rows


def random_rows(dataset: Dataset, num_rows: int = 6, num_steps: int = 8,
                seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Rows of randomly drawn images, for data without factors."""
    picks = dataset.sample(num_rows * num_steps, np.random.default_rng(seed))
    return [("sample", picks[i:i + num_steps]) for i in range(0, len(picks), num_steps)]


def image_grid(rows: list[tuple[str, np.ndarray]], tile: int = _MIN_TILE) -> Image.Image:
    """Lay out labelled rows of uint8 (k, C, H, W) images as one RGB image."""
    width = _LABEL_WIDTH + max(len(images) for _, images in rows) * (tile + _GAP)
    canvas = Image.new("RGB", (width, len(rows) * (tile + _GAP) + _GAP), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (label, images) in enumerate(rows):
        top = _GAP + r * (tile + _GAP)
        draw.text((4, top + tile // 2 - 6), label, fill=(0, 0, 0))
        for c, image in enumerate(images):
            pixels = image.transpose(1, 2, 0)
            pixels = np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels
            tile_image = Image.fromarray(pixels).resize((tile, tile), Image.NEAREST)
            canvas.paste(tile_image, (_LABEL_WIDTH + c * (tile + _GAP), top))
    return canvas


def save_preview(dataset: Dataset, out: str | Path, num_steps: int = 8, seed: int = 0) -> Path:
    """Write a preview PNG: one traversal row per factor, or random rows without factors."""
    rows = (factor_traversals(dataset, num_steps, seed) if dataset.has_factors
            else random_rows(dataset, num_steps=num_steps, seed=seed))
    if not rows:  # factors present but no factor varies alone in this subsample
        rows = random_rows(dataset, num_steps=num_steps, seed=seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image_grid([(label, dataset.batch(positions)) for label, positions in rows]).save(out)
    return out
