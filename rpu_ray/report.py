"""Reports: latent traversals, the report of an rPU-VAE run and the evaluation of a VAE file.

* `traversal_grid` / `save_traversals`: latent traversals as in the paper's Fig. 5. One row
  per latent z1..zK (numbered from 1 as in the paper; `active` takes 0-based indices, as
  `state.json` stores them). Every latent is encoded from one image (the posterior mean); in
  row i, z_i alone runs over `linspace(-span, span, steps)`, the prior's central range, as
  disentanglement_lib's visualisations do, rather than around the image's own code: every row
  then shows the same range of each factor whatever the image, and no code far outside the
  prior's support (where a decoder shows nothing meaningful) is decoded. Rows of inactive
  latents are blended `INACTIVE_BLEND` (60%) towards mid-grey; active rows keep full contrast
  and are marked by a triangle before their label.
* `write_report`: `report.md` and a self-contained `report.html` (images as data URIs, inline
  CSS, no external resources) of an rPU-VAE experiment directory, finished or not.
* `evaluate_file` / `format_metrics_table`: MIG, DCI and SAP of an exported VAE on a labelled
  data set (the paper's protocol, `rpu_ray.evaluation.evaluate_model`).
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from rpu_ray import data
from rpu_ray.config import ExperimentConfig, load_config
from rpu_ray.data import DataError, Dataset
from rpu_ray.evaluation import encode_images, evaluate_model, per_latent_kl
from rpu_ray.experiment import NO_FINITE_SCORE, ExperimentDirError, read_events, read_run_file
from rpu_ray.export import load_vae
from rpu_ray.labels import LeafRunLabels
from rpu_ray.models import LOSSES, VAEEnsemble
from rpu_ray.reduction import GAUSSIAN_KL_ACTIVE_THRESHOLD, active_latents

__all__ = ["GAP", "INACTIVE_BLEND", "LABEL_WIDTH", "NO_FACTORS", "estimate_active_latents",
           "evaluate_file", "format_metrics_table", "metric_rows", "save_traversals",
           "tile_box", "traversal_grid", "write_report"]

# Layout of a traversal grid: a label column, then `steps` tiles per row, GAP pixels apart.
GAP = 2
LABEL_WIDTH = 44
# Share of mid-grey blended into the rows of inactive latents (the paper's lower contrast).
INACTIVE_BLEND = 0.6
_GREY = 128.0
_MARKER = (220, 80, 0)
_INACTIVE_TEXT = (150, 150, 150)
NO_FACTORS = "no ground-truth factors: metrics not available"


# ----------------------------------------------------------------------------- traversals


def tile_box(row: int, column: int, tile: int = 64) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the tile at `row`, `column` of a traversal grid."""
    left = LABEL_WIDTH + column * (tile + GAP)
    top = GAP + row * (tile + GAP)
    return left, top, left + tile, top + tile


