"""A fill's tasks: what each worker does, planned so that each factor is computed once.

Planned by :func:`plan_fill` (see :mod:`infl_array.executors.dispatch` for the phases), run by
:func:`run_task` in a worker (a local process or a dask worker), counted by
:class:`FillProgress` in the process that started the fill.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from infl_array.engine.block_engine import BlockEngine
from infl_array.engine.plan import row_tasks
from infl_array.engine.progress import counter_bar
from infl_array.engine.sources import capabilities
from infl_array.errors import add_note
from infl_array.storage.grid import BlockCoords

__all__ = ["FillProgress", "Task", "plan_fill", "run_phases", "run_task"]

TASKS_PER_WORKER = 4
"""Block tasks per worker: enough to balance uneven tasks, few enough to keep factor reads low."""


@dataclass(frozen=True)
class Task:
    """One unit of a fill: factor blocks of one side, or a group of matrix blocks.

    Attributes
    ----------
    kind : str
        ``"train"`` or ``"test"`` (factor blocks), or ``"blocks"``.
    items : tuple
        Factor block indices, or block coordinates.
    """

    kind: str
    items: tuple[Any, ...]

    @property
    def n_blocks(self) -> int:
        """Matrix blocks the task completes (for progress)."""
        return len(self.items) if self.kind == "blocks" else 0


def plan_fill(engine: BlockEngine, missing: list[BlockCoords], workers: int) -> list[list[Task]]:
    """The tasks of a fill across ``workers``, in phases (see the module docstring).

    Each phase's tasks may run in any order and at once; a phase starts when the previous one
    is done. Factor blocks already in the store are left out.
    """
    caps = capabilities(engine.source)
    reuse, store = caps.factor_reuse, caps.factor_store
    if reuse is None or store is None:
        return [[Task("blocks", tuple(t)) for t in row_tasks(missing)]]
    rows = sorted({i for i, _ in missing})
    cols = sorted({j for _, j in missing})
    # one block of each side here: it fixes which sides the store keeps (and is needed anyway)
    reuse.prefetch(rows=store.bounds("test", rows[0]), cols=store.bounds("train", cols[0]))
    factor_tasks = []
    if store.exists("train"):
        todo = [j for j in cols if j not in store.present("train")]
        factor_tasks += [Task("train", tuple(g)) for g in _split(todo, workers * 2)]
    if store.exists("test"):
        todo = [i for i in rows if i not in store.present("test")]
        factor_tasks += [Task("test", tuple(g)) for g in _split(todo, workers)]
    by_rows = store.exists("train") and not store.exists("test")
    axis = 0 if by_rows else 1
    groups = _split(rows if by_rows else cols, workers * TASKS_PER_WORKER)
    block_tasks = [
        Task("blocks", tuple(c for c in missing if c[axis] in set(g))) for g in groups if g
    ]
    return [t for t in ([factor_tasks] if factor_tasks else []) + [block_tasks] if t]


def _split(items: list[int], n: int) -> list[list[int]]:
    """``items`` in at most ``n`` contiguous groups of nearly equal size."""
    n = max(1, min(n, len(items)))
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for k in range(n):
        stop = start + size + (k < extra)
        if stop > start:
            out.append(items[start:stop])
        start = stop
    return out


def run_task(engine: BlockEngine, task: Task) -> dict[str, int]:
    """Do one task on ``engine`` (in a worker); returns what it computed (counts).

    Tasks on one engine run one at a time (a dask worker's threads share it), so the counts
    are the task's own; the model's computations use the threads themselves.
    """
    with engine.task_lock:
        return _run_task(engine, task)


def _run_task(engine: BlockEngine, task: Task) -> dict[str, int]:
    before = dataclasses.asdict(engine.stats())
    if task.kind == "blocks":
        present = engine.grid.has_blocks(task.items)
        todo = [c for c in task.items if c not in present]
        engine.compute(todo, share=True, cache_values=False)
    else:
        caps = capabilities(engine.source)
        reuse, store = caps.factor_reuse, caps.factor_store
        assert reuse is not None and store is not None
        for first, last in _contiguous(list(task.items)):
            span = range(store.bounds(task.kind, first).start, store.bounds(task.kind, last).stop)
            if task.kind == "test":
                reuse.prefetch(rows=span)
            else:
                for b in range(first, last + 1):  # one train block at a time: bounded memory
                    reuse.prefetch(cols=store.bounds("train", b))
    after = dataclasses.asdict(engine.stats())
    return {k: int(after[k] - before[k]) for k in after}


def _contiguous(items: list[int]) -> Iterable[tuple[int, int]]:
    start = prev = items[0]
    for b in items[1:]:
        if b != prev + 1:
            yield start, prev
            start = b
        prev = b
    yield start, prev


def run_phases(
    phases: list[list[Task]],
    submit: Callable[[Task], Any],
    completed: Callable[[list[Any]], Iterable[Any]],
    result: Callable[[Any], dict[str, int]],
    on_task: Callable[[Task, dict[str, int]], None],
) -> None:
    """Run ``phases`` of tasks through an executor's ``submit``/``completed``/``result``."""
    for phase in phases:
        futures = {}
        for task in phase:
            futures[submit(task)] = task
        for future in completed(list(futures)):
            on_task(futures[future], result(future))


class FillProgress:
    """Counts what the workers of a fill did: blocks for the bar, factor work for stats."""

    def __init__(self, engine: BlockEngine, total: int, progress: bool) -> None:
        self.engine, self.bar = engine, counter_bar(total, progress)
        self.written = 0

    def on_task(self, task: Task, counts: dict[str, int]) -> None:
        self.written += counts.get("blocks_computed", 0)
        self.engine.add_worker_stats(counts)
        self.bar.update(task.n_blocks)

    def kept_note(self, exc: BaseException, what: str) -> None:
        add_note(
            exc,
            f"infl_array: {what}; the {self.written} blocks this fill finished are kept in the "
            f"store ({len(self.engine.refresh())} of {len(self.engine.all_blocks())} in all). "
            "Nothing is lost: call fill() again to compute only what is still missing.",
        )
