"""The 1e6 top-k section renders the append row from its record alone (or none without it)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path[:0] = [str(Path(__file__).parent), str(BENCH), str(BENCH / "large")]

import bench_topk as bench  # noqa: E402
import bench_topk_codec as codec  # noqa: E402
from records import sample_record  # noqa: E402


def appended(append_s: float, same: bool = True) -> dict[str, Any]:
    return {
        "n_train": 1_000_000,
        "n_new": 100_000,
        "append_s": append_s,
        "rebuild_s": 200.0,
        "append_stats": {"train_factors": 13},
        "rebuild_stats": {"train_factors": 135},
        "append_same_indices": same,
        "append_same_values": True,
    }


def test_the_append_row_shows_its_share_of_a_rebuild_against_the_target() -> None:
    (row,) = bench._append_rows(appended(20.0))
    assert "100,000 more train points (10%)" in row[0]
    assert row[2].startswith("10.0% of a rebuild over all 1,100,000 train points")
    assert "computed 13 train factor blocks (the rebuild 135)" in row[2]
    assert row[2].endswith("equal to the rebuilt one: yes")
    assert (row[3], row[4]) == ("<= 15%", "yes")
    (late,) = bench._append_rows(appended(40.0, same=False))
    assert late[4] == "**no**" and late[2].endswith("**no**")
    assert bench._append_rows({"n_train": 10}) == []


def test_the_codec_section_shows_bytes_and_the_least_times() -> None:
    chunk = 8192 * 506 * 4
    data = {
        "dim": 32,
        "hidden": 64,
        "test_accuracy": 1.0,
        "projection_dim": 512,
        "width": 506,
        "chunks": 2,
        "chunk_bytes": chunk,
        "block": [100, 8192],
        "repeats": 2,
        "threads": 2,
        "codecs": {
            "raw + crc32c (before)": {
                "bytes": 2 * chunk,
                "write": [[0.02, 0.01], [0.03, 0.005]],
                "read": [[0.01, 0.01], [0.01, 0.01]],
            },
            "blosc lz4 9 bitshuffle + crc32c": {
                "bytes": int(1.75 * chunk),
                "write": [[0.05, 0.04], [0.04, 0.05]],
                "read": [[0.02, 0.02], [0.03, 0.01]],
            },
        },
    }
    record = sample_record("topk_codec", codec.SECTION, "large/bench_topk_codec.py:render", data)
    text = codec.render(record)
    assert "| raw + crc32c (before) | 32 MiB | 100.0% | 20.00 ms (5.00 ms) |" in text
    assert "| blosc lz4 9 bitshuffle + crc32c | 28 MiB | 87.5% | 40.00 ms (40.00 ms) |" in text
    assert "the least of 2 rounds" in text
