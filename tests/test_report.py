"""Reports: traversal grids, the Markdown/HTML report of a run directory, evaluate_file.

The run directories are built by hand (tiny random VAEs, a hand-written state.json), no Ray.
"""

from __future__ import annotations

import functools
import json
import re
import tempfile
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from PIL import Image

from rpu_ray import data
from rpu_ray.cli import main
from rpu_ray.config import dump_config, load_config
from rpu_ray.data import Dataset
from rpu_ray.evaluation import encode_images
from rpu_ray.experiment import ExperimentDirError, read_events
from rpu_ray.export import export_vae, load_vae
from rpu_ray.labels import LabelLevel, LeafRunLabels
from rpu_ray.metrics import dci, mig_per_factor, sap
from rpu_ray.models import VAEEnsemble
from rpu_ray.reduction import GAUSSIAN_KL_ACTIVE_THRESHOLD
from rpu_ray.report import (
    GAP,
    INACTIVE_BLEND,
    LABEL_WIDTH,
    NO_FACTORS,
    estimate_active_latents,
    evaluate_file,
    format_metrics_table,
    save_traversals,
    tile_box,
    traversal_grid,
    write_report,
)

SHAPE = (1, 32, 32)
Z_DIM = 10


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    # 1 shape, 3 scales, 5 orientations, 8 x 8 positions: 960 images (not cached: module scope
    # runs before the per-test private cache of conftest.py).
    return data.load("dsprites", image_size=32, subsample=[3, 2, 8, 4, 4], use_cache=False)


def _model(seed: int) -> VAEEnsemble:
    """A random VAE whose decoder's last layer is scaled up, so its images have contrast."""
    torch.manual_seed(seed)
    model = VAEEnsemble(1, SHAPE, Z_DIM, "authors")
    with torch.no_grad():
        model.decoder[-1].weight.mul_(20)
    return model.eval()


@functools.cache
def _exported_bytes(seed: int) -> bytes:
    member = {"config": {"num_models": 1, "image_shape": list(SHAPE), "z_dim": Z_DIM,
                         "arch": "authors"},
              "model": _model(seed).state_dict()}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "vae.pt"
        export_vae(member, 0, path, metadata={"mode": "udr", "score": 0.5})
        return path.read_bytes()


def _export(path: Path, seed: int) -> Path:
    """An exported VAE file of `_model(seed)` (exported once per seed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_exported_bytes(seed))
    return path


def _row_std(grid: Image.Image, row: int, steps: int, tile: int) -> float:
    pixels = np.asarray(grid, dtype=np.float64)
    tiles = [pixels[top:bottom, left:right]
             for left, top, right, bottom in (tile_box(row, j, tile) for j in range(steps))]
    return float(np.concatenate(tiles).std())


# ----------------------------------------------------------------------------- traversals


def test_traversal_grid_layout_is_latents_by_steps_and_deterministic(dataset) -> None:
    model = _model(0)
    image = dataset.images[5]
    grid = traversal_grid(model, image, active=[1, 3], steps=5, tile=40)
    assert grid.mode == "RGB"
    assert grid.size == (LABEL_WIDTH + 5 * (40 + GAP), GAP + Z_DIM * (40 + GAP))
    assert tile_box(Z_DIM - 1, 4, 40)[2:] == (grid.width - GAP, grid.height - GAP)
    again = traversal_grid(model, image, active=[1, 3], steps=5, tile=40)
    np.testing.assert_array_equal(np.asarray(grid), np.asarray(again))
    # tiles default to the image size, at least 64 pixels
    assert traversal_grid(model, image, active=[], steps=2).size == (
        LABEL_WIDTH + 2 * (64 + GAP), GAP + Z_DIM * (64 + GAP))
    # rows traverse different latents
    assert not np.array_equal(*(np.asarray(grid.crop(tile_box(r, 0, 40))) for r in (0, 1)))


def test_inactive_rows_have_lower_contrast_and_active_rows_a_marker(dataset) -> None:
    model, image = _model(0), dataset.images[5]
    everything = traversal_grid(model, image, active=range(Z_DIM), steps=5, tile=32)
    nothing = traversal_grid(model, image, active=[], steps=5, tile=32)
    mixed = traversal_grid(model, image, active=[2], steps=5, tile=32)
    for row in range(Z_DIM):
        full, reduced = (_row_std(g, row, 5, 32) for g in (everything, nothing))
        assert full > 10
        assert reduced == pytest.approx((1 - INACTIVE_BLEND) * full, rel=0.02)
    assert _row_std(mixed, 2, 5, 32) == pytest.approx(_row_std(everything, 2, 5, 32))
    assert _row_std(mixed, 3, 5, 32) == pytest.approx(_row_std(nothing, 3, 5, 32))

    def has_marker(row: int) -> bool:  # orange pixels in the row's label column
        top = tile_box(row, 0, 32)[1]
        label = np.asarray(mixed)[top:top + 32, :LABEL_WIDTH].reshape(-1, 3)
        return bool(((label[:, 0] > 200) & (label[:, 2] < 50)).any())

    assert has_marker(2) and not has_marker(3)


def test_traversal_grid_rejects_bad_inputs(dataset) -> None:
    model = _model(0)
    with pytest.raises(ValueError, match="out of range"):
        traversal_grid(model, dataset.images[0], active=[Z_DIM])
    with pytest.raises(ValueError, match="uint8 image"):
        traversal_grid(model, dataset.images[0].astype(np.float32), active=[])
    with pytest.raises(ValueError, match="single VAE"):
        traversal_grid(VAEEnsemble(2, SHAPE, Z_DIM), dataset.images[0], active=[])


def _mean_gaussian_kl(model: VAEEnsemble, images: np.ndarray) -> np.ndarray:
    """Per-latent mean of 0.5 (mu^2 + sigma^2 - log sigma^2 - 1) of the model's one VAE."""
    mu, logsigma = (a[0] for a in encode_images(model, images))
    return np.mean(0.5 * (mu**2 + np.exp(2 * logsigma) - 2 * logsigma - 1), axis=0)


