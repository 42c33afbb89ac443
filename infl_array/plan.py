"""Block planning: which blocks a normalised selection touches.

Only numpy is known here. A per-axis selection is either a positive-step slice inside the
axis or a sorted, unique 1-D int64 array (see :mod:`infl_array.indexing`). The blocks touched on
an axis are exactly the blocks that hold at least one selected index, so a read computes no
block it does not need. Work is O(number of touched blocks) for step-1 slices and
O(len(selection)) otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BlockCoords = tuple[int, int]


def axis_blocks(sel: Any, block_len: int) -> np.ndarray:
    """Sorted block indices holding the selected indices of one axis.

    Examples
    --------
    >>> axis_blocks(slice(5, 25, 1), 10).tolist()
    [0, 1, 2]
    >>> axis_blocks(slice(0, 100, 30), 10).tolist()
    [0, 3, 6, 9]
    >>> axis_blocks(np.array([3, 4, 57]), 10).tolist()
    [0, 5]
    """
    if isinstance(sel, slice):
        start, stop, step = sel.start, sel.stop, sel.step or 1
        if stop <= start:
            return np.empty(0, dtype=np.int64)
        last = start + ((stop - 1 - start) // step) * step
        if step <= block_len:
            return np.arange(start // block_len, last // block_len + 1, dtype=np.int64)
        return np.unique(np.arange(start, last + 1, step, dtype=np.int64) // block_len)
    return np.unique(np.asarray(sel, dtype=np.int64) // block_len)


def outer_blocks(rows: Any, cols: Any, block_shape: tuple[int, int]) -> list[BlockCoords]:
    """Blocks touched by the outer selection ``rows x cols``, in row-major order."""
    bi = axis_blocks(rows, block_shape[0]).tolist()
    bj = axis_blocks(cols, block_shape[1]).tolist()
    return [(i, j) for i in bi for j in bj]


def point_blocks(
    rows: np.ndarray, cols: np.ndarray, block_shape: tuple[int, int]
) -> list[BlockCoords]:
    """Blocks holding at least one of the points ``(rows[k], cols[k])``, in row-major order."""
    if rows.size == 0:
        return []
    pairs = np.unique(np.stack([rows // block_shape[0], cols // block_shape[1]], axis=1), axis=0)
    return [(int(i), int(j)) for i, j in pairs]
