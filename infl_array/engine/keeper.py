"""One cache machine for stored blocks: memo -> store -> claim -> compute.

Every block the package keeps in a store, a block of the influence matrix or a block of test
or train factors, is obtained by a :class:`BlockKeeper` in the same four steps:

1. **memo**: what this process already holds: the keys known to be stored (:attr:`known`)
   and, where the keeper has a :class:`Memo`, their values;
2. **store**: the block's chunk, through a :class:`Shelf`. A chunk is in one of three states
   (:class:`Presence`): missing, present and valid, or present and damaged (its bytes fail
   their checksum or do not decode). A damaged chunk is never taken for a missing one nor for
   a valid one: it is recomputed (the write replaces it);
3. **claim**: where the shelf is shared by several processes, a block is claimed before it is
   computed (:mod:`infl_array.storage.claims`), so that each is computed once;
4. **compute**: the blocks this process holds, in one call (a run of factor blocks is one
   batched solve), each then written to the shelf and the memo.

Two entry points use these steps: :meth:`BlockKeeper.fetch` returns the values of blocks
(factor blocks: every step), :meth:`BlockKeeper.ensure` makes blocks present (the matrix: its
compute step is the engine's tiled, write-overlapped computation, which claims blocks itself
when a fill shares its work).

Waits
-----
A block claimed by another process is waited for, and every wait has a reason and an end. The
reason is a claim held by a live owner, which refreshes it while it computes. The wait ends
when the block is stored valid (it is read), or when the claim is gone: released without a
valid block, or left by an owner that died (noticed at once on the same machine) or stopped
refreshing it (it expires ``ttl_s`` after the last refresh). Then this process claims the
block and computes it. A damaged chunk is not a reason to wait.

This module knows numpy and the shelves it is given (and the matrix grid of
:mod:`infl_array.storage.grid`, for :class:`GridShelf`), not torch.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Generic, Protocol, TypeVar

import numpy as np

from infl_array.errors import CorruptBlockError
from infl_array.storage.grid import BlockCoords, BlockGrid

__all__ = ["LIST_THRESHOLD", "WAIT_POLL_S", "BlockKeeper", "GridShelf", "Memo", "Presence", "Shelf"]

K = TypeVar("K", bound=Hashable)
K_in = TypeVar("K_in", bound=Hashable, contravariant=True)
V = TypeVar("V")

WAIT_POLL_S = (0.02, 1.0)
"""First and longest pause between looks at a block another process holds."""

LIST_THRESHOLD = 32
"""Above this many unknown blocks one listing of the store is cheaper than one check each."""


class Presence(enum.Enum):
    """The state of a block's chunk in the store."""

    MISSING = "missing"
    VALID = "valid"
    DAMAGED = "damaged"


class Shelf(Protocol[K]):
    """Where a keeper's blocks are stored: one stored array, seen block by block."""

    @property
    def shared(self) -> bool:
        """Whether other processes may compute blocks here too (then blocks are claimed)."""
        ...

    def listed(self, keys: Sequence[K]) -> set[K]:
        """The keys among ``keys`` whose chunk exists (valid or damaged)."""
        ...

    def read(self, key: K) -> np.ndarray:
        """The stored values of ``key``; ``CorruptBlockError`` when its chunk is damaged."""
        ...

    def write_many(self, keys: list[K], values: list[np.ndarray]) -> bool:
        """Store ``values`` as blocks ``keys`` (each with one atomic chunk write; runs of
        consecutive blocks may share a call); whether they were stored."""
        ...

    def claim(self, key: K) -> bool:
        """Claim ``key``; False while another live process holds it."""
        ...

    def release(self, key: K) -> None:
        """Give up the claim on ``key`` (done, or abandoned)."""
        ...


class Memo(Protocol[K_in, V]):
    """Values this process holds (an LRU under a byte budget, say): may forget anything."""

    def get(self, key: K_in) -> V | None: ...

    def put(self, key: K_in, value: V) -> None: ...


