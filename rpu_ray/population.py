"""Population members from a config, their scoring, and generational PBT in one process.

The Ray Tune trainable (`trainables.member`) and the in-process executor here build and score
members with the same functions, and both take every decision from the pure policy in
`rpu_ray.pbt`; only the execution differs. `run_local_pbt` trains the members one after the
other on one device, without Ray: for machines where Ray is not installed (the GPU benchmarks
of `benchmarks/replicate.py`), and for small experiments in a notebook. It has none of Tune's
checkpoints, fault tolerance or parallelism; use `rpu-ray pbt` for those.
"""

from __future__ import annotations

import copy
import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rpu_ray.config import ConfigError, EvalConfig, ExperimentConfig, ModelConfig
from rpu_ray.data import Dataset
from rpu_ray.engine import Member
from rpu_ray.evaluation import LabelChain, score_leaf_mig, score_supervised, score_udr
from rpu_ray.models import LOSSES
from rpu_ray.pbt import (
    HYPERPARAMETERS,
    Decision,
    best_score,
    exploit_and_explore,
    generation_rng,
    initial_hyperparameters,
    rank,
    stop_reason,
    survivors_after_first_generation,
)

__all__ = ["MODES", "LocalPBTResult", "NoFiniteScoreError", "build_member", "check_pbt_mode",
           "initial_population", "member_hyperparameters", "member_seed", "run_local_pbt",
           "score_member", "seed_words", "tuned_hyperparameters"]

MODES = ("udr", "mig", "dci", "leafmig")


class NoFiniteScoreError(RuntimeError):
    """A PBT run ended without any member with a finite score (every member diverged or
    failed), so it has no model to export. The rPU-VAE driver ends the leaf-run (or, after the
    x-run, the whole run) instead of failing, as when every member scores below the threshold.

    `model_images`: the images the run trained on all the same (summed over all VAEs), so that
    compute accounting counts them.
    """

    def __init__(self, message: str, model_images: int = 0) -> None:
        super().__init__(message)
        self.model_images = model_images


def check_pbt_mode(experiment: ExperimentConfig, dataset: Dataset, mode: str,
                   label_chains: list[LabelChain] | None = None) -> None:
    """ConfigError (a ValueError) if members of `experiment` cannot be scored by `mode` on
    `dataset`; the commands call it before they start anything."""
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "udr" and experiment.model.num_models < 2:
        raise ConfigError("UDR compares the VAEs of a member: model.num_models must be >= 2")
    if mode in ("mig", "dci") and not dataset.has_factors:
        raise ConfigError(f"mode {mode!r} scores members on labels, but {dataset.source} has "
                          "none")
    if mode == "leafmig" and not label_chains:
        raise ConfigError("mode 'leafmig' needs the surrogate-label chains of the leaf-runs")


def seed_words(seed: int, run: str) -> list[int]:
    """The entropy that identifies one PBT run (experiment seed, run name)."""
    return [seed, *run.encode()]


def member_seed(experiment_seed: int, run: str, member: int) -> int:
    """Seed of a member's initial weights and data order, from the experiment seed only."""
    words = [experiment_seed, member, *run.encode()]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def tuned_hyperparameters(model: ModelConfig) -> tuple[str, ...]:
    """The hyperparameters PBT tunes for `model`: lr, batch size and the objective's
    per-member ones, those without a fixed default (beta of beta-VAE and beta-TCVAE; the other
    objectives have none, so PBT neither draws nor perturbs a beta they would ignore)."""
    loss = LOSSES[model.loss]
    fixed = loss.fixed_hyperparameters(model.loss_hyperparameters)
    return ("lr", "batch_size", *(name for name in loss.hyperparameters if name not in fixed))


def initial_population(experiment: ExperimentConfig, run: str) -> list[dict[str, float]]:
    """The population's initial hyperparameters, drawn from the policy's grids with the seed
    (each member draws all three, so that lr and batch size do not depend on the objective)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed_words(experiment.seed, run)))
    policy = experiment.pbt.policy
    tuned = tuned_hyperparameters(experiment.model)
    return [{name: value for name, value in initial_hyperparameters(policy, rng).items()
             if name in tuned} for _ in range(experiment.pbt.population)]


def member_hyperparameters(experiment: ExperimentConfig, config: dict[str, Any]
                           ) -> dict[str, float]:
    """A member's hyperparameters: the tuned ones (`tuned_hyperparameters`) from its PBT
    `config`, the objective's fixed ones from the experiment (`model.loss_hyperparameters` over
    the objective's defaults)."""
    model = experiment.model
    fixed = LOSSES[model.loss].fixed_hyperparameters(model.loss_hyperparameters)
    return {**{name: config[name] for name in tuned_hyperparameters(model)}, **fixed}


