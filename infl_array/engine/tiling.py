"""The tiles a compute runs in, and each tile's test factors in one batched call.

A block source that memoises factors (its ``factor_reuse`` capability,
:mod:`infl_array.engine.sources`) computes each test factor once and each train factor once per
tile when blocks are computed tile by tile. :func:`compute_tiles` cuts blocks into tiles whose
test factors fit what the memo may hold now, its share of the memory budget
(:func:`~infl_array.engine.plan.plan_budget_tiles`);
:func:`prefetch_tile` computes a tile's test factors in one call per run of block rows (one
batched solve). Without the capability, blocks are tiled without a budget and nothing is
prefetched.
"""

from __future__ import annotations

from infl_array.engine.plan import plan_budget_tiles, row_runs
from infl_array.engine.sources import FactorReuse
from infl_array.storage.grid import BlockCoords, BlockGrid, block_range

__all__ = ["compute_tiles", "prefetch_tile"]


def compute_tiles(
    blocks: list[BlockCoords], grid: BlockGrid, reuse: FactorReuse | None
) -> list[list[BlockCoords]]:
    """``blocks`` cut into the tiles they are computed in (row-major within a tile)."""
    shape, block_shape = grid.shape, grid.block_shape
    if reuse is None or len(blocks) <= 1:
        return plan_budget_tiles(blocks, shape, block_shape, None, 0)
    rows, cols = grid.block_bounds(min(blocks))
    first, first_cols = range(rows.start, rows.stop), range(cols.start, cols.stop)
    row_bytes = reuse.test_factor_bytes(first, first_cols) / len(first)
    return plan_budget_tiles(blocks, shape, block_shape, row_bytes, reuse.memo_room())


def prefetch_tile(tile: list[BlockCoords], grid: BlockGrid, reuse: FactorReuse | None) -> None:
    """Declare a tile's runs of block rows to the source (one product per run and block
    column: :meth:`~infl_array.engine.sources.FactorReuse.begin_tile`) and compute its test
    factors in one call per run (one batched solve)."""
    if reuse is None:
        return
    block_rows, n_test = grid.block_shape[0], grid.shape[0]
    spans = list(row_runs(tile))
    runs = [block_range(first, block_rows, n_test, last) for first, last in spans]
    reuse.begin_tile(runs, block_rows)
    for run, (first, last) in zip(runs, spans, strict=True):
        if last > first:
            reuse.prefetch(rows=run)
