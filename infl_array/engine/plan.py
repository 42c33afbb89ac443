"""Planning: which blocks a selection touches, and where each block's values go.

Only numpy is known here. A per-axis selection is either a positive-step slice inside the
axis or a sorted, unique 1-D int64 array (an :data:`AxisSel`). The blocks
touched on an axis are exactly the blocks that hold at least one selected index, so a read
computes no block it does not need.

A :class:`ReadPlan` lists, for every touched block, a :class:`BlockProjection` (in the spirit of
zarr's chunk projections): the block's coordinates, the selection inside the block, the
selection in the output, and whether the block is read whole. Reads assemble from it, fills
take its blocks, reductions walk the plan of the whole array. :func:`plan_tiles` cuts a set of
blocks into the tiles in which they are computed (see :mod:`infl_array.engine.block_engine`).

Planning costs O(touched blocks) for slices, O(len(selection)) for index arrays, and
O(points log points) for point reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby
from typing import Any, TypeAlias

import numpy as np

__all__ = [
    "AxisSel",
    "BlockCoords",
    "BlockProjection",
    "ReadPlan",
    "axis_blocks",
    "plan_outer",
    "plan_points",
    "plan_tiles",
    "plan_whole",
    "row_runs",
    "row_tasks",
]

BlockCoords = tuple[int, int]

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


def _axis_part(sel: Any, lo: int, hi: int) -> tuple[slice, Any, bool]:
    """The part of one axis's selection inside ``[lo, hi)``.

    Returns ``(output positions, local indices into the block, whole)``; output positions are
    contiguous because the selection is ascending; ``whole`` says every index of the block is
    selected, in order.
    """
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
    row_parts = [(i, _axis_part(rows, i * br, min((i + 1) * br, n0))) for i in row_blocks]
    col_parts = [(j, _axis_part(cols, j * bc, min((j + 1) * bc, n1))) for j in col_blocks]
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


def row_runs(blocks: list[BlockCoords]) -> list[tuple[int, int]]:
    """Maximal runs ``(first, last)`` of consecutive block rows among ``blocks``.

    Examples
    --------
    >>> row_runs([(0, 0), (1, 0), (3, 2)])
    [(0, 1), (3, 3)]
    """
    runs: list[tuple[int, int]] = []
    for i in sorted({i for i, _ in blocks}):
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def row_tasks(blocks: list[BlockCoords]) -> list[list[BlockCoords]]:
    """``blocks`` grouped by block row, row-major (one task per block row)."""
    return [list(group) for _, group in groupby(sorted(blocks), key=lambda c: c[0])]
