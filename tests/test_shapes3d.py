"""Tests of the procedural Shapes3D renderer (rpu_ray.data.shapes3d)."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest

from rpu_ray.data import shapes3d

SIZES = np.array(shapes3d.FACTOR_SIZES)
FLOOR, WALL, OBJECT, SCALE, SHAPE, ORIENTATION = range(6)
# Smallest single-factor change measured over the grid is ~0.12 grey levels (one scale step of
# a cube when all three hues are equal); half of that still separates "changed" from "equal".
MIN_MEAN_ABS_DIFF = 0.05


def _random_classes(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, SIZES, size=(n, len(SIZES)))


def _changed_pixels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Boolean (N, 64, 64): pixels where any channel differs."""
    return (a != b).any(axis=1)


def test_constants() -> None:
    assert shapes3d.FACTOR_NAMES == ("floor_hue", "wall_hue", "object_hue", "scale", "shape",
                                     "orientation")
    assert shapes3d.FACTOR_SIZES == (10, 10, 10, 8, 4, 15)
    assert shapes3d.NUM_CHANNELS == 3


def test_shape_dtype_and_range() -> None:
    classes = _random_classes(np.random.default_rng(0), 7)
    images = shapes3d.render(classes)
    assert images.shape == (7, 3, 64, 64)
    assert images.dtype == np.uint8
    assert images.flags.c_contiguous
    # Full-saturation colours: every image uses both dark and bright channel values.
    assert images.min() == 0 and images.max() > 200
    assert shapes3d.render(np.zeros((0, 6), np.int64)).shape == (0, 3, 64, 64)


@pytest.mark.parametrize("bad", [np.zeros((3, 5), np.int64), np.zeros(6, np.int64),
                                 np.full((1, 6), 0.0), np.array([[10, 0, 0, 0, 0, 0]]),
                                 np.array([[0, 0, 0, 0, 0, -1]])])
