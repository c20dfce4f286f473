"""Procedural Shapes3D (Burgess & Kim 2018): a room with one shaded object, rendered from factors.

The real data set cannot be downloaded here, so this module renders a faithful stand-in from the
factor grid (label results on it "shapes3d (procedural)"). The scene follows DeepMind's
3dshapes: a floor, a back wall and a side wall meeting in a corner behind one object at the
centre of the room; a camera orbits the object, so the orientation factor moves the corner and
the wall/floor boundary across the image and turns the object.

Design (why it is fast): which surface a pixel sees, how much of the pixel it covers and how it
is lit depend only on (scale, shape, orientation), i.e. 8 * 4 * 15 = 480 geometries. Those are
ray-cast once per process with numpy at 64x64 with 4x4 supersampling, giving per pixel the
coverage-weighted shading of the floor, the walls and the object. Colour is linear in those
weights, so for each geometry a (hue x pixel) term table per surface is built once and an
image is the sum of three looked-up rows: rows are grouped by geometry and composited in small
cache-sized blocks.
"""

from __future__ import annotations

import colorsys
import functools

import numpy as np

FACTOR_NAMES = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
FACTOR_SIZES = (10, 10, 10, 8, 4, 15)
NUM_CHANNELS = 3
# Bump whenever the rendered pixels change: callers key their image caches on it.
GENERATOR_VERSION = 1

IMAGE_SIZE = 64
HUES = np.linspace(0.0, 0.9, 10)
SCALES = np.linspace(0.75, 1.25, 8)
SHAPE_NAMES = ("cube", "cylinder", "sphere", "capsule")
ORIENTATIONS_DEG = np.linspace(-30.0, 30.0, 15)

# Supersampling per pixel side: 4x4 samples give smooth silhouettes so that one scale step
# changes edge pixels gradually rather than flipping whole pixels.
_SUPERSAMPLE = 4
# Scene constants (world units, y up, floor at y = 0, object standing on the origin).
_OBJECT_SIZE = 1.0  # half-extent of the object at scale 1
_WALL_DISTANCE = 6.0  # walls are the planes x = -d and z = -d, so the corner is on the diagonal
_CAMERA_DISTANCE = 11.0
_CAMERA_ELEVATION_DEG = 30.0
_CAMERA_TARGET_Y = 1.6
_FIELD_OF_VIEW_DEG = 40.0
# The camera looks straight at the corner at 0 deg (orientation class 7; azimuth 45 deg), so
# -a and +a deg (e.g. classes 0 and 14) see mirror images of the room (up to lighting).
_CAMERA_BASE_AZIMUTH_DEG = 45.0
# Fixed world light (towards the light); it differs per wall so the two walls and the floor
# are each lit slightly differently, like the original renders.
_LIGHT = np.array([0.35, 1.0, 0.65]) / np.linalg.norm([0.35, 1.0, 0.65])
_AMBIENT_ROOM = 0.55
_AMBIENT_OBJECT = 0.35

# Surface id of the floor in the ray-caster (1 and 2 are the walls, which share one hue and
# so one weight row).
_FLOOR = 0
_NUM_GEOMETRIES = FACTOR_SIZES[3] * FACTOR_SIZES[4] * FACTOR_SIZES[5]


