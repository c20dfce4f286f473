"""Scaled replications of the paper's comparisons, without Ray (runs where only PyTorch is).

Experiments (the paper's figures; every method of one experiment gets the same budget C in
model-images per run, i.e. per final model):

  fig1a  PBT-S-VAE scored by MIG vs scored by DCI disentanglement (Fig. 1a);
  fig1b  semi-supervised PBT-S-VAE on `labels` labelled images vs model selection by MIG on the
         same number of labels vs Locatello et al.'s semi-supervised beta-TCVAE on the same
         labels vs supervised PBT-S-VAE (Fig. 1b);
  fig4   the unsupervised baselines of Locatello et al. (beta-VAE, beta-TCVAE, AnnealedVAE,
         FactorVAE, DIP-VAE-I/II) vs PBT-U-VAE (UDR) vs rPU-VAE vs supervised PBT-S-VAE
         (Fig. 4);
  fig6   rPU-VAE with 0, 1, 2 and 3 leaf-runs (Fig. 6).

PBT runs use `rpu_ray.population.run_local_pbt` (the policy of `rpu-ray pbt`, in one process):
population P of M VAEs, G generations of I images: C = P * M * G * I (PBT-S-VAE: P * M members
of one VAE). The final model of a PBT run is the best VAE (by its own score) of the best member
over all generations, as `rpu-ray pbt` exports it.

rPU-VAE runs the driver of `rpu-ray run` (`rpu_ray.driver.RPUDriver`) with the in-process
executor: an x-run, K leaf-runs of at most D metaEpochs, each a PBT-U-VAE of P members of M
VAEs for at most G_r generations, and the final PBT-S-VAE (leaf-MIG) of P single VAEs in its
first generation and the best P' = max(2, P // 2) of them in the G_f - 1 others. Its compute
is split as the authors split theirs: a leaf-run metaEpoch trains a fixed I_l images a
generation (the authors' 10,000 against their x-run's 480,000), and the x-run and the final
run train I_r, chosen so that the run spends at most C when nothing stops early:
I_r = (C - K * D * G_r * P * M * I_l) / (G_r * P * M + P + (G_f - 1) * P'). The final model
has trained G_f * I_r images, the x-run's VAEs G_r * I_r. Runs stop early (a leaf-run ends
when its reduction finds nothing to cut), so the model-images column, the compute actually
spent, can be lower. If the x-run leaves no active latent, there is no label and no final
run: the x-run's best VAE is the final model (column `rpu_stop` says so). Column `x_labels`
reports the factor each of the x-run's surrogate labels shares the most information with
(`rpu_ray.evaluation.label_ground_truth`; the algorithm never sees it), `leaf_labels` the same
for every leaf-run metaEpoch with the size of its subset (`leaf1-1 (45): scale`; `-`: no
active latent). Columns `mig_<factor>` are the final model's MIG of each factor: column `mig`
is their mean.

A baseline run trains 2 VAEs (UDR compares them) of one hyperparameter value from Locatello et
al.'s grid for C / 2 images each; both VAEs are rows. With n seeds per method the values are
spread over the grid (seed i takes value floor((i + 0.5) * 6 / n), so 2 seeds take the second
and fifth, 6 seeds all six). Baselines train at lr 1e-3 (batch 64), not the study's 1e-4: its
300,000 steps are far beyond these budgets. Every method uses the budget's architecture
(disentanglement_lib's by default, the study's). Model selection trains the beta-TCVAE grid
(6 values x 2 VAEs) for C / 12 images each and keeps the VAE with the best MIG on `labels`
labels. Every final model is evaluated with the paper's protocol (MIG, DCI, SAP;
`rpu_ray.evaluation.evaluate_model`).

Locatello et al.'s semi-supervised baseline (`rpu_ray.baseline.train_semi_supervised`) is a
baseline run of beta-TCVAE with gamma_sup = 4 times the "xent" regulariser on the same `labels`
labelled images as the other Fig. 1b methods.

Outputs in --out (default ./replication): runs.csv (one row per final model: experiment,
method, dataset, seed, budget, mig, dci_*, sap, udr, wall_s, model_images), summary.md (mean
and std per method) and one box plot per experiment (<experiment>.png). Without
--experiment, all four run. The data are 32 px procedural dSprites (`Budget.subsample`), or
Shapes3D with --dataset shapes3d (`SHAPES3D_SUBSAMPLE`).

    python benchmarks/replicate.py --smoke               # CPU, minutes; the test suite runs it
    python benchmarks/replicate.py --budget cpu --experiment fig4   # 2 CPU cores: ~75 minutes
    python benchmarks/replicate.py --budget gpu --experiment fig4   # one H100: unmeasured,
                                                                    # over several calls

runs.csv is rewritten after every run, and a replication into a folder that has one skips the
runs it holds: an interrupted run continues, and one can be split over several calls.
`--scale k` multiplies C (every method's images per generation); `--leaf-scale k` gives
rPU-VAE's leaf-runs k times more images per generation at the same C (its x-run and final
run get less).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from rpu_ray import data
from rpu_ray.baseline import GRIDS, select_by_labels, train_baseline, train_semi_supervised
from rpu_ray.config import ExperimentConfig, load_config
from rpu_ray.driver import LocalExecutor, RPUDriver
from rpu_ray.driver import model_images as driver_model_images
from rpu_ray.evaluation import evaluate_model, mig_columns
from rpu_ray.export import load_vae
from rpu_ray.population import run_local_pbt

EXPERIMENTS = ("fig1a", "fig1b", "fig4", "fig6")
METRICS = ("mig", "dci_disentanglement", "dci_completeness", "dci_informativeness_test", "sap")


@dataclasses.dataclass(frozen=True)
class Budget:
    """Sizes of one replication: data, PBT population and training, evaluation points."""

    image_size: int
    subsample: tuple[int, ...] | None
    population: int
    num_models: int
    generations: int
    generation_images: int
    seeds: int
    labels: int
    eval_points: tuple[int, int, int]
    dci_mode: str
    udr_points: int
    score_points: int
    # PBT's initial grids (a small population cannot afford the authors' lr 1e-5..1).
    lr_grid: tuple[float, ...] = (1e-3, 2e-3)
    batch_size_grid: tuple[int, ...] = (32, 64)
    beta_grid: tuple[float, ...] = (4, 6, 8)
    # PBT's explore bounds (min, max; None: the policy's, the authors' whole range). UDR
    # favours a larger beta (fewer active latents): unbounded, a few generations take beta
    # from 8 to 58 (benchmarks/RESULTS.md, Demo).
    lr_bounds: tuple[float, float] | None = None
    batch_size_bounds: tuple[int, int] | None = None
    beta_bounds: tuple[float, float] | None = None
    # Every method's architecture ("dlib": Locatello et al.'s, whose baselines these are; the
    # authors' learns far slower at these budgets, benchmarks/RESULTS.md, Replication).
    arch: str = "dlib"
    # rPU-VAE: leaf-runs K (fig4), metaEpochs per leaf-run D, generations per metaEpoch G_r and
    # of the final run G_f, images per generation of a leaf-run metaEpoch; the active-latent KL
    # threshold (None: the default, for trained models).
    leaf_runs: int = 2
    max_depth: int = 2
    rpu_generations: int = 2
    final_generations: int = 2
    leaf_generation_images: int = 1000
    active_kl_threshold: float | None = None
    # UDR's KL filter (eval.udr_kl_threshold) of every method. disentanglement_lib's
    # 0.01 assumes trained models; after short training the unused latents (KL 0.05-0.2) enter
    # UDR and it no longer ranks VAEs by disentanglement (benchmarks/RESULTS.md, Demo).
    udr_kl_threshold: float = 0.01

    @property
    def model_images(self) -> int:
        """C: model-images per run of every method."""
        return self.population * self.num_models * self.generations * self.generation_images

    def rpu_generation_images(self, leaf_runs: int) -> int:
        """I_r: images per generation of the x-run and the final run of an rPU-VAE run with
        `leaf_runs` leaf-runs, so that it spends at most C.

        As the authors allocate: leaf-run metaEpochs train a fixed `leaf_generation_images` a
        generation (theirs max(10,000, |d|), 2 % of their x-run's 480,000: subsets of a few
        thousand images need far fewer), and the final run starts with one single VAE per
        x-run member (P) and keeps the best half after its first generation (theirs 56 -> 28).
        """
        vaes = self.population * self.num_models
        leaves = leaf_runs * self.max_depth * self.rpu_generations * vaes
        rest = self.model_images - leaves * self.leaf_generation_images
        # `survivors_after_first_generation` keeps max(2, P // 2).
        final = self.population + (self.final_generations - 1) * max(2, self.population // 2)
        images = rest // (vaes * self.rpu_generations + final)
        if images < 2:
            raise ValueError(f"the leaf-runs alone spend the budget C = {self.model_images}")
        return images


BUDGETS = {
    # 960 images of 32 px (1 shape, 3 scales, 5 orientations, 8 x 8 positions): seconds a run.
    # rPU-VAE: 1 generation per metaEpoch, 1 metaEpoch per leaf-run, a low active-latent
    # threshold: enough for its models, trained for seconds, to label something.
    "smoke": Budget(32, (3, 2, 8, 4, 4), population=4, num_models=2, generations=2,
                    generation_images=1000, seeds=2, labels=100, eval_points=(300, 300, 150),
                    dci_mode="fast", udr_points=100, score_points=300, max_depth=1,
                    rpu_generations=1, final_generations=1, leaf_generation_images=400,
                    active_kl_threshold=0.01),
    # 11,520 images of 32 px (3 shapes, 3 scales, 5 orientations, 16 x 16 positions); 480,000
    # model-images per run, 2-3 minutes a run on 2 CPU cores. A beta-TCVAE (dlib architecture,
    # beta 6, lr 1e-3) reaches MIG 0.12 / 0.23 / 0.31 after 21k / 92k / 191k images here
    # (benchmarks/learning_curve.py): at this C, a baseline VAE sees 240k, a PBT-U-VAE VAE 60k.
    "cpu": Budget(32, (1, 2, 8, 2, 2), population=4, num_models=2, generations=3,
                  generation_images=20_000, seeds=3, labels=1000,
                  eval_points=(5_000, 5_000, 2_500), dci_mode="fast", udr_points=500,
                  score_points=2_000, lr_grid=(1e-3, 2e-3), batch_size_grid=(64,),
                  beta_grid=(4, 6, 8), lr_bounds=(5e-4, 4e-3), batch_size_bounds=(32, 128),
                  beta_bounds=(2, 16), max_depth=1, rpu_generations=3, final_generations=3,
                  leaf_generation_images=2_000, udr_kl_threshold=0.3),
}
# The cpu budget's data at 8 times its C (3,840,000 model-images per run), three seeds:
# the first doubling of the cpu budget at which rPU-VAE's x-run VAEs (288,000 images)
# reach the reduction's floor (>= 200,000) and its leaf-run VAEs (48,000) learn a new
# factor on the reduced subsets (>= 20,000-40,000), as measured with
# benchmarks/learning_curve.py (RESULTS.md, "What rPU-VAE's reduction and leaf-runs
# need"). On CPU, rPU-VAE's mean MIG went from 0.21 at C = 1.92 M to 0.37 here. Members
# of 2 VAEs as measured (the paper's 5 would need 2.5 times the images for the same
# training per VAE). fig4 (27 runs, 104 M model-images) fits one 10-minute device call
# only above ~175,000 model-images/s (unmeasured); benchmarks/gpu_session.sh runs the
# PBT methods first and carries runs.csv over calls.
BUDGETS["gpu"] = dataclasses.replace(BUDGETS["cpu"], generation_images=160_000,
                                     leaf_generation_images=16_000)
# `Budget.subsample` are dSprites' strides. Shapes3D's (floor, wall and object hue, scale,
# shape, orientation) per budget give a grid of the same order of size: 960 images at smoke
# size, 10,000 at cpu and gpu size.
SHAPES3D_SUBSAMPLE = {"smoke": (5, 5, 2, 2, 1, 5), "cpu": (2, 2, 2, 2, 1, 3),
                      "gpu": (2, 2, 2, 2, 1, 3)}


def _bounds(budget: Budget) -> list[str]:
    """The `--set` overrides of the budget's explore bounds."""
    bounds = {"lr": budget.lr_bounds, "batch_size": budget.batch_size_bounds,
              "beta": budget.beta_bounds}
    return [f"pbt.policy.{name}_{end}={value}" for name, pair in bounds.items() if pair
            for end, value in zip(("min", "max"), pair, strict=True)]


