"""The whole rPU-VAE algorithm through the CLI, on unlabelled PNG files (slow: minutes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rpu_ray.data import dsprites
from rpu_ray.data.procedural import grid_classes, subsample_indices


@pytest.mark.slow
def test_rpu_run_on_a_folder_of_pngs(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    flat = subsample_indices(dsprites.FACTOR_SIZES, [3, 2, 8, 4, 4], seed=0)
    for i, image in enumerate(dsprites.render(grid_classes(dsprites.FACTOR_SIZES, flat))):
        Image.fromarray(image[0]).save(folder / f"{i:04d}.png")
    out = tmp_path / "run"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    command = [sys.executable, "-m", "rpu_ray.cli", "-q", "run", "--preset", "smoke",
               "--data", str(folder), "--out", str(out), "--set", "data.image_size=32",
               "--set", "data.subsample=", "--set", "pbt.policy.min_score=",
               # the smoke x-model's one active latent has a KL of about 0.2
               "--set", "rpu.reduction.active_kl_threshold=0.1"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    state = json.loads((out / "state.json").read_text())
    assert state["phase"] == "done"
    assert state["metaepochs"]["x"]["status"] == "done"
    assert set(state["leaf_runs"]) == {"1", "2"}
    assert all(run["stop_reason"] for run in state["leaf_runs"].values())
    # leaf-runs ran, so the final run did
    assert state["final"]["status"] == "done" and (out / "final_model.pt").exists()
    assert not (out / "metrics.json").exists()  # no labels: no ground-truth metrics
    report = (out / "report.html").read_text()
    assert "no ground-truth factors" in report and 'src="http' not in report
    status = subprocess.run([sys.executable, "-m", "rpu_ray.cli", "status", str(out)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "leaf-run 1" in status.stdout
    labels = np.load(out / "labels" / "leaf-1.npz", allow_pickle=False)
    assert labels["level0_indices"].shape[0] == len(flat)
