"""benchmarks/scaling.py: the budget a gap needs, on tables with known answers."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import load_benchmark

scaling = load_benchmark("scaling")


def _write_runs(folder: Path, budget: int, migs: dict[str, list[float]]) -> Path:
    """A runs.csv of fig4 at C = `budget`: one run per seed and MIG of each method (rPU-VAE
    spends a little less than C, as when a leaf-run stops early)."""
    rows = [{"experiment": "fig4", "method": method, "seed": seed, "mig": mig,
             "model_images": budget - 1000 if method == "rPU-VAE" else budget}
            for method, values in migs.items() for seed, mig in enumerate(values)]
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "runs.csv", index=False)
    return folder


@pytest.fixture
def two_budgets(tmp_path: Path) -> list[Path]:
    # rPU-VAE gains 0.2 per doubling, PBT-S-VAE 0.1: the gap 0.3 -> 0.2 reaches 0.1 at 4 M.
    # beta-TCVAE's gap grows (0.0 -> 0.1); beta-VAE ran at one budget.
    return [_write_runs(tmp_path / "a", 1_000_000, {"rPU-VAE": [0.1, 0.3], "PBT-S-VAE": [0.5, 0.5],
                                                    "betatcvae": [0.2, 0.2],
                                                    "betavae": [0.3, 0.3]}),
            _write_runs(tmp_path / "b", 2_000_000, {"rPU-VAE": [0.4, 0.4], "PBT-S-VAE": [0.6, 0.6],
                                                    "betatcvae": [0.5, 0.5], "seedless": [0.9]})]


def test_budget_reaching_continues_the_last_two_points_in_log_budget() -> None:
    assert scaling.budget_reaching([1e6, 2e6], [0.3, 0.2], 0.1) == pytest.approx(4e6)
    assert scaling.budget_reaching([5e5, 1e6, 2e6], [0.0, 0.3, 0.2], 0.0) == pytest.approx(8e6)
    assert scaling.budget_reaching([1e6, 2e6], [0.3, 0.05], 0.1) == 2e6  # met already
    assert scaling.budget_reaching([1e6, 2e6], [0.1, 0.2], 0.1) is None  # grows
    assert scaling.budget_reaching([1e6], [0.3], 0.1) is None


def test_runs_get_their_folders_budget_and_seeds_filter(two_budgets: list[Path]) -> None:
    runs = scaling.load_runs(two_budgets)
    assert sorted(runs.budget_images.unique()) == [1_000_000, 2_000_000]
    assert len(runs) == 15
    stats = scaling.mig_by_budget(scaling.load_runs(two_budgets, seeds=1))
    assert list(stats) == ["rPU-VAE", "PBT-S-VAE", "betatcvae", "betavae", "seedless"]
    assert stats["rPU-VAE"]["mean"].tolist() == pytest.approx([0.1, 0.4])
    assert stats["rPU-VAE"]["count"].tolist() == [1, 1]


def test_summary_names_the_budget_each_target_needs(two_budgets: list[Path]) -> None:
    stats = scaling.mig_by_budget(scaling.load_runs(two_budgets))
    text = scaling.summary_markdown(stats, "rPU-VAE", {"PBT-S-VAE": 0.1})
    mig_table, _, gap_table = text.partition("\n\nMIG: mean")
    mig = {line.split(" | ")[0]: line for line in mig_table.splitlines()}
    gap = {line.split(" | ")[0]: line for line in gap_table.splitlines()}
    assert mig["| rPU-VAE"] == "| rPU-VAE | 0.200 ± 0.141 (2) | 0.400 ± 0.000 (2) |"
    assert mig["| seedless"] == "| seedless |  | 0.900 (1) |"
    assert gap["| PBT-S-VAE"] == ("| PBT-S-VAE | +0.10 | +0.300 | +0.200 | "
                                  "about 4.0 M (continued from 1 M and 2 M) |")
    assert gap["| betatcvae"].endswith("| +0.000 | +0.100 | not predicted (the gap grew) |")
    assert gap["| betavae"] == "| betavae | +0.00 | +0.100 |  | not predicted (one budget) |"
    assert gap["| seedless"] == "| seedless | +0.00 |  | +0.500 | not predicted (one budget) |"
    assert "| rPU-VAE" not in gap


def test_bad_folders_stop_with_the_folder_named(two_budgets: list[Path], tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"missing/runs.csv: not found"):
        scaling.load_runs([tmp_path / "missing"])
    same = _write_runs(tmp_path / "c", 2_000_000, {"PBT-S-VAE": [0.6]})
    with pytest.raises(SystemExit, match=r"b and .*c are both at C = 2,000,000"):
        scaling.load_runs([*two_budgets, same])
    with pytest.raises(SystemExit, match=r"a/runs.csv: no runs of fig1a"):
        scaling.load_runs(two_budgets, experiment="fig1a")
    stats = scaling.mig_by_budget(scaling.load_runs(two_budgets))
    with pytest.raises(SystemExit, match="no runs of PBT-U-VAE; methods: rPU-VAE, PBT-S-VAE"):
        scaling.gap_lines(stats, "PBT-U-VAE", {})


def test_command_writes_table_and_plot(two_budgets: list[Path], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["scaling.py", *map(str, two_budgets), "--margin",
                                      "betatcvae=0.2", "--out", str(out)])
    scaling.main()
    text = (out / "scaling.md").read_text()
    assert "| betatcvae | +0.20 | +0.000 | +0.100 | met at 2 M |" in text
    assert "| PBT-S-VAE | +0.00 |" in text  # a --margin replaces the default one
    assert (out / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setattr(sys, "argv", ["scaling.py", str(two_budgets[0]), "--margin", "0.1"])
    with pytest.raises(SystemExit) as exit_:
        scaling.main()
    assert exit_.value.code == 2 and "expected NAME=VALUE" in capsys.readouterr().err
