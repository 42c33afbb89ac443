"""Computing blocks (engine/work.py): shared fills claim units of blocks, not blocks; a unit
another filler holds is computed once it is free; an in-process store takes no claims."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from helpers import CountingFn, SlowLoggedFn, logged_blocks

import infl_array as ia
from infl_array.engine.plan import ClaimUnits
from infl_array.storage.claims import ClaimBook
from infl_array.storage.store import InfluenceStore
from infl_array.storage.zarr_compat import write_key

SHAPE, BLOCK = (40, 40), (2, 2)  # 20 x 20 blocks: claim units of 2 x 3 blocks
UNITS = ClaimUnits(2, 3)
N_UNITS = 10 * 7


@pytest.fixture
def counted_claims(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts of ClaimBook.try_claim and ClaimBook.release calls, by method."""
    calls: Counter[str] = Counter()
    for name in ("try_claim", "release"):
        original = getattr(ClaimBook, name)

        def counted(self: ClaimBook, claim: str, _o: Any = original, _n: str = name) -> Any:
            calls[_n] += 1
            return _o(self, claim)

        monkeypatch.setattr(ClaimBook, name, counted)
    return calls


def expected() -> np.ndarray:
    return np.add.outer(np.arange(SHAPE[0]) * 1000.0, np.arange(SHAPE[1]))


def test_a_shared_fill_takes_one_claim_per_unit(
    tmp_path: Path, counted_claims: Counter[str]
) -> None:
    log = tmp_path / "log"
    arr = ia.InfluenceArray.from_function(
        tmp_path / "s", SlowLoggedFn(str(log)), shape=SHAPE, block_shape=BLOCK
    )
    assert ClaimUnits.for_grid(arr.grid_shape) == UNITS
    assert arr.fill(progress=False) == 400
    assert counted_claims == {"try_claim": N_UNITS, "release": N_UNITS}
    assert sorted(Counter((r, c) for r, c, _ in logged_blocks(str(log))).values()) == [1] * 400
    np.testing.assert_array_equal(np.asarray(arr), expected())
    assert not list((tmp_path / "s" / "influence" / "claims").iterdir())  # all released


def test_an_in_process_store_takes_no_claims(counted_claims: Counter[str]) -> None:
    fn = SlowLoggedFn("/dev/null")
    arr = ia.InfluenceArray.from_function({}, fn, shape=SHAPE, block_shape=BLOCK)
    assert arr.fill(progress=False) == 400
    assert counted_claims == {}
    np.testing.assert_array_equal(np.asarray(arr), expected())


def _plant(store: Path, unit: tuple[int, int], owner: str, expires_in: float) -> None:
    import time

    zstore = InfluenceStore.open(store).matrix.zarr_store
    content = json.dumps({"owner": owner, "expires": time.time() + expires_in}).encode()
    write_key(zstore, f"influence/claims/{UNITS.name(unit)}", content)


