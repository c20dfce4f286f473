"""Loaders (round trips), the Dataset type, the procedural cache, bad input and the CLI."""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from rpu_ray import data
from rpu_ray.cli import main
from rpu_ray.data import DataError, Dataset, dsprites, files, procedural
from rpu_ray.data.resize import halve

RNG = np.random.default_rng(0)


def images_nchw(n: int = 6, c: int = 1, size: int = 64) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, c, size, size), dtype=np.uint8)


# ----------------------------------------------------------------------------- Dataset


def test_subset_is_an_index_view_not_a_copy() -> None:
    images = images_nchw(10)
    factors = np.arange(20).reshape(10, 2)
    ds = Dataset(images, factors, ("a", "b"), (10, 20), source="mem")
    sub = ds.subset([7, 2, 5])
    assert sub.images is images  # shared storage
    assert len(sub) == 3
    np.testing.assert_array_equal(sub.batch([0, 2]), images[[7, 5]])
    np.testing.assert_array_equal(sub.all_factors(), factors[[7, 2, 5]])
    subsub = sub.subset(np.array([False, True, True]))
    np.testing.assert_array_equal(subsub.storage_indices(), [2, 5])
    with pytest.raises(DataError, match="out of range"):
        sub.subset([3])
    np.testing.assert_array_equal(ds.sample(4, np.random.default_rng(1)),
                                  np.sort(np.random.default_rng(1).choice(10, 4, replace=False)))
    np.testing.assert_array_equal(ds.sample(11, np.random.default_rng(1)), np.arange(10))


def test_standalone_copies_a_subset_into_storage_of_its_own() -> None:
    images, factors = images_nchw(10), np.arange(20).reshape(10, 2)
    ds = Dataset(images, factors, ("a", "b"), (10, 20), source="mem")
    assert ds.standalone() is ds
    own = ds.subset([7, 2, 5]).standalone()
    assert own.indices is None and own.images is not images
    np.testing.assert_array_equal(own.images, images[[7, 2, 5]])
    np.testing.assert_array_equal(own.factors, factors[[7, 2, 5]])
    assert (own.factor_names, own.factor_sizes, own.source) == (("a", "b"), (10, 20), "mem")
    unlabelled = Dataset(images).subset([1]).standalone()
    assert unlabelled.factors is None and unlabelled.images.shape == (1, 1, 64, 64)


def test_dataset_rejects_inconsistent_arrays() -> None:
    with pytest.raises(DataError, match="uint8"):
        Dataset(np.zeros((2, 1, 32, 32), np.float32))
    with pytest.raises(DataError, match="do not match"):
        Dataset(images_nchw(3), np.zeros((2, 1), int), ("a",), (1,))


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "nhw"])
@pytest.mark.parametrize("kind", ["uint8", "float"])
def test_npz_and_h5_round_trip(tmp_path: Path, layout: str, kind: str) -> None:
    channels = 1 if layout == "nhw" else 3
    original = images_nchw(5, channels)
    stored = {"nchw": original, "nhwc": original.transpose(0, 2, 3, 1),
              "nhw": original[:, 0]}[layout]
    if kind == "float":
        stored = stored.astype(np.float32) / 255.0
    labels = RNG.integers(0, 4, size=(5, 2))
    np.savez(tmp_path / "x.npz", images=stored, labels=labels)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["images"] = stored
        f["factors"] = labels
    for name in ("x.npz", "x.h5"):
        ds = data.load(tmp_path / name)
        np.testing.assert_array_equal(ds.images, original)
        np.testing.assert_array_equal(ds.all_factors(), labels)
        assert ds.source == str(tmp_path / name)
        small = data.load(tmp_path / name, image_size=32)
        np.testing.assert_array_equal(small.images, halve(original))
        # A count subsample of a file is a data set of its own (rPU-VAE's labels refer to
        # storage positions), the images drawn by the seed.
        picked = data.load(tmp_path / name, subsample=3, seed=4)
        positions = np.sort(np.random.default_rng(4).choice(5, 3, replace=False))
        assert picked.indices is None
        np.testing.assert_array_equal(picked.images, original[positions])
        np.testing.assert_array_equal(picked.factors, labels[positions])


