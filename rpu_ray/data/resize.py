"""Image size normalisation: exact 2x2 block means for halvings, PIL's box filter otherwise."""

from __future__ import annotations

import numpy as np
from PIL import Image

from rpu_ray.data.dataset import DataError

SUPPORTED_SIZES = (32, 64, 128)
MIN_SIZE = 16


def halve(images: np.ndarray) -> np.ndarray:
    """Exact 2x2 block mean of uint8 (N, C, H, W), rounded half up."""
    n, c, h, w = images.shape
    blocks = images.reshape(n, c, h // 2, 2, w // 2, 2).astype(np.uint16).sum(axis=(3, 5))
    return ((blocks + 2) // 4).astype(np.uint8)


def resize_images(images: np.ndarray, size: int, source: str) -> np.ndarray:
    """uint8 (N, C, H, H) -> uint8 (N, C, size, size).

    Sizes that are the input halved k times use exact block means (so 32 px dSprites is the
    64 px grid reduced by 2x2 averaging); any other ratio uses PIL's box filter per image.
    """
    if size not in SUPPORTED_SIZES:
        raise DataError(f"{source}: image_size must be one of {SUPPORTED_SIZES}, got {size}")
    current = images.shape[-1]
    if current == size:
        return images
    while current > size and current % 2 == 0 and current // 2 >= size:
        images = halve(images)
        current //= 2
    if current == size:
        return images
    out = np.empty(images.shape[:2] + (size, size), np.uint8)
    for i, image in enumerate(images):
        for ch, plane in enumerate(image):
            out[i, ch] = np.asarray(Image.fromarray(plane).resize((size, size), Image.BOX))
    return out
