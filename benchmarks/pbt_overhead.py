"""Ray Tune overhead of generational PBT, against the training it wraps.

Runs one PBT experiment with a preset on a local Ray and compares, per generation, the wall
time between two generation barriers with the time the members spent in `step()` (training
plus scoring, Tune's `time_this_iter_s`), given how many members run at once:

    overhead = 1 - sum(step seconds) / (slots * wall seconds)

where slots = min(population, CPUs // cpus_per_trial). That total splits into two factors:

  * barrier imbalance, inherent to synchronous PBT whatever runs it: with more members than
    slots, members of unequal step times (batch sizes differ) leave slots idle before the
    barrier. "ideal" is the wall time of a zero-cost executor: the generation's steps, with
    their measured durations, started in the order they did start, each on the first free
    slot. imbalance = 1 - sum(step seconds) / (slots * ideal);
  * Tune's overhead, what the executor adds to that: pausing and resuming members at the
    barrier, checkpoints, exploitation, actor reuse, result handling.
    tune = 1 - ideal / wall.

(1 - overhead) = (1 - imbalance) * (1 - tune). Target: Tune's overhead < 5 % of a
generation's time at the demo preset.

    python benchmarks/pbt_overhead.py                 # demo preset
    python benchmarks/pbt_overhead.py --smoke         # seconds; what the test suite runs
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import pandas as pd


def measure(preset: str, overrides: list[str], cpus: int, out: Path) -> pd.DataFrame:
    import ray

    from rpu_ray import data
    from rpu_ray.config import load_config
    from rpu_ray.driver import run_pbt

    config = load_config(preset_name=preset, overrides=overrides)
    dataset = data.load(config.data.spec, image_size=config.data.image_size,
                        subsample=config.data.subsample, seed=config.data.seed)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             object_store_memory=512 * 1024**2)
    try:
        run_pbt(config, dataset, "udr", out, progress=False)
    finally:
        ray.shutdown()
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    barriers = [e["time"] for e in events if e["event"] == "generation"]
    results = pd.read_csv(out / "results.csv")
    slots = min(config.pbt.population, int(cpus // config.resources.cpus_per_trial))
    rows = []
    # Generation g (1-based iteration g+1) runs between barrier g-1 and barrier g; the first
    # generation also contains Ray's and the actors' start-up, reported separately.
    for g in range(1, len(barriers)):
        wall = barriers[g] - barriers[g - 1]
        steps = results[results.training_iteration == g + 1].sort_values("step_started_at")
        busy = float(steps.time_this_iter_s.sum())
        ideal = makespan(steps.time_this_iter_s.tolist(), slots)
        rows.append({"generation": g, "wall_s": wall, "ideal_s": ideal, "step_s": busy,
                     "slots": slots, "overhead": 1.0 - busy / (slots * wall),
                     "imbalance": 1.0 - busy / (slots * ideal), "tune": 1.0 - ideal / wall})
    return pd.DataFrame(rows)


def makespan(durations: list[float], slots: int) -> float:
    """Wall time of jobs started in the given order, each on the first slot to become free."""
    free = [0.0] * slots
    for duration in durations:
        free[free.index(min(free))] += duration
    return max(free)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--smoke", action="store_true", help="tiny run (smoke preset)")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    preset = "smoke" if args.smoke else args.preset
    overrides = args.overrides + (["train.generation_images=100", "eval.udr_points=50",
                                   "pbt.policy.max_generations=3", "pbt.policy.min_score="]
                                  if args.smoke else [])
    with tempfile.TemporaryDirectory() as tmp:
        table = measure(preset, overrides, args.cpus, Path(tmp))
    print(f"PBT overhead, preset {preset}, {args.cpus} CPUs")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    total = 1.0 - table.step_s.sum() / (table.slots * table.wall_s).sum()
    tune = 1.0 - table.ideal_s.sum() / table.wall_s.sum()
    print(f"\nover generations 1..{len(table)}: overhead {100 * total:.1f} %, of which Tune's "
          f"{100 * tune:.1f} % (the rest: barrier imbalance)")


if __name__ == "__main__":
    main()
