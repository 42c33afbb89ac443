"""Filling a store: compute every missing block, here, in local processes or on dask.

In this process, the missing blocks are computed in tiles (:mod:`infl_array.engine.work`); factors
come from the memo or the store, so each is computed once. Across workers (``workers=N``
processes, or a dask ``client``) the fill is planned as tasks (:func:`plan_fill`) so that each
factor is still computed once per fill, whatever the number of workers:

1. *Factors first* (sources with factors kept in the store, :mod:`infl_array.storage.factors`): this
   process computes one train and one test factor block (which fixes which sides the store
   keeps), then the remaining factor blocks the missing blocks need are split into tasks, each
   block in exactly one task: train blocks in groups, test blocks in contiguous runs (one
   batched solve each). Workers store them.
2. *Blocks*: the missing blocks in groups of whole block columns (each train block in one
   task; its test factors are read from the store), or of whole block rows when only the train
   side is kept, or of block rows for plain block functions.

Every task shares its work with other fillers through claims (:mod:`infl_array.storage.claims`), so
several ``fill()`` calls on one store (processes or machines) split the blocks between them,
and a block is either complete in the store or absent whatever is killed. A fill first removes
temporary files that killed writers left behind (only those old enough to have no live writer,
see :meth:`~infl_array.storage.grid.BlockGrid.clean_partials`), and refuses a read-only store before
computing anything.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from infl_array.engine.block_engine import BlockEngine
from infl_array.engine.progress import counter_bar
from infl_array.executors.dask_cluster import run_on_dask
from infl_array.executors.tasks import FillProgress, Task, plan_fill, run_phases, run_task

__all__ = ["fill_store"]


def fill_store(engine: BlockEngine, *, progress: bool, workers: int | None, client: Any) -> int:
    """Compute every block missing from ``engine``'s array; returns how many this call wrote."""
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be None or a positive int; got {workers!r}.")
    if client is not None and workers is not None:
        raise ValueError("pass either workers=N (local processes) or client= (dask), not both.")
    engine.grid.clean_partials()
    missing = engine.missing()
    if not missing:
        return 0
    engine.grid.check_writable()
    if client is None and (workers is None or workers == 1):
        bar = counter_bar(len(missing), progress)
        try:
            return engine.compute(
                missing, on_done=lambda _: bar.update(1), share=True, cache_values=False
            )
        finally:
            bar.close()
    n_workers = workers or max(1, len(client.scheduler_info()["workers"]))
    tasks = plan_fill(engine, missing, n_workers)
    if client is not None:
        done = run_on_dask(engine, tasks, client, len(missing), progress)
    else:
        assert workers is not None
        done = _run_on_processes(engine, tasks, workers, len(missing), progress)
    engine.refresh()
    return done


_WORKER_ENGINE: BlockEngine | None = None


def _init_worker(engine: BlockEngine) -> None:
    global _WORKER_ENGINE
    _WORKER_ENGINE = engine


def _worker_task(task: Task) -> dict[str, int]:
    assert _WORKER_ENGINE is not None
    return run_task(_WORKER_ENGINE, task)


def _run_on_processes(
    engine: BlockEngine, phases: list[list[Task]], workers: int, total: int, progress: bool
) -> int:
    state = FillProgress(engine, total, progress)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(engine,)
    ) as pool:
        submitted: list[Any] = []

        def submit(task: Task) -> Any:
            submitted.append(pool.submit(_worker_task, task))
            return submitted[-1]

        try:
            run_phases(phases, submit, as_completed, lambda f: f.result(), state.on_task)
        except BrokenProcessPool as exc:
            state.kept_note(exc, "a worker process died (killed, or out of memory)")
            raise
        except BaseException as exc:
            # one task failed (or we were interrupted): start no more, re-raise at once
            for future in submitted:
                future.cancel()
            state.kept_note(exc, "the fill stopped")
            raise
        finally:
            state.bar.close()
    return state.written
