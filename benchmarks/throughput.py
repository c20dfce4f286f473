"""Training throughput of one PBT member: fused ensemble versus a Python loop over models.

Unit: model-images/s = (VAEs in the member) x (batch size) x (optimiser steps per second), the
unit of shared/bench/ANCHOR.md. Every variant trains the beta-TCVAE objective with Adam on random
binary uint8 images already on the device, converting one batch at a time:

* fused: `rpu_ray.engine.Member` (one module with grouped convolutions, one forward and one
  backward for the M models), timed by `Member.train` itself; fused_cl: the same in the
  channels-last memory format;
* looped: M separate `VAE` modules, one Adam over all of them, a Python loop over the models in
  every step (the structure of the authors' UDRVAE, without their distribution classes);
* k processes (CUDA only): k spawned processes each train one fused member at the same time;
  the row is the sum of their throughputs.

bf16 rows use autocast for the model's forward (CUDA only). Warm-up steps are excluded; each
number is the median over `--repeats` timed runs of `--steps` optimiser steps, the runs of all
variants taking turns.

Examples:
  python benchmarks/throughput.py                      # CUDA: bs 64/256/1024, fp32 + bf16, k = 4, 8
  python benchmarks/throughput.py --device cpu --batch-sizes 64 --steps 5 --image-size 32
  python benchmarks/throughput.py --smoke              # tiny sizes on the CPU, a few seconds
"""

from __future__ import annotations

import argparse
import datetime
import functools
import multiprocessing as mp
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from rpu_ray.engine import Member
from rpu_ray.models import VAE, make_loss

# ANCHOR.md's bar for one fused member on an H100 (5 models, 64x64x1), model-images/s.
H100_TARGETS = {64: 40_000, 256: 100_000, 1024: 200_000}
LR, BETA = 1e-4, 4.0  # a stable setting: the benchmark must not diverge


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--models", type=int, default=5, help="VAEs per member (M)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--arch", default="authors", choices=["authors", "dlib"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument(
        "--variants", nargs="+", default=["fused", "looped"], choices=sorted(VARIANTS)
    )
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"] if cuda else ["fp32"])
    parser.add_argument(
        "--processes",
        type=int,
        nargs="*",
        default=[4, 8] if cuda else [],
        help="k for the k-processes rows (fused, last dtype; CUDA only)",
    )
    parser.add_argument("--steps", type=int, default=50, help="timed optimiser steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps before timing")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median counts")
    parser.add_argument("--images", type=int, default=4096, help="size of the image set")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run for the tests")
    args = parser.parse_args(argv)
    if args.smoke:
        args.device, args.models, args.image_size, args.batch_sizes = "cpu", 2, 32, [4, 8]
        args.dtypes, args.processes, args.steps, args.warmup = ["fp32"], [], 2, 1
        args.repeats, args.images = 1, 64
    args.device = torch.device(args.device)
    if args.device.type != "cuda" and ("bf16" in args.dtypes or args.processes):
        parser.error("bf16 rows and k-process rows need a CUDA device")
    if args.images < max(args.batch_sizes):
        parser.error("--images must be at least the largest batch size")
    return args


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as info:
            names = [
                line.split(":", 1)[1].strip() for line in info if line.startswith("model name")
            ]
    except OSError:  # not Linux
        names = []
    cpu = names[0] if names else platform.processor() or platform.machine()
    return f"{cpu} ({torch.get_num_threads()} torch threads)"


def random_images(args: argparse.Namespace, seed: int = 0) -> torch.Tensor:
    """Binary uint8 images (0 or 255) on the device."""
    generator = torch.Generator().manual_seed(seed)
    shape = (args.images, args.channels, args.image_size, args.image_size)
    return ((torch.rand(shape, generator=generator) < 0.5) * 255).to(torch.uint8).to(args.device)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _member(
    args: argparse.Namespace,
    batch_size: int,
    bf16: bool,
    seed: int = 0,
    channels_last: bool = False,
) -> Member:
    return Member(
        {"lr": LR, "batch_size": batch_size, "beta": BETA},
        num_models=args.models,
        image_shape=(args.channels, args.image_size, args.image_size),
        arch=args.arch,
        seed=seed,
        device=args.device,
        bf16=bf16,
        channels_last=channels_last,
    )


# A runner is set up and warmed up; each call is one timed run and returns model-images/s.
Runner = Callable[[], float]


def fused_runner(
    args: argparse.Namespace,
    images: torch.Tensor,
    batch_size: int,
    bf16: bool,
    channels_last: bool = False,
) -> Runner:
    member = _member(args, batch_size, bf16, channels_last=channels_last)
    member.train(images, args.warmup * batch_size)

    def timed_run() -> float:
        result = member.train(images, args.steps * batch_size)
        if result["diverged"]:
            raise RuntimeError("the benchmark member diverged")
        return result["model_images_per_s"]

    return timed_run


