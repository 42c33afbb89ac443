"""Analysis without materialising: reductions, top-k and dask, streamed block by block.

Each function walks the plan of the whole array (:func:`~infl_array.engine.plan.plan_whole`) through
the engine (:meth:`~infl_array.engine.block_engine.BlockEngine.iter_blocks`, which first computes
the missing blocks, tile by tile), keeping only running results: memory is a few blocks plus the
output, whatever the matrix size. Sums and means accumulate in float64 and are returned in the
array's dtype, as numpy returns them. Ties in arg-reductions and ``top_k`` go to the lower index.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np

from infl_array.engine.block_engine import BlockEngine
from infl_array.engine.top_k import check_k, computes_stored, scan_top_k

__all__ = ["normalize_axis", "reduce", "to_dask", "top_k"]

_REDUCTIONS = ("sum", "mean", "min", "max", "argmin", "argmax", "std", "var")


def normalize_axis(axis: Any, ndim: int = 2) -> int:
    """numpy's axis normalisation (``AxisError`` for a bad axis, ``TypeError`` for a non-int)."""
    try:
        from numpy.lib.array_utils import normalize_axis_index  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.26
        from numpy.core.multiarray import normalize_axis_index  # type: ignore[no-redef]
    if isinstance(axis, bool) or not isinstance(axis, int | np.integer):
        raise TypeError(f"axis must be None or an int; got {type(axis).__name__} {axis!r}.")
    return int(normalize_axis_index(int(axis), ndim))


def reduce(engine: BlockEngine, op: str, axis: int | None = None, ddof: int = 0) -> Any:
    """``getattr(np, op)(full, axis=axis)`` computed block by block.

    ``axis`` is already normalised (None, 0 or 1). ``sum``, ``mean``, ``std`` and ``var`` are
    returned in float64 (the caller casts them); ``min`` and ``max`` in the array's dtype;
    ``argmin`` and ``argmax`` as ``intp``.
    """
    assert op in _REDUCTIONS
    if op in ("sum", "mean", "std", "var"):
        count, total, m2 = _moments(engine, axis)
        if op == "sum":
            return total
        mean = total / count
        if op == "mean":
            return mean
        with np.errstate(divide="ignore", invalid="ignore"):
            var = m2 / (count - ddof) if count - ddof > 0 else np.full_like(m2, np.nan)
        return var if op == "var" else np.sqrt(var)
    return _extreme(engine, op, axis)


def _moments(engine: BlockEngine, axis: int | None) -> tuple[int, Any, Any]:
    """Count, sum and sum of squared deviations from the mean along ``axis``, in one pass.

    Blocks are merged with Chan et al.'s pairwise update of the sum of squared deviations,
    in float64, so the variance is accurate even when the mean is large.
    """
    n0, n1 = engine.shape
    shape = () if axis is None else (n1 if axis == 0 else n0,)
    count = np.zeros(shape, dtype=np.float64)
    total = np.zeros(shape, dtype=np.float64)
    m2 = np.zeros(shape, dtype=np.float64)
    for projection, values in engine.iter_blocks():
        rows, cols = projection.out_sel
        block = values.astype(np.float64)
        red = None if axis is None else axis
        where = () if axis is None else (cols if axis == 0 else rows)
        n_b = block.size if axis is None else block.shape[axis]
        s_b = block.sum(axis=red)
        d = block - (s_b / n_b if axis is None else np.expand_dims(s_b / n_b, axis))
        m2_b = (d * d).sum(axis=red)
        n_a, s_a = count[where], total[where]
        with np.errstate(divide="ignore", invalid="ignore"):
            delta = np.where(n_a > 0, s_b / n_b - s_a / np.maximum(n_a, 1), 0.0)
        m2[where] = m2[where] + m2_b + delta * delta * n_a * n_b / (n_a + n_b)
        count[where] = n_a + n_b
        total[where] = s_a + s_b
    n = n0 * n1 if axis is None else engine.shape[axis]
    return n, total[()] if axis is None else total, m2[()] if axis is None else m2


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
    """The ``k`` best values along ``axis`` and their indices; ties go to the lower index.

    A source with factors (a model-backed array) writes nothing: stored blocks are read and
    missing ones computed in memory (:func:`~infl_array.engine.top_k.scan_top_k`). A plain
    block function's missing blocks are computed and stored first, as every read does.
    """
    ax = normalize_axis(axis)
    k = check_k(k, engine.shape[ax], ax)
    if computes_stored(engine):
        engine.ensure(engine.all_blocks())  # block functions: missing blocks first, stored
    other = engine.shape[1 - ax]
    values = np.empty((other, k), dtype=engine.dtype)
    indices = np.empty((other, k), dtype=np.int64)
    found = scan_top_k(engine, k, ax, largest, range(engine.grid_shape[1 - ax]))
    size = engine.block_shape[1 - ax]
    for b, (v, i) in found.items():
        values[b * size : b * size + len(v)] = v
        indices[b * size : b * size + len(v)] = i
    if ax == 0:
        return values.T.copy(), indices.T.copy()
    return values, indices


def _dask_block(engine: BlockEngine, coords: tuple[int, int]) -> np.ndarray:
    return engine.read_block(coords)


def to_dask(engine: BlockEngine) -> Any:
    """A dask array with one chunk per block; a chunk reads (or computes) its block.

    The engine (model, data, store address) is one node of the graph that every chunk task
    depends on, so a distributed scheduler ships it to each worker once, where its tasks share
    one factor memo and decoded-block cache; the graph holds it once, not once per task.
    """
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    chunks = tuple(
        tuple(min(b, n - s) for s in range(0, n, b))
        for n, b in zip(engine.shape, engine.block_shape, strict=True)
    )
    name = f"influence-{uuid.uuid4().hex}"
    engine_key = f"{name}-engine"
    layer: dict[Any, Any] = {engine_key: engine}
    g0, g1 = engine.grid_shape
    for i in range(g0):
        for j in range(g1):
            layer[(name, i, j)] = (_dask_block, engine_key, (i, j))
    graph = HighLevelGraph.from_collections(name, layer, dependencies=())
    return da.Array(graph, name, chunks, meta=np.empty((0, 0), dtype=engine.dtype))
