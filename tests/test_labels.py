"""The surrogate-label tree files (`rpu_ray.labels`): round trip, DataFrame view, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rpu_ray.labels import LabelFileError, LabelLevel, LeafRunLabels


def _tree() -> LeafRunLabels:
    rs = np.random.RandomState(0)
    root = LabelLevel(np.arange(6, dtype=np.int64), rs.randn(6, 2), np.array([1, 4]))
    deeper = LabelLevel(np.array([0, 2, 5], dtype=np.int64), rs.randn(3, 1), np.array([7]))
    return LeafRunLabels(2, [root, deeper])


def test_round_trip_and_frame(tmp_path: Path) -> None:
    tree = _tree()
    tree.save(tmp_path / "leaf-2.npz")
    loaded = LeafRunLabels.load(tmp_path / "leaf-2.npz")
    assert loaded.leaf == 2 and len(loaded.levels) == 2
    for original, copy in zip(tree.levels, loaded.levels, strict=True):
        np.testing.assert_array_equal(copy.indices, original.indices)
        np.testing.assert_array_equal(copy.labels, original.labels)
        np.testing.assert_array_equal(copy.latents, original.latents)
    frame = loaded.to_frame()
    assert list(frame.columns) == ["leaf", "level", "index", "label_1", "label_4", "label_7"]
    assert len(frame) == 9 and frame.label_7.notna().sum() == 3
    root, deeper = frame[frame.level == 0], frame[frame.level == 1]
    np.testing.assert_array_equal(root["index"], np.arange(6))
    np.testing.assert_array_equal(root[["label_1", "label_4"]], tree.levels[0].labels)
    assert root.label_7.isna().all() and deeper[["label_1", "label_4"]].isna().all().all()
    np.testing.assert_array_equal(deeper["index"], [0, 2, 5])
    np.testing.assert_array_equal(deeper.label_7, tree.levels[1].labels[:, 0])
    for (indices, labels), level in zip(loaded.to_payload(), tree.levels, strict=True):
        np.testing.assert_array_equal(indices, level.indices)
        np.testing.assert_array_equal(labels, level.labels)


def test_level_shapes_must_agree() -> None:
    with pytest.raises(ValueError, match="disagree"):  # 3 images, 4 rows of labels
        LabelLevel(np.arange(3), np.zeros((4, 1)), np.array([0]))
    with pytest.raises(ValueError, match="disagree"):  # 2 label columns, 1 latent
        LabelLevel(np.arange(3), np.zeros((3, 2)), np.array([0]))
    with pytest.raises(ValueError, match=r"labels \(n, k\)"):  # labels not a matrix
        LabelLevel(np.arange(3), np.zeros(3), np.array([0]))


@pytest.mark.parametrize("case", ["missing", "not_npz", "no_leaf", "truncated"])
def test_bad_label_files_raise_one_error_naming_the_file(tmp_path: Path, case: str) -> None:
    path = tmp_path / "leaf-1.npz"
    if case == "not_npz":
        path.write_text("labels")
    elif case == "no_leaf":
        np.savez(path, level0_indices=np.arange(3), level0_labels=np.zeros((3, 1)),
                 level0_latents=np.array([0]))
    elif case == "truncated":
        _tree().save(path)
        path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(LabelFileError) as info:
        LeafRunLabels.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
