"""Analysis without materialising: reductions, top-k and dask, streamed block by block.

Each function walks the plan of the whole array (:func:`~infl_array.plan.plan_whole`) through
the engine (:meth:`~infl_array.engine.BlockEngine.iter_blocks`, which first computes the
missing blocks, tile by tile), keeping only running results: memory is a few blocks plus the output,
whatever the matrix size. Sums and means accumulate in float64 and are returned in the array's
dtype, as numpy returns them. Ties in arg-reductions and ``top_k`` go to the lower index.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from infl_array.engine import BlockEngine

_REDUCTIONS = ("sum", "mean", "min", "max", "argmin", "argmax")


def normalize_axis(axis: Any, ndim: int = 2) -> int:
    """numpy's axis normalisation (``AxisError`` for a bad axis, ``TypeError`` for a non-int)."""
    try:
        from numpy.lib.array_utils import normalize_axis_index  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.26
        from numpy.core.multiarray import normalize_axis_index  # type: ignore[no-redef]
    if isinstance(axis, bool) or not isinstance(axis, int | np.integer):
        raise TypeError(f"axis must be None or an int; got {type(axis).__name__} {axis!r}.")
    return int(normalize_axis_index(int(axis), ndim))


def reduce(engine: BlockEngine, op: str, axis: Any = None) -> Any:
    """``getattr(np, op)(full, axis=axis)`` computed block by block."""
    assert op in _REDUCTIONS
    ax = None if axis is None else normalize_axis(axis)
    if op in ("sum", "mean"):
        return _sum_mean(engine, op, ax)
    return _extreme(engine, op, ax)


def _sum_mean(engine: BlockEngine, op: str, axis: int | None) -> Any:
    n0, n1 = engine.shape
    out = np.zeros(() if axis is None else (n1 if axis == 0 else n0), dtype=np.float64)
    for projection, values in engine.iter_blocks():
        rows, cols = projection.out_sel
        block = values.astype(np.float64)
        if axis is None:
            out += block.sum()
        elif axis == 0:
            out[cols] += block.sum(axis=0)
        else:
            out[rows] += block.sum(axis=1)
    if op == "mean":
        out = out / (n0 * n1 if axis is None else engine.shape[axis])
    return out.astype(engine.dtype)[()] if axis is None else out.astype(engine.dtype)


def _extreme(engine: BlockEngine, op: str, axis: int | None) -> Any:
    is_max = op.endswith("max")
    better = np.greater if is_max else np.less
    pick = np.argmax if is_max else np.argmin
    n0, n1 = engine.shape
    length = 1 if axis is None else (n1 if axis == 0 else n0)
    best = np.full(length, -np.inf if is_max else np.inf, dtype=np.float64)
    where = np.zeros(length, dtype=np.intp)
    for projection, block in engine.iter_blocks():
        rows, cols = projection.out_sel
        if axis is None:
            local = np.unravel_index(int(pick(block)), block.shape)
            value = block[local]
            flat = (rows.start + int(local[0])) * n1 + cols.start + int(local[1])
            if better(value, best[0]) or (value == best[0] and flat < where[0]):
                best[0], where[0] = value, flat
            continue
        red = 0 if axis == 0 else 1
        values = block.max(axis=red) if is_max else block.min(axis=red)
        positions = pick(block, axis=red) + (rows.start if axis == 0 else cols.start)
        target = cols if axis == 0 else rows
        # blocks arrive in increasing index order along the reduced axis: ties keep the first
        update = better(values, best[target])
        best[target] = np.where(update, values, best[target])
        where[target] = np.where(update, positions, where[target])
    if op.startswith("arg"):
        return np.intp(where[0]) if axis is None else where
    result = best.astype(engine.dtype)
    return result[0] if axis is None else result


def top_k(engine: BlockEngine, k: Any, axis: Any = 1, largest: bool = True) -> tuple[Any, Any]:
    """The ``k`` best values along ``axis`` and their indices; ties go to the lower index."""
    ax = normalize_axis(axis)
    n = engine.shape[ax]
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 0 <= k <= n:
        raise ValueError(
            f"k must be an int in 0..{n} (the length of axis {ax}); got {k!r}. "
            f"Use k <= {n}, or axis={1 - ax} for the other side."
        )
    k = int(k)
    other = engine.shape[1 - ax]
    values = np.empty((other, k), dtype=engine.dtype)
    indices = np.empty((other, k), dtype=np.int64)
    engine.ensure(engine.all_blocks())  # missing blocks first, tile by tile
    g_outer = engine.grid_shape[1 - ax]
    g_inner = engine.grid_shape[ax]
    for outer in range(g_outer):
        best_v: np.ndarray | None = None
        best_i: np.ndarray | None = None
        for inner in range(g_inner):
            coords = (outer, inner) if ax == 1 else (inner, outer)
            rows, cols = engine.grid.block_bounds(coords)
            block = engine.read_block(coords)
            span = cols if ax == 1 else rows
            block = block if ax == 1 else block.T
            idx = np.broadcast_to(np.arange(span.start, span.stop), block.shape)
            if best_v is not None and best_i is not None:
                block = np.concatenate([best_v, block], axis=1)
                idx = np.concatenate([best_i, idx], axis=1)
            key = -block if largest else block
            order = np.lexsort((idx, key), axis=-1)[:, :k]
            best_v = np.take_along_axis(block, order, axis=1)
            best_i = np.take_along_axis(idx, order, axis=1)
        span_outer = engine.grid.block_bounds((outer, 0) if ax == 1 else (0, outer))[1 - ax]
        assert best_v is not None and best_i is not None
        values[span_outer] = best_v
        indices[span_outer] = best_i
    if ax == 0:
        return values.T.copy(), indices.T.copy()
    return values, indices


def _dask_block(engine: BlockEngine, block_id: tuple[int, int] | None = None) -> np.ndarray:
    assert block_id is not None
    return engine.read_block((int(block_id[0]), int(block_id[1])))


def to_dask(engine: BlockEngine) -> Any:
    """A dask array with one chunk per block; a chunk reads (or computes) its block."""
    import dask.array as da

    chunks = tuple(
        tuple(min(b, n - s) for s in range(0, n, b))
        for n, b in zip(engine.shape, engine.block_shape, strict=True)
    )
    return da.map_blocks(
        functools.partial(_dask_block, engine),
        chunks=chunks,
        dtype=engine.dtype,
        meta=np.empty((0, 0), dtype=engine.dtype),
        name=f"influence-{id(engine):x}",
    )
