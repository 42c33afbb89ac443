"""Running a fill's tasks on a ``dask.distributed`` cluster.

* The engine (model, data, store address) reaches the cluster once, as the result of one task
  whose input (its pickled bytes) the scheduler keeps: a worker that needs it fetches it from
  a peer or, if every worker holding it was lost, the scheduler computes it again. So losing
  workers, even all of them, delays the fill but does not abort it.
* Tasks are retried (:data:`RETRIES`) when a worker dies under them; a task that fails on its
  own (an exception in the model, a full disk) cancels every outstanding task and its error is
  raised with a note on what was kept.
* The progress bar counts blocks finished by all workers; the factor and block counts of every
  task are added to the array's ``stats``.

dask workers set ``MALLOC_TRIM_THRESHOLD_=65536``, which makes allocation-heavy models (CG's
repeated Hessian-vector products) cost more CPU than in a plain process (about 1.7x measured
here); start workers with a larger value (e.g. ``MALLOC_TRIM_THRESHOLD_=134217728`` in the
environment of ``dask worker``) when that matters.
"""

from __future__ import annotations

import pickle
from typing import Any

from infl_array.engine.block_engine import BlockEngine
from infl_array.executors.tasks import FillProgress, Task, run_phases, run_task

__all__ = ["run_on_dask"]

RETRIES = 3
"""Times a task is retried after its worker died."""


def _load(payload: bytes) -> BlockEngine:
    engine = pickle.loads(payload)
    assert isinstance(engine, BlockEngine)
    return engine


def run_on_dask(
    engine: BlockEngine, phases: list[list[Task]], client: Any, total: int, progress: bool
) -> int:
    """Run the fill's ``phases`` on ``client``; returns the blocks written."""
    from distributed import as_completed

    state = FillProgress(engine, total, progress)
    payload = pickle.dumps(engine)
    engine_future = client.submit(_load, payload, pure=True)  # recomputable: see module doc
    submitted: list[Any] = []

    def submit(task: Task) -> Any:
        submitted.append(client.submit(run_task, engine_future, task, retries=RETRIES, pure=False))
        return submitted[-1]

    try:
        run_phases(phases, submit, as_completed, lambda f: f.result(), state.on_task)
    except BaseException as exc:
        client.cancel(submitted)
        state.kept_note(exc, "the fill stopped")
        raise
    finally:
        state.bar.close()
        client.cancel([engine_future])
    return state.written
