"""Procedural dSprites (Matthey et al. 2017), rendered from its factor grid.

Geometry (see docs/datasets.md): 64x64 binary images; centre of the sprite at 16 + 32 * pos
pixels; posX is the horizontal image axis (columns), posY the vertical one (rows, row 0 at the
top); positive orientation turns counter-clockwise on screen. Square: side 20 * scale px.
Ellipse: semi-axes 13 * scale x 7 * scale px, major axis horizontal at orientation 0. Heart:
two lobes of radius 5.5 * scale joined to a point by tangent lines, 20 x 17 px at scale 1,
lobes up; it rotates about the position centre, which sits 1.9 * scale px below its centroid.
Orientation is linspace(0, 2 pi, 40), so class 39 renders exactly like class 0.

Pixels are point-sampled at their centres. Every centre offset (j + 0.5 - cx) lies on a grid
of spacing 1/31 px (cx = 16 + 32 k / 31), so each (shape, scale, orientation) sprite is
evaluated once on that fine grid and every position is a strided view into it: the whole
737,280-image grid costs 720 fine-grid evaluations instead of 737,280 renders.
"""

from __future__ import annotations

import functools

import numpy as np

FACTOR_NAMES = ("shape", "scale", "orientation", "posX", "posY")
FACTOR_SIZES = (3, 6, 40, 32, 32)
NUM_CHANNELS = 1
# Bump whenever rendered pixels change: it keys the on-disk cache.
GENERATOR_VERSION = 1

SCALES = np.linspace(0.5, 1.0, 6)
ORIENTATIONS = np.linspace(0.0, 2 * np.pi, 40)
POSITIONS = np.linspace(0.0, 1.0, 32)

_CANVAS = 64
_SUB = 31  # fine-grid samples per pixel (positions are 32/31 px apart)
_HALF_WINDOW = 16  # px around the centre that can hold sprite pixels (largest extent ~14.2)
_WINDOW = 2 * _HALF_WINDOW * _SUB
# Fine-grid index of pixel j at position class k is 31 j + 32 (31 - k) in a padded plane
# whose rows/columns [_PAD, _PAD + _WINDOW) hold the window.
_PAD = 32 * 31 - 15  # so that plane index = 31 j + 32 (31 - k) (see _position_views)
_PLANE = _SUB * (_CANVAS - 1) + 32 * 31 + 1

# Heart at scale 1, origin = rotation centre, v up: two lobes and the tangent triangle to the tip.
_LOBE_RADIUS = 5.5
_LOBE_OFFSET = 4.5
_TIP_DEPTH = 11.5  # tip below the lobe centres; height = 5.5 + 11.5 = 17
_CENTROID_ABOVE_CENTRE = 1.9


def _heart_tangent_point() -> tuple[float, float]:
    """Where the line from the tip touches the right lobe (lobe centre at (4.5, 0))."""
    cx, tip = _LOBE_OFFSET, -_TIP_DEPTH
    d = np.hypot(cx, tip)
    # Angle at the lobe centre between the centre->tip direction and the centre->tangent point.
    angle_to_tip = np.arctan2(tip, -cx)
    theta = np.arccos(_LOBE_RADIUS / d)
    a = angle_to_tip + theta  # the outer tangent (on the right of the lobe)
    return cx + _LOBE_RADIUS * np.cos(a), _LOBE_RADIUS * np.sin(a)


