"""Fixed-hyperparameter baselines, as in Locatello et al. (2019)'s unsupervised study, and the
paper's "model selection" baseline.

A baseline run trains `seeds` VAEs of one objective with one hyperparameter value, as one fused
member of the engine (one VAE per seed: independent initial weights; they share the minibatch
order, as the VAEs of a PBT member do), for a fixed image budget, then evaluates every VAE with
the paper's protocol (`rpu_ray.evaluation.evaluate_model`: MIG, DCI, SAP) and the seeds against
each other with UDR. Locatello et al. train each setting 300,000 steps at batch 64 with Adam at
lr 1e-4; those are the defaults of `train_baseline`, the budget is the caller's. Objective
constants not swept take the objective's defaults (`VAELoss.defaults`), except AnnealedVAE's
iteration_threshold, which scales with the budget: the capacity reaches c_max after a third of
the steps, as in the study.

Model selection (the paper's Fig. 1b baseline): of a set of trained VAEs, the one with the best
MIG on `labels` labelled images (a fixed random subset, drawn once for all candidates) is
selected; its full evaluation is what the baseline reports.

Semi-supervised training (the paper's other Fig. 1b baseline, Locatello, Tschannen et al., ICLR
2020, "Disentangling Factors of Variation Using Few Labels"): `train_semi_supervised` trains the
same objectives with gamma_sup times a supervised regulariser on `labels` labelled images added
to every model's loss (`rpu_ray.models.supervised`, `rpu_ray.engine.LabelledSet`). The labelled
images are the first `labels` of RandomState(seed).permutation(N), the very images on which
`select_by_labels` and the semi-supervised PBT-S-VAE score models, so the three Fig. 1b methods
see the same labels. disentanglement_lib draws its labelled points with their own seed instead
and keeps 10 % of them for validation (`train_percentage = 0.9`); here all of them train, since
the evaluation uses the ground truth of the whole data set anyway.

gamma_sup: disentanglement_lib's semi-supervised test configuration uses 4 with the "xent"
regulariser (`config/tests/methods/semi_supervised/train_test.gin`); that is our default,
`GAMMA_SUP`. The study's own gamma_sup grid is not among disentanglement_lib's published
configurations (google-research/disentanglement_lib has no semi-supervised study sweep), so
`GAMMA_SUP_GRID` = {1, 4} is taken from a fork's sweep on the same code (jasonmhwu's
`config/active_learning_study_v4/sweep.py`: {1, 4} for the semi-supervised beta-VAE and
beta-TCVAE, {10, 50} for FactorVAE and DIP-VAE-I), not from the paper.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from rpu_ray.config import EvalConfig
from rpu_ray.data import Dataset
from rpu_ray.engine import LabelledSet, Member
from rpu_ray.evaluation import (
    encode_images,
    evaluate_model,
    evaluation_positions,
    mig_columns,
    score_udr,
)
from rpu_ray.metrics import mig
from rpu_ray.models import LOSSES

__all__ = [
    "GAMMA_SUP",
    "GAMMA_SUP_GRID",
    "GRIDS",
    "SEMI_SUPERVISED_MODELS",
    "BaselineGrid",
    "budget_chunks",
    "run_baselines",
    "select_by_labels",
    "train_baseline",
    "train_semi_supervised",
]


@dataclass(frozen=True)
class BaselineGrid:
    """One objective's hyperparameter sweep in Locatello et al.'s study.

    Attributes:
      loss: the registered objective (`rpu_ray.models.LOSSES`).
      name: the swept hyperparameter.
      values: the study's values.
      tied: other hyperparameters as functions of the swept value (DIP-VAE's lambda_d) or
        constants (AnnealedVAE's gamma).
    """

    loss: str
    name: str
    values: tuple[float, ...]
    tied: tuple[tuple[str, Callable[[float], float]], ...] = ()

    def hyperparameters(self, value: float) -> dict[str, float]:
        """The objective's hyperparameters for one value of the sweep."""
        return {self.name: float(value), **{k: float(f(value)) for k, f in self.tied}}


GRIDS: dict[str, BaselineGrid] = {
    "betavae": BaselineGrid("betavae", "beta", (1, 2, 4, 6, 8, 16)),
    "betatcvae": BaselineGrid("betatcvae", "beta", (1, 2, 4, 6, 8, 10)),
    "annealedvae": BaselineGrid("annealedvae", "c_max", (5, 10, 25, 50, 75, 100),
                                (("gamma", lambda _: 1000.0),)),
    "factorvae": BaselineGrid("factorvae", "gamma", (10, 20, 30, 40, 50, 100)),
    "dipvae1": BaselineGrid("dipvae1", "lambda_od", (1, 2, 5, 10, 20, 50),
                            (("lambda_d", lambda od: 10.0 * od),)),
    "dipvae2": BaselineGrid("dipvae2", "lambda_od", (1, 2, 5, 10, 20, 50),
                            (("lambda_d", lambda od: od),)),
}


def train_baseline(dataset: Dataset, model: str, value: float, seeds: int, images: int,
                   *, lr: float = 1e-4, batch_size: int = 64, arch: str = "authors",
                   z_dim: int = 10, seed: int = 0, device: str | torch.device = "cpu",
                   eval_points: tuple[int, int, int] = (10_000, 10_000, 5_000),
                   dci_mode: str = "exact", udr_points: int = 1000,
                   udr_kl_threshold: float = 0.01,
                   progress: Callable[[str], None] | None = None, evaluate: bool = True
                   ) -> tuple[Member, list[dict[str, Any]]]:
    """Trains and evaluates one baseline setting; returns the member and one row per seed.

    Args:
      dataset: labelled images (the evaluation needs factors).
      model: a key of `GRIDS`; value: the swept hyperparameter's value (any, not only the
        study's).
      seeds: VAEs trained side by side (at least 2 for UDR).
      images: training images per VAE.
      eval_points: MIG points, DCI/SAP train and test points (`evaluate_model`).
      udr_points, udr_kl_threshold: UDR's points and KL filter (`EvalConfig`).
      progress: called with a line after every tenth of the budget (`budget_chunks`).
      evaluate: False leaves every metric NaN (UDR too), for callers that evaluate only some
        of the VAEs (model selection).

    Each row: model, hparam, value, seed, mig, dci_disentanglement, dci_completeness,
    dci_informativeness_test, sap, udr, model_images, wall_s, diverged.
    """
    if model not in GRIDS:
        raise ValueError(f"unknown baseline model {model!r}; known: {', '.join(GRIDS)}")
    _check_seeds_and_factors(dataset, seeds, "to evaluate on")
    grid = GRIDS[model]
    started = time.time()
    all_images = dataset.all_images()
    member = Member({"lr": lr, "batch_size": batch_size,
                     **_objective_hyperparameters(grid, value, images, batch_size)},
                    num_models=seeds, image_shape=all_images.shape[1:], z_dim=z_dim, arch=arch,
                    loss=grid.loss, seed=seed, device=device)
    tensor = torch.from_numpy(np.ascontiguousarray(all_images)).to(device)
    rows = _train_and_evaluate(member, dataset, tensor, images, f"{model} {grid.name}={value:g}",
                               {"model": model, "hparam": grid.name, "value": float(value)},
                               seed=seed, eval_points=eval_points, dci_mode=dci_mode,
                               udr_points=udr_points, udr_kl_threshold=udr_kl_threshold,
                               progress=progress, started=started, evaluate=evaluate)
    return member, rows


def _check_seeds_and_factors(dataset: Dataset, seeds: int, use: str) -> None:
    """At least two seeds (UDR compares them) and a data set with ground-truth factors."""
    if seeds < 2:
        raise ValueError(f"seeds must be >= 2 (UDR compares the seeds), got {seeds}")
    if not dataset.has_factors:
        raise ValueError(f"{dataset.source} has no ground-truth factors {use}")


def budget_chunks(images: int, batch_size: int, parts: int = 10) -> list[int]:
    """`images` cut into at most `parts` chunks of whole batches (the remainder goes to the last
    one), so that cutting the training for progress lines and divergence checks changes no batch
    size; fewer chunks when there are fewer batches than parts.
    """
    if images < 2:
        raise ValueError(f"images must be >= 2 (a batch needs two images), got {images}")
    batches = images // batch_size
    chunks = [int(b) * batch_size for b in np.diff(np.linspace(0, batches, parts + 1).astype(int))
              if b > 0] or [0]
    chunks[-1] += images - batches * batch_size
    return chunks


def _objective_hyperparameters(grid: BaselineGrid, value: float, images: int, batch_size: int
                               ) -> dict[str, float]:
    """The objective's hyperparameters of one baseline setting (defaults, then the sweep)."""
    hyperparameters = {**LOSSES[grid.loss].defaults, **grid.hyperparameters(value)}
    if "iteration_threshold" in hyperparameters:
        # AnnealedVAE's capacity reaches c_max after a third of the training, as in the study
        # (100,000 of 300,000 steps), whatever the budget.
        hyperparameters["iteration_threshold"] = max(1, images // batch_size // 3)
    return hyperparameters


def _train_and_evaluate(member: Member, dataset: Dataset, tensor: torch.Tensor, images: int,
                        name: str, row: dict[str, Any], *, seed: int,
                        eval_points: tuple[int, int, int], dci_mode: str, udr_points: int,
                        udr_kl_threshold: float, progress: Callable[[str], None] | None,
                        started: float,
                        labelled: LabelledSet | None = None, evaluate: bool = True
                        ) -> list[dict[str, Any]]:
    """Trains `member` on `images` images in tenths (`budget_chunks`), then evaluates each VAE
    (one row each:
    `row`, then seed and the metrics of `train_baseline`; NaN without `evaluate`)."""
    seeds = member.num_models
    all_images = dataset.all_images()
    factors = dataset.all_factors()
    diverged, done = False, 0
    for chunk in budget_chunks(images, member.batch_size_for(len(tensor))):
        stats = member.train(tensor, chunk, labelled)
        done += int(chunk)
        diverged = diverged or bool(stats["diverged"])
        if progress is not None:
            progress(f"{name}: {done}/{images} images, loss "
                     f"{np.mean(stats['loss']):.1f}" + (" (diverged)" if diverged else ""))
        if diverged:
            break
    udr_scores = (np.full(seeds, np.nan) if diverged or not evaluate else np.asarray(score_udr(
        member, tensor, EvalConfig(udr_points=udr_points, score_seed=seed,
                                   udr_kl_threshold=udr_kl_threshold))["model_scores"]))
    mig_points, dci_train, dci_test = eval_points
    rows = []
    for index in range(seeds):
        metrics = ({} if diverged or not evaluate else evaluate_model(
            member.model, all_images, factors, seed=seed, mig_points=mig_points,
            dci_train=dci_train, dci_test=dci_test, dci_mode=dci_mode, model_index=index))
        dci_scores = metrics.get("dci", {})
        rows.append({
            **row, "seed": index,
            "mig": metrics.get("mig", np.nan),
            "dci_disentanglement": dci_scores.get("disentanglement", np.nan),
            "dci_completeness": dci_scores.get("completeness", np.nan),
            "dci_informativeness_test": dci_scores.get("informativeness_test", np.nan),
            "sap": metrics.get("sap", np.nan), "udr": float(udr_scores[index]),
            **(mig_columns(metrics, dataset.factor_names) if metrics else {}),
            "model_images": done, "wall_s": time.time() - started, "diverged": diverged,
        })
    return rows


# The unsupervised objectives of which disentanglement_lib has a semi-supervised version
# (S2BetaVAE, S2BetaTCVAE, S2FactorVAE, S2DIPVAE types i and ii).
SEMI_SUPERVISED_MODELS: tuple[str, ...] = ("betavae", "betatcvae", "factorvae", "dipvae1",
                                           "dipvae2")
GAMMA_SUP = 4.0
GAMMA_SUP_GRID: tuple[float, ...] = (1.0, 4.0)


def train_semi_supervised(dataset: Dataset, model: str, value: float, seeds: int, images: int,
                          *, labels: int = 1000, gamma_sup: float = GAMMA_SUP,
                          supervision: str = "xent", factors: Sequence[int] | None = None,
                          lr: float = 1e-4, batch_size: int = 64, arch: str = "authors",
                          z_dim: int = 10, seed: int = 0, device: str | torch.device = "cpu",
                          eval_points: tuple[int, int, int] = (10_000, 10_000, 5_000),
                          dci_mode: str = "exact", udr_points: int = 1000,
                          udr_kl_threshold: float = 0.01,
                          progress: Callable[[str], None] | None = None
                          ) -> tuple[Member, list[dict[str, Any]]]:
    """Locatello et al. (2020)'s semi-supervised VAE: `train_baseline` plus gamma_sup * R_s on
    `labels` labelled images; returns the member and one row per seed.

    Args:
      dataset: images with factors (the labelled ones and the evaluation use them).
      model: one of `SEMI_SUPERVISED_MODELS` (the unsupervised part); value: its swept
        hyperparameter (`GRIDS[model].name`, e.g. beta).
      seeds, images, lr, batch_size, arch, z_dim, seed, device, eval_points, dci_mode,
        udr_points, udr_kl_threshold, progress: as `train_baseline` (images: unlabelled training
        images per VAE).
      labels: labelled images, the first `labels` of RandomState(seed).permutation(N) (as
        `select_by_labels`); at least 2. 1000 by default, as in the rPU-VAE paper's Fig. 1b.
      gamma_sup: weight of the supervised regulariser (default `GAMMA_SUP`).
      supervision: the regulariser R_s (`rpu_ray.models.supervised.SUPERVISED_LOSSES`); "xent",
        the one of disentanglement_lib's semi-supervised configuration, by default.
      factors: the labelled factors (columns of the data set's factors), supervising latents
        0..len(factors)-1 in that order; default all (disentanglement_lib's perfect labeller).

    Each row: the columns of `train_baseline` plus labels, gamma_sup and supervision.
    """
    if model not in SEMI_SUPERVISED_MODELS:
        raise ValueError(f"no semi-supervised version of {model!r}; known: "
                         f"{', '.join(SEMI_SUPERVISED_MODELS)}")
    _check_seeds_and_factors(dataset, seeds, "to learn from")
    if labels < 2:
        raise ValueError(f"labels must be >= 2, got {labels}")
    columns = list(range(len(dataset.factor_sizes)) if factors is None else factors)
    grid = GRIDS[model]
    started = time.time()
    all_images = dataset.all_images()
    positions = evaluation_positions(len(dataset), labels, seed)
    labelled = LabelledSet.from_arrays(all_images[positions],
                                       dataset.all_factors()[positions][:, columns],
                                       [dataset.factor_sizes[c] for c in columns], device)
    member = Member({"lr": lr, "batch_size": batch_size, "gamma_sup": gamma_sup,
                     **_objective_hyperparameters(grid, value, images, batch_size)},
                    num_models=seeds, image_shape=all_images.shape[1:], z_dim=z_dim, arch=arch,
                    loss=grid.loss, seed=seed, device=device, supervision=supervision)
    tensor = torch.from_numpy(np.ascontiguousarray(all_images)).to(device)
    row = {"model": model, "hparam": grid.name, "value": float(value), "labels": len(labelled),
           "gamma_sup": float(gamma_sup), "supervision": supervision}
    rows = _train_and_evaluate(member, dataset, tensor, images,
                               f"s2 {model} {grid.name}={value:g} gamma_sup={gamma_sup:g}", row,
                               seed=seed, eval_points=eval_points, dci_mode=dci_mode,
                               udr_points=udr_points, udr_kl_threshold=udr_kl_threshold,
                               progress=progress, started=started, labelled=labelled)
    return member, rows


def select_by_labels(members: list[Member], dataset: Dataset, labels: int = 1000, seed: int = 0,
                     num_bins: int = 20) -> tuple[int, int, list[float]]:
    """The paper's model-selection baseline: MIG of every VAE of `members` on the same `labels`
    labelled images (the first `labels` of RandomState(seed).permutation(N)).

    Returns (member position, VAE index within it, every VAE's MIG in member order).
    """
    positions = evaluation_positions(len(dataset), labels, seed)
    images = dataset.all_images()[positions]
    factors = dataset.all_factors()[positions]
    informative = [c for c in range(factors.shape[1]) if len(np.unique(factors[:, c])) > 1]
    scores, owners = [], []
    for m, member in enumerate(members):
        codes = encode_images(member.model, images)[0]
        for index, model_codes in enumerate(codes):
            finite = np.isfinite(model_codes).all()
            scores.append(mig(model_codes, factors[:, informative], num_bins) if finite
                          else -np.inf)
            owners.append((m, index))
    best = int(np.argmax(scores))
    return (*owners[best], [float(s) for s in scores])


def run_baselines(dataset: Dataset, model: str, values: list[float] | None, seeds: int,
                  images: int, out_dir: str | Path, select_labels: int | None = 1000,
                  progress: Callable[[str], None] | None = print, **train_options: Any
                  ) -> pd.DataFrame:
    """`train_baseline` for every value (default: the study's grid) and model selection.

    Writes `baselines.csv` (one row per VAE) and, with `select_labels`, `selection.json` (the
    VAE with the best MIG on that many labels, its label MIG and its full evaluation row) to
    `out_dir`. Returns the table, with a `label_mig` column when selecting.
    """
    members, rows = [], []
    for value in values if values is not None else GRIDS[model].values:
        member, member_rows = train_baseline(dataset, model, value, seeds, images,
                                             progress=progress, **train_options)
        members.append(member)
        rows.extend(member_rows)
    table = pd.DataFrame(rows)
    # Made only now: a bad option or device fails before training without leaving a folder.
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if select_labels is not None:
        position, index, label_migs = select_by_labels(members, dataset, select_labels,
                                                       seed=train_options.get("seed", 0))
        table["label_mig"] = label_migs
        chosen = position * seeds + index
        selection = {"labels": select_labels, "row": int(chosen),
                     **{k: _plain(v) for k, v in table.iloc[chosen].items()}}
        (out / "selection.json").write_text(json.dumps(selection, indent=1) + "\n")
    table.to_csv(out / "baselines.csv", index=False)
    return table


def _plain(value: Any) -> Any:
    """A pandas/numpy scalar as a JSON value (NaN as null)."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and not np.isfinite(value) else value