class BlockKeeper(Generic[K, V]):
    """memo -> store -> claim -> compute for the blocks of one shelf (see the module docstring).

    Parameters
    ----------
    shelf : Shelf
        Where the blocks are stored.
    memo : Memo or None
        Values held in memory; None: only presence is remembered (:attr:`known`).
    compute : callable or None
        ``compute(keys) -> values``: the values of ``keys``, in one call (for :meth:`fetch`).
        None: nothing here computes, and a damaged block raises its ``CorruptBlockError``.
    load, dump : callable
        Stored numpy values to the memo's values, and back.
    on_read : callable or None
        Called once per block read from the shelf (counting).
    """

    def __init__(
        self,
        shelf: Shelf[K],
        memo: Memo[K, V] | None = None,
        compute: Callable[[list[K]], Sequence[V]] | None = None,
        load: Callable[[np.ndarray], V] = lambda a: a,  # type: ignore[assignment,return-value]
        dump: Callable[[V], np.ndarray] = np.asarray,
        on_read: Callable[[], None] | None = None,
    ) -> None:
        self.shelf, self.memo, self.compute = shelf, memo, compute
        self.load, self.dump, self.on_read = load, dump, on_read
        self.known: set[K] = set()
        """Keys seen stored (a block once stored stays stored)."""
        self.compute_lock = threading.Lock()

    # ------------------------------------------------------------------ presence (the matrix)
    def mark(self, key: K) -> None:
        """Record that ``key`` is stored."""
        self.known.add(key)

    def unknown(self, keys: Iterable[K]) -> list[K]:
        """``keys`` not known to be stored, each once, in order."""
        return [k for k in dict.fromkeys(keys) if k not in self.known]

    def ensure(self, keys: Iterable[K], compute_missing: Callable[[list[K]], int]) -> int:
        """Make every key of ``keys`` stored; returns what ``compute_missing`` computed.

        Keys not known are looked up in the shelf once; ``compute_missing(missing)`` is called
        (under :attr:`compute_lock`, so threads of one process compute a block once) with the
        keys still missing, and must store them (and :meth:`mark` them).
        """
        unknown = self.unknown(keys)
        if not unknown:
            return 0
        self.known |= self.shelf.listed(unknown)
        if not self.unknown(unknown):
            return 0
        with self.compute_lock:
            missing = self.unknown(unknown)
            return compute_missing(missing) if missing else 0

    # ------------------------------------------------------------------ values (factor blocks)
    def fetch(self, keys: Sequence[K]) -> list[V]:
        """The values of ``keys``: from the memo, else the shelf, else computed (claimed first
        where the shelf is shared; blocks another process holds are waited for)."""
        values: dict[K, V] = {}
        for key in keys:
            hit = self.memo.get(key) if self.memo is not None else None
            if hit is not None:
                values[key] = hit
        todo = [k for k in keys if k not in values]
        for key in self.shelf.listed(todo) if todo else ():
            self._read_valid(key, values)
        missing = [k for k in todo if k not in values]
        if missing:
            self._obtain(missing, values)
        return [values[k] for k in keys]

    def _obtain(self, missing: list[K], values: dict[K, V]) -> None:
        """Compute what this process can claim of ``missing``; wait for what others hold."""
        if not self.shelf.shared:  # nobody else stores here (yet): nothing to claim
            self._compute_held(missing, values, claimed=False)
            return
        mine, held = self._claim_all(missing, values)
        self._compute_held(mine, values, claimed=True)
        for key in held:
            self._wait(key, values)

    def look(self, key: K) -> Presence:
        """The state of ``key``'s chunk now (reads and checks it when it exists)."""
        if not self.shelf.listed([key]):
            return Presence.MISSING
        try:
            self.shelf.read(key)
        except CorruptBlockError:
            return Presence.DAMAGED
        return Presence.VALID

    def _read_valid(self, key: K, values: dict[K, V]) -> bool:
        """Read ``key`` into ``values`` when its chunk is valid; False when damaged."""
        try:
            stored = self.shelf.read(key)
        except CorruptBlockError:
            return False  # recomputed below; the write replaces the damaged chunk
        value = self.load(stored)
        values[key] = value
        self.known.add(key)
        if self.memo is not None:
            self.memo.put(key, value)
        if self.on_read is not None:
            self.on_read()
        return True

    def _claim_all(self, missing: list[K], values: dict[K, V]) -> tuple[list[K], list[K]]:
        """Split ``missing`` into the keys this process claimed and those others hold."""
        mine, held = [], []
        for key in missing:
            if not self.shelf.claim(key):
                held.append(key)
            elif self._stored_meanwhile(key, values):
                self.shelf.release(key)
            else:
                mine.append(key)
        return mine, held

    def _stored_meanwhile(self, key: K, values: dict[K, V]) -> bool:
        """Whether a valid chunk of ``key`` appeared since we looked (then it is read)."""
        return bool(self.shelf.listed([key])) and self._read_valid(key, values)

    def _compute_held(self, keys: list[K], values: dict[K, V], claimed: bool) -> None:
        """Compute ``keys`` in one call, store and memoise each, and release their claims
        (``claimed``: this process claimed them)."""
        if not keys:
            return
        try:
            if self.compute is None:
                self._raise_uncomputable(keys[0])
            computed = self.compute(keys)  # type: ignore[misc]
            for key, value in zip(keys, computed, strict=True):
                values[key] = value
                if self.memo is not None:
                    self.memo.put(key, value)
            if self.shelf.write_many(keys, [self.dump(v) for v in computed]):
                self.known.update(keys)
        finally:
            if claimed:
                for key in keys:
                    self.shelf.release(key)

    def _wait(self, key: K, values: dict[K, V]) -> None:
        """Wait for ``key``, which another process holds (see "Waits" in the module docstring)."""
        pause = WAIT_POLL_S[0]
        while True:
            if self.shelf.listed([key]) and self._read_valid(key, values):
                return  # stored by its owner
            if self.shelf.claim(key):  # the claim is gone: take the block over
                if self._stored_meanwhile(key, values):
                    self.shelf.release(key)
                else:
                    self._compute_held([key], values, claimed=True)
                return
            time.sleep(pause)  # a live owner holds it: it stores, releases or expires
            pause = min(2 * pause, WAIT_POLL_S[1])

    def _raise_uncomputable(self, key: K) -> None:
        """No compute step: a damaged chunk raises its ``CorruptBlockError`` (naming the array
        and the block), a missing one ``LookupError``."""
        self.shelf.read(key)
        raise LookupError(f"block {key} of {self.shelf!r} is not stored, and nothing computes it.")


