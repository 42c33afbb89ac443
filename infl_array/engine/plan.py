"""Planning: which blocks a selection touches, and where each block's values go.

Only numpy and the block geometry of :mod:`infl_array.storage.grid` (``BlockCoords``,
``block_range``) are known here. A per-axis selection is either a positive-step slice inside
the axis or a sorted, unique 1-D int64 array (an :data:`AxisSel`). The blocks touched on an
axis are exactly the blocks that hold at least one selected index, so a read computes no block
it does not need.

A :class:`ReadPlan` lists, for every touched block, a :class:`BlockProjection` (in the spirit of
zarr's chunk projections): the block's coordinates, the selection inside the block, the
selection in the output, and whether the block is read whole. Reads assemble from it, fills
take its blocks, reductions walk the plan of the whole array.

Computing is planned here too, as values with no effects: :func:`plan_tiles` (and
:func:`plan_budget_tiles`, within a factor memo's budget) cuts a set of blocks into the tiles
in which they are computed (see :mod:`infl_array.engine.block_engine`); :class:`ClaimUnits`
are the groups of blocks that fillers sharing a store claim at once
(:mod:`infl_array.engine.work`); :func:`plan_fill` cuts a fill into the :class:`Task` phases of
a :class:`FillPlan` that executors run (:mod:`infl_array.executors`).

Planning costs O(touched blocks) for slices, O(len(selection)) for index arrays, and
O(points log points) for point reads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import groupby
from typing import Any, TypeAlias, TypeVar

import numpy as np

from infl_array.storage.grid import BlockCoords, block_range
from infl_array.storage.layout import unit_claim

__all__ = [
    "AxisSel",
    "BlockCoords",
    "BlockProjection",
    "ReadPlan",
    "axis_blocks",
    "plan_outer",
    "plan_points",
    "plan_whole",
    "plan_tiles",
    "plan_budget_tiles",
    "runs",
    "row_runs",
    "col_runs",
    "CLAIM_UNITS_MIN",
    "CLAIM_UNIT_MAX_BLOCKS",
    "ClaimUnits",
    "TASKS_PER_WORKER",
    "Task",
    "FillPlan",
    "FactorSides",
    "plan_fill",
]

T = TypeVar("T")

AxisSel: TypeAlias = slice | np.ndarray
"""A normalised selection (the input of planning; built by
:mod:`infl_array.arrays.indexing`) along one axis of length ``n``.

