"""Per-sample factors kept in the store, once per block, beside the matrix they produce.

A model-backed block ``(i, j)`` is the product of the test factors of test block ``i`` and the
train factors of train block ``j``. A :class:`FactorStore` keeps those factors in the store's
group ``"factors"``: array ``"test"`` of shape ``(n_test, width)`` with one chunk per test
block, array ``"train"`` of shape ``(n_train, width)`` with one chunk per train block. Like the
matrix, a factor block is present exactly when its chunk exists, is written with one atomic
chunk write, and carries a checksum.

Factors are stored lossless by default. ``create(..., factor_compression=ia.Compression(
keepbits=...))`` (recorded in the store's metadata, :attr:`FactorSide.compression`) stores them
lossily: every factor value is rounded to ``keepbits`` mantissa bits (relative error at most
``2 ** -(keepbits + 1)``, as the matrix's ``keepbits``) *before* it is used, by whoever computes
it (:mod:`infl_array.torch.source.factor_cache`). That is the one place factors are rounded: the
array's codec stores the rounded values as they come (blosc, no rounding filter; rounding twice
cost ~0.1 s per 33 MB block and changed nothing). So a block computed from stored factors still
equals a block computed from fresh ones, in any process, and the matrix is the product of the
rounded factors. Every write goes through the factor cache's keeper, after the rounding.

Each side is one :class:`FactorSide`: the array of one side of one store, with its claims. It
is the store step of the cache machine (a :class:`~infl_array.engine.keeper.Shelf`): it tells
a missing chunk (no chunk), a valid one (it reads) and a damaged one (``CorruptBlockError``)
apart, so a damaged chunk is recomputed, never waited for. A :class:`FactorStore` holds one
side object per side; the sides of a store made by :meth:`~infl_array.InfluenceArray.with_test`
are its own test side and the train side of the array it came from (``train_from``): the
sharing is in which object serves the side, not in code that asks which side it is.

Which sides are stored
----------------------
A side is stored when its whole array fits ``disk_budget`` (``n * width * itemsize``; each side
on its own), one chunk (``min(block_len, n)`` rows) stays under the codec limit
(:data:`~infl_array.storage.meta.MAX_CHUNK_BYTES`: a wider side is kept in memory per tile,
never written as a chunk blosc refuses) and, for a local store, half the free disk space; a side
whose array already exists is always used. The decision depends only on sizes, so every process
filling the store decides alike. Stored factors are what lets workers on other processes or
machines compute each factor once per fill (one process computes a factor block, all others read
it), a resumed fill skip the factors it already has, and a new test set reuse the train side.
Processes computing a stored side claim its blocks first (:mod:`infl_array.storage.claims`): a block
another live process is computing is waited for and read, not computed again.

This module knows numpy and zarr (through :mod:`infl_array.storage.store`), not torch.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from infl_array.errors import CorruptBlockError
from infl_array.storage import layout
from infl_array.storage.claims import ClaimBook
from infl_array.storage.grid import WRITE_RUN_BYTES, BlockGrid, block_range
from infl_array.storage.meta import MAX_CHUNK_BYTES, Compression
from infl_array.storage.segments import check_not_grown
from infl_array.storage.store import InfluenceStore

__all__ = ["DEFAULT_FACTOR_DISK_BUDGET", "SIDES", "FactorSide", "FactorStore"]

SIDES = layout.FACTOR_SIDES
DEFAULT_FACTOR_DISK_BUDGET = 8 << 30
"""Default bytes one side's stored factors may take (8 GiB)."""


def _check_budget(disk_budget: object) -> int:
    if isinstance(disk_budget, bool) or not isinstance(disk_budget, int | np.integer):
        raise TypeError(
            f"factor_disk_budget_bytes must be an int (bytes); got {disk_budget!r}. "
            "Pass e.g. 8 << 30 (8 GiB), or 0 to store no factors."
        )
    if disk_budget < 0:
        raise ValueError(
            f"factor_disk_budget_bytes must be >= 0; got {disk_budget}. Pass 0 to store no factors."
        )
    return int(disk_budget)


