"""Filling a store: compute every missing block, here, in local processes or on dask.

:func:`fill_store` picks the :class:`~infl_array.executors.base.Executor` (:func:`pick_executor`),
plans the fill (:mod:`infl_array.engine.plan`) and has the executor run it:

* In this process, one task computes every missing block, in tiles
  (:mod:`infl_array.engine.work`); factors come from the memo or the store, so each is
  computed once.
* Across workers (``workers=N`` processes, or a dask ``client``) the fill is planned in phases
  (:func:`~infl_array.engine.plan.plan_fill`) so that each factor is still computed once per
  fill, whatever the number of workers: first the factor blocks the missing blocks need, when
  the source keeps factors in the store (:mod:`infl_array.storage.factors`), each in exactly
  one task; then the blocks, in groups of whole block columns (or rows).

Every task shares its work with other fillers through claims (:mod:`infl_array.storage.claims`),
so several ``fill()`` calls on one store (processes or machines) split the blocks between them,
and a block is either complete in the store or absent whatever is killed. A fill first removes
temporary files that killed writers left behind (only those old enough to have no live writer,
see :meth:`~infl_array.storage.grid.BlockGrid.clean_partials`), and refuses a read-only store
before computing anything.
"""

from __future__ import annotations

from typing import Any

from infl_array.engine.block_engine import BlockEngine
from infl_array.engine.plan import ClaimUnits, FillPlan, plan_fill
from infl_array.executors.base import Executor, FillProgress
from infl_array.executors.dask_cluster import DaskExecutor
from infl_array.executors.in_process import InProcessExecutor
from infl_array.executors.processes import ProcessExecutor
from infl_array.executors.tasks import factor_sides

__all__ = ["fill_store", "pick_executor"]


def pick_executor(workers: int | None, client: Any) -> Executor:
    """The executor of ``fill(workers=..., client=...)``; ``ValueError`` for bad arguments."""
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be None or a positive int; got {workers!r}.")
    if client is not None and workers is not None:
        raise ValueError("pass either workers=N (local processes) or client= (dask), not both.")
    if client is not None:
        return DaskExecutor(client)
    if workers is None or workers == 1:
        return InProcessExecutor()
    return ProcessExecutor(workers)


def fill_store(engine: BlockEngine, *, progress: bool, workers: int | None, client: Any) -> int:
    """Compute every block missing from ``engine``'s array; returns how many this call wrote."""
    executor = pick_executor(workers, client)
    engine.grid.clean_partials()
    missing = engine.missing()
    if not missing:
        return 0
    engine.grid.check_writable()
    if executor.remote:
        units = ClaimUnits.for_grid(engine.grid_shape)
        plan = plan_fill(missing, executor.workers, factor_sides(engine, missing), units)
    else:
        plan = FillPlan.single(missing)
    state = FillProgress(engine, len(missing), progress)
    try:
        executor.run(engine, plan, state)
    finally:
        state.close()
    return state.written
