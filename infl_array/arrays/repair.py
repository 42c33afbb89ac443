"""Checking and repairing every array of a store: matrix, self-influence, factors, top-k,
claims.

:func:`store_report` reads every stored block of every array in the store, and every claim and
note (:func:`infl_array.storage.integrity.check_store`), and says which are damaged.
:func:`repair_store` acts on what it finds, in an order where no step needs a damaged piece:

0. derived arrays and groups whose zarr metadata is damaged are deleted with everything in
   them (self-influence, factors, top-k arrays: created and computed again on next need);
1. damaged claims are deleted: a claim object that does not decode would hold its unit (a
   block, a factor block) forever; deleted, the unit is claimed anew by whoever needs it;
2. damaged factor chunks are deleted: a factor block is an intermediate, recomputed (and
   stored again) by the next read or fill that needs it, so nothing waits on a damaged one;
3. damaged matrix blocks are recomputed and written, from fresh factors where step 2 removed
   theirs;
4. damaged self-influence blocks are recomputed, or deleted when the array has no model to
   compute them (a later read names them as missing);
5. damaged top-k chunks (values or indices) are deleted with their row block's values chunk:
   the row block then counts as not computed, and the next read or fill computes it again.

6. damaged notes are rewritten as notes saying they were damaged: their message cannot be
   recovered, and a note is never removed (it says how values still in the store were
   computed).
"""

from __future__ import annotations

from collections.abc import Iterable

from infl_array.arrays.self_influence import self_influence_engine
from infl_array.engine.block_engine import BlockEngine
from infl_array.engine.progress import progress_bar
from infl_array.storage import layout
from infl_array.storage.grid import BlockCoords
from infl_array.storage.integrity import (
    CLAIMS,
    Damage,
    StoreReport,
    check_store,
    delete_damaged,
    mark_damaged_notes,
)

__all__ = ["IntegrityMixin", "repair_store", "store_report"]


class IntegrityMixin:
    """``verify``, ``store_report`` and ``repair`` of an influence array (see the module
    docstring for what each repair step does).

    Examples
    --------
    >>> import numpy as np, infl_array as ia
    >>> fn = lambda rows, cols: np.add.outer(np.asarray(rows), np.asarray(cols))
    >>> arr = ia.InfluenceArray.from_function({}, fn, shape=(4, 4), block_shape=(2, 2))
    >>> arr.fill(progress=False), arr.verify(), arr.store_report().ok, arr.repair()
    (4, [], True, [])
    """

    _engine: BlockEngine

    @property
    def can_compute(self) -> bool:
        """Whether missing blocks can be computed (a model or a function is attached)."""
        return self._engine.can_compute

    def verify(self, progress: bool = False) -> list[BlockCoords]:
        """Matrix blocks whose stored bytes fail their checksum or do not decode, sorted.

        :meth:`store_report` checks every other array of the store too.
        """
        return self._engine.verify(progress=progress)

    def store_report(self, progress: bool = False) -> StoreReport:
        """Check every array of the store: the matrix, the self-influence, the stored test
        and train factors, and every claim and note object.

        Returns a :class:`~infl_array.storage.integrity.StoreReport`: per array the blocks
        stored and the damaged ones (``report.damaged``, each naming its array, its block
        and its key), ``report.ok`` when nothing is damaged, ``report.lines()`` for people
        (what ``infl-array verify`` prints). A deleted chunk is not damage: it is a block not
        computed, which the next read or fill computes.
        """
        return store_report(self._engine, progress=progress)

    def repair(self, progress: bool = False) -> list[BlockCoords]:
        """Repair every array of the store; returns the matrix blocks recomputed, which are
        exactly those :meth:`verify` reports.

        Besides the matrix blocks it recomputes the damaged self-influence blocks, deletes
        damaged factor chunks (recomputed when next needed) and damaged claim objects
        (:mod:`infl_array.arrays.repair`); :meth:`store_report` says what it will find.
        """
        self._check_can_compute("repair")
        return repair_store(self._engine, progress=progress)

    def _check_can_compute(self, what: str) -> None:
        if not self.can_compute:
            raise ValueError(
                f"arr.{what}() needs a model or function to compute blocks, but the store "
                f"{self._engine.store.where} was opened without one. Reopen with "
                "ia.open(store, model, test=..., train=...) or ia.open(store, fn=...)."
            )


def store_report(matrix: BlockEngine, progress: bool = False) -> StoreReport:
    """What is damaged in the store of ``matrix``: every array's blocks, claims and notes."""

    def each(name: str, blocks: list[BlockCoords]) -> Iterable[BlockCoords]:
        return progress_bar(blocks, progress, f"verify {name}")

    return check_store(matrix.store, each)


def repair_store(matrix: BlockEngine, progress: bool = False) -> list[BlockCoords]:
    """Repair everything :func:`store_report` finds (see the module docstring).

    Returns the matrix blocks it recomputed (what ``arr.verify()`` listed), sorted.
    """
    report = store_report(matrix, progress)
    if report.ok:
        return []
    store = matrix.store
    bad = report.blocks(layout.MATRIX.path)
    matrix.grid.check_writable(bad[0] if bad else None)
    delete_damaged(store, [d for d in report.damaged if d.is_metadata])
    delete_damaged(store, [d for d in report.damaged if d.array == CLAIMS])
    for side in layout.FACTOR_SIDES:
        path = layout.factors(side).path
        delete_damaged(store, [d for d in report.damaged if d.array == path])
    for coords in bad:
        matrix.recompute(coords)
    damaged_si = report.blocks(layout.SELF_INFLUENCE.path)
    grid = store.side_grid(layout.SELF_INFLUENCE.path)
    if damaged_si and grid is not None:
        engine = self_influence_engine(matrix, grid)
        for coords in damaged_si:
            if engine.can_compute:
                engine.recompute(coords)
            else:
                grid.delete_block(coords)
    delete_damaged(store, _top_k_rows(report))
    mark_damaged_notes(store, report.damaged)
    return bad


def _top_k_rows(report: StoreReport) -> list[Damage]:
    """The damaged top-k chunks, each with its row block's values chunk (which says the row
    block is stored: without it, the row block is computed again)."""
    found: dict[str, Damage] = {}
    for d in report.damaged:
        if d.coords is None or not d.array.startswith(f"{layout.TOPK_GROUP}/"):
            continue
        found[d.key] = d
        values = layout.array_layout(d.array.rsplit("/", 1)[0] + "/values")
        key = values.chunk_key((d.coords[0], 0))
        found.setdefault(key, Damage(values.path, d.what, key, d.problem, d.coords))
    return list(found.values())
