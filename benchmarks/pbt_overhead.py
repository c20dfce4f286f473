"""Ray Tune overhead of generational PBT, against the training it wraps.

Runs one PBT experiment with a preset on a local Ray and compares, per generation, the wall
time between two generation barriers with the time the members spent in `step()` (training
plus scoring, Tune's `time_this_iter_s`), given how many members run at once:

    overhead = 1 - sum(step seconds) / (slots * wall seconds)

where slots = min(population, CPUs // cpus_per_trial). The overhead is what Tune adds:
pausing and resuming members at the barrier, checkpoints, exploitation, actor reuse, result
handling, plus the idle slots at the barrier when members finish at different times.
Target: < 5 % of a generation's time at the demo preset.

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
    step_seconds = results.groupby("training_iteration").time_this_iter_s.sum()
    slots = min(config.pbt.population, int(cpus // config.resources.cpus_per_trial))
    rows = []
    # Generation g (1-based iteration g+1) runs between barrier g-1 and barrier g; the first
    # generation also contains Ray's and the actors' start-up, reported separately.
    for g in range(1, len(barriers)):
        wall = barriers[g] - barriers[g - 1]
        busy = float(step_seconds.get(g + 1, 0.0))
        rows.append({"generation": g, "wall_s": wall, "step_s": busy, "slots": slots,
                     "overhead": 1.0 - busy / (slots * wall)})
    return pd.DataFrame(rows)


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
    print(f"\nmean overhead over generations 1..{len(table)}: {100 * total:.1f} %")


if __name__ == "__main__":
    main()
