"""Executors: where a fill's tasks run (in this process, in local processes, on dask).

Owns the dispatch of a fill (:mod:`~infl_array.executors.dispatch`), the tasks it is cut into and
their process pool (:mod:`~infl_array.executors.tasks`), and the dask cluster executor
(:mod:`~infl_array.executors.dask_cluster`).

May import: :mod:`infl_array.engine`, :mod:`infl_array.storage`, and :mod:`infl_array.errors`,
:mod:`infl_array.version`, :mod:`infl_array.protocol`. Never torch, and nothing above it
(arrays, quality, cli, demo).
"""

__all__: list[str] = []
