"""Generational PBT in one process (rpu_ray.population.run_local_pbt): no Ray involved."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rpu_ray import data
from rpu_ray.config import load_config
from rpu_ray.driver import plot_pbt, run_pbt_locally
from rpu_ray.pbt import quantile_size
from rpu_ray.population import (
    NoFiniteScoreError,
    initial_population,
    member_hyperparameters,
    run_local_pbt,
    score_member,
    tuned_hyperparameters,
)

SMALL = ["train.generation_images=200", "pbt.policy.max_generations=3", "eval.udr_points=100",
         "pbt.policy.min_score="]


def _config(overrides: list[str]):
    return load_config(preset_name="smoke", overrides=[*SMALL, *overrides])


def _dataset(config):
    return data.load("dsprites", image_size=32, subsample=config.data.subsample)


def test_diverged_members_are_replaced_by_perturbed_clones() -> None:
    # lr 1e6 makes a member diverge (NaN loss) in its first generation.
    overrides = ["pbt.policy.lr_max=1e6", "pbt.policy.lr_grid=[1e-3, 1e6]"]
    seed = next(s for s in range(50) if 1 <= [m["lr"] for m in initial_population(
        _config([*overrides, f"seed={s}"]), "local")].count(1e6) <= 2)
    config = _config([*overrides, f"seed={seed}"])
    result = run_local_pbt(config, _dataset(config), "udr", device="cpu")

    assert result.stop_reason == "max_generations" and len(result.generations) == 3
    results = pd.DataFrame(result.results)
    first = results[results.generation == 0].sort_values("member")
    # The same initial population as the Ray executor draws for a run of that name.
    assert first.lr.tolist() == [m["lr"] for m in initial_population(config, "local")]
    diverged = set(first.member[first.diverged])
    assert diverged and (first.score[first.diverged] == -math.inf).all()
    # Each generation but the last replaces the bottom ceil(0.2 n) (here 1); at generation 0
    # those are diverged members, cloned from a finite one with explored hyperparameters.
    assert [d.generation for d in result.decisions] == [0, 1]
    assert len(result.decisions) == 2 * quantile_size(4, config.pbt.policy)
    clone = result.decisions[0]
    assert int(clone.member) in diverged and int(clone.donor) not in diverged
    assert clone.member_score is None and math.isfinite(clone.donor_score)
    later = results[(results.generation == 1) & (results.member == int(clone.member))].iloc[0]
    assert later.lr == pytest.approx(clone.new_hparams["lr"]) and later.lr < 1e6
    assert later.lr == pytest.approx(clone.donor_hparams["lr"] * clone.factors["lr"])
    assert np.isfinite(later.score) and not later.diverged
    # The best member is the best over all generations (as the Ray executor's best checkpoint),
    # restored as it was then: scoring it again gives its score.
    top = results.loc[results.score.idxmax()]
    assert result.best_score == pytest.approx(top.score)
    assert (result.best_member_index, result.best_generation) == (top.member, top.generation)
    assert result.best_score == pytest.approx(np.mean(result.best_model_scores))
    images = torch.from_numpy(_dataset(config).all_images())
    again = score_member(result.best_member, {"diverged": False}, images, "udr", config.eval)
    assert again["score"] == pytest.approx(result.best_score, abs=1e-9)
    assert result.model_images == len(results) * 200 * config.model.num_models


@pytest.mark.parametrize(("threshold", "filtered"), [(0.0, "none"), (1e9, "all")])
def test_the_stop_line_notes_a_udr_kl_filter_that_left_out_no_latent(
        threshold: float, filtered: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # No KL is <= 0 and every KL is <= 1e9: the filter leaves out none or all latents.
    config = _config(["pbt.policy.max_generations=1", f"eval.udr_kl_threshold={threshold}"])
    run_pbt_locally(config, _dataset(config), "udr", tmp_path, run="local")
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    counts = [e["filtered_latents"] for e in events if e["event"] == "generation"]
    latents = config.model.num_models * config.model.z_dim
    assert counts == [0 if filtered == "none" else latents]
    printed = capsys.readouterr().out
    assert "-> stop: max_generations" in printed
    assert ("left out no latent" in printed) == (filtered == "none")


def test_big_initial_population_keeps_the_best_half_and_runs_are_reproducible() -> None:
    config = _config(["model.num_models=1", "eval.labels=200", "eval.mig_points=300",
                      "pbt.policy.max_generations=2",
                      "pbt.policy.big_init_population_factor=2"])
    dataset = _dataset(config)
    result = run_local_pbt(config, dataset, "mig", device="cpu")
    results = pd.DataFrame(result.results)
    first = results[results.generation == 0].sort_values("score", ascending=False)
    assert [g["population"] for g in result.generations] == [2, 2]
    kept = set(first.member[:2])
    assert set(results[results.generation == 1].member) == kept
    assert result.generations[0]["best_score"] == pytest.approx(first.score.iloc[0])
    assert result.best_score == pytest.approx(results.score.max())

    again = run_local_pbt(config, dataset, "mig", device="cpu")
    assert pd.DataFrame(again.results).score.tolist() == results.score.tolist()


def test_pbt_tunes_beta_only_for_objectives_that_have_it(tmp_path: Path) -> None:
    configs = {loss: _config([f"model.loss={loss}", "pbt.population=6"])
               for loss in ("betatcvae", "factorvae")}
    assert tuned_hyperparameters(configs["betatcvae"].model) == ("lr", "batch_size", "beta")
    assert tuned_hyperparameters(configs["factorvae"].model) == ("lr", "batch_size")
    with_beta, without = (initial_population(c, "local") for c in configs.values())
    # The same draws, beta left out: lr and batch size do not depend on the objective.
    assert without == [{"lr": h["lr"], "batch_size": h["batch_size"]} for h in with_beta]
    assert member_hyperparameters(configs["factorvae"], without[0]) == {**without[0],
                                                                        "gamma": 10.0}

    config = _config(["model.loss=factorvae", "pbt.policy.max_generations=2"])
    result = run_local_pbt(config, _dataset(config), "udr", device="cpu")
    assert len(result.decisions) == quantile_size(4, config.pbt.policy)
    for decision in result.decisions:  # explored lr and batch size, no beta
        assert set(decision.new_hparams) == set(decision.factors) == {"lr", "batch_size"}
    assert all("beta" not in g["best_hparams"] for g in result.generations)
    # The PBT plot shows the tuned hyperparameters only, and copes with no generation.
    for generations in (result.generations, []):
        plot_pbt(generations, pd.DataFrame(result.results), tmp_path / "pbt.png")
        assert (tmp_path / "pbt.png").stat().st_size > 0


def test_local_pbt_rejects_a_mode_it_cannot_score() -> None:
    config = _config([])
    unlabelled = data.Dataset(images=_dataset(config).images, source="pixels.npz")
    with pytest.raises(ValueError, match=r"pixels\.npz has none"):
        run_local_pbt(config, unlabelled, "mig", device="cpu")
    with pytest.raises(ValueError, match="mode must be one of"):
        run_local_pbt(config, unlabelled, "elbo", device="cpu")


def test_a_population_that_only_diverges_is_an_error() -> None:
    config = _config(["pbt.policy.lr_max=1e6", "pbt.policy.lr_grid=[1e6]",
                      "pbt.policy.max_generations=1"])
    with pytest.raises(NoFiniteScoreError, match="no member produced a finite score") as err:
        run_local_pbt(config, _dataset(config), "udr", device="cpu")
    # The images trained before the divergence count as compute.
    budget = config.pbt.population * config.model.num_models * config.train.generation_images
    assert 0 < err.value.model_images <= budget
