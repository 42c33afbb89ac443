"""Growing axes: ``arr.append_train(train_data)`` and ``arr.append_test(test_data)``.

An append adds points at the end of one axis of the matrix, in place: ``arr`` keeps its store
and model and takes the new shape. What is stored stays valid and only what is new is computed,
when it is read or filled:

1. *Checks*, before anything is written: the array can compute (``ValueError`` naming how to
   reopen it with its model otherwise), its store is writable (``PermissionError``), its
   source's data can grow (the ``growth`` capability, :class:`~infl_array.engine.sources.Growth`;
   a block function grows by a count of points, ``arr.append_train(n)``) and the appended
   data are what ``create`` accepts and shaped like the data already there.
2. *Growth* of the store (:mod:`infl_array.storage.growth`): stored blocks, factor blocks,
   self-influence and top-k rows stay; the chunks of a partial last block are dropped (they are
   computed again, whole); top-k rows along the growing axis are kept as a base, so computing
   them again scans only the new points (:mod:`infl_array.engine.top_k_bases`); a segment record
   (:mod:`infl_array.storage.segments`) keeps the appended range, the fingerprint of its data
   and the time.
3. *A new engine* over the grown store and the grown source replaces the array's.

The curvature stays the one fitted: appending never refits the model (the train segment's
record says so). Refit, and create a new store, when the appended points change the training
distribution or add more than a small fraction of it: their own influence on the curvature is
then no longer negligible.

``ia.open(store, model, test=..., train=...)`` of a grown store compares the data given with
every segment (:func:`check_segments`): the points ``0:n`` with the data the store was created
with, each appended range with its segment; a difference raises
:class:`~infl_array.errors.StaleCacheError` naming the segment (``"train segment 1 (100:110)"``).
Top-k arrays and self-influence arrays taken from ``arr`` before an append, and arrays opened
elsewhere before it, keep the old shape: what they would store short of the appended points
(the partial last blocks, a top-k row over the old points) raises
:class:`~infl_array.errors.StaleCacheError` naming the segment, and nothing is written
(:func:`~infl_array.storage.segments.check_not_grown`). Ask ``arr`` for them again, or reopen.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from infl_array.engine.block_engine import BlockEngine
from infl_array.engine.sources import BlockSource, capabilities
from infl_array.errors import StaleCacheError
from infl_array.storage import layout
from infl_array.storage.factors import DEFAULT_FACTOR_DISK_BUDGET, FactorStore
from infl_array.storage.growth import AxisGrowth, grow_store
from infl_array.storage.segments import Segment, check_not_grown, created_shape, read_segments
from infl_array.storage.store import InfluenceStore

__all__ = [
    "AppendMixin",
    "append_points",
    "check_segments",
    "created_shape_of",
    "store_segments",
]


class AppendMixin:
    """``append_train``, ``append_test`` and ``segments`` of an influence array.

    Examples
    --------
    >>> import numpy as np, infl_array as ia
    >>> fn = lambda rows, cols: np.add.outer(np.asarray(rows), np.asarray(cols))
    >>> arr = ia.InfluenceArray.from_function({}, fn, shape=(2, 3), block_shape=(2, 2))
    >>> arr.fill(progress=False)
    2
    >>> str(arr.append_train(2)), arr.shape, arr.computed.tolist()
    ('train segment 1 (3:5)', (2, 5), [[True, False, False]])
    >>> arr[1].tolist()
    [1.0, 2.0, 3.0, 4.0, 5.0]
    """

    _engine: BlockEngine
    _shape: tuple[int, ...]

    def append_train(self, train_data: Any) -> Segment:
        """Append train points (new columns); returns the segment recorded.

        Stored blocks, factors, self-influence and top-k rows stay valid; only the new
        blocks and factors are computed, when read or filled (``arr.fill(workers=...)``
        fills them), and top-k rows along the train axis are brought up to date by scanning
        only the new points (on read, or all at once by ``arr.top_k_array(k).fill()``).
        ``train_data`` takes the forms ``create`` takes (a block function's array takes a
        count of points). The curvature stays the one fitted: refit and create a new store
        when the new points change the training distribution or are more than a small
        fraction of it (:mod:`infl_array.arrays.append`).
        """
        return self._append("train", train_data)

    def append_test(self, test_data: Any) -> Segment:
        """Append test points (new rows); returns the segment recorded (see
        :meth:`append_train`)."""
        return self._append("test", test_data)

    @property
    def segments(self) -> list[Segment]:
        """The appended segments of the store, test before train, each side in order."""
        return store_segments(self._engine.store)

    def _append(self, side: str, data: Any) -> Segment:
        factors = capabilities(self._engine.source).factor_store
        budget = DEFAULT_FACTOR_DISK_BUDGET if factors is None else factors.disk_budget
        engine, segment = append_points(self._engine, side, data)
        reuse = capabilities(engine.source).factor_reuse
        if reuse is not None:
            reuse.attach(FactorStore(engine.store, budget))
        self._engine, self._shape = engine, engine.shape
        return segment


def append_points(engine: BlockEngine, side: str, data: Any) -> tuple[BlockEngine, Segment]:
    """Grow ``engine``'s store by ``data`` along ``side``; the new engine and the segment
    recorded (see the module docstring)."""
    what = f"arr.append_{side}()"
    if engine.source is None:
        raise ValueError(
            f"{what} needs the model or function that computed the store, but "
            f"{engine.store.where} was opened without one. Reopen it with "
            "ia.open(store, model, test=..., train=...) (or fn=...) and append again."
        )
    engine.grid.check_writable()
    held = dict(zip(layout.FACTOR_SIDES, engine.shape, strict=True))
    check_not_grown(engine.store.matrix.zarr_store, engine.store.where, held, f"{what}'s segment")
    growth = capabilities(engine.source).growth
    if growth is None:
        raise TypeError(
            f"{what} needs a source whose data can grow (a model-backed array or a block "
            f"function); this array's source ({type(engine.source).__name__}) cannot. Create a "
            "new store over the grown data instead."
        )
    grown = growth.appended(side, data)
    axis = layout.FACTOR_SIDES.index(side)
    n = engine.shape[axis]
    plan = AxisGrowth(side, n, n + grown.n, engine.block_shape[axis])
    _check_grown_shape(grown.source, plan, engine.shape)
    store = engine.store
    done = [s for s in store_segments(store) if s.side == side]
    segment = Segment.new(side, len(done) + 1, plan.span, grown.fingerprint)
    grow_store(store, plan, segment)
    reopened = InfluenceStore.open(store.spec, storage_options=store.storage_options)
    grown.source.set_output_dtype(np.dtype(reopened.meta.dtype))
    return BlockEngine(reopened, reopened.matrix, grown.source), segment


def _check_grown_shape(source: BlockSource, plan: AxisGrowth, shape: tuple[int, int]) -> None:
    """A grown source that knows its shape has the grown one (a plug-in's bug otherwise)."""
    expected = list(shape)
    expected[plan.axis] = plan.new_n
    if source.shape is not None and tuple(source.shape) != tuple(expected):
        raise ValueError(
            f"the grown source has shape {source.shape}, expected {tuple(expected)}; nothing "
            "was appended."
        )


def store_segments(store: InfluenceStore) -> list[Segment]:
    """The segments recorded in ``store`` (:func:`~infl_array.storage.segments.read_segments`)."""
    return read_segments(store.matrix.zarr_store, store.where)


def check_segments(
    opened: InfluenceStore, source: BlockSource, given: dict[str, tuple[Any, Any]]
) -> None:
    """What ``open`` compares for a grown store, added to ``given`` (name: ``(stored, given)``).

    The data the store was created with is compared with the points ``0:n`` of the data given
    (under ``"test"``/``"train"``), each segment with its range (under its name, e.g.
    ``"train segment 1 (100:110)"``). Data of another shape are left to the shape check.
    """
    segments = store_segments(opened)
    created = created_shape(opened.meta.shape, segments)
    growth = capabilities(source).growth
    _check_not_longer(opened, source)
    if not segments or growth is None or source.shape != opened.meta.shape:
        return
    for axis, side in enumerate(layout.FACTOR_SIDES):
        if side in given and created[axis] != opened.meta.shape[axis]:
            given[side] = (given[side][0], growth.span_fingerprint(side, range(created[axis])))
    for s in segments:
        given[str(s)] = (s.fingerprint, growth.span_fingerprint(s.side, s.span))


def _check_not_longer(opened: InfluenceStore, source: BlockSource) -> None:
    """``StaleCacheError`` naming the fix when the data given have more points than the store
    holds (data grown past a store that was not appended to)."""
    given = tuple(source.shape or opened.meta.shape)
    for axis, side in enumerate(layout.FACTOR_SIDES):
        n, m = opened.meta.shape[axis], given[axis]
        if m > n:
            raise StaleCacheError(
                ["shape"],
                f"{opened.where} holds {n} {side} points, but the {side} data given have {m}: "
                f"the store was not grown to them (nothing was appended past {n}). Open it "
                f"with the {side} data it holds (the first {n} points) and call "
                f"arr.append_{side}(the other {m - n}) to grow it, or create a new store.",
            )


def created_shape_of(opened: InfluenceStore) -> tuple[int, int]:
    """The shape ``opened`` had when it was created (before its appended segments)."""
    return created_shape(opened.meta.shape, store_segments(opened))
