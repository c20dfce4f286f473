"""The smoke preset end to end through the CLI, on a generated set whose answer is known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("ray")

from conftest import SMOKE_ON_SQUARES, clustered_squares, run_cli

from rpu_ray import data
from rpu_ray.config import load_config
from rpu_ray.evaluation import evaluate_model
from rpu_ray.export import load_vae


def test_smoke_run_recurses_on_whole_clusters(squares_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_cli("run", "--data", str(squares_npz), "--out", str(out), *SMOKE_ON_SQUARES)

    state = json.loads((out / "state.json").read_text())
    assert state["phase"] == "done" and state["final"]["status"] == "done"
    # Each leaf-run recursed: two metaEpochs on ever smaller subsets.
    assert {"x", "leaf1-1", "leaf1-2", "leaf2-1", "leaf2-2"} <= set(state["metaepochs"])
    assert all(record["status"] == "done" for record in state["metaepochs"].values())
    _, factors = clustered_squares()
    position = factors[:, 0] * 4 + factors[:, 1]
    chosen = []
    for leaf in (1, 2):
        run = state["leaf_runs"][str(leaf)]
        # the root and two metaEpochs' labels: the smoke preset's depth limit (2)
        assert run["status"] == "done" and run["stop_reason"] == "max_depth"
        labels = np.load(out / "labels" / f"leaf-{leaf}.npz", allow_pickle=False)
        assert run["levels"] == 3 and "level2_indices" in labels.files
        sizes = []
        for level in range(run["levels"]):
            kept = labels[f"level{level}_indices"]
            sizes.append(len(kept))
            inside = np.isin(np.arange(len(position)), kept)
            # The reduction cuts at the gaps between positions: each is kept or dropped whole.
            for p in np.unique(position):
                assert inside[position == p].all() or not inside[position == p].any()
        assert sizes[0] == len(position) and sizes[2] < sizes[1] < sizes[0]
        # the second reduction, where every gap between positions is a peak, kept one
        assert len(np.unique(position[labels["level2_indices"]])) == 1
        chosen.append(tuple(np.unique(position[labels["level1_indices"]])))
    assert chosen[0] != chosen[1]  # the two leaf-runs start from different root intervals
    # The leaf-runs ran side by side: each started before the other's first metaEpoch ended.
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    started = {e["key"]: e["time"] for e in events if e["event"] == "metaepoch_started"}
    done = {e["key"]: e["time"] for e in events if e["event"] == "metaepoch_done"}
    assert started["leaf1-1"] < done["leaf2-1"] and started["leaf2-1"] < done["leaf1-1"]
    # Side by side in one Ray job, each trained its own members on its own subset: Tune
    # looks trainables up by name, and the runs' names differ.
    for key in state["metaepochs"]:
        results = pd.read_csv(out / "metaepochs" / key / "results.csv")
        assert (results["run"] == key).all(), key
    assert (out / "final_model.pt").exists()
    # the final run's best leaf-MIG is the best score any of its members reached
    final = pd.read_csv(out / "final" / "results.csv")
    assert state["final"]["leaf_mig"] == pytest.approx(final.score.max(), abs=1e-12)
    # metrics.json is the paper's protocol on the final model, with the run's settings
    metrics = json.loads((out / "metrics.json").read_text())
    config = load_config(out / "config.yaml")
    squares = data.load(squares_npz, image_size=config.data.image_size)
    expected = evaluate_model(load_vae(out / "final_model.pt")[0], squares.all_images(),
                              squares.all_factors(), seed=config.eval.score_seed,
                              num_bins=config.eval.mig_bins, mig_points=len(squares),
                              dci_mode=config.eval.dci_mode)
    assert metrics["mig"] == pytest.approx(expected["mig"], abs=1e-12)
    assert metrics["dci"] == pytest.approx(expected["dci"], abs=1e-12)
    assert "leaf-run 2" in run_cli("status", str(out), timeout=120).stdout