@pytest.mark.parametrize("points", [100, 1000])  # a sample of the 240 images, and all of them
def test_estimate_active_latents_thresholds_the_mean_gaussian_kl(dataset, points: int) -> None:
    dataset = dataset.subset(np.arange(0, len(dataset), 4))
    model = _model(1)
    positions = (np.sort(np.random.default_rng(3).choice(240, points, replace=False))
                 if points < 240 else np.arange(240))
    kl = _mean_gaussian_kl(model, dataset.batch(positions))
    threshold = float(np.median(kl))  # about half the latents above it
    expected = np.flatnonzero(kl > threshold)
    assert 0 < len(expected) < Z_DIM
    np.testing.assert_array_equal(
        estimate_active_latents(model, dataset, points=points, seed=3, threshold=threshold),
        expected)


def test_save_traversals_is_reproducible_and_estimates_active_latents(tmp_path, dataset) -> None:
    dataset = dataset.subset(np.arange(0, len(dataset), 4))
    path = _export(tmp_path / "vae.pt", seed=1)
    first = save_traversals(path, dataset, tmp_path / "a.png", seed=3)
    second = save_traversals(path, dataset, tmp_path / "b.png", seed=3)
    assert first.read_bytes() == second.read_bytes()
    model, _ = load_vae(path)
    # all 240 images (fewer than the 1000 points), the default threshold
    active = np.flatnonzero(_mean_gaussian_kl(model, dataset.all_images())
                            > GAUSSIAN_KL_ACTIVE_THRESHOLD).tolist()
    image = dataset.batch([int(np.random.default_rng(3).integers(len(dataset)))])[0]
    expected = traversal_grid(model, image, active)
    np.testing.assert_array_equal(np.asarray(Image.open(first)), np.asarray(expected))
    explicit = save_traversals(path, dataset, tmp_path / "c.png", active=[0], seed=3)
    np.testing.assert_array_equal(np.asarray(Image.open(explicit)),
                                  np.asarray(traversal_grid(model, image, [0])))


# ----------------------------------------------------------------------------- run directories