Either a slice with int ``start``, ``stop``, ``step`` where ``0 <= start <= stop <= n`` and
``step >= 1``, or a 1-D int64 array, sorted ascending, without duplicates, all in ``[0, n)``.
"""


@dataclass(frozen=True, slots=True)
class BlockProjection:
    """One touched block of a read.

    Attributes
    ----------
    coords : tuple of int
        The block's ``(i, j)``.
    block_sel : tuple
        Selection inside the block: per axis a slice or an index array (outer reads), or two
        equal-length index arrays of points (point reads).
    out_sel : tuple
        Where the selected values go in the output: two slices (outer reads), or one index
        array of output positions (point reads).
    is_whole : bool
        Whether the read takes every value of the block, in order.
    """

    coords: BlockCoords
    block_sel: tuple[Any, Any]
    out_sel: tuple[Any, ...]
    is_whole: bool

    def __post_init__(self) -> None:
        if len(self.out_sel) not in (1, 2):
            raise ValueError(f"out_sel must hold one or two selections; got {self.out_sel!r}")


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """The blocks a read touches and where their values go.

    Attributes
    ----------
    out_shape : tuple of int
        Shape of the read's result (2-D for outer reads, 1-D for point reads).
    projections : tuple of BlockProjection
        One per touched block, row-major.
    """

    out_shape: tuple[int, ...]
    projections: tuple[BlockProjection, ...]

    @property
    def blocks(self) -> list[BlockCoords]:
        """The touched blocks, row-major."""
        return [p.coords for p in self.projections]


def axis_blocks(sel: Any, block_len: int) -> np.ndarray:
    """Sorted block indices holding the selected indices of one axis.

    Examples
    --------
    >>> axis_blocks(slice(5, 25, 1), 10).tolist()
    [0, 1, 2]
    >>> axis_blocks(slice(0, 100, 30), 10).tolist()
    [0, 3, 6, 9]
    >>> axis_blocks(np.array([3, 4, 57]), 10).tolist()
    [0, 5]
    """
    if isinstance(sel, slice):
        start, stop, step = sel.start, sel.stop, sel.step or 1
        if stop <= start:
            return np.empty(0, dtype=np.int64)
        last = start + ((stop - 1 - start) // step) * step
        if step <= block_len:
            return np.arange(start // block_len, last // block_len + 1, dtype=np.int64)
        return np.unique(np.arange(start, last + 1, step, dtype=np.int64) // block_len)
    return np.unique(np.asarray(sel, dtype=np.int64) // block_len)


def _axis_part(sel: Any, block: range) -> tuple[slice, Any, bool]:
    """The part of one axis's selection inside one block's indices ``[lo, hi)``.

    Returns ``(output positions, local indices into the block, whole)``; output positions are
    contiguous because the selection is ascending; ``whole`` says every index of the block is
    selected, in order.
    """
    lo, hi = block.start, block.stop
    if isinstance(sel, slice):
        start, stop, step = sel.start, sel.stop, sel.step
        k_lo = max(0, -(-(lo - start) // step))
        k_hi = max(k_lo, -(-(min(hi, stop) - start) // step))
        first = start + k_lo * step - lo
        local = slice(first, first + (k_hi - k_lo) * step, step)
        return slice(k_lo, k_hi), local, bool(step == 1 and k_hi - k_lo == hi - lo)
    a = int(np.searchsorted(sel, lo)), int(np.searchsorted(sel, hi))
    return slice(*a), sel[a[0] : a[1]] - lo, bool(a[1] - a[0] == hi - lo)


def plan_outer(
    rows: Any, cols: Any, shape: tuple[int, int], block_shape: tuple[int, int]
) -> ReadPlan:
    """The plan of the outer selection ``full[rows][:, cols]``.

    Examples
    --------
    >>> plan = plan_outer(slice(1, 4, 1), slice(0, 3, 1), (6, 6), (2, 3))
    >>> plan.blocks
    [(0, 0), (1, 0)]
    >>> [(p.out_sel[0], p.is_whole) for p in plan.projections]
    [(slice(0, 1, None), False), (slice(1, 3, None), True)]
    """
    (br, bc), (n0, n1) = block_shape, shape
    row_blocks, col_blocks = axis_blocks(rows, br).tolist(), axis_blocks(cols, bc).tolist()
    row_parts = [(i, _axis_part(rows, block_range(i, br, n0))) for i in row_blocks]
    col_parts = [(j, _axis_part(cols, block_range(j, bc, n1))) for j in col_blocks]
    projections = tuple(
        BlockProjection(
            coords=(i, j),
            block_sel=(r_loc, c_loc),
            out_sel=(r_out, c_out),
            is_whole=r_whole and c_whole,
        )
        for i, (r_out, r_loc, r_whole) in row_parts
        for j, (c_out, c_loc, c_whole) in col_parts
    )
    out_shape = (_sel_len(rows), _sel_len(cols))
    return ReadPlan(out_shape, projections)


def plan_points(rows: np.ndarray, cols: np.ndarray, block_shape: tuple[int, int]) -> ReadPlan:
    """The plan of the point read ``full[rows, cols]`` (1-D index arrays of equal length).

    Examples
    --------
    >>> plan = plan_points(np.array([0, 5, 1]), np.array([4, 0, 4]), (2, 3))
    >>> [(p.coords, p.out_sel[0].tolist()) for p in plan.projections]
    [((0, 1), [0, 2]), ((2, 0), [1])]
    """
    br, bc = block_shape
    bi, bj = rows // br, cols // bc
    if rows.size == 0:
        return ReadPlan((0,), ())
    n_cols = int(bj.max()) + 1
    flat = bi * n_cols + bj
    order = np.argsort(flat, kind="stable")
    cuts = np.flatnonzero(np.diff(flat[order])) + 1
    projections = []
    for positions in np.split(order, cuts):
        i, j = int(bi[positions[0]]), int(bj[positions[0]])
        local = (rows[positions] - i * br, cols[positions] - j * bc)
        projections.append(BlockProjection((i, j), local, (positions,), is_whole=False))
    return ReadPlan((len(rows),), tuple(projections))


def plan_whole(shape: tuple[int, int], block_shape: tuple[int, int]) -> ReadPlan:
    """The plan of the whole array: every block, read whole, row-major."""
    return plan_outer(slice(0, shape[0], 1), slice(0, shape[1], 1), shape, block_shape)


def _sel_len(sel: Any) -> int:
    if isinstance(sel, slice):
        return len(range(sel.start, sel.stop, sel.step))
    return len(sel)


def plan_tiles(
    blocks: list[BlockCoords], row_bytes: Callable[[int], int] | None, capacity: int
) -> list[list[BlockCoords]]:
    """``blocks`` cut into tiles, each in column-major order.

    A model-backed block ``(i, j)`` needs the test factors of block row ``i`` and the train
    factors of block column ``j``. A tile is a group of block rows whose test factors fit in
    ``capacity`` bytes (``row_bytes(i)`` is the size of block row ``i``'s test factors; at
    least one row per tile), computed against every block column it needs, column by column,
    so each test factor is computed once and each train factor once per tile. Without
    ``row_bytes`` (no factors to reuse) there is one tile, row-major.

    Examples
    --------
    >>> plan_tiles([(0, 0), (0, 1), (1, 0), (1, 1)], lambda i: 10, capacity=20)
    [[(0, 0), (1, 0), (0, 1), (1, 1)]]
    >>> plan_tiles([(0, 0), (0, 1), (1, 0), (1, 1)], lambda i: 30, capacity=20)
    [[(0, 0), (0, 1)], [(1, 0), (1, 1)]]
    """
    ordered = sorted(blocks)
    if row_bytes is None or not ordered:
        return [ordered] if ordered else []
    rows = [(i, [j for _, j in group]) for i, group in groupby(ordered, key=lambda c: c[0])]
    tiles: list[list[tuple[int, list[int]]]] = [[]]
    used = 0
    for i, cols in rows:
        size = row_bytes(i)
        if tiles[-1] and used + size > capacity:
            tiles.append([])
            used = 0
        tiles[-1].append((i, cols))
        used += size
    out: list[list[BlockCoords]] = []
    for tile in tiles:
        wanted = {(i, j) for i, cols in tile for j in cols}
        columns = sorted({j for _, cols in tile for j in cols})
        out.append([(i, j) for j in columns for i, _ in tile if (i, j) in wanted])
    return out


def plan_budget_tiles(
    blocks: list[BlockCoords],
    shape: tuple[int, int],
    block_shape: tuple[int, int],
    row_bytes: float | None,
    memory_budget: int,
    group: int = 1,
) -> list[list[BlockCoords]]:
    """``blocks`` cut into tiles (:func:`plan_tiles`) whose test factors fit a factor memo.

    ``row_bytes`` is the size of one test point's factors (None: no factors to reuse, one
    tile); ``memory_budget`` the memo's bound. While a tile is computed the memo holds its test
    factors and up to two column groups of ``group`` block columns of train factors (counted
    at ``row_bytes`` a point), so the tile's rows get the budget less those two groups.

    Examples
    --------
    >>> four = [(0, 0), (0, 1), (1, 0), (1, 1)]
    >>> plan_budget_tiles(four, (4, 4), (2, 2), 10.0, 100)
    [[(0, 0), (1, 0), (0, 1), (1, 1)]]
    >>> plan_budget_tiles(four, (4, 4), (2, 2), 10.0, 60)
    [[(0, 0), (0, 1)], [(1, 0), (1, 1)]]
    >>> plan_budget_tiles(four, (4, 4), (2, 2), None, 0)
    [[(0, 0), (0, 1), (1, 0), (1, 1)]]
    """
    if row_bytes is None or len(blocks) <= 1:
        return plan_tiles(blocks, None, 0)
    per_point, ((block_rows, block_cols), (n_test, n_train)) = row_bytes, (block_shape, shape)
    capacity = memory_budget - 2 * int(per_point * min(group * block_cols, n_train))

    def rows_bytes(i: int) -> int:
        return int(per_point * len(block_range(i, block_rows, n_test)))

    return plan_tiles(blocks, rows_bytes, capacity)


def runs(items: Iterable[int]) -> list[tuple[int, int]]:
    """Maximal runs ``(first, last)`` of consecutive ints among ``items`` (any order).

    Examples
    --------
    >>> runs([3, 0, 1, 1])
    [(0, 1), (3, 3)]
    """
    out: list[tuple[int, int]] = []
    for i in sorted(set(items)):
        if out and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def col_runs(blocks: list[BlockCoords]) -> list[tuple[int, int]]:
    """Maximal runs ``(first, last)`` of consecutive block columns among ``blocks``.

    >>> col_runs([(0, 0), (1, 1), (3, 3)])
    [(0, 1), (3, 3)]
    """
    return runs(j for _, j in blocks)


def row_runs(blocks: list[BlockCoords]) -> list[tuple[int, int]]:
    """Maximal runs ``(first, last)`` of consecutive block rows among ``blocks``.

    Examples
    --------
    >>> row_runs([(0, 0), (1, 0), (3, 2)])
    [(0, 1), (3, 3)]
    """
    return runs(i for i, _ in blocks)


# ---------------------------------------------------------------------- sharing a fill
CLAIM_UNITS_MIN = 64
"""A grid of at least this many blocks is cut into at least this many claim units."""

CLAIM_UNIT_MAX_BLOCKS = 64
"""Blocks per claim unit at most."""


@dataclass(frozen=True, slots=True)
class ClaimUnits:
    """How fillers of one grid claim its blocks: in aligned units of ``rows x cols`` blocks.

    Fillers sharing a store claim a unit (one claim object) before computing its blocks
    (:mod:`infl_array.engine.work`). The units depend on the grid's shape only, so every filler of a
    store cuts it the same way: a claim costs a few store calls, so a unit of ``k`` blocks
    costs ``1/k`` of that per block, while a grid keeps at least :data:`CLAIM_UNITS_MIN`
    units to share (a grid of fewer blocks is claimed block by block).

    Examples
    --------
    >>> units = ClaimUnits.for_grid((20, 100))
    >>> units
    ClaimUnits(rows=5, cols=6)
    >>> units.unit_of((7, 13)), units.name((1, 2))
    ((1, 2), 'u5x6.1.2')
    >>> ClaimUnits.for_grid((10, 10)), ClaimUnits.for_grid((1, 2000))
    (ClaimUnits(rows=1, cols=1), ClaimUnits(rows=1, cols=31))
    """

    rows: int
    cols: int

    @classmethod
    def for_grid(cls, grid_shape: tuple[int, int]) -> ClaimUnits:
        """The units of a grid of ``grid_shape`` blocks (see the class docstring)."""
        g0, g1 = grid_shape
        per_unit = max(1, min(CLAIM_UNIT_MAX_BLOCKS, (g0 * g1) // CLAIM_UNITS_MIN))
        rows = max(1, min(g0, math.isqrt(per_unit)))
        return cls(rows, max(1, min(g1, per_unit // rows)))

    def unit_of(self, coords: BlockCoords) -> BlockCoords:
        """The unit holding block ``coords``."""
        return coords[0] // self.rows, coords[1] // self.cols

    def name(self, unit: BlockCoords) -> str:
        """The claim name of a unit (:func:`~infl_array.storage.layout.unit_claim`)."""
        return unit_claim((self.rows, self.cols), unit)


# ---------------------------------------------------------------------- fills across workers
TASKS_PER_WORKER = 4
"""Block tasks per worker: enough to balance uneven tasks, few enough to keep factor reads low."""


@dataclass(frozen=True, slots=True)
class Task:
    """One unit of a fill: factor blocks of one side, or a group of matrix blocks.

    Attributes
    ----------
    kind : str
        ``"train"`` or ``"test"`` (factor blocks), or ``"blocks"``.
    items : tuple
        Factor block indices, or block coordinates.
    """

    kind: str
    items: tuple[Any, ...]

    @property
    def n_blocks(self) -> int:
        """Matrix blocks the task completes (for progress).

        >>> Task("blocks", ((0, 0), (0, 1))).n_blocks, Task("train", (0, 1, 2)).n_blocks
        (2, 0)
        """
        return len(self.items) if self.kind == "blocks" else 0


@dataclass(frozen=True, slots=True)
class FillPlan:
    """A fill's tasks in phases: a phase's tasks may run in any order and at once; a phase
    starts when the previous one is done.

    >>> FillPlan.single([(0, 1), (0, 0)])
    FillPlan(phases=((Task(kind='blocks', items=((0, 0), (0, 1))),),))
    """

    phases: tuple[tuple[Task, ...], ...]

    @classmethod
    def single(cls, blocks: list[BlockCoords]) -> FillPlan:
        """One task of every block (a fill in this process: tiles cut the work)."""
        return cls(((Task("blocks", tuple(sorted(blocks))),),))


@dataclass(frozen=True, slots=True)
class FactorSides:
    """The factor blocks a store keeps, per side: None when the side is not kept, else the
    indices of the blocks already stored."""

    train: frozenset[int] | None
    test: frozenset[int] | None


def plan_fill(
    missing: list[BlockCoords], workers: int, factors: FactorSides | None, units: ClaimUnits
) -> FillPlan:
    """The tasks of a fill of ``missing`` across ``workers``, each factor computed once.

    With factors kept in the store, the factor blocks the missing blocks need and the store
    lacks come first, each in exactly one task (train blocks in ``2 * workers`` groups, test
    blocks in ``workers`` contiguous runs, one batched solve each). Then the blocks, in
    groups of whole block columns (each train block in one task; test factors are read from
    the store), or of whole block rows when only the train side is kept. Without factors,
    the blocks are grouped in ``TASKS_PER_WORKER * workers`` runs of claim units, row-major.
    Tasks never split a claim unit, so the tasks of one fill never wait for each other's
    claims.

    Examples
    --------
    >>> blocks = [(i, j) for i in range(2) for j in range(4)]
    >>> one = ClaimUnits(1, 1)
    >>> [[len(t.items) for t in phase] for phase in plan_fill(blocks, 1, None, one).phases]
    [[2, 2, 2, 2]]
    >>> plan = plan_fill(blocks, 2, FactorSides(frozenset({0}), frozenset()), one)
    >>> [(t.kind, t.items) for t in plan.phases[0]]
    [('train', (1,)), ('train', (2,)), ('train', (3,)), ('test', (0,)), ('test', (1,))]
    >>> [sorted({j for _, j in t.items}) for t in plan.phases[1]]
    [[0], [1], [2], [3]]
    >>> [t.items for t in plan_fill(blocks, 1, None, ClaimUnits(2, 2)).phases[0]]
    [((0, 0), (0, 1), (1, 0), (1, 1)), ((0, 2), (0, 3), (1, 2), (1, 3))]
    """
    if factors is None:
        return FillPlan(
            (tuple(_grouped_tasks(missing, units.unit_of, workers * TASKS_PER_WORKER)),)
        )
    rows, cols = sorted({i for i, _ in missing}), sorted({j for _, j in missing})
    factor_tasks: list[Task] = []
    if factors.train is not None:
        todo = [j for j in cols if j not in factors.train]
        factor_tasks += [Task("train", tuple(g)) for g in _split(todo, workers * 2)]
    if factors.test is not None:
        todo = [i for i in rows if i not in factors.test]
        factor_tasks += [Task("test", tuple(g)) for g in _split(todo, workers)]
    by_rows = factors.train is not None and factors.test is None
    axis, unit_len = (0, units.rows) if by_rows else (1, units.cols)
    block_tasks = _grouped_tasks(missing, lambda c: c[axis] // unit_len, workers * TASKS_PER_WORKER)
    return FillPlan(tuple(tuple(p) for p in (factor_tasks, block_tasks) if p))


def _grouped_tasks(
    blocks: list[BlockCoords], key: Callable[[BlockCoords], Any], n: int
) -> list[Task]:
    """``blocks`` in at most ``n`` tasks, each of whole runs of ``key`` values (in order)."""
    groups = _split(sorted({key(c) for c in blocks}), n)
    task_of = {value: k for k, group in enumerate(groups) for value in group}
    items: list[list[BlockCoords]] = [[] for _ in groups]
    for coords in sorted(blocks):
        items[task_of[key(coords)]].append(coords)
    return [Task("blocks", tuple(group)) for group in items]


def _split(items: list[T], n: int) -> list[list[T]]:
    """``items`` in at most ``n`` contiguous groups of nearly equal size.

    >>> _split([1, 2, 3, 4, 5], 2)
    [[1, 2, 3], [4, 5]]
    """
    n = max(1, min(n, len(items)))
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for k in range(n):
        stop = start + size + (k < extra)
        if stop > start:
            out.append(items[start:stop])
        start = stop
    return out
