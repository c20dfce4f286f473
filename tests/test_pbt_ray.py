"""PBT on a local Ray: exploitation, divergence, restore after an interrupt, crash recovery.

One Ray instance for the whole module (starting Ray costs seconds); tiny data and budgets.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

ray = pytest.importorskip("ray")

from rpu_ray import data  # noqa: E402
from rpu_ray.checkpoint import (  # noqa: E402
    BEST_CHECKPOINT_DIR,
    MEMBER_RESULT_FILE,
    MEMBER_STATE_FILE,
    load_checkpoint,
)
from rpu_ray.config import load_config  # noqa: E402
from rpu_ray.driver import run_pbt, run_pbt_locally  # noqa: E402
from rpu_ray.experiment import read_events, resume_pbt  # noqa: E402
from rpu_ray.export import load_vae  # noqa: E402
from rpu_ray.pbt import clone_seed, decisions_frame  # noqa: E402
from rpu_ray.population import initial_population, seed_words  # noqa: E402
from trainables.member import FAULT_ENV  # noqa: E402

# Tiny budgets; no end condition on low UDR (members this small rarely reach 0.1).
SMALL = ["train.generation_images=200", "pbt.policy.max_generations=3", "eval.udr_points=100",
         "pbt.policy.min_score="]


@pytest.fixture(scope="module")
def fault_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where a test puts a fault for the trials to inject (see trainables.member)."""
    return tmp_path_factory.mktemp("faults") / "fault"


@pytest.fixture(scope="module")
def ray_session(fault_file: Path):
    # Workers inherit the environment of the Ray instance started here.
    os.environ[FAULT_ENV] = str(fault_file)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024**2)
    yield
    ray.shutdown()
    del os.environ[FAULT_ENV]


def _generations(out: Path) -> list[dict]:
    lines = (out / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == "generation"]


def _generations_after_resume(out: Path) -> list[dict]:
    """One summary per generation (`read_events`). A barrier Tune saved before its decisions
    is redone after the restore and logged again (a timing matter): with the same scores."""
    first: dict[int, float] = {}
    for summary in _generations(out):
        best = first.setdefault(summary["generation"], summary["best_score"])
        assert summary["best_score"] == best, summary
    return read_events(out, "generation")


def _seed_with_mixed_population(overrides: list[str]) -> int:
    """A seed whose 4 initial members include both lr values of a two-value grid."""
    for seed in range(50):
        config = load_config(preset_name="smoke", overrides=[*overrides, f"seed={seed}"])
        lrs = [m["lr"] for m in initial_population(config, "pbt")]
        if 1 <= lrs.count(1e6) <= 2:
            return seed
    raise AssertionError("no seed gives a mixed population")