def test_deepmind_dsprites_formats(tmp_path: Path) -> None:
    classes = np.array([[0, s, sc, o, x, y] for s, sc, o, x, y in
                        [(0, 5, 0, 3, 4), (1, 2, 7, 30, 1), (2, 0, 39, 16, 16)]])
    pixels = dsprites.render(classes[:, 1:])[:, 0] // 255  # DeepMind stores 0/1
    np.savez(tmp_path / "dsprites.npz", imgs=pixels, latents_classes=classes,
             latents_values=classes.astype(float))
    with h5py.File(tmp_path / "dsprites.hdf5", "w") as f:
        f["imgs"] = pixels
        f.create_group("latents")["classes"] = classes
    for name in ("dsprites.npz", "dsprites.hdf5"):
        ds = data.load(tmp_path / name)
        assert ds.factor_names == dsprites.FACTOR_NAMES  # colour dropped
        np.testing.assert_array_equal(ds.all_factors(), classes[:, 1:])
        np.testing.assert_array_equal(ds.images[:, 0], pixels * 255)


def test_deepmind_shapes3d_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A miniature grid stands in for the 480,000 images: same detection and factor logic.
    class Mini:
        FACTOR_NAMES = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
        FACTOR_SIZES = (2, 1, 1, 2, 1, 3)

    monkeypatch.setattr(files, "shapes3d", Mini)
    images = images_nchw(12, 3).transpose(0, 2, 3, 1)
    with h5py.File(tmp_path / "3dshapes.h5", "w") as f:
        f["images"] = images
        f["labels"] = RNG.random((12, 6))  # float values; factors come from the grid
    ds = data.load(tmp_path / "3dshapes.h5")
    assert ds.factor_names == Mini.FACTOR_NAMES
    np.testing.assert_array_equal(ds.all_factors()[:, 5], np.tile([0, 1, 2], 4))
    np.testing.assert_array_equal(ds.all_factors()[:, 0], np.repeat([0, 1], 6))


def test_image_folder_mixed_modes_become_rgb(tmp_path: Path) -> None:
    rgb = images_nchw(2, 3).transpose(0, 2, 3, 1)
    gray = images_nchw(1, 1)[0, 0]
    Image.fromarray(rgb[0]).save(tmp_path / "a.png")
    Image.fromarray(gray).save(tmp_path / "b.png")
    smooth = np.broadcast_to(np.arange(64, dtype=np.uint8)[None, :, None] * 3, (64, 64, 3))
    Image.fromarray(np.ascontiguousarray(smooth)).save(tmp_path / "c.jpg", quality=95)
    (tmp_path / "notes.txt").write_text("ignored")
    ds = data.load(tmp_path)
    assert ds.images.shape == (3, 3, 64, 64) and not ds.has_factors
    np.testing.assert_array_equal(ds.images[0], rgb[0].transpose(2, 0, 1))
    np.testing.assert_array_equal(ds.images[1], np.repeat(gray[None], 3, axis=0))
    assert np.abs(ds.images[2].astype(int) - smooth.transpose(2, 0, 1)).max() <= 4  # JPEG


def test_other_sizes_are_resized(tmp_path: Path) -> None:
    odd = images_nchw(3, 1, 48)  # 48 -> 32: PIL's box filter, plane by plane
    np.savez(tmp_path / "x.npz", images=odd)
    expected = [[np.asarray(Image.fromarray(plane).resize((32, 32), Image.BOX))
                 for plane in image] for image in odd]
    np.testing.assert_array_equal(data.load(tmp_path / "x.npz", image_size=32).images,
                                  expected)
    big = images_nchw(2, 3, 128)  # 128 -> 32: two exact 2x2 block means
    np.savez(tmp_path / "y.npz", images=big)
    np.testing.assert_array_equal(data.load(tmp_path / "y.npz", image_size=32).images,
                                  halve(halve(big)))


