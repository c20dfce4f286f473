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
# An rPU-VAE run's progress (written atomically by rpu_ray.driver.RPUDriver).
STATE_FILE = "state.json"
DIR_FORMAT = 1
# The status of a metaEpoch in an rPU-VAE run's state.json, and its leaf-run's stop reason,
# when every member diverged: no model, no labels.
NO_FINITE_SCORE = "no_finite_score"


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
        resume = f"rpu-ray resume {out}" if mode == "rpu" else f"rpu-ray pbt --resume {out}"
        raise ExperimentDirError(f"{out}: already holds a run; continue it with `{resume}` or "
                                 "choose another --out")
    if out.exists() and not out.is_dir():
        raise ExperimentDirError(f"{out}: exists and is not a folder")
    return out


def gpu_warning(cluster_gpus: float, config: ExperimentConfig) -> str | None:
    """The warning for a mismatch of the cluster's GPUs and the trials' request: a trial asks
    Ray for `resources.gpus_per_trial` GPUs and `train.device: auto` trains on what Ray
    assigned, so with 0 every member trains on the CPU; and trials that ask for GPUs on a
    cluster without any wait (for an autoscaler to add GPU nodes, as cluster.yaml's does)."""
    asked = config.resources.gpus_per_trial
    if cluster_gpus > 0 and asked == 0 and config.train.device == "auto":
        return (f"[rpu-ray] warning: the cluster has {cluster_gpus:g} GPU(s) but "
                "resources.gpus_per_trial is 0, so every member trains on the CPU; set e.g. "
                "--set resources.gpus_per_trial=0.25 (four members per GPU)")
    if cluster_gpus == 0 and asked > 0:
        return (f"[rpu-ray] warning: each member asks for {asked:g} GPU(s) and the cluster has "
                "none yet: members wait until an autoscaler adds GPU nodes (without GPUs, set "
                "--set resources.gpus_per_trial=0)")
    return None


def _init_ray(address: str | None, config: ExperimentConfig) -> None:
    import ray

    # Tune's per-exploit INFO lines repeat what events.jsonl and our progress lines say, and
    # it warns about the missing progress.csv of every fresh clone.
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    logging.getLogger("ray.tune.logger").setLevel(logging.ERROR)
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address=address, log_to_driver=False)
    warning = gpu_warning(ray.cluster_resources().get("GPU", 0.0), config)
    if warning:
        print(warning, flush=True)


def _load_data(config: ExperimentConfig) -> data.Dataset:
    dataset = data.load(config.data.spec, image_size=config.data.image_size,
                        subsample=config.data.subsample, seed=config.data.seed)
    print(f"[rpu-ray] data: {dataset.describe()}", flush=True)
    return dataset