def _generation_events(path: Path, count: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for g in range(count):
            f.write(json.dumps({"event": "generation", "generation": g, "best_score": 0.3 + g,
                                "median_score": 0.1, "best_member": 0, "stop_reason": None,
                                "best_hparams": {"lr": 1e-3, "batch_size": 64, "beta": 4}}))
            f.write("\n")


def _plot(path: Path) -> None:
    Image.new("RGB", (40, 20), (10, 120, 200)).save(path)


def _metaepoch(out: Path, key: str, indices: np.ndarray, latents: list[int], seed: int,
               done: bool = True) -> dict:
    directory = out / "metaepochs" / key
    _generation_events(directory / "events.jsonl", 3 if done else 1)
    if not done:
        return {"status": "running", "size": len(indices)}
    _export(directory / "best_vae.pt", seed)
    _plot(directory / "pbt.png")
    labels = np.random.default_rng(seed).normal(size=(len(indices), len(latents)))
    LeafRunLabels(0, [LabelLevel(indices, labels, np.array(latents))]).save(
        directory / "labels.npz")
    return {"status": "done", "size": len(indices), "best_score": 0.42, "generations": 3,
            "stop_reason": "converged", "active_latents": latents,
            "kl": [0.0] * Z_DIM, "model": str(directory / "best_vae.pt")}


def _reduction(size: int, stop: str | None, message: str) -> dict:
    return {"stop_reason": stop, "message": message, "num_points": 960, "size": size,
            "choice": 0, "candidate_sizes": [size], "latents": []}


def make_run(out: Path, finished: bool = True, data_spec: str = "dsprites") -> Path:
    """An rPU-VAE directory: x-run, leaf-run 1 (one level, then no peak), leaf-run 2 (below
    min score when finished, else running) and, when finished, the final model + metrics."""
    config = load_config(preset_name="smoke", overrides=[f"data.spec={data_spec}"])
    out.mkdir(parents=True)
    dump_config(config, out / "config.yaml")
    (out / "run.json").write_text(json.dumps({"kind": "rpu", "run": "rpu", "format": 1,
                                              "rpu_ray_version": "0.1.0", "created": "now"}))
    everything, third = np.arange(960), np.arange(0, 960, 3)
    epochs = {"x": _metaepoch(out, "x", everything, [1, 4], seed=1),
              "leaf1-1": _metaepoch(out, "leaf1-1", third, [0], seed=2),
              "leaf2-1": _metaepoch(out, "leaf2-1", everything[:300], [7], seed=3,
                                    done=finished)}
    root = LeafRunLabels.load(out / "metaepochs" / "x" / "labels.npz").levels[0]
    level1 = LeafRunLabels.load(out / "metaepochs" / "leaf1-1" / "labels.npz").levels[0]
    LeafRunLabels(1, [root, level1]).save(out / "labels" / "leaf-1.npz")
    leaf_runs = {"1": {"status": "done", "stop_reason": "no_peak", "levels": 2,
                       "labels": "labels/leaf-1.npz", "steps": [
                           {"depth": 1, "reduction": _reduction(320, None, "kept 320 of 960"),
                            "metaepoch": "leaf1-1"},
                           {"depth": 2, "reduction": _reduction(0, "no_peak",
                                                                "no gap peak in z1")}]}}
    step = {"depth": 1, "reduction": _reduction(300, None, "kept 300 of 960")}
    if finished:
        LeafRunLabels(2, [root]).save(out / "labels" / "leaf-2.npz")
        leaf_runs["2"] = {"status": "done", "stop_reason": "below_min_score", "levels": 1,
                          "labels": "labels/leaf-2.npz",
                          "steps": [{**step, "metaepoch": "leaf2-1"}]}
    else:
        leaf_runs["2"] = {"status": "running", "depth": 1, "steps": [step]}
    state = {"phase": "done" if finished else "leaf-runs", "metaepochs": epochs,
             "leaf_runs": leaf_runs}
    if finished:
        _export(out / "final_model.pt", seed=4)
        _generation_events(out / "final" / "events.jsonl", 2)
        _plot(out / "final" / "pbt.png")
        state["final"] = {"status": "done", "leaf_mig": 0.21, "generations": 2,
                          "model": str(out / "final_model.pt"), "mig": 0.123}
        (out / "metrics.json").write_text(json.dumps({
            "mig": 0.123, "mig_per_factor": {"1": 0.2, "2": 0.01, "3": 0.15, "4": 0.13},
            "dci": {"disentanglement": 0.3, "completeness": 0.25,
                    "informativeness_train": 0.9, "informativeness_test": 0.7},
            "dci_mode": "exact", "sap": 0.05,
            "points": {"mig": 960, "dci_train": 10000, "dci_test": 5000},
            "factor_names": ["shape", "scale", "orientation", "posX", "posY"]}))
    (out / "state.json").write_text(json.dumps(state))
    return out


def _without_data_uris(page: str) -> str:
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)


