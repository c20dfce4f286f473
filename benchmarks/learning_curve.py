"""How many images a VAE needs before it leaves the metrics' floor: MIG and UDR over training.

Trains one fused member (M VAEs of one setting, as a baseline or a PBT member trains them) and
scores it after a geometric series of image budgets: the MIG of each VAE (ground truth, on
`--points` images) and UDR of the member (Lasso, UDR's KL filter `--udr-kl-threshold`). The
budget a replication needs before its comparisons say anything (benchmarks/RESULTS.md,
Replication) is read off these curves.

    python benchmarks/learning_curve.py --subsample 1,2,8,2,2 --images 400000 --beta 6
    python benchmarks/learning_curve.py --smoke          # seconds (the tests run it)

`--fix posX=8,posY=8` trains on the images with those factor classes only: what a leaf-run
metaEpoch of rPU-VAE trains on after an ideal reduction by the positions (`posX=6-10` keeps a
range of classes, as a coarser reduction does); MIG then covers the factors that vary there.
For each VAE i, `active_<i>` / `labels_<i>` say how many latents pass rPU-VAE's active-latent
threshold (Gaussian KL > 1.19) and which factor each labels (does a leaf-run of that many
images per VAE find something to label?), and `subset_<i>` is the subset the reduction by
those labels keeps (size, classes left of each factor it narrows: do the labels separate the
factor's values well enough to isolate them, as rPU-VAE assumes?).

Prints one line per checkpoint and writes them as CSV (--csv).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

# benchmarks/ is this script's folder: on sys.path when it runs, and put there by the tests
from replicate import BUDGETS, SHAPES3D_SUBSAMPLE, labelled_factors

from rpu_ray import data
from rpu_ray.config import EvalConfig
from rpu_ray.engine import Member
from rpu_ray.evaluation import encode_images, label_ground_truth, score_supervised, score_udr
from rpu_ray.metrics import gaussian_kl
from rpu_ray.models import LOSSES
from rpu_ray.reduction import ReductionConfig, active_latents, reduce


def checkpoints(first: int, last: int, count: int) -> list[int]:
    """`count` image budgets from `first` to `last`, evenly spaced in log scale, rounded to
    hundreds (distinct and increasing)."""
    if not 0 < first <= last:
        raise ValueError(f"need 0 < first <= last, got {first}, {last}")
    values = np.geomspace(first, last, count)
    return sorted({max(100, int(round(v, -2))) for v in values})


def kl_parts(mu: np.ndarray, logsigma: np.ndarray) -> dict[str, float]:
    """Where each VAE i's KL to the prior comes from, summed over latents, in nats (their sum
    is the mean Gaussian KL over the images): `kl_spread_<i>`, half the variance of the means
    over the images, the only part that says which image was encoded; `kl_shift_<i>`, half
    the squared mean of the means; `kl_width_<i>`, the posteriors' widths off the prior's.

    Args:
      mu, logsigma: (M, N, C) codes of M VAEs on N images (`encode_images`).
    """
    row = {}
    for i, (m, s) in enumerate(zip(mu.astype(np.float64), logsigma.astype(np.float64),
                                   strict=True)):
        variance = np.exp(2.0 * s)
        row[f"kl_spread_{i}"] = float(0.5 * m.var(0).sum())
        row[f"kl_shift_{i}"] = float(0.5 * (m.mean(0) ** 2).sum())
        row[f"kl_width_{i}"] = float(0.5 * (variance - 1.0 - 2.0 * s).mean(0).sum())
    return row


def active_labels(codes: tuple[np.ndarray, np.ndarray], dataset: data.Dataset, points: int,
                  seed: int) -> dict[str, object]:
    """What rPU-VAE would make of each VAE i as a metaEpoch's best model, given its codes
    (mu, logsigma) of the whole data set (`encode_images`): `active_<i>`, the number of
    latents it labels (Gaussian KL above the default active threshold); `labels_<i>`, the
    factor each of them shares most information with (on `points` images; "-": none active);
    and `subset_<i>`, the reduction by these labels: the size of the subset a leaf-run would
    train on and how many classes of each factor narrowed by it remain there (e.g. "438 posX
    4/16 posY 11/16"; "-" when the reduction stops)."""
    mu, logsigma = codes
    factors = dataset.all_factors()
    sample = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:points])
    threshold = ReductionConfig().active_threshold("gaussian")
    classes = [np.unique(column).size for column in factors.T]
    row: dict[str, object] = {}
    for i in range(len(mu)):
        active = active_latents(gaussian_kl(mu[i], logsigma[i]), threshold)
        truth = label_ground_truth(mu[i][sample], active, factors[sample], dataset.factor_names)
        row[f"active_{i}"] = len(active)
        row[f"labels_{i}"] = labelled_factors(truth) or "-"
        reduction = reduce(mu[i][:, active])
        if not reduction.ok:
            row[f"subset_{i}"] = "-"
            continue
        left = [np.unique(column).size for column in factors[reduction.indices].T]
        row[f"subset_{i}"] = " ".join(
            [str(reduction.size)] + [f"{name} {left[f]}/{classes[f]}"
                                     for f, name in enumerate(dataset.factor_names)
                                     if left[f] < classes[f]])
    return row


