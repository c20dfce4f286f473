"""The whole rPU-VAE algorithm without Ray (`LocalExecutor`), as benchmarks/replicate.py runs
it on a machine where only PyTorch is installed."""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SMOKE_ON_SQUARES, clustered_squares

from rpu_ray import data
from rpu_ray.config import load_config
from rpu_ray.driver import LocalExecutor, RPUDriver, model_images

SEED = int(os.environ.get("RPU_TEST_SEED", "0"))


def _overrides() -> list[str]:
    """SMOKE_ON_SQUARES's `--set` values; one metaEpoch per leaf-run (the recursion itself is
    the Ray smoke test's subject), an x-run long enough to leave active latents."""
    cli = [value for flag, value in itertools.pairwise(SMOKE_ON_SQUARES)
           if flag == "--set"]
    return [*cli, "rpu.max_depth=1", "train.generation_images=1000",
            "rpu.leaf_generation_images=500", f"seed={SEED}"]


@pytest.mark.slow  # 80 s on 2 cores
def test_rpu_vae_runs_in_process_without_ray(squares_npz: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             one_cpu_thread: None) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # any `import ray` now fails
    config = load_config(preset_name="smoke",
                         overrides=[f"data.spec={squares_npz}", *_overrides()])
    dataset = data.load(squares_npz)
    out = tmp_path / "run"
    state = RPUDriver(out, config, dataset, LocalExecutor("cpu", progress=False),
                      progress=False).run()

    assert state["phase"] == "done" and state["final"]["status"] == "done"
    assert set(state["metaepochs"]) == {"x", "leaf1-1", "leaf2-1"}
    _, factors = clustered_squares()
    position = factors[:, 0] * 4 + factors[:, 1]
    for leaf in (1, 2):
        labels = np.load(out / "labels" / f"leaf-{leaf}.npz", allow_pickle=False)
        assert state["leaf_runs"][str(leaf)]["levels"] == 2
        kept = np.isin(np.arange(len(position)), labels["level1_indices"])
        assert 0 < kept.sum() < len(position)
        for p in np.unique(position):  # whole positions kept or dropped
            assert kept[position == p].all() or not kept[position == p].any()
    # Every metaEpoch wrote the outputs of a PBT run, and its compute is accounted for.
    total = 0
    for key, record in state["metaepochs"].items():
        directory = out / "metaepochs" / key
        assert {"best_vae.pt", "best_member.pt", "labels.npz", "pbt.png"} <= {
            p.name for p in directory.iterdir()}
        results = pd.read_csv(directory / "results.csv")
        assert record["model_images"] == results.images_seen.sum() * config.model.num_models
        generations = [json.loads(line) for line in (directory / "events.jsonl").open()
                       if '"generation"' in line and '"event": "generation"' in line]
        assert len(generations) == record["generations"] == results.generation.max() + 1
        total += record["model_images"]
    final = pd.read_csv(out / "final" / "results.csv")
    assert state["final"]["model_images"] == final.images_seen.sum() * config.rpu.final_num_models
    assert model_images(state) == total + state["final"]["model_images"]
    assert state["final"]["leaf_mig"] == pytest.approx(final.score.max(), abs=1e-12)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mig"] == pytest.approx(np.mean(list(metrics["mig_per_factor"].values())))
    assert (out / "final_model.pt").exists()


def test_driver_refuses_a_subset_view(tmp_path: Path) -> None:
    config = load_config(preset_name="smoke")
    view = data.load("dsprites", image_size=32, subsample=16).subset([0, 3, 5])
    with pytest.raises(ValueError, match="standalone"):
        RPUDriver(tmp_path, config, view, LocalExecutor("cpu", progress=False))
    assert not any(tmp_path.iterdir())
    RPUDriver(tmp_path, config, view.standalone(), LocalExecutor("cpu", progress=False))


def test_local_executor_cannot_resume(tmp_path: Path) -> None:
    executor = LocalExecutor("cpu")
    assert not executor.can_resume(tmp_path, "x")
    config = load_config(preset_name="smoke")
    with pytest.raises(ValueError, match="cannot be resumed"):
        executor.run(config, data.load("dsprites", image_size=32, subsample=16), "udr",
                     tmp_path, "x", resume=True)
