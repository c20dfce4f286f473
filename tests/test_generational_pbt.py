"""The Tune scheduler's bookkeeping after `Tuner.restore`, with stub trials (no Ray runtime),
and the copy of the best checkpoint it keeps on storage.

Restoring re-adds every trial of the experiment, the finished ones too; what the scheduler
makes of them decides whether the run continues or waits forever at a barrier.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("ray")

import pyarrow.fs
from ray.tune import Checkpoint
from ray.tune.experiment import Trial
from ray.tune.schedulers.pbt import _TrainingResult

from rpu_ray.checkpoint import (
    BEST_CHECKPOINT_DIR,
    MEMBER_RESULT_FILE,
    MEMBER_STATE_FILE,
    load_checkpoint,
    save_checkpoint,
)
from rpu_ray.experiment import read_jsonl
from rpu_ray.pbt import PBTPolicy
from schedulers.generational_pbt import HANDOVER_GRACE_S, GenerationalPBT, keep_best_checkpoint


class _Controller:
    """The part of Tune's controller that `on_trial_add` and `choose_trial_to_run` read."""

    search_alg = None

    def __init__(self, trials: list[Trial]) -> None:
        self.trials = trials

    def get_trials(self) -> list[Trial]:
        return self.trials

    def get_live_trials(self) -> list[Trial]:
        return [t for t in self.trials if not t.is_finished()]


# How a member comes back from Tuner.restore: from its own checkpoint of that iteration, from
# the copy of a donor's checkpoint it was handed at the barrier before, or with a result Tune
# recorded but no checkpoint (it starts afresh).
OWN, HANDED, NONE = "own", "handed over", "none"


def _restored(members: list[tuple[str, int, str]], events_path: Path | None = None
              ) -> tuple[GenerationalPBT, _Controller]:
    """A scheduler after Tuner.restore re-added members of (status, iteration, checkpoint)."""
    scheduler = GenerationalPBT(PBTPolicy(big_init_population_factor=2), seed=(0,),
                                hyperparameters=("lr",), events_path=events_path)
    trials = []
    for member, (status, iteration, checkpoint) in enumerate(members):
        trial = Trial("MemberTrainable", config={"member": member, "lr": 1e-3}, stub=True)
        trial.set_status(status)
        result = {"training_iteration": iteration, "score": 0.5}
        trial.run_metadata.last_result = result
        if checkpoint != NONE:
            folder = (f"/tune/run/trial{member}/handover/{iteration - 1}" if checkpoint == HANDED
                      else f"/tune/run/trial{member}/checkpoint_{iteration - 1:06d}")
            trial.run_metadata.checkpoint_manager._latest_checkpoint_result = _TrainingResult(
                checkpoint=Checkpoint(folder), metrics=result)
        trials.append(trial)
    controller = _Controller(trials)
    for trial in trials:
        scheduler.on_trial_add(controller, trial)
    return scheduler, controller


def test_members_dropped_after_the_first_generation_do_not_hold_back_a_resume() -> None:
    # A final run (population 4 x 2 at first) killed after generation 5 and restored: the two
    # members dropped at generation 1 come back TERMINATED at iteration 1.
    scheduler, controller = _restored([
        (Trial.TERMINATED, 1, OWN), (Trial.TERMINATED, 1, OWN),
        (Trial.PENDING, 5, HANDED), (Trial.PENDING, 5, OWN)])
    assert scheduler._next_perturbation_sync == 6 and not scheduler._barrier_to_redo
    assert scheduler._dropped == set(controller.trials[:2])
    assert scheduler.choose_trial_to_run(controller) in controller.trials[2:]


def test_members_failed_for_good_stay_out_after_a_resume() -> None:
    scheduler, controller = _restored([(Trial.ERROR, 3, OWN), (Trial.PENDING, 7, OWN),
                                       (Trial.PENDING, 7, HANDED)])
    assert scheduler._failed == {controller.trials[0]}
    assert scheduler._next_perturbation_sync == 8 and not scheduler._barrier_to_redo
    assert scheduler.choose_trial_to_run(controller) in controller.trials[1:]


