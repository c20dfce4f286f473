"""The rPU-VAE driver's stop rules, with a scripted executor instead of PBT (milliseconds).

The executor returns what a PBT run would have returned (or raises what it would have
raised); the surrogate labels are the data set's known factors, so every reduction's outcome
is known. What is tested is the driver's bookkeeping: which leaf-run ends where and why, and
that a resumed run does not repeat a metaEpoch that ended.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import clustered_squares

from rpu_ray.checkpoint import MEMBER_RESULT_FILE, MEMBER_STATE_FILE, save_checkpoint
from rpu_ray.config import dump_config, load_config
from rpu_ray.data import Dataset
from rpu_ray.driver import (
    PBTRunResult,
    RPUDriver,
    _first_readable,
    model_images,
    ranked_checkpoints,
)
from rpu_ray.experiment import status_text
from rpu_ray.export import export_vae
from rpu_ray.labels import LabelLevel, LeafRunLabels
from rpu_ray.models import VAEEnsemble
from rpu_ray.population import NoFiniteScoreError
from rpu_ray.report import write_report


class ScriptedExecutor:
    """Runs nothing: `script[run]` is the stop reason the PBT run `run` reports (score 0.4,
    the best over its generations) or "diverged" (NoFiniteScoreError); unscripted runs
    converge. Every run exports a random VAE (the final model)."""

    concurrent = False

    def __init__(self, script: dict[str, str]) -> None:
        self.script = script
        self.calls: list[str] = []

    def run(self, experiment, dataset, mode, out_dir, run, resume, label_chains=None):
        self.calls.append(run)
        outcome = self.script.get(run, "converged")
        if outcome == "diverged":
            raise NoFiniteScoreError(f"PBT run {run!r}: every member diverged", 700)
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = VAEEnsemble(1, dataset.images.shape[1:], 10, "dlib")
        export_vae({"config": {**model.config, "num_models": 1}, "model": model.state_dict()}, 0,
                   out_dir / "best_vae.pt", metadata={"mode": mode, "score": 0.4})
        return PBTRunResult(out_dir, outcome, 0.4, 0, 0, 3, 0, 1000)

    def can_resume(self, out_dir: Path, run: str) -> bool:
        return False


def _squares() -> Dataset:
    images, factors = clustered_squares()
    return Dataset(images[:, None], factors, ("posX", "posY"), (4, 4), "squares")


def _driver(out: Path, executor: ScriptedExecutor, leaf_runs: int = 2,
            inactive: tuple[str, ...] = ()) -> RPUDriver:
    """A driver whose metaEpochs label known factors; those named in `inactive` label
    nothing (no active latent)."""
    config = load_config(preset_name="smoke", overrides=[
        f"rpu.leaf_runs={leaf_runs}", "rpu.max_depth=2", "rpu.reduction.distance_divisor=10"])
    driver = RPUDriver(out, config, _squares(), executor, progress=False,
                       evaluate_final=False)

    def label_with_factors(model_path: Path, dataset: Dataset):
        # The x-run labels posX, a leaf metaEpoch posY: each reduction keeps whole positions.
        indices = dataset.storage_indices().astype(np.int64)
        if model_path.parent.name in inactive:
            return LabelLevel(indices, np.zeros((len(dataset), 0)), np.zeros(0, np.int64)), \
                np.zeros(10), None
        column = 0 if model_path.parent.name == "x" else 1
        noise = np.random.default_rng(0).normal(0.0, 0.01, len(dataset))
        labels = (dataset.all_factors()[:, column] + noise)[:, None]
        return LabelLevel(indices, labels, np.array([0])), np.ones(10), None

    driver._label = label_with_factors
    return driver


def test_a_leaf_run_ends_when_its_pbt_run_stops_below_the_threshold(tmp_path: Path) -> None:
    # leaf1-1 scored 0.4 at best, but its last generation fell below 0.1: the authors' end
    # condition. leaf2 goes on to the depth limit.
    executor = ScriptedExecutor({"leaf1-1": "below_min_score"})
    state = _driver(tmp_path, executor).run()
    assert state["leaf_runs"]["1"]["stop_reason"] == "below_min_score"
    assert state["leaf_runs"]["1"]["levels"] == 1  # the root labels only
    assert state["leaf_runs"]["2"]["stop_reason"] == "max_depth"
    assert state["leaf_runs"]["2"]["levels"] == 3
    assert executor.calls == ["x", "leaf1-1", "leaf2-1", "leaf2-2", "final"]
    assert state["final"]["status"] == "done"
    # leaf 2 kept the second-ranked posX value of the root (96 of the 384 images), then one
    # posY value in it (24): whole positions, as the known labels make them
    factors = _squares().factors
    chain = LeafRunLabels.load(tmp_path / "labels" / "leaf-2.npz").levels
    assert [len(level.indices) for level in chain] == [384, 96, 24]
    assert len(np.unique(factors[chain[1].indices][:, 0])) == 1
    assert len(np.unique(factors[chain[2].indices], axis=0)) == 1
    first = LeafRunLabels.load(tmp_path / "labels" / "leaf-1.npz").levels
    assert len(first) == 1 and np.array_equal(first[0].indices, chain[0].indices)


def test_a_diverged_metaepoch_ends_its_leaf_run_and_is_not_repeated(tmp_path: Path) -> None:
    executor = ScriptedExecutor({"leaf1-2": "diverged"})
    state = _driver(tmp_path, executor).run()
    assert state["metaepochs"]["leaf1-2"]["status"] == "no_finite_score"
    assert state["leaf_runs"]["1"]["stop_reason"] == "no_finite_score"
    assert state["leaf_runs"]["1"]["levels"] == 2  # root and leaf1-1's labels
    assert state["leaf_runs"]["2"]["stop_reason"] == "max_depth"
    assert state["phase"] == "done" and state["final"]["status"] == "done"
    assert "leaf1-2" in executor.calls
    # Its compute counts as well as that of the runs that returned (1000 model-images each).
    assert state["metaepochs"]["leaf1-2"]["model_images"] == 700
    assert model_images(state) == 1000 * (len(executor.calls) - 1) + 700
    # `rpu-ray status` and the report say what happened, not "running".
    (tmp_path / "run.json").write_text(json.dumps({"kind": "rpu", "run": "rpu", "format": 1}))
    dump_config(load_config(preset_name="smoke"), tmp_path / "config.yaml")
    assert "leaf1-2: 24 images, every member diverged" in status_text(tmp_path)
    report, _ = write_report(tmp_path, _squares())
    assert "Every member diverged on its 24 images" in report.read_text()
    # Resumed after the leaf-run's bookkeeping was lost: the ended metaEpoch is not rerun.
    del state["leaf_runs"]["1"], state["final"]
    (tmp_path / "state.json").write_text(json.dumps(state))
    again = ScriptedExecutor({})
    resumed = _driver(tmp_path, again).run()
    assert again.calls == ["final"]
    assert resumed["leaf_runs"]["1"]["stop_reason"] == "no_finite_score"


def test_a_diverged_x_run_stops_the_run_without_a_final_model(tmp_path: Path) -> None:
    executor = ScriptedExecutor({"x": "diverged"})
    state = _driver(tmp_path, executor).run()
    assert executor.calls == ["x"]
    assert "diverged" in state["stop_reason"] and "final" not in state
    assert not (tmp_path / "final_model.pt").exists()


@pytest.mark.parametrize("reason", ["converged", "max_generations"])
def test_other_stop_reasons_go_deeper(tmp_path: Path, reason: str) -> None:
    executor = ScriptedExecutor({"leaf1-1": reason})
    state = _driver(tmp_path, executor).run()
    assert state["leaf_runs"]["1"]["levels"] == 3
    assert state["leaf_runs"]["1"]["stop_reason"] == "max_depth"
    assert executor.calls == ["x", "leaf1-1", "leaf1-2", "leaf2-1", "leaf2-2", "final"]


def test_leaf_runs_start_from_different_root_intervals_while_there_are_any(
        tmp_path: Path) -> None:
    # The root labels (posX) have 4 intervals: a fifth leaf-run has none to start from.
    executor = ScriptedExecutor({})
    state = _driver(tmp_path, executor, leaf_runs=5).run()
    assert state["leaf_runs"]["5"]["stop_reason"] == "choice_unavailable"
    assert state["leaf_runs"]["5"]["levels"] == 1
    assert not any(call.startswith("leaf5") for call in executor.calls)
    factors = _squares().factors
    first_subsets = [LeafRunLabels.load(tmp_path / "labels" / f"leaf-{leaf}.npz").levels[1]
                     for leaf in range(1, 5)]
    posx = [np.unique(factors[level.indices][:, 0]) for level in first_subsets]
    assert all(len(values) == 1 for values in posx)
    assert sorted(int(values[0]) for values in posx) == [0, 1, 2, 3]
    assert state["final"]["status"] == "done"


def test_a_model_with_no_active_latent_ends_the_leaf_run_or_the_whole_run(
        tmp_path: Path) -> None:
    executor = ScriptedExecutor({})
    state = _driver(tmp_path / "leaf", executor, inactive=("leaf1-1",)).run()
    assert state["leaf_runs"]["1"]["stop_reason"] == "no_active_latent"
    assert state["leaf_runs"]["1"]["levels"] == 1
    assert state["leaf_runs"]["2"]["stop_reason"] == "max_depth"
    assert executor.calls == ["x", "leaf1-1", "leaf2-1", "leaf2-2", "final"]

    executor = ScriptedExecutor({})
    state = _driver(tmp_path / "x", executor, inactive=("x",)).run()
    assert executor.calls == ["x"] and "no active latent" in state["stop_reason"]
    assert "final" not in state and not state.get("leaf_runs")


def test_the_best_checkpoint_is_chosen_by_the_result_saved_beside_its_state(
        tmp_path: Path) -> None:
    def checkpoint(name: str, score: float | None, iteration: int, member: int) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / MEMBER_RESULT_FILE).write_text(json.dumps({
            "score": score, "model_scores": [score], "member": member,
            "training_iteration": iteration}))
        return folder

    first = checkpoint("m2-gen0", 0.20, 1, 2)
    second = checkpoint("m2-gen1", 0.14, 2, 2)
    clone = checkpoint("m1-gen1", 0.20, 1, 2)  # a clone's copy of the same state
    diverged = checkpoint("m3-gen0", None, 1, 3)
    # Tune paired the generation-0 result with the generation-1 state, and the other way round
    metrics = {first: {"score": 0.14, "training_iteration": 2, "member": 2},
               second: {"score": 0.20, "training_iteration": 1, "member": 2},
               clone: {"score": 0.20, "training_iteration": 1, "member": 2},
               diverged: {"score": 0.5, "training_iteration": 1, "member": 3}}
    for order in ([first, second, clone, diverged], [diverged, clone, second, first]):
        ranked = ranked_checkpoints([(f, metrics[f]) for f in order])
        assert [f for f, _ in ranked] == [clone, first, second]  # diverged: no finite score
        folder, result = ranked[0]
        assert result["score"] == 0.20 and result["training_iteration"] == 1
        assert folder == clone  # equal results: the same choice whatever the order
    # Without the file (older checkpoints) Tune's metrics are all there is.
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    assert ranked_checkpoints([(legacy, {"score": 0.3, "training_iteration": 4, "member": 0})]
                              )[0][0] == legacy
    assert ranked_checkpoints([(diverged, metrics[diverged])]) == []
    # A save cut short: its result is not whole JSON (whatever Tune paired with it).
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / MEMBER_RESULT_FILE).write_text('{"score": 0.9, "model_sc')
    assert ranked_checkpoints([(cut, {"score": 0.9, "training_iteration": 1, "member": 0}),
                               (first, metrics[first])]) == [(first, json.loads(
                                   (first / MEMBER_RESULT_FILE).read_text()))]


def test_the_export_passes_over_a_best_checkpoint_whose_save_was_cut_short(
        tmp_path: Path) -> None:
    folders = []
    for name, score in (("best", 0.9), ("next", 0.5)):
        folder = tmp_path / name
        save_checkpoint(folder / MEMBER_STATE_FILE, {"name": name})
        folders.append((folder, {"score": score, "model_scores": [score], "member": 0,
                                 "training_iteration": 1}))
    whole = (folders[0][0] / MEMBER_STATE_FILE).read_bytes()
    (folders[0][0] / MEMBER_STATE_FILE).write_bytes(whole[: len(whole) // 2])
    result, state = _first_readable(ranked_checkpoints(folders))
    assert result["score"] == 0.5 and state == {"name": "next"}
    (folders[1][0] / MEMBER_STATE_FILE).unlink()
    assert _first_readable(ranked_checkpoints(folders)) is None