def fixed_factors(dataset: data.Dataset, spec: str) -> data.Dataset:
    """The images of `dataset` whose factors have the classes of `spec`, a comma-separated
    list of FACTOR=CLASS or FACTOR=FIRST-LAST (inclusive), e.g. "posX=8,posY=6-10"; as a
    standalone data set."""
    keep = np.ones(len(dataset), dtype=bool)
    factors = dataset.all_factors()
    for item in spec.split(","):
        name, _, value = item.partition("=")
        first, _, last = value.partition("-")
        if (name not in dataset.factor_names or not first.isdigit()
                or not (last or first).isdigit()):
            raise SystemExit(f"--fix {spec!r}: expected FACTOR=CLASS or FACTOR=FIRST-LAST "
                             f"items, factors {', '.join(dataset.factor_names)}")
        column = factors[:, dataset.factor_names.index(name)]
        keep &= (column >= int(first)) & (column <= int(last or first))
    if not keep.any():
        raise SystemExit(f"--fix {spec!r}: no image has these factor classes")
    return dataset.subset(np.flatnonzero(keep)).standalone()


def objective_settings(spec: str) -> dict[str, float]:
    """--set's NAME=VALUE,... as a dict of floats ({} for an empty spec)."""
    settings = {}
    for item in filter(None, spec.split(",")):
        name, _, value = item.partition("=")
        try:
            settings[name.strip()] = float(value)
        except ValueError:
            raise SystemExit(f"--set {spec!r}: expected NAME=VALUE items with numeric "
                             f"values, got {item!r}") from None
    return settings


