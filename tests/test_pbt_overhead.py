"""benchmarks/pbt_overhead.py: the idealised schedule it compares with, and its smoke run."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import CLI_ENV, load_benchmark

pbt_overhead = load_benchmark("pbt_overhead")
_PATH = pbt_overhead.__file__


@pytest.mark.parametrize(("durations", "slots", "expected"), [
    ([5.0, 5.0, 5.0, 5.0], 2, 10.0),     # two rounds of two
    ([8.0, 2.0, 2.0, 2.0], 2, 8.0),      # the short ones share the second slot
    ([2.0, 8.0, 8.0, 2.0], 2, 10.0),     # the third waits for the first; the fourth ends last
    ([3.0, 1.0], 4, 3.0),                # more slots than jobs
    ([4.0, 4.0, 4.0], 1, 12.0),          # one slot: the sum
])
def test_makespan_is_greedy_list_scheduling(durations: list[float], slots: int,
                                            expected: float) -> None:
    assert pbt_overhead.makespan(durations, slots) == pytest.approx(expected)


def test_smoke_run_splits_the_overhead_consistently() -> None:
    done = subprocess.run([sys.executable, str(_PATH), "--smoke"], env=CLI_ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    header, *rows = [line.split() for line in done.stdout.splitlines()
                     if re.match(r"\s+(generation|\d+)\s", line)]
    assert header[:2] == ["generation", "wall_s"] and len(rows) == 2
    for row in rows:
        values = dict(zip(header, map(float, row), strict=True))
        # Measured, not derived: the members trained, and the generation took at least as
        # long as its idealised schedule (the list scheduling of its measured steps).
        assert values["step_s"] > 0 and values["ideal_s"] <= values["wall_s"]
        assert all(0 <= values[k] < 1 for k in ("overhead", "imbalance", "tune"))
        # The split: (1 - overhead) = (1 - imbalance) * (1 - tune), to the printed digits.
        assert 1 - values["overhead"] == pytest.approx(
            (1 - values["imbalance"]) * (1 - values["tune"]), abs=2e-3)
