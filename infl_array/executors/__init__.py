"""Executors: where a fill's tasks run (in this process, in local processes, on dask).

Owns the :class:`~infl_array.executors.base.Executor` contract (:mod:`~infl_array.executors.base`)
and its three implementations: this process (:mod:`~infl_array.executors.in_process`), local
processes (:mod:`~infl_array.executors.processes`) and a dask cluster
(:mod:`~infl_array.executors.dask_cluster`); the dispatch of a fill, which picks one
(:mod:`~infl_array.executors.dispatch`); and the tasks as a worker runs them
(:mod:`~infl_array.executors.tasks`). Fills are planned in :mod:`infl_array.engine.plan`.

May import: :mod:`infl_array.engine`, :mod:`infl_array.storage`, and :mod:`infl_array.errors`,
:mod:`infl_array.version`, :mod:`infl_array.protocol`. Never torch, and nothing above it
(arrays, quality, cli, demo).
"""

__all__: list[str] = []
