"""Synchronous (generational) PBT on Ray Tune, with rpu-ray's own policy.

`GenerationalPBT` subclasses Ray's `PopulationBasedTraining` in `synch=True` mode, which gives
the generation barrier the authors built from queues: every member trains one generation, then
the whole population is ranked and exploited at once. All decisions come from the pure policy
(`rpu_ray.pbt`): who clones whom, the perturbation, and when the metaEpoch stops; the policy
names members by index, as the in-process executor does, so both draw the same clone seeds for
the same run (Tune's trial ids carry a random prefix). Ray keeps
what it does well: pausing trials, saving the donors' checkpoints and handing them to the
clones.

Hooks (Ray 2.60; see reference/ray-notes.md):
  * `_quantiles` runs exactly once per generation, at the barrier. It records the generation's
    scores, applies the stop rules and computes the whole generation's decisions; it also
    copies the best checkpoint on storage so far where Tune's retention does not reach it.
  * `_checkpoint_or_exploit` saves the top members (Ray's logic) and exploits with the donor the
    policy chose instead of Ray's `random.choice`.
  * `_get_new_config` returns the donor's config with the policy's new hyperparameters, the
    clone's own member index and its fresh seed (`clone_seed`).
  * `on_trial_result` ends the run when a stop rule fires (all paused members are stopped at
    the barrier, so no generation is started in vain) and drops the members a big initial
    population does not keep.
  * `on_trial_add` re-seeds the per-trial state from `trial.last_result` after
    `Tuner.restore`, which does not restore scheduler state.

The convergence rule lives here rather than in a `tune.Stopper`: a stopper sees one result at
a time, before the scheduler, and cannot tell a failed member from a slow one; the barrier is
the one place where the scores of the whole live population are known.

Every generation and every decision is appended as one JSON line to `events_path`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import posixpath
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow.fs
from ray.tune import Checkpoint
from ray.tune.experiment import Trial
from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler
from ray.tune.schedulers.pbt import _FutureTrainingResult, _TrainingResult
from ray.tune.search import BasicVariantGenerator

from rpu_ray.checkpoint import (
    BEST_CHECKPOINT_DIR,
    MEMBER_RESULT_FILE,
    MEMBER_STATE_FILE,
    CheckpointError,
    best_member_result,
    ranked_member_results,
    result_rank,
    verified_payload_bytes,
)
from rpu_ray.experiment import append_jsonl, read_jsonl
from rpu_ray.pbt import (
    HYPERPARAMETERS,
    Decision,
    PBTPolicy,
    best_score,
    exploit_and_explore,
    generation_rng,
    quantile_size,
    rank,
    stop_reason,
    survivors_after_first_generation,
)

log = logging.getLogger(__name__)

GENERATION_EVENT = "generation"
# Folder in a clone's trial folder holding the copies of donors' checkpoints handed to it.
HANDOVER_DIR = "handover"
# Seconds a copy handed over at least two barriers ago is kept still (`_delete_old_handovers`):
# more than Tune's period of saving the experiment's state.
HANDOVER_GRACE_S = 300.0


class GenerationalPBT(PopulationBasedTraining):
    """Generational PBT whose selection, explore and stopping follow `rpu_ray.pbt`.

    Args:
        policy: every constant and rule of exploit/explore and of the stop rules.
        seed: identifies the PBT run for reproducible decisions (e.g. (experiment seed, run)).
        hyperparameters: the tuned ones (`rpu_ray.population.tuned_hyperparameters`). Required:
            Ray adds any of them missing from a trial's config, so an objective without beta
            must not name it.
        events_path: JSONL file that receives one line per generation and per decision.
        results_path: JSONL file that receives every result of every member (Tune's own
            per-trial progress files lose the rows of a member from before it was cloned).
            Both paths may be relative to the experiment directory (local storage only):
            Tuner.restore unpickles the scheduler as it was built, so an absolute path would
            point into an experiment's old place after the experiment was moved.
        on_generation: called with each generation's summary (progress output).
    """

    def __init__(self, policy: PBTPolicy, seed: int | tuple[int, ...],
                 hyperparameters: Sequence[str],
                 events_path: str | Path | None = None,
                 results_path: str | Path | None = None,
                 on_generation: Callable[[dict[str, Any]], None] | None = None) -> None:
        super().__init__(
            time_attr="training_iteration",
            metric="score",
            mode="max",
            perturbation_interval=1,
            quantile_fraction=policy.quantile_fraction,
            # Ray needs a mutation spec; ours is only used for its log lines: explore itself is
            # `rpu_ray.pbt.perturb` (_get_new_config), never Ray's built-in perturbation.
            hyperparam_mutations={name: list(grid) for name, grid in (
                ("lr", policy.lr_grid), ("batch_size", policy.batch_size_grid),
                ("beta", policy.beta_grid)) if name in hyperparameters},
            resample_probability=0.0,
            log_config=False,
            synch=True,
        )
        self.policy = policy
        self.seed = seed
        self._events_path = Path(events_path) if events_path is not None else None
        self._results_path = Path(results_path) if results_path is not None else None
        # The experiment's directory on the local file system, from the trials added (None on
        # other storage): relative log paths are resolved against it.
        self._experiment_dir: Path | None = None
        self.on_generation = on_generation
        self.best_scores: list[float] = []
        self.stop_reason: str | None = None
        # This generation's decisions, by the clone's trial id: (decision, the donor's trial id).
        self._decisions: dict[str, tuple[Decision, str]] = {}
        # Members out of the population for good: not kept by a big initial population
        # (`_dropped`), or failed beyond their retries (`_failed`); `_to_stop` are the dropped
        # ones not stopped yet.
        self._dropped: set[Trial] = set()
        self._failed: set[Trial] = set()
        self._to_stop: set[Trial] = set()
        self._controller: Any = None
        self._history_loaded = False
        # After Tuner.restore: the members that restore from a copy handed over at a barrier,
        # and whether the last barrier is to be redone (`_resume_point`).
        self._restored_clones: set[Trial] = set()
        self._barrier_to_redo = False
        # Whether Tune has asked for a trial to run: trials added before are new or restored by
        # Tuner.restore (`on_trial_add`), trials added after are retries (`_requeued`).
        self._running = False

    # ---------------------------------------------------------------- events

    @property
    def events_path(self) -> Path | None:
        """Where generations and decisions are logged (`_log_path`)."""
        return self._log_path(self._events_path)

    @property
    def results_path(self) -> Path | None:
        """Where every result is logged (`_log_path`)."""
        return self._log_path(self._results_path)

    def _log_path(self, path: Path | None) -> Path | None:
        """`path`, relative ones resolved against the experiment directory."""
        if path is None or path.is_absolute():
            return path
        if self._experiment_dir is None:
            raise ValueError(f"log path {path} is relative, but the experiment is not on the "
                             f"local file system (or no trial was added yet)")
        return Path(os.path.normpath(self._experiment_dir / path))

    def _append_event(self, event: dict[str, Any]) -> None:
        path = self.events_path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        append_jsonl(path, [json.dumps(event)])

    def _load_history(self) -> None:
        """After a restore: the best score of every generation from the events log, so that
        the convergence rule and the generation cap continue where the run stopped."""
        self._history_loaded = True
        path = self.events_path
        if path is None or not path.exists():
            return
        best: dict[int, float] = {}
        stops: dict[int, str | None] = {}
        for event in read_jsonl(path):
            if event.get("event") == GENERATION_EVENT:
                score = event["best_score"]
                best[event["generation"]] = -math.inf if score is None else score
                stops[event["generation"]] = event.get("stop_reason")
        self.best_scores = [best[g] for g in sorted(best)]
        # Interrupted at the barrier that stopped the run (members still saving): the run is
        # over. Redone, that barrier would rank only the members Tune had not stopped yet.
        self.stop_reason = stops[max(stops)] if stops else None

    # ---------------------------------------------------------------- Ray hooks

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        super().on_trial_add(tune_controller, trial)
        self._controller = tune_controller
        # From every trial, not only the first: where Tune restores the experiment is where
        # its trials are now, whatever a pickled scheduler remembers.
        if trial.storage is not None and isinstance(trial.storage.storage_filesystem,
                                                    pyarrow.fs.LocalFileSystem):
            self._experiment_dir = Path(trial.storage.experiment_fs_path)
        # Relative log paths on other storage: fail now, not at the first barrier.
        for path in (self._events_path, self._results_path):
            self._log_path(path)
        if trial.storage is not None:
            _rebase_checkpoints(trial)
        if self._running:
            self._requeued(trial)
            return
        restored = trial.run_metadata.checkpoint_manager.latest_checkpoint_result
        if restored is None and not (trial.last_result or {}).get("training_iteration"):
            self._resume_point()
            return  # a new member, or one restored without a checkpoint: it starts afresh
        # Re-added by Tuner.restore. It continues from its latest checkpoint: that generation
        # and that score, whatever result Tune recorded after it (Tune numbers the trial's
        # iterations from the metrics of the checkpoint it restores).
        if not self._history_loaded:
            self._load_history()
        self._seed_state(trial, restored.metrics if restored is not None else {})
        if restored is not None and _is_handover(restored.checkpoint):
            self._restored_clones.add(trial)
        if restored is not None and trial.status == Trial.PENDING:
            # Tune starts every PENDING trial it has room for, whatever the scheduler chooses;
            # a member that may have to wait for others at a barrier must be PAUSED, as it is
            # in a run never interrupted, so that it starts when `choose_trial_to_run` says.
            # (Tune files the trial under its status only after this hook.)
            trial.set_status(Trial.PAUSED)
        # Tune re-adds finished trials too. A member that ended before the run (dropped by a
        # big initial population, or failed for good) stays out: its old iteration must not
        # pull the next barrier back to a generation the others have passed.
        if trial.status == Trial.TERMINATED:
            self._dropped.add(trial)
        elif trial.status == Trial.ERROR:
            self._failed.add(trial)
        self._resume_point()

    def _seed_state(self, trial: Trial, result: dict[str, Any]) -> None:
        """Ray's per-trial state as if `result` had just been reported at its generation."""
        state = self._trial_state[trial]
        state.last_train_time = state.last_perturbation_time = result.get(
            "training_iteration", 0)
        state.last_result = result
        state.last_score = self._metric_op * result.get("score", -math.inf)

    def _requeued(self, trial: Trial) -> None:
        """A trial added while the run is under way: a new member, or one that failed and that
        Tune retries from its checkpoint (it re-adds it, already filed as PENDING). It rejoins
        at the generation of that checkpoint; the next barrier is the slowest member's next."""
        # Where Tune restarts it: its latest checkpoint (a result reported after that
        # checkpoint is trained again), or the start, with no score yet.
        restored = trial.run_metadata.checkpoint_manager.latest_checkpoint_result
        if restored is not None:
            self._seed_state(trial, restored.metrics)
        else:
            state = self._trial_state[trial]
            state.last_train_time = state.last_perturbation_time = 0
            state.last_result, state.last_score = None, None
        times = [s.last_train_time for t, s in self._trial_state.items()
                 if t not in self._dropped | self._failed]
        self._next_perturbation_sync = min(times) + self._perturbation_interval

    def _resume_point(self) -> None:
        """Where the members (re-)added so far continue: the next barrier, and whether the
        last one must be redone before anyone trains.

        A restored run continues from Tune's saved state, which can predate the last barrier
        the run reached. If every member restores at the same iteration i >= 1 and none from
        a copy handed over at that barrier, Tune saved its state before the barrier's
        decisions (a barrier changes all members at once, or none): the barrier is redone,
        before anyone trains (`choose_trial_to_run`), with the scores it had. If members are
        behind others (their checkpoints predate the barrier, or they have none), they train
        up to the leaders: with the barrier there if it was not taken yet, without it if the
        leaders carry its decisions already.
        """
        times = {t: s.last_train_time for t, s in self._trial_state.items()
                 if t not in self._dropped | self._failed}
        if not times:
            return
        first, last = min(times.values()), max(times.values())
        # A clone handed a copy at that barrier shows it was decided, even one that has failed
        # for good since (its decisions must not be made a second time).
        decided = any(self._trial_state[t].last_train_time == last
                      for t in self._restored_clones if t not in self._dropped)
        self._barrier_to_redo = first == last >= 1 and not decided and not self.stop_reason
        self._next_perturbation_sync = last if first < last and not decided else last + 1

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        # The controller is needed at the barrier (`_quantiles`, which Ray calls without it).
        self._controller = tune_controller
        if self._results_path is not None:
            row = {"trial_id": trial.trial_id,
                   **{k: _plain(v) for k, v in result.items() if k != "config"}}
            append_jsonl(self.results_path, [json.dumps(row, allow_nan=False, default=str)])
        if trial in self._dropped or self.stop_reason:
            # It was still running (or already restarted) when it was dropped or the run
            # stopped: its result belongs to no generation. The survivors may all be waiting
            # for it at the barrier.
            if not self.stop_reason:
                self._barrier_if_complete(tune_controller, leaving=trial)
            return TrialScheduler.STOP
        self._release_failed()
        if result.get(self._time_attr, math.inf) < self._next_perturbation_sync:
            # Behind the next barrier (a member catching up after a restore): Ray's check
            # would take the barrier as soon as the others are there, with this stale score.
            return TrialScheduler.CONTINUE
        decision = super().on_trial_result(tune_controller, trial, result)
        ending = self._take_ending(tune_controller.get_live_trials())
        for other in ending - {trial}:
            if other.status in (Trial.PAUSED, Trial.PENDING):
                tune_controller.stop_trial(other)
        return TrialScheduler.STOP if trial in ending else decision

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        # A member still saving its checkpoint at the barrier that stopped the run (or dropped
        # it) was RUNNING then and escaped `stop_trial`; paused now, it must not train another
        # generation. Stopping it here (one per call) ends it before it starts.
        self._running = True
        if self._barrier_to_redo:
            self._barrier_to_redo = False
            live = [t for t in tune_controller.get_live_trials()
                    if t not in self._dropped | self._failed]
            self._next_perturbation_sync = max(self._trial_state[t].last_train_time
                                               for t in live)
            self._barrier(tune_controller, live)
        trial = super().choose_trial_to_run(tune_controller)
        if trial is not None and (self.stop_reason or trial in self._dropped):
            tune_controller.stop_trial(trial)
            return None
        return trial

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        # Ray's synchronous PBT only reaches the barrier from a result: when the last member
        # of a generation fails for good instead of reporting, the others would wait forever.
        super().on_trial_error(tune_controller, trial)
        # Tune retries only a trial that failed RUNNING: it stops it (ERROR) before this call
        # and queues it again after. One that failed PENDING (a reused actor's reset raised)
        # is stopped for good, retries left or not.
        if trial.status == Trial.ERROR and trial.should_recover():  # restarted: wait for it
            return
        self._controller = tune_controller
        self._failed.add(trial)  # out of every ranking from now on (Ray still lists it)
        self._barrier_if_complete(tune_controller, leaving=trial)

    def _barrier_if_complete(self, tune_controller: Any, leaving: Trial) -> None:
        """The barrier, if every other member has reached it. Ray's synchronous PBT only
        reaches the barrier from a result that completes it; a member that leaves without one
        (failed for good, or dropped and stopping) would otherwise leave the others waiting
        forever."""
        self._release_failed()
        live = [t for t in tune_controller.get_live_trials()
                if t is not leaving and t not in self._dropped]
        if live and all(self._trial_state[t].last_train_time >= self._next_perturbation_sync
                        for t in live):
            self._barrier(tune_controller, live)

    def _release_failed(self) -> None:
        """Failed and dropped members never hold back a barrier. Ray keeps listing such a
        trial among the live ones (at least until its actor has stopped), and the synchronous
        barrier waits for every live trial to reach the next generation: move them there."""
        for trial in self._failed | self._dropped:
            state = self._trial_state[trial]
            state.last_train_time = max(state.last_train_time, self._next_perturbation_sync)

    def _barrier(self, tune_controller: Any, trials: list[Trial]) -> None:
        """Ray's end-of-generation step (as in its `on_trial_result`), all members paused."""
        lower, upper = self._quantiles()
        middle = [t for t in trials if t not in lower and t not in upper]
        for t in upper + middle + lower:  # donors save before their clones load
            self._trial_state[t].last_perturbation_time = self._trial_state[t].last_train_time
            self._checkpoint_or_exploit(t, tune_controller, upper, lower)
        self._next_perturbation_sync = max(
            self._next_perturbation_sync + self._perturbation_interval,
            max(self._trial_state[t].last_train_time for t in trials))
        for t in self._take_ending(trials):
            tune_controller.stop_trial(t)

    def _take_ending(self, live: list[Trial]) -> set[Trial]:
        """The members to stop after a barrier: all of them when a stop rule fired, else the
        ones a big initial population does not keep."""
        ending = set(live) if self.stop_reason else set(self._to_stop)
        self._to_stop = set()
        return ending

    def _quantiles(self) -> tuple[list[Trial], list[Trial]]:
        """The generation barrier: scores, stop rules, decisions; returns (replaced, top)."""
        self._keep_best_checkpoint()
        live = {t: s for t, s in self._trial_state.items()
                if s.last_score is not None and not t.is_finished()
                and t not in self._dropped | self._failed}
        by_id = {t.trial_id: t for t in live}
        scores = {t.trial_id: live[t].last_score * self._metric_op for t in live}
        generation = int(max(s.last_train_time for s in live.values())) - 1
        if generation == 0 and self.policy.big_init_population_factor > 1:
            keep = set(survivors_after_first_generation(scores, self.policy))
            self._to_stop = {by_id[i] for i in scores if i not in keep}
            self._dropped |= self._to_stop
            scores = {i: v for i, v in scores.items() if i in keep}
        # A generation redone after a restore (Tune's state predates its results for some
        # members) replaces its entry from the events log instead of counting twice.
        del self.best_scores[generation:]
        self.best_scores.append(best_score(scores))
        self._delete_old_handovers()
        self.stop_reason = stop_reason(self.best_scores, self.policy)
        ranking = rank(scores)
        best = by_id[ranking[0]]
        summary = {
            "event": GENERATION_EVENT, "generation": generation, "time": time.time(),
            "best_score": _json_float(self.best_scores[-1]),
            "median_score": _json_float(_median([scores[i] for i in ranking])),
            "population": len(scores), "best_member": best.config.get("member"),
            "best_hparams": {k: best.config[k] for k in HYPERPARAMETERS if k in best.config},
            "stop_reason": self.stop_reason, "dropped": len(self._to_stop),
            "filtered_latents": (live[best].last_result or {}).get("filtered_latents"),
        }
        self._append_event(summary)
        if self.on_generation is not None:
            self.on_generation(summary)
        if self.stop_reason is not None:
            return [], []
        # The policy sees members by index, as in the in-process executor: trial ids carry a
        # random prefix per Tune experiment, and a clone's seed derives from the member's name.
        index = {i: str(by_id[i].config["member"]) for i in scores}
        trial_of = {member: i for i, member in index.items()}
        if len(trial_of) != len(index):
            raise RuntimeError(f"two live trials share a member index: {sorted(index.values())}")
        hparams = {index[i]: {k: by_id[i].config[k] for k in HYPERPARAMETERS
                              if k in by_id[i].config} for i in scores}
        decisions = exploit_and_explore({index[i]: v for i, v in scores.items()}, hparams,
                                        self.policy, generation_rng(self.seed, generation),
                                        generation=generation, seed=self.seed)
        self._decisions = {trial_of[d.member]: (d, trial_of[d.donor]) for d in decisions}
        upper = [by_id[i] for i in ranking[:quantile_size(len(ranking), self.policy)]]
        lower = [by_id[i] for i in self._decisions]
        return lower, upper

    def _checkpoint_or_exploit(self, trial: Trial, tune_controller: Any,
                               upper_quantile: list[Trial], lower_quantile: list[Trial]) -> None:
        # Ray's logic saves the top members; the exploit below uses the policy's donor.
        super()._checkpoint_or_exploit(trial, tune_controller, upper_quantile, [])
        if trial.trial_id not in self._decisions or trial not in lower_quantile:
            return
        donor_id = self._decisions[trial.trial_id][1]
        donor = next(t for t in upper_quantile if t.trial_id == donor_id)
        donor_state = self._trial_state[donor]
        checkpoint = donor_state.last_checkpoint
        if isinstance(checkpoint, _FutureTrainingResult):  # the donor's save is still running
            training_result = checkpoint.resolve()
            if training_result:
                donor_state.last_result = training_result.metrics
                donor_state.last_checkpoint = training_result.checkpoint
                checkpoint = training_result.checkpoint
            else:
                checkpoint = None
        if not checkpoint:
            log.warning("no checkpoint of %s to clone; %s keeps its weights", donor, trial)
            return
        self._exploit(tune_controller, trial, donor)
        # Hand the clone its own copy of the donor's checkpoint. With more members than slots
        # the clone may only restore after the donor has trained on and Tune's retention
        # (`checkpoints_to_keep`) has deleted that checkpoint: the clone then fails for good.
        manager = trial.run_metadata.checkpoint_manager
        manager._latest_checkpoint_result = _TrainingResult(
            checkpoint=self._hand_over(checkpoint, trial),
            metrics=manager._latest_checkpoint_result.metrics)

    def _keep_best_checkpoint(self) -> None:
        """Copy the best member checkpoint on storage so far to `BEST_CHECKPOINT_DIR` of the
        experiment, out of reach of Tune's retention (`keep_best_checkpoint`). A storage error
        only costs the copy, not the run: the export still looks at every checkpoint left."""
        trials = list(self._trial_state)
        if not trials:
            return
        storage = trials[0].storage
        try:
            keep_best_checkpoint(storage.storage_filesystem,
                                 [trial.storage.trial_fs_path for trial in trials],
                                 posixpath.join(storage.experiment_fs_path, BEST_CHECKPOINT_DIR))
        except OSError as err:
            log.warning("could not copy the best checkpoint so far: %s", err)

    def _hand_over(self, checkpoint: Checkpoint, clone: Trial) -> Checkpoint:
        """A copy of `checkpoint` that only `clone` uses, `handover/<generation>` in the
        clone's trial folder (on the same storage): there Tune moves its path with the trial
        when a moved experiment is restored (`Trial.set_storage`)."""
        filesystem = checkpoint.filesystem
        target = posixpath.join(clone.storage.trial_fs_path, HANDOVER_DIR,
                                str(len(self.best_scores) - 1))
        filesystem.create_dir(target)
        pyarrow.fs.copy_files(checkpoint.path, target, source_filesystem=filesystem,
                              destination_filesystem=filesystem)
        return Checkpoint(target, filesystem)

    def _delete_old_handovers(self) -> None:
        """Delete the copies handed over two barriers ago or earlier: a clone of the previous
        barrier may still be saving its first checkpoint of its own at this one (its save can
        fail, or the driver die), and until then the copy is what it restores from; by this
        barrier every clone of the one before has a checkpoint of its own. A copy younger than
        `HANDOVER_GRACE_S` stays too: Tune saves the experiment's state (what a resume restores
        from) every so often, not at every barrier, so with short generations its last state
        can still name a copy two barriers old. The copies are found on storage, so those of a
        run before a restore go too. A storage error only costs disk space, not the run."""
        trials = list(self._trial_state)
        if not trials:
            return
        filesystem = trials[0].storage.storage_filesystem
        generation = len(self.best_scores) - 1
        try:
            for trial in trials:
                folders = _subfolders(filesystem, posixpath.join(trial.storage.trial_fs_path,
                                                                 HANDOVER_DIR))
                old = [f for f in folders if posixpath.basename(f).isdigit()
                       and int(posixpath.basename(f)) < generation - 1]
                for folder, info in zip(old, filesystem.get_file_info(old), strict=True):
                    # Object stores have no folder times: by barrier count alone there.
                    made = info.mtime.timestamp() if info.mtime is not None else -math.inf
                    if time.time() - made >= HANDOVER_GRACE_S:
                        filesystem.delete_dir(folder)
        except OSError as err:
            log.warning("could not delete the checkpoint copies of old barriers: %s", err)

    def _get_new_config(self, trial: Trial, trial_to_clone: Trial) -> tuple[dict, dict]:
        decision, _ = self._decisions.pop(trial.trial_id)
        config = copy.deepcopy(trial_to_clone.config)
        config.update(decision.new_hparams)
        config["member"] = trial.config["member"]  # the clone keeps its identity ...
        config["clone_seed"] = decision.seed  # ... and draws its own data order and noise
        self._append_event({**decision.to_dict(), "member_index": trial.config["member"],
                            "donor_index": trial_to_clone.config["member"]})
        operations = {name: f"* {factor}" for name, factor in decision.factors.items()}
        return config, operations

    def population_alive(self) -> bool:
        """Whether any member may still train (before Tune has added any: yes)."""
        # Not `get_live_trials()`: Tune leaves a trial that errored for good in that set.
        return self._controller is None or not all(
            trial.is_finished() for trial in self._controller.get_trials())