def test_a_run_stopped_mid_generation_finishes_that_generation_first() -> None:
    # Killed while generation 4 (iteration 5) trained: one member had not saved it yet.
    scheduler, controller = _restored([(Trial.PENDING, 5, OWN), (Trial.PENDING, 4, HANDED),
                                       (Trial.PENDING, 5, OWN)])
    assert scheduler._next_perturbation_sync == 5  # the barrier it had not reached
    assert not scheduler._dropped and not scheduler._failed and not scheduler._barrier_to_redo
    assert scheduler.choose_trial_to_run(controller) is controller.trials[1]
    # Its result was recorded, its checkpoint was not: Tune restarts it from scratch, and it
    # trains up to the others, who wait for it at the barrier of iteration 1.
    scheduler, controller = _restored([(Trial.PENDING, 1, OWN), (Trial.PENDING, 1, NONE),
                                       (Trial.PENDING, 1, OWN)])
    assert scheduler._trial_state[controller.trials[1]].last_train_time == 0
    assert scheduler._next_perturbation_sync == 1 and not scheduler._barrier_to_redo
    assert scheduler.choose_trial_to_run(controller) is controller.trials[1]
    # Tune starts every PENDING trial it has room for: the members that wait for it at the
    # barrier are PAUSED (as in a run never interrupted); the one without a checkpoint is not.
    assert [t.status for t in controller.trials] == [Trial.PAUSED, Trial.PENDING, Trial.PAUSED]


def test_members_behind_a_barrier_already_decided_catch_up_without_it() -> None:
    # Barrier 2 handed member 1 a donor's checkpoint; member 0 had not saved generation 2.
    scheduler, controller = _restored([(Trial.PENDING, 2, OWN), (Trial.PENDING, 3, HANDED),
                                       (Trial.PENDING, 3, OWN)])
    assert scheduler._next_perturbation_sync == 4 and not scheduler._barrier_to_redo
    assert scheduler.choose_trial_to_run(controller) is controller.trials[0]


def test_a_barrier_saved_before_its_decisions_is_redone_before_anyone_trains(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Every member restores at iteration 3 from its own checkpoint: Tune saved its state
    # after the results of generation 2 and before the barrier's clones were handed theirs.
    scheduler, controller = _restored([(Trial.PENDING, 3, OWN)] * 3)
    assert scheduler._barrier_to_redo
    barriers = []
    monkeypatch.setattr(scheduler, "_barrier", lambda _, trials: barriers.append(
        (list(trials), scheduler._next_perturbation_sync)))
    scheduler.choose_trial_to_run(controller)
    # The barrier of iteration 3 with every live member (it sets the next one, 4, itself).
    assert barriers == [(controller.trials, 3)] and not scheduler._barrier_to_redo
    scheduler.choose_trial_to_run(controller)
    assert len(barriers) == 1  # once


def test_a_member_that_fails_for_good_before_it_trains_releases_the_barrier(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Members 0 and 1 wait at the barrier of iteration 2 for member 2. Tune retries a failed
    # trial only if it was RUNNING; member 2 fails PENDING (its reused actor's reset raised),
    # so Tune stops it for good though retries are left, and the others must not wait for it.
    scheduler, controller = _restored([(Trial.PENDING, 2, OWN), (Trial.PENDING, 2, OWN),
                                       (Trial.PENDING, 1, OWN)])
    scheduler._running = True
    barriers = []
    monkeypatch.setattr(scheduler, "_barrier", lambda _, trials: barriers.append(list(trials)))
    failing = controller.trials[2]
    failing.set_status(Trial.PENDING)  # chosen to run: Tune starts it on a cached actor
    failing.max_failures = 2
    assert failing.should_recover()
    scheduler.on_trial_error(controller, failing)
    assert scheduler._failed == {failing} and barriers == [controller.trials[:2]]
    # The retry: Tune has stopped the trial (ERROR) when it calls the hook, and requeues it.
    scheduler, controller = _restored([(Trial.PENDING, 2, OWN), (Trial.PENDING, 2, OWN),
                                       (Trial.ERROR, 1, OWN)])
    retried = controller.trials[2]
    scheduler._failed.clear()
    retried.max_failures = 2
    monkeypatch.setattr(scheduler, "_barrier", lambda _, trials: barriers.append(list(trials)))
    scheduler.on_trial_error(controller, retried)
    assert not scheduler._failed and len(barriers) == 1


def test_a_run_interrupted_at_the_barrier_that_stopped_it_stays_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The stop barrier of generation 2 stopped the waiting members (TERMINATED); the one still
    # saving its checkpoint was RUNNING when the run was killed, and comes back alone.
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps({"event": "generation", "generation": g,
                                          "best_score": 0.5, "stop_reason": stop}) + "\n"
                              for g, stop in ((0, None), (1, None), (2, "converged"))))
    scheduler, controller = _restored([(Trial.TERMINATED, 3, OWN), (Trial.TERMINATED, 3, OWN),
                                       (Trial.PENDING, 3, OWN)], events_path=events)
    assert scheduler.stop_reason == "converged" and not scheduler._barrier_to_redo
    assert scheduler.best_scores == [0.5, 0.5, 0.5]
    stopped = []
    controller.stop_trial = stopped.append
    assert scheduler.choose_trial_to_run(controller) is None
    assert stopped == [controller.trials[2]]