def learning_curve(dataset: data.Dataset, hyperparameters: dict[str, float], budgets: list[int],
                   *, num_models: int, arch: str, loss: str, seed: int, points: int,
                   udr_points: int, udr_kl_threshold: float, device: str) -> pd.DataFrame:
    """Trains one member to each budget in turn (images per VAE) and scores it there: one row
    per budget with the MIG of every VAE, their mean, the member's UDR, the objective's terms,
    every VAE's active latents (`active_labels`) and the parts of its KL (`kl_parts`)."""
    images = dataset.all_images()
    member = Member(hyperparameters, num_models=num_models, image_shape=images.shape[1:],
                    arch=arch, loss=loss, seed=seed, device=device)
    tensor = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    factors = dataset.all_factors()
    config = EvalConfig(mig_points=points, score_seed=seed, udr_points=udr_points,
                        udr_kl_threshold=udr_kl_threshold)
    rows, trained, started = [], 0, time.time()
    for budget in budgets:
        stats = member.train(tensor, budget - trained)
        trained = budget
        migs = score_supervised(member, tensor, factors, config)["model_scores"]
        codes = encode_images(member.model, images)
        row = {"images": budget, "mig_mean": float(np.mean(migs)),
               **{f"mig_{i}": m for i, m in enumerate(migs)},
               "udr": score_udr(member, tensor, config)["score"],
               # The objective's terms over the last stretch (recon, KL, AnnealedVAE's capacity):
               # does a VAE leave the floor by reconstructing more or by encoding more?
               **{f"{name}_mean": float(np.mean(stats[name]))
                  for name in ("recon", "kl", "capacity") if name in stats},
               **active_labels(codes, dataset, points, seed), **kl_parts(*codes),
               "diverged": bool(stats["diverged"]), "wall_s": round(time.time() - started, 1)}
        print(" ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                       for k, v in row.items()), flush=True)
        rows.append(row)
        if stats["diverged"]:
            break
    return pd.DataFrame(rows)


# Strides per factor by data set: --subsample's default is replicate.py's cpu data; at
# --smoke, Shapes3D's is replicate.py's smoke data and dSprites' a smaller grid than
# replicate.py's (128 images: seconds).
SUBSAMPLE = {"dsprites": BUDGETS["cpu"].subsample, "shapes3d": SHAPES3D_SUBSAMPLE["cpu"]}
SMOKE_SUBSAMPLE = {"dsprites": (3, 5, 40, 4, 4), "shapes3d": SHAPES3D_SUBSAMPLE["smoke"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="dsprites", choices=("dsprites", "shapes3d"))
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--subsample", help="strides per factor, comma-separated (default: "
                        "replicate.py's cpu data, dSprites 1,2,8,2,2)")
    parser.add_argument("--fix", metavar="FACTOR=CLASS,...",
                        help="train on the images with these factor classes only (a leaf-run's "
                             "subset after a reduction), e.g. posX=8,posY=8 or posX=6-10")
    parser.add_argument("--arch", default="dlib", choices=("authors", "dlib"))
    parser.add_argument("--loss", default="betatcvae")
    parser.add_argument("--beta", type=float, default=6.0)
    parser.add_argument("--set", metavar="NAME=VALUE,...", default="",
                        help="further objective hyperparameters, e.g. for --loss annealedvae "
                             "c_max=10,gamma=1000,iteration_threshold=10000 (unset ones take "
                             "the objective's defaults)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--images", type=int, default=400_000, help="last budget, per VAE")
    parser.add_argument("--first", type=int, default=10_000, help="first budget, per VAE")
    parser.add_argument("--checkpoints", type=int, default=6)
    parser.add_argument("--points", type=int, default=5_000, help="MIG points")
    parser.add_argument("--udr-points", type=int, default=500)
    parser.add_argument("--udr-kl-threshold", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--csv", type=Path)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: seconds on a CPU")
    args = parser.parse_args()
    strides = (SMOKE_SUBSAMPLE if args.smoke else SUBSAMPLE)[args.dataset]
    if args.smoke:
        args.images, args.first, args.checkpoints = 600, 200, 2
        args.points, args.udr_points = 200, 100
    subsample = [int(s) for s in args.subsample.split(",")] if args.subsample else list(strides)
    dataset = data.load(args.dataset, image_size=args.image_size, subsample=subsample)
    if args.fix:
        dataset = fixed_factors(dataset, args.fix)
    if args.loss not in LOSSES:
        raise SystemExit(f"--loss {args.loss!r}: known objectives {', '.join(LOSSES)}")
    objective = LOSSES[args.loss]
    hyperparameters = {"lr": args.lr, "batch_size": args.batch_size, **objective.defaults,
                       **({"beta": args.beta} if "beta" in objective.hyperparameters else {}),
                       **objective_settings(args.set)}
    print(f"{len(dataset)} images; {args.models} x {args.loss} "
          + ", ".join(f"{name} {value:g}" for name, value in hyperparameters.items())
          + f", arch {args.arch}", flush=True)
    table = learning_curve(
        dataset, hyperparameters,
        checkpoints(args.first, args.images, args.checkpoints), num_models=args.models,
        arch=args.arch, loss=args.loss, seed=args.seed, points=args.points,
        udr_points=args.udr_points, udr_kl_threshold=args.udr_kl_threshold, device=args.device)
    if args.csv:
        table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
