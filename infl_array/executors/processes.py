"""Running a fill's tasks in local processes (``fill(workers=N)``).

Each worker process is started (``spawn``) with the engine, once; tasks are sent to free
workers phase by phase. A worker that dies (killed, out of memory) breaks the pool: the fill
stops and says what was kept. A task that fails cancels the tasks not yet started.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

from infl_array.engine.block_engine import BlockEngine
from infl_array.engine.plan import FillPlan, Task
from infl_array.executors.base import FillProgress, run_phases
from infl_array.executors.tasks import run_task

__all__ = ["ProcessExecutor"]

_WORKER_ENGINE: BlockEngine | None = None


def _init_worker(engine: BlockEngine) -> None:
    global _WORKER_ENGINE
    _WORKER_ENGINE = engine


def _worker_task(task: Task) -> dict[str, int]:
    assert _WORKER_ENGINE is not None
    return run_task(_WORKER_ENGINE, task)


class ProcessExecutor:
    """The :class:`~infl_array.executors.base.Executor` of ``workers`` local processes."""

    remote = True

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def run(self, engine: BlockEngine, plan: FillPlan, progress: FillProgress) -> None:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=_init_worker, initargs=(engine,)
        ) as pool:
            submitted: list[Future[dict[str, int]]] = []

            def submit(task: Task) -> Future[dict[str, int]]:
                return pool.submit(_worker_task, task)

            try:
                run_phases(plan, submit, as_completed, progress, submitted)
            except BrokenProcessPool as exc:
                progress.kept_note(exc, "a worker process died (killed, or out of memory)")
                raise
            except BaseException as exc:
                # one task failed (or we were interrupted): start no more, re-raise at once
                for future in submitted:
                    future.cancel()
                progress.kept_note(exc, "the fill stopped")
                raise
        engine.refresh()