class GridShelf:
    """The blocks of a stored matrix (a :class:`~infl_array.storage.grid.BlockGrid`) as a shelf.

    Presence is looked up with one existence check per block, or, for more than
    :data:`LIST_THRESHOLD` blocks, one listing of each block row they are in (of the whole
    array when they span most rows). Blocks are not claimed here: a fill that shares its work
    claims them in its compute step (:mod:`infl_array.engine.work`).
    """

    shared = False

    def __init__(self, grid: BlockGrid) -> None:
        self.grid = grid

    def __repr__(self) -> str:
        return f"the array {self.grid.name!r} of {self.grid.where}"

    def listed(self, keys: Sequence[BlockCoords]) -> set[BlockCoords]:
        if len(keys) <= LIST_THRESHOLD:
            return self.grid.has_blocks(keys)
        rows = {i for i, _ in keys}
        few = len(rows) <= max(1, self.grid.grid_shape[0] // 2)
        return self.grid.list_computed(rows if few else None)

    def read(self, key: BlockCoords) -> np.ndarray:
        return self.grid.read_block(key)

    def write_many(self, keys: list[BlockCoords], values: list[np.ndarray]) -> bool:
        for key, v in zip(keys, values, strict=True):
            self.grid.write_block(key, v)
        return True

    def claim(self, key: BlockCoords) -> bool:
        return True

    def release(self, key: BlockCoords) -> None:
        """Nothing to release: matrix blocks are claimed by the fill that computes them."""
