"""Filling a store: compute every missing block, here, in local processes or on dask.

Work is cut into tasks of whole block rows (:func:`~infl_array.plan.row_tasks`: one test block
against the train blocks it lacks), so a model-backed array computes each test factor once per
task. Every block is written atomically, so filling may be interrupted at any moment and run by
several processes or machines at once on the same store: a block is either complete in the
store or absent, and a later fill computes only what is still absent. Before computing a block
a worker checks again that no other filler has written it in the meantime. A fill first removes
the temporary files that killed writers left behind (only those old enough to have no live
writer, see :meth:`~infl_array.grid.BlockGrid.clean_partials`), and refuses a read-only store
before computing anything.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from infl_array.engine import BlockEngine
from infl_array.grid import BlockCoords
from infl_array.plan import row_tasks
from infl_array.progress import counter_bar


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
    if client is not None:
        return _fill_dask(engine, missing, client, progress)
    if workers is not None and workers > 1:
        return _fill_processes(engine, missing, workers, progress)
    bar = counter_bar(len(missing), progress)
    try:
        return engine.compute(
            missing, on_done=lambda _: bar.update(1), share=True, cache_values=False
        )
    finally:
        bar.close()


def compute_task(engine: BlockEngine, blocks: list[BlockCoords]) -> int:
    """Compute those of ``blocks`` that are still missing; returns how many it wrote."""
    present = engine.grid.has_blocks(blocks)
    missing = [c for c in blocks if c not in present]
    return engine.compute(missing, share=True, cache_values=False)


_WORKER_ENGINE: BlockEngine | None = None


def _init_worker(engine: BlockEngine) -> None:
    global _WORKER_ENGINE
    _WORKER_ENGINE = engine


def _worker_task(blocks: list[BlockCoords]) -> int:
    assert _WORKER_ENGINE is not None
    return compute_task(_WORKER_ENGINE, blocks)


def _fill_processes(
    engine: BlockEngine, missing: list[BlockCoords], workers: int, progress: bool
) -> int:
    tasks = row_tasks(missing)
    context = multiprocessing.get_context("spawn")
    done = 0
    bar = counter_bar(len(missing), progress)
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(engine,)
    ) as pool:
        futures = {pool.submit(_worker_task, task): len(task) for task in tasks}
        try:
            for future in as_completed(futures):
                done += future.result()
                bar.update(futures[future])
        except BaseException:
            # one task failed (or we were interrupted): start no more, re-raise at once
            for future in futures:
                future.cancel()
            raise
    bar.close()
    engine.refresh()
    return done


def _fill_dask(engine: BlockEngine, missing: list[BlockCoords], client: Any, progress: bool) -> int:
    from distributed import as_completed as dask_as_completed

    tasks = row_tasks(missing)
    [engine_future] = client.scatter([engine], broadcast=True)
    futures = client.map(compute_task, [engine_future] * len(tasks), tasks, pure=False)
    sizes = {f.key: len(t) for f, t in zip(futures, tasks, strict=True)}
    bar = counter_bar(len(missing), progress)
    done = 0
    for future in dask_as_completed(futures):
        done += future.result()
        bar.update(sizes[future.key])
    bar.close()
    engine.refresh()
    return done
