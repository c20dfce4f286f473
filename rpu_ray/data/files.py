"""Loading images (and optional integer labels) from files and folders.

Formats:
  * DeepMind dSprites: `.npz` with `imgs` (N, 64, 64) 0/1 and `latents_classes` (N, 6), or the
    HDF5 version (`imgs`, `latents/classes`). The constant colour factor is dropped.
  * DeepMind Shapes3D: `.h5` with `images` (480000, 64, 64, 3) and float `labels`; integer
    factors are derived from the C-order grid, never from the rounded floats.
  * User data: `.npz` with key `images` or `.h5` with dataset `images`, NHWC or NCHW (or NHW
    for grayscale), uint8 0..255 or float in [0, 1]; optional integer `labels` or `factors`
    (N,) or (N, F); or a folder of PNG/JPEG files (sorted by name).

Nothing here unpickles: `np.load(..., allow_pickle=False)` and h5py only. Every problem raises
one `DataError` naming the file and the problem.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from rpu_ray.data import dsprites, shapes3d
from rpu_ray.data.dataset import DataError, Dataset
from rpu_ray.data.procedural import grid_classes
from rpu_ray.data.resize import MIN_SIZE, resize_images

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NPZ_SUFFIXES = (".npz",)
H5_SUFFIXES = (".h5", ".hdf5")
LABEL_KEYS = ("labels", "factors")
_CHUNK = 16_384


def load_path(path: str | Path, image_size: int = 64) -> Dataset:
    """A data set from a file or folder (see the module docstring for the formats)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        return load_image_folder(path, image_size)
    suffix = path.suffix.lower()
    if suffix in NPZ_SUFFIXES:
        return load_npz(path, image_size)
    if suffix in H5_SUFFIXES:
        return load_h5(path, image_size)
    raise DataError(f"{path}: unsupported file type {suffix!r} (expected .npz, .h5, .hdf5 or a "
                    "folder of PNG/JPEG images)")


# ----------------------------------------------------------------------------- arrays


def _channel_layout(shape: tuple[int, ...], path: Path) -> str:
    """"nhw", "nhwc" or "nchw" for an image array shape (1 or 3 channels)."""
    if len(shape) == 3:
        return "nhw"
    if len(shape) != 4:
        raise DataError(f"{path}: images must have 3 or 4 dimensions (N, H, W[, C]) or "
                        f"(N, C, H, W), got shape {tuple(shape)}")
    last, second = shape[3] in (1, 3), shape[1] in (1, 3)
    if last != second:
        return "nhwc" if last else "nchw"
    raise DataError(f"{path}: cannot tell the channel axis of shape {tuple(shape)} "
                    "(expected 1 or 3 channels first or last)")


def _to_nchw(images: np.ndarray, layout: str) -> np.ndarray:
    if layout == "nhw":
        return images[:, None]
    return images.transpose(0, 3, 1, 2) if layout == "nhwc" else images


def _check_geometry(shape: tuple[int, ...], path: Path) -> None:
    n, _, h, w = shape
    if n == 0:
        raise DataError(f"{path}: contains no images")
    if h != w:
        raise DataError(f"{path}: images must be square, got {h}x{w} (crop them first)")
    if h < MIN_SIZE:
        raise DataError(f"{path}: images of {h}x{w} px are too small (minimum {MIN_SIZE} px)")


def _to_uint8(chunk: np.ndarray, path: Path) -> np.ndarray:
    """uint8 stays; bool -> 0/255; float in [0, 1] -> rounded 0..255; anything else fails."""
    if chunk.dtype == np.uint8:
        return chunk
    if chunk.dtype == np.bool_:
        return chunk.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(chunk.dtype, np.floating):
        if not np.isfinite(chunk).all():
            raise DataError(f"{path}: images contain NaN or infinite values")
        low, high = float(chunk.min()), float(chunk.max())
        if low < 0.0 or high > 1.0:
            raise DataError(f"{path}: float images must lie in [0, 1], found values in "
                            f"[{low:.4g}, {high:.4g}]")
        return np.rint(chunk * 255.0).astype(np.uint8)
    raise DataError(f"{path}: unsupported image dtype {chunk.dtype} (expected uint8, or float "
                    "in [0, 1])")


