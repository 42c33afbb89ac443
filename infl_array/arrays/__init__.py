"""Arrays: the numpy-like front ends users hold.

Owns :class:`~infl_array.arrays.influence.InfluenceArray` and opening stores
(:mod:`~infl_array.arrays.influence`), how it describes itself
(:mod:`~infl_array.arrays.describe`), the lazy-array front and its refusals
(:mod:`~infl_array.arrays.front`), normalising keys into per-axis selections
(:mod:`~infl_array.arrays.indexing`), the numpy functions it answers
(:mod:`~infl_array.arrays.numpy_api`), reductions and top-k (:mod:`~infl_array.arrays.reduce`),
self-influence arrays (:mod:`~infl_array.arrays.self_influence`), stored top-k arrays
(:mod:`~infl_array.arrays.top_k`), growing axes (:mod:`~infl_array.arrays.append`), arrays
for new test data sharing train factors
(:mod:`~infl_array.arrays.retest`), staleness checks on reopening
(:mod:`~infl_array.arrays.staleness`) and checking and repairing every array of a store
(:mod:`~infl_array.arrays.repair`).

May import: :mod:`infl_array.executors`, :mod:`infl_array.engine`, :mod:`infl_array.storage`,
and :mod:`infl_array.errors`, :mod:`infl_array.version`, :mod:`infl_array.protocol`; nothing
above it (quality, cli, demo). It imports :mod:`infl_array.torch` only through one documented
hook, function-locally: ``make_block_source`` in :mod:`~infl_array.arrays.influence` builds the
block source of a model (a source for new test data comes through the source's declared
``retest`` capability, :mod:`infl_array.engine.sources`, and grown data through its
``growth`` capability).
"""

__all__: list[str] = []