def _camera_rays(orientation_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Camera origin (3,) and unit ray directions (H*S, W*S, 3) for one orientation."""
    azimuth = np.deg2rad(_CAMERA_BASE_AZIMUTH_DEG + orientation_deg)
    elevation = np.deg2rad(_CAMERA_ELEVATION_DEG)
    target = np.array([0.0, _CAMERA_TARGET_Y, 0.0])
    origin = target + _CAMERA_DISTANCE * np.array(
        [np.cos(elevation) * np.sin(azimuth), np.sin(elevation),
         np.cos(elevation) * np.cos(azimuth)])
    forward = (target - origin) / np.linalg.norm(target - origin)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    n = IMAGE_SIZE * _SUPERSAMPLE
    # Sample centres in [-1, 1]; row 0 is the top of the image.
    coords = (np.arange(n) + 0.5) / n * 2.0 - 1.0
    half = np.tan(np.deg2rad(_FIELD_OF_VIEW_DEG) / 2.0)
    v = -coords[:, None, None] * half
    u = coords[None, :, None] * half
    dirs = forward + u * right + v * up
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    return origin, dirs


def _room_hit(origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance and surface id of the first room plane each ray meets.

    The camera is inside the convex room, so the first plane a ray crosses is the visible one.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        t_floor = np.where(dirs[..., 1] < 0, -origin[1] / dirs[..., 1], np.inf)
        t_wall_x = np.where(dirs[..., 0] < 0, (-_WALL_DISTANCE - origin[0]) / dirs[..., 0],
                            np.inf)
        t_wall_z = np.where(dirs[..., 2] < 0, (-_WALL_DISTANCE - origin[2]) / dirs[..., 2],
                            np.inf)
    t_all = np.stack([t_floor, t_wall_x, t_wall_z])
    surface = np.argmin(t_all, axis=0)
    return np.min(t_all, axis=0), surface


def _object_hit(shape: int, size: float, origin: np.ndarray, dirs: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Distance (inf = miss) and world unit normal of the object for each ray.

    Works in the object frame: rotated 45 deg about y so that the cube faces the camera at
    orientation 0 and the capsule lies across the view; the rotation keeps the scene
    mirror-symmetric about the room diagonal.
    """
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    # Columns: object x/y/z axes in world coordinates; x = (1, 0, -1)/sqrt(2) runs across the
    # view at orientation 0, z = (1, 0, 1)/sqrt(2) points from the corner to the camera.
    rot = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    o = origin @ rot
    d = dirs @ rot
    inf = np.full(d.shape[:-1], np.inf)
    normal = np.zeros_like(d)
    ox, oy, oz = o
    dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
    r = size

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if SHAPE_NAMES[shape] == "cube":
            lo = np.array([-r, 0.0, -r])
            hi = np.array([r, 2 * r, r])
            t1 = (lo - o) / d
            t2 = (hi - o) / d
            t_near = np.minimum(t1, t2)
            t_far = np.maximum(t1, t2)
            t_enter = t_near.max(axis=-1)
            hit = (t_enter <= t_far.min(axis=-1)) & (t_enter > 0)
            t = np.where(hit, t_enter, inf)
            axis = np.argmax(t_near, axis=-1)
            sign = -np.sign(np.take_along_axis(d, axis[..., None], axis=-1)[..., 0])
            np.put_along_axis(normal, axis[..., None], sign[..., None], axis=-1)
        elif SHAPE_NAMES[shape] == "sphere":
            t, normal = _sphere(o, d, np.array([0.0, r, 0.0]), r)
        elif SHAPE_NAMES[shape] == "cylinder":
            # Side: infinite vertical cylinder, clipped to 0 <= y <= 2r.
            a = dx * dx + dz * dz
            b = ox * dx + oz * dz
            cc = ox * ox + oz * oz - r * r
            disc = b * b - a * cc
            t_side = (-b - np.sqrt(disc)) / a
            y_side = oy + t_side * dy
            side_ok = (disc >= 0) & (t_side > 0) & (y_side >= 0) & (y_side <= 2 * r)
            t_side = np.where(side_ok, t_side, inf)
            # Top cap (the bottom one rests on the floor and is never visible).
            t_top = (2 * r - oy) / dy
            xt, zt = ox + t_top * dx, oz + t_top * dz
            top_ok = (t_top > 0) & (xt * xt + zt * zt <= r * r)
            t_top = np.where(top_ok, t_top, inf)
            t = np.minimum(t_side, t_top)
            side = t_side <= t_top
            px, pz = ox + t * dx, oz + t * dz
            normal[..., 0] = np.where(side, px / r, 0.0)
            normal[..., 1] = np.where(side, 0.0, 1.0)
            normal[..., 2] = np.where(side, pz / r, 0.0)
        else:  # capsule lying on the floor along the object x axis
            radius = 0.62 * r
            half_len = 0.78 * r
            # Cylindrical body around the x axis at height `radius`.
            py0 = oy - radius
            a = dy * dy + dz * dz
            b = py0 * dy + oz * dz
            cc = py0 * py0 + oz * oz - radius * radius
            disc = b * b - a * cc
            t_body = (-b - np.sqrt(disc)) / a
            x_body = ox + t_body * dx
            body_ok = (disc >= 0) & (t_body > 0) & (np.abs(x_body) <= half_len)
            t_body = np.where(body_ok, t_body, inf)
            t_cap0, n_cap0 = _sphere(o, d, np.array([-half_len, radius, 0.0]), radius)
            t_cap1, n_cap1 = _sphere(o, d, np.array([half_len, radius, 0.0]), radius)
            n_body = np.stack([np.zeros_like(dx), py0 + t_body * dy, oz + t_body * dz],
                              axis=-1) / radius
            t = np.minimum(np.minimum(t_body, t_cap0), t_cap1)
            normal = np.where((t == t_body)[..., None], n_body,
                              np.where((t == t_cap0)[..., None], n_cap0, n_cap1))
    hit = np.isfinite(t)
    # Misses can carry inf/nan normals (inf * 0); zero them so the rotation stays finite.
    normal = np.where(hit[..., None], normal, 0.0)
    return np.where(hit, t, np.inf), normal @ rot.T


def _sphere(o: np.ndarray, d: np.ndarray, centre: np.ndarray, radius: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """Nearest positive hit distance (inf = miss) and unit normal of rays against a sphere."""
    oc = o - centre
    b = d @ oc
    cc = oc @ oc - radius * radius
    disc = b * b - cc
    with np.errstate(invalid="ignore"):
        t = -b - np.sqrt(disc)
    t = np.where((disc >= 0) & (t > 0), t, np.inf)
    with np.errstate(invalid="ignore"):
        normal = (oc + np.where(np.isfinite(t), t, 0.0)[..., None] * d) / radius
    return t, normal


def _pool(values: np.ndarray) -> np.ndarray:
    """Average S x S supersamples into pixels: (H*S, W*S) -> (H*W,)."""
    n, s = IMAGE_SIZE, _SUPERSAMPLE
    return values.reshape(n, s, n, s).mean(axis=(1, 3)).reshape(-1)


@functools.cache
def _geometry_table() -> np.ndarray:
    """Per-geometry weights, float32 (480, 3, 64*64), indexed by (scale, shape, orientation).

    Rows: coverage-weighted shading of the floor, the walls and the object; per pixel they sum
    to at most 1. Built once per process (a couple of seconds); it is an intermediate of the
    renderer, not a cache of images.
    """
    room_shade = _AMBIENT_ROOM + (1.0 - _AMBIENT_ROOM) * np.array(
        [_LIGHT[1], _LIGHT[0], _LIGHT[2]])  # floor normal +y, walls +x and +z
    table = np.empty((*FACTOR_SIZES[3:], 3, IMAGE_SIZE * IMAGE_SIZE), np.float32)
    # Every object at every scale lies inside this sphere; only rays that meet it are tested
    # against the object, which makes the table about ten times cheaper to build.
    r_max = _OBJECT_SIZE * float(SCALES[-1])
    bound_centre = np.array([0.0, r_max, 0.0])
    bound_radius = r_max * np.sqrt(3.0) * 1.01
    for k, orientation in enumerate(ORIENTATIONS_DEG):
        origin, dirs = _camera_rays(float(orientation))
        t_room, surface = _room_hit(origin, dirs)
        shade_room = room_shade[surface]
        floor_w = np.where(surface == _FLOOR, shade_room, 0.0)
        wall_w = np.where(surface != _FLOOR, shade_room, 0.0)
        t_bound, _ = _sphere(origin, dirs, bound_centre, bound_radius)
        near = np.isfinite(t_bound)
        near_dirs = dirs[near]
        for j in range(FACTOR_SIZES[4]):
            for i, scale in enumerate(SCALES):
                t_obj, normal = _object_hit(j, _OBJECT_SIZE * float(scale), origin, near_dirs)
                on_obj = np.zeros(near.shape, bool)
                on_obj[near] = t_obj < t_room[near]
                lambert = np.clip(normal @ _LIGHT, 0.0, 1.0)
                obj_w = np.zeros(near.shape)
                obj_w[near] = np.where(on_obj[near],
                                       _AMBIENT_OBJECT + (1 - _AMBIENT_OBJECT) * lambert, 0.0)
                table[i, j, k, 0] = _pool(np.where(on_obj, 0.0, floor_w))
                table[i, j, k, 1] = _pool(np.where(on_obj, 0.0, wall_w))
                table[i, j, k, 2] = _pool(obj_w)
    return table.reshape(_NUM_GEOMETRIES, 3, IMAGE_SIZE * IMAGE_SIZE)


@functools.cache
def _hue_rgb() -> np.ndarray:
    """HSV(hue, 1, 1) as RGB in 0..255, float32 (10, 3)."""
    return np.array([colorsys.hsv_to_rgb(float(h), 1.0, 1.0) for h in HUES],
                    np.float32) * 255.0


def render(classes: np.ndarray) -> np.ndarray:
    """Render Shapes3D images from factor class indices.

    Args:
        classes: integer array (N, 6) of class indices in FACTOR_NAMES order.

    Returns:
        uint8 array (N, 3, 64, 64), channels first, values 0..255. Each row depends only on its
        own factors, so rendering a subset equals the matching rows of a larger render.
    """
    classes = np.asarray(classes)
    if classes.ndim != 2 or classes.shape[1] != len(FACTOR_SIZES):
        raise ValueError(f"shapes3d: classes must be (N, {len(FACTOR_SIZES)}), "
                         f"got {classes.shape}")
    if classes.size and not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"shapes3d: classes must be integers, got {classes.dtype}")
    classes = classes.astype(np.int64, copy=False)
    if classes.size and ((classes < 0).any() or (classes >= np.array(FACTOR_SIZES)).any()):
        raise ValueError(f"shapes3d: class index out of range for sizes {FACTOR_SIZES}")
    n = classes.shape[0]
    row_len = NUM_CHANNELS * IMAGE_SIZE * IMAGE_SIZE
    out = np.empty((n, row_len), np.uint8)
    if n == 0:
        return out.reshape(n, NUM_CHANNELS, IMAGE_SIZE, IMAGE_SIZE)

    table = _geometry_table()
    rgb = _hue_rgb()[:, :, None]
    geometry = np.ravel_multi_index(tuple(classes[:, 3:].T), FACTOR_SIZES[3:])
    order = np.argsort(geometry, kind="stable")
    bounds = np.flatnonzero(np.diff(geometry[order])) + 1
    # Small row blocks keep the float32 temporaries (8 x 48 KB each) in cache; elementwise
    # ufuncs (not BLAS) keep the result bit-identical across machines and thread counts.
    block = 8
    buf = np.empty((block, row_len), np.float32)
    for group in np.split(order, bounds):
        weights = table[geometry[group[0]]]
        # Colour is linear in the surface weights: one term per surface and hue, (10, 3*64*64).
        # The +0.5 makes the truncating float->uint8 cast round to nearest; sums stay within
        # [0.5, 255.5] because the weights of a pixel sum to at most 1, so the cast never wraps.
        floor_term = (rgb * weights[0]).reshape(len(HUES), row_len) + np.float32(0.5)
        wall_term = (rgb * weights[1]).reshape(len(HUES), row_len)
        object_term = (rgb * weights[2]).reshape(len(HUES), row_len)
        hues = classes[group, :3]
        for start in range(0, len(group), block):
            stop = min(start + block, len(group))
            b = buf[:stop - start]
            np.add(floor_term[hues[start:stop, 0]], wall_term[hues[start:stop, 1]], out=b)
            b += object_term[hues[start:stop, 2]]
            out[group[start:stop]] = b.astype(np.uint8)
    return out.reshape(n, NUM_CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
