"""Engine: block state, planning, and computing blocks.

Owns the state of a matrix's blocks (:mod:`~infl_array.engine.block_engine`), pure planning of
reads, tiles, claim units and fills (:mod:`~infl_array.engine.plan`), the tiles a compute runs
in and their batched test factors (:mod:`~infl_array.engine.tiling`), the cache of decoded
blocks and the package's one bounded LRU (:mod:`~infl_array.engine.cache`), the one cache
machine every stored block goes through, matrix and factor blocks alike (memo -> store -> claim
-> compute: :mod:`~infl_array.engine.keeper`), computing missing blocks once
(:mod:`~infl_array.engine.work`), checks of computed blocks (:mod:`~infl_array.engine.validate`),
the error for blocks nothing can compute (:mod:`~infl_array.engine.missing`), the memory
budget and the allocator setting that lets it bound the process
(:mod:`~infl_array.engine.budget`, :mod:`~infl_array.engine.allocator`), progress bars
(:mod:`~infl_array.engine.progress`), streaming top-k and top-k rows brought up to date after
an append (:mod:`~infl_array.engine.top_k`, :mod:`~infl_array.engine.top_k_bases`) and the
block-source contract and its
capabilities (:mod:`~infl_array.engine.sources`).

May import: numpy, :mod:`infl_array.storage`, and :mod:`infl_array.errors`,
:mod:`infl_array.version`, :mod:`infl_array.protocol`. Never torch, and nothing above it
(executors, arrays, quality, cli, demo).
"""

__all__: list[str] = []