def test_report_of_a_finished_run_is_self_contained(tmp_path, dataset) -> None:
    out = make_run(tmp_path / "run")
    md, page = write_report(out, dataset)
    assert (md, page) == (out / "report.md", out / "report.html")
    text, markup = md.read_text(), page.read_text()
    assert 'src="http' not in markup and "http" not in _without_data_uris(markup)
    assert "<link" not in markup and "<script" not in markup
    for key in ("x", "leaf1-1", "leaf2-1", "final"):
        assert (out / "traversals" / f"{key}.png").exists()
        assert f"(traversals/{key}.png)" in text
    # 4 traversals + 4 PBT plots, all embedded
    assert markup.count('<img src="data:image/png;base64,') == 8
    for needle in ("leaf1-1", "leaf2-1", "| MIG | 0.123 |", "MIG: scale", "MIG: posY",
                   "DCI disentanglement (exact)", "| SAP | 0.050 |", "no gap peak in z1",
                   "not labelled (below_min_score)", "z2, z5", "Leaf-MIG 0.210",
                   dataset.describe(), "| population (members) | 4 |"):
        assert needle in text, needle
    for needle in ("<td>leaf2-1</td>", "<td>MIG: scale</td><td>0.200</td>",
                   "not labelled (below_min_score)", "<h2>metaEpoch leaf1-1</h2>"):
        assert needle in markup, needle


def test_report_of_a_partial_run_loads_the_data_from_the_config(tmp_path) -> None:
    out = make_run(tmp_path / "run", finished=False)
    md, page = write_report(out)  # the data set comes from config.yaml
    text = md.read_text()
    assert "The final run has not started: metrics not available." in text
    assert "| leaf2-1 | running | 300 | n/a | 1 |" in text
    assert "| 1 | leaf2-1 | 300 | running | reduction of level 0: kept 300 of 960 |" in text
    assert "Running on 300 images: 1 generation(s) so far." in text
    assert sorted(p.name for p in (out / "traversals").iterdir()) == ["leaf1-1.png", "x.png"]
    assert "The final run has not started.\n" in text
    assert "<td>leaf2-1</td>" in page.read_text()


def test_report_on_unlabelled_data_has_no_metrics(tmp_path, dataset) -> None:
    out = make_run(tmp_path / "run", finished=False)
    (out / "state.json").write_text(json.dumps({
        **json.loads((out / "state.json").read_text()), "phase": "done",
        "final": {"status": "done", "leaf_mig": 0.3, "generations": 2}}))
    _export(out / "final_model.pt", seed=4)
    unlabelled = Dataset(dataset.images, source="folder of images")
    md, page = write_report(out, unlabelled)
    assert NO_FACTORS in md.read_text() and NO_FACTORS in page.read_text()
    assert (out / "traversals" / "final.png").exists()


def test_report_without_loadable_data_has_no_traversals(tmp_path) -> None:
    out = make_run(tmp_path / "run", data_spec=str(tmp_path / "missing.npz"))
    md, _ = write_report(out)
    text = md.read_text()
    assert "could not be loaded" in text and "| MIG | 0.123 |" in text
    assert not (out / "traversals").exists()


def test_report_refuses_other_directories(tmp_path) -> None:
    with pytest.raises(ExperimentDirError, match="not an rpu-ray experiment"):
        write_report(make_run(tmp_path / "run") / "metaepochs" / "x")
    pbt = make_run(tmp_path / "pbt")
    (pbt / "run.json").write_text(json.dumps({"kind": "pbt", "mode": "udr", "run": "pbt",
                                              "format": 1}))
    with pytest.raises(ExperimentDirError, match="rPU-VAE runs"):
        write_report(pbt)


# ----------------------------------------------------------------------------- evaluation