def _normalise(images, path: Path, image_size: int, scale01: bool = False) -> np.ndarray:
    """Images (a numpy array or an h5py dataset) -> uint8 (N, C, size, size), chunk by chunk.

    With `scale01` the pixels must be 0/1 (DeepMind's dSprites) and are mapped to 0/255.
    """
    layout = _channel_layout(images.shape, path)
    nchw = _to_nchw(np.empty((0,) + tuple(images.shape[1:]), np.uint8), layout).shape
    nchw = (images.shape[0],) + nchw[1:]
    _check_geometry(nchw, path)
    out = np.empty(nchw[:2] + (image_size, image_size), np.uint8)
    for start in range(0, nchw[0], _CHUNK):
        chunk = _to_uint8(_to_nchw(np.asarray(images[start:start + _CHUNK]), layout), path)
        if scale01:
            if chunk.max(initial=0) > 1:
                raise DataError(f"{path}: dSprites `imgs` must hold 0/1 pixels")
            chunk = chunk * np.uint8(255)
        out[start:start + len(chunk)] = resize_images(chunk, image_size, str(path))
    return out


def _labels(raw: np.ndarray, num_images: int, path: Path, key: str) -> np.ndarray:
    """Validate user labels: integer, non-negative, one row per image -> int64 (N, F)."""
    if not (np.issubdtype(raw.dtype, np.integer) or raw.dtype == np.bool_):
        raise DataError(f"{path}: `{key}` must be integer class indices, got dtype {raw.dtype}")
    labels = raw.reshape(-1, 1) if raw.ndim == 1 else raw
    if labels.ndim != 2:
        raise DataError(f"{path}: `{key}` must have shape (N,) or (N, F), got {raw.shape}")
    if labels.shape[0] != num_images:
        raise DataError(f"{path}: `{key}` has {labels.shape[0]} rows for {num_images} images")
    if labels.size and labels.min() < 0:
        raise DataError(f"{path}: `{key}` must be non-negative class indices")
    return labels.astype(np.int64)


def _labelled_dataset(images: np.ndarray, labels: np.ndarray | None, path: Path,
                      key: str = "labels") -> Dataset:
    if labels is None:
        return Dataset(images, source=str(path))
    names = tuple(f"{key}_{i}" for i in range(labels.shape[1]))
    sizes = tuple(int(s) for s in labels.max(axis=0) + 1)
    return Dataset(images, labels, names, sizes, source=str(path))


# ----------------------------------------------------------------------------- npz


