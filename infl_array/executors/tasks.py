"""A fill's tasks as a worker runs them, and the factor state their plan starts from.

:func:`factor_sides` reads (and starts) the factor blocks a store keeps, for
:func:`~infl_array.engine.plan.plan_fill`; :func:`run_task` does one planned task on an engine
(in this process, a local process or a dask worker) and returns what it computed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from infl_array.engine.block_engine import BlockEngine
from infl_array.engine.plan import FactorSides, Task, runs
from infl_array.engine.sources import capabilities
from infl_array.storage.grid import BlockCoords

__all__ = ["factor_sides", "run_task"]


def factor_sides(engine: BlockEngine, missing: list[BlockCoords]) -> FactorSides | None:
    """Which factor blocks the store keeps and has, for a fill of ``missing``; None when the
    source keeps no factors in the store.

    One block of each side is computed here first: it fixes which sides the store keeps (and
    is needed anyway).
    """
    caps = capabilities(engine.source)
    reuse, store = caps.factor_reuse, caps.factor_store
    if reuse is None or store is None:
        return None
    first_row, first_col = min(i for i, _ in missing), min(j for _, j in missing)
    reuse.prefetch(rows=store.bounds("test", first_row), cols=store.bounds("train", first_col))

    def side(name: str) -> frozenset[int] | None:
        return frozenset(store.present(name)) if store.exists(name) else None

    return FactorSides(train=side("train"), test=side("test"))


def run_task(
    engine: BlockEngine, task: Task, on_done: Callable[[BlockCoords], None] | None = None
) -> dict[str, int]:
    """Do one task on ``engine``; returns what it computed (counts of the engine's stats).

    Tasks on one engine run one at a time (a dask worker's threads share it), so the counts
    are the task's own; the model's computations use the threads themselves. ``on_done`` is
    called for every block of the task in the store afterwards.
    """
    with engine.task_lock:
        before = dataclasses.asdict(engine.stats())
        if task.kind == "blocks":
            engine.compute(list(task.items), on_done=on_done, share=True, cache_values=False)
        else:
            _factor_blocks(engine, task)
        after = dataclasses.asdict(engine.stats())
    return {k: int(after[k] - before[k]) for k in after}


def _factor_blocks(engine: BlockEngine, task: Task) -> None:
    """Compute (and store) the factor blocks of a ``"train"`` or ``"test"`` task."""
    caps = capabilities(engine.source)
    reuse, store = caps.factor_reuse, caps.factor_store
    if reuse is None or store is None:
        raise ValueError(f"a {task.kind!r} factor task needs a source that stores factors")
    for first, last in runs(task.items):
        if task.kind == "test":  # one batched solve per run
            reuse.prefetch(rows=range(store.bounds("test", first).start,
                                      store.bounds("test", last).stop))  # fmt: skip
        else:
            for b in range(first, last + 1):  # one train block at a time: bounded memory
                reuse.prefetch(cols=store.bounds("train", b))
