"""The smoke preset end to end through the CLI, on a generated set whose answer is known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")

from conftest import SMOKE_ON_SQUARES, clustered_squares, run_cli

from rpu_ray.reduction import (
    STOP_BELOW_MIN_SIZE,
    STOP_NO_ACTIVE_LATENT,
    STOP_NO_INTERSECTION,
    STOP_NO_PEAK,
    STOP_TOO_FEW_POINTS,
)


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
        assert run["status"] == "done" and run["stop_reason"]
        labels = np.load(out / "labels" / f"leaf-{leaf}.npz", allow_pickle=False)
        assert run["levels"] >= 3 and f"level{run['levels'] - 1}_indices" in labels.files
        sizes = []
        for level in range(run["levels"]):
            kept = labels[f"level{level}_indices"]
            sizes.append(len(kept))
            inside = np.isin(np.arange(len(position)), kept)
            # The reduction cuts at the gaps between positions: each is kept or dropped whole.
            for p in np.unique(position):
                assert inside[position == p].all() or not inside[position == p].any()
        assert sizes[0] == len(position) and sizes[2] < sizes[1] < sizes[0]
        last = np.unique(position[labels[f"level{run['levels'] - 1}_indices"]])
        if len(last) == 1:  # one position left: nothing more to find, the leaf-run stops
            assert run["stop_reason"] in ("max_depth", STOP_NO_PEAK, STOP_NO_ACTIVE_LATENT,
                                          STOP_NO_INTERSECTION,
                                          STOP_BELOW_MIN_SIZE, STOP_TOO_FEW_POINTS)
        chosen.append(tuple(np.unique(position[labels["level1_indices"]])))
    assert chosen[0] != chosen[1]  # the two leaf-runs start from different root intervals
    # The leaf-runs ran side by side: each started before the other's first metaEpoch ended.
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    started = {e["key"]: e["time"] for e in events if e["event"] == "metaepoch_started"}
    done = {e["key"]: e["time"] for e in events if e["event"] == "metaepoch_done"}
    assert started["leaf1-1"] < done["leaf2-1"] and started["leaf2-1"] < done["leaf1-1"]
    assert (out / "final_model.pt").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["mig"] <= 1.0
    assert "leaf-run 2" in run_cli("status", str(out), timeout=120).stdout