def _config(budget: Budget, seed: int, num_models: int, extra: list[str]) -> ExperimentConfig:
    return load_config(overrides=[
        f"model.arch={budget.arch}", *_bounds(budget),
        f"seed={seed}", f"pbt.population={budget.population}",
        f"model.num_models={num_models}", f"train.generation_images={budget.generation_images}",
        f"pbt.policy.max_generations={budget.generations}", "pbt.policy.min_score=",
        "pbt.policy.convergence_patience=", f"eval.udr_points={budget.udr_points}",
        f"pbt.policy.lr_grid={list(budget.lr_grid)}",
        f"pbt.policy.batch_size_grid={list(budget.batch_size_grid)}",
        f"pbt.policy.beta_grid={list(budget.beta_grid)}",
        f"eval.mig_points={budget.score_points}", f"eval.dci_mode={budget.dci_mode}",
        f"eval.udr_kl_threshold={budget.udr_kl_threshold}", *extra])


def _evaluate(model: Any, index: int, dataset: data.Dataset, budget: Budget, seed: int
              ) -> dict[str, float]:
    mig_points, dci_train, dci_test = budget.eval_points
    metrics = evaluate_model(model, dataset.all_images(), dataset.all_factors(), seed=seed,
                             mig_points=mig_points, dci_train=dci_train, dci_test=dci_test,
                             dci_mode=budget.dci_mode, model_index=index)
    return {"mig": metrics["mig"], **mig_columns(metrics, dataset.factor_names),
            "dci_disentanglement": metrics["dci"]["disentanglement"],
            "dci_completeness": metrics["dci"]["completeness"],
            "dci_informativeness_test": metrics["dci"]["informativeness_test"],
            "sap": metrics["sap"]}