def build_member(experiment: ExperimentConfig, config: dict[str, Any], member: int, run: str,
                 image_shape: tuple[int, ...], device: torch.device) -> Member:
    """A fresh member: `config` holds its hyperparameters; weights seeded by (seed, run, id)."""
    return Member(
        member_hyperparameters(experiment, config),
        num_models=experiment.model.num_models,
        image_shape=image_shape,
        z_dim=experiment.model.z_dim,
        arch=experiment.model.arch,
        loss=experiment.model.loss,
        seed=member_seed(experiment.seed, run, member),
        device=device,
        bf16=experiment.train.amp and device.type == "cuda",
        channels_last=experiment.train.channels_last and device.type == "cuda",
    )


def score_member(member: Member, stats: dict[str, Any], images: torch.Tensor, mode: str,
                 config: EvalConfig, factors: np.ndarray | None = None,
                 label_chains: list[LabelChain] | None = None) -> dict[str, Any]:
    """The PBT score of a member after a generation (`stats`: what `Member.train` returned).

    A diverged member, or one whose score is not finite, gets -inf: ranked last, replaced at the
    next exploit, and never kept as a "best" checkpoint (NaN would not order).
    """
    if stats["diverged"]:
        nan = float("nan")
        evaluation: dict[str, Any] = {"score": nan, "model_scores": [nan] * member.num_models}
    elif mode == "udr":
        evaluation = score_udr(member, images, config)
    elif mode == "leafmig":
        evaluation = score_leaf_mig(member, images, label_chains, config)
    else:
        evaluation = score_supervised(member, images, factors, config, metric=mode)
    if not np.isfinite(evaluation["score"]):
        evaluation["score"] = -np.inf
    return evaluation


@dataclass
class LocalPBTResult:
    """What `run_local_pbt` returns.

    Attributes:
      generations: one dict per generation (generation, best_score, median_score, population,
        best_member, best_hparams, stop_reason, seconds), as the Ray scheduler's events.
      decisions: every exploit/explore decision, in order.
      best_member: the member with the best score over all generations, as it was then (the
        Ray executor's choice too: its best checkpoint).
      best_score: its score.
      best_model_scores: its per-model scores (for choosing its best VAE).
      best_member_index, best_generation: which member it was, and when.
      stop_reason: why the run stopped ("below_min_score", "converged", "max_generations").
      model_images: images trained on, summed over all VAEs of all members.
      seconds: wall time of the run.
      results: one dict per member and generation (generation, training_iteration, member,
        score, diverged, images_seen and the member's hyperparameters), as results.csv.
    """

    generations: list[dict[str, Any]]
    decisions: list[Decision]
    best_member: Member
    best_score: float
    best_model_scores: list[float]
    best_member_index: int
    best_generation: int
    stop_reason: str
    model_images: int
    seconds: float
    results: list[dict[str, Any]] = field(default_factory=list)


