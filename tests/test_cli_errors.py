"""Bad input at every entry of the CLI: one line naming the problem, before Ray starts, and an
experiment directory that is left exactly as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SMOKE_ON_SQUARES

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


@pytest.mark.parametrize("command", ["run", "pbt"])
def test_a_start_that_cannot_reach_ray_leaves_no_folder(monkeypatch, squares_npz: Path,
                                                        tmp_path: Path, command: str) -> None:
    # A folder with run.json but no Tune state could neither be started again nor resumed.
    def unreachable(address, config) -> None:
        raise ConnectionError(f"cannot reach {address}")

    monkeypatch.setattr("rpu_ray.experiment._init_ray", unreachable)
    out = tmp_path / "out"
    with pytest.raises(ConnectionError):
        main([command, *SMOKE_ON_SQUARES, "--data", str(squares_npz), "--out", str(out),
              "--address", "127.0.0.1:1"])
    assert not out.exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["pbt", "--set", "model.num_models=1"], "num_models must be >= 2"),
    (["run", "--set", "model.num_models=1"], "num_models must be >= 2"),
    (["pbt", "--mode", "mig", "--set", "data.spec={unlabelled}"], "has none"),
])
def test_modes_that_cannot_score_fail_before_ray_starts(capsys, tmp_path: Path,
                                                        argv: list[str], message: str) -> None:
    import numpy as np

    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, images=np.zeros((20, 32, 32), np.uint8))
    out = tmp_path / "out"
    argv = [a.format(unlabelled=unlabelled) for a in argv]
    line = _error(capsys, [*argv, "--preset", "smoke", "--set", "data.subsample=",
                           "--set", f"data.spec={unlabelled}", "--out", str(out)])
    assert message in line
    assert not out.exists()


@pytest.mark.parametrize(("kind", "hint"), [("rpu", "rpu-ray resume"),
                                            ("pbt", "rpu-ray pbt --resume")])
def test_an_occupied_folder_names_the_command_that_resumes_it(capsys, tmp_path: Path,
                                                             kind: str, hint: str) -> None:
    (tmp_path / "run.json").write_text(json.dumps({"kind": kind, "run": kind, "format": 1}))
    before = _snapshot(tmp_path)
    line = _error(capsys, ["run" if kind == "rpu" else "pbt", "--preset", "smoke",
                           "--out", str(tmp_path)])
    assert f"`{hint} {tmp_path}`" in line
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(("state", "message"), [
    ("not json", "unreadable"),
    ("{}", "not an rPU-VAE state"),
    ('{"phase": "x-run", "metaepochs": {"x": {"status": "done"}}, "leaf_runs": {}}',
     "malformed (KeyError"),
])
def test_status_of_a_damaged_state_file(capsys, tmp_path: Path, state: str,
                                        message: str) -> None:
    (tmp_path / "run.json").write_text(json.dumps({"kind": "rpu", "run": "rpu", "format": 1}))
    (tmp_path / "state.json").write_text(state)
    line = _error(capsys, ["status", str(tmp_path)])
    assert "state.json" in line and message in line


@pytest.mark.parametrize(("argv", "message"), [
    (["--mode", "mig"], "drop --mode"),
    (["--labels", "5"], "drop --labels"),
])
def test_resume_refuses_settings(capsys, tmp_path: Path, argv: list[str], message: str) -> None:
    (tmp_path / "run.json").write_text(json.dumps({"kind": "pbt", "run": "pbt", "format": 1,
                                                   "mode": "udr"}))
    line = _error(capsys, ["pbt", "--resume", str(tmp_path), *argv])
    assert message in line


def test_labels_need_a_supervised_mode(capsys, tmp_path: Path) -> None:
    line = _error(capsys, ["pbt", "--preset", "smoke", "--labels", "100",
                           "--out", str(tmp_path / "out")])
    assert "--mode mig or dci" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["data", "preview", "dsprites", "--out", "{tmp}/a.txt"], "expected a .png file name"),
    (["data", "preview", "dsprites", "--out", "{tmp}"], "expected a .png file name"),
    (["data", "preview", "dsprites", "--out", "{tmp}/a.png", "--steps", "0"],
     "expected a positive integer"),
    (["traverse", "m.pt", "--data", "dsprites", "--out", "{tmp}/t/c.txt"], "expected a .png"),
    (["evaluate", "m.pt", "--data", "dsprites", "--json", "{tmp}"], "is a folder"),
    (["baseline", "--model", "betavae", "--data", "dsprites", "--batch-size", "0"],
     "expected a positive integer"),
])
def test_bad_output_options_fail_at_parsing(capsys, tmp_path: Path, argv: list[str],
                                            message: str) -> None:
    (tmp_path / "x.json").mkdir()
    argv = [a.replace("{tmp}/a.txt", str(tmp_path / "a.txt")).replace(
        "{tmp}/t/c.txt", str(tmp_path / "t" / "c.txt")).replace("{tmp}", str(tmp_path / "x.json"))
        if a.startswith("{tmp}") else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]  # nothing written


@pytest.mark.parametrize(("argv", "message"), [
    (["--device", "foo"], "--device: expected auto, cpu"),
    (["--lr", "0"], "--lr must be positive"),
    (["--out", "{file}"], "exists and is not a folder"),
])
def test_bad_baseline_options_leave_no_folder(capsys, squares_npz: Path, tmp_path: Path,
                                              argv: list[str], message: str) -> None:
    occupied = tmp_path / "occupied"
    occupied.write_text("mine")
    argv = [str(occupied) if a == "{file}" else a for a in argv]
    out = ["--out", str(tmp_path / "out")] if "--out" not in argv else []
    line = _error(capsys, ["baseline", "--model", "betavae", "--data", str(squares_npz),
                           *out, *argv])
    assert message in line
    assert not (tmp_path / "out").exists() and occupied.read_text() == "mine"
