"""Per-sample factors kept in the store, once per block, beside the matrix they produce.

A model-backed block ``(i, j)`` is the product of the test factors of test block ``i`` and the
train factors of train block ``j``. A :class:`FactorStore` keeps those factors in the store's
group ``"factors"``: array ``"test"`` of shape ``(n_test, width)`` with one chunk per test
block, array ``"train"`` of shape ``(n_train, width)`` with one chunk per train block. Like the
matrix, a factor block is present exactly when its chunk exists, is written with one atomic
chunk write, and carries a checksum; it is stored lossless, so a block computed from stored
factors equals a block computed from fresh ones. Keys and paths: :mod:`infl_array.storage.layout`.

Which sides are stored
----------------------
A side is stored when its whole array fits ``budget_bytes`` (``n * width * itemsize``; each
side on its own) and, for a local store, half the free disk space; a side whose array already
exists is always used. The decision depends only on sizes, so every process filling the store
decides alike. Stored factors are what lets workers on other processes or machines compute
each factor once per fill (one process computes a factor block, all others read it), a
resumed fill skip the factors it already has, and a new test set reuse the train side.
Processes computing a stored side claim its blocks first (:mod:`infl_array.storage.claims`): a block
another live process is computing is waited for and read, not computed again.

This module knows numpy and zarr (through :mod:`infl_array.storage.store`), not torch.
"""

from __future__ import annotations

import shutil
import threading
import time
from typing import Any

import numpy as np

from infl_array.errors import CorruptBlockError
from infl_array.storage import layout
from infl_array.storage.claims import ClaimBook
from infl_array.storage.grid import BlockGrid
from infl_array.storage.store import InfluenceStore

SIDES = layout.FACTOR_SIDES
DEFAULT_FACTOR_DISK_BUDGET = 8 << 30
"""Default bytes one side's stored factors may take (8 GiB)."""