def test_a_barrier_whose_clone_failed_for_good_since_is_not_redone() -> None:
    # Barrier 3 handed member 2 a copy; it failed for good in generation 3. The others'
    # checkpoints are of iteration 3 too: the barrier was decided, and must not be again.
    scheduler, _ = _restored([(Trial.PENDING, 3, OWN), (Trial.PENDING, 3, OWN),
                              (Trial.ERROR, 3, HANDED)])
    assert not scheduler._barrier_to_redo and scheduler._next_perturbation_sync == 4


def test_a_member_catching_up_does_not_take_the_barrier_with_a_stale_score(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Two members restored at iteration 3 wait at that barrier for one restarted from scratch:
    # its results of iterations 1 and 2 are not generation 2's.
    scheduler, controller = _restored([(Trial.PENDING, 3, OWN), (Trial.PENDING, 3, OWN),
                                       (Trial.PENDING, 1, NONE)])
    assert scheduler._next_perturbation_sync == 3
    barriers = []
    monkeypatch.setattr(scheduler, "_barrier", lambda _, trials: barriers.append(list(trials)))
    laggard = controller.trials[2]
    for iteration in (1, 2):
        decision = scheduler.on_trial_result(controller, laggard,
                                             {"training_iteration": iteration, "score": 0.9})
        assert decision == "CONTINUE" and not barriers


def test_a_retried_member_rejoins_at_its_checkpoint_not_its_last_result() -> None:
    # It reported iteration 5, then its process died before it saved: Tune restarts it from
    # its checkpoint of iteration 4, and it must train generation 5 again before the barrier.
    scheduler, controller = _restored([(Trial.PENDING, 4, OWN), (Trial.PENDING, 5, OWN)])
    scheduler._running = True
    retried = controller.trials[0]
    retried.run_metadata.last_result = {"training_iteration": 5, "score": 0.7}
    scheduler.on_trial_add(controller, retried)
    assert scheduler._trial_state[retried].last_train_time == 4
    assert scheduler._next_perturbation_sync == 5


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


class _Storage:
    """The part of Tune's `StorageContext` the scheduler reads: where a trial's files are."""

    def __init__(self, experiment: Path, trial: str,
                 filesystem: pyarrow.fs.FileSystem | None = None) -> None:
        self.storage_filesystem = filesystem or pyarrow.fs.LocalFileSystem()
        self.experiment_fs_path = str(experiment)
        self.trial_fs_path = str(experiment / trial)


def _trials_in(scheduler: GenerationalPBT, experiment: Path, count: int,
               filesystem: pyarrow.fs.FileSystem | None = None) -> list[Trial]:
    """`count` new stub trials whose files are in `experiment`, added to `scheduler`."""
    trials = []
    for member in range(count):
        trial = Trial("MemberTrainable", config={"member": member, "lr": 1e-3}, stub=True)
        trial.storage = _Storage(experiment, f"trial{member}", filesystem)
        trials.append(trial)
    controller = _Controller(trials)
    for trial in trials:
        scheduler.on_trial_add(controller, trial)
    return trials


def test_relative_log_paths_follow_the_experiment_when_it_is_moved(tmp_path: Path) -> None:
    # Tuner.restore unpickles the scheduler as it was built, before any trial was added.
    built = pickle.dumps(GenerationalPBT(
        PBTPolicy(), seed=(0,), hyperparameters=("lr",), events_path=Path("..", "events.jsonl"),
        results_path=tmp_path / "results.jsonl"))
    for place in ("first", "moved"):
        scheduler = pickle.loads(built)
        # Had it been pickled after trials were added, the trials of the moved experiment
        # still decide where its logs go.
        scheduler._experiment_dir = tmp_path / "first" / "run"
        _trials_in(scheduler, tmp_path / place / "run", 2)
        scheduler._append_event({"event": "generation", "generation": 0, "best_score": 0.5})
        assert scheduler.events_path == tmp_path / place / "events.jsonl"
        assert scheduler.results_path == tmp_path / "results.jsonl"  # absolute: as given
    for place in ("first", "moved"):
        lines = (tmp_path / place / "events.jsonl").read_text().splitlines()
        assert [json.loads(line)["generation"] for line in lines] == [0]
    # Relative paths need the experiment on the local file system: the first trial says.
    with pytest.raises(ValueError, match=r"events\.jsonl is relative"):
        _trials_in(pickle.loads(built), tmp_path / "remote", 1,
                   pyarrow.fs.SubTreeFileSystem(str(tmp_path), pyarrow.fs.LocalFileSystem()))


@pytest.mark.parametrize("grace", [0.0, HANDOVER_GRACE_S])
def test_handed_over_copies_live_in_the_clones_folder_for_two_barriers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, grace: float) -> None:
    # Copies older than two barriers go once they are older than the grace period too.
    monkeypatch.setattr("schedulers.generational_pbt.HANDOVER_GRACE_S", grace)
    scheduler = GenerationalPBT(PBTPolicy(), seed=(0,), hyperparameters=("lr",))
    trials = _trials_in(scheduler, tmp_path / "run", 2)
    donor = tmp_path / "run" / "trial0" / "checkpoint_000000"
    donor.mkdir(parents=True)
    (donor / MEMBER_STATE_FILE).write_bytes(b"state")
    filesystem = pyarrow.fs.LocalFileSystem()
    # Barriers 0 to 3 each hand member 1 a copy (a restored scheduler made the first two:
    # the copies are found on storage, not in the scheduler's memory).
    for generation in range(4):
        if generation == 2:
            scheduler = GenerationalPBT(PBTPolicy(), seed=(0,), hyperparameters=("lr",))
            trials = _trials_in(scheduler, tmp_path / "run", 2)
        scheduler.best_scores = [0.5] * (generation + 1)
        scheduler._delete_old_handovers()
        copy = scheduler._hand_over(Checkpoint(str(donor), filesystem), trials[1])
        assert copy.path == str(tmp_path / "run" / "trial1" / "handover" / str(generation))
        assert (Path(copy.path) / MEMBER_STATE_FILE).read_bytes() == b"state"
        kept = sorted(p.name for p in (tmp_path / "run" / "trial1" / "handover").iterdir())
        oldest_kept = max(0, generation - 1) if grace == 0 else 0  # all young here
        assert kept == [str(g) for g in range(oldest_kept, generation + 1)]
    assert (donor / MEMBER_STATE_FILE).exists()


