"""Typed experiment configuration: dataclasses, presets, YAML load/dump and `key=value` overrides.

Every constant of the algorithm is a field here, with the paper's (authors') value as default;
presets (`rpu_ray/presets/*.yaml`) are data that override some of them. A configuration is
resolved in this order, later winning: defaults, preset, the user's YAML file, `--set`
overrides. Unknown keys, wrong types and out-of-range values raise one `ConfigError` that
names the key, before anything is started.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from rpu_ray.pbt import PBTPolicy
from rpu_ray.reduction import ReductionConfig

PRESETS = ("smoke", "demo", "paper")


class ConfigError(ValueError):
    """A configuration problem; the message names the key (such as `pbt.population`)."""


# ----------------------------------------------------------------------------- sections


@dataclass
class DataConfig:
    """What to train on (see `rpu_ray.data.load`)."""

    spec: str = "dsprites"
    image_size: int = 64
    # A count of images, or one stride per factor; None = everything.
    subsample: int | list[int] | None = None
    seed: int = 0

    def problems(self) -> list[str]:
        out = []
        if self.image_size not in (32, 64, 128):
            out.append(f"image_size: must be 32, 64 or 128, got {self.image_size}")
        if isinstance(self.subsample, int) and self.subsample < 1:
            out.append(f"subsample: a count must be positive, got {self.subsample}")
        if isinstance(self.subsample, list) and any(s < 1 for s in self.subsample):
            out.append(f"subsample: strides must be positive, got {self.subsample}")
        return out


@dataclass
class ModelConfig:
    """The VAEs of one member."""

    arch: Literal["authors", "dlib"] = "authors"
    num_models: int = 5
    z_dim: int = 10
    loss: str = "betatcvae"
    # The objective's hyperparameters that are fixed for the run (PBT tunes beta), e.g.
    # {"gamma": 20} for factorvae; unset ones take the objective's defaults (`VAELoss.defaults`).
    loss_hyperparameters: dict[str, float] = field(default_factory=dict)

    def problems(self) -> list[str]:
        out = []
        if self.num_models < 1:
            out.append(f"num_models: must be >= 1, got {self.num_models}")
        if self.z_dim < 2:
            out.append(f"z_dim: must be >= 2, got {self.z_dim}")
        from rpu_ray.models import LOSSES  # torch is only imported when a config is checked

        if self.loss not in LOSSES:
            out.append(f"loss: must be one of {', '.join(sorted(LOSSES))}, got {self.loss!r}")
        else:
            try:
                LOSSES[self.loss].fixed_hyperparameters(self.loss_hyperparameters)
            except ValueError as err:
                out.append(f"loss_hyperparameters: loss {self.loss!r}: {err}")
        return out


@dataclass
class TrainConfig:
    """How much a member trains per generation, and where."""

    # Images per member per generation (not optimiser steps), as the authors count.
    generation_images: int = 480_000
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # bf16 autocast and channels-last memory format; used on CUDA only.
    amp: bool = False
    channels_last: bool = False

    def problems(self) -> list[str]:
        if self.generation_images < 1:
            return [f"generation_images: must be positive, got {self.generation_images}"]
        return []


@dataclass
class EvalConfig:
    """How members are scored."""

    udr_points: int = 1000
    udr_batch_size: int = 10
    udr_correlation: Literal["lasso", "spearman"] = "lasso"
    udr_kl_threshold: float = 0.01
    # "gaussian": the true KL of q(z|x) to the prior; "authors": their batch pseudo-KL (§3.2).
    kl: Literal["gaussian", "authors"] = "gaussian"
    # Supervised scoring (PBT-S-VAE, and the final run's leaf-MIG per label level): points
    # drawn for MIG, or for DCI trained and tested on halves of them; `labels` limits the
    # labelled pool (the paper's semi-supervised 1000-PBT-S-VAE uses 1000). The authors drew
    # 50,000 for MIG (spec 4.1, 5.6; the paper preset does) and 10,000 + 10,000 for DCI; 10,000
    # here, the paper's evaluation size, keeps DCI scoring affordable.
    mig_points: int = 10_000
    mig_bins: int = 20
    labels: int | None = None
    dci_mode: Literal["exact", "fast"] = "fast"
    # One fixed evaluation subset per data set, as the authors (score_random_seed).
    score_seed: int = 0

    def problems(self) -> list[str]:
        out = []
        for name in ("udr_points", "udr_batch_size", "mig_points", "mig_bins"):
            if getattr(self, name) < 1:
                out.append(f"{name}: must be positive, got {getattr(self, name)}")
        if self.labels is not None and self.labels < 2:
            out.append(f"labels: needs at least 2 labelled images, got {self.labels}")
        if self.udr_kl_threshold < 0:
            out.append(f"udr_kl_threshold: must be >= 0, got {self.udr_kl_threshold}")
        return out


@dataclass
class PBTConfig:
    """Population-based training: population size, the policy (`rpu_ray.pbt.PBTPolicy`, every
    rule and constant of exploit/explore and of the stop rules) and fault tolerance."""

    population: int = 56
    policy: PBTPolicy = field(default_factory=PBTPolicy)
    # A crashed trial is restarted from its last checkpoint up to this many times.
    max_failures: int = 2
    # Checkpoints kept per trial: the best-scoring ones plus always the latest (>= 3, because
    # a donor's checkpoint must survive until its clones have loaded it).
    checkpoints_to_keep: int = 3

    def problems(self) -> list[str]:
        out = []
        if self.population < 2:
            out.append(f"population: PBT needs at least 2 members, got {self.population}")
        if self.max_failures < 0:
            out.append(f"max_failures: must be >= 0, got {self.max_failures}")
        if self.checkpoints_to_keep < 3:
            out.append(f"checkpoints_to_keep: must be >= 3, got {self.checkpoints_to_keep}")
        return out


@dataclass
class RPUConfig:
    """The recursion (Algorithm 1): leaf-runs, dataset reduction and the final model."""

    leaf_runs: int = 3
    # Leaf-runs are independent: they run at the same time (their trials share the cluster's
    # resources) up to this many; None = all of them.
    max_concurrent_leaf_runs: int | None = None
    # metaEpochs per leaf-run at most (the authors had no cap).
    max_depth: int = 6
    # Images per generation in leaf-run metaEpochs; None = max(10,000, |d|) as the authors.
    leaf_generation_images: int | None = None
    # Active latents, peak finding, intervals, intersections, size_d_min (rpu_ray.reduction).
    reduction: ReductionConfig = field(default_factory=ReductionConfig)
    # The final PBT-S-VAE on the surrogate labels (authors: 56 -> 28 single VAEs, 17
    # generations, no convergence rule).
    final_population: int | None = None  # None: pbt.population
    final_generations: int = 17
    final_big_init_factor: int = 2
    final_num_models: int = 1

    def problems(self) -> list[str]:
        out = []
        if self.leaf_runs < 0:
            out.append(f"leaf_runs: must be >= 0, got {self.leaf_runs}")
        if self.max_concurrent_leaf_runs is not None and self.max_concurrent_leaf_runs < 1:
            out.append("max_concurrent_leaf_runs: must be >= 1 (or null: all)")
        if self.max_depth < 1:
            out.append(f"max_depth: must be >= 1, got {self.max_depth}")
        if self.leaf_generation_images is not None and self.leaf_generation_images < 2:
            out.append("leaf_generation_images: must be >= 2")
        if self.final_population is not None and self.final_population < 2:
            out.append("final_population: PBT needs at least 2 members")
        if self.final_generations < 1 or self.final_big_init_factor < 1:
            out.append("final_generations and final_big_init_factor must be >= 1")
        if self.final_num_models < 1:
            out.append("final_num_models: must be >= 1")
        return out


@dataclass
class ResourcesConfig:
    """Ray resources of one trial (one member)."""

    cpus_per_trial: float = 1.0
    # Fractions share a GPU between trials (e.g. 0.25: four members per GPU).
    gpus_per_trial: float = 0.0
    # Per-process cap of GPU memory (torch.cuda.set_per_process_memory_fraction); None = the
    # trial's GPU share.
    gpu_memory_fraction: float | None = None

    def problems(self) -> list[str]:
        out = []
        if self.cpus_per_trial < 0 or self.gpus_per_trial < 0:
            out.append("cpus_per_trial/gpus_per_trial: must be >= 0")
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            out.append(f"gpus_per_trial: above 1 must be whole GPUs, got {self.gpus_per_trial}")
        fraction = self.gpu_memory_fraction
        if fraction is not None and not 0 < fraction <= 1:
            out.append(f"gpu_memory_fraction: must be in (0, 1], got {fraction}")
        return out


@dataclass
class ExperimentConfig:
    """A whole experiment. `seed` determines every random number generator of the run."""

    name: str = "rpu-ray"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    pbt: PBTConfig = field(default_factory=PBTConfig)
    rpu: RPUConfig = field(default_factory=RPUConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    def problems(self) -> list[str]:
        return [] if self.name.strip() else ["name: must not be empty"]


# ----------------------------------------------------------------------------- conversion


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", str(annotation)).replace("typing.", "")


def _convert(value: Any, annotation: Any, key: str) -> Any:
    """Check `value` against a type annotation and return it in that type."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of settings, got {value!r}")
        return _from_mapping(annotation, value, key)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{key}: must not be empty")
        for option in (o for o in options if o is not type(None)):
            try:
                return _convert(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(o) for o in options)}, "
                          f"got {value!r}")
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{key}: must be one of {', '.join(map(str, choices))}, "
                              f"got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        key_type, value_type = typing.get_args(annotation)
        return {_convert(k, key_type, key): _convert(v, value_type, f"{key}.{k}")
                for k, v in value.items()}
    if origin in (list, tuple):
        if isinstance(value, str) and "," in value:
            # `--set data.subsample=1,1,4,2,2` reads as the string "1,1,4,2,2": the same
            # comma form the CLI's --subsample takes, so read it as the list it means
            value = _read_yaml(f"v: [{value}]", key)["v"]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(annotation)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in
                         enumerate(zip(value, args, strict=True)))
        items = [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported configuration type {annotation!r} at {key}")


def _from_mapping(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        known = ", ".join(sorted(names))
        raise ConfigError(f"unknown setting {where}{unknown[0]} (known: {known})")
    kwargs = {name: _convert(value, hints[name], f"{prefix}.{name}" if prefix else name)
              for name, value in values.items()}
    try:
        instance = cls(**kwargs)
    except ValueError as err:  # classes that validate on construction (e.g. PBTPolicy)
        where = f"{prefix}: " if prefix else ""
        raise ConfigError(f"{where}{err}") from None
    problems = instance.problems() if hasattr(instance, "problems") else []
    if problems:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"{where}{problems[0]}")
    return instance


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples as lists), ready for YAML or JSON."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(config)


