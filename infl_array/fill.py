"""Filling a store: compute every missing block, here, in local processes or on dask.

Work is cut into tasks of whole block rows (one test block against the train blocks it lacks),
so a model-backed array computes each test factor once per task. Every block is written
atomically, so filling may be interrupted at any moment and run by several processes or
machines at once on the same store: a block is either complete in the store or absent, and a
later fill computes only what is still absent. Before computing a block a worker checks again
that no other filler has written it in the meantime. A fill first removes the temporary files
that killed writers left behind (only those old enough to have no live writer, see
:meth:`~infl_array.store.BlockStore.clean_partials`), and refuses a read-only store before
computing anything.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from itertools import groupby
from typing import TYPE_CHECKING, Any, TypeVar

from infl_array.plan import BlockCoords

if TYPE_CHECKING:
    from infl_array.array import InfluenceArray

T = TypeVar("T")


def progress_bar(
    items: Iterable[T], enabled: bool, desc: str, total: int | None = None
) -> Iterator[T]:
    """``items`` wrapped in a tqdm bar on stderr when ``enabled``."""
    if not enabled:
        return iter(items)
    from tqdm.auto import tqdm

    return iter(tqdm(items, desc=desc, total=total, unit="block", file=sys.stderr))


def row_tasks(missing: list[BlockCoords]) -> list[list[BlockCoords]]:
    """The missing blocks grouped by block row, row-major."""
    return [list(group) for _, group in groupby(sorted(missing), key=lambda c: c[0])]


def fill(arr: InfluenceArray, *, progress: bool, workers: int | None, client: Any) -> int:
    """Compute every block missing from ``arr``'s store; returns how many this call computed."""
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be None or a positive int; got {workers!r}.")
    if client is not None and workers is not None:
        raise ValueError("pass either workers=N (local processes) or client= (dask), not both.")
    store = arr._store
    store.clean_partials()
    missing = arr.missing_blocks()
    if not missing:
        return 0
    store.check_writable()
    if client is not None:
        return _fill_dask(arr, missing, client, progress)
    if workers is not None and workers > 1:
        return _fill_processes(arr, missing, workers, progress)
    from infl_array.executor import compute_blocks

    bar = _counter_bar(len(missing), progress)
    try:
        return compute_blocks(
            arr, missing, on_done=lambda _: bar.update(1), recheck=True, cache_values=False
        )
    finally:
        bar.close()


def compute_task(arr: InfluenceArray, coords: list[BlockCoords]) -> int:
    """Compute those of ``coords`` that are still missing; returns how many it computed."""
    from infl_array.executor import compute_blocks

    present = arr._store.has_blocks(coords)
    missing = [c for c in coords if c not in present]
    return compute_blocks(arr, missing, recheck=True, cache_values=False)


_WORKER_ARRAY: InfluenceArray | None = None


def _init_worker(arr: InfluenceArray) -> None:
    global _WORKER_ARRAY
    _WORKER_ARRAY = arr


def _worker_task(coords: list[BlockCoords]) -> int:
    assert _WORKER_ARRAY is not None
    return compute_task(_WORKER_ARRAY, coords)


def _fill_processes(
    arr: InfluenceArray, missing: list[BlockCoords], workers: int, progress: bool
) -> int:
    tasks = row_tasks(missing)
    context = multiprocessing.get_context("spawn")
    done = 0
    bar = _counter_bar(len(missing), progress)
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(arr,)
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
    arr._refresh_known()
    return done


def _dask_task(arr: InfluenceArray, coords: list[BlockCoords]) -> int:
    return compute_task(arr, coords)


def _fill_dask(arr: InfluenceArray, missing: list[BlockCoords], client: Any, progress: bool) -> int:
    from distributed import as_completed as dask_as_completed

    tasks = row_tasks(missing)
    [arr_future] = client.scatter([arr], broadcast=True)
    futures = client.map(_dask_task, [arr_future] * len(tasks), tasks, pure=False)
    sizes = {f.key: len(t) for f, t in zip(futures, tasks, strict=True)}
    bar = _counter_bar(len(missing), progress)
    done = 0
    for future in dask_as_completed(futures):
        done += future.result()
        bar.update(sizes[future.key])
    bar.close()
    arr._refresh_known()
    return done


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _counter_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="fill", unit="block", file=sys.stderr)