def _create_directory(directory: Path, config: ExperimentConfig, run: dict[str, Any]) -> None:
    """The run's folder with its config.yaml and run.json (written last: a folder without it
    is not a run, and a new start may use it)."""
    from rpu_ray.config import dump_config

    directory.mkdir(parents=True, exist_ok=True)
    dump_config(config, directory / "config.yaml")
    (directory / RUN_FILE).write_text(json.dumps({
        **run, "format": DIR_FORMAT, "rpu_ray_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))


def start_pbt(config_path: str | Path | None, preset: str | None, overrides: Iterable[str],
              mode: str, out: str | Path | None, address: str | None = None) -> Path:
    """Validate everything, then run one PBT experiment; returns its directory."""
    from rpu_ray.population import check_pbt_mode

    config = load_config(config_path, preset, overrides)
    directory = _new_directory(out, config, mode)
    dataset = _load_data(config)  # data errors surface before Ray starts
    check_pbt_mode(config, dataset, mode)
    # Ray before the folder: a cluster that cannot be reached leaves no run behind.
    _init_ray(address, config)
    _create_directory(directory, config, {"kind": "pbt", "mode": mode, "run": "pbt"})
    return _run(config, dataset, mode, directory, resume=False)


def resume_pbt(directory: str | Path, address: str | None = None) -> Path:
    """Continue an interrupted PBT experiment from its directory."""
    run = read_run_file(directory)
    if run.get("kind") != "pbt":
        raise ExperimentDirError(f"{directory}: a {run.get('kind')!r} run, not a PBT run")
    config = load_config(Path(directory) / "config.yaml")
    dataset = _load_data(config)
    _init_ray(address, config)
    return _run(config, dataset, run["mode"], Path(directory), resume=True)


def _run(config: ExperimentConfig, dataset: data.Dataset, mode: str, directory: Path,
         resume: bool) -> Path:
    """Run PBT on the connected Ray cluster and print what it produced."""
    from rpu_ray.driver import run_pbt

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


# ----------------------------------------------------------------------------- rPU-VAE runs


def start_run(config_path: str | Path | None, preset: str | None, overrides: Iterable[str],
              out: str | Path | None, address: str | None = None) -> Path:
    """Validate everything, then run the whole rPU-VAE algorithm; returns its directory."""
    from rpu_ray.population import check_pbt_mode

    config = load_config(config_path, preset, overrides)
    directory = _new_directory(out, config, "rpu")
    dataset = _load_data(config)
    check_pbt_mode(config, dataset, "udr")  # the x-run and leaf-runs
    _init_ray(address, config)
    _create_directory(directory, config, {"kind": "rpu", "run": "rpu"})
    return _run_rpu(config, dataset, directory)


def resume_run(directory: str | Path, address: str | None = None) -> Path:
    """Continue an interrupted rPU-VAE run: finished metaEpochs are not redone."""
    run = read_run_file(directory)
    if run.get("kind") != "rpu":
        raise ExperimentDirError(f"{directory}: a {run.get('kind')!r} run; resume it with "
                                 f"`rpu-ray pbt --resume {directory}`")
    config = load_config(Path(directory) / "config.yaml")
    dataset = _load_data(config)
    _init_ray(address, config)
    return _run_rpu(config, dataset, Path(directory))


def _run_rpu(config: ExperimentConfig, dataset: data.Dataset, directory: Path) -> Path:
    """Run the driver as a Ray actor on the connected cluster and print its progress from the
    experiment directory."""
    import ray

    from rpu_ray.driver import DatasetHandle, RayRPUDriver

    print(f"[rpu-ray] rPU-VAE in {directory}: x-run, {config.rpu.leaf_runs} leaf-runs, final "
          f"model; {config.pbt.population} members of {config.model.num_models} VAEs",
          flush=True)
    actor_class = ray.remote(num_cpus=0, max_concurrency=2)(RayRPUDriver)
    driver = actor_class.options(name=f"rpu-driver:{directory.name}").remote(
        directory, config, DatasetHandle.put(dataset), progress=False)
    done = driver.run.remote()
    watcher = ProgressWatcher(directory)
    while True:
        ready, _ = ray.wait([done], timeout=2.0)
        watcher.print_new()
        if ready:
            break
    ray.get(done)  # raises the driver's error, if any
    watcher.print_new()
    from rpu_ray.report import write_report

    write_report(directory, dataset)
    print_summary(directory)
    return directory


class ProgressWatcher:
    """Prints new lines of an experiment's event logs (driver and current metaEpoch)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.offsets: dict[Path, int] = {}
        self.logs = [directory / "events.jsonl"]

    def _new_events(self, path: Path) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        with path.open() as f:
            f.seek(self.offsets.get(path, 0))
            text = f.read()
        complete = text[: text.rfind("\n") + 1]
        self.offsets[path] = self.offsets.get(path, 0) + len(complete)
        return [json.loads(line) for line in complete.splitlines()]

    def print_new(self) -> None:
        for path in list(self.logs):
            for event in self._new_events(path):
                if event["event"] == "exploit":  # one line per generation is enough
                    continue
                print(format_event(event, path.parent.name), flush=True)
                if event["event"] == "metaepoch_started":
                    self.logs.append(self.directory / "metaepochs" / event["key"] /
                                     "events.jsonl")
                elif event["event"] == "final_run_started":
                    self.logs.append(self.directory / "final" / "events.jsonl")


def format_event(event: dict[str, Any], where: str) -> str:
    kind = event["event"]
    if kind == "generation":
        best = event["best_score"]
        hparams = ", ".join(f"{k}={v:.3g}" for k, v in event["best_hparams"].items())
        text = (f"[{where}] generation {event['generation']}: best "
                f"{'n/a' if best is None else f'{best:.4f}'} ({hparams})")
        return text + (f" -> {event['stop_reason']}" if event["stop_reason"] else "")
    details = ", ".join(f"{k}={v}" for k, v in event.items() if k not in ("event", "time"))
    return f"[rpu-ray] {kind.replace('_', ' ')}: {details}"


def print_summary(directory: Path) -> None:
    """What the run produced: the label tree, the final model, the metrics, the report."""
    print(status_text(directory), flush=True)
    for name in ("final_model.pt", "metrics.json", "report.html", "report.md"):
        if (directory / name).exists():
            print(f"[rpu-ray]   {directory / name}", flush=True)


def read_state(directory: str | Path) -> dict[str, Any] | None:
    """An rPU-VAE run's state.json (None before the run wrote one); ExperimentDirError if it
    is not one."""
    path = Path(directory) / STATE_FILE
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ExperimentDirError(f"{path}: unreadable ({err})") from None
    kinds = {"phase": str, "metaepochs": dict, "leaf_runs": dict}
    if not (isinstance(state, dict)
            and all(isinstance(state.get(key), kind) for key, kind in kinds.items())):
        raise ExperimentDirError(f"{path}: not an rPU-VAE state (needs {', '.join(kinds)})")
    return state


def status_text(directory: str | Path) -> str:
    """The tree of an experiment: x-run, leaf-runs with their metaEpochs, final run."""
    directory = Path(directory)
    run = read_run_file(directory)
    if run.get("kind") != "rpu":
        raise ExperimentDirError(f"{directory}: status shows rPU-VAE runs; this is a "
                                 f"{run.get('kind')!r} run (see its events.jsonl)")
    state = read_state(directory)
    if state is None:
        return f"{directory}: starting (no state yet)"
    try:
        return _status_tree(directory, state)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ExperimentDirError(f"{directory / STATE_FILE}: malformed "
                                 f"({type(err).__name__}: {err})") from None


def _status_tree(directory: Path, state: dict[str, Any]) -> str:
    epochs = state["metaepochs"]

    def metaepoch_line(key: str) -> str:
        record = epochs.get(key)
        if record is None:
            return f"{key}: pending"
        if record["status"] == NO_FINITE_SCORE:
            return f"{key}: {record['size']:,} images, every member diverged (no finite score)"
        if record["status"] != "done":
            generations = len(read_events(directory / "metaepochs" / key, "generation"))
            return (f"{key}: running on {record['size']:,} images, {generations} generations "
                    "so far")
        text = (f"{key}: {record['size']:,} images, best UDR {record['best_score']:.3f} after "
                f"{record['generations']} generations ({record['stop_reason']}), active latents "
                f"{record['active_latents']}")
        labels = record.get("ground_truth", {}).get("labels")
        if labels:  # known factors: which one each label matches, and the MIG of that factor
            migs = record["ground_truth"]["mig_per_factor"]
            text += "; labels ~ " + ", ".join(
                f"z{z}: {name} (MIG {migs[name]:.2f})" for z, (name, _) in labels.items())
        return text

    lines = [f"rPU-VAE experiment {directory} (phase: {state['phase']})",
             f"  x-run   {metaepoch_line('x')}"]
    for leaf, record in sorted(state["leaf_runs"].items(), key=lambda item: int(item[0])):
        head = f"  leaf-run {leaf}: {record['status']}"
        if record.get("stop_reason"):
            head += f", stopped: {record['stop_reason']}, {record['levels']} label levels"
        lines.append(head)
        for step in record.get("steps", []):
            reduction = step["reduction"]
            lines.append(f"    depth {step['depth']}: reduction {reduction['message']}")
            if reduction["stop_reason"] is None:
                key = f"leaf{leaf}-{step['depth']}"
                lines.append(f"      {metaepoch_line(key)}")
    final = state.get("final")
    if final:
        text = f"  final: {final['status']}"
        if final["status"] == "done":
            text += (f", leaf-MIG {final['leaf_mig']:.3f} after {final['generations']} "
                     "generations")
            if "mig" in final:
                text += f", MIG on ground truth {final['mig']:.3f}"
        lines.append(text)
    if state.get("stop_reason"):
        lines.append(f"  stopped: {state['stop_reason']}")
    return "\n".join(lines)


def append_jsonl(path: Path, lines: Iterable[str]) -> None:
    """Append JSON lines (without their newlines) to an append-only log. A last line without
    its newline, a write cut short by a killed process, is dropped first: the new lines must
    not join it (`read_jsonl` leaves it out)."""
    with path.open("a+b") as f:
        end = f.seek(0, os.SEEK_END)
        if end:
            f.seek(end - 1)
            if f.read(1) != b"\n":
                f.seek(0)
                f.truncate(f.read().rfind(b"\n") + 1)
        f.write("".join(line + "\n" for line in lines).encode())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of an append-only JSON-lines log; none if it does not exist yet. A last
    line without its newline is a write cut short (a killed process) and is left out;
    ExperimentDirError names a line that is not a JSON object."""
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().split("\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            raise ExperimentDirError(f"{path}, line {number}: not a JSON record")
        records.append(record)
    return records


def read_events(directory: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The events of `directory/events.jsonl` (a run, a metaEpoch or the final run), all or
    only those of one kind ("generation", "exploit", "metaepoch_done", ...).

    A generation redone after a restore (Tune's saved state predates some of its results) logs
    its summary and decisions again: the later line replaces the earlier one (one summary per
    generation, one decision per member and generation), in the later one's place.
    """
    latest: dict[tuple[Any, ...], dict[str, Any]] = {}
    for position, event in enumerate(read_jsonl(Path(directory) / "events.jsonl")):
        name = event.get("event")
        key: tuple[Any, ...] = (
            (name, event.get("generation")) if name == "generation" else
            # by member index: Ray logs named members by trial id before 2026-11-29
            (name, event.get("generation"),
             str(event.get("member_index", event.get("member")))) if name == "exploit" else
            (position,))
        latest.pop(key, None)
        latest[key] = event
    return [e for e in latest.values() if kind is None or e.get("event") == kind]
