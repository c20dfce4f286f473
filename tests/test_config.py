"""Configuration: presets, YAML round trip, overrides and every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rpu_ray.config import (
    PRESETS,
    ConfigError,
    ExperimentConfig,
    TrainConfig,
    dump_config,
    from_dict,
    load_config,
    parse_override,
    to_dict,
)


def test_defaults_are_the_authors_values() -> None:
    config = ExperimentConfig()
    assert config.model.num_models == 5 and config.model.z_dim == 10
    assert config.train.generation_images == 480_000
    assert config.eval.udr_points == 1000 and config.eval.udr_batch_size == 10
    assert config.eval.udr_kl_threshold == 0.01 and config.eval.mig_bins == 20


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load_and_round_trip_through_yaml(name: str, tmp_path: Path) -> None:
    config = load_config(preset_name=name)
    dump_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


def test_resolution_order_file_preset_overrides(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("preset: smoke\nmodel:\n  num_models: 3\nseed: 7\n")
    config = load_config(path, overrides=["seed=9", "data.subsample=[1, 1, 2, 2, 2]"])
    assert config.model.num_models == 3  # file over preset
    smoke, demo = (load_config(preset_name=name).train.generation_images
                   for name in ("smoke", "demo"))
    assert smoke != demo and smoke != TrainConfig().generation_images
    assert config.train.generation_images == smoke  # from the smoke preset
    assert config.seed == 9  # override over file
    assert config.data.subsample == [1, 1, 2, 2, 2]
    assert load_config(path, preset_name="demo").train.generation_images == demo


def test_example_experiment_file_loads_over_its_preset() -> None:
    path = Path(__file__).resolve().parents[1] / "examples" / "experiment.yaml"
    config = load_config(path, overrides=["seed=2"])
    demo = load_config(preset_name="demo")
    assert config.name == "my-images" and config.seed == 2
    assert config.data.subsample == 4096 and config.pbt.population == 4
    assert config.eval.udr_kl_threshold == demo.eval.udr_kl_threshold  # from the preset
    assert config.pbt.policy == demo.pbt.policy


def test_parse_override_values_are_yaml() -> None:
    assert parse_override("a.b=8") == {"a": {"b": 8}}
    assert load_config(overrides=["eval.udr_kl_threshold=1e-3"]).eval.udr_kl_threshold == 1e-3
    assert parse_override("x=[1, 2]") == {"x": [1, 2]}
    assert parse_override("x=") == {"x": None}
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("novalue")


def test_comma_separated_values_fill_list_settings_only() -> None:
    # the same comma form as the CLI's --subsample 1,1,4,2,2
    assert load_config(overrides=["data.subsample=1,1,4,2,2"]).data.subsample == [1, 1, 4, 2, 2]
    assert load_config(overrides=["name=a,b"]).name == "a,b"  # strings keep their commas
    with pytest.raises(ConfigError, match=r"data\.subsample: expected int or list"):
        load_config(overrides=["data.subsample=1,x"])


@pytest.mark.parametrize(("override", "message"), [
    ("modle.num_models=2", "unknown setting modle"),
    ("model.size=2", "unknown setting model.size"),
    ("model.num_models=two", "model.num_models: expected an integer"),
    ("model.num_models=2.5", "model.num_models: expected an integer"),
    ("model.num_models=0", "model.num_models: must be >= 1"),
    ("train.generation_images=-5", "train.generation_images: must be positive"),
    ("train.amp=1", "train.amp: expected true or false"),
    ("data.image_size=48", "data.image_size: must be 32, 64 or 128"),
    ("data.subsample=[1, -2]", "data.subsample: strides must be positive"),
    ("data.subsample=abc", "data.subsample: expected int or list"),
    ("eval.kl=exact", "eval.kl: must be one of gaussian, authors"),
    ("eval.labels=1", "eval.labels: needs at least 2"),
    ("resources.gpu_memory_fraction=2", r"resources.gpu_memory_fraction: must be in \(0, 1\]"),
    ("model=3", "model: expected a mapping"),
    ("name=", "name: expected a string"),
    ("name=' '", "name: must not be empty"),
    ("model.z_dim=1", "model.z_dim: must be >= 2"),
    ("model.loss=vqvae", "model.loss: must be one of"),
    ("data.subsample=0", "data.subsample: a count must be positive"),
    ("eval.udr_kl_threshold=-1", "eval.udr_kl_threshold: must be >= 0"),
    ("pbt.max_failures=-1", "pbt.max_failures: must be >= 0"),
    ("pbt.population=1", "pbt.population: PBT needs at least 2"),
    ("rpu.leaf_runs=-1", "rpu.leaf_runs: must be >= 0"),
    ("rpu.max_concurrent_leaf_runs=0", "rpu.max_concurrent_leaf_runs: must be >= 1"),
    ("rpu.max_depth=0", "rpu.max_depth: must be >= 1"),
    ("rpu.leaf_generation_images=1", "rpu.leaf_generation_images: must be >= 2"),
    ("rpu.final_population=1", "rpu.final_population: PBT needs at least 2"),
    ("rpu.final_generations=0", "rpu.final_generations and final_big_init_factor"),
    ("rpu.final_num_models=0", "rpu.final_num_models: must be >= 1"),
    ("resources.cpus_per_trial=-1", r"resources.cpus_per_trial/gpus_per_trial: must be >= 0"),
    ("resources.gpus_per_trial=1.5", "resources.gpus_per_trial: above 1 must be whole GPUs"),
])
def test_bad_values_raise_one_error_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_bad_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(listing)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("trian:\n  generation_images: 5\n")
    with pytest.raises(ConfigError, match=r"unknown\.yaml: unknown setting trian"):
        load_config(unknown)
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config(preset_name="huge")
    # YAML tags that would construct Python objects are refused (safe_load).
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(evil)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ConfigError, match=r"binary\.yaml: not a YAML text file"):
        load_config(binary)
    named = tmp_path / "named.yaml"
    named.write_text("preset: huge\n")
    with pytest.raises(ConfigError, match=r"named\.yaml: unknown preset 'huge'"):
        load_config(named)


def test_errors_blame_the_file_only_when_it_is_wrong(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("pbt:\n  population: 8\n")
    with pytest.raises(ConfigError, match=r"^pbt\.population: expected an integer"):
        load_config(good, overrides=["pbt.population=x"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("pbt:\n  population: x\n")
    with pytest.raises(ConfigError, match=r"^.*bad\.yaml: pbt\.population: expected an integer"):
        load_config(bad, overrides=["train.generation_images=100"])


def test_to_dict_is_plain() -> None:
    config = load_config(preset_name="smoke")
    values = to_dict(config)
    assert json.loads(json.dumps(values)) == values  # JSON's types only (tuples as lists)
    assert values["model"]["num_models"] == 2 and values["data"]["subsample"] == [3, 2, 8, 4, 4]
    assert from_dict(values) == config