def pbt_run(mode: str, dataset: data.Dataset, budget: Budget, seed: int, device: str,
            labels: int | None = None) -> dict[str, Any]:
    """One PBT-S-VAE (mode mig/dci) or PBT-U-VAE (udr) run; its final model's evaluation."""
    # PBT-S-VAE members are single VAEs (as the paper's); a population M times larger spends
    # the same budget as PBT-U-VAE's members of M VAEs.
    num_models = budget.num_models if mode == "udr" else 1
    extra = [f"pbt.population={budget.population * budget.num_models // num_models}"]
    extra += [f"eval.labels={labels}"] if labels else []
    config = _config(budget, seed, num_models, extra)
    result = run_local_pbt(config, dataset, mode, run=f"{mode}-{seed}", device=device)
    index = int(np.argmax(result.best_model_scores))
    return {**_evaluate(result.best_member.model, index, dataset, budget, seed),
            "udr": result.best_score if mode == "udr" else np.nan,
            "model_images": result.model_images, "wall_s": result.seconds}


def rpu_run(dataset: data.Dataset, budget: Budget, seed: int, device: str,
            leaf_runs: int | None = None) -> dict[str, Any]:
    """rPU-VAE (x-run, `leaf_runs` leaf-runs, final model) at most C model-images; the final
    model's evaluation (the x-run's best VAE if the x-run found nothing to label)."""
    leaf_runs = budget.leaf_runs if leaf_runs is None else leaf_runs
    images = budget.rpu_generation_images(leaf_runs)
    threshold = ([f"rpu.reduction.active_kl_threshold={budget.active_kl_threshold}"]
                 if budget.active_kl_threshold is not None else [])
    config = _config(budget, seed, budget.num_models, [
        f"train.generation_images={images}",
        f"rpu.leaf_generation_images={budget.leaf_generation_images}",
        f"pbt.policy.max_generations={budget.rpu_generations}", f"rpu.leaf_runs={leaf_runs}",
        f"rpu.max_depth={budget.max_depth}", f"rpu.final_generations={budget.final_generations}",
        f"rpu.final_population={budget.population}", "rpu.final_big_init_factor=2",
        *threshold])
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="rpu-replicate-") as out:
        state = RPUDriver(out, config, dataset, LocalExecutor(device, progress=False),
                          progress=False, evaluate_final=False).run()
        # state.json names model files relative to the run's folder.
        final = state.get("final", {}).get("model") or state["metaepochs"]["x"]["model"]
        model, _ = load_vae(Path(out) / final, device)
    def labelled(key: str) -> str:
        return labelled_factors(state["metaepochs"][key].get("ground_truth", {}))

    deeper = sorted(key for key, record in state["metaepochs"].items()
                    if key != "x" and record.get("status") == "done")
    return {**_evaluate(model, 0, dataset, budget, seed),
            "udr": state["metaepochs"]["x"]["best_score"], "leaf_runs": leaf_runs,
            "x_labels": labelled("x"),
            "leaf_labels": "; ".join(
                f"{key} ({state['metaepochs'][key]['size']}): {labelled(key) or '-'}"
                for key in deeper),
            "rpu_stop": state.get("stop_reason", ""),
            "metaepochs": len(state["metaepochs"]), "model_images": driver_model_images(state),
            "wall_s": time.time() - started}