def test_checkpoints_of_a_run_moved_under_a_longer_path_point_into_its_new_folder(
        tmp_path: Path) -> None:
    # /scratch/run moved to /backup/scratch/run: Tune's Trial.set_storage replaces the old trial
    # path by the new one in each tracked result, and the latest is also one of the best.
    old = tmp_path / "scratch" / "run"
    new = Path(str(tmp_path / "backup") + str(old))
    trial = Trial("MemberTrainable", config={"member": 0, "lr": 1e-3}, stub=True)
    trial.storage = _Storage(old, "trial0")
    manager = trial.run_metadata.checkpoint_manager
    for iteration in (1, 2):
        manager._checkpoint_results.append(_TrainingResult(
            checkpoint=Checkpoint(str(old / "trial0" / f"checkpoint_{iteration - 1:06d}")),
            metrics={"training_iteration": iteration, "score": 0.5}))
    manager._latest_checkpoint_result = manager._checkpoint_results[-1]
    trial.set_storage(_Storage(new, "trial0"))
    assert manager.latest_checkpoint_result.checkpoint.path != str(
        new / "trial0" / "checkpoint_000001")  # Ray 2.60's double replacement
    GenerationalPBT(PBTPolicy(), seed=(0,), hyperparameters=("lr",)).on_trial_add(
        _Controller([trial]), trial)
    assert [r.checkpoint.path for r in manager.best_checkpoint_results] == [
        str(new / "trial0" / "checkpoint_000000"), str(new / "trial0" / "checkpoint_000001")]
    assert manager.latest_checkpoint_result.checkpoint.path == str(
        new / "trial0" / "checkpoint_000001")


def test_a_log_line_cut_short_by_a_kill_is_left_out_and_not_joined(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"event": "generation", "generation": 0, "best_score": 0.4})
                      + '\n{"event": "generation", "gener')
    scheduler = GenerationalPBT(PBTPolicy(), seed=(0,), hyperparameters=("lr",),
                                events_path=events)
    scheduler._load_history()  # what a restored scheduler reads
    assert scheduler.best_scores == [0.4]
    scheduler._append_event({"event": "generation", "generation": 1, "best_score": 0.5})
    assert [e["generation"] for e in read_jsonl(events)] == [0, 1]
