"""Fixed-hyperparameter baselines and model selection (rpu_ray.baseline, `rpu-ray baseline`)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CLI, CLI_ENV, run_cli

from rpu_ray import data
from rpu_ray.baseline import GRIDS, budget_chunks, run_baselines, select_by_labels, train_baseline
from rpu_ray.evaluation import encode_images, evaluate_model, evaluation_positions
from rpu_ray.metrics import mig
from rpu_ray.models import VAE
from rpu_ray.models.vae import split_ensemble

SUBSAMPLE = [3, 3, 40, 4, 4]   # 1 shape, 2 scales, 1 orientation, 8 x 8 positions: 128 images
EVAL = {"eval_points": (200, 200, 100), "dci_mode": "fast", "udr_points": 100}


@pytest.fixture(scope="module")
def dataset() -> data.Dataset:
    return data.load("dsprites", image_size=32, subsample=SUBSAMPLE)


def test_grids_are_locatello_et_al_s() -> None:
    assert GRIDS["betavae"].values == (1, 2, 4, 6, 8, 16)
    assert GRIDS["betatcvae"].values == (1, 2, 4, 6, 8, 10)
    assert GRIDS["annealedvae"].hyperparameters(25) == {"c_max": 25.0, "gamma": 1000.0}
    assert GRIDS["factorvae"].hyperparameters(30) == {"gamma": 30.0}
    assert GRIDS["dipvae1"].hyperparameters(5) == {"lambda_od": 5.0, "lambda_d": 50.0}
    assert GRIDS["dipvae2"].hyperparameters(5) == {"lambda_od": 5.0, "lambda_d": 5.0}


def test_each_seed_is_evaluated_as_its_own_vae(dataset: data.Dataset) -> None:
    member, rows = train_baseline(dataset, "betavae", 4, seeds=2, images=256, lr=1e-3,
                                  arch="dlib", **EVAL)
    assert [r["seed"] for r in rows] == [0, 1] and all(r["model_images"] == 256 for r in rows)
    # The second row is the second VAE: the same numbers as that VAE split out on its own.
    single = VAE(**member.model.config)
    single.load_state_dict(split_ensemble(member.model)[1])
    alone = evaluate_model(single, dataset.all_images(), dataset.all_factors(),
                           mig_points=200, dci_train=200, dci_test=100, dci_mode="fast")
    assert rows[1]["mig"] == pytest.approx(alone["mig"], abs=1e-9)
    assert rows[1]["sap"] == pytest.approx(alone["sap"], abs=1e-9)
    assert rows[1]["dci_disentanglement"] == pytest.approx(alone["dci"]["disentanglement"],
                                                           abs=1e-9)
    assert rows[0]["mig"] != rows[1]["mig"]  # different initial weights
    for row in rows:
        assert 0 <= row["mig"] <= 1 and 0 <= row["udr"] <= 1 and not row["diverged"]


def test_selection_takes_the_best_label_mig(dataset: data.Dataset) -> None:
    trained = [train_baseline(dataset, "betatcvae", beta, seeds=2, images=128, lr=1e-3,
                              arch="dlib", evaluate=False, **EVAL) for beta in (1, 8)]
    members = [member for member, _ in trained]
    for _, rows in trained:  # not evaluated: selection needs the label MIG only
        assert all(np.isnan(r["mig"]) and np.isnan(r["sap"]) and np.isnan(r["udr"])
                   for r in rows)
    position, index, scores = select_by_labels(members, dataset, labels=100, seed=3)
    points = evaluation_positions(len(dataset), 100, 3)
    factors = dataset.all_factors()[points][:, [1, 3, 4]]  # the factors that vary
    expected = [mig(codes, factors) for member in members
                for codes in encode_images(member.model, dataset.all_images()[points])[0]]
    np.testing.assert_allclose(scores, expected, atol=1e-12)
    assert 2 * position + index == int(np.argmax(expected))


def test_run_writes_the_table_and_the_selection(dataset: data.Dataset, tmp_path: Path) -> None:
    table = run_baselines(dataset, "dipvae1", [1, 10], seeds=2, images=64, out_dir=tmp_path,
                          select_labels=100, progress=None, lr=1e-3, arch="dlib", **EVAL)
    saved = pd.read_csv(tmp_path / "baselines.csv")
    assert len(saved) == 4 and saved.value.tolist() == [1, 1, 10, 10]
    for column in ("mig", "label_mig", "dci_disentanglement", "sap", "udr"):
        np.testing.assert_allclose(saved[column], table[column], rtol=1e-12)
    # the selection is the row of the best MIG on the labels, with its ground-truth MIG
    selection = json.loads((tmp_path / "selection.json").read_text())
    best = int(np.argmax(saved.label_mig))
    assert selection["row"] == best and selection["value"] == saved.value[best]
    assert selection["label_mig"] == pytest.approx(saved.label_mig.max())
    assert selection["mig"] == pytest.approx(saved.mig[best], abs=1e-12)


def test_cli_runs_a_baseline_and_rejects_bad_points(tmp_path: Path) -> None:
    common = ["baseline", "--model", "betavae", "--hparam", "2", "--seeds", "2",
              "--data", "dsprites", "--image-size", "32",
              "--subsample", ",".join(map(str, SUBSAMPLE)), "--images", "64",
              "--dci-mode", "fast", "--select-labels", "100", "--out", str(tmp_path)]
    done = run_cli(*common, "--eval-points", "200,200,100", timeout=300)
    assert "baselines.csv" in done.stdout
    assert len(pd.read_csv(tmp_path / "baselines.csv")) == 2
    bad = subprocess.run([*CLI, *common, "--eval-points", "200,200"], env=CLI_ENV,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "rpu-ray: error: --eval-points: expected three counts >= 2, got '200,200'"]
    unlabelled = tmp_path / "pixels.npz"
    np.savez(unlabelled, images=np.zeros((8, 32, 32), np.uint8))
    bad = subprocess.run([*CLI, *common[:8], str(unlabelled), "--images", "64"], env=CLI_ENV,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"rpu-ray: error: {unlabelled} has no ground-truth factors: baselines are evaluated "
        "on them"]


def test_cli_names_every_baseline_without_importing_torch() -> None:
    from rpu_ray.cli import BASELINE_MODELS

    assert BASELINE_MODELS == tuple(GRIDS)
    code = ("import sys; from rpu_ray.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"


def test_budget_chunks_are_whole_batches() -> None:
    assert budget_chunks(256, 64) == [64, 64, 64, 64]  # 4 batches: 4 chunks, not 10 of 25
    chunks = budget_chunks(10_000, 64)
    assert len(chunks) == 10 and sum(chunks) == 10_000
    assert all(c % 64 == 0 for c in chunks[:-1]) and chunks[-1] % 64 == 10_000 % 64
    assert budget_chunks(19, 64) == [19] and budget_chunks(2, 64) == [2]
    with pytest.raises(ValueError, match="images must be >= 2"):
        budget_chunks(1, 64)
