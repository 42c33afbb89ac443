"""The factors of a model-backed block source: memo, store, claims and the influence model.

:class:`FactorCache` serves ``factors(axis, r)``: the test factors (axis ``"test"``), train
factors (``"train"``) or test factors of train points (``"self"``, for the self-influence) of
the samples ``r``.

* Without a factor store, or for a range that is not made of whole factor blocks, or for
  ``"self"``: from the memo (an exact range, or a slice of a memoised range holding it), else
  computed by the influence model (only past a memoised range holding its start) and
  memoised.
* With a factor store (:meth:`FactorCache.attach`), a range of whole blocks of a side goes
  through that side's :class:`~infl_array.engine.keeper.BlockKeeper`, the cache machine every
  stored block goes through: each block from the memo, else from the store, else computed
  (runs of consecutive blocks in one call, so a tile's test factors are one batched solve;
  claimed first once the side is stored, so processes sharing the store compute each block
  once) and written to the store where its side is kept there. A damaged stored block is
  recomputed, never waited for.
* A long range of train factors that is neither memoised nor stored and would take more than
  a quarter of what the memo may hold (the share a tile plans for its train factors,
  :mod:`~infl_array.engine.tiling`) is handed out in pieces of at most :data:`PIECE_BYTES`
  (:meth:`FactorCache.pieces`), each computed, used and dropped: a block's product then holds
  one piece, not the whole range (EK-FAC train factors of sequence layers are whole gradient
  matrices, as many numbers per sample as the model has parameters). Each train factor is then
  computed once per product that needs it: once per tile where the tile's block rows come
  from one strip (:mod:`~infl_array.torch.source.strips`), as when all test rows fit one
  block row.
* With a store whose ``factor_compression`` rounds (``keepbits``), every factor the model
  returns is rounded first (:meth:`FactorCache.compute`), so the memo, the store and every
  product see the same rounded values (:mod:`infl_array.storage.factors`).

The memo is an LRU of tensors drawn from the memory budget
(:class:`~infl_array.torch.source.memo.FactorMemo`) keyed by ``(axis, start, stop)``, kept where
the model returned them (numpy factors become CPU tensors; stored factors are read back to the
model's device). The blocks of a range fetched together are kept joined, in place of the blocks,
so a later request inside the range (a strip of a tile's blocks,
:mod:`~infl_array.torch.source.strips`) is a slice, not a copy. Access is serialised by a
re-entrant lock, so concurrent threads compute each factor once. The memo and the lock are not
pickled: a copy sent to a worker starts empty.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from infl_array.engine.budget import Budget
from infl_array.engine.keeper import BlockKeeper
from infl_array.engine.plan import runs
from infl_array.errors import MemoryBudgetError
from infl_array.storage.factors import SIDES, FactorSide, FactorStore
from infl_array.storage.meta import Compression
from infl_array.torch.data.views import IndexedData
from infl_array.torch.source.adapters import ModelAdapter
from infl_array.torch.source.blame import blamed
from infl_array.torch.source.memo import FactorMemo, MemoKey

__all__ = ["FactorCache"]

STAT_KEYS = ("test_factors", "train_factors", "self_factors", "hits", "factor_reads")

PIECE_BYTES = 128 << 20
"""Bytes of one piece of a range of train factors handed out piece by piece (128 MiB)."""

PIECE_ALIGN = 64
"""Pieces are whole multiples of this many samples where they can be (a usual batch size)."""


def _whole_blocks(side: FactorSide, r: range) -> list[int] | None:
    """The factor blocks ``r`` consists of, or None when it does not cover whole blocks."""
    length, n = side.block_len, side.n
    if len(r) == 0 or r.start % length or (r.stop % length and r.stop != n):
        return None
    return list(range(r.start // length, -(-r.stop // length)))


class _SideMemo:
    """The memo seen by block index for one stored side (a keeper's :class:`Memo`)."""

    def __init__(self, cache: FactorCache, side: FactorSide) -> None:
        self.cache, self.side = cache, side

    def _key(self, b: int) -> MemoKey:
        span = self.side.bounds(b)
        return (self.side.side, span.start, span.stop)

    def get(self, b: int) -> torch.Tensor | None:
        hit = self.cache.memo.get(self._key(b))
        if hit is not None:
            self.cache.stats["hits"] += 1
        return hit

    def put(self, b: int, value: torch.Tensor) -> None:
        self.cache.memo.put(self._key(b), value)


FACTOR_IO = "factor chunks being read or written"
"""What the buffers of stored factor chunks are held as in the memory budget."""


class _HeldShelf:
    """A side's shelf whose reads and writes hold their buffers in the memory budget: a chunk
    being encoded or decoded takes about twice its bytes beside the factors themselves. A block
    the budget has no room to encode is not stored."""

    def __init__(self, side: FactorSide, budget: Budget) -> None:
        self.side, self.budget = side, budget

    @property
    def shared(self) -> bool:
        return self.side.shared

    def listed(self, keys: Sequence[int]) -> set[int]:
        return self.side.listed(keys)

    def read(self, key: int) -> np.ndarray:
        grid = self.side.grid()
        rows, width = (0, 0) if grid is None else (self.side.chunk_rows, grid.shape[1])
        itemsize = 0 if grid is None else grid.dtype.itemsize
        with self.budget.hold(2 * rows * width * itemsize, FACTOR_IO):
            return self.side.read(key)

    def write_many(self, keys: list[int], values: list[np.ndarray]) -> bool:
        """Store blocks where the budget has room to encode them: all in one call when it has
        room for all, else one by one (a block without room is kept in memory only, and
        recomputed when needed again); whether every block was stored."""
        if self._write_held(keys, values):
            return True
        if len(keys) == 1:
            return False
        stored = [self._write_held([k], [v]) for k, v in zip(keys, values, strict=True)]
        return all(stored)

    def _write_held(self, keys: list[int], values: list[np.ndarray]) -> bool:
        nbytes = 2 * sum(v.nbytes for v in values)
        try:
            self.budget.reserve(nbytes, FACTOR_IO)  # the caches give bytes back
        except MemoryBudgetError:
            return False
        try:
            return self.side.write_many(keys, values)
        finally:
            self.budget.release(nbytes, FACTOR_IO)

    def claim(self, key: int) -> bool:
        return self.side.claim(key)

    def release(self, key: int) -> None:
        self.side.release(key)


class FactorCache:
    """Factors of a model's test and train data (see the module docstring).

    Parameters
    ----------
    adapter : ModelAdapter
        The influence model.
    test, train : IndexedData
        The data.
    memory_budget : int
        The memo's own bound in bytes.
    budget : Budget or None
        The memory budget the memo draws from.

    Attributes
    ----------
    stats : dict of str to int
        ``"test_factors"``, ``"train_factors"``, ``"self_factors"``: calls to the model;
        ``"hits"``: requests served by the memo; ``"factor_reads"``: blocks read from the store.
    """

    def __init__(
        self,
        adapter: ModelAdapter,
        test: IndexedData,
        train: IndexedData,
        memory_budget: int,
        budget: Budget | None = None,
    ) -> None:
        self.adapter = adapter
        self.data = {"test": test, "train": train, "self": train}
        self.memory_budget = memory_budget
        self.budget = budget
        self.stats = dict.fromkeys(STAT_KEYS, 0)
        self.store: FactorStore | None = None
        self._itemsize: dict[str, int] = {}  # of the factors each axis returned so far
        self._reset()

    def _reset(self) -> None:
        self.memo = FactorMemo(self.memory_budget, self.budget)
        self._lock = threading.RLock()
        self.attach(self.store)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("memo", "_lock", "_keepers")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    # ------------------------------------------------------------------ the store
    def attach(self, store: FactorStore | None) -> None:
        """Keep factors in ``store`` (one block of samples per chunk), or in memory only."""
        self.store = store
        self._keepers: dict[str, tuple[FactorSide, BlockKeeper[int, torch.Tensor]]] = {}
        if store is not None:
            for axis in SIDES:
                side = store.side(axis)
                self._keepers[axis] = (side, self._keeper(axis, side))

    def _keeper(self, axis: str, side: FactorSide) -> BlockKeeper[int, torch.Tensor]:
        def compute(blocks: list[int]) -> list[torch.Tensor]:
            return self._compute_blocks(axis, side, blocks)

        def count_read() -> None:
            self.stats["factor_reads"] += 1

        return BlockKeeper(
            side if self.budget is None else _HeldShelf(side, self.budget),
            _SideMemo(self, side),
            compute,
            load=lambda a: torch.from_numpy(a).to(self.adapter.device),
            dump=lambda t: t.detach().cpu().numpy(),
            on_read=count_read,
        )

    # ------------------------------------------------------------------ factors
    def factors(self, axis: str, r: range) -> torch.Tensor:
        """The factors of samples ``r`` of ``axis`` (``"test"``, ``"train"`` or ``"self"``)."""
        with self._lock:
            side, keeper = self._keepers.get(axis, (None, None))
            blocks = _whole_blocks(side, r) if side is not None else None
            if keeper is None or blocks is None:
                return self._range(axis, r)
            if len(blocks) > 1:  # joined before: no copy
                hit = self.memo.get((axis, r.start, r.stop))
                if hit is not None:
                    self.stats["hits"] += 1
                    return hit
            pieces = keeper.fetch(blocks)
            if len(pieces) == 1:
                return pieces[0]
            joined = torch.cat(pieces)
            self.memo.join((axis, r.start, r.stop), joined)
            return joined

    def pieces(self, axis: str, r: range) -> Iterator[torch.Tensor]:
        """The factors of samples ``r`` of ``axis``, as consecutive pieces whose rows join to
        :meth:`factors` ``(axis, r)``: that one piece where the range is memoised, stored or
        small, else pieces of at most :data:`PIECE_BYTES` computed one at a time and not kept
        (see the module docstring)."""
        spans = self._piece_spans(axis, r)
        if spans is None:
            yield self.factors(axis, r)
            return
        for span in spans:
            with self._lock:
                piece = self.compute(axis, span)
            yield piece

    def _piece_spans(self, axis: str, r: range) -> list[range] | None:
        """The pieces ``r`` is computed in, or None when it is fetched whole."""
        width = self.adapter.train_factor_width() if axis == "train" else None
        if width is None or len(r) <= 1:
            return None
        with self._lock:
            if self.memo.get((axis, r.start, r.stop)) is not None:
                return None
            side, _ = self._keepers.get(axis, (None, None))
            itemsize = self._itemsize.get(axis, 4)
            if side is not None and _whole_blocks(side, r) and side.is_stored(width, itemsize):
                return None
            room = self.memory_budget
            if self.budget is not None:
                room = min(room, (self.budget.available + self.memo.held_bytes) * 3 // 4)
        row_bytes = width * itemsize
        if len(r) * row_bytes <= room // 4:
            return None
        rows = max(1, min(PIECE_BYTES, room // 4) // row_bytes)
        rows = rows // PIECE_ALIGN * PIECE_ALIGN or rows
        return [range(s, min(s + rows, r.stop)) for s in range(r.start, r.stop, rows)]

    def _range(self, axis: str, r: range) -> torch.Tensor:
        """Factors of exactly ``r`` (or a slice of a memoised range holding it)."""
        key = (axis, r.start, r.stop)
        hit = self.memo.get(key)
        if hit is not None:
            self.stats["hits"] += 1
            return hit
        head = self.memo.find(lambda k: k[0] == axis and k[1] <= r.start < k[2] < r.stop)
        if head is None:
            f = self.compute(axis, r)
        else:  # a memoised range holds the start of ``r`` (a tile's sizing, say): compute the rest
            (_, start, stop), known = head
            f = torch.cat([known[r.start - start :], self.compute(axis, range(stop, r.stop))])
        self.memo.join(key, f)
        return f

    def _compute_blocks(self, axis: str, side: FactorSide, blocks: list[int]) -> list[torch.Tensor]:
        """Factor blocks ``blocks`` (ascending), one model call per run of consecutive ones."""
        pieces = []
        for first, last in runs(blocks):
            span = range(side.bounds(first).start, side.bounds(last).stop)
            f = self.compute(axis, span)
            for b in range(first, last + 1):
                part = side.bounds(b)
                pieces.append(f[part.start - span.start : part.stop - span.start])
        return pieces

    def compute(self, axis: str, r: range) -> torch.Tensor:
        """Ask the influence model for the factors of ``r`` (counted in :attr:`stats`)."""
        model_call = self.adapter.train_factors if axis == "train" else self.adapter.test_factors
        data = self.data[axis]
        name = "test" if axis == "test" else "train"
        kind = "train" if axis == "train" else "test"
        f = blamed(
            lambda rr: model_call(*data.take(rr)), r, name, f"{self.adapter.name}'s {kind} factors"
        )
        self.stats[f"{axis}_factors"] += 1
        if f.shape[0] != len(r):
            raise ValueError(
                f"{self.adapter.name} returned {f.shape[0]} rows of {axis} factors for "
                f"{len(r)} samples; factors need one row per sample."
            )
        self._itemsize[axis] = f.element_size()
        compression = self._compression(axis)
        if compression is not None and compression.keepbits is not None:
            f = _rounded(f, compression, f"{kind} factors of {self.adapter.name}")
        return f

    def _compression(self, axis: str) -> Compression | None:
        """The store's ``factor_compression`` for ``axis`` (``"self"`` pairs with the train
        side), or None without a factor store."""
        if self.store is None:
            return None
        return self.store.side("test" if axis == "test" else "train").compression


def _rounded(f: torch.Tensor, compression: Compression, what: str) -> torch.Tensor:
    """``f`` rounded as the store holds it (``keepbits`` mantissa bits), on ``f``'s device."""
    compression.check_dtype(str(f.dtype).removeprefix("torch."), what)
    values = compression.stored_values(f.detach().cpu().numpy())
    return torch.from_numpy(values).to(f.device)
