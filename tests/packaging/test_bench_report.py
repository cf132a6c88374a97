"""The benchmark's report arithmetic (bench/run.py), without running a benchmark."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_ratios_pair_runs_of_the_same_round():
    # The machine slowed down in the second round; both targets felt it.
    sidecar = {"all_rps": [80, 40, 82]}
    floor = {"all_rps": [100, 50, 100]}
    assert bench.round_ratios(sidecar, floor) == [0.8, 0.8, 0.82]
    assert bench.by_round(sidecar, floor, ".2f") == "by round: median 0.80, 0.80 to 0.82 over 3"


def test_a_round_is_paired_with_its_own_round_only():
    # Sorted separately, these lists would pair 50/50 and 90/100.
    sidecar = {"all_rps": [50, 90, 82]}
    floor = {"all_rps": [100, 50, 100]}
    assert bench.round_ratios(sidecar, floor) == [0.5, 0.82, 1.8]


def test_costs_are_shown_in_percent():
    on = {"all_rps": [97, 95]}
    off = {"all_rps": [100, 100]}
    assert bench.by_round(on, off, "+.1f", cost=True) == "by round: median +4.0, +3.0 to +5.0 over 2"


def test_no_rounds_is_said_not_divided():
    assert bench.by_round({"all_rps": []}, {"all_rps": []}, ".2f") == "no rounds"
    assert bench.by_round({"all_rps": [5]}, {"all_rps": [0]}, ".2f") == "no rounds"