def load_npz(path: Path, image_size: int = 64) -> Dataset:
    """DeepMind's dSprites `.npz`, or a user `.npz` with `images` and optional labels."""
    if not zipfile.is_zipfile(path):  # np.load would otherwise try to unpickle it
        raise DataError(f"{path}: unreadable or truncated .npz (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            if "imgs" in keys and "latents_classes" in keys:
                classes = archive["latents_classes"]
                images = _normalise(archive["imgs"], path, image_size, scale01=True)
                return _dsprites_dataset(images, classes, path)
            if "images" not in keys:
                raise DataError(f"{path}: no `images` array (found: {', '.join(sorted(keys))})")
            images = _normalise(archive["images"], path, image_size)
            key = next((k for k in LABEL_KEYS if k in keys), None)
            labels = None if key is None else _labels(archive[key], len(images), path, key)
            return _labelled_dataset(images, labels, path, key or "labels")
    except DataError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as err:
        raise DataError(f"{path}: unreadable or truncated .npz ({err})") from None
    except ValueError as err:  # an object array (would need pickle) or a corrupt header
        problem = ("holds Python objects, which cannot be read without pickle" if "pickle" in
                   str(err) else "unreadable .npz member")
        raise DataError(f"{path}: {problem} ({err})") from None


def _dsprites_dataset(images: np.ndarray, classes: np.ndarray, path: Path) -> Dataset:
    classes = np.asarray(classes)
    if classes.shape != (len(images), 6):
        raise DataError(f"{path}: dSprites latents_classes must be ({len(images)}, 6), "
                        f"got {classes.shape}")
    return Dataset(images, classes[:, 1:].astype(np.int64), dsprites.FACTOR_NAMES,
                   dsprites.FACTOR_SIZES, source=str(path))


# ----------------------------------------------------------------------------- h5


@contextmanager
def _open_h5(path: Path) -> Iterator:
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{path}: not a readable HDF5 file ({err})") from None
    try:
        yield handle
    except DataError:
        raise
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise DataError(f"{path}: unreadable or truncated HDF5 file ({err})") from None
    finally:
        handle.close()


def load_h5(path: Path, image_size: int = 64) -> Dataset:
    """DeepMind's `3dshapes.h5` or dSprites HDF5, or a user `.h5` with `images`."""
    with _open_h5(path) as f:
        if "imgs" in f and "latents" in f and "classes" in f["latents"]:
            images = _normalise(f["imgs"], path, image_size, scale01=True)
            return _dsprites_dataset(images, f["latents"]["classes"][()], path)
        if "images" not in f:
            raise DataError(f"{path}: no `images` dataset (found: {', '.join(sorted(f.keys()))})")
        raw = f["images"]
        if not hasattr(raw, "shape"):
            raise DataError(f"{path}: `images` is a group, not a dataset")
        if _is_deepmind_shapes3d(raw.shape, f.get("labels")):
            images = _normalise(raw, path, image_size)
            factors = grid_classes(shapes3d.FACTOR_SIZES, np.arange(len(images)))
            return Dataset(images, factors, shapes3d.FACTOR_NAMES, shapes3d.FACTOR_SIZES,
                           source=str(path))
        images = _normalise(raw, path, image_size)
        key = next((k for k in LABEL_KEYS if k in f), None)
        labels = None if key is None else _labels(np.asarray(f[key]), len(images), path, key)
        return _labelled_dataset(images, labels, path, key or "labels")


def _is_deepmind_shapes3d(shape: tuple[int, ...], labels) -> bool:
    """DeepMind's file: the full grid, NHWC RGB 64 px, float `labels` (N, 6) in grid order."""
    num = int(np.prod(shapes3d.FACTOR_SIZES))
    return (tuple(shape) == (num, 64, 64, 3) and labels is not None
            and tuple(labels.shape) == (num, 6) and np.issubdtype(labels.dtype, np.floating))


# ----------------------------------------------------------------------------- folders


def load_image_folder(folder: Path, image_size: int = 64) -> Dataset:
    """All PNG/JPEG files of a folder (not recursive), sorted by name; one size for all."""
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no PNG or JPEG images in this folder")
    arrays, first_size = [], None
    for file in files:
        try:
            with Image.open(file) as image:
                image.load()
                size = image.size
                mode = image.mode
                rgb = mode not in ("1", "L", "LA", "I", "I;16", "F")
                array = np.asarray(image.convert("RGB" if rgb else "L"))
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise DataError(f"{file}: unreadable image ({err})") from None
        if first_size is None:
            first_size = size
        elif size != first_size:
            raise DataError(f"{folder}: images have different sizes ({files[0].name} is "
                            f"{first_size[0]}x{first_size[1]}, {file.name} is {size[0]}x{size[1]})")
        arrays.append(array)
    color = any(a.ndim == 3 for a in arrays)
    if color:  # a folder mixing grayscale and RGB is trained as RGB
        arrays = [np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays]
    stacked = np.stack(arrays)
    return Dataset(_normalise(stacked, folder, image_size), source=str(folder))