def labelled_factors(ground_truth: dict[str, Any]) -> str:
    """The factor each surrogate label shares the most information with, space-separated
    ("" for none), from `rpu_ray.evaluation.label_ground_truth`'s result."""
    return " ".join(factor for factor, _ in ground_truth.get("labels", {}).values())


def grid_value(model: str, seed: int, seeds: int) -> float:
    """The baseline value of run `seed` of `seeds`: spread evenly over the study's grid."""
    values = GRIDS[model].values
    return values[int((seed % seeds + 0.5) * len(values) / seeds) % len(values)]


def baseline_run(model: str, dataset: data.Dataset, budget: Budget, seed: int, device: str,
                 seeds: int = 1, semi_supervised: bool = False) -> list[dict[str, Any]]:
    """Two VAEs of one hyperparameter value (`grid_value`), C / 2 images each; with
    `semi_supervised`, Locatello et al.'s semi-supervised version on `budget.labels` labels."""
    value = grid_value(model, seed, seeds)
    options = {"seeds": 2, "images": budget.model_images // 2, "lr": 1e-3, "seed": seed,
               "arch": budget.arch,
               "device": device, "eval_points": budget.eval_points, "dci_mode": budget.dci_mode,
               "udr_points": budget.udr_points, "udr_kl_threshold": budget.udr_kl_threshold}
    _, rows = (train_semi_supervised(dataset, model, value, labels=budget.labels, **options)
               if semi_supervised else train_baseline(dataset, model, value, **options))
    # train_baseline evaluates each VAE as `_evaluate` does (same seed, points and mode).
    return [{**{k: v for k, v in row.items() if k in METRICS or k.startswith("mig_")},
             "udr": row["udr"], "value": value,
             "model_images": 2 * row["model_images"], "wall_s": row["wall_s"]} for row in rows]


