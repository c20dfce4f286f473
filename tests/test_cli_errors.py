"""Bad input at every entry of the CLI: one line naming the problem, before Ray starts, and an
experiment directory that is left exactly as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rpu_ray.cli import main


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rpu-ray: error: "), captured.err
    assert "Started a local Ray" not in captured.out + captured.err
    return lines[0]


@pytest.mark.parametrize(("override", "message"), [
    ("pbt.population=1", "pbt.population"),
    ("train.generation_images=-5", "train.generation_images"),
    ("pbt.populaton=8", "pbt.populaton"),
    ("model.num_models=two", "model.num_models"),
])
@pytest.mark.parametrize("command", ["run", "pbt"])
def test_bad_settings_fail_before_ray_starts(capsys, tmp_path: Path, command: str,
                                             override: str, message: str) -> None:
    out = tmp_path / "out"
    line = _error(capsys, [command, "--preset", "smoke", "--out", str(out), "--set", override])
    assert message in line
    assert not out.exists()  # nothing was created


def test_malformed_config_file(capsys, tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("pbt:\n  population: [4\n")
    line = _error(capsys, ["run", str(config), "--out", str(tmp_path / "out")])
    assert "bad.yaml" in line
    assert not (tmp_path / "out").exists()


def test_bad_data_fails_before_ray_starts(capsys, tmp_path: Path) -> None:
    broken = tmp_path / "images.npz"
    broken.write_bytes(b"not a zip file")
    line = _error(capsys, ["run", "--preset", "smoke", "--data", str(broken),
                           "--out", str(tmp_path / "out")])
    assert "images.npz" in line and "not" in line
    assert not (tmp_path / "out").exists()  # nothing half-written


@pytest.mark.parametrize("command", [["resume"], ["status"], ["pbt", "--resume"]])
def test_resume_of_a_directory_that_is_no_experiment(capsys, tmp_path: Path,
                                                     command: list[str]) -> None:
    (tmp_path / "notes.txt").write_text("my files")
    before = _snapshot(tmp_path)
    line = _error(capsys, [*command, str(tmp_path)])
    assert str(tmp_path) in line and "not an rpu-ray experiment" in line
    assert _snapshot(tmp_path) == before


def test_resume_of_an_incompatible_version(capsys, tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(json.dumps(
        {"kind": "rpu", "run": "rpu", "format": 99, "rpu_ray_version": "9.0"}))
    (tmp_path / "state.json").write_text("{}")
    before = _snapshot(tmp_path)
    line = _error(capsys, ["resume", str(tmp_path)])
    assert "cannot be resumed by this version" in line
    assert _snapshot(tmp_path) == before
