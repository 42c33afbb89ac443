"""An LRU memo of factor tensors, bounded by bytes."""

from __future__ import annotations

from collections import OrderedDict

import torch

__all__ = ["FactorMemo", "MemoKey"]

MemoKey = tuple[str, int, int]
"""``(axis, start, stop)``: the factors of samples ``start:stop`` of ``axis``."""


class FactorMemo:
    """LRU memo of factor tensors keyed by ``(axis, start, stop)``, bounded by bytes."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.nbytes = 0
        self._entries: OrderedDict[MemoKey, torch.Tensor] = OrderedDict()
        self.evictions = 0

    def get(self, key: MemoKey) -> torch.Tensor | None:
        """The factors for ``key``: an exact entry, or a slice of one covering the range."""
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
            return hit
        axis, start, stop = key
        for (ax, s, e), t in self._entries.items():
            if ax == axis and s <= start and stop <= e:
                self._entries.move_to_end((ax, s, e))
                return t[start - s : stop - s]
        return None

    def put(self, key: MemoKey, value: torch.Tensor) -> None:
        size = value.element_size() * value.numel()
        if size > self.budget_bytes or key in self._entries:
            return
        while self._entries and self.nbytes + size > self.budget_bytes:
            _, old = self._entries.popitem(last=False)
            self.nbytes -= old.element_size() * old.numel()
            self.evictions += 1
        self._entries[key] = value
        self.nbytes += size

    def join(self, key: MemoKey, value: torch.Tensor) -> None:
        """Keep ``value`` under ``key`` in place of the entries it covers (their factors are
        slices of it), so later requests inside ``key`` are served without joining again."""
        axis, start, stop = key
        for covered in [k for k in self._entries if k[0] == axis and start <= k[1] <= k[2] <= stop]:
            old = self._entries.pop(covered)
            self.nbytes -= old.element_size() * old.numel()
        self.put(key, value)

    def __len__(self) -> int:
        return len(self._entries)
