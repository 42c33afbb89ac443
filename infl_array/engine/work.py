"""Computing a set of blocks: tile by tile, writes overlapped, work shared with other fillers.

:func:`compute_blocks` runs planned tiles (:func:`~infl_array.engine.plan.plan_tiles`) through plain
callables (:class:`BlockSteps`): it knows nothing of engines, sources or stores. Checked
blocks go to a writer thread (compression and the atomic chunk writes release the GIL) in
*runs*: consecutive blocks down a block column or along a block row, as tiles produce them
(:func:`~infl_array.storage.grid.extends_run`), up to :data:`WRITE_RUN_BLOCKS` blocks or
:data:`WRITE_RUN_BYTES`, written with one zarr call (zarr encodes and stores a call's chunks
concurrently, each chunk atomically: a call per block costs several times more for small
blocks). A block of :data:`WRITE_ALONE_BYTES` or more is written alone: a run of it would
save little of a call's cost and copy every block into the run's buffer. At most
:data:`MAX_RUNS_IN_FLIGHT` runs wait for the writer beside the one being gathered (fewer
when the memory budget, :mod:`infl_array.engine.budget`, has no room for their blocks), so
memory stays bounded; a block counts as computed once its run's write has finished.

When the work is *shared* (``fill``: other processes or machines may be filling the same
store), blocks are claimed (:mod:`infl_array.storage.claims`) a unit at a time
(:class:`~infl_array.engine.plan.ClaimUnits`: aligned groups of blocks, the same for every filler of
the store), when the unit's first block comes up: its blocks are checked in the store, the
unit is claimed, and its blocks checked again. A filler skips the units a live filler claimed,
so concurrent fillers spread over different units, and comes back to them at the end, taking
over those whose claim expired (their filler died) and waiting for the others to appear in the
store. A unit's claim is released once every block this call needs of it is in the store. So a
shared call returns only when every block it was given is in the store.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from infl_array.engine.budget import Budget
from infl_array.engine.plan import ClaimUnits
from infl_array.errors import add_note
from infl_array.storage.claims import ClaimBook
from infl_array.storage.grid import (
    WRITE_RUN_BYTES,
    BlockCoords,
    BlockGrid,
    extends_run,
    write_error,
)

__all__ = [
    "MAX_RUNS_IN_FLIGHT",
    "POLL_S",
    "WRITE_ALONE_BYTES",
    "WRITE_RUN_BLOCKS",
    "BlockSteps",
    "Sharing",
    "compute_blocks",
]

WRITE_RUN_BLOCKS = 64
"""Blocks written with one zarr call at most (a run: see :func:`compute_blocks`)."""

WRITE_ALONE_BYTES = 2 << 20
"""A block of this many bytes or more is written alone, not in a run (2 MiB: a run would hold
fewer than four such blocks, and copying them into it costs more than the calls it saves)."""

MAX_RUNS_IN_FLIGHT = 2
"""Runs handed to the writer and not yet written, at most (beside the open run)."""

WRITES = "blocks waiting for their write"
"""What blocks in flight are held as in the memory budget."""

POLL_S = (0.05, 1.0)
"""First and longest wait between looks at blocks other fillers hold."""


@dataclass(frozen=True, slots=True)
class BlockSteps:
    """The plain callables :func:`compute_blocks` computes blocks with.

    Attributes
    ----------
    values : callable
        ``values(coords)``: the checked values of one block (nothing written).
    write : callable
        ``write(coords, values)``: store a run of blocks (lists of their coordinates and
        values), each block atomically (run on the writer thread).
    stored : callable
        ``stored(blocks)``: the subset of ``blocks`` in the store now.
    prefetch : callable
        ``prefetch(tile)``: called before the first block of a tile is computed.
    finished : callable
        ``finished(coords, values)``: ``coords`` is in the store; ``values`` are what this
        call wrote, or None when another filler wrote it.
    budget : Budget or None
        The memory budget blocks waiting for their write are held in.
    """

    values: Callable[[BlockCoords], np.ndarray]
    write: Callable[[list[BlockCoords], list[np.ndarray]], None]
    stored: Callable[[list[BlockCoords]], set[BlockCoords]]
    prefetch: Callable[[list[BlockCoords]], None]
    finished: Callable[[BlockCoords, np.ndarray | None], None]
    budget: Budget | None = None


@dataclass(frozen=True, slots=True)
class Sharing:
    """How a call shares its work with other fillers of the store.

    Attributes
    ----------
    book : ClaimBook
        This filler's claims on the store (closed when the call returns).
    units : ClaimUnits
        The grid's claim units.
    where : str
        The store, as messages name it.
    """

    book: ClaimBook
    units: ClaimUnits
    where: str

    @classmethod
    def of(cls, grid: BlockGrid) -> Sharing:
        """A new claim book on ``grid``'s claims and the grid's claim units."""
        book = ClaimBook(grid.zarr_store, grid.layout.claims_prefix)
        return cls(book, ClaimUnits.for_grid(grid.grid_shape), grid.where)


class _Writes:
    """The writer pipeline of one :func:`compute_blocks` call (see the module docstring)."""

    def __init__(self, steps: BlockSteps, writer: ThreadPoolExecutor) -> None:
        self.steps, self.writer = steps, writer
        self.run: list[tuple[BlockCoords, np.ndarray]] = []  # computed, not yet submitted
        self.run_bytes = 0
        self.pending: deque[tuple[list[tuple[BlockCoords, np.ndarray]], Future[None]]] = deque()
        self.written = 0
        self.on_written: Callable[[BlockCoords], None] = lambda coords: None

    def compute(self, coords: BlockCoords) -> None:
        values = self.steps.values(coords)
        alone = values.nbytes >= WRITE_ALONE_BYTES
        if self.run and (alone or not extends_run([c for c, _ in self.run], coords)):
            self.submit()
        self._hold(values.nbytes)
        self.run.append((coords, values))
        self.run_bytes += values.nbytes
        if alone or len(self.run) >= WRITE_RUN_BLOCKS or self.run_bytes >= WRITE_RUN_BYTES:
            self.submit()

    def submit(self) -> None:
        """Hand the open run to the writer, after the oldest runs in flight are written."""
        if not self.run:
            return
        while len(self.pending) >= MAX_RUNS_IN_FLIGHT:
            self.finish_one()
        self.submit_now()

    def submit_now(self) -> None:
        """Hand the open run (if any) to the writer."""
        if not self.run:
            return
        run, self.run, self.run_bytes = self.run, [], 0
        coords, values = [c for c, _ in run], [v for _, v in run]
        self.pending.append((run, self.writer.submit(self.steps.write, coords, values)))

    def _hold(self, nbytes: int) -> None:
        """Hold a block waiting for its write in the budget: when the budget has no room for
        it, earlier runs are written first (the open one too); alone, it is refused clearly."""
        budget = self.steps.budget
        if budget is None:
            return
        while not budget.try_reserve(nbytes, WRITES, headroom=False):
            if self.pending:
                self.finish_one()
            elif self.run:
                self.submit_now()
            else:
                budget.reserve(nbytes, WRITES, "raise memory_budget, or use a smaller block_shape.")
                return

    def _release(self, run: list[tuple[BlockCoords, np.ndarray]]) -> None:
        if self.steps.budget is not None:
            self.steps.budget.release(sum(values.nbytes for _, values in run), WRITES)

    def finish_one(self) -> None:
        run, future = self.pending.popleft()
        try:
            future.result()
        finally:
            self._release(run)
        for coords, values in run:
            self.written += 1
            self.steps.finished(coords, values)
            self.on_written(coords)

    def finish_all(self) -> None:
        self.submit()
        while self.pending:
            self.finish_one()

    def abandon(self) -> int:
        """After an error: write the open run (its blocks are computed and checked), let
        every write complete; count the blocks they stored."""
        kept = 0
        self.submit_now()
        for run, future in self.pending:
            failed = future.exception() is not None  # waits for the write
            self._release(run)
            if not failed:
                for coords, values in run:
                    self.steps.finished(coords, values)
                    kept += 1
        return kept


class _SharedUnits:
    """The claims one shared call takes, a unit at a time (see the module docstring)."""

    def __init__(self, sharing: Sharing, steps: BlockSteps, blocks: list[BlockCoords]) -> None:
        self.sharing, self.steps = sharing, steps
        self.book, self.units = sharing.book, sharing.units
        self.left = Counter(self.units.unit_of(c) for c in blocks)  # blocks not yet stored
        self.members: dict[BlockCoords, list[BlockCoords]] = {}
        for coords in blocks:
            self.members.setdefault(self.units.unit_of(coords), []).append(coords)
        self.state: dict[BlockCoords, str] = {}
        self.stored: set[BlockCoords] = set()

    def settle(self, coords: BlockCoords) -> str:
        """``"mine"`` (compute it), ``"held"`` (another filler's unit) or ``"stored"``."""
        unit = self.units.unit_of(coords)
        if unit not in self.state:
            self.state[unit] = self.claim(unit)
        return "stored" if coords in self.stored else self.state[unit]

    def claim(self, unit: BlockCoords) -> str:
        """Claim a unit whose blocks are not all stored: ``"mine"``, ``"held"`` or ``"stored"``.

        Blocks another filler stored (and released) between our look and our claim are found
        by one more look after claiming. A failed claim write (full disk, no permission)
        names the unit's first block.
        """
        if not self._look(unit):
            return "stored"
        try:
            if not self.book.try_claim(self.units.name(unit)):
                return "held"
        except OSError as exc:
            raise write_error(exc, self.members[unit][0], self.sharing.where) from exc
        self.state[unit] = "mine"  # so that a unit found complete now is released at once
        return "mine" if self._look(unit) else "stored"

    def _look(self, unit: BlockCoords) -> bool:
        """Mark the unit's blocks found in the store as done; whether any is still missing."""
        todo = [c for c in self.members[unit] if c not in self.stored]
        for coords in sorted(self.steps.stored(todo)):
            self.steps.finished(coords, None)
            self.done(coords)
        return any(c not in self.stored for c in todo)

    def done(self, coords: BlockCoords) -> None:
        """``coords`` is in the store: release its unit once all of the unit's blocks are."""
        self.stored.add(coords)
        unit = self.units.unit_of(coords)
        self.left[unit] -= 1
        if self.left[unit] == 0 and self.state.get(unit) == "mine":
            self.book.release(self.units.name(unit))

    def retry(self, unit: BlockCoords) -> list[BlockCoords]:
        """Try a held unit again; returns its blocks to compute now (none while still held)."""
        self.state[unit] = self.claim(unit)
        if self.state[unit] != "mine":
            return []
        return [c for c in self.members[unit] if c not in self.stored]


def compute_blocks(
    tiles: list[list[BlockCoords]],
    steps: BlockSteps,
    sharing: Sharing | None = None,
) -> int:
    """Compute and store the blocks of ``tiles`` (see the module docstring); returns how many
    this call wrote.

    ``steps.finished`` is called for every block that is in the store afterwards (written by
    this call or, when sharing, found there). With ``sharing`` the work is shared with other
    fillers through claims; its claim book is closed on return.
    """
    blocks = [c for tile in tiles for c in tile]
    if not blocks:
        return 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="infl-array-writer") as writer:
        writes = _Writes(steps, writer)
        try:
            if sharing is None:
                _compute_tiles(writes, tiles)
            else:
                _compute_shared(writes, tiles, _SharedUnits(sharing, steps, blocks))
        except KeyboardInterrupt as exc:
            kept = writes.written + writes.abandon()
            add_note(
                exc,
                f"infl_array: interrupted; {kept} of the {len(blocks)} blocks being computed "
                "were finished and are kept in the store. Nothing is lost: read again or "
                "call arr.fill() to compute only what is still missing.",
            )
            raise
        except BaseException:
            writes.abandon()
            raise
        finally:
            if sharing is not None:
                sharing.book.close()
    return writes.written


