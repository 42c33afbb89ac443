"""Decoded blocks kept in memory, and reads assembled from them.

A cached read of a stored block costs one decode of the whole chunk (milliseconds for a
256 x 4096 block), however little of it the read wants. Small reads (a few blocks: an element,
a row of one block row, a small slice), and reads whose blocks are all in memory, are
therefore served from an LRU cache of decoded, read-only blocks bounded by bytes (a
:class:`BoundedLru`, the package's one bounded LRU), filled by
those reads and by the blocks this process computes. Other large reads go to zarr directly (its
decoding is parallel and copies once), and do not churn the cache. The cache holds values
exactly as stored (the store's dtype; lossy compression applied), so a read returns the same
numbers whichever path served it.

This module knows numpy only.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

import numpy as np

from infl_array.engine.plan import ReadPlan
from infl_array.storage.grid import BlockCoords

__all__ = ["BlockCache", "BoundedLru", "SMALL_READ_BLOCKS", "assemble"]

DEFAULT_CACHE_BYTES = 256 << 20
"""Default bound of an array's decoded-block cache (256 MiB)."""

SMALL_READ_BLOCKS = 8
"""Reads touching at most this many blocks are assembled from the cache."""


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedLru(Generic[K, V]):
    """LRU mapping bounded by the bytes of its values, ``memory_budget`` (0 keeps nothing).

    Thread-safe. A value larger than the budget is not kept; putting one evicts the least
    recently used values until it fits. ``hits`` and ``misses`` count lookups (:meth:`get`),
    ``evictions`` the values evicted. The one bounded LRU of the package: decoded blocks
    (:class:`BlockCache`) and the factor memo of a model-backed source
    (:class:`~infl_array.torch.source.memo.FactorMemo`).

    Parameters
    ----------
    memory_budget : int
        Bytes the values may hold together.
    size_of : callable
        ``size_of(value)``: the bytes of one value.
    """

    def __init__(self, memory_budget: int, size_of: Callable[[V], int]) -> None:
        self.memory_budget = memory_budget
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._size_of = size_of
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The value of ``key`` (now the most recently used), or None."""
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
                self._items.move_to_end(key)
            return value

    def find(self, match: Callable[[K], bool]) -> tuple[K, V] | None:
        """The first item whose key ``match`` accepts (now the most recently used), or None."""
        with self._lock:
            for key, value in self._items.items():
                if match(key):
                    self._items.move_to_end(key)
                    return key, value
            return None

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` under ``key`` (replacing any value there), evicting as needed."""
        size = self._size_of(value)
        if size > self.memory_budget:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= self._size_of(old)
            while self._items and self.nbytes + size > self.memory_budget:
                _, evicted = self._items.popitem(last=False)
                self.nbytes -= self._size_of(evicted)
                self.evictions += 1
            self._items[key] = value
            self.nbytes += size

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items


class BlockCache(BoundedLru[BlockCoords, np.ndarray]):
    """LRU cache of decoded, read-only blocks, bounded by ``max_bytes`` (0 disables it).

    ``hits`` and ``misses`` count lookups (:meth:`get`) that found, or did not find, a block.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        super().__init__(max_bytes, _nbytes)

    @property
    def max_bytes(self) -> int:
        """The cache's bound in bytes (``arr.block_cache.max_bytes``; its ``memory_budget``)."""
        return self.memory_budget

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        self.memory_budget = value

    def put(self, key: BlockCoords, value: np.ndarray) -> None:
        """Keep a decoded block; it is made read-only (every later read shares it)."""
        if value.nbytes <= self.memory_budget:
            value.flags.writeable = False
        super().put(key, value)


def _nbytes(block: np.ndarray) -> int:
    return int(block.nbytes)


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
