"""Blocks that cannot be computed: naming a block in messages, and the error for a missing one.

:class:`MissingBlocksMixin` holds the part of :class:`~infl_array.engine.block_engine.BlockEngine`
that words a block for messages (:meth:`~MissingBlocksMixin.describe_block`, which engines of
other arrays override) and raises :class:`~infl_array.errors.MissingBlockError` when a block is
missing and nothing can compute it. Its methods read the engine's ``grid``, ``store``, ``source``
and ``missing_fix``; the split keeps the engine to block state and computing.
"""

from __future__ import annotations

from infl_array.engine.sources import BlockSource
from infl_array.errors import MissingBlockError
from infl_array.storage.grid import BlockCoords, BlockGrid
from infl_array.storage.store import InfluenceStore

__all__ = ["MissingBlocksMixin"]


class MissingBlocksMixin:
    """Messages about blocks, and the error for blocks nothing can compute (module docstring)."""

    grid: BlockGrid
    store: InfluenceStore
    source: BlockSource | None
    missing_fix: str

    def require_source(self, missing: list[BlockCoords]) -> None:
        """``MissingBlockError`` naming the first of ``missing`` when nothing can compute it."""
        if self.source is not None:
            return
        first = missing[0]
        more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise MissingBlockError(
            first,
            f"{self.describe_block(first)}{more} is not in the store {self.store.where}, which "
            f"was opened without a model or function, so it cannot be computed. {self.missing_fix}",
        )

    def describe_block(self, coords: BlockCoords) -> str:
        """A block named for messages, with the data it covers."""
        rows, cols = self.grid.block_bounds(coords)
        if self.grid.ndim == 1:
            name = self.grid.name.replace("_", "-")
            return f"{name} block {coords[1]} (train points {cols.start}:{cols.stop})"
        return (
            f"block {coords} (test rows {rows.start}:{rows.stop}, train cols "
            f"{cols.start}:{cols.stop})"
        )
