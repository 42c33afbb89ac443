"""Top-k fills by bands: every factor block read once per fill, the work shared and resumable.

A top-k row needs every entry of the reduced axis. Filling a top-k array row block by row
block makes every task scan the whole reduced axis, so each task reads every train factor
(``axis=1``). A fill by bands turns the loops around (:class:`BandEngine`):

1. The reduced axis is cut into at most :data:`MAX_BANDS` bands of whole blocks
   (:class:`BandPlan`, from the shapes only, so every filler cuts alike). A band's task scans
   its blocks against *every* row (:func:`~infl_array.engine.top_k.scan_top_k` restricted to
   the band): each factor block of the band is computed or read once, for all rows at once,
   and the best ``k`` of each row within the band are stored as one chunk of the band array
   (:meth:`infl_array.storage.layout.TopKLayout.bands`: shape ``(n_bands * n_rows, k)``,
   values and indices written as every top-k row block is,
   :class:`~infl_array.storage.topk.TopKGrid`).
2. The band chunks are blocks of their own :class:`~infl_array.engine.block_engine.BlockEngine`,
   so the fill machinery applies unchanged: a band is claimed while it is computed (fillers
   share the bands), written atomically (a killed fill resumes with the bands not stored),
   and spread over ``workers`` or a dask ``client``, each band in exactly one task.
3. Once every band is stored, a row block of the top-k array is the merge of its rows in the
   bands (:func:`merge_bands`): no scan. When the top-k array is complete the band array is
   deleted (:func:`drop_bands`).

Exactness: each band holds the best ``k`` of its entries by ``(key, index)``, so the merge by
``(key, index)`` (:func:`~infl_array.engine.top_k.merge_best`) of all bands is the best ``k``
of the row: the brute force, ties to the lower index. Every band holds ``k`` entries per row
(bands are at least ``k`` points long).

Bands are used for fills of arrays without bases (a store grown by an append brings its rows
up to date from the bases instead, :mod:`~infl_array.engine.top_k_bases`), of model-backed
sources, and while a band chunk (``n_rows x k`` values and indices) stays under
:data:`MAX_BAND_CHUNK_BYTES`.

This module knows numpy, the engine and the storage, not torch.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from infl_array.engine.block_engine import BlockEngine
from infl_array.engine.sources import PlainSource
from infl_array.engine.top_k import (
    ScanCounts,
    block_best,
    computes_stored,
    merge_best,
    scan_top_k,
    worst_kept,
)
from infl_array.engine.validate import checked_block
from infl_array.storage import layout
from infl_array.storage.grid import BlockCoords, block_range
from infl_array.storage.topk import TopKGrid, create_top_k_grid, find_top_k_grid, top_k_dtype
from infl_array.storage.topk_bases import find_bases

__all__ = [
    "MAX_BANDS",
    "MAX_BAND_CHUNK_BYTES",
    "BandEngine",
    "BandPlan",
    "band_engine",
    "drop_bands",
    "merge_bands",
]

MAX_BANDS = 64
"""Most bands a fill cuts the reduced axis into: enough to share among workers and to lose
little to a kill (a band's work at most), few enough to keep the band array small
(``MAX_BANDS * n_rows * k`` values and indices while the fill runs: 768 MB for 10,000 rows
and ``k=100``, deleted when the fill ends)."""
MIN_BAND_BLOCKS = 8
"""Fewest blocks of the reduced axis in a band (bar a short axis): after a band's first
block, entries worse than a row's running ``k``-th are dropped before sorting
(:func:`~infl_array.engine.top_k.block_best`), which a band of one block never gets to."""
PRODUCT_VALUES = 1 << 24
"""Most values (64 MB of float32) one product of a band scan computes: the rows of a band are
multiplied with a block of the reduced axis this many values at a time."""
SELECT_THREADS = max(1, min(4, os.cpu_count() or 1))
"""Threads that select the best entries of one product of a band scan, each over its own rows
(:func:`select_rows`): the product runs on every core (torch), and so does the selection,
as ``torch.topk`` would (numpy releases the GIL in its comparisons, partitions and sorts)."""
MIN_SELECT_ROWS = 128
"""Fewest rows one selection thread takes (fewer rows: fewer threads)."""
MAX_BAND_CHUNK_BYTES = 256 << 20
"""Largest band chunk (``n_rows * k`` int64 indices) a fill by bands writes; larger top-k
arrays are filled row block by row block."""


@dataclass(frozen=True, slots=True)
class BandPlan:
    """How the reduced axis (``n_inner`` points in blocks of ``inner_block``) is cut into bands
    of ``blocks_per_band`` whole blocks (at least :data:`MIN_BAND_BLOCKS`), each at least ``k``
    points long.

    >>> plan = BandPlan.of(n_inner=100, inner_block=10, k=3)
    >>> plan.n_bands, plan.blocks_per_band, plan.blocks(0), plan.blocks(1)
    (2, 8, range(0, 8), range(8, 10))
    >>> plan = BandPlan.of(n_inner=95, inner_block=2, k=7)
    >>> plan.n_bands, plan.blocks(5)
    (6, range(40, 48))
    >>> BandPlan.of(n_inner=1_000_000, inner_block=8192, k=100).n_bands
    16
    """

    n_inner: int
    inner_block: int
    blocks_per_band: int
    n_bands: int

    @classmethod
    def of(cls, n_inner: int, inner_block: int, k: int) -> BandPlan:
        """The bands of a reduced axis (see the class docstring)."""
        n_blocks = -(-n_inner // inner_block)
        per_band = max(MIN_BAND_BLOCKS, -(-n_blocks // MAX_BANDS))
        while True:
            n_bands = -(-n_blocks // per_band)
            last = n_inner - (n_bands - 1) * per_band * inner_block
            if n_bands == 1 or last >= k:
                return cls(n_inner, inner_block, per_band, n_bands)
            per_band += 1

    def blocks(self, band: int) -> range:
        """The blocks (along the reduced axis) of ``band``."""
        n_blocks = -(-self.n_inner // self.inner_block)
        return block_range(band, self.blocks_per_band, n_blocks)


class BandSource(PlainSource):
    """Computes band chunks: the best ``k`` of every row within one band (module docstring).

    Parameters
    ----------
    matrix : BlockEngine
        The influence matrix's engine (with its source).
    where : TopKLayout
        The top-k array the bands are merged into.
    plan : BandPlan
        The bands.
    """

    def __init__(self, matrix: BlockEngine, where: layout.TopKLayout, plan: BandPlan) -> None:
        self.matrix, self.where, self.plan = matrix, where, plan
        self.counts = ScanCounts()

    @property
    def n_rows(self) -> int:
        return self.matrix.shape[1 - self.where.axis]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.plan.n_bands * self.n_rows, self.where.k)

    def scan(self, band: int) -> np.ndarray:
        """Band ``band`` as one structured array (``"values"``, ``"indices"``), ``(n_rows, k)``.

        When none of the band's matrix blocks is stored (a top-k stores none), the rows are
        multiplied with each block of the band in a few large products (:meth:`_scan_wide`);
        otherwise block by block (:func:`~infl_array.engine.top_k.scan_top_k`: stored blocks
        read).
        """
        k, axis, largest = self.where.k, self.where.axis, self.where.largest
        row_blocks = range(self.matrix.grid_shape[1 - axis])
        blocks = self.plan.blocks(band)
        stored = self.matrix.refresh()
        if not any(c[axis] in blocks for c in stored):
            return self._scan_wide(blocks)
        found = scan_top_k(self.matrix, k, axis, largest, row_blocks, self.counts, band=blocks)
        packed = np.empty((self.n_rows, k), dtype=top_k_dtype(self.matrix.dtype))
        per_block = self.matrix.block_shape[1 - axis]
        for b, (values, indices) in found.items():
            packed["values"][b * per_block : b * per_block + len(values)] = values
            packed["indices"][b * per_block : b * per_block + len(values)] = indices
        return packed

    def _scan_wide(self, blocks: range) -> np.ndarray:
        """The band of ``blocks`` computed in products of up to :data:`PRODUCT_VALUES` values
        (rows in runs of whole row blocks), each rounded as the store would hold it."""
        k, axis, largest = self.where.k, self.where.axis, self.where.largest
        matrix, source = self.matrix, self.matrix.source
        assert source is not None
        per_block, inner_len = matrix.block_shape[1 - axis], matrix.block_shape[axis]
        run = per_block * max(1, PRODUCT_VALUES // (per_block * inner_len))
        best: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        compression = matrix.store.meta.compression
        with ThreadPoolExecutor(SELECT_THREADS) as pool:
            for b in blocks:
                inner = block_range(b, inner_len, matrix.shape[axis])
                for start in range(0, self.n_rows, run):
                    rows = range(start, min(start + run, self.n_rows))
                    test, train = (rows, inner) if axis == 1 else (inner, rows)
                    coords = (start // per_block, b) if axis == 1 else (b, start // per_block)
                    values = checked_block(source.compute_block, coords, test, train, matrix.dtype)
                    values = compression.stored_values(values)
                    values = values if axis == 1 else values.T
                    self.counts.blocks_computed += -(-len(rows) // per_block)
                    select_rows(pool, best, values, start, inner.start, k, largest)
        packed = np.empty((self.n_rows, k), dtype=top_k_dtype(matrix.dtype))
        for start, (values, indices) in best.items():
            packed["values"][start : start + len(values)] = values
            packed["indices"][start : start + len(values)] = indices
        return packed

    def compute_block(self, rows: range, cols: range) -> Any:
        """The values of the band starting at row ``rows.start``."""
        return self.scan(rows.start // self.n_rows)["values"]

    def describe(self) -> dict[str, Any]:
        return {"kind": "top_k_bands", "k": self.where.k, "axis": self.where.axis}

    @property
    def stats(self) -> Any:
        return self.matrix.source.stats if self.matrix.source is not None else {}


def select_rows(
    pool: ThreadPoolExecutor,
    best: dict[int, tuple[np.ndarray, np.ndarray]],
    values: np.ndarray,
    start: int,
    first: int,
    k: int,
    largest: bool,
) -> None:
    """Merge the best ``k`` of each row of ``values`` (rows ``start..``, columns ``first..``)
    into ``best`` (keyed by each part's first row), the rows cut into parts of at least
    :data:`MIN_SELECT_ROWS` selected by ``pool``'s threads: rows are independent, so the
    answer is the same however they are cut, as long as every call cuts alike.

    >>> best = {}
    >>> with ThreadPoolExecutor(2) as pool:
    ...     select_rows(pool, best, np.array([[1.0, 3.0, 2.0]]), 0, 10, 2, True)
    >>> [x.tolist() for x in best[0]]
    [[[3.0, 2.0]], [[11, 12]]]
    """
    n = len(values)
    parts = max(1, min(SELECT_THREADS, n // MIN_SELECT_ROWS))
    cuts = [n * p // parts for p in range(parts + 1)]

    def select(p: int) -> None:
        lo, hi = cuts[p], cuts[p + 1]
        found = best.get(start + lo)
        new = block_best(values[lo:hi], first, k, largest, worst_kept(found, k, largest))
        best[start + lo] = merge_best(found, new, k, largest)

    list(pool.map(select, range(parts)))


class BandEngine(BlockEngine):
    """The engine of a band array: blocks ``(band, 0)``, each one band for every row."""

    grid: TopKGrid
    source: BandSource | None

    def block_values(self, coords: BlockCoords) -> np.ndarray:
        """Band ``coords[0]`` as a structured array (``"values"``, ``"indices"``)."""
        self.require_source([coords])
        assert self.source is not None
        return self.source.scan(coords[0])

    def remember(self, coords: BlockCoords, values: np.ndarray) -> None:
        """Nothing is cached: a band is read once, by the merge."""

    @property
    def worker_counts(self) -> dict[str, int]:
        """What the workers of this engine's fills computed (fields of ``ArrayStats``)."""
        return dict(self._worker_counts)

    def describe_block(self, coords: BlockCoords) -> str:
        return f"band {coords[0]} of {self.grid.name.rsplit('/', 1)[0]!r}"

    def __getstate__(self) -> dict[str, Any]:
        if self.source is None:
            raise TypeError("a band array without a model computes nothing to send.")
        return {"source": self.source}

    def __setstate__(self, state: dict[str, Any]) -> None:
        source: BandSource = state["source"]
        grid = find_top_k_grid(source.matrix.store, source.where.bands(source.plan.n_inner))
        if grid is None:
            raise FileNotFoundError(
                f"the band array of {source.where.path!r} is gone from the store "
                f"{source.matrix.store.where}; did the fill finish while workers ran?"
            )
        self.__init__(source.matrix.store, grid, source)  # type: ignore[misc]


def _plan(matrix: BlockEngine, where: layout.TopKLayout) -> BandPlan:
    ax = where.axis
    return BandPlan.of(matrix.shape[ax], matrix.block_shape[ax], where.k)


def band_engine(matrix: BlockEngine, where: layout.TopKLayout, missing_rows: int) -> Any:
    """The :class:`BandEngine` that fills the top-k array ``where`` by bands (creating its
    band array), or None when the fill goes row block by row block: a matrix without a
    source with factors, a top-k array with bases, a band chunk over
    :data:`MAX_BAND_CHUNK_BYTES`, or fewer than half of the row blocks missing (and no band
    array begun)."""
    if matrix.source is None or computes_stored(matrix) or find_bases(matrix.store, where):
        return None
    n_rows, k = matrix.shape[1 - where.axis], where.k
    if n_rows * k * 8 > MAX_BAND_CHUNK_BYTES:
        return None
    plan = _plan(matrix, where)
    grid = _current_bands(matrix, where, plan)
    if grid is None:
        if 2 * missing_rows < matrix.grid_shape[1 - where.axis]:
            return None
        grid = create_top_k_grid(
            matrix.store, where.bands(plan.n_inner), plan.n_bands * n_rows, n_rows
        )
    return BandEngine(matrix.store, grid, BandSource(matrix, where, plan))


def _current_bands(matrix: BlockEngine, where: layout.TopKLayout, plan: BandPlan) -> Any:
    """The band array of ``where`` for the matrix's shape now, or None; band arrays of other
    shapes (from before an append) are deleted."""
    n_rows = matrix.shape[1 - where.axis]
    found = None
    for covered in _band_arrays(matrix, where):
        grid = find_top_k_grid(matrix.store, where.bands(covered))
        if grid is not None and covered == plan.n_inner and grid.shape[0] == plan.n_bands * n_rows:
            found = grid
        elif not matrix.store.read_only:
            _delete(matrix, where.bands(covered))
    return found


def _band_arrays(matrix: BlockEngine, where: layout.TopKLayout) -> list[int]:
    """The ``covered`` of every band array of ``where`` in the store."""
    found = set()
    for path in matrix.store.array_paths():
        part = layout.top_k_part(path)
        if part is not None and part[0].banded and part[0].path.startswith(where.path + "/"):
            assert part[0].covered is not None
            found.add(part[0].covered)
    return sorted(found)


def merge_bands(
    matrix: BlockEngine, where: layout.TopKLayout, row_blocks: list[int]
) -> dict[int, tuple[np.ndarray, np.ndarray]] | None:
    """``{b: (values, indices)}`` of ``row_blocks``, merged from a complete band array (each
    band chunk read once), or None when there is none."""
    if find_bases(matrix.store, where):
        return None
    plan = _plan(matrix, where)
    grid = find_top_k_grid(matrix.store, where.bands(plan.n_inner))
    n_rows, per_block = matrix.shape[1 - where.axis], matrix.block_shape[1 - where.axis]
    bands = [(band, 0) for band in range(plan.n_bands)]
    if grid is None or grid.shape[0] != plan.n_bands * n_rows:
        return None
    if len(grid.has_blocks(bands)) < plan.n_bands:
        return None
    best: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for coords in bands:
        values, indices = grid.read_block(coords), grid.indices.read_block(coords)
        for b in row_blocks:
            rows = block_range(b, per_block, n_rows)
            new = (values[rows.start : rows.stop], indices[rows.start : rows.stop])
            best[b] = merge_best(best.get(b), new, where.k, where.largest)
    return {b: (np.ascontiguousarray(v), np.ascontiguousarray(i)) for b, (v, i) in best.items()}


def drop_bands(matrix: BlockEngine, where: layout.TopKLayout) -> None:
    """Delete the band arrays of ``where`` (once its top-k array is complete)."""
    for covered in _band_arrays(matrix, where):
        _delete(matrix, where.bands(covered))


def _delete(matrix: BlockEngine, bands: layout.TopKLayout) -> None:
    """Delete a band array, its directory too on a local store (zarr's ``delete_dir``)."""
    with contextlib.suppress(KeyError):
        del matrix.store.group[bands.path]
