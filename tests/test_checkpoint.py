"""Checkpoint files: round trip, atomic writes, detection of truncation and corruption."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from rpu_ray import checkpoint
from rpu_ray.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

PAYLOAD = {"weights": torch.arange(1000.0), "config": {"lr": 1e-3, "names": ["a", "b"]},
           "step": 7}


def test_round_trip(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "m.pt", PAYLOAD)
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert torch.equal(loaded["weights"], PAYLOAD["weights"])
    assert loaded["config"] == PAYLOAD["config"] and loaded["step"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary left behind


def test_truncated_and_corrupted_files_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    save_checkpoint(path, PAYLOAD)
    raw = path.read_bytes()
    for cut in (len(raw) // 2, 20, 0):
        path.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError, match=r"m\.pt"):
            load_checkpoint(path)
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path)
    plain = io.BytesIO()
    torch.save(PAYLOAD, plain)
    path.write_bytes(plain.getvalue())
    with pytest.raises(CheckpointError, match="not an rpu-ray checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "missing.pt")


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.pt"
    save_checkpoint(path, PAYLOAD)

    def crash(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"weights": torch.zeros(3)})
    assert torch.equal(load_checkpoint(path)["weights"], PAYLOAD["weights"])
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


class Arbitrary:
    """Any class: weights_only loading must refuse to construct it."""


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    save_checkpoint(path, {"object": Arbitrary()})
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)


def test_incompatible_format_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint, "FORMAT_VERSION", 99)
    save_checkpoint(tmp_path / "m.pt", PAYLOAD)
    monkeypatch.setattr(checkpoint, "FORMAT_VERSION", 1)
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(tmp_path / "m.pt")
