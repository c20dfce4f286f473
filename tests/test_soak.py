"""Soak test: a 20-generation PBT run keeps memory and disk bounded (slow)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from rpu_ray import data  # noqa: E402
from rpu_ray.config import load_config  # noqa: E402
from rpu_ray.driver import run_pbt  # noqa: E402
from schedulers.generational_pbt import HANDOVER_GRACE_S  # noqa: E402
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

    # A leak worth the name loses at least a member per generation (its checkpoint: weights,
    # Adam state, generator). After warm-up (generation 4) the trend of the controller's and
    # the members' resident memory must stay below a quarter of that per generation;
    # allocator noise is +-50 MB between generations (measured: members +4 MB/generation,
    # with one 30 MB checkpoint).
    member_mb = max(f.stat().st_size for f in tmp_path.rglob("member.pt")) / 2**20
    generations = np.arange(4, len(barriers))
    driver_slope = np.polyfit(generations, [driver_mb_at(barriers[g]) for g in generations], 1)[0]
    assert driver_slope < member_mb / 4, (driver_slope, member_mb)
    results = pd.read_csv(tmp_path / "results.csv")
    later = results[results.training_iteration > 4]
    member_slope = np.polyfit(later.training_iteration, later.rss_mb, 1)[0]
    assert member_slope < member_mb / 4, (member_slope, member_mb)
    # Disk: at most `keep` checkpoints per member plus its latest one (Tune keeps the `keep`
    # best-scoring ones and always the latest), and no temporary files left behind.
    trial_dirs = [d for d in (tmp_path / "tune" / "pbt").iterdir()
                  if d.is_dir() and d.name.startswith("MemberTrainable")]
    assert len(trial_dirs) == config.pbt.population
    for trial in trial_dirs:
        checkpoints = sorted(trial.glob("checkpoint_*"))
        assert 1 <= len(checkpoints) <= keep + 1, (trial.name, [c.name for c in checkpoints])
    leftovers = list(tmp_path.rglob(".*.tmp*"))
    assert not leftovers, leftovers
    total_mb = sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file()) / 2**20
    # The kept checkpoints, best_member.pt, the copies handed to the clones (one clone per
    # generation in a population of 4) of the last two barriers, or younger than the grace
    # period (`HANDOVER_GRACE_S`; generations are seconds here), and small files.
    handovers = list((tmp_path / "tune" / "pbt").glob("MemberTrainable_*/handover/*"))
    last_two = {str(len(barriers) - 1), str(len(barriers) - 2)}
    old = [h for h in handovers if h.name not in last_two]
    assert all(time.time() - h.stat().st_mtime < HANDOVER_GRACE_S for h in old), old
    assert total_mb < (config.pbt.population * (keep + 1) + 1 + len(handovers)) * member_mb + 20