def _compute_tiles(writes: _Writes, tiles: list[list[BlockCoords]]) -> None:
    for tile in tiles:
        writes.steps.prefetch(tile)
        for coords in tile:
            writes.compute(coords)
    writes.finish_all()


def _compute_shared(writes: _Writes, tiles: list[list[BlockCoords]], shared: _SharedUnits) -> None:
    """Compute the blocks of units this filler can claim; then wait for (or take over) the rest."""
    writes.on_written = shared.done
    held: dict[BlockCoords, None] = {}
    for tile in tiles:
        prefetched = False
        for coords in tile:
            state = shared.settle(coords)
            if state == "held":
                held[shared.units.unit_of(coords)] = None
            elif state == "mine":
                if not prefetched:
                    writes.steps.prefetch(tile)
                    prefetched = True
                writes.compute(coords)
    writes.finish_all()
    _finish_held(writes, shared, list(held))


def _finish_held(writes: _Writes, shared: _SharedUnits, held: list[BlockCoords]) -> None:
    """Wait for units other fillers hold; take over those whose claim expired."""
    wait = POLL_S[0]
    while held:
        still = []
        for unit in held:
            taken = sorted(shared.retry(unit), key=lambda c: (c[1], c[0]))  # as tiles: by column
            if taken:
                writes.steps.prefetch(taken)
            for coords in taken:
                writes.compute(coords)
            if shared.state[unit] == "held":
                still.append(unit)
        writes.finish_all()
        held = still
        if held:
            time.sleep(wait)
            wait = min(2 * wait, POLL_S[1])