def _heart_mask_unit(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Heart at scale 1 with the lobe centres on v = 0 (not yet shifted to its centroid)."""
    r2 = _LOBE_RADIUS**2
    lobes = ((u - _LOBE_OFFSET) ** 2 + v**2 <= r2) | ((u + _LOBE_OFFSET) ** 2 + v**2 <= r2)
    px, py = _heart_tangent_point()
    # The body between the lobe centres and the tip: inside both tangent lines below the
    # tangent points (px, py), and |u| <= px above them, which the lobes already contain
    # except for the gap just under the notch.
    slope = px / (py + _TIP_DEPTH)
    half_width = np.minimum((v + _TIP_DEPTH) * slope, px)
    body = (v <= 0) & (v >= -_TIP_DEPTH) & (np.abs(u) <= half_width)
    return lobes | body


@functools.cache
def _heart_vertical_shift() -> float:
    """Shift of the lobe-centre line so that the centroid sits 1.9 px above the origin."""
    t = np.linspace(-15, 15, 1201)
    u, v = np.meshgrid(t, t)
    mask = _heart_mask_unit(u, v)
    return _CENTROID_ABOVE_CENTRE - float(v[mask].mean())


def sprite_mask(shape: int, scale: float, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether the points (u, v) in the sprite's own frame (v up, px) are inside the sprite."""
    if shape == 0:  # square
        half = 10.0 * scale
        return (np.abs(u) < half) & (np.abs(v) < half)
    if shape == 1:  # ellipse
        return (u / (13.0 * scale)) ** 2 + (v / (7.0 * scale)) ** 2 <= 1.0
    if shape == 2:  # heart
        return _heart_mask_unit(u / scale, v / scale - _heart_vertical_shift())
    raise ValueError(f"unknown dSprites shape class {shape}")


# Below this many images of one sprite, evaluating their pixels directly beats the fine plane.
_DIRECT_LIMIT = 200


def _angle(orientation_class: int) -> float:
    # Class 39 is 2 pi: reuse the exact angle of class 0 so both give identical images.
    return float(ORIENTATIONS[orientation_class % (len(ORIENTATIONS) - 1)])


def _offsets() -> np.ndarray:
    """Fine-grid offsets from the sprite centre (px); both render paths index this array."""
    return (np.arange(_WINDOW) + 0.5) / _SUB - _HALF_WINDOW


def _inside(shape: int, scale_class: int, orientation_class: int, x: np.ndarray,
            y: np.ndarray) -> np.ndarray:
    """Sprite test for screen offsets x (right) and y (up) from the centre."""
    angle = _angle(orientation_class)
    cos, sin = np.cos(angle), np.sin(angle)
    # Counter-clockwise rotation on screen: sprite frame = rotate the offset by -angle.
    return sprite_mask(shape, float(SCALES[scale_class]), x * cos + y * sin, -x * sin + y * cos)


def _fine_plane(shape: int, scale_class: int, orientation_class: int) -> np.ndarray:
    """The sprite on the fine grid, padded so every position is an in-bounds strided view."""
    offsets = _offsets()
    plane = np.zeros((_PLANE, _PLANE), np.uint8)
    # Rows grow downwards on screen, so the upward offset of row m is -offsets[m].
    inside = _inside(shape, scale_class, orientation_class, offsets[None, :], -offsets[:, None])
    plane[_PAD:_PAD + _WINDOW, _PAD:_PAD + _WINDOW] = inside * np.uint8(255)
    return plane


def _position_views(plane: np.ndarray) -> np.ndarray:
    """View (posX, posY, 64, 64) of every position of one sprite, without copying."""
    row, col = plane.strides
    # Position class k has its centre 32 fine samples further than class k - 1; reverse order
    # (31 - k) keeps every stride positive.
    views = np.lib.stride_tricks.as_strided(
        plane, shape=(32, 32, _CANVAS, _CANVAS),
        strides=(32 * col, 32 * row, _SUB * row, _SUB * col), writeable=False)
    return views[::-1, ::-1]


def _direct(shape: int, scale_class: int, orientation_class: int, pos_x: np.ndarray,
            pos_y: np.ndarray) -> np.ndarray:
    """The same pixels as the fine plane for a few positions, evaluated only where needed."""
    offsets = _offsets()
    pixels = np.arange(_CANVAS)
    # Fine-grid index of pixel j at position class k (see _PAD): m = 31 j + 15 - 32 k.
    mx = _SUB * pixels[None, :] + 15 - 32 * pos_x[:, None]
    my = _SUB * pixels[None, :] + 15 - 32 * pos_y[:, None]
    valid_x, valid_y = (mx >= 0) & (mx < _WINDOW), (my >= 0) & (my < _WINDOW)
    x = offsets[np.clip(mx, 0, _WINDOW - 1)][:, None, :]
    y = -offsets[np.clip(my, 0, _WINDOW - 1)][:, :, None]
    inside = _inside(shape, scale_class, orientation_class, x, y)
    inside &= valid_x[:, None, :] & valid_y[:, :, None]
    return inside * np.uint8(255)


def render(classes: np.ndarray) -> np.ndarray:
    """Render dSprites images for factor classes.

    Args:
        classes: int array (N, 5): shape, scale, orientation, posX, posY class indices.

    Returns:
        uint8 array (N, 1, 64, 64) with values 0 and 255.
    """
    classes = np.asarray(classes)
    out = np.empty((len(classes), 1, _CANVAS, _CANVAS), np.uint8)
    sprite_ids = np.ravel_multi_index(classes[:, :3].T, FACTOR_SIZES[:3])
    for sprite in np.unique(sprite_ids):
        rows = np.flatnonzero(sprite_ids == sprite)
        shape, scale_class, orientation_class = np.unravel_index(sprite, FACTOR_SIZES[:3])
        sprite_args = int(shape), int(scale_class), int(orientation_class)
        if len(rows) < _DIRECT_LIMIT:
            out[rows, 0] = _direct(*sprite_args, classes[rows, 3], classes[rows, 4])
        else:
            out[rows, 0] = _position_views(_fine_plane(*sprite_args))[classes[rows, 3],
                                                                      classes[rows, 4]]
    return out
