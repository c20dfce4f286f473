"""Orchestration: the only core module that imports Ray Tune.

`run_pbt` runs one population-based training experiment (PBT-U-VAE scored by UDR, or
PBT-S-VAE scored by MIG/DCI) on the current Ray cluster and writes its outputs:

    OUT/config.yaml            the fully resolved configuration
    OUT/events.jsonl           one line per generation and per exploit/explore decision
    OUT/results.jsonl, .csv    every result of every member and generation
    OUT/best_member.pt         the best member snapshot over all generations
    OUT/best_vae.pt            its best single VAE (by per-model score), `rpu_ray.export`
    OUT/pbt.png                best/median score and the best member's hyperparameters
    OUT/tune/<run>/            Ray Tune's experiment (trial checkpoints, restore state)

`run_pbt(..., resume=True)` continues an interrupted experiment with `Tuner.restore`.
`run_pbt_locally` writes the same outputs (but `tune/`) without Ray, in this process.

`RPUDriver` runs Algorithm 1 (rPU-VAE) with one of two executors for its PBT runs: Ray tasks
(`RayExecutor`; `RayRPUDriver` is the actor of `rpu-ray run`) or this process (`LocalExecutor`,
for machines without Ray). Ray is imported only where a Ray executor runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from rpu_ray.checkpoint import (
    BEST_CHECKPOINT_DIR,
    MEMBER_RESULT_FILE,
    MEMBER_STATE_FILE,
    CheckpointError,
    load_checkpoint,
    ranked_member_results,
    save_checkpoint,
)
from rpu_ray.config import ExperimentConfig, dump_config, to_dict
from rpu_ray.data import Dataset
from rpu_ray.evaluation import (
    LabelChain,
    best_model,
    encode_images,
    evaluate_model,
    evaluation_positions,
    label_ground_truth,
    per_latent_kl,
)
from rpu_ray.experiment import (
    NO_FINITE_SCORE,
    STATE_FILE,
    ExperimentDirError,
    append_jsonl,
    read_events,
    read_jsonl,
    read_state,
)
from rpu_ray.export import export_vae, load_vae
from rpu_ray.labels import LabelLevel, LeafRunLabels
from rpu_ray.pbt import HYPERPARAMETERS
from rpu_ray.population import (
    NoFiniteScoreError,
    check_pbt_mode,
    initial_population,
    run_local_pbt,
    seed_words,
    tuned_hyperparameters,
)
from rpu_ray.reduction import active_latents, reduce

log = logging.getLogger(__name__)

# Every result of every member, appended by the scheduler as it arrives (results.csv's source).
RESULTS_LOG = "results.jsonl"


@dataclass(frozen=True)
class PBTRunResult:
    """What a finished PBT run produced (paths under `out_dir`)."""

    out_dir: Path
    stop_reason: str | None
    best_score: float
    best_member: int
    best_generation: int
    generations: int
    num_errors: int
    # Images trained on, summed over all VAEs of all members (the run's compute).
    model_images: int


def _progress_printer(run: str) -> Callable[[dict[str, Any]], None]:
    def report(summary: dict[str, Any]) -> None:
        hparams = ", ".join(f"{k}={v:.3g}" for k, v in summary["best_hparams"].items())
        best, median = summary["best_score"], summary["median_score"]
        text = (f"[{run}] generation {summary['generation']}: best "
                f"{'n/a' if best is None else f'{best:.4f}'}, median "
                f"{'n/a' if median is None else f'{median:.4f}'} "
                f"(member {summary['best_member']}: {hparams})")
        if summary["stop_reason"]:
            text += f" -> stop: {summary['stop_reason']}"
            if summary.get("filtered_latents") == 0:
                text += (f"\n[{run}] note: UDR's KL filter (eval.udr_kl_threshold) left out no "
                         "latent of the best member's VAEs: their unused latents have not "
                         "collapsed, so UDR compared those too and may not rank "
                         "disentanglement. Train longer (train.generation_images) or raise "
                         "the filter (the demo preset's is 0.3).")
        print(text, flush=True)

    return report


def _trainable(experiment: ExperimentConfig, dataset: Dataset, mode: str, run: str,
               images_ref: Any, label_chains: list[LabelChain] | None) -> Any:
    from ray import tune

    from trainables.member import MemberTrainable

    settings = {"experiment": to_dict(experiment), "mode": mode, "run": run}
    resources = {"cpu": experiment.resources.cpus_per_trial,
                 "gpu": experiment.resources.gpus_per_trial}
    # The images live in the object store once (trials read them zero-copy); a caller that
    # runs several PBT runs on one data set passes its reference so they are not put again.
    trainable = tune.with_parameters(
        MemberTrainable, settings=settings,
        images=images_ref if images_ref is not None else dataset.images,
        subset=dataset.indices, factors=dataset.factors, label_chains=label_chains)
    trainable = tune.with_resources(trainable, resources)
    # Tune registers a trainable under its class name in the Ray job's key-value store and
    # looks it up there each time it starts a trial's actor. The PBT runs of one rPU-VAE run
    # that train at once (leaf-runs, each in its own task of the same job) must not share a
    # name: the members of one would start as the other's, on the other's images.
    trainable.__name__ = trainable_name(run)
    return trainable


def trainable_name(run: str) -> str:
    """The name a PBT run's trainable is registered under in Ray Tune (and which begins the
    folder name of each of its trials): one per run."""
    return f"MemberTrainable_{run}"


def _param_space(population: list[dict[str, float]]) -> dict[str, Any]:
    from ray import tune

    def initial(name: str) -> Any:
        return tune.sample_from(lambda config: population[config["member"]][name])

    return {"member": tune.grid_search(list(range(len(population)))),
            **{name: initial(name) for name in population[0]}}


def run_pbt(experiment: ExperimentConfig, dataset: Dataset, mode: str, out_dir: str | Path,
            run: str = "pbt", resume: bool = False, progress: bool = True,
            images_ref: Any = None, label_chains: list[LabelChain] | None = None
            ) -> PBTRunResult:
    """Run (or with `resume`, continue) one PBT experiment on the connected Ray cluster.

    Modes: "udr" (PBT-U-VAE), "mig"/"dci" (PBT-S-VAE on the data set's factors), "leafmig"
    (the final run: leaf-MIG on `label_chains`, the surrogate labels of the leaf-runs).
    `images_ref`: an object-store reference to `dataset.images`, if the caller holds one.
    """
    import ray
    from ray import tune

    from schedulers.generational_pbt import GenerationalPBT, PopulationSearch

    check_pbt_mode(experiment, dataset, mode, label_chains)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = out_dir / "tune"
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    # Tune's newer console output prints tables even when silent; our progress lines suffice.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    trainable = _trainable(experiment, dataset, mode, run, images_ref, label_chains)
    if resume:
        if not tune.Tuner.can_restore(str(storage / run)):
            raise ExperimentDirError(
                f"{storage / run}: no Tune state to resume (the run stopped before Tune saved "
                "it): start the run again in a new folder")
        # Members that failed for good stay failed (the scheduler leaves them out): restarted
        # at their old generation they would complete barriers the others have passed.
        tuner = tune.Tuner.restore(str(storage / run), trainable=trainable)
    else:
        dump_config(experiment, out_dir / "config.yaml")
        # The logs' paths are relative to the experiment (out_dir/tune/<run>): Tune restores
        # the scheduler as built here, and `rpu-ray resume` may find out_dir moved since.
        to_out_dir = Path(os.pardir, os.pardir)
        scheduler = GenerationalPBT(
            experiment.pbt.policy, seed=tuple(seed_words(experiment.seed, run)),
            events_path=to_out_dir / "events.jsonl", results_path=to_out_dir / RESULTS_LOG,
            on_generation=_progress_printer(run) if progress else None,
            hyperparameters=tuned_hyperparameters(experiment.model))
        tuner = tune.Tuner(
            trainable,
            param_space=_param_space(initial_population(experiment, run)),
            tune_config=tune.TuneConfig(scheduler=scheduler, reuse_actors=True,
                                        search_alg=PopulationSearch(scheduler)),
            run_config=tune.RunConfig(
                name=run, storage_path=str(storage), verbose=0,
                checkpoint_config=tune.CheckpointConfig(
                    checkpoint_frequency=1, checkpoint_at_end=True,
                    num_to_keep=experiment.pbt.checkpoints_to_keep,
                    checkpoint_score_attribute="score", checkpoint_score_order="max"),
                failure_config=tune.FailureConfig(max_failures=experiment.pbt.max_failures)))
    grid = tuner.fit()
    return _write_outputs(grid, out_dir, mode, experiment.model.num_models)


def ranked_checkpoints(checkpoints: list[tuple[Path, dict[str, Any]]]
                       ) -> list[tuple[Path, dict[str, Any]]]:
    """Of (member checkpoint folder, the metrics Tune paired with it), those with a finite
    score, best first, each with the result its state scored: `MEMBER_RESULT_FILE` in the
    folder (score, model_scores, member, training_iteration), Tune's metrics only where that
    file is missing (checkpoints of older versions). A folder whose result does not read as
    JSON (a save cut short) is passed over. Ties go to the earliest generation, then the
    lowest member, then the folder name, whatever order Tune lists its trials in."""
    results = []
    for folder, metrics in checkpoints:
        path = folder / MEMBER_RESULT_FILE
        try:
            results.append((folder, json.loads(path.read_text()) if path.exists() else metrics))
        except (OSError, ValueError):
            continue
    return ranked_member_results(results)


def _first_readable(ranked: list[tuple[Path, dict[str, Any]]]
                    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(result, state) of the first checkpoint in `ranked` whose state loads: one whose save
    was cut short fails its checksum, and the next best is taken."""
    for folder, result in ranked:
        try:
            return result, load_checkpoint(folder / MEMBER_STATE_FILE)
        except CheckpointError as err:
            log.warning("passing over an unreadable checkpoint: %s", err)
    return None


def _write_outputs(grid: Any, out_dir: Path, mode: str, num_models: int) -> PBTRunResult:
    """results.csv, the best member and VAE, the plot; the summary of the run."""
    logged = pd.DataFrame(read_jsonl(out_dir / RESULTS_LOG))
    # Compute spent: a generation in flight when the run was killed is trained again on resume.
    model_images = int(logged.images_seen.sum()) * num_models if len(logged) else 0
    # Its results are logged again too (the same ones: members restore their RNG state with
    # their weights); results.csv has one row per member and generation, the last logged, in
    # the order of generation and member (not the order in which results arrived).
    results = (logged.drop_duplicates(["member", "training_iteration"], keep="last")
               .sort_values(["training_iteration", "member"], ignore_index=True)
               if len(logged) else logged)
    results.to_csv(out_dir / "results.csv", index=False)
    # Every checkpoint still on disk: Tune's `best_checkpoints` has been seen to leave out the
    # best one of a member (its checkpoints' pairing with results is not to be relied on), and
    # the scheduler's copy of the best one of the generations before (Tune may have deleted it).
    paired = {Path(checkpoint.path): metrics for result in grid
              for checkpoint, metrics in result.best_checkpoints or []}
    on_disk = {folder for result in grid if result.path is not None
               for folder in Path(result.path).glob("checkpoint_*")}
    on_disk |= {folder for folder in (Path(grid.experiment_path) / BEST_CHECKPOINT_DIR).glob("*")
                if (folder / MEMBER_RESULT_FILE).exists()}
    best = _first_readable(ranked_checkpoints([(folder, paired.get(folder, {}))
                                               for folder in sorted(set(paired) | on_disk)]))
    if best is None:
        raise NoFiniteScoreError(f"{out_dir}: no member produced a finite score and a checkpoint",
                                 model_images)
    metrics, payload = best
    best_score = metrics["score"]
    save_checkpoint(out_dir / "best_member.pt", payload)
    model_index = best_model(metrics["model_scores"])
    export_vae(payload["member"], model_index, out_dir / "best_vae.pt", metadata={
        "mode": mode, "score": best_score, "model_score": metrics["model_scores"][model_index],
        "member": int(metrics["member"]), "generation": int(metrics["training_iteration"]) - 1,
        "hyperparameters": payload["member"]["hyperparameters"]})
    generations = read_events(out_dir, "generation")
    plot_pbt(generations, results, out_dir / "pbt.png")
    return PBTRunResult(
        out_dir=out_dir,
        stop_reason=generations[-1]["stop_reason"] if generations else None,
        best_score=float(best_score), best_member=int(metrics["member"]),
        best_generation=int(metrics["training_iteration"]) - 1,
        generations=len(generations), num_errors=grid.num_errors, model_images=model_images)


def run_pbt_locally(experiment: ExperimentConfig, dataset: Dataset, mode: str,
                    out_dir: str | Path, run: str = "pbt", progress: bool = True,
                    device: str | None = None, label_chains: list[LabelChain] | None = None
                    ) -> PBTRunResult:
    """`run_pbt` without Ray: `rpu_ray.population.run_local_pbt` in this process, with the
    same outputs (no `tune/`; an interrupted run cannot be resumed, it starts again)."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    dump_config(experiment, out_dir / "config.yaml")
    printer = _progress_printer(run) if progress else None

    def log_generation(summary: dict[str, Any]) -> None:
        event = {"event": "generation", "time": time.time(),
                 **{k: v if v != -math.inf else None for k, v in summary.items()}}
        append_jsonl(out_dir / "events.jsonl", [json.dumps(event)])
        if printer is not None:
            printer(summary)

    result = run_local_pbt(experiment, dataset, mode, run=run, device=device,
                           label_chains=label_chains, on_generation=log_generation)
    append_jsonl(out_dir / "events.jsonl", (json.dumps(d.to_dict()) for d in result.decisions))
    results = pd.DataFrame(result.results)
    results.to_csv(out_dir / "results.csv", index=False)
    state = result.best_member.state_dict()
    save_checkpoint(out_dir / "best_member.pt", {"member": state,
                                                 "member_index": result.best_member_index})
    model_index = best_model(result.best_model_scores)
    export_vae(state, model_index, out_dir / "best_vae.pt", metadata={
        "mode": mode, "score": result.best_score,
        "model_score": result.best_model_scores[model_index],
        "member": result.best_member_index, "generation": result.best_generation,
        "hyperparameters": result.best_member.hyperparameters})
    plot_pbt(read_events(out_dir, "generation"), results, out_dir / "pbt.png")
    return PBTRunResult(
        out_dir=out_dir, stop_reason=result.stop_reason, best_score=result.best_score,
        best_member=result.best_member_index, best_generation=result.best_generation,
        generations=len(result.generations), num_errors=0, model_images=result.model_images)


def plot_pbt(generations: list[dict[str, Any]], results: pd.DataFrame, path: Path) -> None:
    """Best and median score per generation, and the best member's hyperparameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The tuned hyperparameters only (`tuned_hyperparameters`: beta for beta-(TC)VAE alone).
    names = [name for name in HYPERPARAMETERS
             if any(name in g["best_hparams"] for g in generations)]
    fig, grid = plt.subplots(1, 1 + len(names), figsize=(4 * (1 + len(names)), 3.2),
                             squeeze=False)
    axes = grid[0]
    x = [g["generation"] for g in generations]
    for key, style in (("best_score", "-o"), ("median_score", "--")):
        axes[0].plot(x, [np.nan if g[key] is None else g[key] for g in generations], style,
                     label=key.replace("_", " "))
    axes[0].set(title="score", xlabel="generation")
    axes[0].legend()
    for ax, name in zip(axes[1:], names, strict=True):
        ax.plot(x, [g["best_hparams"].get(name, np.nan) for g in generations], "-o", label="best")
        if name in results:
            per_generation = results.groupby("training_iteration")[name].median()
            ax.plot(per_generation.index - 1, per_generation.values, ":", label="median")
        ax.set(title=name, xlabel="generation", yscale="log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ----------------------------------------------------------------------------- rPU-VAE


@dataclass(frozen=True)
class DatasetHandle:
    """A data set whose images are one object-store entry, shipped to actors and tasks.

    Passing a `Dataset` to a Ray actor or task serialises its images again; a handle carries
    the reference instead, so an rPU-VAE run keeps one copy of the images in the object store
    however many PBT runs (and subsets) it starts.
    """

    images: Any  # ray.ObjectRef to the uint8 (N, C, H, W) storage
    factors: np.ndarray | None
    factor_names: tuple[str, ...]
    factor_sizes: tuple[int, ...]
    source: str
    indices: np.ndarray | None

    @classmethod
    def put(cls, dataset: Dataset) -> DatasetHandle:
        import ray

        return cls(ray.put(dataset.images), dataset.factors, dataset.factor_names,
                   dataset.factor_sizes, dataset.source, dataset.indices)

    def of(self, dataset: Dataset) -> DatasetHandle:
        """The handle of `dataset`, a subset of this handle's data set."""
        return dataclasses.replace(self, indices=dataset.indices)

    def get(self) -> Dataset:
        import ray

        return Dataset(ray.get(self.images), self.factors, self.factor_names, self.factor_sizes,
                       self.source, self.indices)


def _run_pbt_task(experiment: ExperimentConfig, data: DatasetHandle, mode: str, out_dir: Path,
                  run: str, resume: bool, progress: bool,
                  label_chains: list[LabelChain] | None) -> PBTRunResult:
    """`run_pbt` as a Ray task: each PBT run has its own process, so runs can overlap."""
    return run_pbt(experiment, data.get(), mode, out_dir, run=run, resume=resume,
                   progress=progress, images_ref=data.images, label_chains=label_chains)


class PBTExecutor(Protocol):
    """How the rPU-VAE driver runs one PBT experiment (a metaEpoch or the final run).

    `run` writes the outputs of `run_pbt` to `out_dir` (at least `best_vae.pt`) and returns its
    summary; `can_resume` says whether `out_dir` holds an interrupted run of that name that
    `run(..., resume=True)` continues; `concurrent`: whether runs may overlap (leaf-runs).
    """

    concurrent: bool

    def run(self, experiment: ExperimentConfig, dataset: Dataset, mode: str, out_dir: Path,
            run: str, resume: bool, label_chains: list[LabelChain] | None = None
            ) -> PBTRunResult: ...

    def can_resume(self, out_dir: Path, run: str) -> bool: ...


@dataclass(frozen=True)
class RayExecutor:
    """PBT on Ray Tune, each run in its own Ray task named for the dashboard (`pbt:leaf1-2`);
    runs overlap, and an interrupted one resumes from Tune's checkpoints."""

    data: DatasetHandle
    progress: bool = True
    concurrent: bool = True

    def run(self, experiment: ExperimentConfig, dataset: Dataset, mode: str, out_dir: Path,
            run: str, resume: bool, label_chains: list[LabelChain] | None = None
            ) -> PBTRunResult:
        import ray

        task = ray.remote(num_cpus=0, max_retries=0)(_run_pbt_task).options(name=f"pbt:{run}")
        return ray.get(task.remote(experiment, self.data.of(dataset), mode, out_dir, run,
                                   resume, self.progress, label_chains))

    def can_resume(self, out_dir: Path, run: str) -> bool:
        from ray import tune

        return tune.Tuner.can_restore(str(out_dir / "tune" / run))


@dataclass(frozen=True)
class LocalExecutor:
    """PBT in this process without Ray (`run_pbt_locally`): one run after the other, on one
    device; an interrupted run starts again (finished metaEpochs are still kept)."""

    device: str | None = None
    progress: bool = True
    concurrent: bool = False

    def run(self, experiment: ExperimentConfig, dataset: Dataset, mode: str, out_dir: Path,
            run: str, resume: bool, label_chains: list[LabelChain] | None = None
            ) -> PBTRunResult:
        if resume:
            raise ValueError(f"{out_dir}: a local PBT run cannot be resumed")
        return run_pbt_locally(experiment, dataset, mode, out_dir, run=run,
                               progress=self.progress, device=self.device,
                               label_chains=label_chains)

    def can_resume(self, out_dir: Path, run: str) -> bool:
        return False


EVENTS_FILE = "events.jsonl"


def _write_json_atomically(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


class RPUDriver:
    """Algorithm 1 of the paper: x-run, leaf-runs of recursive metaEpochs, final model.

    Every step is recorded in `OUT/state.json` (written atomically) and `OUT/events.jsonl`
    (append-only) as soon as it finishes, and every metaEpoch is one PBT run in
    `OUT/metaepochs/<key>/` (`x`, `leaf1-1`, `leaf1-2`, ...). Running the driver again on the
    same directory (`rpu-ray resume`) skips what is done, resumes the PBT run in flight if the
    executor can (Ray: `Tuner.restore`) and recomputes only the pure, cheap steps (reductions).

    Outputs besides: `labels/leaf-<i>.npz` (the surrogate-label tree of each leaf-run,
    `rpu_ray.labels`), `final/` (the final PBT-S-VAE run), `final_model.pt`, `metrics.json`.

    The PBT runs go to `executor`: `RayExecutor` on a cluster (`RayRPUDriver`, the actor of
    `rpu-ray run`), `LocalExecutor` in one process without Ray (`benchmarks/replicate.py`).

    With `evaluate_final` (default) and ground-truth factors, the final model is evaluated
    with the paper's protocol into `metrics.json`; callers that evaluate it their own way
    (the replication, with its budget's points) skip that.
    """

    def __init__(self, out_dir: str | Path, experiment: ExperimentConfig, dataset: Dataset,
                 executor: PBTExecutor, progress: bool = True, evaluate_final: bool = True
                 ) -> None:
        if dataset.indices is not None:
            # Surrogate labels record storage positions, and the final run scores members on
            # the whole storage: a subset view would label and score other images.
            raise ValueError(f"{dataset.source}: rPU-VAE needs a data set with storage of its "
                             "own, not a subset view (use dataset.standalone())")
        self.out_dir = Path(out_dir).resolve()
        self.evaluate_final = evaluate_final
        self.experiment = experiment
        self.dataset = dataset
        self.executor = executor
        self.progress = progress
        self.state: dict[str, Any] = (read_state(self.out_dir) or
                                      {"phase": "x-run", "metaepochs": {}, "leaf_runs": {}})
        # Leaf-runs run in threads of this actor; they share `state` and the event log.
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ bookkeeping

    def _update(self, *path: str, value: Any) -> None:
        """Set state[path] = value and write the state file, atomically w.r.t. other threads."""
        with self._lock:
            target = self.state
            for key in path[:-1]:
                target = target.setdefault(key, {})
            target[path[-1]] = value
            _write_json_atomically(self.out_dir / STATE_FILE, self.state)

    def _event(self, kind: str, **fields: Any) -> None:
        event = {"event": kind, "time": time.time(), **fields}
        with self._lock:
            append_jsonl(self.out_dir / EVENTS_FILE, [json.dumps(event)])
        if self.progress:
            details = ", ".join(f"{k}={v}" for k, v in fields.items())
            print(f"[rpu-ray] {kind}: {details}", flush=True)

    def status(self) -> dict[str, Any]:
        """The current state (what `rpu-ray status` shows); safe to call while running."""
        with self._lock:
            return json.loads(json.dumps(self.state))

    # ------------------------------------------------------------------ the algorithm

    def run(self) -> dict[str, Any]:
        """Run (or continue) the whole algorithm; returns the final state."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        root = self._x_run()
        if root is not None:
            self._update("phase", value="leaf-runs")
            leaves = range(1, self.experiment.rpu.leaf_runs + 1)
            workers = (self.experiment.rpu.max_concurrent_leaf_runs or len(leaves) or 1
                       if self.executor.concurrent else 1)
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="leaf-run") as pool:
                # list(): re-raise the first leaf-run error here
                list(pool.map(lambda leaf: self._leaf_run(leaf, root), leaves))
            self._update("phase", value="final")
            self._final_run()
        self._update("phase", value="done")
        self._event("done", final_model=self.state.get("final", {}).get("model"))
        return self.status()

    def _metaepoch(self, key: str, dataset: Dataset, generation_images: int) -> dict[str, Any]:
        """One PBT-U-VAE run on `dataset` until convergence, then labelling with its best VAE.

        Returns its state record; status "no_finite_score" when every member diverged (nothing
        to label: the caller ends the leaf-run, as the paper does when all members score below
        the threshold)."""
        records = self.state["metaepochs"]
        if records.get(key, {}).get("status") in ("done", NO_FINITE_SCORE):
            return records[key]
        directory = self.out_dir / "metaepochs" / key
        resume = key in records and self.executor.can_resume(directory, key)
        if not resume:
            # A start that was killed before Tune saved its state left nothing to resume;
            # its partial logs must not mix with the new run's.
            shutil.rmtree(directory, ignore_errors=True)
        self._update("metaepochs", key, value={"status": "running", "size": len(dataset)})
        self._event("metaepoch_started", key=key, images=len(dataset), resume=resume)
        experiment = dataclasses.replace(
            self.experiment,
            train=dataclasses.replace(self.experiment.train, generation_images=generation_images))
        try:
            result = self.executor.run(experiment, dataset, "udr", directory, key, resume)
        except NoFiniteScoreError as err:
            self._update("metaepochs", key, value={"status": NO_FINITE_SCORE,
                                                   "size": len(dataset), "error": str(err),
                                                   "model_images": err.model_images})
            self._event("metaepoch_done", key=key, stop_reason=NO_FINITE_SCORE)
            return records[key]
        level, kl, truth = self._label(directory / "best_vae.pt", dataset)
        save_label_level(directory / "labels.npz", level)
        record = {
            "status": "done", "size": len(dataset), "best_score": result.best_score,
            "generations": result.generations, "stop_reason": result.stop_reason,
            "model_images": result.model_images,
            "active_latents": level.latents.tolist(), "kl": kl.tolist(),
            # Relative to the run's folder, which may be moved between sessions.
            "model": str((directory / "best_vae.pt").relative_to(self.out_dir)),
        }
        if truth is not None:
            record["ground_truth"] = truth
        self._update("metaepochs", key, value=record)
        # stop_reason "max_generations": cut off by the cap before converging; its best VAE
        # still labels (docs/design.md, "Leaf-run rules beyond the authors' code").
        self._event("metaepoch_done", key=key, best_score=round(result.best_score, 4),
                    generations=result.generations, stop_reason=result.stop_reason,
                    active_latents=level.latents.tolist(),
                    **({"labels": truth["labels"]} if truth else {}))
        return records[key]

    def _label(self, model_path: Path, dataset: Dataset
               ) -> tuple[LabelLevel, np.ndarray, dict[str, Any] | None]:
        """Surrogate labels: encoder means of the active latents of the best VAE on `dataset`;
        with known factors also how the labels match them (`label_ground_truth`)."""
        model, _ = load_vae(model_path)
        mu, logsigma = encode_images(model, dataset.all_images())
        kl = per_latent_kl(mu[0], logsigma[0], self.experiment.eval.kl)
        active = active_latents(kl, self.experiment.rpu.reduction.active_threshold(
            self.experiment.eval.kl))
        level = LabelLevel(dataset.storage_indices().astype(np.int64), mu[0][:, active], active)
        truth = None
        if dataset.has_factors:
            sample = evaluation_positions(len(dataset), self.experiment.eval.mig_points,
                                          self.experiment.eval.score_seed)
            truth = label_ground_truth(mu[0][sample], active, dataset.batch_factors(sample),
                                       dataset.factor_names, self.experiment.eval.mig_bins)
        return level, kl, truth

    def _x_run(self) -> LabelLevel | None:
        """metaEpoch 0 on the whole data set; its labels are the root of every leaf-run."""
        record = self._metaepoch("x", self.dataset, self.experiment.train.generation_images)
        if record["status"] == NO_FINITE_SCORE:
            reason = "no member of the x-run has a finite score (all diverged)"
        elif not record["active_latents"]:
            reason = "no active latent after the x-run: nothing to label"
        else:
            return load_label_level(self.out_dir / "metaepochs" / "x" / "labels.npz")
        self._update("stop_reason", value=reason)
        self._event("stopped", reason=reason)
        return None

    def _leaf_run(self, leaf: int, root: LabelLevel) -> None:
        """One chain of reductions and metaEpochs, starting from root interval `leaf`."""
        if self.state["leaf_runs"].get(str(leaf), {}).get("status") == "done":
            return
        rpu = self.experiment.rpu
        levels, current, labels = [root], self.dataset, root.labels
        steps: list[dict[str, Any]] = []
        stop = "max_depth"
        for depth in range(1, rpu.max_depth + 1):
            reduction = reduce(labels, choice=leaf - 1 if depth == 1 else 0,
                               config=rpu.reduction, root=depth == 1)
            steps.append({"depth": depth, "reduction": reduction.as_dict()})
            if not reduction.ok:
                stop = reduction.stop_reason
                break
            current = current.subset(reduction.indices)
            key = f"leaf{leaf}-{depth}"
            steps[-1]["metaepoch"] = key
            budget = rpu.leaf_generation_images or max(10_000, len(current))
            self._update("leaf_runs", str(leaf),
                         value={"status": "running", "depth": depth, "steps": list(steps)})
            record = self._metaepoch(key, current, budget)
            if record["status"] == NO_FINITE_SCORE:
                stop = NO_FINITE_SCORE
                break
            # The authors' end condition (spec 5.2): the PBT run stopped because a
            # generation's best score fell below the threshold, whatever it scored before.
            if record["stop_reason"] == "below_min_score":
                stop = "below_min_score"
                break
            if not record["active_latents"]:
                stop = "no_active_latent"
                break
            level = load_label_level(self.out_dir / "metaepochs" / key / "labels.npz")
            levels.append(level)
            labels = level.labels
        tree = LeafRunLabels(leaf, levels)
        tree.save(self.out_dir / "labels" / f"leaf-{leaf}.npz")
        self._update("leaf_runs", str(leaf), value={
            "status": "done", "stop_reason": stop, "levels": len(levels), "steps": steps,
            "labels": f"labels/leaf-{leaf}.npz"})
        self._event("leaf_run_done", leaf=leaf, levels=len(levels), stop_reason=stop)

    def _final_run(self) -> None:
        """PBT-S-VAE on all images, scored by leaf-MIG on the surrogate labels (spec 5.6)."""
        if self.state.get("final", {}).get("status") == "done":
            return
        rpu, pbt = self.experiment.rpu, self.experiment.pbt
        chains = [LeafRunLabels.load(self.out_dir / "labels" / f"leaf-{leaf}.npz").to_payload()
                  for leaf in range(1, rpu.leaf_runs + 1)]
        if not chains:  # no leaf-run: the root labels alone
            root = load_label_level(self.out_dir / "metaepochs" / "x" / "labels.npz")
            chains = [[(root.indices, root.labels)]]
        policy = dataclasses.replace(pbt.policy, convergence_patience=None, min_score=None,
                                     max_generations=rpu.final_generations,
                                     big_init_population_factor=rpu.final_big_init_factor)
        experiment = dataclasses.replace(
            self.experiment,
            model=dataclasses.replace(self.experiment.model, num_models=rpu.final_num_models),
            pbt=dataclasses.replace(pbt, population=rpu.final_population or pbt.population,
                                    policy=policy))
        directory = self.out_dir / "final"
        resume = "final" in self.state and self.executor.can_resume(directory, "final")
        if not resume:
            shutil.rmtree(directory, ignore_errors=True)
        self._update("final", value={"status": "running"})
        self._event("final_run_started", leaf_runs=len(chains), resume=resume)
        result = self.executor.run(experiment, self.dataset, "leafmig", directory, "final",
                                   resume, label_chains=chains)
        model_path = self.out_dir / "final_model.pt"
        save_checkpoint(model_path, load_checkpoint(directory / "best_vae.pt"))
        final = {"status": "done", "leaf_mig": result.best_score,
                 "generations": result.generations, "model_images": result.model_images,
                 "model": model_path.name}
        if self.dataset.has_factors and self.evaluate_final:
            model, _ = load_vae(model_path)
            metrics = evaluate_model(model, self.dataset.all_images(), self.dataset.all_factors(),
                                     seed=self.experiment.eval.score_seed,
                                     num_bins=self.experiment.eval.mig_bins,
                                     mig_points=min(10_000, len(self.dataset)),
                                     dci_mode=self.experiment.eval.dci_mode)
            metrics["factor_names"] = list(self.dataset.factor_names)
            _write_json_atomically(self.out_dir / "metrics.json", metrics)
            final["mig"] = metrics["mig"]
        self._update("final", value=final)
        self._event("final_run_done", leaf_mig=round(result.best_score, 4), mig=final.get("mig"))


class RayRPUDriver(RPUDriver):
    """The driver as a Ray actor (`rpu-ray run`): it receives the data set as an object-store
    handle, and runs every PBT run as a Ray task (`RayExecutor`)."""

    def __init__(self, out_dir: str | Path, experiment: ExperimentConfig, data: DatasetHandle,
                 progress: bool = True) -> None:
        super().__init__(out_dir, experiment, data.get(), RayExecutor(data, progress), progress)


def model_images(state: dict[str, Any]) -> int:
    """The compute of an rPU-VAE run (its `state.json`): images trained on, summed over all
    VAEs of every metaEpoch and of the final run."""
    runs = [*state.get("metaepochs", {}).values(), state.get("final", {})]
    return sum(run.get("model_images", 0) for run in runs)


def save_label_level(path: Path, level: LabelLevel) -> None:
    """One metaEpoch's labels (a one-level chain file, leaf 0)."""
    LeafRunLabels(0, [level]).save(path)


def load_label_level(path: Path) -> LabelLevel:
    return LeafRunLabels.load(path).levels[0]
