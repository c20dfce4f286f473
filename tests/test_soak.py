"""Soak test: a 20-generation PBT run keeps memory and disk bounded (slow)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from rpu_ray import data  # noqa: E402
from rpu_ray.config import load_config  # noqa: E402
from rpu_ray.driver import run_pbt  # noqa: E402
from trainables.member import resident_memory_mb  # noqa: E402


@pytest.mark.slow
@pytest.mark.skipif(resident_memory_mb() is None, reason="needs /proc (Linux) to measure RSS")
def test_twenty_generations_keep_memory_and_disk_bounded(tmp_path: Path) -> None:
    keep = 3
    config = load_config(preset_name="smoke", overrides=[
        "train.generation_images=200", "eval.udr_points=100", "pbt.policy.min_score=",
        "pbt.policy.max_generations=20", "pbt.policy.convergence_patience=",
        f"pbt.checkpoints_to_keep={keep}"])
    dataset = data.load("dsprites", image_size=32, subsample=config.data.subsample)
    driver_rss: list[tuple[float, float]] = []  # (time, MB) of this process: Tune's controller
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            driver_rss.append((time.time(), resident_memory_mb()))
            time.sleep(0.25)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024**2)
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = run_pbt(config, dataset, "udr", tmp_path, progress=False)
    finally:
        done.set()
        sampler.join()
        ray.shutdown()
    assert result.generations == 20 and result.num_errors == 0

    barriers = [e["time"] for e in map(json.loads, (tmp_path / "events.jsonl").read_text()
                                       .splitlines()) if e["event"] == "generation"]

    def driver_mb_at(moment: float) -> float:
        return max(mb for t, mb in driver_rss if t <= moment)

    # After warm-up (generation 5) the controller's memory stays flat: at most +10 %.
    assert driver_mb_at(barriers[-1]) <= 1.10 * driver_mb_at(barriers[5])
    # The members' memory per generation, whether their process is new or reused.
    results = pd.read_csv(tmp_path / "results.csv")
    per_generation = results.groupby("training_iteration").rss_mb.max()
    assert per_generation.loc[15:].max() <= 1.10 * per_generation.loc[3:6].max()
    # Disk: at most `keep` checkpoints per member at the end (Tune keeps the best ones plus
    # the latest within that number), and no temporary files left behind.
    trial_dirs = [d for d in (tmp_path / "tune" / "pbt").iterdir() if d.is_dir()]
    assert len(trial_dirs) == config.pbt.population
    for trial in trial_dirs:
        checkpoints = sorted(trial.glob("checkpoint_*"))
        assert 1 <= len(checkpoints) <= keep, (trial.name, [c.name for c in checkpoints])
    leftovers = list(tmp_path.rglob(".*.tmp*"))
    assert not leftovers, leftovers
    assert sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file()) < 400 * 2**20
