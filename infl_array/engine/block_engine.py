"""The block engine: which blocks of a stored array are known, and computing the missing ones.

A :class:`BlockEngine` owns the block state of one stored array (a
:class:`~infl_array.storage.grid.BlockGrid`) over a source (:mod:`infl_array.engine.sources`, or
None for a read-only store) and a cache of decoded blocks (:mod:`infl_array.engine.cache`).
Everything that reads or computes blocks (the front ends, ``fill``, the reductions, ``to_dask`` and
the self-influence) goes through its public methods; it never imports a front end.

Known blocks
------------
A block is computed exactly when its chunk exists in the store. Which blocks are there is
kept by the engine's :class:`~infl_array.engine.keeper.BlockKeeper`, the cache machine every
stored block goes through (matrix and factor blocks alike): what has been seen in the store is
remembered (a block once there stays there), so only blocks not yet seen are looked up again:
one existence check each, or, when more than :data:`~infl_array.engine.keeper.LIST_THRESHOLD`
are unknown, one listing of each block row they are in (of the whole array when they span
most rows).

Computing
---------
The cost of a model-backed matrix is one inverse-Hessian solve per test point, one gradient
per train point and one matrix product. Blocks are computed in tiles
(:mod:`~infl_array.engine.tiling`), so each test factor is computed once and each train factor
once per tile, when the source memoises factors (its ``factor_reuse`` capability).
Writing overlaps computing, and fills share their work with other fillers of the store
(:mod:`infl_array.engine.work`); threads of one process compute a block once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from infl_array.engine.cache import SMALL_READ_BLOCKS, BlockCache, assemble
from infl_array.engine.keeper import BlockKeeper, GridShelf
from infl_array.engine.missing import MissingBlocksMixin
from infl_array.engine.plan import (
    AxisSel,
    BlockProjection,
    ReadPlan,
    plan_outer,
    plan_points,
    plan_whole,
)
from infl_array.engine.progress import counter_bar, progress_bar
from infl_array.engine.sources import BlockSource, capabilities
from infl_array.engine.tiling import compute_tiles, prefetch_tile
from infl_array.engine.validate import checked_block
from infl_array.engine.work import BlockSteps, Sharing, compute_blocks
from infl_array.storage.grid import BlockCoords, BlockGrid
from infl_array.storage.notes import write_notes
from infl_array.storage.store import InfluenceStore

__all__ = ["ArrayStats", "BlockEngine"]

READ_PROGRESS_DELAY_S = 1.0
"""A read that computes blocks shows a progress bar once it has taken this long."""


@dataclass(frozen=True)
class ArrayStats:
    """Work done for an array by this process and the workers of its fills (a snapshot).

    Attributes
    ----------
    blocks_computed : int
        Blocks this object computed and wrote.
    test_factors, train_factors, self_factors : int
        Factor computations of a model-backed source: test factors, train factors, and test
        factors of train points (for the self-influence). 0 for block functions.
    factor_hits : int
        Factor requests served from the source's memo.
    factor_reads : int
        Factor blocks read from the store instead of computed.
    """

    blocks_computed: int = 0
    test_factors: int = 0
    train_factors: int = 0
    self_factors: int = 0
    factor_hits: int = 0
    factor_reads: int = 0

    @classmethod
    def of(
        cls, blocks_computed: int, source: Mapping[str, int], workers: Mapping[str, int]
    ) -> ArrayStats:
        """The snapshot of this process's blocks, its source's factor counts (``stats`` of a
        source: ``hits`` are ``factor_hits``) and its fills' workers' counts (field names)."""
        local = {
            "blocks_computed": blocks_computed,
            "test_factors": int(source.get("test_factors", 0)),
            "train_factors": int(source.get("train_factors", 0)),
            "self_factors": int(source.get("self_factors", 0)),
            "factor_hits": int(source.get("hits", 0)),
            "factor_reads": int(source.get("factor_reads", 0)),
        }
        return cls(**{k: v + int(workers.get(k, 0)) for k, v in local.items()})


class BlockEngine(MissingBlocksMixin):
    """Block state and block computation of one stored array (see the module docstring).

    Parameters
    ----------
    store : InfluenceStore
        The store the array belongs to (workers reopen it from ``store.spec``).
    grid : BlockGrid
        The array's blocks.
    source : BlockSource or None
        What computes missing blocks; None for a read-only store.
    missing_fix : str
        The fix, in messages about blocks that cannot be computed (how to reopen the store
        with a source).
    """

    def __init__(
        self,
        store: InfluenceStore,
        grid: BlockGrid,
        source: BlockSource | None,
        *,
        missing_fix: str = (
            "Reopen with ia.open(store, model, test=..., train=...) or ia.open(store, fn=...) "
            "and read again or call arr.fill()."
        ),
    ) -> None:
        self.store = store
        self.grid = grid
        self.source = source
        self.missing_fix = missing_fix
        reuse = capabilities(source).factor_reuse
        self.budget = reuse.budget if reuse is not None else None
        """The memory budget the array's parts draw from (a model-backed array's), or None."""
        self.cache = BlockCache(budget=self.budget)
        self.read_progress = True
        """Whether reads that compute blocks for more than a few seconds show a progress bar."""
        self.blocks_computed = 0
        self._worker_counts: dict[str, int] = {}
        self.keeper: BlockKeeper[BlockCoords, np.ndarray] = BlockKeeper(GridShelf(grid))
        """Which blocks are stored (the cache machine's presence memo and store steps)."""
        self._noted: dict[str, str] = {}
        self.column_group = 1
        """Block columns whose blocks are computed from one product (set by :meth:`tiles`; the
        same for every compute of this engine, see :mod:`~infl_array.engine.tiling`)."""
        self.task_lock = threading.Lock()
        """Held by a fill task running on this engine (tasks of one worker run one at a time)."""

    # ------------------------------------------------------------------ geometry
    @property
    def shape(self) -> tuple[int, int]:
        return self.grid.shape

    @property
    def block_shape(self) -> tuple[int, int]:
        return self.grid.block_shape

    @property
    def grid_shape(self) -> tuple[int, int]:
        return self.grid.grid_shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.grid.dtype

    @property
    def can_compute(self) -> bool:
        """Whether missing blocks can be computed (a source is attached)."""
        return self.source is not None

    def all_blocks(self) -> list[BlockCoords]:
        """Every block of the grid, row-major."""
        g0, g1 = self.grid_shape
        return [(i, j) for i in range(g0) for j in range(g1)]

    def stats(self) -> ArrayStats:
        """What this engine, its source and its fills' workers computed so far."""
        counts = dict(self.source.stats) if self.source is not None else {}
        return ArrayStats.of(self.blocks_computed, counts, self._worker_counts)

    def add_worker_stats(self, counts: Mapping[str, int]) -> None:
        """Add what a fill's worker computed (fields of :class:`ArrayStats`)."""
        for key, value in counts.items():
            self._worker_counts[key] = self._worker_counts.get(key, 0) + int(value)

    # ------------------------------------------------------------------ block state
    def refresh(self) -> set[BlockCoords]:
        """Read which blocks are in the store now (one listing); returns them."""
        self.keeper.known = self.grid.list_computed()
        return set(self.keeper.known)

    def computed_mask(self) -> np.ndarray:
        """Boolean array of ``grid_shape``: which blocks are in the store."""
        out = np.zeros(self.grid_shape, dtype=bool)
        known = self.refresh()
        if known:
            idx = np.array(sorted(known), dtype=np.int64)
            out[idx[:, 0], idx[:, 1]] = True
        return out

    def missing(self) -> list[BlockCoords]:
        """Blocks not yet in the store, row-major."""
        known = self.refresh()
        return [c for c in self.all_blocks() if c not in known]

    def mark_computed(self, coords: BlockCoords, by_us: bool = True) -> None:
        """Record that ``coords`` is in the store (written by this engine when ``by_us``)."""
        self.keeper.mark(coords)
        self.blocks_computed += by_us

    def ensure(self, blocks: Iterable[BlockCoords]) -> int:
        """Make sure every block in ``blocks`` is in the store; returns how many it computed.

        Blocks not known to be stored are looked up (the engine's
        :class:`~infl_array.engine.keeper.BlockKeeper`); threads of one process (dask's
        threaded scheduler, say) compute a block once.
        """
        return self.keeper.ensure(blocks, self._compute_missing)

    def _compute_missing(self, missing: list[BlockCoords]) -> int:
        self.require_source(missing)
        self.grid.check_writable(missing[0])
        bar = counter_bar(len(missing), self.read_progress, "compute", READ_PROGRESS_DELAY_S)
        try:
            return self.compute(missing, on_done=lambda _: bar.update(1))
        finally:
            bar.close()

    # ------------------------------------------------------------------ computing
    def block_values(self, coords: BlockCoords) -> np.ndarray:
        """The checked values of one block from the source (nothing is written)."""
        self.require_source([coords])
        assert self.source is not None
        rows, cols = self.grid.block_bounds(coords)
        return checked_block(
            self.source.compute_block,
            coords,
            range(rows.start, rows.stop),
            range(cols.start, cols.stop),
            self.dtype,
        )

    def recompute(self, coords: BlockCoords) -> None:
        """Compute one block and write it to the store, whether or not it was there."""
        values = self.block_values(coords)
        self.grid.write_block(coords, values)
        self.mark_computed(coords)
        self.remember(coords, values)
        self.record_notes()

    def remember(self, coords: BlockCoords, values: np.ndarray) -> None:
        """Cache freshly computed values, when they are exactly what the store holds."""
        if self.store.meta.compression.keepbits is None:
            self.cache.put(coords, values)

    def tiles(self, blocks: list[BlockCoords]) -> list[list[BlockCoords]]:
        """``blocks`` cut into the tiles they are computed in (:mod:`~infl_array.engine.tiling`;
        a subclass may regroup them, as the top-k arrays do). Sets :attr:`column_group`."""
        tiles, self.column_group = compute_tiles(
            blocks, self.grid, capabilities(self.source).factor_reuse
        )
        return tiles

    def compute(
        self,
        blocks: list[BlockCoords],
        on_done: Callable[[BlockCoords], None] | None = None,
        share: bool = False,
        cache_values: bool = True,
    ) -> int:
        """Compute and store ``blocks``, tile by tile; returns how many this call wrote.

        See :func:`infl_array.engine.work.compute_blocks`: with ``share`` (fills) the work is
        shared with other fillers of the store through claims (not on an in-process store, which
        no other process can fill); ``cache_values`` (reads) puts computed blocks in the
        decoded-block cache; ``on_done(coords)`` is called for every block in the store after.
        """

        def finished(coords: BlockCoords, values: np.ndarray | None) -> None:
            self.mark_computed(coords, by_us=values is not None)
            if cache_values and values is not None:
                self.remember(coords, values)
            if on_done is not None:
                on_done(coords)

        reuse = capabilities(self.source).factor_reuse
        steps = BlockSteps(
            values=self.block_values,
            write=self.grid.write_run,
            stored=self.grid.has_blocks,
            prefetch=lambda tile: prefetch_tile(
                tile, self.grid, reuse, self.column_group, blocks_kept=cache_values
            ),
            finished=finished,
            budget=self.budget,
        )
        # an in-process store: no other process can fill it, so nothing to share
        sharing = Sharing.of(self.grid) if share and not self.store.is_process_local else None
        done = compute_blocks(self.tiles(blocks), steps, sharing)
        self.record_notes()
        return done

    def record_notes(self) -> None:
        """Record the source's new or changed notes (:mod:`infl_array.storage.notes`)."""
        found = self.source.notes() if self.source is not None else {}
        new = {k: v for k, v in found.items() if self._noted.get(k) != v}
        if new:
            write_notes(self.store.matrix.zarr_store, new)
            self._noted.update(new)

    # ------------------------------------------------------------------ reading
    def _from_cache(self, blocks: list[BlockCoords]) -> bool:
        if self.cache.max_bytes <= 0:
            return False
        return len(blocks) <= SMALL_READ_BLOCKS or all(b in self.cache for b in blocks)

    def cached_block(self, coords: BlockCoords) -> np.ndarray:
        """A decoded block from the cache, decoding (and caching) it when absent."""
        block = self.cache.get(coords)
        if block is None:
            block = self.grid.read_block(coords)
            self.cache.put(coords, block)
        return block

    def read_block(self, coords: BlockCoords) -> np.ndarray:
        """The values of one block (read-only), computing it first if it is missing.

        A block already in the cache is taken from it; others are decoded without filling the
        cache (streams visit each block once).
        """
        self.ensure([coords])
        cached = self.cache.get(coords)
        return cached if cached is not None else self.grid.read_block(coords)

    def read(self, plan: ReadPlan, rows: Any = None, cols: Any = None) -> np.ndarray:
        """The result of a planned read, computing its missing blocks first.

        Small reads, and reads whose blocks are all cached, are assembled from the cache;
        others go to zarr in one call (``rows``/``cols`` are the outer selection, or the point
        coordinates for a point read).
        """
        blocks = plan.blocks
        self.ensure(blocks)
        if self._from_cache(blocks):
            return assemble(plan, self.cached_block, self.dtype)
        if len(plan.out_shape) == 1:
            return self.grid.read_coordinates(rows, cols, blocks)
        return self.grid.read_region(rows, cols, blocks)

    def read_outer(self, rows: AxisSel, cols: AxisSel) -> np.ndarray:
        """``full[rows][:, cols]`` (the :class:`~infl_array.arrays.indexing.Reader` protocol)."""
        return self.read(plan_outer(rows, cols, self.shape, self.block_shape), rows, cols)

    def read_points(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``full[rows, cols]`` for 1-D point coordinates (the ``Reader`` protocol)."""
        return self.read(plan_points(rows, cols, self.block_shape), rows, cols)

    def iter_blocks(self) -> Iterator[tuple[BlockProjection, np.ndarray]]:
        """Every block with its projection, row-major, after computing the missing ones.

        Memory: one decoded block at a time (plus the cache).
        """
        plan = plan_whole(self.shape, self.block_shape)
        self.ensure(plan.blocks)
        for projection in plan.projections:
            yield projection, self.read_block(projection.coords)

    # ------------------------------------------------------------------ integrity
    def verify(self, progress: bool = False) -> list[BlockCoords]:
        """Blocks whose stored bytes fail their checksum or do not decode, sorted."""
        blocks = sorted(self.refresh())
        bar = progress_bar(blocks, progress, "verify")
        return [c for c in bar if not self.grid.verify_block(c)]

    # ------------------------------------------------------------------ pickling (workers)
    def __getstate__(self) -> dict[str, Any]:
        if self.store.is_process_local:
            raise TypeError(
                "this array lives in an in-process store and cannot be sent to other "
                "processes; use a directory path or URL as the store for workers or dask."
            )
        return {
            "spec": self.store.spec,
            "storage_options": self.store.storage_options,
            "grid": self.grid.name,
            "source": self.source,
            "missing_fix": self.missing_fix,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        store, grid = _reopen(state)
        self.__init__(  # type: ignore[misc]
            store, grid, state["source"], missing_fix=state["missing_fix"]
        )


def _reopen(state: dict[str, Any]) -> tuple[InfluenceStore, BlockGrid]:
    """In a worker: the store and the array a pickled engine names, opened again."""
    store = InfluenceStore.open(
        state["spec"],
        read_only=state["source"] is None,
        storage_options=state["storage_options"],
    )
    grid = store.grid(state["grid"])
    if grid is None:
        raise FileNotFoundError(
            f"the array {state['grid']!r} is gone from the store {store.where}; was the "
            "store replaced while workers were running?"
        )
    return store, grid
