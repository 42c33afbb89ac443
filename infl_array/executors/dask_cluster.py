"""Running a fill's tasks on a ``dask.distributed`` cluster (``fill(client=...)``).

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
from infl_array.engine.plan import FillPlan, Task
from infl_array.executors.base import FillProgress, run_phases
from infl_array.executors.tasks import run_task

__all__ = ["RETRIES", "DaskExecutor"]

RETRIES = 3
"""Times a task is retried after its worker died."""


def _load(payload: bytes) -> BlockEngine:
    engine = pickle.loads(payload)
    assert isinstance(engine, BlockEngine)
    return engine


class DaskExecutor:
    """The :class:`~infl_array.executors.base.Executor` of a ``dask.distributed`` client
    (see the module docstring)."""

    remote = True

    def __init__(self, client: Any) -> None:
        self.client = client

    @property
    def workers(self) -> int:
        """The cluster's workers now (at least 1)."""
        return max(1, len(self.client.scheduler_info()["workers"]))

    def run(self, engine: BlockEngine, plan: FillPlan, progress: FillProgress) -> None:
        from distributed import as_completed

        client = self.client
        engine_future = client.submit(_load, pickle.dumps(engine), pure=True)  # see module doc
        submitted: list[Any] = []

        def submit(task: Task) -> Any:
            return client.submit(run_task, engine_future, task, retries=RETRIES, pure=False)

        try:
            run_phases(plan, submit, as_completed, progress, submitted)
        except BaseException as exc:
            client.cancel(submitted)
            progress.kept_note(exc, "the fill stopped")
            raise
        finally:
            client.cancel([engine_future])
        engine.refresh()
