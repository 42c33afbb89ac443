"""bench_large's arguments: EK-FAC block shapes, sizes not run (with why), TRAK batches."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path[:0] = [str(BENCH), str(BENCH / "large")]

import bench_large  # noqa: E402


def test_not_run_sizes_leave_the_run_and_keep_their_reason() -> None:
    a = bench_large.parse(["--sizes", "1e5,1e7", "--not-run", "1e7=too slow here"])
    assert a.sizes == ["1e5"]
    assert a.not_run == {"1e7": "too slow here"}


def test_ekfac_block_is_chosen_by_create_unless_named() -> None:
    a = bench_large.parse(["--sizes", "1e5,1e6", "--ekfac-block", "1e6=64x128"])
    assert a.ekfac_block == {"1e6": [64, 128]}
    assert bench_large.jobs("1e5", a)["ekfac"][2]["block_shape"] is None
    assert bench_large.jobs("1e6", a)["ekfac"][2]["block_shape"] == [64, 128]


def test_trak_batch_per_size_and_pydvl_time_limit_reach_the_workers() -> None:
    a = bench_large.parse(["--sizes", "1e5,1e6", "--trak-batch", "1e6=300", "--pydvl-budget", "42"])
    assert bench_large.jobs("1e5", a)["trak"][2]["batch"] == 1000
    assert bench_large.jobs("1e6", a)["trak"][2]["batch"] == 300
    assert bench_large.jobs("1e6", a)["pydvl"][2]["budget_s"] == 42


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ekfac-block", "1e6=64"], "expected SIZE=ROWSxCOLS"),
        (["--ekfac-block", "1e9=1x1"], "expected SIZE=ROWSxCOLS"),
        (["--not-run", "1e7"], "expected SIZE=REASON"),
        (["--not-run", "1e7= "], "expected SIZE=REASON"),
    ],
)
def test_bad_arguments_say_what_was_expected(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        bench_large.parse(["--sizes", "1e5,1e6", *argv])
