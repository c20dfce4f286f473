"""benchmarks/learning_curve.py: its budgets and a run at its smoke size."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import load_benchmark

from rpu_ray import data

learning_curve = load_benchmark("learning_curve")


def test_checkpoints_are_geometric_and_distinct() -> None:
    assert learning_curve.checkpoints(10_000, 400_000, 6) == [
        10_000, 20_900, 43_700, 91_500, 191_300, 400_000]
    assert learning_curve.checkpoints(100, 100, 3) == [100]  # duplicates merge
    assert learning_curve.checkpoints(30, 250, 2) == [100, 200]  # at least 100, in hundreds
    with pytest.raises(ValueError, match="0 < first <= last"):
        learning_curve.checkpoints(500, 100, 3)


def test_curve_trains_on_to_each_budget_and_scores_every_vae(one_cpu_thread: None) -> None:
    dataset = data.load("dsprites", image_size=32, subsample=[3, 5, 40, 4, 4])  # 128 images
    table = learning_curve.learning_curve(
        dataset, {"lr": 2e-3, "batch_size": 16, "beta": 4}, [160, 480], num_models=2,
        arch="dlib", loss="betatcvae", seed=0, points=128, udr_points=64,
        udr_kl_threshold=0.01, device="cpu")
    assert list(table.images) == [160, 480]
    assert not table.diverged.any()
    for row in table.itertuples():
        migs = [row.mig_0, row.mig_1]
        assert all(0.0 <= m <= 1.0 for m in migs)
        assert row.mig_mean == pytest.approx(np.mean(migs))
        assert 0.0 <= row.udr <= 1.0
    # The second budget continued the first member: its scores moved.
    assert table.mig_0.iloc[0] != table.mig_0.iloc[1]
