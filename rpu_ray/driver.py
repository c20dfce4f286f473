"""Orchestration on Ray: the only core module that imports Ray Tune.

`run_pbt` runs one population-based training experiment (PBT-U-VAE scored by UDR, or
PBT-S-VAE scored by MIG/DCI) on the current Ray cluster and writes its outputs:

    OUT/config.yaml            the fully resolved configuration
    OUT/events.jsonl           one line per generation and per exploit/explore decision
    OUT/results.csv            every result of every member and generation
    OUT/best_member.pt         the best member snapshot over all generations
    OUT/best_vae.pt            its best single VAE (by per-model score), `rpu_ray.export`
    OUT/pbt.png                best/median score and the best member's hyperparameters
    OUT/tune/<run>/            Ray Tune's experiment (trial checkpoints, restore state)

`run_pbt(..., resume=True)` continues an interrupted experiment with `Tuner.restore`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rpu_ray.checkpoint import load_checkpoint, save_checkpoint
from rpu_ray.config import ExperimentConfig, dump_config, to_dict
from rpu_ray.data import Dataset
from rpu_ray.evaluation import LabelChain, best_model
from rpu_ray.export import export_vae
from rpu_ray.pbt import initial_hyperparameters

log = logging.getLogger(__name__)

MODES = ("udr", "mig", "dci", "leafmig")


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


def _seed_words(seed: int, run: str) -> list[int]:
    return [seed, *run.encode()]


def initial_population(experiment: ExperimentConfig, run: str) -> list[dict[str, float]]:
    """The population's initial hyperparameters, drawn from the policy's grids with the seed."""
    rng = np.random.default_rng(np.random.SeedSequence(_seed_words(experiment.seed, run)))
    policy = experiment.pbt.policy
    return [initial_hyperparameters(policy, rng) for _ in range(experiment.pbt.population)]


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
    return tune.with_resources(trainable, resources)


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

    from schedulers.generational_pbt import GenerationalPBT

    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "udr" and experiment.model.num_models < 2:
        raise ValueError("UDR compares the VAEs of a member: model.num_models must be >= 2")
    if mode == "leafmig" and not label_chains:
        raise ValueError("mode 'leafmig' needs the surrogate-label chains of the leaf-runs")
    if mode in ("mig", "dci") and not dataset.has_factors:
        raise ValueError(f"mode {mode!r} scores members on labels, but {dataset.source} has none")
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
            raise FileNotFoundError(f"{storage / run}: no Tune experiment to resume")
        tuner = tune.Tuner.restore(str(storage / run), trainable=trainable, resume_errored=True)
    else:
        dump_config(experiment, out_dir / "config.yaml")
        scheduler = GenerationalPBT(
            experiment.pbt.policy, seed=tuple(_seed_words(experiment.seed, run)),
            events_path=out_dir / "events.jsonl",
            on_generation=_progress_printer(run) if progress else None)
        tuner = tune.Tuner(
            trainable,
            param_space=_param_space(initial_population(experiment, run)),
            tune_config=tune.TuneConfig(scheduler=scheduler, reuse_actors=True),
            run_config=tune.RunConfig(
                name=run, storage_path=str(storage), verbose=0,
                checkpoint_config=tune.CheckpointConfig(
                    checkpoint_frequency=1, checkpoint_at_end=True,
                    num_to_keep=experiment.pbt.checkpoints_to_keep,
                    checkpoint_score_attribute="score", checkpoint_score_order="max"),
                failure_config=tune.FailureConfig(max_failures=experiment.pbt.max_failures)))
    grid = tuner.fit()
    return _write_outputs(grid, out_dir, mode)


def _write_outputs(grid: Any, out_dir: Path, mode: str) -> PBTRunResult:
    """results.csv, the best member and VAE, the plot; the summary of the run."""
    frames = [r.metrics_dataframe.assign(trial_id=r.metrics.get("trial_id"))
              for r in grid if r.metrics_dataframe is not None]
    results = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    results.to_csv(out_dir / "results.csv", index=False)
    best_score, best = -math.inf, None
    for result in grid:
        for checkpoint, metrics in result.best_checkpoints or []:
            score = metrics.get("score", -math.inf)
            if score is not None and score > best_score:
                best_score, best = score, (checkpoint, metrics)
    if best is None:
        raise RuntimeError(f"{out_dir}: no member produced a finite score and a checkpoint")
    checkpoint, metrics = best
    payload = load_checkpoint(Path(checkpoint.path) / "member.pt")
    save_checkpoint(out_dir / "best_member.pt", payload)
    model_index = best_model(metrics["model_scores"])
    export_vae(payload["member"], model_index, out_dir / "best_vae.pt", metadata={
        "mode": mode, "score": best_score, "model_score": metrics["model_scores"][model_index],
        "member": int(metrics["member"]), "generation": int(metrics["training_iteration"]) - 1,
        "hyperparameters": payload["member"]["hyperparameters"]})
    generations = _events(out_dir / "events.jsonl", "generation")
    plot_pbt(generations, results, out_dir / "pbt.png")
    return PBTRunResult(
        out_dir=out_dir,
        stop_reason=generations[-1]["stop_reason"] if generations else None,
        best_score=float(best_score), best_member=int(metrics["member"]),
        best_generation=int(metrics["training_iteration"]) - 1,
        generations=len(generations), num_errors=grid.num_errors)


def _events(path: Path, kind: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open() as f:
        return [e for e in map(json.loads, f) if e.get("event") == kind]


def plot_pbt(generations: list[dict[str, Any]], results: pd.DataFrame, path: Path) -> None:
    """Best and median score per generation, and the best member's hyperparameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.2))
    x = [g["generation"] for g in generations]
    for key, style in (("best_score", "-o"), ("median_score", "--")):
        axes[0].plot(x, [np.nan if g[key] is None else g[key] for g in generations], style,
                     label=key.replace("_", " "))
    axes[0].set(title="score", xlabel="generation")
    axes[0].legend()
    for ax, name in zip(axes[1:], ("lr", "batch_size", "beta"), strict=True):
        ax.plot(x, [g["best_hparams"].get(name, np.nan) for g in generations], "-o", label="best")
        if name in results:
            per_generation = results.groupby("training_iteration")[name].median()
            ax.plot(per_generation.index - 1, per_generation.values, ":", label="median")
        ax.set(title=name, xlabel="generation", yscale="log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
