"""The Tune scheduler's bookkeeping after `Tuner.restore`, with stub trials (no Ray runtime),
and the copy of the best checkpoint it keeps on storage.

Restoring re-adds every trial of the experiment, the finished ones too; what the scheduler
makes of them decides whether the run continues or waits forever at a barrier.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("ray")

import pyarrow.fs
from ray.tune.experiment import Trial

from rpu_ray.checkpoint import (
    BEST_CHECKPOINT_DIR,
    MEMBER_RESULT_FILE,
    MEMBER_STATE_FILE,
    load_checkpoint,
    save_checkpoint,
)
from rpu_ray.pbt import PBTPolicy
from schedulers.generational_pbt import GenerationalPBT, keep_best_checkpoint


class _Controller:
    """The part of Tune's controller that `on_trial_add` and `choose_trial_to_run` read."""

    search_alg = None

    def __init__(self, trials: list[Trial]) -> None:
        self.trials = trials

    def get_trials(self) -> list[Trial]:
        return self.trials

    def get_live_trials(self) -> list[Trial]:
        return [t for t in self.trials if not t.is_finished()]


def _restored(statuses_and_iterations: list[tuple[str, int]]) -> tuple[GenerationalPBT,
                                                                      _Controller]:
    scheduler = GenerationalPBT(PBTPolicy(big_init_population_factor=2), seed=(0,),
                                hyperparameters=("lr",))
    trials = []
    for member, (status, iteration) in enumerate(statuses_and_iterations):
        trial = Trial("MemberTrainable", config={"member": member, "lr": 1e-3}, stub=True)
        trial.set_status(status)
        trial.run_metadata.last_result = {"training_iteration": iteration, "score": 0.5}
        trials.append(trial)
    controller = _Controller(trials)
    for trial in trials:
        scheduler.on_trial_add(controller, trial)
    return scheduler, controller


def test_members_dropped_after_the_first_generation_do_not_hold_back_a_resume() -> None:
    # A final run (population 4 x 2 at first) killed after generation 5 and restored: the two
    # members dropped at generation 1 come back TERMINATED at iteration 1.
    scheduler, controller = _restored([(Trial.TERMINATED, 1), (Trial.TERMINATED, 1),
                                       (Trial.PENDING, 5), (Trial.PENDING, 5)])
    assert scheduler._next_perturbation_sync == 6
    assert scheduler._dropped == set(controller.trials[:2])
    assert scheduler.choose_trial_to_run(controller) in controller.trials[2:]


def test_members_failed_for_good_stay_out_after_a_resume() -> None:
    scheduler, controller = _restored([(Trial.ERROR, 3), (Trial.PENDING, 7),
                                       (Trial.PENDING, 7)])
    assert scheduler._failed == {controller.trials[0]}
    assert scheduler._next_perturbation_sync == 8
    assert scheduler.choose_trial_to_run(controller) in controller.trials[1:]


def test_a_run_stopped_mid_generation_finishes_that_generation_first() -> None:
    # Killed while generation 4 (iteration 5) trained: one member had not reported it yet.
    scheduler, controller = _restored([(Trial.PENDING, 5), (Trial.PENDING, 4),
                                       (Trial.PENDING, 5)])
    assert scheduler._next_perturbation_sync == 5  # the barrier it had not reached
    assert not scheduler._dropped and not scheduler._failed
    assert scheduler.choose_trial_to_run(controller) is controller.trials[1]


def _member_checkpoint(folder: Path, score: float | None, iteration: int, member: int) -> Path:
    """A Tune checkpoint folder as `MemberTrainable.save_checkpoint` writes it."""
    save_checkpoint(folder / MEMBER_STATE_FILE, {"weights": torch.full((3,), float(iteration)),
                                                 "member_index": member})
    (folder / MEMBER_RESULT_FILE).write_text(json.dumps({
        "score": score, "model_scores": [score], "member": member,
        "training_iteration": iteration}))
    return folder


def test_the_best_checkpoint_is_kept_out_of_reach_of_tunes_retention(tmp_path: Path) -> None:
    filesystem = pyarrow.fs.LocalFileSystem()
    trials = [tmp_path / "MemberTrainable_0", tmp_path / "MemberTrainable_1"]
    kept = tmp_path / BEST_CHECKPOINT_DIR

    def keep() -> Path | None:
        folder = keep_best_checkpoint(filesystem, [str(t) for t in trials], str(kept))
        return None if folder is None else Path(folder)

    assert keep() is None  # nothing saved yet (the trial folders do not even exist)
    _member_checkpoint(trials[0] / "checkpoint_000000", None, 1, 0)  # diverged
    assert keep() is None and not list(kept.glob("*"))
    _member_checkpoint(trials[0] / "checkpoint_000001", 0.3, 2, 0)
    _member_checkpoint(trials[1] / "checkpoint_000000", 0.4, 1, 1)
    first = keep()
    assert first == kept / "1-1"
    assert json.loads((first / MEMBER_RESULT_FILE).read_text())["score"] == 0.4
    assert load_checkpoint(first / MEMBER_STATE_FILE)["weights"].tolist() == [1.0] * 3

    # Tune deletes the best checkpoint (its own pairing ranked it low): the copy stays.
    shutil.rmtree(trials[1] / "checkpoint_000000")
    assert keep() == first and first.exists()
    # An equal score of a later generation does not replace it (ties: earliest generation).
    _member_checkpoint(trials[0] / "checkpoint_000002", 0.4, 3, 0)
    assert keep() == first
    # A better one still being written is passed over: its result is not whole JSON yet, or
    # its state is cut short; a whole, better one replaces the copy, which is deleted.
    writing = trials[1] / "checkpoint_000001"
    writing.mkdir()
    (writing / MEMBER_RESULT_FILE).write_text('{"score": 0.9, "member"')
    truncated = _member_checkpoint(trials[1] / "checkpoint_000002", 0.8, 3, 1)
    state = (truncated / MEMBER_STATE_FILE).read_bytes()
    (truncated / MEMBER_STATE_FILE).write_bytes(state[:-10])
    assert keep() == first
    _member_checkpoint(trials[0] / "checkpoint_000003", 0.7, 4, 0)
    second = keep()
    assert second == kept / "0-4" and [p.name for p in kept.iterdir()] == ["0-4"]
    assert load_checkpoint(second / MEMBER_STATE_FILE)["weights"].tolist() == [4.0] * 3
    assert not list(second.glob(".*.tmp"))
    # Written in full, the better checkpoint is taken.
    (truncated / MEMBER_STATE_FILE).write_bytes(state)
    assert keep() == kept / "1-3"
