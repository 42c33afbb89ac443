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
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

import numpy as np

from infl_array.engine.budget import Budget
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

    Thread-safe. A value larger than the bound is not kept; putting one evicts the least
    recently used values until it fits. ``hits`` and ``misses`` count lookups (:meth:`get`),
    ``evictions`` the values evicted. The one bounded LRU of the package: decoded blocks
    (:class:`BlockCache`) and the factor memo of a model-backed source
    (:class:`~infl_array.torch.source.memo.FactorMemo`).

    With a ``budget`` (:class:`~infl_array.engine.budget.Budget`), the values are also held in
    it (as ``label``): a value is kept only where the budget has room (older values are evicted
    to make it), and the cache gives values back, least recently used first, when another
    holding of the budget needs the bytes (it is the budget's
    :class:`~infl_array.engine.budget.Elastic` holder). What it holds is given back when the
    cache goes away.

    Parameters
    ----------
    memory_budget : int
        Bytes the values may hold together (the cache's own bound).
    size_of : callable
        ``size_of(value)``: the bytes of one value.
    budget : Budget or None
        The memory budget the values are drawn from, if any.
    label : str
        What the values are held as in ``budget``.
    """

    def __init__(
        self,
        memory_budget: int,
        size_of: Callable[[V], int],
        budget: Budget | None = None,
        label: str = "a cache",
    ) -> None:
        self.memory_budget = memory_budget
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.budget = budget
        self.label = label
        self._held = [0]  # bytes of the values (a list: the finaliser gives them back)
        self._size_of = size_of
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        if budget is not None:
            budget.add_elastic(self)
            weakref.finalize(self, _give_back, budget, label, self._held)

    @property
    def nbytes(self) -> int:
        """Bytes of the values held now."""
        return self._held[0]

    @property
    def held_bytes(self) -> int:
        """Bytes held in the budget (the :class:`~infl_array.engine.budget.Elastic` protocol)."""
        return self._held[0] if self.budget is not None else 0

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
            if key in self._items:
                self._discard(key)
            while self._items and self._held[0] + size > self.memory_budget:
                self._evict_oldest()
            if self.budget is not None:
                while not self.budget.try_reserve(size, self.label):
                    if not self._items:
                        return  # the budget's other holdings leave no room: not kept
                    self._evict_oldest()
            self._items[key] = value
            self._held[0] += size

    def discard_where(self, match: Callable[[K], bool]) -> None:
        """Drop the values whose key ``match`` accepts."""
        with self._lock:
            for key in [k for k in self._items if match(k)]:
                self._discard(key)

    def reclaim(self, nbytes: int) -> int:
        """Evict least recently used values until ``nbytes`` are given back (or none is
        left); returns the bytes given back."""
        with self._lock:
            before = self._held[0]
            while self._items and before - self._held[0] < nbytes:
                self._evict_oldest()
            return before - self._held[0]

    def clear(self) -> None:
        with self._lock:
            for key in list(self._items):
                self._discard(key)

    def _discard(self, key: K) -> None:
        """Drop one value, giving its bytes back (the lock is held)."""
        size = self._size_of(self._items.pop(key))
        self._held[0] -= size
        if self.budget is not None:
            self.budget.release(size, self.label)

    def _evict_oldest(self) -> None:
        self._discard(next(iter(self._items)))
        self.evictions += 1

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items


def _give_back(budget: Budget, label: str, held: list[int]) -> None:
    """What a cache that went away held, given back to its budget."""
    budget.release(held[0], label)
    held[0] = 0


class BlockCache(BoundedLru[BlockCoords, np.ndarray]):
    """LRU cache of decoded, read-only blocks, bounded by ``memory_budget`` (0 disables it)
    and drawn from the array's memory ``budget`` where it has one.

    ``max_bytes`` is the bound's older name (``arr.block_cache.max_bytes``), kept for
    compatibility. ``hits`` and ``misses`` count lookups (:meth:`get`) that found, or did not
    find, a block.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES, budget: Budget | None = None) -> None:
        super().__init__(max_bytes, _nbytes, budget, "the decoded-block cache")

    @property
    def max_bytes(self) -> int:
        """The cache's bound in bytes: :attr:`memory_budget` under its older name (kept for
        compatibility)."""
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
