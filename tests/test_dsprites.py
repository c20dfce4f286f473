"""Procedural dSprites: grid, factor order and the geometry of datasets.md."""

from __future__ import annotations

import numpy as np
import pytest

from rpu_ray import data
from rpu_ray.data import dsprites
from rpu_ray.data.procedural import grid_classes, subsample_indices
from rpu_ray.data.resize import halve

BASES = np.array([245760, 40960, 1024, 32, 1])  # shape, scale, orientation, posX, posY


def render_one(shape: int, scale: int, orientation: int, pos_x: int, pos_y: int) -> np.ndarray:
    return dsprites.render(np.array([[shape, scale, orientation, pos_x, pos_y]]))[0, 0] > 0


def test_grid_and_factor_order() -> None:
    assert dsprites.FACTOR_NAMES == ("shape", "scale", "orientation", "posX", "posY")
    assert dsprites.FACTOR_SIZES == (3, 6, 40, 32, 32)
    assert int(np.prod(dsprites.FACTOR_SIZES)) == 737_280
    flat = np.array([0, 1, 32, 1024, 40960, 245759, 737279])
    classes = grid_classes(dsprites.FACTOR_SIZES, flat)
    # Row-major over the grid with posY fastest: index = dot(classes, bases).
    np.testing.assert_array_equal(classes @ BASES, flat)
    np.testing.assert_array_equal(classes[-1], [2, 5, 39, 31, 31])


def test_square_areas_are_exact_at_orientation_0() -> None:
    for scale in range(6):
        for pos_x, pos_y in [(0, 0), (7, 19), (31, 31), (16, 3)]:
            area = render_one(0, scale, 0, pos_x, pos_y).sum()
            assert area == round((20 * dsprites.SCALES[scale]) ** 2)


@pytest.mark.parametrize(("shape", "table"), [
    (1, [76, 104, 144, 184, 228, 288]),  # ellipse
    (2, [58, 84, 108, 140, 182, 222]),  # heart
])
def test_ellipse_and_heart_areas_within_10_percent(shape: int, table: list[int]) -> None:
    positions = [(x, y) for x in range(0, 32, 5) for y in range(0, 32, 5)]
    for scale, expected in enumerate(table):
        classes = np.array([[shape, scale, 0, x, y] for x, y in positions])
        mean_area = (dsprites.render(classes) > 0).sum(axis=(1, 2, 3)).mean()
        assert abs(mean_area - expected) <= 0.1 * expected, (scale, mean_area)


def centroid(mask: np.ndarray) -> tuple[float, float]:
    rows, cols = np.nonzero(mask)
    return cols.mean() + 0.5, rows.mean() + 0.5  # pixel centres


@pytest.mark.parametrize(("pos_x", "pos_y"), [(0, 0), (31, 0), (10, 25), (31, 31)])
def test_centre_is_16_plus_32_pos_and_posx_is_horizontal(pos_x: int, pos_y: int) -> None:
    x, y = centroid(render_one(0, 5, 0, pos_x, pos_y))
    assert x == pytest.approx(16 + 32 * dsprites.POSITIONS[pos_x], abs=0.51)
    assert y == pytest.approx(16 + 32 * dsprites.POSITIONS[pos_y], abs=0.51)


def test_orientation_turns_counter_clockwise_and_wraps() -> None:
    # Ellipse at 2 pi * 5 / 39 (about 46 degrees) counter-clockwise: its major axis runs from
    # lower left to upper right on screen, i.e. column grows as row shrinks.
    rows, cols = np.nonzero(render_one(1, 5, 5, 16, 16))
    assert np.corrcoef(cols, rows)[0, 1] < -0.5
    # A quarter turn (class 10 is 92 degrees) makes the horizontal ellipse vertical.
    rows, cols = np.nonzero(render_one(1, 5, 10, 16, 16))
    assert rows.std() > 1.5 * cols.std()
    for shape in range(3):
        np.testing.assert_array_equal(render_one(shape, 3, 0, 9, 21),
                                      render_one(shape, 3, 39, 9, 21))


def test_heart_lobes_up_and_centroid_above_rotation_centre() -> None:
    mask = render_one(2, 5, 0, 15, 15)
    centre = 16 + 32 * dsprites.POSITIONS[15]
    _, y = centroid(mask)
    assert centre - y == pytest.approx(1.9, abs=0.4)
    rows = np.nonzero(mask.any(axis=1))[0]
    widths = mask.sum(axis=1)[rows]
    assert widths[: len(widths) // 3].mean() > widths[-len(widths) // 3:].mean()  # wide top
    assert rows.max() - rows.min() + 1 in (17, 18)
    top = mask[rows.min()]
    # The notch: the top row has two separate runs of pixels (the lobes).
    assert np.count_nonzero(np.diff(top.astype(int)) == 1) == 2
    # Turning by half a circle (class 19.5 is not on the grid; 20 is 185 degrees) puts the
    # point at the top: the widest rows are now at the bottom.
    flipped = render_one(2, 5, 20, 15, 15)
    rows = np.nonzero(flipped.any(axis=1))[0]
    widths = flipped.sum(axis=1)[rows]
    assert widths[-len(widths) // 3:].mean() > widths[: len(widths) // 3].mean()


def test_fine_plane_and_direct_paths_agree() -> None:
    # A sprite with many requested positions uses the fine plane, few use direct evaluation.
    classes = np.array([[2, 4, 17, x, y] for x in range(32) for y in range(32)])
    all_positions = dsprites.render(classes)
    few = dsprites.render(classes[::97])
    np.testing.assert_array_equal(few, all_positions[::97])


def test_load_subsample_count_and_strides() -> None:
    a = data.load("dsprites", image_size=32, subsample=500, seed=3)
    b = data.load("dsprites", image_size=32, subsample=500, seed=3)
    c = data.load("dsprites", image_size=32, subsample=500, seed=4)
    np.testing.assert_array_equal(a.factors, b.factors)
    assert not np.array_equal(a.factors, c.factors)
    assert a.images.shape == (500, 1, 32, 32) and a.source == "dsprites (procedural)"
    np.testing.assert_array_equal(a.images, data.load("dsprites", 32, 500, seed=3).images)
    strided = data.load("dsprites", image_size=32, subsample=[3, 6, 40, 4, 4])
    assert len(strided) == 1 * 1 * 1 * 8 * 8
    assert set(np.unique(strided.factors[:, 3])) == set(range(0, 32, 4))


def test_32px_is_exact_block_mean_of_64px() -> None:
    flat = subsample_indices(dsprites.FACTOR_SIZES, 300, seed=1)
    big = dsprites.render(grid_classes(dsprites.FACTOR_SIZES, flat))
    small = data.load("dsprites", image_size=32, subsample=300, seed=1).images
    blocks = big.reshape(300, 1, 32, 2, 32, 2).astype(int).sum(axis=(3, 5))
    np.testing.assert_array_equal(small, (blocks + 2) // 4)
    np.testing.assert_array_equal(halve(big), small)
    assert set(np.unique(small)) <= {0, 64, 128, 191, 255}
