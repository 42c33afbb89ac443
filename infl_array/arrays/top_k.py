"""Top-k arrays: the ``k`` best entries of every row, kept in the store, filled lazily by row.

``tk = arr.top_k_array(k, axis=1, largest=True)`` is a :class:`TopKArray`: ``tk.values`` and
``tk.indices`` are read-only ``(n_rows, k)`` arrays with numpy indexing (rows: test points for
``axis=1``, train points for ``axis=0``), the answers of :meth:`InfluenceArray.top_k` stored at
the keys :func:`infl_array.storage.layout.top_k` reserves (:mod:`infl_array.storage.topk`).

Its engine (:class:`TopKEngine`, a :class:`~infl_array.engine.block_engine.BlockEngine`) sees the
array as one column of row blocks, one per block of the matrix along the rows' axis. A read
computes the row blocks it touches, a ``fill`` the rest, exactly as for the matrix: each row
block written once, atomically, claimed while it is computed so concurrent fillers share the
work, resumed after a kill. A row block is computed by :func:`~infl_array.engine.top_k.scan_top_k`
over the matrix's blocks (stored ones read, missing ones computed in memory, none written);
the row blocks of one tile are scanned together, so each train factor is used once per tile.

A ``fill`` of a model-backed array goes by bands (:mod:`infl_array.engine.top_k_bands`): the
reduced axis is cut into bands, each band scanned once against every row (each factor block
read or computed once per fill, whatever the number of workers or fillers; bands claimed,
stored, resumed after a kill), then every row block is the merge of its rows in the bands.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from infl_array.arrays.front import LazyArray
from infl_array.arrays.indexing import Reader
from infl_array.arrays.reduce import normalize_axis
from infl_array.display.html import ArraySummary, array_html
from infl_array.engine.block_engine import BlockEngine
from infl_array.engine.plan import AxisSel, plan_outer, plan_points
from infl_array.engine.sources import PlainSource
from infl_array.engine.top_k import ScanCounts, check_k
from infl_array.engine.top_k_bands import band_engine, drop_bands, merge_bands
from infl_array.engine.top_k_bases import scan_rows
from infl_array.errors import MissingBlockError
from infl_array.executors.dispatch import fill_store
from infl_array.storage import layout
from infl_array.storage.grid import BlockCoords
from infl_array.storage.segments import check_not_grown
from infl_array.storage.store import InfluenceStore
from infl_array.storage.topk import TopKGrid, create_top_k_grid, find_top_k_grid, top_k_dtype

__all__ = ["TopKArray", "TopKEngine", "TopKSource", "TopKStats", "open_top_k_array"]

_MISSING_FIX = (
    "Reopen with ia.open(store, model, test=..., train=...) (or fn=...) and call "
    "arr.top_k_array(...).fill() to compute it."
)


@dataclass(frozen=True)
class TopKStats:
    """Work done for a top-k array by this object (a snapshot).

    Attributes
    ----------
    row_blocks_computed : int
        Row blocks of the top-k array computed and written (by this process and its fill's
        workers).
    blocks_read : int
        Matrix blocks read from the store (this process).
    blocks_computed : int
        Matrix blocks computed in memory, not written (this process).
    blocks_skipped : int
        Matrix blocks that provably could not enter a row's top-k, never computed.
    test_factors, train_factors : int
        Factor computations of a model-backed source (its fills' workers included).
    factor_reads : int
        Factor blocks read from the store instead of computed (workers included).
    bands_computed : int
        Bands of a fill by bands computed and written (:mod:`infl_array.engine.top_k_bands`).
    """

    row_blocks_computed: int = 0
    blocks_read: int = 0
    blocks_computed: int = 0
    blocks_skipped: int = 0
    test_factors: int = 0
    train_factors: int = 0
    factor_reads: int = 0
    bands_computed: int = 0


class TopKSource(PlainSource):
    """Computes row blocks of a top-k array from its matrix's engine (see the module docstring).

    Parameters
    ----------
    matrix : BlockEngine
        The influence matrix's engine (with its source).
    k, axis, largest
        What the array holds.
    """

    def __init__(self, matrix: BlockEngine, k: int, axis: int, largest: bool) -> None:
        self.matrix, self.k, self.axis, self.largest = matrix, k, axis, largest
        self.counts = ScanCounts()

    @property
    def rows_per_block(self) -> int:
        """Rows of one row block (the matrix's block length along the rows' axis)."""
        return self.matrix.block_shape[1 - self.axis]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.matrix.shape[1 - self.axis], self.k)

    def scan(self, row_blocks: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """``{b: (values, indices)}`` of row blocks ``row_blocks``, in one scan of the matrix (of
        its new points only, for rows kept by an append: :mod:`infl_array.engine.top_k_bases`)."""
        where = layout.top_k(self.k, self.axis, self.largest)
        rows = merge_bands(self.matrix, where, sorted(set(row_blocks)))
        if rows is None:
            rows = scan_rows(self.matrix, where, row_blocks, self.counts)
        reduced = {layout.FACTOR_SIDES[self.axis]: self.matrix.shape[self.axis]}
        store = self.matrix.store  # rows over fewer points than the store has are not stored
        what = f"the rows of {where.path} computed here"
        check_not_grown(
            store.matrix.zarr_store,
            store.where,
            reduced,
            what,
        )
        return rows

    def compute_block(self, rows: range, cols: range) -> Any:
        """The top-k values of ``rows`` (one row block)."""
        return self.scan([rows.start // self.rows_per_block])[rows.start // self.rows_per_block][0]

    def describe(self) -> dict[str, Any]:
        return {"kind": "top_k", "k": self.k, "axis": self.axis, "largest": self.largest}

    @property
    def stats(self) -> Mapping[str, int]:
        return self.matrix.source.stats if self.matrix.source is not None else {}

    def notes(self) -> dict[str, str]:
        return self.matrix.source.notes() if self.matrix.source is not None else {}


class TopKEngine(BlockEngine):
    """The engine of one top-k array: row blocks ``(b, 0)`` of a :class:`TopKGrid`.

    A computed row block is handed to the grid as one structured array (values and indices,
    :func:`~infl_array.storage.topk.top_k_dtype`); the row blocks of one tile are scanned
    together on the first request for one of them that is not stored yet.
    """

    grid: TopKGrid
    source: TopKSource | None

    def __init__(
        self, store: InfluenceStore, grid: TopKGrid, source: TopKSource | None, axis: int
    ) -> None:
        super().__init__(store, grid, source, missing_fix=_MISSING_FIX)
        self.axis = axis
        self._tile_of: dict[BlockCoords, list[BlockCoords]] = {}
        self._ready: dict[BlockCoords, np.ndarray] = {}
        self.bands_computed = 0
        """Bands this object's fills computed (:mod:`infl_array.engine.top_k_bands`)."""
        self.band_counts = ScanCounts()
        """Matrix blocks the bands of this object's fills read, computed and skipped here."""

    def tiles(self, blocks: list[BlockCoords]) -> list[list[BlockCoords]]:
        """One tile of every row block asked for (one scan of the matrix for all of them)."""
        tiles = super().tiles(blocks)
        self._tile_of = {c: tile for tile in tiles for c in tile}
        self._ready = {}
        return tiles

    def block_values(self, coords: BlockCoords) -> np.ndarray:
        """Row block ``coords`` as a structured array (``"values"``, ``"indices"``)."""
        self.require_source([coords])
        assert self.source is not None
        if coords not in self._ready:
            tile = [c for c in self._tile_of.get(coords, [coords]) if c != coords]
            stored = self.grid.has_blocks(tile)
            todo = [coords, *(c for c in tile if c not in stored and c not in self._ready)]
            for b, (values, indices) in self.source.scan([c[0] for c in todo]).items():
                packed = np.empty(values.shape, dtype=top_k_dtype(self.dtype))
                packed["values"], packed["indices"] = values, indices
                self._ready[(b, 0)] = packed
        return self._ready.pop(coords)

    def remember(self, coords: BlockCoords, values: np.ndarray) -> None:
        """Nothing is cached on compute: reads decode the values and indices they need."""

    def describe_block(self, coords: BlockCoords) -> str:
        rows, _ = self.grid.block_bounds(coords)
        points = "test" if self.axis == 1 else "train"
        return (
            f"top-k row block {coords[0]} ({points} points {rows.start}:{rows.stop}) of "
            f"{self.grid.name.rsplit('/', 1)[0]!r}"
        )

    def top_k_stats(self) -> TopKStats:
        """What this engine computed so far (:class:`TopKStats`)."""
        counts = self.source.counts if self.source is not None else ScanCounts()
        bands, base = self.band_counts, self.stats()
        return TopKStats(
            row_blocks_computed=base.blocks_computed,
            blocks_read=counts.blocks_read + bands.blocks_read,
            blocks_computed=counts.blocks_computed + bands.blocks_computed,
            blocks_skipped=counts.blocks_skipped + bands.blocks_skipped,
            test_factors=base.test_factors,
            train_factors=base.train_factors,
            factor_reads=base.factor_reads,
            bands_computed=self.bands_computed,
        )

    def __getstate__(self) -> dict[str, Any]:
        if self.source is None:
            raise TypeError("a top-k array opened without a model computes nothing to send.")
        return {"source": self.source, "path": self.grid.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        source: TopKSource = state["source"]
        where = layout.top_k(source.k, source.axis, source.largest)
        grid = find_top_k_grid(source.matrix.store, where)
        if grid is None:
            raise FileNotFoundError(
                f"the top-k array {where.path!r} is gone from the store "
                f"{source.matrix.store.where}; was the store replaced while workers ran?"
            )
        self.__init__(source.matrix.store, grid, source, source.axis)  # type: ignore[misc]


class _IndicesReader:
    """Reads the indices array of a top-k array (the :class:`Reader` protocol), computing the
    row blocks a read touches first."""

    def __init__(self, engine: TopKEngine) -> None:
        self.engine = engine

    def read_outer(self, rows: AxisSel, cols: AxisSel) -> np.ndarray:
        plan = plan_outer(rows, cols, self.engine.shape, self.engine.block_shape)
        self.engine.ensure(plan.blocks)
        return self.engine.grid.indices.read_region(rows, cols, plan.blocks)

    def read_points(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        plan = plan_points(rows, cols, self.engine.block_shape)
        self.engine.ensure(plan.blocks)
        return self.engine.grid.indices.read_coordinates(rows, cols, plan.blocks)


class TopKPart(LazyArray):
    """``tk.values`` or ``tk.indices``: a read-only ``(n_rows, k)`` array with numpy indexing."""

    _slice_hint = "tk.values[rows]"

    def __init__(self, engine: TopKEngine, part: str) -> None:
        super().__init__(engine, engine.shape)
        self._part = part

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(np.int64) if self._part == "indices" else self._engine.dtype

    def _reader(self) -> tuple[tuple[int, int], Reader]:
        engine = self._engine
        assert isinstance(engine, TopKEngine)
        return engine.shape, engine if self._part == "values" else _IndicesReader(engine)

    def _reduce(self, name: str, axis: Any, unsupported: dict[str, Any], **opts: Any) -> Any:
        """Reductions of a top-k part: on its values (small: ``k`` per row)."""
        return getattr(np, name)(np.asarray(self), axis=axis, **unsupported, **opts)

    @property
    def T(self) -> Any:
        """The transposed values, as a numpy array (a top-k part is small)."""
        return np.asarray(self).T

    def __repr__(self) -> str:
        return f"TopKPart({self._part}, shape={self.shape}, dtype={self.dtype})"


class TopKArray:
    """The ``k`` best entries of every row of an influence matrix, kept in its store.

    Attributes
    ----------
    values : TopKPart
        ``(n_rows, k)`` values, best first.
    indices : TopKPart
        ``(n_rows, k)`` int64 indices along the reduced axis (ties: the lower index first).
    """

    def __init__(self, engine: TopKEngine, k: int, axis: int, largest: bool) -> None:
        self._engine = engine
        self.k, self.axis, self.largest = k, axis, largest
        self.values = TopKPart(engine, "values")
        self.indices = TopKPart(engine, "indices")

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_rows, k)``."""
        return self._engine.shape

    @property
    def rows_per_block(self) -> int:
        """Rows per stored row block."""
        return self._engine.block_shape[0]

    @property
    def computed(self) -> np.ndarray:
        """Boolean array, one per row block: which are in the store."""
        return self._engine.computed_mask()[:, 0]

    @property
    def stats(self) -> TopKStats:
        """Row blocks computed, matrix blocks read, computed in memory and skipped."""
        return self._engine.top_k_stats()

    @property
    def path(self) -> str:
        """The group of the values and indices arrays in the store."""
        return layout.top_k(self.k, self.axis, self.largest).path

    def fill(self, workers: int | None = None, client: Any = None, progress: bool = True) -> int:
        """Compute every row block not yet stored; returns how many this call wrote.

        Resumable and shared like ``InfluenceArray.fill``: every row block is written
        atomically, claimed while computed; ``workers=N`` local processes or a dask ``client``.
        A model-backed array is filled by bands (:mod:`infl_array.engine.top_k_bands`): the
        bands are what the workers share; the row blocks are then merged here.
        """
        engine = self._engine
        if engine.source is None:
            raise ValueError(
                f"tk.fill() needs a model or function, but the store {engine.store.where} "
                f"was opened without one. {_MISSING_FIX}"
            )
        missing = engine.missing()
        if not missing:
            return 0
        engine.grid.check_writable(missing[0])
        where = layout.top_k(self.k, self.axis, self.largest)
        bands = band_engine(engine.source.matrix, where, len(missing))
        if bands is not None:
            fill_store(bands, progress=progress, workers=workers, client=client)
            done = bands.stats()
            engine.bands_computed += done.blocks_computed
            if bands.source is not None:  # what this process scanned (workers count theirs)
                for field in ("blocks_read", "blocks_computed", "blocks_skipped"):
                    add = getattr(bands.source.counts, field)
                    setattr(engine.band_counts, field, getattr(engine.band_counts, field) + add)
            engine.add_worker_stats(
                {k: v for k, v in bands.worker_counts.items() if k != "blocks_computed"}
            )
            workers = client = None  # the merge reads each band once, here
        written = fill_store(engine, progress=progress, workers=workers, client=client)
        if bands is not None and not engine.missing():
            drop_bands(engine.source.matrix, where)
        return written

    def _facts(self) -> tuple[tuple[str, str], ...]:
        rows = "test" if self.axis == 1 else "train"
        return (
            ("shape", f"{self.shape} ({rows} points x k)"),
            ("order", "largest" if self.largest else "smallest"),
            ("rows per block", str(self.rows_per_block)),
            ("store", f"{self._engine.store.where} ({self.path})"),
        )

    def __repr__(self) -> str:
        done = int(self.computed.sum())
        facts = ", ".join(f"{name}={value}" for name, value in self._facts())
        return f"TopKArray({facts}, row blocks computed {done}/{self._engine.grid_shape[0]})"

    def _repr_html_(self) -> str:
        """The notebook's view (:func:`infl_array.display.html.array_html`): one column of
        row blocks."""
        summary = ArraySummary("TopKArray", self._facts(), self._engine.computed_mask())
        return array_html(summary)


def open_top_k_array(matrix: BlockEngine, k: Any, axis: Any, largest: bool) -> TopKArray:
    """The top-k array of ``matrix`` (created in the store on first use)."""
    ax = normalize_axis(axis)
    k = check_k(k, matrix.shape[ax], ax, minimum=1)
    where = layout.top_k(k, ax, bool(largest))
    store = matrix.store
    grid = find_top_k_grid(store, where)
    if grid is None:
        if matrix.source is None:
            raise MissingBlockError(
                (0, 0),
                f"the store {store.where} holds no top-k array {where.path!r} (k={k}, axis={ax}, "
                f"largest={bool(largest)}), and it was opened without a model or function, so "
                f"it cannot be computed. {_MISSING_FIX}",
            )
        if store.read_only:
            raise PermissionError(
                errno.EACCES,
                f"cannot create the top-k array {where.path!r} (k={k}, axis={ax}, "
                f"largest={bool(largest)}): the store {store.where} is read-only and does not "
                "hold it. Nothing was written. Copy the store to a writable location and open "
                "that to compute it.",
            )
        n_rows, per_block = matrix.shape[1 - ax], matrix.block_shape[1 - ax]
        grid = create_top_k_grid(store, where, n_rows, per_block)
    source = None if matrix.source is None else TopKSource(matrix, k, ax, bool(largest))
    return TopKArray(TopKEngine(store, grid, source, ax), k, ax, bool(largest))