def test_halving_is_the_block_mean_rounded_half_up() -> None:
    block = np.array([[0, 1], [2, 3]], np.uint8)  # mean 1.5
    image = np.tile(block, (2, 2))[None, None] + np.array([0, 0, 100, 100], np.uint8)[
        None, None, :, None]  # the lower two blocks 100 higher
    np.testing.assert_array_equal(halve(image)[0, 0], [[2, 2], [102, 102]])
    np.testing.assert_array_equal(halve(np.full((1, 3, 8, 8), 255, np.uint8)), 255)


# ----------------------------------------------------------------------------- bad input


def _write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


BAD_NPZ = {
    "missing_key": ({"pixels": np.zeros((2, 32, 32), np.uint8)}, "no `images` array"),
    "wrong_rank": ({"images": np.zeros((4, 32), np.uint8)}, "3 or 4 dimensions"),
    "five_dims": ({"images": np.zeros((2, 1, 1, 32, 32), np.uint8)}, "3 or 4 dimensions"),
    "wrong_dtype": ({"images": np.zeros((2, 32, 32), np.int32)}, "unsupported image dtype"),
    "out_of_range": ({"images": np.full((2, 32, 32), 1.5, np.float32)}, r"\[0, 1\]"),
    "nan": ({"images": np.full((2, 32, 32), np.nan, np.float32)}, "NaN"),
    "non_square": ({"images": np.zeros((2, 32, 40), np.uint8)}, "square"),
    "tiny": ({"images": np.zeros((2, 8, 8), np.uint8)}, "too small"),
    "no_images": ({"images": np.zeros((0, 32, 32), np.uint8)}, "no images"),
    "channels": ({"images": np.zeros((2, 32, 32, 5), np.uint8)}, "channel axis"),
    "label_count": ({"images": np.zeros((3, 32, 32), np.uint8),
                     "labels": np.zeros(2, np.int64)}, "2 rows for 3 images"),
    "float_labels": ({"images": np.zeros((2, 32, 32), np.uint8),
                      "labels": np.zeros(2, np.float32)}, "integer class indices"),
    "negative_labels": ({"images": np.zeros((2, 32, 32), np.uint8),
                         "factors": np.array([0, -1])}, "non-negative"),
    "pickled_object": ({"images": np.array([None, 1], dtype=object)}, "without pickle"),
}


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_bad_npz_raises_one_data_error_naming_the_file(tmp_path: Path, case: str) -> None:
    arrays, message = BAD_NPZ[case]
    path = _write_npz(tmp_path / f"{case}.npz", **arrays)
    with pytest.raises(DataError, match=message) as info:
        data.load(path, image_size=32)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_bad_files_and_folders(tmp_path: Path) -> None:
    cases: list[tuple[Path, str]] = []
    cases.append((tmp_path / "missing.npz", "no such file"))
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip at all")
    cases.append((garbage, "unreadable or truncated"))
    good = _write_npz(tmp_path / "good.npz", images=images_nchw(50))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases.append((truncated, "unreadable or truncated"))
    bad_h5 = tmp_path / "bad.h5"
    bad_h5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    cases.append((bad_h5, "not a readable HDF5"))
    with h5py.File(tmp_path / "nokey.h5", "w") as f:
        f["pixels"] = np.zeros((2, 32, 32), np.uint8)
    cases.append((tmp_path / "nokey.h5", "no `images` dataset"))
    with h5py.File(tmp_path / "group.h5", "w") as f:
        f.create_group("images")
    cases.append((tmp_path / "group.h5", "group"))
    (tmp_path / "x.txt").write_text("hello")
    cases.append((tmp_path / "x.txt", "unsupported file type"))
    empty = tmp_path / "empty"
    empty.mkdir()
    cases.append((empty, "no PNG or JPEG"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(mixed / "a.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(mixed / "b.png")
    cases.append((mixed, "different sizes"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    cases.append((broken / "a.png", "unsupported file type"))  # a single image file
    cases.append((broken, "unreadable image"))
    for path, message in cases:
        with pytest.raises(DataError, match=message) as info:
            data.load(path, image_size=32)
        assert str(path) in str(info.value), (path, info.value)


def test_bad_options() -> None:
    with pytest.raises(DataError, match="image_size"):
        data.load("dsprites", image_size=48)
    with pytest.raises(DataError, match="not a procedural data set"):
        data.load("mnist")
    with pytest.raises(DataError, match="subsample count"):
        data.load("dsprites", subsample=0)
    with pytest.raises(DataError, match="strides"):
        data.load("dsprites", subsample=[1, 2])


# ----------------------------------------------------------------------------- cache


def _tiny_spec(calls: list[int], version: int = 1) -> procedural.ProceduralSpec:
    def render(classes: np.ndarray) -> np.ndarray:
        calls.append(len(classes))
        return np.broadcast_to((classes.sum(axis=1) * 40 % 256).astype(np.uint8)[:, None, None,
                               None], (len(classes), 1, 64, 64)).copy()

    return procedural.ProceduralSpec("tiny", ("a", "b"), (3, 4), 1, version, render)


def test_cache_written_once_reused_and_keyed_by_version(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPU_RAY_CACHE", str(tmp_path / "cache"))
    calls: list[int] = []
    spec = _tiny_spec(calls)
    first = procedural.full_grid(spec, 32)
    assert calls == [12] and procedural.cache_path(spec, 32).exists()
    second = procedural.full_grid(spec, 32)
    assert calls == [12]  # served from the cache
    np.testing.assert_array_equal(first, second)
    procedural.full_grid(_tiny_spec(calls, version=2), 32)
    assert calls == [12, 12]  # a new generator version renders again
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "tiny-v1-32px.npy", "tiny-v2-32px.npy"]


def test_corrupt_cache_is_regenerated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("RPU_RAY_CACHE", str(tmp_path))
    calls: list[int] = []
    spec = _tiny_spec(calls)
    path = procedural.cache_path(spec, 64)
    path.write_bytes(b"\x93NUMPY garbage")
    with caplog.at_level(logging.WARNING):
        images = procedural.full_grid(spec, 64)
    assert calls == [12] and "regenerating" in caplog.text
    np.testing.assert_array_equal(np.load(path, allow_pickle=False), images)


def test_interrupted_cache_write_leaves_nothing(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPU_RAY_CACHE", str(tmp_path))
    spec = _tiny_spec([])

    def failing_save(file, array, allow_pickle=False):
        file.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(procedural.np, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        procedural.full_grid(spec, 64)
    assert list(tmp_path.iterdir()) == []


def test_subsample_is_sliced_from_an_existing_cache(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPU_RAY_CACHE", str(tmp_path))
    rendered = procedural.render_resized(procedural.get_spec("dsprites"),
                                         np.array([5, 70_000, 737_279]), 32)
    fake_cache = np.zeros((737_280, 1, 32, 32), np.uint8)
    fake_cache[[5, 70_000, 737_279]] = rendered + 1  # marks the cached copy
    np.save(procedural.cache_path(procedural.get_spec("dsprites"), 32), fake_cache)
    ds = data.load("dsprites", image_size=32, subsample=[1, 1, 1, 1, 1])
    assert len(ds) == 737_280
    np.testing.assert_array_equal(ds.batch([5, 70_000, 737_279]), rendered + 1)
    picked = procedural.load_procedural("dsprites", 32, subsample=3, seed=0)
    flat = procedural.subsample_indices(dsprites.FACTOR_SIZES, 3, 0)
    np.testing.assert_array_equal(picked.images, fake_cache[flat])


# ----------------------------------------------------------------------------- CLI


def test_cli_preview_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "grid.png"
    assert main(["-q", "data", "preview", "dsprites", "--image-size", "32",
                 "--subsample", "1,1,8,4,4", "--out", str(out)]) == 0
    grid = np.asarray(Image.open(out))
    assert grid.shape[0] == 5 * 66 + 2  # one row per factor
    np.savez(tmp_path / "plain.npz", images=images_nchw(20))
    assert main(["-q", "data", "preview", str(tmp_path / "plain.npz"),
                 "--out", str(tmp_path / "plain.png")]) == 0
    assert Image.open(tmp_path / "plain.png").size[1] == 3 * 66 + 2  # 20 images: 8 + 8 + 4
    assert main(["-q", "data", "info", str(tmp_path / "missing.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing.npz: no such file" in err
