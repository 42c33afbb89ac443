"""The matrix and store checks shared by the fault-injection tests.

The matrix is :mod:`faultchild`'s (the child program that the crash tests run): its
:data:`SHAPE`, :data:`BLOCK` and :data:`GRID`, and :data:`EXPECTED`, its values as stored. The
checks look at a store after a crash: its block files and temporary files, and whether every
stored block is complete and correct and a new fill computes exactly the missing ones.
"""

from __future__ import annotations

from pathlib import Path

import faultchild
import numpy as np
import zarr
from helpers import CountingFn

import infl_array as ia

SHAPE: tuple[int, int] = faultchild.SHAPE
BLOCK: tuple[int, int] = faultchild.BLOCK
GRID: tuple[int, int] = faultchild.GRID
EXPECTED: np.ndarray = faultchild.expected()
N_BLOCKS = GRID[0] * GRID[1]
TIMEOUT_S = 120.0  # generous limit for any wait on a child process


def new_store(path: Path) -> ia.InfluenceArray:
    return ia.InfluenceArray.from_function(
        path, CountingFn(EXPECTED), shape=SHAPE, block_shape=BLOCK
    )


def chunk_files(store: Path) -> list[Path]:
    base = store / "influence" / "c"
    return sorted(p for p in base.glob("*/*") if p.name.isdigit()) if base.exists() else []


def partial_files(store: Path) -> list[Path]:
    """Temporary files of block writes (a claim written meanwhile may leave one too)."""
    return sorted(p for p in store.rglob("*.partial") if "/c/" in p.as_posix())


def claim_partials(store: Path) -> list[Path]:
    return sorted((store / "influence" / "claims").glob("*.partial"))


def snapshot(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in store.rglob("*") if p.is_file()}


def block_of(call: tuple[int, int, int, int]) -> tuple[int, int]:
    return (call[0] // BLOCK[0], call[2] // BLOCK[1])


def block_sel(coords: tuple[int, int]) -> tuple[slice, slice]:
    i, j = coords
    return slice(i * BLOCK[0], (i + 1) * BLOCK[0]), slice(j * BLOCK[1], (j + 1) * BLOCK[1])


def check_store_after_crash(store: Path) -> set[tuple[int, int]]:
    """Every stored block is complete and correct; returns the blocks that are missing."""
    ro = ia.open(store)
    computed = {(int(i), int(j)) for i, j in np.argwhere(ro.computed)}
    assert computed == {(int(p.parent.name), int(p.name)) for p in chunk_files(store)}
    assert ro.verify() == []
    raw = zarr.open_array(store / "influence", mode="r")
    for i in range(GRID[0]):
        for j in range(GRID[1]):
            sel = block_sel((i, j))
            if (i, j) in computed:
                np.testing.assert_array_equal(ro.read_block((i, j)), EXPECTED[sel])
                np.testing.assert_array_equal(raw[sel], EXPECTED[sel])
            else:
                assert np.isnan(raw[sel]).all()
    return {(i, j) for i in range(GRID[0]) for j in range(GRID[1])} - computed


def refill_computes_exactly(store: Path | str, missing: set[tuple[int, int]]) -> None:
    fn = CountingFn(EXPECTED)
    arr = ia.open(store, fn=fn)
    assert arr.fill(progress=False) == len(missing)
    assert sorted(block_of(c) for c in fn.calls) == sorted(missing)
    np.testing.assert_array_equal(np.asarray(arr), EXPECTED)
    assert arr.verify() == []
    assert arr.fill(progress=False) == 0