@torch.no_grad()
def traversal_grid(model: VAEEnsemble, image: np.ndarray, active: Sequence[int],
                   steps: int = 9, span: float = 2.5, tile: int | None = None) -> Image.Image:
    """Latent traversals of one image: one row per latent, `steps` decoded images per row.

    Args:
      model: one VAE (an ensemble of one, as `rpu_ray.export.load_vae` returns); put in eval
        mode.
      image: uint8 (C, H, W), the model's image shape.
      active: 0-based indices of the active latents (full contrast and a marker); the other
        rows are blended `INACTIVE_BLEND` towards grey.
      steps: images per row; row i decodes the image's posterior mean with z_i replaced by
        each of `linspace(-span, span, steps)`.
      span: half-width of the traversal in prior standard deviations.
      tile: displayed size of one decoded image (nearest-neighbour scaling); default: the
        image size, at least 64.

    Returns:
      An RGB image of `LABEL_WIDTH + steps * (tile + GAP)` by `GAP + z_dim * (tile + GAP)`
      pixels; `tile_box` gives the position of every tile.
    """
    if model.num_models != 1:
        raise ValueError(f"traversals need a single VAE, got an ensemble of {model.num_models}")
    if image.dtype != np.uint8 or tuple(image.shape) != model.image_shape:
        raise ValueError(f"expected a uint8 image of shape {model.image_shape}, got "
                         f"{image.dtype} {image.shape}")
    tile = max(64, model.image_shape[1]) if tile is None else tile
    if steps < 2 or span <= 0 or tile < 1:
        raise ValueError("traversals need steps >= 2, span > 0 and tile >= 1")
    z_dim = model.z_dim
    active_set = {int(a) for a in active}
    if not active_set <= set(range(z_dim)):
        raise ValueError(f"active latents {sorted(active_set)} out of range for {z_dim} latents")
    model.eval()
    device = next(model.parameters()).device
    mu = model.encode(torch.from_numpy(image[None]).to(device).float().div_(255))[0][0, 0]
    codes = mu.repeat(z_dim, steps, 1)  # (row, step, latent)
    values = torch.linspace(-span, span, steps, device=device)
    for i in range(z_dim):
        codes[i, :, i] = values
    logits = model.decode(codes.reshape(1, z_dim * steps, z_dim))[0]
    pixels = torch.sigmoid(logits).mul(255).double().cpu().numpy()
    pixels = pixels.reshape(z_dim, steps, *model.image_shape)

    size = (LABEL_WIDTH + steps * (tile + GAP), GAP + z_dim * (tile + GAP))
    canvas = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i in range(z_dim):
        row = pixels[i] if i in active_set else (
            (1 - INACTIVE_BLEND) * pixels[i] + INACTIVE_BLEND * _GREY)
        row = np.clip(np.rint(row), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)  # NHWC
        if row.shape[3] == 1:
            row = np.repeat(row, 3, axis=3)
        for j in range(steps):
            tile_image = Image.fromarray(row[j]).resize((tile, tile), Image.NEAREST)
            canvas.paste(tile_image, tile_box(i, j, tile)[:2])
        top = tile_box(i, 0, tile)[1]
        middle = top + tile // 2
        if i in active_set:
            draw.polygon([(3, middle - 5), (3, middle + 5), (11, middle)], fill=_MARKER)
        draw.text((15, middle - 6), f"z{i + 1}",
                  fill=(0, 0, 0) if i in active_set else _INACTIVE_TEXT)
    return canvas


def estimate_active_latents(model: VAEEnsemble, dataset: Dataset, points: int = 1000,
                            seed: int = 0, threshold: float = GAUSSIAN_KL_ACTIVE_THRESHOLD,
                            kl: str = "gaussian") -> np.ndarray:
    """0-based indices of the latents of the first VAE of `model` whose KL to the prior on up
    to `points` images drawn with `seed` exceeds `threshold`; `kl`: "gaussian" or "authors"
    (their batch pseudo-KL, see `rpu_ray.evaluation.per_latent_kl`)."""
    positions = dataset.sample(points, np.random.default_rng(seed))
    mu, logsigma = encode_images(model, dataset.batch(positions))
    return active_latents(per_latent_kl(mu[0], logsigma[0], kl), threshold)


def _load_vae_for(model_path: str | Path, dataset: Dataset) -> VAEEnsemble:
    """The exported VAE at `model_path`; ValueError if it takes other images than `dataset`'s."""
    model, _ = load_vae(model_path)
    if tuple(dataset.images.shape[1:]) != model.image_shape:
        raise ValueError(f"{model_path}: the model takes {model.image_shape} images, "
                         f"{dataset.source} has {tuple(dataset.images.shape[1:])}")
    return model


def save_traversals(model_path: str | Path, dataset: Dataset, out_png: str | Path,
                    active: Sequence[int] | None = None, seed: int = 0, steps: int = 9,
                    span: float = 2.5) -> Path:
    """Write the traversal grid of an exported VAE on one image of `dataset` as a PNG.

    The image is position `default_rng(seed).integers(len(dataset))` of the data set. `active`
    (0-based) defaults to `estimate_active_latents` on up to 1000 images of the data set
    (Gaussian KL > `GAUSSIAN_KL_ACTIVE_THRESHOLD`). Returns the path written; raises
    ValueError if the data set has other images than the model.
    """
    model = _load_vae_for(model_path, dataset)
    position = int(np.random.default_rng(seed).integers(len(dataset)))
    if active is None:
        active = estimate_active_latents(model, dataset, seed=seed).tolist()
    grid = traversal_grid(model, dataset.batch([position])[0], active, steps=steps, span=span)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out


# ----------------------------------------------------------------------------- metrics