def model_selection_run(dataset: data.Dataset, budget: Budget, seed: int, device: str
                        ) -> dict[str, Any]:
    """The beta-TCVAE grid, 2 VAEs per value, C / 12 images each; the best MIG on labels."""
    started = time.time()
    values = GRIDS["betatcvae"].values
    trained = [train_baseline(dataset, "betatcvae", value, seeds=2,
                              images=budget.model_images // (2 * len(values)), lr=1e-3,
                              arch=budget.arch, seed=seed, device=device,
                              eval_points=budget.eval_points, dci_mode=budget.dci_mode,
                              udr_points=budget.udr_points, evaluate=False)
               for value in values]
    members = [member for member, _ in trained]
    position, index, _ = select_by_labels(members, dataset, budget.labels, seed=seed)
    return {**_evaluate(members[position].model, index, dataset, budget, seed),
            "udr": np.nan, "value": values[position],
            "model_images": sum(row["model_images"] for _, rows in trained for row in rows),
            "wall_s": time.time() - started}


def methods(experiment: str, budget: Budget, seeds: int | None = None
            ) -> dict[str, Callable[..., Any]]:
    """Method name -> run(dataset, budget, seed, device) returning one row or a list of rows.
    `seeds`: runs per method (default: the budget's), over which baseline values spread."""
    seeds = seeds or budget.seeds
    if experiment == "fig1a":
        return {"PBT-S-VAE (MIG)": functools.partial(pbt_run, "mig"),
                "PBT-S-VAE (DCI)": functools.partial(pbt_run, "dci")}
    if experiment == "fig1b":
        return {f"{budget.labels}-PBT-S-VAE": functools.partial(pbt_run, "mig",
                                                                labels=budget.labels),
                f"model selection ({budget.labels} labels)": model_selection_run,
                f"Locatello et al. ({budget.labels} labels)": functools.partial(
                    baseline_run, "betatcvae", seeds=seeds, semi_supervised=True),
                "PBT-S-VAE": functools.partial(pbt_run, "mig")}
    if experiment == "fig4":
        baselines = {name: functools.partial(baseline_run, name, seeds=seeds) for name in GRIDS}
        return {**baselines, "PBT-U-VAE": functools.partial(pbt_run, "udr"), "rPU-VAE": rpu_run,
                "PBT-S-VAE": functools.partial(pbt_run, "mig")}
    if experiment == "fig6":
        return {f"rPU-VAE, {k} leaf-runs": functools.partial(rpu_run, leaf_runs=k)
                for k in range(4)}
    raise ValueError(f"unknown experiment {experiment!r}; known: {', '.join(EXPERIMENTS)}")


