"""The executor contract: where a fill's tasks run, and how they report back.

An :class:`Executor` runs a :class:`~infl_array.engine.plan.FillPlan` on an engine, phase
after phase, and reports every finished task to a :class:`FillProgress`. Three implement it:
:class:`~infl_array.executors.in_process.InProcessExecutor` (this process, the default),
:class:`~infl_array.executors.processes.ProcessExecutor` (``workers=N`` local processes) and
:class:`~infl_array.executors.dask_cluster.DaskExecutor` (a ``dask.distributed`` client);
:func:`~infl_array.executors.dispatch.fill_store` picks one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from infl_array.engine.block_engine import BlockEngine
from infl_array.engine.plan import FillPlan, Task
from infl_array.engine.progress import counter_bar
from infl_array.errors import add_note
from infl_array.storage.grid import BlockCoords

__all__ = ["Executor", "FillProgress", "run_phases"]


class Executor(Protocol):
    """Where a fill's tasks run.

    Attributes
    ----------
    workers : int
        How many tasks run at once; a plan for a remote executor splits the work for them.
    remote : bool
        Whether tasks run in other processes, on their own copy of the engine: the fill is
        then planned so that each factor is computed once across them
        (:func:`~infl_array.engine.plan.plan_fill`), and their counts are added to the
        engine's stats. In this process one task computes every block, tile by tile.
    """

    @property
    def workers(self) -> int: ...

    @property
    def remote(self) -> bool: ...

    def run(self, engine: BlockEngine, plan: FillPlan, progress: FillProgress) -> None:
        """Run every task of ``plan`` on ``engine`` (or copies of it), phase after phase,
        reporting each finished task to ``progress``. On an error, no further task starts,
        the error says what was kept (:meth:`FillProgress.kept_note`) and is raised."""
        ...


class FillProgress:
    """What a fill's tasks did: blocks for the progress bar, blocks written, and the work of
    remote tasks for the engine's stats.

    Parameters
    ----------
    engine : BlockEngine
        The engine the fill started from.
    total : int
        Blocks the fill computes (the bar's length).
    progress : bool
        Whether to show the bar.
    """

    def __init__(self, engine: BlockEngine, total: int, progress: bool) -> None:
        self.engine, self.bar = engine, counter_bar(total, progress)
        self.written = 0

    def block_done(self, coords: BlockCoords) -> None:
        """A block of a task in this process is in the store (one step of the bar)."""
        self.bar.update(1)

    def task_done(self, task: Task, counts: Mapping[str, int], remote: bool) -> None:
        """A task finished with ``counts`` (fields of the engine's stats); a ``remote`` task's
        counts are added to the engine's stats and its blocks to the bar."""
        self.written += int(counts.get("blocks_computed", 0))
        if remote:
            self.engine.add_worker_stats(counts)
            self.bar.update(task.n_blocks)

    def kept_note(self, exc: BaseException, what: str) -> None:
        """Note on ``exc`` what the fill kept and how to go on."""
        add_note(
            exc,
            f"infl_array: {what}; the {self.written} blocks this fill finished are kept in the "
            f"store ({len(self.engine.refresh())} of {len(self.engine.all_blocks())} in all). "
            "Nothing is lost: call fill() again to compute only what is still missing.",
        )

    def close(self) -> None:
        self.bar.close()


def run_phases(
    plan: FillPlan,
    submit: Callable[[Task], Any],
    completed: Callable[[list[Any]], Iterable[Any]],
    progress: FillProgress,
    submitted: list[Any],
) -> None:
    """Run ``plan`` through a pool's ``submit(task) -> future`` and ``completed(futures)``
    (futures as they finish), reporting each finished task to ``progress`` as remote; every
    future is appended to ``submitted`` (to cancel them on an error)."""
    for phase in plan.phases:
        futures = {}
        for task in phase:
            submitted.append(submit(task))
            futures[submitted[-1]] = task
        for future in completed(list(futures)):
            progress.task_done(futures[future], future.result(), remote=True)
