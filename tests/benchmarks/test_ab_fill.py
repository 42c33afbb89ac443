"""The A/B summary of ``benchmarks/speed/ab_fill.py``: each side's median over processes of
the best repetition, and the per-pair ratios with the count of pairs the second side won."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

SPEED = Path(__file__).resolve().parents[2] / "benchmarks" / "speed"
sys.path.insert(0, str(SPEED))

import ab_fill  # noqa: E402


def _process(wall: list[float], cpu: list[float]) -> dict[str, dict[str, list[float]]]:
    return {"fill": {"wall": wall, "cpu": cpu}}


def test_summary_takes_each_process_best_then_the_median_over_processes():
    runs = {
        "old": [_process([2.0, 1.0], [1.5, 1.2]), _process([3.0], [2.0]), _process([4.0], [3.0])],
        "new": [_process([0.5, 0.9], [1.0, 0.6]), _process([3.3], [1.0]), _process([2.0], [2.5])],
    }
    row = ab_fill.summarize(runs, ["old", "new"])["fill"]
    assert row["wall"]["old"] == 3.0 and row["wall"]["new"] == 2.0
    assert row["wall"]["new/old per pair"] == pytest.approx([0.5, 1.1, 0.5])
    assert row["wall"]["new/old median"] == pytest.approx(0.5)
    assert row["wall"]["new faster in"] == "2/3 pairs"
    assert row["cpu"]["new/old per pair"] == pytest.approx([0.5, 0.5, 2.5 / 3.0])
    assert row["cpu"]["new faster in"] == "3/3 pairs"


def test_summary_refuses_sides_with_different_process_counts():
    runs = {"a": [_process([1.0], [1.0])], "b": []}
    with pytest.raises(ValueError):
        ab_fill.summarize(runs, ["a", "b"])
