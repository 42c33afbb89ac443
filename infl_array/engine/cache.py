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

from infl_array.engine.plan import BlockCoords, ReadPlan

__all__ = ["BlockCache", "SMALL_READ_BLOCKS", "assemble"]

DEFAULT_CACHE_BYTES = 256 << 20
"""Default bound of an array's decoded-block cache (256 MiB)."""

SMALL_READ_BLOCKS = 8
"""Reads touching at most this many blocks are assembled from the cache."""


class BlockCache:
    """LRU cache of decoded blocks, bounded by ``max_bytes`` (0 disables it). Thread-safe.

    ``hits`` and ``misses`` count lookups (:meth:`get`) that found, or did not find, a block.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._blocks: OrderedDict[BlockCoords, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, coords: BlockCoords) -> np.ndarray | None:
        with self._lock:
            block = self._blocks.get(coords)
            if block is None:
                self.misses += 1
            else:
                self.hits += 1
                self._blocks.move_to_end(coords)
            return block

    def __len__(self) -> int:
        return len(self._blocks)

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


def assemble(plan: ReadPlan, get_block: Callable[[BlockCoords], np.ndarray], dtype: Any) -> Any:
    """The result of a read, assembled from whole decoded blocks along its plan."""
    out = np.empty(plan.out_shape, dtype=dtype)
    for p in plan.projections:
        block = get_block(p.coords)
        rows, cols = p.block_sel
        if len(p.out_sel) == 1:  # points
            out[p.out_sel[0]] = block[rows, cols]
        elif p.is_whole:
            out[p.out_sel] = block
        else:
            out[p.out_sel] = block[rows][:, cols]
    return out
