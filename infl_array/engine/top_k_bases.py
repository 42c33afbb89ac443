"""Top-k rows after an append: a kept base merged with a scan of the new points only.

When the reduced axis of a top-k array grows (``append_train`` for the best train points of
each test point), the append keeps the rows it had as a base over the first ``n`` points
(:mod:`infl_array.storage.topk_bases`). :func:`scan_rows` computes row blocks of the grown array:
a row block with a base (the one covering the most points, among those holding the whole row
block) scans only the points ``n:`` (:func:`~infl_array.engine.top_k.scan_top_k` with
``start=n``) and merges them with the base; a row block without one scans every point.

Exactness: the base holds the best ``k`` of the first ``n`` entries of each row, by
``(key, index)``, and the scan the best ``k`` of the others, so their merge by ``(key, index)``
(:func:`~infl_array.engine.top_k.merge_best`) is the best ``k`` of the whole row: the
brute-force answer on the grown matrix, ties to the lower index.

This module knows numpy, the engine and the storage, not torch.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from infl_array.engine.block_engine import BlockEngine
from infl_array.engine.top_k import ScanCounts, computes_stored, merge_best, scan_coords, scan_top_k
from infl_array.storage import layout
from infl_array.storage.grid import block_range
from infl_array.storage.topk_bases import find_bases

__all__ = ["scan_rows"]

Rows = tuple[np.ndarray, np.ndarray]


def scan_rows(
    matrix: BlockEngine,
    where: layout.TopKLayout,
    row_blocks: Iterable[int],
    counts: ScanCounts,
) -> dict[int, Rows]:
    """``{b: (values, indices)}`` of the row blocks ``row_blocks`` of the top-k array ``where``
    over ``matrix`` (see the module docstring)."""
    k, axis, largest = where.k, where.axis, where.largest
    blocks = sorted(set(row_blocks))
    kept, start_of = _kept_rows(matrix, where, blocks)
    out: dict[int, Rows] = {}
    for start in sorted(set(start_of.values())):
        group = [b for b in blocks if start_of[b] == start]
        if computes_stored(matrix):
            first = start // matrix.block_shape[axis]
            needed = scan_coords(matrix.grid_shape, axis, group)
            matrix.ensure([c for c in needed if c[axis] >= first])
        scanned = scan_top_k(matrix, k, axis, largest, group, counts, start=start)
        for b in group:
            new = scanned.get(b)  # None: no new point to scan (a base over every point)
            out[b] = kept[b] if new is None else merge_best(kept.get(b), new, k, largest)
    return out


def _kept_rows(
    matrix: BlockEngine, where: layout.TopKLayout, blocks: list[int]
) -> tuple[dict[int, Rows], dict[int, int]]:
    """The base rows of each row block that has some, and where each row block's scan starts."""
    bases = find_bases(matrix.store, where)
    n_rows, per_block = matrix.shape[1 - where.axis], matrix.block_shape[1 - where.axis]
    kept: dict[int, Rows] = {}
    start_of = dict.fromkeys(blocks, 0)
    for b in blocks:
        stop = block_range(b, per_block, n_rows).stop
        for base in bases:
            rows = base.rows(b, stop)
            if rows is not None:
                kept[b], start_of[b] = rows, base.covered
                break
    return kept, start_of
