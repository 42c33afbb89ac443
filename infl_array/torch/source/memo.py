"""An LRU memo of factor tensors, bounded by bytes (the core's :class:`BoundedLru`)."""

from __future__ import annotations

import torch

from infl_array.engine.budget import Budget
from infl_array.engine.cache import BoundedLru

__all__ = ["FactorMemo", "MemoKey"]

MemoKey = tuple[str, int, int]
"""``(axis, start, stop)``: the factors of samples ``start:stop`` of ``axis``."""


class FactorMemo(BoundedLru[MemoKey, torch.Tensor]):
    """LRU memo of factor tensors keyed by ``(axis, start, stop)``, bounded by ``memory_budget``
    and drawn from ``budget`` (the backend's or the array's memory budget) where one is given.

    A range is found in an exact entry or as a slice of an entry covering it; an entry once
    memoised is kept as it is (a second put of its key does nothing).
    """

    def __init__(self, memory_budget: int, budget: Budget | None = None) -> None:
        super().__init__(memory_budget, _tensor_bytes, budget, "the factor memo")

    def get(self, key: MemoKey) -> torch.Tensor | None:
        """The factors for ``key``: an exact entry, or a slice of one covering the range."""
        hit = super().get(key)
        if hit is not None:
            return hit
        axis, start, stop = key
        found = self.find(lambda k: k[0] == axis and k[1] <= start and stop <= k[2])
        if found is None:
            return None
        (_, s, _), t = found
        return t[start - s : stop - s]

    def put(self, key: MemoKey, value: torch.Tensor) -> None:
        if key not in self:
            super().put(key, value)

    def join(self, key: MemoKey, value: torch.Tensor) -> None:
        """Keep ``value`` under ``key`` in place of the entries it covers (their factors are
        slices of it), so later requests inside ``key`` are served without joining again."""
        axis, start, stop = key
        self.discard_where(lambda k: k[0] == axis and start <= k[1] <= k[2] <= stop)
        self.put(key, value)


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.element_size() * t.numel()
