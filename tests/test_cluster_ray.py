"""Cluster behaviour on one CPU machine: fractional (fake) GPUs, and a 2-node Ray cluster that
loses a node in the middle of a generation."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from rpu_ray import data  # noqa: E402
from rpu_ray.config import ResourcesConfig, load_config  # noqa: E402
from rpu_ray.driver import run_pbt  # noqa: E402
from rpu_ray.experiment import gpu_warning  # noqa: E402
from trainables.member import MemberTrainable, choose_device, gpu_memory_share  # noqa: E402

SMALL = ["train.generation_images=200", "eval.udr_points=100", "pbt.policy.min_score="]


def _dataset(config):
    return data.load("dsprites", image_size=32, subsample=config.data.subsample)


@pytest.mark.parametrize(("gpus", "fraction", "share"), [
    (0.25, None, 0.25), (0.5, None, 0.5), (1.0, None, 1.0), (2.0, None, 1.0), (0.0, None, 1.0),
    (0.25, 0.2, 0.2)])
def test_gpu_memory_share(gpus: float, fraction: float | None, share: float) -> None:
    resources = ResourcesConfig(gpus_per_trial=gpus, gpu_memory_fraction=fraction)
    assert gpu_memory_share(resources) == share


@pytest.mark.parametrize("cuda_visible", [False, True])
def test_auto_device_is_the_gpu_ray_assigned(cuda_visible: bool,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: cuda_visible)
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert choose_device("auto", []) == cpu  # no GPU asked for: not GPU 0 of the node
    assert choose_device("auto", [3]) == (gpu if cuda_visible else cpu)
    assert choose_device("cpu", [3]) == cpu
    if cuda_visible:
        assert choose_device("cuda", []) == gpu  # asked for explicitly
    else:
        with pytest.raises(RuntimeError, match="no GPU is visible"):
            choose_device("cuda", [0])


def test_gpus_that_members_do_not_ask_for_or_cannot_get_are_warned_about() -> None:
    config = load_config(preset_name="smoke")
    assert "has 4 GPU(s) but resources.gpus_per_trial is 0" in gpu_warning(4.0, config)
    assert gpu_warning(0.0, config) is None
    config.resources.gpus_per_trial = 0.25
    assert gpu_warning(4.0, config) is None
    assert "asks for 0.25 GPU(s) and the cluster has none yet" in gpu_warning(0.0, config)
    config.resources.gpus_per_trial, config.train.device = 0.0, "cpu"
    assert gpu_warning(4.0, config) is None


def test_member_actors_say_which_member_of_which_run_they_train() -> None:
    # Ray shows this repr in the dashboard's actor list and in log prefixes.
    trainable = MemberTrainable.__new__(MemberTrainable)
    assert repr(trainable) == "MemberTrainable"  # before setup
    trainable.run_name, trainable.member_index = "leaf1-2", 3
    assert repr(trainable) == "member 3 of pbt:leaf1-2"


def test_fractional_gpus_put_two_members_on_one_gpu(tmp_path: Path) -> None:
    # Ray only schedules by the GPU resource; a faked GPU tests the placement without CUDA
    # (the members then train on the CPU, as `train.device: auto` chooses).
    config = load_config(preset_name="smoke", overrides=[
        *SMALL, "pbt.population=2", "pbt.policy.max_generations=2",
        "train.generation_images=2000",  # steps of seconds: a clear overlap
        "resources.gpus_per_trial=0.5", "resources.cpus_per_trial=0.5"])
    ray.init(num_cpus=1, num_gpus=1, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024**2)
    try:
        result = run_pbt(config, _dataset(config), "udr", tmp_path, progress=False)
    finally:
        ray.shutdown()
    assert result.num_errors == 0 and result.generations == 2
    results = pd.read_csv(tmp_path / "results.csv")
    assert set(results.gpu_ids) == {"[0]"}  # both members saw the one GPU
    # With 1 CPU and 1 GPU only halves fit twice: the two members trained at the same time.
    # (Tune's `timestamp` has whole seconds; the trainable's own start time does not.)
    first = results[results.training_iteration == 1]
    starts = first.step_started_at
    assert starts.max() < (starts + first.time_this_iter_s).min()


@pytest.mark.slow
def test_pbt_survives_losing_a_node_mid_generation(tmp_path: Path) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "include_dashboard": False, "object_store_memory": 256 * 1024**2})
    worker = cluster.add_node(num_cpus=2, object_store_memory=256 * 1024**2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    config = load_config(preset_name="smoke", overrides=[
        *SMALL, "train.generation_images=1500", "pbt.policy.max_generations=4",
        "pbt.policy.convergence_patience=", "pbt.max_failures=3"])
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = run_pbt(config, _dataset(config), "udr", tmp_path,
                                        progress=False)
        except BaseException as error:  # reported by the assertion below
            outcome["error"] = error

    thread = threading.Thread(target=run)
    try:
        thread.start()
        events = tmp_path / "events.jsonl"
        deadline = time.monotonic() + 600
        # Kill point: generation 0 is done and generation 1 is training on both nodes.
        while not (events.exists() and '"generation": 0' in events.read_text()):
            assert time.monotonic() < deadline and thread.is_alive(), outcome
            time.sleep(0.2)
        time.sleep(2.0)
        cluster.remove_node(worker)
        thread.join(timeout=900)
        assert not thread.is_alive(), "the run did not finish after losing a node"
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.generations == 4 and result.num_errors == 0
    results = pd.read_csv(tmp_path / "results.csv")
    assert results.node_id.nunique() == 2  # the population was spread over both nodes
    generations = [json.loads(line) for line in events.read_text().splitlines()]
    final = [g for g in generations if g["event"] == "generation"][-1]
    assert final["generation"] == 3 and final["population"] == 4
