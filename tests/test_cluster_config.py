"""`cluster.yaml` and every YAML under `examples/` pass Ray's own `ray up` validation, offline."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray")

from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_FILES = [ROOT / "cluster.yaml", *sorted((ROOT / "examples").glob("cluster*.yaml"))]


def _validate(config: dict) -> None:
    validate_config(prepare_config(copy.deepcopy(config)))


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_yaml_validates_with_rays_schema(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    _validate(config)
    # The same auth mode on every node, the dashboard never on a public interface.
    commands = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    starts = [c for c in commands if "ray start" in c]
    assert starts and all("RAY_AUTH_MODE=token" in c for c in starts)
    assert all("--dashboard-host=127.0.0.1" in c for c in starts if "--head" in c)
    assert any('ray[default]==2.60.0' in c and "rpu-ray" in c for c in config["setup_commands"])


def test_validation_catches_a_typo() -> None:
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config["max_worker"] = config.pop("max_workers")  # a top-level typo
    with pytest.raises(Exception, match="max_worker"):
        _validate(config)