def test_pbt_exploits_and_replaces_diverged_members(ray_session, tmp_path: Path) -> None:
    # lr 1e6 makes a member diverge (NaN loss) in its first generation.
    overrides = [*SMALL, "pbt.policy.lr_max=1e6", "pbt.policy.lr_grid=[1e-3, 1e6]"]
    seed = _seed_with_mixed_population(overrides)
    config = load_config(preset_name="smoke", overrides=[*overrides, f"seed={seed}"])
    dataset = data.load("dsprites", image_size=32, subsample=config.data.subsample)
    result = run_pbt(config, dataset, "udr", tmp_path, progress=False)

    assert result.stop_reason == "max_generations" and result.generations == 3
    assert result.num_errors == 0
    assert [g["generation"] for g in _generations(tmp_path)] == [0, 1, 2]
    # Every member has TensorBoard logs (tensorboardX installed: Tune's default loggers).
    trials = sorted((tmp_path / "tune" / "pbt").glob("MemberTrainable_*"))
    assert len(trials) == 4 and all(any(d.glob("events.out.tfevents.*")) for d in trials)
    # Clones restore from copies of their donors' checkpoints, in their own trial folders
    # (one clone per barrier in a population of 4; barrier 2 stops the run). A barrier deletes
    # the copies of the barrier two before it once they are older than the grace period:
    # barrier 0's is seconds old at barrier 2 here (its deletion: test_generational_pbt).
    handed = list((tmp_path / "tune" / "pbt").glob("MemberTrainable_*/handover/*"))
    assert sorted(p.name for p in handed) == ["0", "1"]
    assert all((p / "member.pt").exists() for p in handed)
    results = pd.read_csv(tmp_path / "results.csv")
    # Every member's every generation, also the rows from before a member was cloned.
    assert len(results) == 4 * 3
    assert all(sorted(its) == [1, 2, 3]
               for its in results.groupby("member").training_iteration.apply(list))
    first = results[results.training_iteration == 1]
    # Diverged (NaN loss or non-finite codes): the worst score, -inf.
    diverged = set(first[np.isneginf(first.score)].member)
    assert diverged and diverged == set(first[first.lr == 1e6].member)

    decisions = decisions_frame(tmp_path / "events.jsonl")
    at_zero = decisions[decisions.generation == 0]
    # Every diverged member is replaced by a finite-scored donor at the first barrier.
    assert diverged <= set(at_zero.member_index)
    assert set(at_zero.donor_index).isdisjoint(diverged)
    assert at_zero["member_score"].isna().all() or not diverged
    # The clone carries the donor's lineage and the explored hyperparameters.
    clone = int(at_zero.member_index.iloc[0])
    donor = int(at_zero.donor_index.iloc[0])
    later = results[(results.member == clone) & (results.training_iteration == 2)].iloc[0]
    assert later.lineage == f"{donor}-{clone}"
    new_lr = at_zero["new_hparams.lr"].iloc[0]
    assert later.lr == pytest.approx(new_lr)
    assert later.lr != 1e6 and np.isfinite(later.score)
    factors = at_zero["factors.lr"].iloc[0]
    assert factors in (2.0, 1.2, 0.8, 0.5)
    # The policy names members by index (as the in-process executor): a clone's seed follows
    # from (run, generation, member index), not from Tune's trial ids, whose random prefix
    # changes from run to run.
    assert (decisions.member == decisions.member_index.astype(str)).all()
    assert (decisions.donor == decisions.donor_index.astype(str)).all()
    assert "factors.beta" in decisions  # beta-TCVAE: beta is explored
    run_seed = seed_words(config.seed, "pbt")
    assert decisions.seed.tolist() == [clone_seed(run_seed, g, str(m)) for g, m in zip(
        decisions.generation, decisions.member_index, strict=True)]

    # Checkpoints record the lineage too; the exported VAE loads and carries its score.
    trial_dirs = sorted((tmp_path / "tune" / "pbt").glob("MemberTrainable_*"))
    lineages = {tuple(load_checkpoint(ck / MEMBER_STATE_FILE)["lineage"])
                for d in trial_dirs for ck in d.glob("checkpoint_*")}
    assert any(len(lineage) == 2 for lineage in lineages)
    # Beside each state, the result it scored: a finite score belongs to a state that trained
    # all its generations' images (diverged ones stop early and score None).
    images = config.train.generation_images
    for checkpoint in (ck for d in trial_dirs for ck in d.glob("checkpoint_*")):
        scored = json.loads((checkpoint / MEMBER_RESULT_FILE).read_text())
        state = load_checkpoint(checkpoint / MEMBER_STATE_FILE)["member"]
        if scored["score"] is not None:
            assert state["total_images"] == scored["training_iteration"] * images
    model, metadata = load_vae(tmp_path / "best_vae.pt")
    assert model.num_models == 1 and np.isfinite(metadata["score"])
    assert metadata["score"] == pytest.approx(result.best_score)
    # The exported snapshot is the best result's member at that generation.
    best_row = results.loc[results.score.idxmax()]
    best_state = load_checkpoint(tmp_path / "best_member.pt")["member"]
    assert best_state["total_images"] == best_row.training_iteration * images
    assert metadata["score"] == best_row.score
    assert (metadata["member"], metadata["generation"]) == (
        best_row.member, best_row.training_iteration - 1)
    # At every barrier the scheduler copies the best checkpoint so far out of reach of Tune's
    # retention: by the last barrier, the best state of the generations before the last one
    # (the last one's are on disk at the export).
    kept = list((tmp_path / "tune" / "pbt" / BEST_CHECKPOINT_DIR).iterdir())
    assert len(kept) == 1
    kept_result = json.loads((kept[0] / MEMBER_RESULT_FILE).read_text())
    earlier = results[(results.training_iteration < 3) & np.isfinite(results.score)]
    assert kept_result["score"] == earlier.score.max()
    kept_row = earlier.loc[earlier.score.idxmax()]
    assert (kept_result["member"], kept_result["training_iteration"]) == (
        kept_row.member, kept_row.training_iteration)
    kept_state = load_checkpoint(kept[0] / MEMBER_STATE_FILE)["member"]
    assert kept_state["total_images"] == kept_row.training_iteration * images
    assert (tmp_path / "pbt.png").stat().st_size > 0
    assert load_config(tmp_path / "config.yaml") == config

    # The same experiment without Ray (the in-process executor of benchmarks/replicate.py)
    # is the same run: every score and every decision, bit for bit. Ray's trials train with
    # one torch thread (cpus_per_trial = 1), so the local run does too.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = run_pbt_locally(config, dataset, "udr", tmp_path / "local", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert local.best_score == result.best_score
    columns = ["member", "training_iteration", "score", "lr", "batch_size", "beta"]
    local_results = pd.read_csv(tmp_path / "local" / "results.csv")
    pd.testing.assert_frame_equal(
        local_results[columns].sort_values(columns[:2], ignore_index=True),
        results[columns].sort_values(columns[:2], ignore_index=True), check_dtype=False)
    local_decisions = decisions_frame(tmp_path / "local" / "events.jsonl")
    pd.testing.assert_frame_equal(local_decisions[decisions.columns.drop(
        ["member_index", "donor_index", "member", "donor"])],
        decisions[decisions.columns.drop(["member_index", "donor_index", "member", "donor"])])
    assert local_decisions.member.astype(int).tolist() == decisions.member_index.tolist()
    # Both count the latents UDR's KL filter left out of each generation's best member.
    filtered = [g["filtered_latents"] for g in _generations(tmp_path)]
    assert filtered == [g["filtered_latents"] for g in _generations(tmp_path / "local")]
    assert all(0 <= f <= config.model.num_models * config.model.z_dim for f in filtered)


