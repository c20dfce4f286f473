"""benchmarks/replicate.py: the replication harness, at its smoke size."""
from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import CLI_ENV, load_benchmark

from rpu_ray.pbt import PBTPolicy, survivors_after_first_generation

replicate = load_benchmark("replicate")
_PATH = replicate.__file__

METRICS = ["mig", "dci_disentanglement", "dci_completeness", "dci_informativeness_test", "sap"]


def _run(out: Path, *args: str) -> pd.DataFrame:
    done = subprocess.run([sys.executable, str(_PATH), "--smoke", "--out", str(out), *args],
                          env=CLI_ENV, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return pd.read_csv(out / "runs.csv")


def _check_runs(table: pd.DataFrame, out: Path, experiments: list[str], seeds: int) -> None:
    budget = replicate.BUDGETS["smoke"]
    for experiment in experiments:
        rows = table[table.experiment == experiment]
        names = list(replicate.methods(experiment, budget))
        assert list(dict.fromkeys(rows.method)) == names
        for method, group in rows.groupby("method"):
            assert sorted(set(group.seed)) == list(range(seeds))
            # Every method spends the same budget C per run (what it trained, counted where
            # it trained): rPU-VAE at most C (its leaf-runs may stop early), the others C
            # but for rounding.
            assert (group.model_images <= budget.model_images).all()
            if "rPU-VAE" not in method:
                assert (group.model_images >= budget.model_images - 12).all()
        assert (out / f"{experiment}.png").stat().st_size > 0
    assert table[METRICS].notna().all().all()
    assert ((table[METRICS] >= 0) & (table[METRICS] <= 1)).all().all()
    summary = (out / "summary.md").read_text()
    for method in set(table.method):
        assert f"| {method} |" in summary


def test_budget_and_methods() -> None:
    smoke = replicate.BUDGETS["smoke"]
    assert smoke.model_images == 4 * 2 * 2 * 1000
    assert list(replicate.methods("fig4", smoke)) == [
        "betavae", "betatcvae", "annealedvae", "factorvae", "dipvae1", "dipvae2",
        "PBT-U-VAE", "rPU-VAE", "PBT-S-VAE"]
    assert len(replicate.methods("fig6", smoke)) == 4
    # I_r fills what the leaf-runs' metaEpochs (K * D of G_r generations of P * M VAEs, I_l
    # images each) leave of C with the x-run (G_r generations of P * M VAEs) and the final run
    # (single VAEs: P in generation 0, then the survivors PBT keeps), when nothing stops early.
    for budget in replicate.BUDGETS.values():
        vaes = budget.population * budget.num_models
        final_policy = PBTPolicy(big_init_population_factor=2)
        survivors = len(survivors_after_first_generation(
            {str(i): float(i) for i in range(budget.population)}, final_policy))
        final = budget.population + (budget.final_generations - 1) * survivors
        for leaf_runs in range(4):
            images = budget.rpu_generation_images(leaf_runs)
            leaves = (leaf_runs * budget.max_depth * budget.rpu_generations * vaes
                      * budget.leaf_generation_images)
            slots = budget.rpu_generations * vaes + final
            assert budget.model_images - slots < leaves + slots * images <= budget.model_images
    # cpu, fig4: C = 480,000; leaf-runs 2 x 1 x 3 x 8 x 2,000; x-run 3 x 8; final 4 + 2 x 2.
    assert replicate.BUDGETS["cpu"].rpu_generation_images(2) == (480_000 - 96_000) // 32
    with pytest.raises(ValueError, match="leaf-runs alone spend the budget"):
        replicate.dataclasses.replace(smoke, leaf_generation_images=1000).rpu_generation_images(2)
    assert list(replicate.methods("fig1b", smoke))[1:3] == [
        "model selection (100 labels)", "Locatello et al. (100 labels)"]
    with pytest.raises(ValueError, match="unknown experiment"):
        replicate.methods("fig9", smoke)


def test_scaled_budgets_keep_c_equal_and_move_rpu_images_to_the_leaf_runs() -> None:
    cpu = replicate.BUDGETS["cpu"]
    doubled, label = replicate.scaled_budget("cpu", 2)
    assert label == "cpu x2" and doubled.model_images == 2 * cpu.model_images
    assert doubled.leaf_generation_images == 2 * cpu.leaf_generation_images
    assert doubled.rpu_generation_images(2) == 2 * cpu.rpu_generation_images(2)
    longer, label = replicate.scaled_budget("cpu", 2, leaf_scale=2)
    assert label == "cpu x2 leaf x2" and longer.model_images == doubled.model_images
    assert longer.leaf_generation_images == 4 * cpu.leaf_generation_images
    # The leaf-runs' extra images come out of the x-run's and the final run's generations.
    assert longer.rpu_generation_images(2) < doubled.rpu_generation_images(2)
    assert replicate.budget_id(longer, 2) != replicate.budget_id(doubled, 2)
    with pytest.raises(ValueError, match="leaf_scale"):
        replicate.scaled_budget("cpu", 1, leaf_scale=0)


def test_every_budget_makes_a_valid_config() -> None:
    for name, budget in replicate.BUDGETS.items():
        config = replicate._config(budget, 1, budget.num_models, [])
        assert config.eval.udr_kl_threshold == budget.udr_kl_threshold, name
        assert config.train.generation_images == budget.generation_images, name
    # Short GPU runs leave unused latents above disentanglement_lib's 0.01 (see the field).
    assert replicate.BUDGETS["gpu"].udr_kl_threshold == 0.3


def test_gpu_budget_gives_rpu_vae_the_measured_floors() -> None:
    # benchmarks/RESULTS.md: the reduction's subsets stop shrinking once the x-run's VAEs
    # have trained 200,000 images; a leaf-run's VAEs label a new factor after 20,000-40,000.
    gpu, cpu = replicate.BUDGETS["gpu"], replicate.BUDGETS["cpu"]
    images = gpu.rpu_generation_images(gpu.leaf_runs)
    assert images * gpu.rpu_generations >= 200_000  # x-run VAE
    assert images * gpu.final_generations >= 200_000  # final VAE
    assert gpu.leaf_generation_images * gpu.rpu_generations >= 40_000  # leaf-run VAE
    # The cpu budget's data and split at 8 times its C (run on CPU at --scale 8).
    eight, _ = replicate.scaled_budget("cpu", 8)
    assert replicate.dataclasses.replace(gpu, seeds=cpu.seeds) == eight
    assert gpu.model_images == 3_840_000


def test_budget_sets_explore_bounds_and_architecture() -> None:
    budget = replicate.dataclasses.replace(replicate.BUDGETS["smoke"], arch="authors",
                                           beta_bounds=(2, 12), lr_bounds=(1e-4, 1e-2))
    config = replicate._config(budget, 0, 2, [])
    policy = config.pbt.policy
    assert (policy.beta_min, policy.beta_max, policy.lr_min, policy.lr_max) == (2, 12, 1e-4, 1e-2)
    assert policy.batch_size_max == PBTPolicy().batch_size_max  # unbounded: the default
    assert config.model.arch == "authors"
    gpu = replicate._config(replicate.BUDGETS["gpu"], 0, 5, []).pbt.policy
    assert (gpu.beta_min, gpu.beta_max) == (2, 16)


def test_replication_continues_from_its_runs_csv(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def fake_run(dataset, budget, seed, device):
        calls.append((budget.generation_images, seed))
        return {"mig": 0.1 * seed, "dci_disentanglement": 0.2, "model_images": 1}

    monkeypatch.setattr(replicate, "methods", lambda *args: {"a": fake_run, "b": fake_run})
    monkeypatch.setattr(replicate, "plot", lambda *args: None)
    run = functools.partial(replicate.replicate, ["fig4"], "smoke", "dsprites", tmp_path, "cpu")
    run(seeds=2, only=["a"])
    assert calls == [(1000, 0), (1000, 1)]
    # Into the same folder: only the runs it lacks, and the table holds them all.
    table = run(seeds=2)
    assert calls == [(1000, 0), (1000, 1), (1000, 0), (1000, 1)]
    assert list(zip(table.method, table.seed, strict=True)) == [
        ("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert pd.read_csv(tmp_path / "runs.csv").equals(table)
    assert not list(tmp_path.glob(".*.tmp"))
    # Rows of other sizes or another number of seeds (which moves the baselines' values) in
    # the folder: refused, nothing run or written.
    for options in ({"seeds": 3}, {"seeds": 2, "scale": 2}):
        with pytest.raises(SystemExit, match=r"runs.csv: holds runs of another (budget|budget_id)"):
            run(**options)
    assert len(calls) == 4 and len(pd.read_csv(tmp_path / "runs.csv")) == 4
    # The fingerprint covers every field of the budget and the seeds.
    smoke = replicate.BUDGETS["smoke"]
    assert replicate.budget_id(smoke, 2) == replicate.budget_id(
        replicate.dataclasses.replace(smoke), 2)
    assert replicate.budget_id(smoke, 2) != replicate.budget_id(smoke, 3)
    assert replicate.budget_id(smoke, 2) != replicate.budget_id(
        replicate.dataclasses.replace(smoke, leaf_generation_images=401), 2)


def _constant_run(dataset, budget, seed, device) -> dict[str, float]:
    """A method's run as `replicate` calls it, without training: one fixed row."""
    return {"mig": 0.1, "dci_disentanglement": 0.2, "model_images": 1}


def test_plots_show_the_methods_in_the_papers_order(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(replicate, "methods",
                        lambda *args: {"a": _constant_run, "b": _constant_run})
    plotted = []
    monkeypatch.setattr(replicate, "plot", lambda table, *args: plotted.append(list(
        zip(table.method, table.seed, strict=True))))
    replicate.replicate(["fig4"], "smoke", "dsprites", tmp_path, "cpu", seeds=2, only=["b"])
    replicate.replicate(["fig4"], "smoke", "dsprites", tmp_path, "cpu", seeds=2)
    assert list(pd.read_csv(tmp_path / "runs.csv").method) == ["b", "b", "a", "a"]
    assert plotted[-1] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]


def test_shapes3d_gets_a_grid_of_its_own_factors(tmp_path: Path, monkeypatch) -> None:
    assert set(replicate.SHAPES3D_SUBSAMPLE) == set(replicate.BUDGETS)
    seen = []

    def fake_run(dataset, budget, seed, device):
        seen.append(dataset)
        return _constant_run(dataset, budget, seed, device)

    monkeypatch.setattr(replicate, "methods", lambda *args: {"a": fake_run})
    monkeypatch.setattr(replicate, "plot", lambda *args: None)
    table = replicate.replicate(["fig4"], "smoke", "shapes3d", tmp_path, "cpu", seeds=1)
    assert len(seen[0]) == 960 and seen[0].images.shape[1:] == (3, 32, 32)
    assert len(seen[0].factor_names) == 6 and list(table.dataset) == ["shapes3d"]


def test_baseline_values_spread_over_the_grid() -> None:
    betas = replicate.GRIDS["betavae"].values  # 1, 2, 4, 6, 8, 16
    assert [replicate.grid_value("betavae", s, 2) for s in range(2)] == [betas[1], betas[4]]
    assert [replicate.grid_value("betavae", s, 6) for s in range(6)] == list(betas)
    assert [replicate.grid_value("betavae", s, 5) for s in range(5)] == [1, 2, 6, 8, 16]


def test_summary_is_mean_and_std_per_method() -> None:
    table = pd.DataFrame({"experiment": ["e"] * 4, "method": ["a", "a", "b", "b"],
                          "mig": [0.1, 0.3, 0.5, float("nan")],
                          "dci_disentanglement": [0.2, 0.2, 0.4, 0.6]})
    lines = replicate.summary_markdown(table).splitlines()
    assert lines[2] == "| e | a | 2 | 0.200 | 0.141 | 0.200 | 0.000 |"
    assert lines[3] == "| e | b | 2 | 0.500 | nan | 0.500 | 0.141 |"


def test_smoke_fig1a(tmp_path: Path) -> None:
    table = _run(tmp_path, "--experiment", "fig1a", "--seeds", "1")
    _check_runs(table, tmp_path, ["fig1a"], seeds=1)


@pytest.mark.slow
def test_smoke_every_experiment(tmp_path: Path) -> None:
    table = _run(tmp_path)
    _check_runs(table, tmp_path, list(replicate.EXPERIMENTS), seeds=2)
    # Baseline runs report both of their VAEs; PBT runs and model selection one final model.
    fig4 = table[table.experiment == "fig4"]
    assert fig4[fig4.method == "betavae"].shape[0] == 4
    assert fig4[fig4.method == "PBT-U-VAE"].shape[0] == 2
    # rPU-VAE ran its x-run and, when it found labels, leaf-runs and the final run.
    fig6 = table[table.experiment == "fig6"]
    assert sorted(set(fig6.leaf_runs)) == [0, 1, 2, 3]
    # A leaf-run may stop at its first reduction, before any metaEpoch of its own.
    budget = replicate.BUDGETS["smoke"]
    assert ((fig6.metaepochs >= 1)
            & (fig6.metaepochs <= 1 + fig6.leaf_runs * budget.max_depth)).all()
    assert (fig6.metaepochs > 1).any()  # some leaf-run trained on a reduced subset
    # The factors the x-run's labels match best: names of dSprites' factors (none: "").
    names = set(replicate.data.load("dsprites", image_size=32, subsample=16).factor_names)
    labelled = [set(labels.split()) for labels in fig6.x_labels.fillna("")]
    assert all(found <= names for found in labelled) and any(labelled)
    # Every leaf-run metaEpoch: its subset's size and what it labelled.
    entries = [e for cell in fig6.leaf_labels.fillna("") for e in cell.split("; ") if e]
    assert entries
    for entry in entries:
        match = re.fullmatch(r"leaf\d+-\d+ \((\d+)\): (.+)", entry)
        assert match and 0 < int(match[1]) < 960
        assert match[2] == "-" or set(match[2].split()) <= names