def from_dict(values: Mapping[str, Any]) -> ExperimentConfig:
    """An `ExperimentConfig` from a nested mapping (missing keys keep their defaults)."""
    return _from_mapping(ExperimentConfig, values)


# ----------------------------------------------------------------------------- files


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML ({str(err).splitlines()[0]})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of settings")
    return values


def preset(name: str) -> dict[str, Any]:
    """The settings of a preset ("smoke", "demo" or "paper") as a nested dict."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    text = resources.files("rpu_ray.presets").joinpath(f"{name}.yaml").read_text()
    return _read_yaml(text, f"preset {name}")


def parse_override(text: str) -> dict[str, Any]:
    """`pbt.population=8` -> {"pbt": {"population": 8}} (the value is parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected key=value, e.g. pbt.population=8")
    value = _read_yaml(f"v: {raw}", f"override {text!r}")["v"] if raw.strip() else None
    nested: dict[str, Any] = {}
    cursor = nested
    parts = key.strip().split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


def load_config(path: str | Path | None = None, preset_name: str | None = None,
                overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Resolve defaults <- preset <- YAML file <- overrides into a validated config.

    A YAML file may name its own preset with a top-level `preset:` key; an explicit
    `preset_name` wins over it.
    """
    values: dict[str, Any] = {}
    source = ""  # what an error is blamed on
    if path is not None:
        path = Path(path)
        source = f"{path}: "
        try:
            text = path.read_text()
        except OSError as err:
            raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a YAML text file") from None
        values = _read_yaml(text, str(path))
    file_preset = values.pop("preset", None)
    chosen = preset_name or file_preset
    try:
        base = _merge(preset(chosen) if chosen else {}, values)
    except ConfigError as err:
        raise ConfigError(f"{'' if preset_name else source}{err}") from None
    resolved = base
    for text in overrides:
        resolved = _merge(resolved, parse_override(text))
    try:
        return from_dict(resolved)
    except ConfigError as err:
        if resolved is not base:  # the file is not to blame when it is valid without them
            try:
                from_dict(base)
                source = ""
            except ConfigError:
                pass
        raise ConfigError(f"{source}{err}") from None


def dump_config(config: ExperimentConfig, path: str | Path) -> None:
    """Write the fully resolved config as YAML (readable back with `load_config`)."""
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
