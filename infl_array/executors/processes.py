"""Running a fill's tasks in local processes (``fill(workers=N)``).

Each worker process is started (``spawn``) with the engine, once; tasks are sent to free
workers phase by phase. A worker that dies (killed, out of memory) breaks the pool: the fill
stops and says what was kept. A worker whose filler is killed ends too
(:func:`_exit_with_parent`). A task that fails stops the fill: its exception comes back with
the worker's traceback, and the tasks not yet started are cancelled. A script that would start
workers outside an ``if __name__ == "__main__":`` guard is refused first, and a worker that
cannot load the model says why (:mod:`~infl_array.executors.worker_start`). On Ctrl-C (or a
failed task) the fill stops at once, without the standard library's ``InvalidStateError``
(:func:`_stop`).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import pickle
import sys
import threading
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

from infl_array.engine.block_engine import BlockEngine
from infl_array.engine.plan import FillPlan, Task
from infl_array.executors.base import FillProgress, run_phases
from infl_array.executors.tasks import run_task
from infl_array.executors.worker_start import check_main_guard, load_engine, start_error

__all__ = ["ProcessExecutor"]

_WORKER_ENGINE: BlockEngine | None = None
_WORKER_ERROR: BaseException | None = None


def _init_worker(payload: bytes) -> None:
    global _WORKER_ENGINE, _WORKER_ERROR
    _exit_with_parent()
    _WORKER_ENGINE, _WORKER_ERROR = load_engine(payload)


def _exit_with_parent() -> None:
    """End this worker as soon as the filler that started it is gone.

    A filler killed with SIGKILL cannot stop its pool, and a pool's workers hold both ends of
    its task queue, so they would wait for tasks forever. A thread waits on the parent's
    sentinel and ends the process when it fires; a task being computed is cut short, which
    the store allows (its block is not written, or written whole, and its claim is taken over
    once this process is gone).
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="infl-array-parent-watch", daemon=True).start()


def _worker_task(task: Task) -> dict[str, int]:
    if _WORKER_ERROR is not None:
        raise start_error(_WORKER_ERROR) from _WORKER_ERROR
    assert _WORKER_ENGINE is not None
    return run_task(_WORKER_ENGINE, task)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop ``pool`` now: cancel what has not started and end the workers.

    The pool cancels its pending tasks itself (cancelling their futures here races its manager
    thread, which then sets an exception on a cancelled future: ``InvalidStateError``). Tasks
    already handed to a worker cannot be cancelled and would run to their end, each a group
    of blocks, before the pool shut down: the workers are terminated instead. Blocks they
    finished are in the store; their claims are taken over once their process is gone.
    """
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


class ProcessExecutor:
    """The :class:`~infl_array.executors.base.Executor` of ``workers`` local processes."""

    remote = True

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def run(self, engine: BlockEngine, plan: FillPlan, progress: FillProgress) -> None:
        check_main_guard(self.workers, sys._getframe(1))
        payload = pickle.dumps(engine)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=_init_worker, initargs=(payload,)
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
                _stop(pool)
                progress.kept_note(exc, "the fill stopped")
                raise
        engine.refresh()