def test_a_unit_held_by_a_live_filler_is_computed_last_after_its_claim_expires(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log"
    arr = ia.InfluenceArray.from_function(
        tmp_path / "s", SlowLoggedFn(str(log)), shape=SHAPE, block_shape=BLOCK
    )
    _plant(tmp_path / "s", (0, 0), "another-machine:1:x", expires_in=3.0)  # then it dies
    assert arr.fill(progress=False) == 400
    order = [(r // BLOCK[0], c // BLOCK[1]) for r, c, _ in logged_blocks(str(log))]
    held = {(i, j) for i in range(2) for j in range(3)}
    assert len(order) == 400 and set(order[-6:]) == held  # skipped, then taken over
    np.testing.assert_array_equal(np.asarray(arr), expected())


def test_a_unit_claimed_by_a_dead_local_filler_is_taken_over_at_once(tmp_path: Path) -> None:
    log = tmp_path / "log"
    arr = ia.InfluenceArray.from_function(
        tmp_path / "s", SlowLoggedFn(str(log)), shape=SHAPE, block_shape=BLOCK
    )
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    owner = f"{socket.gethostname()}:{dead.stdout.strip()}:x"
    _plant(tmp_path / "s", (0, 0), owner, expires_in=3600.0)
    assert arr.fill(progress=False) == 400
    order = [(r // BLOCK[0], c // BLOCK[1]) for r, c, _ in logged_blocks(str(log))]
    assert order[0] == (0, 0) and len(order) == 400  # not deferred: its owner is gone
    assert not list((tmp_path / "s" / "influence" / "claims").iterdir())


# ---------------------------------------------------------------------- runs of writes
@pytest.fixture
def recorded_runs(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[int, int]]]:
    """The blocks of every BlockGrid.write_run call, in order."""
    from infl_array.storage.grid import BlockGrid

    runs: list[list[tuple[int, int]]] = []
    original = BlockGrid.write_run

    def recorded(self: BlockGrid, coords: list[tuple[int, int]], values: list[Any]) -> None:
        runs.append(list(coords))
        original(self, coords, values)

    monkeypatch.setattr(BlockGrid, "write_run", recorded)
    return runs


def test_a_fill_writes_runs_of_a_block_row_with_one_call_each(
    tmp_path: Path, recorded_runs: list[list[tuple[int, int]]]
) -> None:
    full = np.random.default_rng(0).standard_normal((12, 50)).astype(np.float32)
    fn = CountingFn(full)
    arr = ia.InfluenceArray.from_function(tmp_path / "s", fn, shape=(12, 50), block_shape=(4, 3))
    assert arr.fill(progress=False) == 3 * 17
    # a function's blocks are computed row-major: one call per block row (17 blocks each)
    assert recorded_runs == [[(i, j) for j in range(17)] for i in range(3)]
    np.testing.assert_array_equal(np.asarray(arr), full)
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "s" / "influence")[:], full)


def test_runs_are_cut_at_gaps_and_at_their_byte_bound(
    tmp_path: Path, recorded_runs: list[list[tuple[int, int]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("infl_array.engine.work.WRITE_RUN_BYTES", 3 * 4 * 3 * 4)  # 3 blocks
    full = np.random.default_rng(1).standard_normal((8, 21)).astype(np.float32)
    arr = ia.InfluenceArray.from_function(
        tmp_path / "s", CountingFn(full), shape=(8, 21), block_shape=(4, 3)
    )
    arr[0:4, 9:12]  # block (0, 3) is stored before the fill
    recorded_runs.clear()
    assert arr.fill(progress=False) == 2 * 7 - 1
    assert recorded_runs == [
        [(0, 0), (0, 1), (0, 2)], [(0, 4), (0, 5), (0, 6)],
        [(1, 0), (1, 1), (1, 2)], [(1, 3), (1, 4), (1, 5)], [(1, 6)],
    ]  # fmt: skip
    np.testing.assert_array_equal(np.asarray(arr), full)


def test_blocks_of_write_alone_bytes_are_written_alone(
    tmp_path: Path, recorded_runs: list[list[tuple[int, int]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # blocks of 4 x 3 float32 values (48 bytes): at the bound, each is written with its own
    # call (a run would copy them into its buffer); the edge blocks (4 x 2, 32 bytes) below it
    monkeypatch.setattr("infl_array.engine.work.WRITE_ALONE_BYTES", 4 * 3 * 4)
    full = np.random.default_rng(2).standard_normal((8, 8)).astype(np.float32)
    arr = ia.InfluenceArray.from_function(
        tmp_path / "s", CountingFn(full), shape=(8, 8), block_shape=(4, 3)
    )
    assert arr.fill(progress=False) == 2 * 3
    assert recorded_runs == [[(0, 0)], [(0, 1)], [(0, 2)], [(1, 0)], [(1, 1)], [(1, 2)]]
    np.testing.assert_array_equal(np.asarray(arr), full)


def test_run_bookkeeping() -> None:
    from infl_array.storage.grid import extends_run, run_region

    assert extends_run([(0, 0), (1, 0)], (2, 0)) and not extends_run([(0, 0), (1, 0)], (1, 1))
    assert not extends_run([(0, 0)], (0, 2)) and not extends_run([(0, 0)], (1, 1))
    assert run_region([(1, 2), (1, 3)], (4, 3), (8, 10)) == (slice(4, 8), slice(6, 10), 1)
    assert run_region([(0, 3)], (4, 3), (8, 10)) == (slice(0, 4), slice(9, 10), 1)
