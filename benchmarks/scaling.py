"""How the replication's comparisons change with the budget C, and the budget a target needs.

Reads several output folders of `benchmarks/replicate.py` (each one budget C, i.e. one
`--scale`), and writes to --out:

  scaling.md   mean and standard deviation of MIG per method and C, and for every other method
               the gap to `--method` (default rPU-VAE) at each C both ran, with the C at which
               the gap reaches its target, continued linearly in log C from the two largest C
               both ran ("what budget would be needed", from measured scaling);
  scaling.png  mean MIG (bars: standard deviation over the final models) against C.

A gap is the other method's mean MIG minus `--method`'s. Its target is the margin given by
`--margin NAME=VALUE` (default: PBT-S-VAE=0.1, "within 0.1 MIG of supervised PBT-S-VAE"), and 0
for every other method ("above every baseline"). C of a folder is the largest model_images of
its runs: PBT runs and baselines spend C exactly, rPU-VAE at most C.

    python benchmarks/scaling.py benchmarks/results/replication-cpu-{480k,960k,1920k,3840k} \\
        --seeds 2 --out benchmarks/results/scaling-cpu
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd


def load_runs(folders: list[Path], experiment: str = "fig4", seeds: int | None = None
              ) -> pd.DataFrame:
    """The runs of `experiment` in the runs.csv of each folder, with column `budget_images`
    (the folder's C); with `seeds`, only the runs of seeds 0 to seeds - 1 (so that budgets
    run with more seeds compare like for like). Raises SystemExit naming the folder if one
    has no runs.csv or no such runs, or if two folders have the same C."""
    tables, folder_of_budget = [], {}
    for folder in folders:
        path = Path(folder) / "runs.csv"
        if not path.is_file():
            raise SystemExit(f"{path}: not found (pass folders written by replicate.py)")
        table = pd.read_csv(path)
        table = table[table.experiment == experiment]
        if seeds is not None:
            table = table[table.seed < seeds]
        if table.empty:
            raise SystemExit(f"{path}: no runs of {experiment}"
                             + (f" with seed < {seeds}" if seeds is not None else ""))
        budget = int(table.model_images.max())
        if budget in folder_of_budget:
            raise SystemExit(f"{folder_of_budget[budget]} and {folder} are both at C = "
                             f"{budget:,}; pass one of them")
        folder_of_budget[budget] = folder
        tables.append(table.assign(budget_images=budget))
    return pd.concat(tables, ignore_index=True)


def mig_by_budget(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per method (in order of appearance): mean, std and count of MIG, indexed by C."""
    grouped = runs.groupby(["method", "budget_images"]).mig.agg(["mean", "std", "count"])
    return {name: grouped.loc[name] for name in dict.fromkeys(runs.method)}


def budget_reaching(budgets: list[float], gaps: list[float], target: float) -> float | None:
    """The budget at which the gap reaches `target`, continued linearly in log C through the
    last two (budget, gap) points (budgets increasing). The last budget itself if its gap is
    at or below the target already; None if the gap does not shrink there, or there is one
    point only."""
    if gaps[-1] <= target:
        return budgets[-1]
    if len(budgets) < 2:
        return None
    slope = (gaps[-1] - gaps[-2]) / (math.log2(budgets[-1]) - math.log2(budgets[-2]))
    if slope >= 0:
        return None
    return budgets[-1] * 2 ** ((target - gaps[-1]) / slope)