class FactorStore:
    """The factor arrays of a store (see the module docstring).

    Parameters
    ----------
    store : InfluenceStore
        The open store.
    budget_bytes : int
        Most bytes one side's factor array may take; 0 stores none (existing arrays are still
        read).
    """

    def __init__(self, store: InfluenceStore, budget_bytes: int = DEFAULT_FACTOR_DISK_BUDGET):
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int | np.integer):
            raise TypeError(
                f"factor_disk_budget_bytes must be an int (bytes); got {budget_bytes!r}. "
                "Pass e.g. 8 << 30 (8 GiB), or 0 to store no factors."
            )
        if budget_bytes < 0:
            raise ValueError(
                f"factor_disk_budget_bytes must be >= 0; got {budget_bytes}. Pass 0 to store "
                "no factors."
            )
        self.store = store
        self.budget_bytes = int(budget_bytes)
        self._grids: dict[str, BlockGrid | None] = {}
        self._lock = threading.Lock()
        self._claims: ClaimBook | None = None

    # ------------------------------------------------------------------ geometry
    def block_len(self, side: str) -> int:
        """Samples per factor block: the matrix's block rows (test) or columns (train)."""
        return self.store.meta.block_shape[SIDES.index(side)]

    def n(self, side: str) -> int:
        """Number of samples on ``side``."""
        return self.store.meta.shape[SIDES.index(side)]

    def bounds(self, side: str, b: int) -> range:
        """The samples of factor block ``b``."""
        length = self.block_len(side)
        return range(b * length, min((b + 1) * length, self.n(side)))

    # ------------------------------------------------------------------ which sides, which blocks
    def _grid(self, side: str) -> BlockGrid | None:
        if self._grids.get(side) is None:
            self._grids[side] = self.store.side_grid(layout.factors(side).path)
        return self._grids[side]

    def is_stored(self, side: str, width: int, itemsize: int) -> bool:
        """Whether factors of ``side`` (``width`` values of ``itemsize`` bytes each) are kept."""
        if self._grid(side) is not None:
            return True
        if self.store.read_only:
            return False
        need = self.n(side) * width * itemsize
        return need <= self.budget_bytes and need <= self._free_disk() // 2

    def _free_disk(self) -> int:
        root = self.store.local_root
        if root is None:
            return 1 << 62  # remote stores: the budget alone decides
        try:
            return shutil.disk_usage(root).free
        except OSError:
            return 0

    def exists(self, side: str) -> bool:
        """Whether factors of ``side`` are kept in the store (its array exists)."""
        return self._grid(side) is not None

    def present(self, side: str) -> set[int]:
        """Factor blocks of ``side`` in the store (one listing)."""
        grid = self._grid(side)
        return set() if grid is None else {i for i, _ in grid.list_computed()}

    # ------------------------------------------------------------------ blocks
    def get(self, side: str, b: int) -> np.ndarray | None:
        """Factor block ``b`` of ``side``, or None when it is not stored (or fails its check)."""
        grid = self._grid(side)
        if grid is None or not grid.has_blocks([(b, 0)]):
            return None
        try:
            return grid.read_block((b, 0))
        except CorruptBlockError:
            return None  # recomputed, and the write replaces the damaged chunk

    def put(self, side: str, b: int, values: np.ndarray) -> bool:
        """Store factor block ``b`` of ``side`` if that side is stored; returns whether it was."""
        width, itemsize = values.shape[1], values.dtype.itemsize
        if not self.is_stored(side, width, itemsize):
            return False
        with self._lock:
            grid = self._grid(side)
            if grid is None:
                grid = self.store.create_factor_grid(
                    side, self.n(side), self.block_len(side), width, values.dtype
                )
                self._grids[side] = grid
        if grid.shape[1] != width or grid.dtype != values.dtype:
            raise ValueError(
                f"the stored {side} factors of {self.store.where} have width {grid.shape[1]} "
                f"and dtype {grid.dtype}, but the influence model now gives width {width} and "
                f"dtype {values.dtype}; the store belongs to another model. Recreate it with "
                "overwrite=True."
            )
        grid.write_block((b, 0), np.ascontiguousarray(values))
        return True

    # ------------------------------------------------------------------ sharing with processes
    def claim(self, side: str, b: int) -> bool:
        """Claim factor block ``b`` of ``side`` (see :mod:`infl_array.storage.claims`).

        False when another process holds it or has stored it meanwhile (then :meth:`get` or
        :meth:`wait` reads it).
        """
        if self._claims is None:
            self._claims = ClaimBook(self.store.matrix.zarr_store, layout.MATRIX.claims_prefix)
        name = layout.factor_claim(side, b)
        if not self._claims.try_claim(name):
            return False
        grid = self._grid(side)
        if grid is not None and grid.has_blocks([(b, 0)]):
            # stored (and released) by another process since we looked: read it instead
            self._claims.release(name)
            return False
        return True

    def release(self, side: str, b: int) -> None:
        """Release the claim on factor block ``b`` of ``side``."""
        if self._claims is not None:
            self._claims.release(layout.factor_claim(side, b))

    def wait(self, side: str, b: int) -> np.ndarray | None:
        """Factor block ``b`` once another process has stored it; None when that process is
        gone (its claim expired) and the block must be computed here."""
        pause = 0.02
        while True:
            found = self.get(side, b)
            if found is not None:
                return found
            if self.claim(side, b):
                return None
            time.sleep(pause)
            pause = min(2 * pause, 1.0)

    def stored_bytes(self) -> int:
        """Bytes the stored factors take (local stores; 0 where unknown)."""
        return sum(g.stored_bytes() for g in (self._grid(s) for s in SIDES) if g is not None)

    # ------------------------------------------------------------------ pickling (workers)
    def close(self) -> None:
        """Release the claims this process holds."""
        if self._claims is not None:
            self._claims.close()

    def __getstate__(self) -> dict[str, Any]:
        return {
            "spec": self.store.spec,
            "storage_options": self.store.storage_options,
            "budget_bytes": self.budget_bytes,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        store = InfluenceStore.open(state["spec"], storage_options=state["storage_options"])
        self.__init__(store, state["budget_bytes"])  # type: ignore[misc]


class SharedTrainFactors(FactorStore):
    """A store's factors whose train side lives in another store's :class:`FactorStore`.

    Made by :meth:`infl_array.InfluenceArray.with_test`: the new array keeps its test factors
    in its own store and reads (and, where missing, writes) the train factors of the array it
    came from, so a new test set costs no train-side work wherever the train side is stored.
    Both arrays have the same train data and train block length.
    """

    def __init__(
        self,
        store: InfluenceStore,
        train_from: FactorStore,
        budget_bytes: int = DEFAULT_FACTOR_DISK_BUDGET,
    ) -> None:
        super().__init__(store, budget_bytes)
        self.train_from = train_from

    def is_stored(self, side: str, width: int, itemsize: int) -> bool:
        if side == "train":
            return self.train_from.is_stored(side, width, itemsize)
        return super().is_stored(side, width, itemsize)

    def exists(self, side: str) -> bool:
        return self.train_from.exists(side) if side == "train" else super().exists(side)

    def present(self, side: str) -> set[int]:
        return self.train_from.present(side) if side == "train" else super().present(side)

    def get(self, side: str, b: int) -> np.ndarray | None:
        return self.train_from.get(side, b) if side == "train" else super().get(side, b)

    def put(self, side: str, b: int, values: np.ndarray) -> bool:
        if side == "train":
            return self.train_from.put(side, b, values)
        return super().put(side, b, values)

    def claim(self, side: str, b: int) -> bool:
        return self.train_from.claim(side, b) if side == "train" else super().claim(side, b)

    def release(self, side: str, b: int) -> None:
        if side == "train":
            self.train_from.release(side, b)
        else:
            super().release(side, b)

    def wait(self, side: str, b: int) -> np.ndarray | None:
        return self.train_from.wait(side, b) if side == "train" else super().wait(side, b)

    def stored_bytes(self) -> int:
        """Bytes of this store's own factors (the shared train side is counted where it is)."""
        grid = self._grid("test")
        return 0 if grid is None else grid.stored_bytes()

    def close(self) -> None:
        super().close()
        self.train_from.close()

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "train_from": self.train_from}

    def __setstate__(self, state: dict[str, Any]) -> None:
        store = InfluenceStore.open(state["spec"], storage_options=state["storage_options"])
        self.__init__(store, state["train_from"], state["budget_bytes"])  # type: ignore[misc]