class PopulationSearch(BasicVariantGenerator):
    """Tune's grid search over the initial population, finished only when the population is.

    Why: Ray 2.60 keeps the actor of a pausing trial for reuse only while the search algorithm
    is unfinished or another trial is staged (`TuneController._maybe_cache_trial_actor`).
    Tune's own generator finishes as soon as it has produced the population, so every member
    that paused at the generation barrier while others were still training lost its worker
    process and started a new one for the next generation (a quarter of the demo's wall time;
    benchmarks/RESULTS.md, "PBT overhead"). Unfinished, the search keeps one idle actor
    cached, which the next member to resume takes over.
    """

    def __init__(self, scheduler: GenerationalPBT, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._scheduler = scheduler

    def is_finished(self) -> bool:
        return super().is_finished() and not self._scheduler.population_alive()

    def get_state(self) -> dict[str, Any] | bool:
        # The scheduler holds Tune's controller and is saved by Tune itself; `set_state`
        # updates `__dict__`, so the restored search keeps the scheduler it was built with.
        state = super().get_state()
        if state:
            state.pop("_scheduler")
        return state


def keep_best_checkpoint(filesystem: pyarrow.fs.FileSystem, trial_paths: Iterable[str],
                         kept_path: str) -> str | None:
    """Copy the best member checkpoint in the `checkpoint_*` folders of `trial_paths` to a
    folder of its own in `kept_path`, unless the copy kept there already ranks as high; returns
    the folder of the copy kept (None: no checkpoint with a finite score yet).

    Ranked by the result saved beside each state (`MEMBER_RESULT_FILE`, `result_rank`), as the
    export ranks them. A checkpoint still being written (no result yet, a result that is not
    whole JSON, or a state that fails its checksum) is passed over for the next best. The copy
    is written state first, result last, each under a temporary name moved into place: a folder
    in `kept_path` with a result holds a whole state. The copy it replaces is deleted after.
    """
    kept = _saved_results(filesystem, _subfolders(filesystem, kept_path))
    current = best_member_result(kept)
    checkpoints = [folder for path in trial_paths for folder in _subfolders(filesystem, path)
                   if posixpath.basename(folder).startswith("checkpoint_")]
    for folder, result in ranked_member_results(_saved_results(filesystem, checkpoints)):
        if current is not None and result_rank(current[1]) <= result_rank(result):
            break
        state_path = posixpath.join(folder, MEMBER_STATE_FILE)
        try:
            with filesystem.open_input_stream(state_path) as stream:
                state = stream.read()
            verified_payload_bytes(state, state_path)
        except (OSError, CheckpointError):
            continue
        target = posixpath.join(kept_path, f"{result['member']}-{result['training_iteration']}")
        filesystem.create_dir(target)
        for name, content in ((MEMBER_STATE_FILE, state),
                              (MEMBER_RESULT_FILE, json.dumps(result).encode())):
            temporary = posixpath.join(target, f".{name}.tmp")
            with filesystem.open_output_stream(temporary) as stream:
                stream.write(content)
            filesystem.move(temporary, posixpath.join(target, name))
        for folder_kept, _ in kept:
            if folder_kept != target:
                filesystem.delete_dir(folder_kept)
        return target
    return None if current is None else current[0]


def _rebase_checkpoints(trial: Trial) -> None:
    """Point the checkpoints Tune tracks for `trial` into its current folder.

    Tuner.restore moves them with `Trial.set_storage`, which replaces the old trial path by
    the new one in each tracked result, and the latest result is usually also one of the best:
    replaced twice, its path is wrong when the new folder's path contains the old one (a run
    moved from /scratch/run to /backup/scratch/run). What follows the last occurrence of the
    trial's folder name is the checkpoint's place in it (`checkpoint_000003`, `handover/3`).
    """
    manager = trial.run_metadata.checkpoint_manager
    tracked = {id(r): r for r in [*manager.best_checkpoint_results,
                                  manager.latest_checkpoint_result] if r}
    if not tracked:  # a new trial: no folder name yet, nothing to move
        return
    folder = trial.storage.trial_fs_path
    marker = posixpath.sep + posixpath.basename(folder.rstrip(posixpath.sep)) + posixpath.sep
    for result in tracked.values():
        path = result.checkpoint.path
        at = path.rfind(marker)
        if at >= 0:
            result.checkpoint = Checkpoint(posixpath.join(folder, path[at + len(marker):]),
                                           filesystem=trial.storage.storage_filesystem)


def _is_handover(checkpoint: Checkpoint | None) -> bool:
    """Whether `checkpoint` is a copy `GenerationalPBT._hand_over` made for a clone."""
    return checkpoint is not None and posixpath.basename(
        posixpath.dirname(checkpoint.path)) == HANDOVER_DIR


def _subfolders(filesystem: pyarrow.fs.FileSystem, path: str) -> list[str]:
    selector = pyarrow.fs.FileSelector(path, allow_not_found=True)
    return sorted(info.path for info in filesystem.get_file_info(selector)
                  if info.type == pyarrow.fs.FileType.Directory)


def _saved_results(filesystem: pyarrow.fs.FileSystem, folders: Iterable[str]
                   ) -> list[tuple[str, dict[str, Any]]]:
    """(folder, its `MEMBER_RESULT_FILE`) of the folders that have one that reads as JSON."""
    results = []
    for folder in folders:
        try:
            with filesystem.open_input_stream(posixpath.join(folder, MEMBER_RESULT_FILE)) as f:
                results.append((folder, json.loads(f.read())))
        except (OSError, ValueError):  # not written yet, deleted meanwhile, or half-written
            continue
    return results


def _median(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else -math.inf


def _json_float(value: float) -> float | None:
    """Strict JSON has no infinities: a generation without any finite score logs null."""
    return value if math.isfinite(value) else None


def _plain(value: Any) -> Any:
    """A result value as strict JSON: numpy scalars become Python's, non-finite floats the
    strings "nan", "inf", "-inf" (which pandas' CSV reader reads back as floats)."""
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict)):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