def test_rejects_bad_classes(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        shapes3d.render(bad)


def test_deterministic() -> None:
    classes = _random_classes(np.random.default_rng(1), 50)
    np.testing.assert_array_equal(shapes3d.render(classes), shapes3d.render(classes.copy()))


def test_chunk_independence() -> None:
    rng = np.random.default_rng(2)
    # A C-order slice of the grid (the lead's chunked access) plus random rows.
    grid_rows = np.stack(np.unravel_index(np.arange(123_000, 124_100), shapes3d.FACTOR_SIZES), 1)
    classes = np.concatenate([grid_rows, _random_classes(rng, 300)])
    full = shapes3d.render(classes)
    subset = rng.choice(len(classes), size=97, replace=False)
    np.testing.assert_array_equal(shapes3d.render(classes[subset]), full[subset])
    np.testing.assert_array_equal(shapes3d.render(classes[::-1]), full[::-1])
    np.testing.assert_array_equal(shapes3d.render(classes[5:6]), full[5:6])


@pytest.mark.parametrize("factor", range(6))
def test_every_single_factor_change_changes_the_image(factor: int) -> None:
    rng = np.random.default_rng(10 + factor)
    base = _random_classes(rng, 12)
    # Include the hardest case: all three hues equal, so only geometry/shading can differ.
    base[:3, :3] = rng.integers(0, 10, size=(3, 1))
    adjacent = base.copy()
    adjacent[:, factor] = np.where(base[:, factor] + 1 < SIZES[factor], base[:, factor] + 1,
                                   base[:, factor] - 1)
    random_other = base.copy()
    random_other[:, factor] = (base[:, factor]
                               + rng.integers(1, SIZES[factor], size=len(base))) % SIZES[factor]
    images = shapes3d.render(base).astype(np.float64)
    for other in (adjacent, random_other):
        diff = np.abs(shapes3d.render(other) - images).mean(axis=(1, 2, 3))
        assert diff.min() > MIN_MEAN_ABS_DIFF, (shapes3d.FACTOR_NAMES[factor], diff.min())


def _with_changed_factor(base: np.ndarray, factor: int
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renders of `base` and of `base` with `factor` moved to another class, and the change."""
    other = base.copy()
    other[:, factor] = (base[:, factor] + 1 + np.arange(len(base)) % (SIZES[factor] - 1)
                        ) % SIZES[factor]
    a, b = shapes3d.render(base), shapes3d.render(other)
    return a, b, _changed_pixels(a, b)


def test_floor_hue_changes_only_the_floor() -> None:
    base = _random_classes(np.random.default_rng(3), 40)
    _, _, changed = _with_changed_factor(base, FLOOR)
    assert changed[:, -4:, :].all()  # the bottom rows are floor at every orientation
    assert not changed[:, :16, :].any()  # the top rows are wall
    assert changed.mean() < 0.75


def test_wall_hue_changes_only_the_walls() -> None:
    base = _random_classes(np.random.default_rng(4), 40)
    _, _, changed = _with_changed_factor(base, WALL)
    assert changed[:, :4, :].all()
    assert not changed[:, -16:, :].any()


def test_object_hue_changes_only_the_object() -> None:
    base = _random_classes(np.random.default_rng(5), 40)
    _, _, changed = _with_changed_factor(base, OBJECT)
    for rows in (slice(0, 8), slice(-8, None)):
        for cols in (slice(0, 8), slice(-8, None)):
            assert not changed[:, rows, cols].any()
    area = changed.sum(axis=(1, 2))
    assert area.min() >= 80  # smallest object (capsule or sphere at scale 0.75) ~110 px
    assert area.max() < 0.2 * 64 * 64
    # The object sits in the middle of the image.
    assert changed[:, 28:36, 28:36].any(axis=(1, 2)).all()


def test_background_colours_are_hsv_full_saturation() -> None:
    hues = np.arange(10)
    classes = np.stack([hues, (hues + 3) % 10, (hues + 6) % 10,
                        np.zeros(10, int), np.zeros(10, int), np.full(10, 7)], axis=1)
    images = shapes3d.render(classes).astype(np.float64) / 255.0
    for row, img in zip(classes, images, strict=True):
        for hue_class, (r, c) in ((row[FLOOR], (63, 32)), (row[WALL], (0, 10))):
            h, s, v = colorsys.rgb_to_hsv(*img[:, r, c])
            assert abs(h - 0.1 * hue_class) < 0.02 or abs(h - 0.1 * hue_class) > 0.98
            assert s > 0.97
            assert 0.5 < v <= 1.0


def test_scale_increases_object_area() -> None:
    rows = [[2, 7, 4, scale, shape, orientation]
            for shape in range(4) for orientation in (0, 7, 14) for scale in range(8)]
    base = np.array(rows)
    _, _, changed = _with_changed_factor(base, OBJECT)
    area = changed.sum(axis=(1, 2)).reshape(4, 3, 8)
    assert (np.diff(area, axis=-1) > 0).all(), area
    assert (area[..., -1] > 2.0 * area[..., 0]).all()  # (1.25 / 0.75)^2 ~ 2.8


def test_shapes_differ_in_silhouette() -> None:
    base = np.array([[2, 7, 4, 7, shape, 7] for shape in range(4)])
    _, _, changed = _with_changed_factor(base, OBJECT)
    masks = changed.reshape(4, -1)
    for i in range(4):
        for j in range(i + 1, 4):
            assert (masks[i] != masks[j]).sum() > 40, (i, j)


def test_orientation_extremes_are_mirror_images_of_the_room() -> None:
    rng = np.random.default_rng(6)
    base = _random_classes(rng, 6)
    left, right = base.copy(), base.copy()
    left[:, ORIENTATION], right[:, ORIENTATION] = 0, 14
    _, _, floor_left = _with_changed_factor(left, FLOOR)
    _, _, floor_right = _with_changed_factor(right, FLOOR)
    # The camera swings symmetrically about the room's corner: the floor region (walls and
    # object occluding it) at -30 deg is the mirror image of the one at +30 deg ...
    mirrored = (floor_left != floor_right[:, :, ::-1]).mean(axis=(1, 2))
    assert mirrored.max() < 0.005
    # ... but the images themselves are clearly different.
    unmirrored = (floor_left != floor_right).sum(axis=(1, 2))
    assert unmirrored.min() > 60
    diff = np.abs(shapes3d.render(left).astype(np.float64) - shapes3d.render(right))
    assert diff.mean(axis=(1, 2, 3)).min() > 2.0
