"""Experiment directories: create, validate and resume runs (what the CLI calls).

Every run directory holds `run.json` (what kind of run, the rpu-ray version and the directory
format) next to the fully resolved `config.yaml`. `resume` refuses a directory that is not an
rpu-ray experiment or was written in an incompatible format, before anything is started or
modified.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rpu_ray import __version__, data
from rpu_ray.config import ExperimentConfig, load_config

RUN_FILE = "run.json"
DIR_FORMAT = 1


class ExperimentDirError(RuntimeError):
    """An output directory cannot be used (exists already, or is not a resumable run)."""


def read_run_file(directory: str | Path) -> dict[str, Any]:
    """The run description of an experiment directory, validated."""
    directory = Path(directory)
    path = directory / RUN_FILE
    if not directory.is_dir():
        raise ExperimentDirError(f"{directory}: no such directory")
    if not path.exists():
        raise ExperimentDirError(f"{directory}: not an rpu-ray experiment (no {RUN_FILE})")
    try:
        run = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ExperimentDirError(f"{path}: unreadable ({err})") from None
    if not isinstance(run, dict) or run.get("format") != DIR_FORMAT:
        found = run.get("format") if isinstance(run, dict) else None
        raise ExperimentDirError(
            f"{directory}: written in directory format {found} by rpu-ray "
            f"{run.get('rpu_ray_version', '?') if isinstance(run, dict) else '?'}; this is "
            f"rpu-ray {__version__} (format {DIR_FORMAT}): it cannot be resumed by this version")
    return run


def _new_directory(out: str | Path | None, config: ExperimentConfig, mode: str) -> Path:
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{config.name}-{mode}-{stamp}"
    out = Path(out)
    if (out / RUN_FILE).exists():
        raise ExperimentDirError(f"{out}: already holds a run; use --resume {out} to continue it "
                                 "or choose another --out")
    return out


def _init_ray(address: str | None) -> None:
    import ray

    # Tune's per-exploit INFO lines repeat what events.jsonl and our progress lines say, and
    # it warns about the missing progress.csv of every fresh clone.
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    logging.getLogger("ray.tune.logger").setLevel(logging.ERROR)
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address=address, log_to_driver=False)


def _load_data(config: ExperimentConfig) -> data.Dataset:
    dataset = data.load(config.data.spec, image_size=config.data.image_size,
                        subsample=config.data.subsample, seed=config.data.seed)
    print(f"[rpu-ray] data: {dataset.describe()}", flush=True)
    return dataset


def start_pbt(config_path: str | Path | None, preset: str | None, overrides: Iterable[str],
              mode: str, out: str | Path | None, address: str | None = None) -> Path:
    """Validate everything, then run one PBT experiment; returns its directory."""
    config = load_config(config_path, preset, overrides)
    directory = _new_directory(out, config, mode)
    dataset = _load_data(config)  # data errors surface before Ray starts
    directory.mkdir(parents=True, exist_ok=True)
    (directory / RUN_FILE).write_text(json.dumps({
        "kind": "pbt", "mode": mode, "run": "pbt", "format": DIR_FORMAT,
        "rpu_ray_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    return _run(config, dataset, mode, directory, address, resume=False)


def resume_pbt(directory: str | Path, address: str | None = None) -> Path:
    """Continue an interrupted PBT experiment from its directory."""
    run = read_run_file(directory)
    if run.get("kind") != "pbt":
        raise ExperimentDirError(f"{directory}: a {run.get('kind')!r} run, not a PBT run")
    config = load_config(Path(directory) / "config.yaml")
    return _run(config, _load_data(config), run["mode"], Path(directory), address, resume=True)


def _run(config: ExperimentConfig, dataset: data.Dataset, mode: str, directory: Path,
         address: str | None, resume: bool) -> Path:
    from rpu_ray.driver import run_pbt

    _init_ray(address)
    print(f"[rpu-ray] {'resuming' if resume else 'starting'} PBT ({mode}) with "
          f"{config.pbt.population} members in {directory}", flush=True)
    result = run_pbt(config, dataset, mode, directory, run=read_run_file(directory)["run"],
                     resume=resume)
    if result.stop_reason is None:  # only a stop rule ends a run: this one was interrupted
        print(f"[rpu-ray] interrupted after {result.generations} generations; continue with "
              f"`rpu-ray pbt --resume {directory}`", flush=True)
    else:
        print(f"[rpu-ray] done after {result.generations} generations "
              f"(stop: {result.stop_reason})", flush=True)
    print(f"[rpu-ray] best score {result.best_score:.4f} by member {result.best_member} at "
          f"generation {result.best_generation}", flush=True)
    if result.num_errors:
        print(f"[rpu-ray] warning: {result.num_errors} member(s) failed permanently; the run "
              "finished with the others", flush=True)
    for name in ("best_vae.pt", "best_member.pt", "results.csv", "pbt.png", "events.jsonl"):
        print(f"[rpu-ray]   {directory / name}", flush=True)
    return directory
