"""Strips: one product for a tile's column (or group of columns) of blocks, handed out block by
block.

A tile (:func:`~infl_array.engine.plan.plan_tiles`) is computed column by column: blocks
``(i, j)`` for every block row ``i`` of the tile, then the next ``j``. Instead of one small
product per block (100 x k @ k x 100 for 100 x 100 blocks: dominated by per-call overhead),
:class:`Strips` computes the product of the test factors of a run of the tile's block rows (a
*strip*) with the train factors of the block column once, keeps it, and hands out the blocks as
slices of it. Where the engine declares *column groups* (consecutive block columns,
:func:`~infl_array.engine.tiling.column_group`), a strip spans the whole run and as many
columns of the group as fit its bound, so the group's train factors are computed in one call
and its blocks come from one product.

* The engine declares a tile's runs of block rows with :meth:`Strips.begin_tile` (the
  ``FactorReuse.begin_tile`` hint); a block whose rows lie in one of them comes from its strip.
  Other blocks (none declared, rows not aligned to the declared block rows) are computed alone.
* Memory: one strip per thread is kept, at most :data:`STRIP_MAX_BYTES` (and a quarter of the
  factor memo's bound): a longer run is cut into strips of whole block rows within that bound,
  and a kept strip is held in the memory budget. A strip no larger than one block is not worth
  it, so such runs are computed block by block.
* A block handed out is a copy of its part of the strip, so that a block kept afterwards (a
  read's decoded-block cache) does not keep the whole strip alive. A tile declared with
  ``blocks_kept=False`` (a fill: its blocks are only written) hands out views instead: a
  strip's memory then lives until its last block is written (the blocks waiting for their
  write are held in the budget), and copying every block (a second pass over the matrix's
  bytes, each into fresh memory) is saved.
* State is per thread (threads of one process computing different tiles do not disturb each
  other) and not pickled: a copy sent to a worker starts with none.

A block taken from a strip equals the block computed alone up to the rounding of the product:
each entry is the same inner product of one test and one train factor row.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

from infl_array.engine.budget import Budget

__all__ = ["STRIP_MAX_BYTES", "Strips"]

STRIP_MAX_BYTES = 64 << 20
"""Bytes one strip may take at most (64 MiB)."""

STRIP = "strips of blocks"
"""What kept strips are held as in the memory budget."""

Product = Callable[[range, range], torch.Tensor]
"""``product(rows, cols)``: the block of ``test[rows] x train[cols]``."""


class Strips:
    """Strips of the tile being computed (see the module docstring).

    Parameters
    ----------
    budget_bytes : int
        The factor memo's bound: a strip takes at most a quarter of it (and
        :data:`STRIP_MAX_BYTES`); 0 disables strips.
    budget : Budget or None
        The memory budget a kept strip is held in.

    Attributes
    ----------
    products : int
        Strip products computed so far (all threads).
    """

    def __init__(self, budget_bytes: int, budget: Budget | None = None) -> None:
        self.max_bytes = min(STRIP_MAX_BYTES, budget_bytes // 4)
        self.budget = budget
        self.products = 0
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {"max_bytes": self.max_bytes, "budget": self.budget, "products": 0}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def begin_tile(
        self,
        runs: list[range],
        block_rows: int,
        groups: list[list[range]] | None = None,
        blocks_kept: bool = True,
    ) -> None:
        """The tile this thread computes next covers the test rows ``runs`` (whole block rows
        of ``block_rows`` each, the last of the matrix possibly shorter) and the column groups
        ``groups`` (lists of consecutive block columns as train ranges); the kept strip goes.
        ``blocks_kept``: whether its blocks may be kept after their write (else they are
        handed out as views of their strip: see the module docstring)."""
        self._local.runs = list(runs)
        self._local.groups = {cols: members for members in groups or [] for cols in members}
        self._local.block_rows = block_rows
        self._local.copies = blocks_kept
        self._drop()

    def _drop(self) -> None:
        """Let this thread's kept strip go (and its bytes in the budget)."""
        self._local.kept = None
        held = getattr(self._local, "held", 0)
        if held and self.budget is not None:
            self.budget.release(held, STRIP)
        self._local.held = 0

    def block(self, rows: range, cols: range, product: Product) -> torch.Tensor | None:
        """Block ``rows x cols`` as a slice of its strip (computed with ``product`` when it is
        not the kept one), or None when it is computed alone."""
        strip = self._strip_of(rows, cols)
        if strip is None:
            return None
        kept = getattr(self._local, "kept", None)
        if kept is None or kept[0] != strip:
            self._drop()  # the old strip goes before the new one is made
            nbytes = 8 * len(strip[0]) * len(strip[1])
            if self.budget is not None and not self.budget.try_reserve(nbytes, STRIP):
                return None  # no room to keep it: blocks are computed alone
            self._local.held = nbytes
            try:
                kept = (strip, product(*strip))
            except BaseException:
                self._drop()
                raise
            self._local.kept = kept
            self.products += 1
        (top, left), values = (strip[0].start, strip[1].start), kept[1]
        part = values[rows.start - top : rows.stop - top, cols.start - left : cols.stop - left]
        # a block that may be kept must not keep the whole strip alive (nor share it)
        return part.clone() if getattr(self._local, "copies", True) else part

    def _strip_of(self, rows: range, cols: range) -> tuple[range, range] | None:
        """The strip ``(rows, cols)`` holding the block ``rows x cols``, or None.

        A block of a declared column group comes from a strip of its whole run against as many
        of the group's columns as fit (:attr:`max_bytes`); otherwise from a strip of block
        rows of its run against its own columns.
        """
        block_rows = getattr(self._local, "block_rows", 0)
        if block_rows == 0 or self.max_bytes <= 0:
            return None
        for run in self._local.runs:
            if run.start <= rows.start and rows.stop <= run.stop:
                offset = rows.start - run.start
                if offset % block_rows or not (len(rows) == block_rows or rows.stop == run.stop):
                    return None
                strip = self._group_strip(run, cols)
                if strip is not None:
                    return None if strip == (rows, cols) else strip
                if len(run) <= block_rows:  # a strip of one block row is the block itself
                    return None
                per_strip = self.max_bytes // (block_rows * max(1, len(cols)) * 8)
                if per_strip < 2:
                    return None
                height = per_strip * block_rows
                start = run.start + (offset // height) * height
                return range(start, min(start + height, run.stop)), cols
        return None

    def _group_strip(self, run: range, cols: range) -> tuple[range, range] | None:
        """The whole ``run`` against the part of ``cols``'s column group that fits, or None
        (no group declared, or not even two of its columns fit with the whole run)."""
        members = self._local.groups.get(cols)
        if members is None or len(members) < 2:
            return None
        width = max(1, len(run) * len(members[0]) * 8)
        fit = min(len(members), self.max_bytes // width)
        if fit < 2:
            return None
        first = (members.index(cols) // fit) * fit
        part = members[first : first + fit]
        return run, range(part[0].start, part[-1].stop)