def test_interrupted_run_resumes_where_it_stopped_after_its_folder_moved(
        ray_session, tmp_path: Path) -> None:
    started = tmp_path / "run"
    _interrupt_after(_pbt_command(started, "pbt.policy.max_generations=4"), started,
                     generations=1)
    done_before = len(_generations(started))
    assert 1 <= done_before < 4
    # Moved (as a folder copied off a lost node is): the logs and the copies handed to
    # clones follow it, nothing is written to the old place.
    out = tmp_path / "moved"
    started.rename(out)

    resume_pbt(out)
    assert not started.exists()
    generations = _generations_after_resume(out)
    assert [g["generation"] for g in generations] == list(range(4))
    assert generations[-1]["stop_reason"] == "max_generations"
    results = pd.read_csv(out / "results.csv")
    assert results.groupby("trial_id").training_iteration.max().eq(4).all()


def _interrupt_after(command: list[str], out: Path, generations: int) -> None:
    """Run `command` (an `rpu-ray pbt` into `out`) and Ctrl+C it once `generations`
    generations are logged; its output must say how to resume."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    # Generous: on 2 busy cores (another job beside the tests) 300 s were once not enough.
    deadline = time.time() + 900
    while time.time() < deadline and process.poll() is None:
        if (out / "events.jsonl").exists() and len(_generations(out)) >= generations:
            break
        time.sleep(0.5)
    assert process.poll() is None, process.stdout.read()
    if not ((out / "events.jsonl").exists() and len(_generations(out)) >= generations):
        process.kill()
        raise AssertionError(f"no {generations} generations after 900 s")
    process.send_signal(signal.SIGINT)  # Ctrl+C: Tune saves its state and returns
    output, _ = process.communicate(timeout=120)
    assert "interrupted after" in output and "--resume" in output, output


def _pbt_command(out: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "rpu_ray.cli", "-q", "pbt", "--preset", "smoke",
            "--out", str(out), *[a for o in [*SMALL, *overrides] for a in ("--set", o)]]


def test_resumed_run_leaves_a_member_that_failed_for_good_behind(
        ray_session, fault_file: Path, tmp_path: Path) -> None:
    """A member fails for good in generation 1 (no retries); the run is interrupted after it
    and resumed: the three others finish every generation, the failed one is not restarted
    (it would re-run generations the others have passed)."""
    out = tmp_path / "run"
    fault_file.write_text("raise")  # the subprocess inherits the fault's path (ray_session)
    _interrupt_after(_pbt_command(out, "pbt.max_failures=0", "pbt.policy.max_generations=6",
                                  "train.generation_images=1000"), out, generations=2)
    assert not fault_file.exists()
    done_before = len(_generations(out))
    assert 2 <= done_before < 6

    resume_pbt(out)
    generations = _generations_after_resume(out)
    assert [g["generation"] for g in generations] == list(range(6))
    assert [g["population"] for g in generations] == [4, 3, 3, 3, 3, 3]
    assert generations[-1]["stop_reason"] == "max_generations"
    last = pd.read_csv(out / "results.csv").groupby("trial_id").training_iteration.max()
    assert sorted(last.tolist())[-3:] == [6, 6, 6] and sorted(last.tolist())[:-3] in ([1], [])


@pytest.mark.parametrize(("fault", "max_failures"), [("raise", 2), ("kill", 2), ("raise", 0)])
def test_failed_trial_is_retried_or_left_behind(ray_session, fault_file: Path, tmp_path: Path,
                                                fault: str, max_failures: int) -> None:
    """A trial that raises once, or whose process is killed mid-step, resumes from its last
    checkpoint (FailureConfig); without retries it fails for good and the others finish."""
    config = load_config(preset_name="smoke",
                         overrides=[*SMALL, f"pbt.max_failures={max_failures}"])
    dataset = data.load("dsprites", image_size=32, subsample=config.data.subsample)
    fault_file.write_text(fault)
    result = run_pbt(config, dataset, "udr", tmp_path, progress=False)
    assert not fault_file.exists()  # the fault was claimed by one trial
    assert result.stop_reason == "max_generations"
    results = pd.read_csv(tmp_path / "results.csv")
    last = results.groupby("trial_id").training_iteration.max()
    state = json.loads(max((tmp_path / "tune" / "pbt").glob("experiment_state-*.json")
                           ).read_text())
    # Each entry is (trial description, run metadata) as JSON strings; Tune counts failures.
    failures = [json.loads(metadata)["num_failures"] for _, metadata in state["trial_data"]]
    assert sum(failures) == 1
    if max_failures:
        assert result.num_errors == 0 and last.eq(3).all()
    else:  # the failed member stopped after its first generation, the others went on
        assert result.num_errors == 1
        assert [g["population"] for g in _generations(tmp_path)] == [4, 3, 3]
        # Three members finished; the failed one has 1 result, or none in results.csv when it
        # had just been cloned (Tune starts a clone's progress.csv at its next result).
        assert sorted(last.tolist())[-3:] == [3, 3, 3] and sorted(last.tolist())[:-3] in ([1], [])


def test_supervised_pbt_with_few_labels_and_a_big_initial_population(ray_session,
                                                                     tmp_path: Path) -> None:
    """PBT-S-VAE scored by MIG on 200 labels; after generation 0 only the best half stays.
    The objective is a plain VAE, which has no beta to tune."""
    config = load_config(preset_name="smoke", overrides=[
        *SMALL, "model.loss=vae", "model.num_models=1", "eval.labels=200", "eval.mig_points=500",
        "pbt.policy.max_generations=2", "pbt.policy.big_init_population_factor=2"])
    dataset = data.load("dsprites", image_size=32, subsample=config.data.subsample)
    result = run_pbt(config, dataset, "mig", tmp_path, progress=False)
    assert result.stop_reason == "max_generations" and result.num_errors == 0
    generations = _generations(tmp_path)
    assert [g["population"] for g in generations] == [2, 2]
    assert generations[0]["dropped"] == 2
    # Only the kept half is ranked in generation 1 (the choice of who is kept is tested in
    # test_pbt_policy). A dropped member that was still being checkpointed at the barrier
    # stops at its next result instead of at once, so it may log one more generation.
    results = pd.read_csv(tmp_path / "results.csv")
    last = results.groupby("member").training_iteration.max()
    assert (last == 2).sum() >= 2 and last.min() >= 1
    assert 0.0 <= result.best_score <= 1.0
    _, metadata = load_vae(tmp_path / "best_vae.pt")
    assert metadata["mode"] == "mig"
    # No beta anywhere: Ray adds a key of its mutation spec that a trial's config lacks.
    decisions = decisions_frame(tmp_path / "events.jsonl")
    assert len(decisions) and not [c for c in decisions.columns if c.endswith(".beta")]
    assert not [c for c in results.columns if c.endswith("beta")]  # "config/beta" included
    assert all("beta" not in g["best_hparams"] for g in generations)