def looped_runner(
    args: argparse.Namespace, images: torch.Tensor, batch_size: int, bf16: bool
) -> Runner:
    shape = (args.channels, args.image_size, args.image_size)
    models = torch.nn.ModuleList(VAE(shape, arch=args.arch) for _ in range(args.models))
    models.to(args.device)
    optimizer = torch.optim.Adam(models.parameters(), lr=LR)
    loss_fn = make_loss("betatcvae")
    generator = torch.Generator(args.device).manual_seed(0)
    num_images = images.shape[0]

    def step() -> None:
        index = torch.randint(num_images, (batch_size,), generator=generator, device=args.device)
        x = images[index].float().div_(255)
        optimizer.zero_grad(set_to_none=True)
        for model in models:
            with torch.autocast(args.device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(x)
            loss = loss_fn(x, out._make(t.float() for t in out), {"beta": BETA}, num_images)
            loss.loss.sum().backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()

    def timed_run() -> float:
        _synchronize(args.device)
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        _synchronize(args.device)
        return args.models * batch_size * args.steps / (time.perf_counter() - start)

    return timed_run


VARIANTS: dict[str, tuple[str, Callable[..., Runner]]] = {
    "fused": ("fused", fused_runner),
    "fused_cl": ("fused, channels_last", functools.partial(fused_runner, channels_last=True)),
    "looped": ("looped", looped_runner),
}


def _process_worker(
    args: argparse.Namespace, rank: int, bf16: bool, barrier: Any, results: Any
) -> None:
    """One of k processes: per batch size, warm up, wait for the others, time a fused member."""
    images = random_images(args, seed=rank)
    for batch_size in args.batch_sizes:
        member = _member(args, batch_size, bf16, seed=rank)
        member.train(images, args.warmup * batch_size)
        barrier.wait()
        result = member.train(images, args.steps * batch_size)
        results.put((batch_size, result["model_images_per_s"]))


def measure_processes(args: argparse.Namespace, k: int, bf16: bool) -> dict[int, float]:
    """Summed throughput of k processes training one fused member each, per batch size."""
    context = mp.get_context("spawn")
    barrier, results = context.Barrier(k), context.Queue()
    workers = [
        context.Process(target=_process_worker, args=(args, rank, bf16, barrier, results))
        for rank in range(k)
    ]
    for worker in workers:
        worker.start()
    totals = dict.fromkeys(args.batch_sizes, 0.0)
    for _ in range(k * len(args.batch_sizes)):
        batch_size, rate = results.get()
        totals[batch_size] += rate
    for worker in workers:
        worker.join()
        if worker.exitcode:
            raise RuntimeError(f"a benchmark process failed with exit code {worker.exitcode}")
    return totals


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """All rows: {"variant", "dtype", "rates": {batch size: model-images/s}}."""
    images = random_images(args)
    keys = [(v, d, bs) for d in args.dtypes for v in args.variants for bs in args.batch_sizes]
    runners = {(v, d, bs): VARIANTS[v][1](args, images, bs, d == "bf16") for v, d, bs in keys}
    # Repeats go round all variants, so a busy phase of a shared machine hits them alike.
    rates: dict[tuple[str, str, int], list[float]] = {key: [] for key in keys}
    for _ in range(args.repeats):
        for key, runner in runners.items():
            rates[key].append(runner())
    rows = [
        {
            "variant": VARIANTS[variant][0],
            "dtype": dtype,
            "rates": {bs: statistics.median(rates[variant, dtype, bs]) for bs in args.batch_sizes},
        }
        for variant in args.variants
        for dtype in args.dtypes
    ]
    last = args.dtypes[-1]
    for k in args.processes:
        rates_k = measure_processes(args, k, last == "bf16")
        rows.append({"variant": f"fused, {k} processes (sum)", "dtype": last, "rates": rates_k})
    return rows


def markdown(args: argparse.Namespace, rows: list[dict[str, Any]], command: str) -> str:
    sizes = args.batch_sizes
    lines = [
        f"Device: {device_name(args.device)}; torch {torch.__version__}; "
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"Member: {args.models} x {args.arch} beta-TCVAE, images {args.channels}x{args.image_size}"
        f"x{args.image_size}; {args.steps} timed steps after {args.warmup} warm-up, "
        f"median of {args.repeats} (repeats interleaved across variants)",
        f"Command: `{command}`",
        "",
        "| variant | dtype | " + " | ".join(f"bs {bs}" for bs in sizes) + " |",
        "|---|---|" + "---:|" * len(sizes),
    ]
    for row in rows:
        cells = " | ".join(f"{row['rates'][bs]:,.0f}" for bs in sizes)
        lines.append(f"| {row['variant']} | {row['dtype']} | {cells} |")
    by_key = {(row["variant"], row["dtype"]): row["rates"] for row in rows}
    for dtype in args.dtypes:
        if ("fused", dtype) in by_key and ("looped", dtype) in by_key:
            fused, looped = by_key["fused", dtype], by_key["looped", dtype]
            cells = " | ".join(f"{fused[bs] / looped[bs]:.1f}x" for bs in sizes)
            lines.append(f"| fused / looped | {dtype} | {cells} |")
    if args.device.type == "cuda":
        cells = " | ".join(f"{H100_TARGETS[bs]:,}" if bs in H100_TARGETS else "-" for bs in sizes)
        lines.append(f"| H100 target (ANCHOR.md) | any | {cells} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args)
    command = " ".join(
        ["python benchmarks/throughput.py", *(sys.argv[1:] if argv is None else argv)]
    )
    print(markdown(args, rows, command))
    return rows


if __name__ == "__main__":
    main()
