"""The `rpu-ray` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rpu_ray import __version__
from rpu_ray.config import PRESETS, ConfigError

# The keys of rpu_ray.baseline.GRIDS (a test checks): named here so that parsing the
# command line does not import torch.
BASELINE_MODELS = ("betavae", "betatcvae", "annealedvae", "factorvae", "dipvae1", "dipvae2")


def _subsample(text: str) -> int | list[int]:
    """`2000` (a count) or `1,1,4,2,2` (one stride per factor)."""
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a count or comma-separated strides, got {text!r}") from None
    return parts[0] if len(parts) == 1 else parts


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _output_file(*suffixes: str) -> Callable[[str], str]:
    """argparse type of a file to write: one of `suffixes`, not an existing folder (checked
    before the command does any work)."""
    def check(text: str) -> str:
        path = Path(text)
        if path.suffix.lower() not in suffixes:
            raise argparse.ArgumentTypeError(
                f"{text}: expected a {' or '.join(suffixes)} file name")
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text}: is a folder, expected a file name")
        return text
    return check


def _write_error(path: str, err: OSError) -> ConfigError:
    return ConfigError(f"{path}: cannot write ({err.strerror or err})")


def _add_data_options(parser: argparse.ArgumentParser, positional: bool = True,
                      model_sized: bool = False) -> None:
    """--data/spec, --image-size, --subsample, --seed; `model_sized`: the command reads a model
    (positional `model`), whose image size is the default."""
    spec_help = "dsprites, shapes3d, or a path (.npz, .h5, image folder)"
    if positional:
        parser.add_argument("spec", help=spec_help)
    else:
        parser.add_argument("--data", dest="spec", required=True, help=spec_help)
    parser.add_argument("--image-size", type=int, default=None if model_sized else 64,
                        choices=(32, 64, 128),
                        help="default: the model's" if model_sized else "default: 64")
    parser.add_argument("--subsample", type=_subsample, default=None,
                        help="a count, or one stride per factor such as 1,1,4,2,2")
    parser.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rpu-ray", description="rPU-VAE: robust unsupervised disentanglement on Ray.")
    parser.add_argument("--version", action="version", version=f"rpu-ray {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="inspect data sets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    preview = data_commands.add_parser(
        "preview", help="write an image grid: one row per factor traversal (or a sample)")
    _add_data_options(preview)
    preview.add_argument("--out", required=True, type=_output_file(".png"),
                         help="PNG file to write")
    preview.add_argument("--steps", type=_positive_int, default=8, help="images per row")
    info = data_commands.add_parser("info", help="print size, image shape and factors")
    _add_data_options(info)

    run = commands.add_parser(
        "run", help="the whole rPU-VAE algorithm: x-run, leaf-runs, final model")
    run.add_argument("config", nargs="?", help="experiment YAML (see rpu_ray/presets)")
    run.add_argument("--preset", choices=PRESETS, help="smoke (a few minutes), demo, paper")
    run.add_argument("--data", help="data spec, overrides data.spec (dsprites, shapes3d, a path)")
    run.add_argument("--out", help="output directory (default: runs/<name>-rpu-<time>)")
    run.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="KEY=VALUE", help="override a setting, e.g. rpu.leaf_runs=2")
    run.add_argument("--address", help="Ray cluster address (default: start Ray locally)")
    resume = commands.add_parser("resume", help="continue an interrupted rPU-VAE run")
    resume.add_argument("directory")
    resume.add_argument("--address", help="Ray cluster address (default: start Ray locally)")
    status = commands.add_parser("status", help="the tree of leaf-runs and metaEpochs of a run")
    status.add_argument("directory")
    demo = commands.add_parser(
        "demo", help="rPU-VAE on procedural dSprites, minutes on a laptop CPU")
    demo.add_argument("--out", help="output directory (default: runs/demo-rpu-<time>)")
    demo.add_argument("--set", dest="overrides", action="append", default=[],
                      metavar="KEY=VALUE", help="override a setting of the demo preset")

    evaluate = commands.add_parser(
        "evaluate", help="MIG, DCI, SAP and per-factor MIG of an exported model on labelled data")
    evaluate.add_argument("model", help="an exported VAE (best_vae.pt, final_model.pt)")
    _add_data_options(evaluate, positional=False, model_sized=True)
    evaluate.add_argument("--dci-mode", choices=("exact", "fast"), default="exact")
    evaluate.add_argument("--json", type=_output_file(".json"),
                          help="also write the metrics to this JSON file")
    traverse = commands.add_parser(
        "traverse", help="latent traversals of an exported model (active latents highlighted)")
    traverse.add_argument("model", help="an exported VAE (best_vae.pt, final_model.pt)")
    _add_data_options(traverse, positional=False, model_sized=True)
    traverse.add_argument("--out", required=True, type=_output_file(".png"),
                          help="PNG file to write")

    pbt = commands.add_parser(
        "pbt", help="one PBT experiment: PBT-U-VAE (UDR) or PBT-S-VAE (MIG/DCI on labels)")
    pbt.add_argument("config", nargs="?", help="experiment YAML (see rpu_ray/presets)")
    pbt.add_argument("--mode", choices=("udr", "mig", "dci"),
                     help="how members are scored (default: udr, unsupervised)")
    pbt.add_argument("--data", help="data spec, overrides data.spec (dsprites, shapes3d, a path)")
    pbt.add_argument("--labels", type=_positive_int, metavar="N",
                     help="semi-supervised (--mode mig or dci): score with N randomly chosen "
                          "labelled images only")
    pbt.add_argument("--preset", choices=PRESETS, help="smoke (seconds), demo, paper")
    pbt.add_argument("--out", help="output directory (default: runs/<name>-<mode>-<time>)")
    pbt.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="KEY=VALUE", help="override a setting, e.g. pbt.population=8")
    pbt.add_argument("--address", help="Ray cluster address (default: start Ray locally)")
    pbt.add_argument("--resume", metavar="DIR", help="continue an interrupted run in DIR")
    baseline = commands.add_parser(
        "baseline", help="fixed-hyperparameter baselines (Locatello et al.) and model selection")
    baseline.add_argument("--model", required=True, choices=BASELINE_MODELS)
    baseline.add_argument("--hparam", type=float, action="append", metavar="VALUE",
                          help="value of the swept hyperparameter (repeatable; default: the "
                               "study's grid, see rpu_ray.baseline.GRIDS)")
    baseline.add_argument("--seeds", type=int, default=5, help="VAEs per value (default 5)")
    _add_data_options(baseline, positional=False)
    baseline.add_argument("--images", type=int, default=300_000 * 64,
                          help="training images per VAE (default: the study's 300,000 steps "
                               "of 64)")
    baseline.add_argument("--lr", type=float, default=1e-4)
    baseline.add_argument("--batch-size", type=_positive_int, default=64)
    baseline.add_argument("--arch", choices=("authors", "dlib"), default="authors")
    baseline.add_argument("--select-labels", type=int, default=1000, metavar="N",
                          help="model selection by MIG on N labels (0: none)")
    baseline.add_argument("--eval-points", default="10000,10000,5000",
                          help="MIG points, DCI/SAP train and test points")
    baseline.add_argument("--dci-mode", choices=("exact", "fast"), default="exact")
    baseline.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    baseline.add_argument("--out", default="baselines", help="output directory")
    return parser


def _load(args: argparse.Namespace):
    from rpu_ray import data

    image_size = args.image_size
    if image_size is None:  # commands that read a model generate data of its size
        from rpu_ray.export import load_vae

        image_size = load_vae(args.model)[0].image_shape[-1]
    return data.load(args.spec, image_size=image_size, subsample=args.subsample, seed=args.seed)


def _data_preview(args: argparse.Namespace) -> None:
    from rpu_ray.data.preview import save_preview

    dataset = _load(args)
    print(dataset.describe())
    try:
        path = save_preview(dataset, args.out, num_steps=args.steps, seed=args.seed)
    except OSError as err:
        raise _write_error(args.out, err) from None
    print(f"wrote {path}")


def _data_info(args: argparse.Namespace) -> None:
    print(_load(args).describe())


def _pbt(args: argparse.Namespace) -> None:
    from rpu_ray import experiment

    if args.resume:
        unexpected = [flag for flag, value in (("config", args.config), ("--data", args.data),
                                               ("--preset", args.preset), ("--out", args.out),
                                               ("--mode", args.mode), ("--labels", args.labels),
                                               ("--set", args.overrides)) if value]
        if unexpected:
            dropped = ", ".join(unexpected)
            raise ConfigError(f"--resume continues a run as configured; drop {dropped}")
        experiment.resume_pbt(args.resume, address=args.address)
        return
    mode = args.mode or "udr"
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.spec={args.data}")
    if args.labels is not None:
        if mode == "udr":
            raise ConfigError("--labels limits the labels that score members: it needs "
                              "--mode mig or dci (udr uses none)")
        overrides.append(f"eval.labels={args.labels}")
    experiment.start_pbt(args.config, args.preset, overrides, mode, args.out, args.address)


def _run(args: argparse.Namespace) -> None:
    from rpu_ray import experiment

    overrides = list(args.overrides) + ([f"data.spec={args.data}"] if args.data else [])
    experiment.start_run(args.config, args.preset, overrides, args.out, args.address)


def _resume(args: argparse.Namespace) -> None:
    from rpu_ray import experiment

    experiment.resume_run(args.directory, args.address)


def _status(args: argparse.Namespace) -> None:
    from rpu_ray import experiment

    print(experiment.status_text(args.directory))


def _evaluate(args: argparse.Namespace) -> None:
    import json

    from rpu_ray.report import evaluate_file, format_metrics_table

    try:
        metrics = evaluate_file(args.model, _load(args), dci_mode=args.dci_mode, seed=args.seed)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    print(format_metrics_table(metrics))
    if args.json:
        try:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            with open(args.json, "w") as f:
                json.dump(metrics, f, indent=1)
        except OSError as err:
            raise _write_error(args.json, err) from None
        print(f"wrote {args.json}")


def _traverse(args: argparse.Namespace) -> None:
    from rpu_ray.report import save_traversals

    try:
        out = save_traversals(args.model, _load(args), args.out, seed=args.seed)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    except OSError as err:
        raise _write_error(args.out, err) from None
    print(f"wrote {out}")


def _baseline(args: argparse.Namespace) -> None:
    import torch

    from rpu_ray.baseline import run_baselines

    try:
        points = tuple(int(p) for p in args.eval_points.split(","))
    except ValueError:
        points = ()
    if len(points) != 3 or min(points) < 2:
        raise ConfigError(f"--eval-points: expected three counts >= 2, got {args.eval_points!r}")
    if args.seeds < 2 or args.images < 2 or (args.select_labels and args.select_labels < 2):
        raise ConfigError("--seeds must be >= 2, --images >= 2, --select-labels 0 or >= 2")
    if not args.lr > 0:
        raise ConfigError(f"--lr must be positive, got {args.lr}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out}: exists and is not a folder")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ConfigError(f"--device: expected auto, cpu, cuda or cuda:N, got {device!r}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: PyTorch sees no CUDA GPU here")
    dataset = _load(args)
    if not dataset.has_factors:
        raise ConfigError(f"{dataset.source} has no ground-truth factors: baselines are "
                          "evaluated on them")
    try:
        table = run_baselines(
            dataset, args.model, args.hparam, args.seeds, args.images, args.out,
            select_labels=args.select_labels or None, lr=args.lr, batch_size=args.batch_size,
            arch=args.arch, seed=args.seed, device=device, eval_points=points,
            dci_mode=args.dci_mode)
    except OSError as err:  # the results, written last
        raise _write_error(args.out, err) from None
    columns = ["value", "seed", "mig", "dci_disentanglement", "sap", "udr",
               *(["label_mig"] if "label_mig" in table else [])]
    print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {args.out}/baselines.csv" + (" and selection.json" if args.select_labels
                                                else ""))


def _demo(args: argparse.Namespace) -> None:
    from rpu_ray import experiment

    experiment.start_run(None, "demo", ["name=demo", *args.overrides], args.out)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="[rpu-ray] %(message)s")
    from rpu_ray.checkpoint import CheckpointError
    from rpu_ray.data import DataError
    from rpu_ray.experiment import ExperimentDirError
    from rpu_ray.labels import LabelFileError

    handlers = {("data", "preview"): _data_preview, ("data", "info"): _data_info,
                ("pbt", None): _pbt, ("run", None): _run, ("resume", None): _resume,
                ("status", None): _status, ("demo", None): _demo,
                ("evaluate", None): _evaluate, ("traverse", None): _traverse,
                ("baseline", None): _baseline}
    try:
        handlers[(args.command, getattr(args, "data_command", None))](args)
    except (DataError, ConfigError, ExperimentDirError, CheckpointError, LabelFileError) as err:
        print(f"rpu-ray: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