def scaled_budget(budget_name: str, scale: int = 1, leaf_scale: int = 1) -> tuple[Budget, str]:
    """The budget `budget_name` with `scale` times the images per generation of every PBT run
    (C for every method alike; rPU-VAE's split unchanged) and `leaf_scale` times more again
    for rPU-VAE's leaf-runs (its x-run and final run get less of C); and its table label."""
    if scale < 1 or leaf_scale < 1:
        raise ValueError(f"scale and leaf_scale must be >= 1, got {scale} and {leaf_scale}")
    budget = BUDGETS[budget_name]
    budget = dataclasses.replace(
        budget, generation_images=budget.generation_images * scale,
        leaf_generation_images=budget.leaf_generation_images * scale * leaf_scale)
    label = (budget_name + (f" x{scale}" if scale > 1 else "")
             + (f" leaf x{leaf_scale}" if leaf_scale > 1 else ""))
    return budget, label


def replicate(experiments: list[str], budget_name: str, dataset_name: str, out: Path,
              device: str, seeds: int | None = None, scale: int = 1,
              only: list[str] | None = None, leaf_scale: int = 1) -> pd.DataFrame:
    """Runs the experiments; writes runs.csv, summary.md and the box plots to `out`.

    `scale` and `leaf_scale` as in `scaled_budget`; `only` restricts the methods to
    these names. runs.csv is rewritten after every run, and the runs it already holds are not
    run again: an interrupted replication continues where it stopped, and one can be split
    over several invocations (e.g. `--method`), as long as budget, data set and seeds are the
    same (`budget_id`).
    """
    budget, label = scaled_budget(budget_name, scale, leaf_scale)
    seeds = seeds or budget.seeds
    fingerprint = budget_id(budget, seeds)
    rows = _previous_runs(out / "runs.csv", {"budget": label, "dataset": dataset_name,
                                             "budget_id": fingerprint})
    done = {(row["experiment"], row["method"], row["seed"]) for row in rows}
    strides = SHAPES3D_SUBSAMPLE[budget_name] if dataset_name == "shapes3d" else budget.subsample
    dataset = data.load(dataset_name, image_size=budget.image_size,
                        subsample=list(strides) if strides else None)
    out.mkdir(parents=True, exist_ok=True)
    for experiment in experiments:
        for method, run in methods(experiment, budget, seeds).items():
            if only and method not in only:
                continue
            for seed in range(seeds):
                if (experiment, method, seed) in done:
                    print(f"{experiment} {method} seed {seed}: in runs.csv already", flush=True)
                    continue
                result = run(dataset, budget, seed, device)
                new_rows = result if isinstance(result, list) else [result]
                rows += [{"experiment": experiment, "method": method, "dataset": dataset_name,
                          "seed": seed, "budget": label, "budget_id": fingerprint, **row}
                         for row in new_rows]
                _write_csv_atomically(pd.DataFrame(rows), out / "runs.csv")
                migs = ", ".join(f"{row['mig']:.3f}" for row in new_rows)
                so_far = [r["mig"] for r in rows if r["method"] == method]
                print(f"{experiment} {method} seed {seed}: MIG {migs} (mean of the method so "
                      f"far {np.nanmean(so_far):.3f})", flush=True)
    table = pd.DataFrame(rows)
    (out / "summary.md").write_text(summary_markdown(table))
    for experiment in table.experiment.unique():
        runs = table[table.experiment == experiment]
        # The paper's order of the methods, not the order in which they ran.
        rank = {name: i for i, name in enumerate(methods(experiment, budget, seeds))}
        order = np.argsort([rank.get(name, len(rank)) for name in runs.method], kind="stable")
        plot(runs.iloc[order], out / f"{experiment}.png",
             f"{experiment}, {dataset_name}, budget {label}")
    return table


