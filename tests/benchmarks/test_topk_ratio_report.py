"""The repeated first-answer section renders from its record alone: per-round ratios, medians."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path[:0] = [str(Path(__file__).parent), str(BENCH), str(BENCH / "large")]

import bench_topk_ratio as bench  # noqa: E402
from records import sample_record  # noqa: E402


def sample() -> dict[str, Any]:
    """Two cases: one with the unstored variant (three rounds), one without."""
    settings = {"k": 100, "block": [500, 8192], "threads": 2, "dim": 32, "hidden": 64}
    model = {"projection_dim": 1024, "width": 1016, "train_points": 200_000}
    return {
        **settings,
        **model,
        "test_accuracy": 1.0,
        "train_model_s": 30.0,
        "fit_s": 1.0,
        "repeats": 3,
        "cases": [
            {
                "n_train": 200_000,
                "n_test": 500,
                "stored_s": [9.0, 4.0, 5.0],
                "unstored_s": [3.0, 3.0, 7.0],
                "floor_s": [3.0, 1.0, 4.0],
                "floor_factors_s": [2.0, 1.0, 3.0],
                "bytes_stored": 900 << 20,
                "bytes_unstored": 100 << 20,
            },
            {
                "n_train": 200_000,
                "n_test": 10_000,
                "stored_s": [49.0],
                "floor_s": [99.0],
                "floor_factors_s": [10.0],
            },
        ],
    }


def test_ratios_pair_each_round_with_its_own_floor_fit_added() -> None:
    case = sample()["cases"][0]
    # (1 + stored) / (1 + floor) per round: 10/4, 5/2, 6/5
    assert bench.paired(case, "stored", 1.0) == [2.5, 2.5, 1.2]
    assert bench.paired(case, "unstored", 1.0) == [1.0, 2.0, 1.6]


def test_the_section_shows_medians_ranges_and_the_cost_of_storing() -> None:
    record = sample_record(
        "topk_ratio", bench.SECTION, "large/bench_topk_ratio.py:render", sample()
    )
    text = bench.render(record)
    row = next(line for line in text.splitlines() if line.startswith("| 200,000 x 500 "))
    assert "5.00 s (4.00 s - 9.00 s)" in row  # stored: median (min - max)
    assert "2.50x (1.20x - 2.50x)" in row  # first answer / floor, per round
    assert "1.60x (1.00x - 2.00x)" in row  # unstored / floor
    assert row.endswith("| **no** |")  # median 2.50x > 1.2x
    single = next(line for line in text.splitlines() if line.startswith("| 200,000 x 10,000 "))
    assert "| 0.50x |" in single and single.endswith("| yes |")  # one round: no range
    # stored - unstored per round: +6, +1, -2 seconds; 800 MiB written
    assert "wrote 800 MiB and cost +1.00 s (-2.00 s - +6.00 s)" in text
    assert "- **unstored**:" in text


def test_the_unstored_variant_is_described_only_where_a_case_ran_it() -> None:
    data = sample()
    data["cases"] = data["cases"][1:]
    record = sample_record("topk_ratio", bench.SECTION, "large/bench_topk_ratio.py:render", data)
    text = bench.render(record)
    assert "- **stored**" in text and "- **floor**" in text
    assert "**unstored**" not in text


@pytest.mark.parametrize("bad", ["200000", "x500", "200000x0", "ax5"])
def test_a_malformed_case_is_refused_with_the_expected_form(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"NTRAINxNTEST|n_train, n_test >= 1"):
        bench.parse_case(bad)
