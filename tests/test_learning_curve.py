"""benchmarks/learning_curve.py: its budgets and a run at its smoke size."""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import clustered_squares, load_benchmark

from rpu_ray import data
from rpu_ray.engine import Member
from rpu_ray.evaluation import encode_images, evaluation_positions
from rpu_ray.metrics import gaussian_kl, mig, udr

learning_curve = load_benchmark("learning_curve")


def test_checkpoints_are_geometric_and_distinct() -> None:
    assert learning_curve.checkpoints(10_000, 400_000, 6) == [
        10_000, 20_900, 43_700, 91_500, 191_300, 400_000]
    assert learning_curve.checkpoints(100, 100, 3) == [100]  # duplicates merge
    assert learning_curve.checkpoints(30, 250, 2) == [100, 200]  # at least 100, in hundreds
    with pytest.raises(ValueError, match="0 < first <= last"):
        learning_curve.checkpoints(500, 100, 3)


def test_curve_trains_on_to_each_budget_and_scores_every_vae(
        one_cpu_thread: None, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = data.load("dsprites", image_size=32, subsample=[3, 5, 40, 4, 4])  # 128 images
    trained = []
    train = Member.train

    def spy(member, images, budget, *args, **kwargs):
        trained.append((member, budget))
        return train(member, images, budget, *args, **kwargs)

    monkeypatch.setattr(Member, "train", spy)
    table = learning_curve.learning_curve(
        dataset, {"lr": 2e-3, "batch_size": 16, "beta": 4}, [160, 480], num_models=2,
        arch="dlib", loss="betatcvae", seed=0, points=128, udr_points=64,
        udr_kl_threshold=0.01, device="cpu")
    # One member, trained on from one budget to the next.
    assert [budget for _, budget in trained] == [160, 320]
    assert trained[0][0] is trained[1][0]
    assert list(table.images) == [160, 480]
    assert not table.diverged.any()
    # The last row scores the trained member: MIG of each VAE on `points` images of the
    # factors that vary, UDR on `udr_points` with the KL filter given
    member, images, factors = trained[0][0], torch.from_numpy(dataset.images), dataset.factors
    varying = [c for c in range(factors.shape[1]) if len(np.unique(factors[:, c])) > 1]
    positions = evaluation_positions(128, 128, 0)
    codes = member.encode(images[positions])[0].double().numpy()
    migs = [mig(c, factors[positions][:, varying]) for c in codes]
    last = table.iloc[-1]
    np.testing.assert_allclose([last.mig_0, last.mig_1], migs, rtol=0, atol=1e-12)
    assert last.mig_mean == pytest.approx(np.mean(migs))
    mu, logsigma = (t.double().numpy() for t in member.encode(
        images[evaluation_positions(128, 64, 0)]))
    kl = np.stack([gaussian_kl(m, s) for m, s in zip(mu, logsigma, strict=True)])
    assert last.udr == pytest.approx(
        float(np.mean(udr(mu, kl, kl_threshold=0.01, empty_model_score=0.0))), abs=1e-12)


@pytest.mark.parametrize("dataset", ["dsprites", "shapes3d"])
def test_smoke_command_writes_its_csv(dataset: str, tmp_path, monkeypatch: pytest.MonkeyPatch,
                                      one_cpu_thread: None) -> None:
    path = tmp_path / "curve.csv"
    monkeypatch.setattr(sys, "argv", ["learning_curve.py", "--smoke", "--dataset", dataset,
                                      "--csv", str(path)])
    learning_curve.main()
    table = pd.read_csv(path)
    assert list(table.images) == [200, 600]
    assert {"mig_0", "mig_1", "mig_mean", "udr", "active_0", "labels_1",
            "subset_1"} <= set(table.columns)


class _PositionEncoder(torch.nn.Module):
    """Encodes a `clustered_squares` image as the square's column and row (the mean of the
    bright pixels' coordinates, in units of the grid step) on latents 0 and 1, certain
    (log-sigma -3); latents 2-9 are the prior (mean 0, log-sigma 0: KL 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a device

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bright = (images[:, 0] > 0.5).float()
        count = bright.sum(dim=(1, 2))
        grid = torch.arange(images.shape[-1], dtype=torch.float32)
        column = (bright.sum(dim=1) * grid).sum(dim=1) / count / 7.0
        row = (bright.sum(dim=2) * grid).sum(dim=1) / count / 7.0
        mu = torch.zeros(1, len(images), 10)
        mu[0, :, 0], mu[0, :, 1] = column, row
        logsigma = torch.zeros_like(mu)
        logsigma[0, :, :2] = -3.0
        return mu, logsigma


def test_active_labels_name_the_factors_and_the_cell_the_reduction_keeps() -> None:
    images, factors = clustered_squares()  # 4 x 4 positions, 24 copies each
    dataset = data.Dataset(images[:, None], factors, ("posX", "posY"), (4, 4), "squares")
    codes = encode_images(_PositionEncoder(), dataset.all_images())
    row = learning_curve.active_labels(codes, dataset, points=len(dataset), seed=0)
    assert row["active_0"] == 2
    assert row["labels_0"] == "posX posY"
    # Positions that far apart leave clean gaps: the reduction keeps one whole position.
    assert row["subset_0"] == "24 posX 1/4 posY 1/4"


def test_fixed_factors_keep_the_images_of_those_classes() -> None:
    dataset = data.load("dsprites", image_size=32, subsample=[3, 5, 40, 4, 4])
    cell = learning_curve.fixed_factors(dataset, "posX=16,posY=8")
    assert len(cell) == 2  # the two scales of one shape and orientation
    assert (cell.all_factors()[:, 3] == 16).all() and (cell.all_factors()[:, 4] == 8).all()
    assert np.array_equal(cell.all_images(), dataset.all_images()[
        (dataset.all_factors()[:, 3] == 16) & (dataset.all_factors()[:, 4] == 8)])
    # Ranges are inclusive: posX classes 12 and 16 of the subsample's 0, 4, ..., 28.
    block = learning_curve.fixed_factors(dataset, "posX=12-17,posY=8")
    assert len(block) == 4 and set(block.all_factors()[:, 3]) == {12, 16}
    for bad in ("size=1", "posX=a", "posX=1-b", "posX"):
        with pytest.raises(SystemExit, match="expected FACTOR=CLASS or FACTOR=FIRST-LAST"):
            learning_curve.fixed_factors(dataset, bad)
    with pytest.raises(SystemExit, match="no image has these factor classes"):
        learning_curve.fixed_factors(dataset, "posX=1")


def test_set_gives_the_objective_its_constants_and_the_rows_its_terms(
        tmp_path, monkeypatch: pytest.MonkeyPatch, one_cpu_thread: None) -> None:
    assert learning_curve.objective_settings("c_max=10, gamma=1e3") == {"c_max": 10.0,
                                                                       "gamma": 1000.0}
    assert learning_curve.objective_settings("") == {}
    with pytest.raises(SystemExit, match="numeric"):
        learning_curve.objective_settings("c_max=ten")
    path = tmp_path / "curve.csv"
    monkeypatch.setattr(sys, "argv", ["learning_curve.py", "--smoke", "--loss", "annealedvae",
                                      "--set", "c_max=4,iteration_threshold=2", "--csv",
                                      str(path)])
    learning_curve.main()
    table = pd.read_csv(path)
    # The capacity grew to c_max after 2 steps and stayed there (600 images at batch 64).
    assert table.capacity_mean.iloc[-1] == pytest.approx(4.0)
    assert (table.recon_mean > 0).all() and (table.kl_mean >= 0).all()


def test_kl_parts_add_up_to_the_gaussian_kl_and_separate_codes_from_offsets() -> None:
    rng = np.random.default_rng(0)
    mu = rng.normal(0.5, 2.0, size=(2, 400, 3))
    logsigma = rng.normal(-1.0, 0.3, size=(2, 400, 3))
    # A VAE whose codes do not depend on the image: shifted means, narrow posteriors.
    mu[1], logsigma[1] = 1.5, -2.0
    row = learning_curve.kl_parts(mu, logsigma)
    for i in range(2):
        total = row[f"kl_spread_{i}"] + row[f"kl_shift_{i}"] + row[f"kl_width_{i}"]
        assert total == pytest.approx(gaussian_kl(mu[i], logsigma[i]).sum(), rel=1e-12)
    assert row["kl_spread_0"] == pytest.approx(0.5 * mu[0].var(0).sum(), rel=1e-12)
    assert row["kl_spread_1"] == 0.0
    assert row["kl_shift_1"] == pytest.approx(3 * 0.5 * 1.5**2)
    assert row["kl_width_1"] == pytest.approx(3 * 0.5 * (np.exp(-4.0) - 1.0 + 4.0))
