"""benchmarks/learning_curve.py: its budgets and a run at its smoke size."""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
from conftest import load_benchmark

from rpu_ray import data
from rpu_ray.engine import Member

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
        trained.append((id(member), budget))
        return train(member, images, budget, *args, **kwargs)

    monkeypatch.setattr(Member, "train", spy)
    table = learning_curve.learning_curve(
        dataset, {"lr": 2e-3, "batch_size": 16, "beta": 4}, [160, 480], num_models=2,
        arch="dlib", loss="betatcvae", seed=0, points=128, udr_points=64,
        udr_kl_threshold=0.01, device="cpu")
    # One member, trained on from one budget to the next.
    assert [budget for _, budget in trained] == [160, 320]
    assert trained[0][0] == trained[1][0]
    assert list(table.images) == [160, 480]
    assert not table.diverged.any()
    for row in table.itertuples():
        migs = [row.mig_0, row.mig_1]
        assert all(0.0 <= m <= 1.0 for m in migs)
        assert row.mig_mean == pytest.approx(np.mean(migs))
        assert 0.0 <= row.udr <= 1.0


def test_smoke_command_writes_its_csv(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                      one_cpu_thread: None) -> None:
    path = tmp_path / "curve.csv"
    monkeypatch.setattr(sys, "argv", ["learning_curve.py", "--smoke", "--csv", str(path)])
    learning_curve.main()
    table = pd.read_csv(path)
    assert list(table.images) == [200, 600]
    assert {"mig_0", "mig_1", "mig_mean", "udr"} <= set(table.columns)