def budget_id(budget: Budget, seeds: int) -> str:
    """A fingerprint of every size of a replication and its number of seeds (which spreads
    the baselines' values over their grid): rows of one runs.csv must share it."""
    text = json.dumps({**dataclasses.asdict(budget), "seeds": seeds}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _previous_runs(path: Path, expected: dict[str, str]) -> list[dict[str, Any]]:
    """The rows of an earlier runs.csv in the output folder, which must have the `expected`
    value in each of these columns (the rows of one table are comparable)."""
    if not path.exists():
        return []
    table = pd.read_csv(path)
    for column, value in expected.items():
        found = set(table[column].astype(str)) - {value} if column in table else {"none"}
        if found:
            raise SystemExit(f"{path}: holds runs of another {column} "
                             f"({', '.join(sorted(found))}, not {value}); choose another --out")
    return table.to_dict("records")


def _write_csv_atomically(table: pd.DataFrame, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    table.to_csv(temporary, index=False)
    os.replace(temporary, path)


def summary_markdown(table: pd.DataFrame) -> str:
    """Mean and standard deviation of MIG and DCI disentanglement per method, as a table."""
    lines = ["| experiment | method | final models | MIG mean | MIG std | DCI D mean | DCI D std |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for (experiment, method), group in table.groupby(["experiment", "method"], sort=False):
        mig, dci = group.mig.dropna(), group.dci_disentanglement.dropna()
        lines.append(f"| {experiment} | {method} | {len(group)} | {mig.mean():.3f} | "
                     f"{mig.std():.3f} | {dci.mean():.3f} | {dci.std():.3f} |")
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, path: Path, title: str) -> None:
    """Box plots of MIG and DCI disentanglement per method (in the order of the rows), as the
    paper's figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(table.method))
    figure, axes = plt.subplots(1, 2, figsize=(2 + 1.1 * len(names), 4), sharey=True)
    for axis, column, label in zip(axes, ("mig", "dci_disentanglement"),
                                   ("MIG", "DCI disentanglement"), strict=True):
        groups = [table[table.method == n][column].dropna().to_numpy() for n in names]
        axis.boxplot(groups, showmeans=True)
        axis.set_xticks(range(1, len(names) + 1), names, rotation=40, ha="right", fontsize=8)
        axis.set_title(label)
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", choices=EXPERIMENTS, action="append",
                        help="repeatable; default: all")
    parser.add_argument("--budget", choices=list(BUDGETS),
                        help="required unless --smoke (cpu: hours on 2 cores for all of fig4)")
    parser.add_argument("--smoke", action="store_true", help="--budget smoke")
    parser.add_argument("--dataset", default="dsprites", choices=("dsprites", "shapes3d"))
    parser.add_argument("--seeds", type=int, help="runs per method (default: the budget's)")
    parser.add_argument("--scale", type=int, default=1,
                        help="multiply the budget C of every method (images per generation)")
    parser.add_argument("--leaf-scale", type=int, default=1,
                        help="multiply rPU-VAE's leaf-run images per generation again (its "
                             "x-run and final run get less of C)")
    parser.add_argument("--method", action="append",
                        help="run only this method (repeatable; names as in summary.md)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("replication"),
                        help="output folder (default ./replication)")
    args = parser.parse_args()
    if not (args.smoke or args.budget):
        parser.error("choose a size: --smoke, --budget cpu or --budget gpu")
    table = replicate(args.experiment or list(EXPERIMENTS),
                      "smoke" if args.smoke else args.budget, args.dataset, args.out,
                      args.device, args.seeds, args.scale, args.method, args.leaf_scale)
    print((args.out / "summary.md").read_text())
    print(f"{len(table)} final models; wrote {args.out}/runs.csv, summary.md and the plots")


if __name__ == "__main__":
    main()