class FactorSide:
    """The stored factors of one side of one store: a shelf of factor blocks.

    Parameters
    ----------
    store : InfluenceStore
        The open store the side's array lives in.
    side : str
        ``"test"`` or ``"train"``.
    disk_budget : int
        Most bytes the side's array may take; 0 stores nothing (an existing array is read).
    """

    def __init__(self, store: InfluenceStore, side: str, disk_budget: int) -> None:
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}.")
        self.store = store
        self.side = side
        self.disk_budget = disk_budget
        self._grid: BlockGrid | None = None
        self._lock = threading.Lock()
        self._claims: ClaimBook | None = None

    def __repr__(self) -> str:
        return f"the {self.side} factors of {self.store.where}"

    # ------------------------------------------------------------------ geometry
    @property
    def block_len(self) -> int:
        """Samples per factor block: the matrix's block rows (test) or columns (train)."""
        return self.store.meta.block_shape[SIDES.index(self.side)]

    @property
    def chunk_rows(self) -> int:
        """Rows of one stored chunk: a block's, or all samples when there are fewer."""
        return min(self.block_len, self.n)

    @property
    def n(self) -> int:
        """Number of samples on this side."""
        return self.store.meta.shape[SIDES.index(self.side)]

    def bounds(self, b: int) -> range:
        """The samples of factor block ``b``."""
        return block_range(b, self.block_len, self.n)

    @property
    def compression(self) -> Compression | None:
        """How this side's factors are rounded and stored (the store's ``factor_compression``;
        None: lossless)."""
        return self.store.meta.factor_compression

    # ------------------------------------------------------------------ which blocks
    def grid(self) -> BlockGrid | None:
        """The side's array, or None before its first block is stored."""
        if self._grid is None:
            self._grid = self.store.side_grid(layout.factors(self.side).path)
        return self._grid

    def is_stored(self, width: int, itemsize: int) -> bool:
        """Whether factors of ``width`` values of ``itemsize`` bytes each are kept here."""
        if self.grid() is not None:
            return True
        if self.store.read_only:
            return False
        need = self.n * width * itemsize
        chunk = self.chunk_rows * width * itemsize
        return (
            need <= self.disk_budget and chunk <= MAX_CHUNK_BYTES and need <= self._free_disk() // 2
        )

    def _free_disk(self) -> int:
        root = self.store.local_root
        if root is None:
            return 1 << 62  # remote stores: the budget alone decides
        try:
            return shutil.disk_usage(root).free
        except OSError:
            return 0

    @property
    def shared(self) -> bool:
        """Whether the side's array exists and is writable: then processes claim its blocks
        before computing (a read-only store's missing blocks are computed in memory only)."""
        return not self.store.read_only and self.grid() is not None

    def present(self) -> set[int]:
        """Factor blocks whose chunk exists (one listing)."""
        grid = self.grid()
        return set() if grid is None else {i for i, _ in grid.list_computed()}

    def listed(self, blocks: Sequence[int]) -> set[int]:
        """The blocks among ``blocks`` whose chunk exists (valid or damaged)."""
        grid = self.grid()
        return set() if grid is None else {i for i, _ in grid.has_blocks([(b, 0) for b in blocks])}

    # ------------------------------------------------------------------ blocks
    def read(self, b: int) -> np.ndarray:
        """Factor block ``b``; ``CorruptBlockError`` (naming the array and block) if damaged."""
        grid = self.grid()
        if grid is None:
            raise LookupError(f"no {self.side} factors are stored in {self.store.where} yet.")
        try:
            return grid.read_block((b, 0))
        except CorruptBlockError as exc:
            raise CorruptBlockError(
                (b, 0),
                f"factor block {b} of the array {grid.name!r} of {self.store.where} is damaged: "
                f"its stored bytes fail their checksum or do not decode ({exc.__cause__!r}). "
                "A read or fill with the model recomputes it and replaces the chunk.",
            ) from exc

    def get(self, b: int) -> np.ndarray | None:
        """Factor block ``b`` when it is stored and valid, else None."""
        if not self.listed([b]):
            return None
        try:
            return self.read(b)
        except CorruptBlockError:
            return None

    def write(self, b: int, values: np.ndarray) -> bool:
        """Store factor block ``b`` if this side is stored; returns whether it was."""
        return self.write_many([b], [values])

    def write_many(self, blocks: list[int], values: list[np.ndarray]) -> bool:
        """Store factor blocks ``blocks`` (their ``values``) if this side is stored; returns
        whether they were. Runs of consecutive blocks are written with one zarr call each
        (:meth:`~infl_array.storage.grid.BlockGrid.write_run`, at most
        :data:`WRITE_RUN_BYTES` a call), every chunk atomically."""
        if not blocks:
            return True
        if self.store.read_only:
            return False
        grid = self._grid_for(values[0])
        if grid is None:
            return False
        run: list[int] = []
        parts: list[np.ndarray] = []
        for b, v in zip(blocks, values, strict=True):
            if run and (b != run[-1] + 1 or sum(p.nbytes for p in parts) >= WRITE_RUN_BYTES):
                grid.write_run([(i, 0) for i in run], parts)
                run, parts = [], []
            run.append(b)
            parts.append(np.ascontiguousarray(v))
        grid.write_run([(i, 0) for i in run], parts)
        return True

    def _grid_for(self, values: np.ndarray) -> BlockGrid | None:
        """The side's array for blocks like ``values`` (created on first use), or None when
        the side is not stored; ``ValueError`` when the stored array is another model's."""
        width, itemsize = values.shape[1], values.dtype.itemsize
        if not self.is_stored(width, itemsize):
            return None
        with self._lock:
            grid = self.grid()
            if grid is None:
                grid = self.store.create_factor_grid(
                    self.side, self.n, self.chunk_rows, width, values.dtype
                )
                self._grid = grid
        if grid.shape[0] != self.n:  # the store grew since this handle opened it
            held, what = {self.side: self.n}, f"{grid.name} computed here"
            check_not_grown(grid.zarr_store, self.store.where, held, what)
        if grid.shape[1] != width or grid.dtype != values.dtype:
            raise ValueError(
                f"the stored {self.side} factors of {self.store.where} have width "
                f"{grid.shape[1]} and dtype {grid.dtype}, but the influence model now gives "
                f"width {width} and dtype {values.dtype}; the store belongs to another model. "
                "Recreate it with overwrite=True."
            )
        return grid

    # ------------------------------------------------------------------ sharing with processes
    def claim(self, b: int) -> bool:
        """Claim factor block ``b`` (see :mod:`infl_array.storage.claims`); False while another live
        process holds it. Whether it is stored meanwhile is the caller's to look at."""
        if self._claims is None:
            self._claims = ClaimBook(self.store.matrix.zarr_store, layout.MATRIX.claims_prefix)
        return self._claims.try_claim(self._claim_name(b))

    def release(self, b: int) -> None:
        """Release the claim on factor block ``b``."""
        if self._claims is not None:
            self._claims.release(self._claim_name(b))

    def _claim_name(self, b: int) -> str:
        return layout.factor_claim(self.side, b)

    def stored_bytes(self) -> int:
        """Bytes the side's stored factors take (local stores; 0 where unknown)."""
        grid = self.grid()
        return 0 if grid is None else grid.stored_bytes()

    def close(self) -> None:
        """Release the claims this process holds."""
        if self._claims is not None:
            self._claims.close()

    # ------------------------------------------------------------------ pickling (workers)
    def __getstate__(self) -> dict[str, Any]:
        return {
            "spec": self.store.spec,
            "storage_options": self.store.storage_options,
            "side": self.side,
            "disk_budget": self.disk_budget,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        store = InfluenceStore.open(state["spec"], storage_options=state["storage_options"])
        self.__init__(store, state["side"], state["disk_budget"])  # type: ignore[misc]


class FactorStore:
    """The factor sides of a store (see the module docstring).

    Parameters
    ----------
    store : InfluenceStore
        The open store.
    disk_budget : int
        Most bytes one side's factor array may take; 0 stores none (existing arrays are still
        read).
    train_from : FactorStore or None
        Another store's factors whose train side serves this store (``with_test``: both arrays
        have the same train data and train block length); None: this store's own.
    """

    def __init__(
        self,
        store: InfluenceStore,
        disk_budget: int = DEFAULT_FACTOR_DISK_BUDGET,
        train_from: FactorStore | None = None,
    ) -> None:
        self.store = store
        self.disk_budget = _check_budget(disk_budget)
        self.train_from = train_from
        train = train_from.sides["train"] if train_from is not None else None
        self.sides: dict[str, FactorSide] = {
            "test": FactorSide(store, "test", self.disk_budget),
            "train": train or FactorSide(store, "train", self.disk_budget),
        }

    def side(self, side: str) -> FactorSide:
        """The object serving ``side`` ("test" or "train")."""
        try:
            return self.sides[side]
        except KeyError:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}.") from None

    # ------------------------------------------------------------------ per side
    def block_len(self, side: str) -> int:
        """Samples per factor block of ``side``."""
        return self.side(side).block_len

    def n(self, side: str) -> int:
        """Number of samples on ``side``."""
        return self.side(side).n

    def bounds(self, side: str, b: int) -> range:
        """The samples of factor block ``b`` of ``side``."""
        return self.side(side).bounds(b)

    def exists(self, side: str) -> bool:
        """Whether factors of ``side`` are kept in the store (its array exists)."""
        return self.side(side).shared

    def present(self, side: str) -> set[int]:
        """Factor blocks of ``side`` in the store (one listing)."""
        return self.side(side).present()

    def is_stored(self, side: str, width: int, itemsize: int) -> bool:
        """Whether factors of ``side`` (``width`` values of ``itemsize`` bytes) are kept."""
        return self.side(side).is_stored(width, itemsize)

    def get(self, side: str, b: int) -> np.ndarray | None:
        """Factor block ``b`` of ``side`` when stored and valid, else None."""
        return self.side(side).get(b)

    def put(self, side: str, b: int, values: np.ndarray) -> bool:
        """Store factor block ``b`` of ``side`` if that side is stored; returns whether it was."""
        return self.side(side).write(b, values)

    # ------------------------------------------------------------------ the store as a whole
    def stored_bytes(self) -> int:
        """Bytes of this store's own factors (a shared train side is counted where it is)."""
        return sum(s.stored_bytes() for s in self.sides.values() if s.store is self.store)

    def close(self) -> None:
        """Release the claims this process holds, on every side."""
        for s in self.sides.values():
            s.close()

    def __getstate__(self) -> dict[str, Any]:
        return {
            "spec": self.store.spec,
            "storage_options": self.store.storage_options,
            "disk_budget": self.disk_budget,
            "train_from": self.train_from,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        store = InfluenceStore.open(state["spec"], storage_options=state["storage_options"])
        self.__init__(store, state["disk_budget"], state["train_from"])  # type: ignore[misc]
