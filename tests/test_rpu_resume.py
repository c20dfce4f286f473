"""The rPU-VAE driver killed with SIGKILL in the middle of a metaEpoch, its folder moved, then
`rpu-ray resume` in the new place.

The run, its Ray instance and every worker are killed at once (the process group), as a lost
head node would be; its folder is then moved, as one copied off a lost node or restored from
backup is. Resuming must finish the run, with every output a finished run has, without
redoing the finished metaEpochs and without touching the old place, and continue the
interrupted one from Tune's checkpoints; the resumed run ends where an uninterrupted run of the
same config ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("ray")

from conftest import CLI, CLI_ENV, SMOKE_ON_SQUARES, run_cli

from rpu_ray.export import load_vae


def _events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _wait_for(predicate, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (rc {process.returncode}) before the kill point")
        if time.monotonic() > deadline:
            raise AssertionError("the run did not reach the kill point in time")
        time.sleep(0.2)


@pytest.mark.slow
def test_driver_killed_mid_metaepoch_resumes_elsewhere_without_redoing_finished_work(
        squares_npz: Path, tmp_path: Path) -> None:
    started = tmp_path / "run"
    run = subprocess.Popen([*CLI, "run", "--data", str(squares_npz), "--out", str(started),
                            *SMOKE_ON_SQUARES],
                           env=CLI_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    leaf = Path("metaepochs", "leaf1-1")
    try:
        # Kill point: the x-run is done and the first leaf metaEpoch has finished a generation
        # that Tune has recorded in its experiment state.
        tune_dir = started / leaf / "tune" / "leaf1-1"
        _wait_for(lambda: any(e["event"] == "generation"
                              for e in _events(started / leaf / "events.jsonl"))
                  and any(tune_dir.glob("experiment_state*.json")), run, timeout=900)
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    out = tmp_path / "moved"
    started.rename(out)
    leaf_events = out / leaf / "events.jsonl"
    x_model = out / "metaepochs" / "x" / "best_vae.pt"
    x_model_stat = x_model.stat()
    state = json.loads((out / "state.json").read_text())
    assert state["metaepochs"]["x"]["status"] == "done"
    assert state["metaepochs"]["leaf1-1"]["status"] == "running"

    run_cli("resume", str(out))
    assert not started.exists()  # nothing was written to the old place

    state = json.loads((out / "state.json").read_text())
    assert state["phase"] == "done"
    assert all(record["status"] == "done" for record in state["metaepochs"].values())
    assert {"x", "leaf1-1", "leaf2-1"} <= set(state["metaepochs"])
    assert set(state["leaf_runs"]) == {"1", "2"}
    assert state["final"]["status"] == "done"
    for name in ("final_model.pt", "metrics.json", "report.html", "labels/leaf-1.npz",
                 "labels/leaf-2.npz"):
        assert (out / name).exists(), name
    # The finished x-run was not redone: one start, its model untouched.
    events = _events(out / "events.jsonl")
    x_starts = [e for e in events if e["event"] == "metaepoch_started" and e["key"] == "x"]
    assert len(x_starts) == 1
    assert x_model.stat().st_mtime_ns == x_model_stat.st_mtime_ns
    # The interrupted metaEpoch continued from Tune's checkpoints: started twice, the second
    # time as a resume, and its generations continue the numbering (a generation in flight at
    # the kill may be logged twice, never skipped).
    leaf_starts = [e for e in events if e["event"] == "metaepoch_started"
                   and e["key"] == "leaf1-1"]
    assert [e["resume"] for e in leaf_starts] == [False, True]
    generations = [e["generation"] for e in _events(leaf_events) if e["event"] == "generation"]
    assert sorted(set(generations)) == list(range(max(generations) + 1))
    assert max(generations) >= 1

    # The same run without the kill ends with the same labels, scores, decisions and model.
    # Only the compute differs: the generation in flight at the kill was trained twice.
    uninterrupted = tmp_path / "uninterrupted"
    run_cli("run", "--data", str(squares_npz), "--out", str(uninterrupted), *SMOKE_ON_SQUARES)
    expected = json.loads((uninterrupted / "state.json").read_text())
    assert expected["metaepochs"].keys() == state["metaepochs"].keys()
    for key, record in expected["metaepochs"].items():
        resumed = state["metaepochs"][key]
        assert resumed["model_images"] >= record["model_images"]
        ignored = {"model", "model_images"}
        assert ({k: v for k, v in resumed.items() if k not in ignored}
                == {k: v for k, v in record.items() if k not in ignored}), key
        columns = ["member", "training_iteration", "score", "lr", "batch_size", "beta"]
        pd.testing.assert_frame_equal(
            pd.read_csv(out / "metaepochs" / key / "results.csv")[columns],
            pd.read_csv(uninterrupted / "metaepochs" / key / "results.csv")[columns])
    assert ({k: v for k, v in state["final"].items() if k != "model"}
            == {k: v for k, v in expected["final"].items() if k != "model"})
    for leaf in ("leaf-1.npz", "leaf-2.npz"):
        with np.load(out / "labels" / leaf, allow_pickle=False) as resumed, \
                np.load(uninterrupted / "labels" / leaf, allow_pickle=False) as labels:
            assert resumed.files == labels.files
            for name in labels.files:
                np.testing.assert_array_equal(resumed[name], labels[name])
    assert (json.loads((out / "metrics.json").read_text())
            == json.loads((uninterrupted / "metrics.json").read_text()))
    resumed_model, expected_model = (load_vae(d / "final_model.pt")[0].state_dict()
                                     for d in (out, uninterrupted))
    assert all(torch.equal(resumed_model[k], expected_model[k]) for k in expected_model)
