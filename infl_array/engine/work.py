"""Computing a set of blocks: tile by tile, writes overlapped, work shared with other fillers.

:func:`compute_blocks` runs the blocks of an engine (anything with the :class:`Worker` members)
in its tiles (:func:`~infl_array.engine.plan.plan_tiles`), column by column. Checked blocks go to a
writer thread (compression and the atomic chunk write release the GIL), with at most
:data:`MAX_WRITES_IN_FLIGHT` blocks in flight, so memory stays bounded; a block counts as
computed once its write has finished.

When the work is *shared* (``fill``: other processes or machines may be filling the same store),
each block is checked again just before it is computed, and claimed first
(:mod:`infl_array.storage.claims`), one block column of a tile at a time: a filler skips blocks that
a live filler claimed, so concurrent fillers spread over different columns, and comes back to
them at the end, taking over those whose claim expired (their filler died) and waiting for the
others to appear in the store. So a shared call returns only when every block it was given is
in the store.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import groupby
from typing import Protocol

import numpy as np

from infl_array.errors import add_note
from infl_array.storage.claims import ClaimBook
from infl_array.storage.grid import BlockCoords, BlockGrid, write_error
from infl_array.storage.layout import block_claim

__all__ = ["Worker", "compute_blocks"]

MAX_WRITES_IN_FLIGHT = 4
"""Computed blocks waiting for (or in) their write at most."""

POLL_S = (0.05, 1.0)
"""First and longest wait between looks at blocks other fillers hold."""


class Worker(Protocol):
    """What :func:`compute_blocks` needs (:class:`~infl_array.engine.block_engine.BlockEngine`)."""

    grid: BlockGrid

    def tiles(self, blocks: list[BlockCoords]) -> list[list[BlockCoords]]: ...

    def prefetch(self, tile: list[BlockCoords]) -> None: ...

    def block_values(self, coords: BlockCoords) -> np.ndarray: ...

    def mark_computed(self, coords: BlockCoords, by_us: bool = True) -> None: ...

    def remember(self, coords: BlockCoords, values: np.ndarray) -> None: ...


class _Run:
    """One call of :func:`compute_blocks`: its writer pipeline and its claims."""

    def __init__(
        self,
        worker: Worker,
        writer: ThreadPoolExecutor,
        on_done: Callable[[BlockCoords], None] | None,
        claims: ClaimBook | None,
        cache_values: bool,
    ) -> None:
        self.worker, self.writer, self.on_done = worker, writer, on_done
        self.claims, self.cache_values = claims, cache_values
        self.pending: deque[tuple[BlockCoords, Future[None], np.ndarray]] = deque()
        self.written = 0

    def done(self, coords: BlockCoords, by_us: bool) -> None:
        self.worker.mark_computed(coords, by_us=by_us)
        if self.claims is not None:
            self.claims.release(block_claim(coords))
        if self.on_done is not None:
            self.on_done(coords)

    def compute(self, coords: BlockCoords) -> None:
        values = self.worker.block_values(coords)
        future = self.writer.submit(self.worker.grid.write_block, coords, values)
        self.pending.append((coords, future, values))
        while len(self.pending) >= MAX_WRITES_IN_FLIGHT:
            self.finish_one()

    def finish_one(self) -> None:
        coords, future, values = self.pending.popleft()
        future.result()
        if self.cache_values:
            self.worker.remember(coords, values)
        self.written += 1
        self.done(coords, by_us=True)

    def finish_all(self) -> None:
        while self.pending:
            self.finish_one()

    def abandon(self) -> int:
        """After an error: let submitted writes complete; count the blocks they stored."""
        kept = 0
        for coords, future, _ in self.pending:
            if future.exception() is None:
                self.worker.mark_computed(coords)
                kept += 1
        return kept


def compute_blocks(
    worker: Worker,
    blocks: list[BlockCoords],
    on_done: Callable[[BlockCoords], None] | None = None,
    share: bool = False,
    cache_values: bool = True,
) -> int:
    """Compute and store ``blocks`` (see the module docstring); returns how many it wrote.

    ``on_done(coords)`` is called for every block that is in the store afterwards (written by
    this call or, when sharing, found there). ``cache_values`` hands computed values to
    ``worker.remember`` (reads cache them; fills do not).
    """
    if not blocks:
        return 0
    grid = worker.grid
    claims = ClaimBook(grid.zarr_store, grid.layout.claims_prefix) if share else None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="infl-array-writer") as writer:
        run = _Run(worker, writer, on_done, claims, cache_values)
        try:
            deferred: list[BlockCoords] = []
            for tile in worker.tiles(blocks):
                if claims is None:
                    worker.prefetch(tile)
                    for coords in tile:
                        run.compute(coords)
                else:
                    deferred += _shared_tile(run, claims, tile)
            run.finish_all()
            if claims is not None:
                _finish_deferred(run, claims, deferred)
        except KeyboardInterrupt as exc:
            kept = run.written + run.abandon()
            add_note(
                exc,
                f"infl_array: interrupted; {kept} of the {len(blocks)} blocks being computed "
                "were finished and are kept in the store. Nothing is lost: read again or "
                "call arr.fill() to compute only what is still missing.",
            )
            raise
        except BaseException:
            run.abandon()
            raise
        finally:
            if claims is not None:
                claims.close()
    return run.written


def _claim(claims: ClaimBook, grid: BlockGrid, coords: BlockCoords) -> str:
    """Claim a block: ``"mine"``, ``"held"`` (another filler's) or ``"present"`` (stored).

    A block another filler wrote (and released) between our listing and our claim is found by
    one more look after claiming. A failed claim write (full disk, no permission) names the
    block.
    """
    try:
        if not claims.try_claim(block_claim(coords)):
            return "held"
    except OSError as exc:
        raise write_error(exc, coords, grid.where) from exc
    return "present" if grid.has_blocks([coords]) else "mine"


def _settle(run: _Run, claims: ClaimBook, coords: BlockCoords, present: set[BlockCoords]) -> str:
    """Claim a block not listed as ``present``; a block found stored is marked done."""
    state = "present" if coords in present else _claim(claims, run.worker.grid, coords)
    if state == "present":
        run.done(coords, by_us=False)
    return state


def _shared_tile(run: _Run, claims: ClaimBook, tile: list[BlockCoords]) -> list[BlockCoords]:
    """Compute the blocks of a tile this filler can claim, column by column; returns the rest."""
    grid, deferred, prefetched = run.worker.grid, [], False
    for _, column in groupby(tile, key=lambda c: c[1]):
        blocks = list(column)
        present = grid.has_blocks(blocks)
        mine = []
        for coords in blocks:
            state = _settle(run, claims, coords, present)
            if state == "mine":
                mine.append(coords)
            elif state == "held":
                deferred.append(coords)
        if mine and not prefetched:
            run.worker.prefetch(tile)
            prefetched = True
        for coords in mine:
            run.compute(coords)
    return deferred


def _finish_deferred(run: _Run, claims: ClaimBook, deferred: list[BlockCoords]) -> None:
    """Wait for blocks other fillers hold; take over those whose claim expired."""
    wait = POLL_S[0]
    while deferred:
        present = run.worker.grid.has_blocks(deferred)
        still = []
        for coords in deferred:
            state = _settle(run, claims, coords, present)
            if state == "mine":
                run.compute(coords)
            elif state == "held":
                still.append(coords)
        run.finish_all()
        deferred = still
        if deferred:
            time.sleep(wait)
            wait = min(2 * wait, POLL_S[1])
