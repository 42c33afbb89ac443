"""A stored top-k array: values and indices ``(n_rows, k)``, one chunk per block of rows.

The two arrays live at the keys :func:`infl_array.storage.layout.top_k` reserves
(``topk/axis<a>-<largest|smallest>-k<k>/values`` and ``.../indices``). A :class:`TopKGrid` is
the :class:`~infl_array.storage.grid.BlockGrid` of the values array (blocks ``(b, 0)``, one per
block of rows) whose :meth:`TopKGrid.write_block` takes both halves of a row block, as one
structured array with fields ``"values"`` and ``"indices"``, and writes the indices chunk
first, then the values chunk, each with one atomic chunk write. A row block counts as computed
exactly when both chunks exist, so it is never seen with its indices missing (a writer killed
in between leaves an indices chunk that the next computation of the row overwrites; an indices
chunk deleted on its own makes the row block computed again).

Values are stored lossless (the matrix's codec without rounding: the answer is exact); indices
are int64 with fill value -1. This module knows zarr and numpy, not torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BytesCodec

from infl_array.errors import NotAStoreError
from infl_array.storage import layout, nodes
from infl_array.storage.grid import BlockCoords, BlockGrid, create_error
from infl_array.storage.meta import Compression
from infl_array.storage.segments import check_not_grown
from infl_array.storage.store import InfluenceStore

__all__ = ["TopKGrid", "create_top_k_grid", "find_top_k_grid", "top_k_dtype"]


def top_k_dtype(values: Any) -> np.dtype[Any]:
    """The structured dtype of a row block in flight: its values and indices.

    >>> top_k_dtype("float32").names
    ('values', 'indices')
    """
    return np.dtype([("values", np.dtype(values)), ("indices", np.int64)])


class TopKGrid(BlockGrid):
    """The values array of a top-k array, writing the indices with each row block.

    Parameters
    ----------
    values, indices : zarr.Array
        The two stored arrays (same shape and chunks).
    where : str
        How messages name the store.
    local_root : Path or None
        The store's directory when it is local.
    """

    def __init__(
        self, values: zarr.Array, indices: zarr.Array, where: str, local_root: Any
    ) -> None:
        super().__init__(values, where, local_root)
        self.indices = BlockGrid(indices, where, local_root)
        self.k = int(values.shape[1])

    def list_computed(self, rows: Iterable[int] | None = None) -> set[BlockCoords]:
        """The row blocks whose values chunk exists, and their indices chunk too (an indices
        chunk deleted on its own makes its row block not computed, never read as -1)."""
        found = super().list_computed(rows)
        return found & self.indices.list_computed(rows) if found else found

    def has_blocks(self, coords: Iterable[BlockCoords]) -> set[BlockCoords]:
        """The subset of ``coords`` whose values and indices chunks both exist."""
        found = super().has_blocks(coords)
        return self.indices.has_blocks(found) if found else found

    def write_block(self, coords: BlockCoords, values: np.ndarray) -> None:
        """Write row block ``coords``: ``values`` has fields ``"values"`` and ``"indices"``
        (indices first, values last: the values chunk says the block is there)."""
        self.check_writable(coords)
        self.indices.write_block(coords, np.ascontiguousarray(values["indices"]))
        super().write_block(coords, np.ascontiguousarray(values["values"]))

    def write_run(self, coords: list[BlockCoords], values: list[np.ndarray]) -> None:
        """Write row blocks one by one (:meth:`write_block`: each with its indices first)."""
        for c, v in zip(coords, values, strict=True):
            self.write_block(c, v)


def find_top_k_grid(store: InfluenceStore, where: layout.TopKLayout) -> TopKGrid | None:
    """The stored top-k arrays at ``where``, or None when the store holds none yet."""
    values = nodes.open_node(store.group, where.values.path, store.where)
    if values is None:
        return None
    indices = nodes.open_node(store.group, where.indices.path, store.where)
    if not isinstance(values, zarr.Array) or not isinstance(indices, zarr.Array):
        raise NotAStoreError(
            f"{store.where}: the top-k array {where.path!r} lacks its values or indices "
            f"array (found {type(values).__name__} and {type(indices).__name__}). {nodes.FIX}"
        )
    return TopKGrid(values, indices, store.where, store.local_root)


@contextlib.contextmanager
def _creating(name: str, store: InfluenceStore) -> Iterator[None]:
    """Restate an ``OSError`` (a full disk, a read-only mount) as failing to create ``name``."""
    try:
        yield
    except OSError as exc:
        raise create_error(exc, name, store.where) from exc


def create_top_k_grid(
    store: InfluenceStore, where: layout.TopKLayout, n_rows: int, rows_per_block: int
) -> TopKGrid:
    """Create the top-k arrays at ``where``, shape ``(n_rows, k)``, and return them.

    When another process created them first, the existing arrays are returned.
    """
    lossless = Compression(cname=store.meta.compression.cname, clevel=store.meta.compression.clevel)
    shape, chunks = (n_rows, where.k), (rows_per_block, where.k)
    rows = where.values.dimension_names[0]
    what = f"the array {where.path} created here"
    check_not_grown(store.group.store, store.where, {rows: n_rows}, what)
    # indices first: an existing values array means both exist
    for part, dtype, fill in (
        (where.indices, np.dtype(np.int64), -1),
        (where.values, np.dtype(store.meta.dtype), np.nan),
    ):
        with contextlib.suppress(zarr.errors.ContainsArrayError), _creating(part.path, store):
            store.group.create_array(
                part.path,
                shape=shape,
                chunks=chunks,
                dtype=dtype,
                fill_value=fill,
                serializer=BytesCodec(),
                compressors=lossless.compressors(),
                dimension_names=part.dimension_names,
                chunk_key_encoding={"name": "default", "separator": "/"},
            )
    store.group = zarr.open_group(store.group.store, mode="r+")  # sees the new arrays
    found = find_top_k_grid(store, where)
    assert found is not None
    return found