def test_evaluate_file_follows_the_papers_protocol(tmp_path) -> None:
    # 16 images, two classes of each factor but shape: exact DCI trains one tree per stage
    dataset = data.load("dsprites", image_size=32, subsample=[3, 3, 20, 16, 16],
                        use_cache=False)
    path = _export(tmp_path / "vae.pt", seed=1)
    # DCI fits its per-factor classifiers in joblib worker processes; for this tiny problem
    # starting them costs more than the fits (the results do not depend on it)
    with joblib.parallel_config(backend="sequential"):
        metrics = evaluate_file(path, dataset, mig_points=200, dci_train=200, dci_test=100)
        # disentanglement_lib's protocol by hand: MIG, then DCI/SAP train and test points,
        # drawn with replacement from one RandomState(seed); the constant shape left out
        rng, model = np.random.RandomState(0), load_vae(path)[0]
        codes, factors = [], []
        for count in (200, 200, 100):
            positions = rng.randint(16, size=count)
            codes.append(encode_images(model, dataset.images[positions])[0][0])
            factors.append(dataset.factors[positions][:, 1:])
        expected_dci = dci(codes[1], factors[1], codes[2], factors[2], seed=0, mode="exact")
    np.testing.assert_allclose(list(metrics["mig_per_factor"].values()),
                               mig_per_factor(codes[0], factors[0], 20), rtol=0, atol=1e-12)
    assert metrics["mig"] == pytest.approx(np.mean(mig_per_factor(codes[0], factors[0])))
    assert metrics["dci"] == pytest.approx(expected_dci, abs=1e-12)
    assert metrics["sap"] == pytest.approx(sap(codes[1], factors[1], codes[2], factors[2]),
                                           abs=1e-12)
    values = [metrics["mig"], metrics["sap"], *metrics["dci"].values(),
              *metrics["mig_per_factor"].values()]
    assert all(0 <= v <= 1 for v in values), values
    assert sorted(metrics["mig_per_factor"]) == [1, 2, 3, 4]  # shape is constant: dropped
    assert metrics["factor_names"] == list(dataset.factor_names)
    assert metrics["dci_mode"] == "exact"
    table = format_metrics_table(metrics)
    assert table.splitlines()[0] == "| metric | value |"
    assert f"| MIG | {metrics['mig']:.3f} |" in table
    assert f"| MIG: orientation | {metrics['mig_per_factor'][2]:.3f} |" in table
    assert "| DCI disentanglement (exact) |" in table
    # the same table from the JSON round trip of metrics.json (string factor keys)
    assert format_metrics_table(json.loads(json.dumps(metrics))) == table


def test_evaluate_file_needs_factors_and_matching_images(tmp_path, dataset) -> None:
    path = _export(tmp_path / "vae.pt", seed=1)
    with pytest.raises(ValueError, match="no ground-truth factors"):
        evaluate_file(path, Dataset(dataset.images, source="unlabelled"))
    wrong = Dataset(np.zeros((4, 3, 32, 32), np.uint8), np.zeros((4, 1), int), ("a",), (1,))
    with pytest.raises(ValueError, match="takes"):
        evaluate_file(path, wrong)


def test_traverse_command_reads_the_image_size_from_the_model(tmp_path, capsys) -> None:
    path = _export(tmp_path / "vae.pt", seed=1)
    data_args = ["--data", "dsprites", "--subsample", "3,2,8,4,4"]
    main(["traverse", str(path), *data_args, "--out", str(tmp_path / "t.png")])
    assert Image.open(tmp_path / "t.png").size == traversal_grid(
        _model(1), np.zeros(SHAPE, np.uint8), []).size
    assert main(["traverse", str(path), *data_args, "--image-size", "64",
                 "--out", str(tmp_path / "u.png")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "takes (1, 32, 32) images" in error and str(path) in error
    assert not (tmp_path / "u.png").exists()


def test_report_names_the_objective_and_its_fixed_constants(tmp_path, dataset) -> None:
    out = make_run(tmp_path / "run")
    config = load_config(preset_name="smoke", overrides=[
        "model.loss=factorvae", "model.loss_hyperparameters={gamma: 20}"])
    dump_config(config, out / "config.yaml")
    md, _ = write_report(out, dataset)
    assert "loss factorvae, gamma 20 |" in md.read_text()


def test_a_generation_redone_after_a_restore_counts_once(tmp_path) -> None:
    events = [{"event": "generation", "generation": 0, "best_score": 0.1},
              {"event": "exploit", "generation": 0, "member": "3", "donor": "1"},
              {"event": "generation", "generation": 1, "best_score": 0.2},
              # Ray's logs named members by trial id before 2026-11-29, by index since
              {"event": "exploit", "generation": 1, "member": "a1b2c_00002", "member_index": 2,
               "donor": "0"},
              {"event": "metaepoch_started", "key": "x"},
              # restored from the checkpoints of generation 0: generation 1 again
              {"event": "generation", "generation": 1, "best_score": 0.25},
              {"event": "exploit", "generation": 1, "member": "2", "member_index": 2,
               "donor": "1"},
              {"event": "metaepoch_started", "key": "x"},
              {"event": "generation", "generation": 2, "best_score": 0.3}]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    generations = read_events(tmp_path, "generation")
    assert [(g["generation"], g["best_score"]) for g in generations] == [
        (0, 0.1), (1, 0.25), (2, 0.3)]
    decisions = read_events(tmp_path, "exploit")
    assert [(d["generation"], d["donor"]) for d in decisions] == [(0, "1"), (1, "1")]
    assert len(read_events(tmp_path)) == 7  # other events are all kept
