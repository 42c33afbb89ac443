"""Running a fill in this process: one task of every missing block, computed tile by tile."""

from __future__ import annotations

from infl_array.engine.block_engine import BlockEngine
from infl_array.engine.plan import FillPlan
from infl_array.executors.base import FillProgress
from infl_array.executors.tasks import run_task

__all__ = ["InProcessExecutor"]


class InProcessExecutor:
    """The :class:`~infl_array.executors.base.Executor` of this process (the default).

    Tasks run one after the other on the caller's engine, so their work is already in its
    stats; the bar moves block by block. An interrupted fill keeps what it finished
    (:func:`~infl_array.engine.work.compute_blocks` says so on the exception).
    """

    workers = 1
    remote = False

    def run(self, engine: BlockEngine, plan: FillPlan, progress: FillProgress) -> None:
        for phase in plan.phases:
            for task in phase:
                if task.kind != "blocks":  # factor blocks: counted in the engine's stats
                    run_task(engine, task)
                    continue
                blocks = list(task.items)
                progress.written += engine.compute(
                    blocks, on_done=progress.block_done, share=True, cache_values=False
                )
