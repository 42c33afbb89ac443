"""Top-k bases: the rows a top-k array held before its reduced axis grew.

When ``append_train`` adds train points, every stored row of a top-k array along the train axis
(``axis=1``: the best train points of each test point) misses the new columns. Rather than throw
those rows away, the append moves each stored row block to a *base*: the arrays
``topk/<array>/upto<n>/values`` and ``.../indices``
(:meth:`infl_array.storage.layout.TopKLayout.base`), the rows as they were when the reduced axis
had ``n`` points, same shape and chunks as the top-k array then. The row block then counts as
not computed; computing it again scans only the points ``n:`` and merges them with the base
(:mod:`infl_array.engine.top_k_bases`), which gives exactly the top-k of the grown matrix.

Crash safety: a row block is copied to the base (indices first, values last, as every top-k
write: :class:`~infl_array.storage.topk.TopKGrid`) before its values chunk and then its indices
chunk are deleted from the top-k array, so at every moment the row is in the top-k array, in the
base, or both (identical rows: the copy is idempotent). A base never grows: a row block of the
base whose rows do not all exist in it (its rows grew since, by ``append_test``) is not used.

This module knows zarr and numpy (through :mod:`infl_array.storage.topk`), not torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from infl_array.errors import CorruptBlockError
from infl_array.storage import layout
from infl_array.storage.store import InfluenceStore
from infl_array.storage.topk import TopKGrid, create_top_k_grid, find_top_k_grid, top_k_dtype
from infl_array.storage.zarr_compat import delete_key, lossy_codec_warning_silenced

__all__ = ["TopKBase", "find_bases", "keep_rows_as_base", "top_k_arrays"]


@dataclass(frozen=True)
class TopKBase:
    """The stored rows of a top-k array over the first ``covered`` points of its reduced axis."""

    covered: int
    grid: TopKGrid

    def rows(self, b: int, stop: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Row block ``b`` as ``(values, indices)`` when the base holds all of it (its rows end
        at ``stop`` in the grown array), else None (absent, partial or damaged)."""
        if stop > self.grid.shape[0] or not self.grid.has_blocks([(b, 0)]):
            return None
        try:
            values = self.grid.read_block((b, 0))
            indices = self.grid.indices.read_block((b, 0))
        except CorruptBlockError:
            return None
        if values.shape[0] != indices.shape[0] or not np.isfinite(values).all():
            return None
        return values, indices


def top_k_arrays(store: InfluenceStore) -> list[layout.TopKLayout]:
    """The top-k arrays in the store (not their bases), by path."""
    found = []
    for path in store.array_paths():
        part = layout.top_k_part(path)
        if part is not None and part[1] == "values" and part[0].covered is None:
            found.append(part[0])
    return found


def find_bases(store: InfluenceStore, where: layout.TopKLayout) -> list[TopKBase]:
    """The bases of the top-k array ``where``, the most points covered first."""
    if where.path not in store.group:
        return []
    with lossy_codec_warning_silenced():
        node = store.group[where.path]
    if not isinstance(node, zarr.Group):
        return []
    bases = []
    for name in node.group_keys():
        covered = name.removeprefix("upto")
        if name.startswith("upto") and covered.isdigit():
            grid = find_top_k_grid(store, where.base(int(covered)))
            if grid is not None:
                bases.append(TopKBase(int(covered), grid))
    return sorted(bases, key=lambda base: -base.covered)


def keep_rows_as_base(store: InfluenceStore, where: layout.TopKLayout, covered: int) -> int:
    """Move every stored row block of the top-k array ``where`` (over ``covered`` points of its
    reduced axis) to its base ``upto<covered>``; returns how many moved (see the module
    docstring). A damaged row block is deleted, not kept."""
    grid = find_top_k_grid(store, where)
    if grid is None:
        return 0
    present = sorted(grid.list_computed())
    if not present:
        return 0
    base = create_top_k_grid(store, where.base(covered), grid.shape[0], grid.block_shape[0])
    moved = 0
    for coords in present:
        packed = _packed(grid, coords)
        if packed is not None:  # a damaged row block is not kept: it is computed again, whole
            base.write_block(coords, packed)
            moved += 1
        drop_row_block(grid, coords)
    return moved


def _packed(grid: TopKGrid, coords: tuple[int, int]) -> Any:
    """Row block ``coords`` as one structured array (values and indices), None if damaged."""
    try:
        values, indices = grid.read_block(coords), grid.indices.read_block(coords)
    except CorruptBlockError:
        return None
    packed = np.empty(values.shape, dtype=top_k_dtype(values.dtype))
    packed["values"], packed["indices"] = values, indices
    return packed


def drop_row_block(grid: TopKGrid, coords: tuple[int, int]) -> None:
    """Delete a row block of a top-k array: its values chunk first (the row then counts as
    not computed), then its indices chunk."""
    grid.check_writable(coords)
    delete_key(grid.zarr_store, grid.chunk_key(coords))
    delete_key(grid.zarr_store, grid.indices.chunk_key(coords))
