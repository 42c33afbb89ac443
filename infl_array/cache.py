"""Decoded blocks kept in memory, and reads assembled from them.

A cached read of a stored block costs one decode of the whole chunk (milliseconds for a
256 x 4096 block), however little of it the read wants. Small reads (a few blocks: an element,
a row of one block row, a small slice), and reads whose blocks are all in memory, are
therefore served from an LRU cache of decoded, read-only blocks bounded by bytes, filled by
those reads and by the blocks this process computes. Other large reads go to zarr directly (its
decoding is parallel and copies once), and do not churn the cache. The cache holds values
exactly as stored (the store's dtype; lossy compression applied), so a read returns the same
numbers whichever path served it.

This module knows numpy only.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from infl_array.plan import BlockCoords

DEFAULT_CACHE_BYTES = 256 << 20
"""Default bound of an array's decoded-block cache (256 MiB)."""

SMALL_READ_BLOCKS = 8
"""Reads touching at most this many blocks are assembled from the cache."""


class BlockCache:
    """LRU cache of decoded blocks, bounded by ``max_bytes`` (0 disables it). Thread-safe."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._blocks: OrderedDict[BlockCoords, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, coords: BlockCoords) -> np.ndarray | None:
        with self._lock:
            block = self._blocks.get(coords)
            if block is not None:
                self._blocks.move_to_end(coords)
            return block

    def __contains__(self, coords: object) -> bool:
        return coords in self._blocks

    def put(self, coords: BlockCoords, block: np.ndarray) -> None:
        if block.nbytes > self.max_bytes:
            return
        block.flags.writeable = False  # shared with every later read: never modified
        with self._lock:
            old = self._blocks.pop(coords, None)
            if old is not None:
                self.nbytes -= old.nbytes
            while self._blocks and self.nbytes + block.nbytes > self.max_bytes:
                _, evicted = self._blocks.popitem(last=False)
                self.nbytes -= evicted.nbytes
            self._blocks[coords] = block
            self.nbytes += block.nbytes

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self.nbytes = 0


def _axis_part(sel: Any, lo: int, hi: int) -> tuple[slice, Any]:
    """Where the selected indices inside ``[lo, hi)`` go in the output, and their local index.

    ``sel`` is a normalised per-axis selection (positive-step slice or sorted unique array).
    Returns ``(output positions, local indices into the block)``; output positions are
    contiguous because the selection is ascending.
    """
    if isinstance(sel, slice):
        start, stop, step = sel.start, sel.stop, sel.step
        k_lo = max(0, -(-(lo - start) // step))
        k_hi = max(k_lo, -(-(min(hi, stop) - start) // step))
        first = start + k_lo * step - lo
        return slice(k_lo, k_hi), slice(first, first + (k_hi - k_lo) * step, step)
    a = int(np.searchsorted(sel, lo)), int(np.searchsorted(sel, hi))
    return slice(*a), sel[a[0] : a[1]] - lo


def assemble_outer(
    rows: Any,
    cols: Any,
    shape: tuple[int, int],
    blocks: list[BlockCoords],
    bounds: Callable[[BlockCoords], tuple[slice, slice]],
    get_block: Callable[[BlockCoords], np.ndarray],
    dtype: np.dtype[Any],
) -> np.ndarray:
    """``full[rows][:, cols]`` assembled from whole blocks (the outer selection's blocks)."""
    out = np.empty(shape, dtype=dtype)
    for coords in blocks:
        row_span, col_span = bounds(coords)
        out_r, loc_r = _axis_part(rows, row_span.start, row_span.stop)
        out_c, loc_c = _axis_part(cols, col_span.start, col_span.stop)
        if out_r.stop > out_r.start and out_c.stop > out_c.start:
            out[out_r, out_c] = get_block(coords)[loc_r][:, loc_c]
    return out


def assemble_points(
    rows: np.ndarray,
    cols: np.ndarray,
    block_shape: tuple[int, int],
    blocks: list[BlockCoords],
    get_block: Callable[[BlockCoords], np.ndarray],
    dtype: np.dtype[Any],
) -> np.ndarray:
    """``full[rows, cols]`` for 1-D point coordinates, assembled from whole blocks."""
    out = np.empty(rows.shape, dtype=dtype)
    bi, bj = rows // block_shape[0], cols // block_shape[1]
    for i, j in blocks:
        mask = (bi == i) & (bj == j)
        block = get_block((i, j))
        out[mask] = block[rows[mask] - i * block_shape[0], cols[mask] - j * block_shape[1]]
    return out
