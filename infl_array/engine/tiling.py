"""The tiles a compute runs in, and each tile's test factors in one batched call.

A block source that memoises factors (its ``factor_reuse`` capability,
:mod:`infl_array.engine.sources`) computes each test factor once and each train factor once per
tile when blocks are computed tile by tile. :func:`compute_tiles` cuts blocks into tiles whose
test factors fit what the memo may hold now, its share of the memory budget
(:func:`~infl_array.engine.plan.plan_budget_tiles`), beside two *column groups* of train
factors: consecutive block columns whose train factors are computed in one call and whose
blocks come from one product (:func:`column_group`: about :data:`GROUP_TRAIN_SAMPLES` train
points, so narrow blocks do not cost a gradient pass and a product each). :func:`prefetch_tile`
computes a tile's test factors in one call per run of block rows (one batched solve) and
declares its runs and column groups to the source. Without the capability, blocks are tiled
without a budget and nothing is prefetched.
"""

from __future__ import annotations

from infl_array.engine.plan import col_runs, plan_budget_tiles, row_runs
from infl_array.engine.sources import FactorReuse
from infl_array.storage.grid import BlockCoords, BlockGrid, block_range

__all__ = ["GROUP_TRAIN_SAMPLES", "column_group", "compute_tiles", "prefetch_tile"]


GROUP_TRAIN_SAMPLES = 4096
"""Train points a column group spans at most (fewer where their factors would not fit)."""


def column_group(block_cols: int, n_train: int, point_bytes: float, budget: int) -> int:
    """Block columns per column group: about :data:`GROUP_TRAIN_SAMPLES` train points, while
    two groups' train factors (``point_bytes`` a point) take at most a quarter of ``budget``.

    >>> column_group(100, 10_000, 6156.0, 1 << 30), column_group(4096, 10_000, 6156.0, 1 << 30)
    (40, 1)
    >>> column_group(100, 10_000, 6156.0, 1 << 22), column_group(10, 25, 8.0, 1 << 30)
    (1, 3)
    """
    wanted = max(1, GROUP_TRAIN_SAMPLES // block_cols)
    fits = int(budget // 4 // max(1.0, 2 * point_bytes * block_cols))
    return max(1, min(wanted, fits, -(-n_train // block_cols)))


def compute_tiles(
    blocks: list[BlockCoords], grid: BlockGrid, reuse: FactorReuse | None
) -> tuple[list[list[BlockCoords]], int]:
    """``blocks`` cut into the tiles they are computed in (column-major within a tile), and
    the block columns of a column group (:func:`column_group`; 1 without factor reuse)."""
    shape, block_shape = grid.shape, grid.block_shape
    if reuse is None or len(blocks) <= 1:
        return plan_budget_tiles(blocks, shape, block_shape, None, 0), 1
    rows, cols = grid.block_bounds(min(blocks))
    first, first_cols = range(rows.start, rows.stop), range(cols.start, cols.stop)
    row_bytes = reuse.test_factor_bytes(first, first_cols) / len(first)
    budget = reuse.memo_room()
    group = column_group(block_shape[1], shape[1], row_bytes, budget)
    tiles = plan_budget_tiles(blocks, shape, block_shape, row_bytes, budget, group)
    return tiles, group


def prefetch_tile(
    tile: list[BlockCoords],
    grid: BlockGrid,
    reuse: FactorReuse | None,
    group: int = 1,
    blocks_kept: bool = True,
) -> None:
    """Declare a tile's runs of block rows and, for a tile of one run, its column groups of
    ``group`` block columns to the source (one product per run and group:
    :meth:`~infl_array.engine.sources.FactorReuse.begin_tile`; ``blocks_kept`` false: its
    blocks are only written), and compute its test factors in one call per run (one batched
    solve)."""
    if reuse is None:
        return
    (block_rows, block_cols), (n_test, n_train) = grid.block_shape, grid.shape
    spans = list(row_runs(tile))
    runs = [block_range(first, block_rows, n_test, last) for first, last in spans]
    groups: list[list[range]] = []
    if len(spans) == 1 and group > 1:  # several runs would each redo a group's product
        for first, last in col_runs(tile):
            columns = [block_range(j, block_cols, n_train) for j in range(first, last + 1)]
            groups += [columns[k : k + group] for k in range(0, len(columns), group)]
    reuse.begin_tile(runs, block_rows, groups, blocks_kept)
    for run, (first, last) in zip(runs, spans, strict=True):
        if last > first:
            reuse.prefetch(rows=run)