def run_local_pbt(experiment: ExperimentConfig, dataset: Dataset, mode: str, run: str = "local",
                  device: str | torch.device | None = None,
                  label_chains: list[LabelChain] | None = None,
                  on_generation: Callable[[dict[str, Any]], None] | None = None
                  ) -> LocalPBTResult:
    """Generational PBT of `experiment.pbt` on `dataset`, in this process.

    The same rules as `rpu-ray pbt` (`schedulers.generational_pbt`): members trained for
    `train.generation_images` per generation, scored by `mode`, then the generation's stop rules,
    the big-initial-population cut after generation 0, and exploit/explore. Initial
    hyperparameters, member seeds, decisions and clone seeds come from the same seeds as the Ray
    executor's, so both start from the same population and follow the same rules (whether the
    two give bit-identical runs on one device has not been tested).

    Raises RuntimeError when no member ever had a finite score (all diverged), as `run_pbt`.

    Args:
      mode: "udr", "mig", "dci" (labels: `dataset.factors`) or "leafmig" (`label_chains`).
      device: where members train; default: CUDA if available, else the CPU.
      on_generation: called with each generation's summary (progress output).
    """
    check_pbt_mode(experiment, dataset, mode, label_chains)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    started = time.time()
    images = torch.from_numpy(np.ascontiguousarray(dataset.all_images())).to(device)
    factors = dataset.all_factors() if dataset.has_factors else None
    policy, seed = experiment.pbt.policy, tuple(seed_words(experiment.seed, run))
    configs = {str(i): dict(h) for i, h in enumerate(initial_population(experiment, run))}
    members = {i: build_member(experiment, c, int(i), run, tuple(images.shape[1:]), device)
               for i, c in configs.items()}
    generations: list[dict[str, Any]] = []
    decisions: list[Decision] = []
    results: list[dict[str, Any]] = []
    best_scores: list[float] = []
    # The best (score, member, generation, config, state, model scores) so far; a member's
    # state is copied when it sets a record, since it trains on (or is replaced) afterwards.
    record: tuple[float, str, int, dict[str, Any], dict[str, Any], list[float]] | None = None
    model_images = 0
    for generation in itertools.count():
        tick = time.time()
        scores, evaluations = {}, {}
        for i, member in members.items():
            stats = member.train(images, experiment.train.generation_images)
            model_images += stats["images_seen"] * member.num_models
            evaluations[i] = score_member(member, stats, images, mode, experiment.eval,
                                          factors, label_chains)
            scores[i] = evaluations[i]["score"]
            results.append({"generation": generation, "training_iteration": generation + 1,
                            "member": int(i), "score": scores[i], "diverged": stats["diverged"],
                            "images_seen": stats["images_seen"], **member.hyperparameters})
        if generation == 0 and policy.big_init_population_factor > 1:
            keep = survivors_after_first_generation(scores, policy)
            members = {i: members[i] for i in keep}
            scores = {i: scores[i] for i in keep}
        best_scores.append(best_score(scores))
        reason = stop_reason(best_scores, policy)
        ranking = rank(scores)
        best = ranking[0]
        if record is None or scores[best] > record[0]:
            record = (scores[best], best, generation, dict(configs[best]),
                      copy.deepcopy(members[best].state_dict()),
                      list(evaluations[best]["model_scores"]))
        summary = {
            "generation": generation, "best_score": best_scores[-1],
            "median_score": statistics.median(scores.values()), "population": len(scores),
            "best_member": int(best),
            "best_hparams": {k: configs[best][k] for k in HYPERPARAMETERS if k in configs[best]},
            "stop_reason": reason, "seconds": time.time() - tick,
            "filtered_latents": evaluations[best].get("filtered_latents"),
        }
        generations.append(summary)
        if on_generation is not None:
            on_generation(summary)
        if reason is not None:
            score, index, when, config, state, model_scores = record
            if not np.isfinite(score):
                raise NoFiniteScoreError(f"PBT run {run!r}: no member produced a finite "
                                         f"score in {generation + 1} generations (all diverged)",
                                         model_images)
            best_member = build_member(experiment, config, int(index), run,
                                       tuple(images.shape[1:]), device)
            best_member.load_state_dict(state)
            return LocalPBTResult(generations, decisions, best_member, float(score),
                                  model_scores, int(index), when, reason, model_images,
                                  time.time() - started, results)
        hparams = {i: {k: configs[i][k] for k in HYPERPARAMETERS if k in configs[i]}
                   for i in scores}
        chosen = exploit_and_explore(scores, hparams, policy, generation_rng(seed, generation),
                                     generation=generation, seed=seed)
        donors = {d.donor: copy.deepcopy(members[d.donor].state_dict()) for d in chosen}
        for decision in chosen:
            clone = members[decision.member]
            clone.load_state_dict(donors[decision.donor])
            configs[decision.member] = {**configs[decision.donor], **decision.new_hparams}
            clone.set_hyperparameters(**member_hyperparameters(experiment,
                                                               configs[decision.member]))
            clone.generator.manual_seed(decision.seed)
        decisions.extend(chosen)