def gap_lines(stats: dict[str, pd.DataFrame], method: str, margins: dict[str, float]
              ) -> list[str]:
    """A markdown table: for each other method, its gap to `method` at every C both ran, the
    target (`margins`, default 0) and the C at which the gap reaches it."""
    if method not in stats:
        raise SystemExit(f"no runs of {method}; methods: {', '.join(stats)}")
    budgets = _budgets(stats)
    lines = ["| method | target gap | " + " | ".join(f"gap at {_millions(c)}" for c in budgets)
             + " | target reached at C |", "|---|---:|" + "---:|" * len(budgets) + "---|"]
    for other in stats:
        gaps = (stats[other]["mean"] - stats[method]["mean"]).dropna()
        if other == method or gaps.empty:
            continue
        target = margins.get(other, 0.0)
        reached = budget_reaching(list(gaps.index), list(gaps), target)
        if gaps.iloc[-1] <= target:
            where = f"met at {_millions(reached)}"
        elif len(gaps) < 2:
            where = "not predicted (one budget)"
        elif reached is None:
            where = "not predicted (the gap grew)"
        else:
            where = (f"about {reached / 1e6:.1f} M (continued from {_millions(gaps.index[-2])} "
                     f"and {_millions(gaps.index[-1])})")
        cells = " | ".join(f"{gaps[c]:+.3f}" if c in gaps.index else "" for c in budgets)
        lines.append(f"| {other} | {target:+.2f} | {cells} | {where} |")
    return lines


def summary_markdown(stats: dict[str, pd.DataFrame], method: str, margins: dict[str, float]
                     ) -> str:
    """scaling.md: the MIG table (mean ± std (count) per method and C) and `gap_lines`,
    separated by a paragraph."""
    budgets = _budgets(stats)
    lines = ["| method | " + " | ".join(f"MIG at {_millions(c)}" for c in budgets) + " |",
             "|---|" + "---:|" * len(budgets)]
    for name, table in stats.items():
        cells = [_mean_std(*table.loc[c]) if c in table.index else "" for c in budgets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"MIG: mean ± standard deviation (final models). Gap: the method's mean MIG "
              f"minus {method}'s.", ""]
    return "\n".join(lines + gap_lines(stats, method, margins)) + "\n"


def plot(stats: dict[str, pd.DataFrame], method: str, path: Path, title: str) -> None:
    """Mean MIG against C (log scale), bars of one standard deviation; `method` drawn bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, table in stats.items():
        emphasis = {"color": "black", "linewidth": 2.5} if name == method else {}
        axis.errorbar(table.index, table["mean"], yerr=table["std"].fillna(0), marker="o",
                      capsize=3, label=name, **emphasis)
    budgets = _budgets(stats)
    axis.set_xscale("log", base=2)
    axis.set_xticks(budgets, [_millions(c) for c in budgets])
    axis.set_xlabel("budget C (model-images per run)")
    axis.set_ylabel("MIG of the final models")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, ncol=2)
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _mean_std(mean: float, std: float, count: int) -> str:
    return f"{mean:.3f} ± {std:.3f} ({int(count)})" if count > 1 else f"{mean:.3f} (1)"


def _budgets(stats: dict[str, pd.DataFrame]) -> list[int]:
    return sorted({int(c) for table in stats.values() for c in table.index})


def _millions(images: float) -> str:
    return f"{images / 1e6:g} M"


def _margin(text: str) -> tuple[str, float]:
    name, _, value = text.rpartition("=")
    try:
        if name:
            return name, float(value)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected NAME=VALUE with a number, got {text!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="replicate.py output folders")
    parser.add_argument("--experiment", default="fig4")
    parser.add_argument("--seeds", type=int, help="only the runs of seeds 0 to SEEDS - 1")
    parser.add_argument("--method", default="rPU-VAE", help="the method the gaps are to")
    parser.add_argument("--margin", type=_margin, action="append", metavar="NAME=VALUE",
                        help="target gap of a method (repeatable; default PBT-S-VAE=0.1, "
                             "others 0)")
    parser.add_argument("--out", type=Path, default=Path("scaling"))
    args = parser.parse_args()
    margins = dict(args.margin or [("PBT-S-VAE", 0.1)])
    stats = mig_by_budget(load_runs(args.folders, args.experiment, args.seeds))
    args.out.mkdir(parents=True, exist_ok=True)
    text = summary_markdown(stats, args.method, margins)
    (args.out / "scaling.md").write_text(text)
    plot(stats, args.method, args.out / "scaling.png", f"{args.experiment}: MIG against the budget")
    print(text)
    print(f"wrote {args.out}/scaling.md and scaling.png")


if __name__ == "__main__":
    main()
