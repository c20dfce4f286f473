"""The Tune scheduler's bookkeeping after `Tuner.restore`, with stub trials (no Ray runtime).

Restoring re-adds every trial of the experiment, the finished ones too; what the scheduler
makes of them decides whether the run continues or waits forever at a barrier.
"""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from ray.tune.experiment import Trial

from rpu_ray.pbt import PBTPolicy
from schedulers.generational_pbt import GenerationalPBT


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
