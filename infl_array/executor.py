"""Computing many blocks: tile order, factor reuse, and writes overlapped with the math.

The cost of a model-backed matrix is one inverse-Hessian solve per test point, one gradient
per train point and one matrix product. A block ``(i, j)`` needs the test factors of block row
``i`` and the train factors of block column ``j``; the source memoises both under a byte
budget. Blocks are therefore computed in *tiles*: a group of block rows whose test factors fit
in half the budget, against every train block column it needs, column by column::

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
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import groupby
from typing import TYPE_CHECKING

from infl_array.plan import BlockCoords

if TYPE_CHECKING:
    from infl_array.array import InfluenceArray

MAX_WRITES_IN_FLIGHT = 4


def tile_order(
    blocks: list[BlockCoords], row_bytes: Callable[[int], int] | None, budget: int
) -> list[BlockCoords]:
    """``blocks`` in tile order (see the module docstring); row-major without ``row_bytes``.

    ``row_bytes(i)`` is the size of block row ``i``'s test factors; a tile holds block rows
    while their total stays within ``budget // 2`` (at least one row per tile).

    Examples
    --------
    >>> tile_order([(0, 0), (0, 1), (1, 0), (1, 1)], lambda i: 10, budget=40)
    [(0, 0), (1, 0), (0, 1), (1, 1)]
    >>> tile_order([(0, 0), (0, 1), (1, 0), (1, 1)], lambda i: 30, budget=40)
    [(0, 0), (0, 1), (1, 0), (1, 1)]
    """
    ordered = sorted(blocks)
    if row_bytes is None or not ordered:
        return ordered
    rows = [(i, [j for _, j in group]) for i, group in groupby(ordered, key=lambda c: c[0])]
    tiles: list[list[tuple[int, list[int]]]] = [[]]
    used = 0
    for i, cols in rows:
        size = row_bytes(i)
        if tiles[-1] and used + size > budget // 2:
            tiles.append([])
            used = 0
        tiles[-1].append((i, cols))
        used += size
    out: list[BlockCoords] = []
    for tile in tiles:
        wanted = {(i, j) for i, cols in tile for j in cols}
        for j in sorted({j for _, cols in tile for j in cols}):
            out.extend((i, j) for i, _ in tile if (i, j) in wanted)
    return out


def _row_bytes(arr: InfluenceArray, first_row: int) -> Callable[[int], int] | None:
    """Bytes of a block row's test factors (None: the source has no factors to reuse).

    Measured once, on ``first_row`` (whose factors the first tile needs anyway, so they stay
    memoised), and scaled by the number of test points of each block row.
    """
    measure = getattr(arr._source, "test_factor_bytes", None)
    if measure is None:
        return None
    n_test, block_rows = arr.shape[0], arr.block_shape[0]

    def rows_of(i: int) -> range:
        return range(i * block_rows, min((i + 1) * block_rows, n_test))

    first = rows_of(first_row)
    per_sample = int(measure(first)) / len(first)
    return lambda i: int(per_sample * len(rows_of(i)))


def compute_blocks(
    arr: InfluenceArray,
    blocks: list[BlockCoords],
    on_done: Callable[[BlockCoords], None] | None = None,
    recheck: bool = False,
) -> int:
    """Compute and store the missing ``blocks``; returns how many this call wrote.

    With ``recheck``, each block's existence is checked again just before computing it (one
    stat), so concurrent fillers of one store skip what another has finished meanwhile.
    """
    if not blocks:
        return 0
    budget = int(getattr(arr._source, "factor_budget_bytes", 0))
    row_bytes = _row_bytes(arr, min(blocks)[0]) if len(blocks) > 1 else None
    order = tile_order(blocks, row_bytes, budget)
    pending: deque[tuple[BlockCoords, Future[None]]] = deque()
    written = 0

    def finish_one() -> None:
        nonlocal written
        coords, future = pending.popleft()
        future.result()
        arr._mark_computed(coords)
        written += 1
        if on_done is not None:
            on_done(coords)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="infl-array-writer") as writer:
        try:
            for coords in order:
                if recheck and arr._store.has_blocks([coords]):
                    arr._mark_computed(coords, by_us=False)
                    if on_done is not None:
                        on_done(coords)
                    continue
                values = arr._block_values(coords)
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
