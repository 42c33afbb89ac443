"""Computing many blocks: tile order, factor reuse, and writes overlapped with the math.

The cost of a model-backed matrix is one inverse-Hessian solve per test point, one gradient
per train point and one matrix product. A block ``(i, j)`` needs the test factors of block row
``i`` and the train factors of block column ``j``; the source memoises both under a byte
budget. Blocks are therefore computed in *tiles*: a group of block rows whose test factors fit
in the budget (less room for two train columns), against every train block column it needs,
column by column::

    for tile in tiles:                      # test factors of a tile: computed once, kept
        for j in columns:                   # train factors of column j: once per tile
            for i in tile: block(i, j)

so each test factor is computed once and each train factor once per tile (once in all when the
budget holds every tile, the common case). Sources without factors (plain block functions) are
computed row-major.

Writing overlaps computing: checked blocks go to a writer thread (compression and the atomic
chunk write release the GIL), with at most a few blocks in flight, so the store never stalls
the math and memory stays bounded. A block counts as computed once its write has finished.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import groupby
from typing import TYPE_CHECKING

import numpy as np

from infl_array.plan import BlockCoords

if TYPE_CHECKING:
    from infl_array.array import InfluenceArray

MAX_WRITES_IN_FLIGHT = 4


def plan_tiles(
    blocks: list[BlockCoords], row_bytes: Callable[[int], int] | None, capacity: int
) -> list[list[BlockCoords]]:
    """``blocks`` cut into tiles, each in column-major order (see the module docstring).

    ``row_bytes(i)`` is the size of block row ``i``'s test factors; a tile holds block rows
    while their total stays within ``capacity`` (at least one row per tile). Without
    ``row_bytes`` there is one tile, row-major.

    Examples
    --------
    >>> plan_tiles([(0, 0), (0, 1), (1, 0), (1, 1)], lambda i: 10, capacity=20)
    [[(0, 0), (1, 0), (0, 1), (1, 1)]]
    >>> plan_tiles([(0, 0), (0, 1), (1, 0), (1, 1)], lambda i: 30, capacity=20)
    [[(0, 0), (0, 1)], [(1, 0), (1, 1)]]
    """
    ordered = sorted(blocks)
    if row_bytes is None or not ordered:
        return [ordered] if ordered else []
    rows = [(i, [j for _, j in group]) for i, group in groupby(ordered, key=lambda c: c[0])]
    tiles: list[list[tuple[int, list[int]]]] = [[]]
    used = 0
    for i, cols in rows:
        size = row_bytes(i)
        if tiles[-1] and used + size > capacity:
            tiles.append([])
            used = 0
        tiles[-1].append((i, cols))
        used += size
    out: list[list[BlockCoords]] = []
    for tile in tiles:
        wanted = {(i, j) for i, cols in tile for j in cols}
        columns = sorted({j for _, cols in tile for j in cols})
        out.append([(i, j) for j in columns for i, _ in tile if (i, j) in wanted])
    return out


def _row_runs(tile: list[BlockCoords]) -> list[tuple[int, int]]:
    """Maximal runs ``(first, last)`` of consecutive block rows in a tile."""
    runs: list[tuple[int, int]] = []
    for i in sorted({i for i, _ in tile}):
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def _prefetch_tile(arr: InfluenceArray, tile: list[BlockCoords]) -> None:
    """Compute a tile's test factors in one call per run of rows (one batched solve)."""
    prefetch = getattr(arr._source, "prefetch", None)
    if prefetch is None:
        return
    n_test, block_rows = arr.shape[0], arr.block_shape[0]
    for first, last in _row_runs(tile):
        if last > first:
            prefetch(rows=range(first * block_rows, min((last + 1) * block_rows, n_test)))


def _tile_sizes(arr: InfluenceArray, first_row: int) -> tuple[Callable[[int], int], int] | None:
    """``(row_bytes, capacity)`` for :func:`plan_tiles` (None: no factors to reuse).

    ``row_bytes(i)`` is the size of block row ``i``'s test factors, from the factor width the
    source reports for the first row. While a tile is computed the memo holds its test factors
    and up to two train columns (the current one and the one it replaces), so the test factors
    of a tile get the budget less two train columns.
    """
    source = arr._source
    measure = getattr(source, "test_factor_bytes", None)
    if measure is None:
        return None
    n_test, (block_rows, block_cols) = arr.shape[0], arr.block_shape

    def rows_of(i: int) -> range:
        return range(i * block_rows, min((i + 1) * block_rows, n_test))

    first = rows_of(first_row)
    per_sample = int(measure(first)) / len(first)
    budget = int(getattr(source, "factor_budget_bytes", 0))
    capacity = budget - 2 * int(per_sample * min(block_cols, arr.shape[1]))
    return (lambda i: int(per_sample * len(rows_of(i)))), capacity


def _tile_by_tile(arr: InfluenceArray, tiles: list[list[BlockCoords]]) -> Iterator[BlockCoords]:
    for tile in tiles:
        if len(tile) > 1:
            _prefetch_tile(arr, tile)
        yield from tile


def compute_blocks(
    arr: InfluenceArray,
    blocks: list[BlockCoords],
    on_done: Callable[[BlockCoords], None] | None = None,
    recheck: bool = False,
    cache_values: bool = True,
) -> int:
    """Compute and store the missing ``blocks``; returns how many this call wrote.

    With ``recheck``, each block's existence is checked again just before computing it (one
    stat), so concurrent fillers of one store skip what another has finished meanwhile. With
    ``cache_values`` (reads), computed blocks also go to the array's decoded-block cache;
    ``fill`` does not read them, so it leaves the cache alone.
    """
    if not blocks:
        return 0
    sizes = _tile_sizes(arr, min(blocks)[0]) if len(blocks) > 1 else None
    tiles = plan_tiles(blocks, *sizes) if sizes else plan_tiles(blocks, None, 0)
    pending: deque[tuple[BlockCoords, Future[None]]] = deque()
    values_of: dict[BlockCoords, np.ndarray] = {}
    written = 0

    def finish_one() -> None:
        nonlocal written
        coords, future = pending.popleft()
        future.result()
        arr._mark_computed(coords)
        values = values_of.pop(coords)
        if cache_values:
            arr._remember_computed(coords, values)
        written += 1
        if on_done is not None:
            on_done(coords)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="infl-array-writer") as writer:
        try:
            for coords in _tile_by_tile(arr, tiles):
                if recheck and arr._store.has_blocks([coords]):
                    arr._mark_computed(coords, by_us=False)
                    if on_done is not None:
                        on_done(coords)
                    continue
                values = values_of[coords] = arr._block_values(coords)
                pending.append((coords, writer.submit(arr._store.write_block, coords, values)))
                while len(pending) >= MAX_WRITES_IN_FLIGHT:
                    finish_one()
            while pending:
                finish_one()
        finally:
            # an error (or an interrupt) stops computing; writes already submitted complete,
            # and every block they wrote is complete in the store
            for coords, future in pending:
                if future.exception() is None:
                    arr._mark_computed(coords)
    return written