def evaluate_file(model_path: str | Path, dataset: Dataset, dci_mode: str = "exact",
                  seed: int = 0, mig_points: int = 10_000, dci_train: int = 10_000,
                  dci_test: int = 5_000, num_bins: int = 20) -> dict[str, Any]:
    """MIG, DCI and SAP of an exported VAE on a labelled data set (`evaluate_model`).

    Returns the same dict as a run's `metrics.json`: mig, mig_per_factor {factor column: MIG},
    dci {disentanglement, completeness, informativeness_train, informativeness_test},
    dci_mode, sap, points, factor_names (the names of the factor columns;
    `format_metrics_table` shows the per-factor MIG by name). Raises ValueError if the data
    set has no ground-truth factors or other images than the model.
    """
    if not dataset.has_factors:
        raise ValueError(f"{dataset.source}: {NO_FACTORS} (MIG, DCI and SAP need labels)")
    model = _load_vae_for(model_path, dataset)
    metrics = evaluate_model(model, dataset.all_images(), dataset.all_factors(), seed=seed,
                             mig_points=mig_points, dci_train=dci_train, dci_test=dci_test,
                             num_bins=num_bins, dci_mode=dci_mode)
    metrics["factor_names"] = list(dataset.factor_names)
    return metrics


def metric_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) rows of a metrics dict (`evaluate_file`, or a run's metrics.json, whose
    per-factor keys are strings): MIG, MIG per factor by name, DCI, SAP."""
    names = metrics.get("factor_names") or []

    def factor(column: str | int) -> str:
        column = int(column)
        return names[column] if column < len(names) else f"factor {column}"

    dci = metrics["dci"]
    mode = metrics.get("dci_mode")
    rows = [("MIG", _number(metrics["mig"]))]
    rows += [(f"MIG: {factor(c)}", _number(v)) for c, v in metrics["mig_per_factor"].items()]
    rows += [
        (f"DCI disentanglement{f' ({mode})' if mode else ''}", _number(dci["disentanglement"])),
        ("DCI completeness", _number(dci["completeness"])),
        ("DCI informativeness (train accuracy)", _number(dci["informativeness_train"])),
        ("DCI informativeness (test accuracy)", _number(dci["informativeness_test"])),
        ("SAP", _number(metrics["sap"])),
    ]
    return rows


def format_metrics_table(metrics: dict[str, Any]) -> str:
    """A Markdown table (readable as plain text) of `metric_rows(metrics)`."""
    return _markdown_table(("metric", "value"), metric_rows(metrics))


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# ----------------------------------------------------------------------------- documents


@dataclass(frozen=True)
class _Heading:
    level: int
    text: str


@dataclass(frozen=True)
class _Paragraph:
    text: str


@dataclass(frozen=True)
class _Table:
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]


@dataclass(frozen=True)
class _Figure:
    path: Path
    caption: str


_Block = _Heading | _Paragraph | _Table | _Figure

_CSS = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { border-bottom: 2px solid #ccc; } h2 { border-bottom: 1px solid #ddd; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
figure { margin: 1em 0; } img { max-width: 100%; }
figcaption { font-size: 0.88em; color: #555; }
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(map(_cell, header)) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def _markdown(blocks: list[_Block], directory: Path) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, _Heading):
            parts.append("#" * block.level + " " + block.text)
        elif isinstance(block, _Paragraph):
            parts.append(block.text)
        elif isinstance(block, _Table):
            parts.append(_markdown_table(block.header, block.rows))
        else:
            parts.append(f"![{block.path.stem}]({block.path.relative_to(directory).as_posix()})"
                         f"\n\n*{block.caption}*")
    return "\n\n".join(parts) + "\n"


def _html(blocks: list[_Block], title: str) -> str:
    esc = html.escape
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
             f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>"]
    for block in blocks:
        if isinstance(block, _Heading):
            parts.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, _Paragraph):
            parts.append(f"<p>{esc(block.text)}</p>")
        elif isinstance(block, _Table):
            head = "".join(f"<th>{esc(h)}</th>" for h in block.header)
            body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>\n"
                           for row in block.rows)
            parts.append(f"<table>\n<tr>{head}</tr>\n{body}</table>")
        else:
            encoded = base64.b64encode(block.path.read_bytes()).decode("ascii")
            parts.append(f"<figure><img src=\"data:image/png;base64,{encoded}\" "
                         f"alt=\"{esc(block.caption)}\"><figcaption>{esc(block.caption)}"
                         "</figcaption></figure>")
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)


# ----------------------------------------------------------------------------- the report


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _latents(indices: Sequence[int]) -> str:
    """1-based latent names, as in the traversals."""
    return ", ".join(f"z{int(i) + 1}" for i in indices) or "none"


def _metaepoch_order(key: str) -> tuple[int, int]:
    match = re.fullmatch(r"leaf(\d+)-(\d+)", key)
    return (0, 0) if match is None else (int(match[1]), int(match[2]))


def _hparams(generation: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" if isinstance(v, int) else f"{k}={v:.3g}"
                     for k, v in generation["best_hparams"].items())


def _subset(dataset: Dataset, labels_path: Path) -> Dataset:
    """The images a metaEpoch trained on: the storage positions in its labels.npz."""
    if not labels_path.exists():
        return dataset
    indices = LeafRunLabels.load(labels_path).levels[0].indices
    return Dataset(dataset.images, dataset.factors, dataset.factor_names, dataset.factor_sizes,
                   dataset.source, indices)


class _Report:
    """Gathers the blocks of the report of one experiment directory."""

    def __init__(self, directory: Path, run: dict[str, Any], config: ExperimentConfig,
                 dataset: Dataset | None, data_problem: str | None) -> None:
        self.directory = directory
        self.config = config
        self.dataset = dataset
        self.data_problem = data_problem
        self.run = run
        self.state = _read_json(directory / "state.json") or {
            "phase": "not started", "metaepochs": {}, "leaf_runs": {}}
        self.epochs: dict[str, dict[str, Any]] = self.state["metaepochs"]
        self.blocks: list[_Block] = []

    def add(self, *blocks: _Block) -> None:
        self.blocks.extend(blocks)

    def figure(self, path: Path, caption: str) -> None:
        if path.exists():
            self.add(_Figure(path, caption))

    def build(self) -> list[_Block]:
        self.header()
        self.configuration()
        self.metrics()
        self.metaepoch_table()
        self.label_trees()
        self.metaepoch_details()
        self.final()
        return self.blocks

    def header(self) -> None:
        state, final = self.state, self.state.get("final", {})
        self.add(_Heading(1, f"rPU-VAE report: {self.config.name}"))
        rows = [("directory", str(self.directory)),
                ("created", self.run.get("created", "?")),
                ("rpu-ray version", self.run.get("rpu_ray_version", "?")),
                ("phase", state["phase"]),
                ("final run", final.get("status", "none"))]
        if state.get("stop_reason"):
            rows.append(("stopped", state["stop_reason"]))
        self.add(_Table(("run", ""), rows))
        self.add(_Heading(2, "Data"))
        if self.dataset is not None:
            self.add(_Paragraph(self.dataset.describe()))
        cfg = self.config.data
        self.add(_Paragraph(f"Configured as spec {cfg.spec}, image size {cfg.image_size}, "
                            f"subsample {cfg.subsample}, seed {cfg.seed}."))
        if self.data_problem:
            self.add(_Paragraph(self.data_problem))

    def configuration(self) -> None:
        c = self.config
        policy, rpu = c.pbt.policy, c.rpu
        leaf_budget = (f"{rpu.leaf_generation_images:,}" if rpu.leaf_generation_images
                       else "max(10,000, subset size)")
        limits = []
        if policy.max_generations is not None:
            limits.append(f"at most {policy.max_generations}")
        if policy.convergence_patience is not None:
            limits.append(f"converged after {policy.convergence_patience} without progress")
        rows = [
            ("seed", str(c.seed)),
            ("model", f"{c.model.arch}, {c.model.z_dim} latents, loss {c.model.loss}"
                      + "".join(f", {k} {v:g}" for k, v in sorted(LOSSES[c.model.loss]
                                .fixed_hyperparameters(c.model.loss_hyperparameters).items()))),
            ("population (members)", str(c.pbt.population)),
            ("VAEs per member", str(c.model.num_models)),
            ("images per member and generation: x-run", f"{c.train.generation_images:,}"),
            ("images per member and generation: leaf-runs", leaf_budget),
            ("generations per metaEpoch", ", ".join(limits) or "no limit"),
            ("minimum UDR to go on", "none" if policy.min_score is None
                                     else str(policy.min_score)),
            ("leaf-runs x max depth", f"{rpu.leaf_runs} x {rpu.max_depth}"),
            ("active latent threshold", f"KL ({c.eval.kl}) > "
                                        f"{rpu.reduction.active_threshold(c.eval.kl)}"),
            ("final run", f"{rpu.final_population or c.pbt.population} members of "
                          f"{rpu.final_num_models} VAE(s), {rpu.final_generations} generations"),
            ("scoring", f"UDR on {c.eval.udr_points:,} images, leaf-MIG on up to "
                        f"{c.eval.mig_points:,} per level"),
        ]
        self.add(_Heading(2, "Configuration"), _Table(("setting", "value"), rows))

    def metrics(self) -> None:
        self.add(_Heading(2, "Metrics of the final model"))
        metrics = _read_json(self.directory / "metrics.json")
        final = self.state.get("final", {})
        if metrics is not None:
            self.add(_Table(("metric", "value"), metric_rows(metrics)))
            points = {k: f"{v:,}" for k, v in metrics.get("points", {}).items()}
            self.add(_Paragraph(
                f"Leaf-MIG (the final run's score on the surrogate labels): "
                f"{_number(final.get('leaf_mig'))}. Ground-truth metrics on "
                f"{points.get('mig', '?')} (MIG) and {points.get('dci_train', '?')} / "
                f"{points.get('dci_test', '?')} (DCI and SAP, train / test) points drawn from "
                "the data set."))
        elif self.dataset is not None and not self.dataset.has_factors:
            self.add(_Paragraph(NO_FACTORS))
        elif final.get("status") != "done":
            self.add(_Paragraph(f"{self.final_status()}: metrics not available."))
        else:
            self.add(_Paragraph("No metrics.json in the directory: metrics not available."))

    def metaepoch_table(self) -> None:
        rows = []
        for key in sorted(self.epochs, key=_metaepoch_order):
            record = self.epochs[key]
            generations = read_events(self.directory / "metaepochs" / key, "generation")
            done = record["status"] == "done"
            rows.append((
                key, record["status"], f"{record['size']:,}",
                _number(record.get("best_score")),
                str(record["generations"] if done else len(generations)),
                str(record.get("stop_reason") or ""),
                _latents(record["active_latents"]) if done else "",
                _hparams(generations[-1]) if generations else "",
            ))
        self.add(_Heading(2, "metaEpochs"))
        if not rows:
            self.add(_Paragraph("No metaEpoch has started."))
            return
        self.add(_Table(("metaEpoch", "status", "images", "best UDR", "generations",
                         "stop reason", "active latents", "best hyperparameters (last gen.)"),
                        rows))

    def label_trees(self) -> None:
        self.add(_Heading(2, "Label tree"))
        root = self.epochs.get("x")
        leaf_runs = self.state["leaf_runs"]
        if not leaf_runs:
            self.add(_Paragraph("No leaf-run has started."))
        for leaf, record in sorted(leaf_runs.items(), key=lambda item: int(item[0])):
            tree_path = self.directory / "labels" / f"leaf-{leaf}.npz"
            tree = LeafRunLabels.load(tree_path) if tree_path.exists() else None
            head = f"Leaf-run {leaf}: {record['status']}"
            if record.get("stop_reason"):
                head += f", stopped: {record['stop_reason']}, {record['levels']} label levels"
            self.add(_Heading(3, head))
            root_latents = (tree.levels[0].latents if tree is not None
                            else root["active_latents"])
            rows = [("0", "x", f"{root['size']:,}", _latents(root_latents),
                     "the whole data set")]
            for step in record.get("steps", []):
                depth, reduction = step["depth"], step["reduction"]
                key = step.get("metaepoch", f"leaf{leaf}-{depth}")
                how = f"reduction of level {depth - 1}: {reduction['message']}"
                if reduction["stop_reason"] is not None:
                    rows.append((str(depth), "", "", "", how))
                    continue
                if tree is not None:
                    labelled = (_latents(tree.levels[depth].latents)
                                if depth < len(tree.levels)
                                else f"not labelled ({record['stop_reason']})")
                else:
                    epoch = self.epochs.get(key, {})
                    if epoch.get("status") == "done":
                        labelled = _latents(epoch["active_latents"])
                    elif epoch.get("status") == NO_FINITE_SCORE:
                        labelled = "not labelled (every member diverged)"
                    else:
                        labelled = "running"
                rows.append((str(depth), key, f"{reduction['size']:,}", labelled, how))
            self.add(_Table(("level", "metaEpoch", "images", "labelled latents",
                             "how the subset was chosen"), rows))

    def traversal(self, key: str, model_path: Path, dataset: Dataset,
                  active: Sequence[int]) -> None:
        out = save_traversals(model_path, dataset, self.directory / "traversals" / f"{key}.png",
                              active=active)
        self.add(_Figure(out, f"{key}: latent traversals of the best VAE on one image of its "
                              f"{len(dataset):,} training images; each row runs one latent "
                              "from -2.5 to 2.5, the others at the image's code; active "
                              f"latents ({_latents(active)}) at full contrast and marked."))

    def metaepoch_details(self) -> None:
        for key in sorted(self.epochs, key=_metaepoch_order):
            record = self.epochs[key]
            directory = self.directory / "metaepochs" / key
            self.add(_Heading(2, f"metaEpoch {key}"))
            model_path = directory / "best_vae.pt"
            if record["status"] == NO_FINITE_SCORE:
                self.add(_Paragraph(f"Every member diverged on its {record['size']:,} images: "
                                    "no model and no labels; the leaf-run ended here."))
            elif record["status"] != "done":
                generations = len(read_events(directory, "generation"))
                self.add(_Paragraph(f"Running on {record['size']:,} images: {generations} "
                                    "generation(s) so far."))
            elif self.dataset is not None and model_path.exists():
                self.traversal(key, model_path, _subset(self.dataset, directory / "labels.npz"),
                               record["active_latents"])
            self.figure(directory / "pbt.png", f"{key}: best and median UDR per generation and "
                                               "the hyperparameters of the best member")

    def final_status(self) -> str:
        """Why there is no final model (yet)."""
        if "final" in self.state:
            return "The final run has not finished"
        if self.state["phase"] == "done":
            return "No final model (the run stopped before the final run)"
        return "The final run has not started"

    def final(self) -> None:
        final = self.state.get("final")
        self.add(_Heading(2, "Final model"))
        if final is None or final["status"] != "done":
            self.add(_Paragraph(f"{self.final_status()}."))
        else:
            self.add(_Paragraph(f"Leaf-MIG {_number(final['leaf_mig'])} after "
                                f"{final['generations']} generations."))
            model_path = self.directory / "final_model.pt"
            if self.dataset is not None and model_path.exists():
                model, _ = load_vae(model_path)
                kl = self.config.eval.kl
                threshold = self.config.rpu.reduction.active_threshold(kl)
                active = estimate_active_latents(model, self.dataset, threshold=threshold,
                                                 kl=kl).tolist()
                self.add(_Paragraph(
                    f"Active latents of the final model: {_latents(active)} (KL ({kl}) > "
                    f"{threshold} on up to 1,000 images, as the run's metaEpochs count them)."))
                self.traversal("final", model_path, self.dataset, active)
        self.figure(self.directory / "final" / "pbt.png",
                    "final run: best and median leaf-MIG per generation and the hyperparameters "
                    "of the best member")


def write_report(directory: str | Path, dataset: Dataset | None = None) -> tuple[Path, Path]:
    """Write `report.md` and a self-contained `report.html` of an rPU-VAE experiment.

    Contents: run status, data, configuration summary, the final model's metrics (from
    metrics.json, if any), a table of metaEpochs, the label tree of every leaf-run, the
    traversals of every finished metaEpoch and of the final model (written to
    `traversals/<key>.png`) and the PBT curves (`pbt.png`) of every run. Works on runs in
    progress or stopped early. `dataset` defaults to the one in config.yaml; if that cannot be
    loaded the report says so and has no traversals. Raises `ExperimentDirError` for a
    directory that is not an rPU-VAE experiment.

    Returns the paths of report.md and report.html.
    """
    directory = Path(directory).resolve()
    run = read_run_file(directory)
    if run.get("kind") != "rpu":
        raise ExperimentDirError(f"{directory}: reports cover rPU-VAE runs; this is a "
                                 f"{run.get('kind')!r} run (see its pbt.png)")
    config = load_config(directory / "config.yaml")
    problem = None
    if dataset is None:
        try:
            dataset = data.load(config.data.spec, image_size=config.data.image_size,
                                subsample=config.data.subsample, seed=config.data.seed)
        except DataError as err:
            problem = f"The data set could not be loaded ({err}): no traversals."
    blocks = _Report(directory, run, config, dataset, problem).build()
    md, page = directory / "report.md", directory / "report.html"
    md.write_text(_markdown(blocks, directory))
    page.write_text(_html(blocks, f"rPU-VAE report: {config.name}"))
    return md, page
