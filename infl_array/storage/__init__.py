"""Storage: the store of an influence matrix and everything kept in it.

Owns every key and path of the on-disk layout, named and documented in one module,
:mod:`~infl_array.storage.layout`: the zarr group and its metadata
(:mod:`~infl_array.storage.store`, :mod:`~infl_array.storage.meta`), the block grid of the matrix
and the one block geometry of the package (:mod:`~infl_array.storage.grid`: ``BlockCoords``,
``block_range``), stored factor blocks (:mod:`~infl_array.storage.factors`),
claims of blocks being computed (:mod:`~infl_array.storage.claims`), notes of what computing
found (:mod:`~infl_array.storage.notes`), stored top-k arrays and the rows an append keeps
(:mod:`~infl_array.storage.topk`, :mod:`~infl_array.storage.topk_bases`), growing an axis and
recording its segments (:mod:`~infl_array.storage.growth`, :mod:`~infl_array.storage.segments`),
the integrity check of every stored array
(:mod:`~infl_array.storage.integrity`), URL-store errors explained
(:mod:`~infl_array.storage.remote_errors`), and the one seam to zarr internals
(:mod:`~infl_array.storage.zarr_compat`).

May import: numpy, zarr and its codecs, fsspec, and :mod:`infl_array.errors`,
:mod:`infl_array.version`, :mod:`infl_array.protocol`. Never torch, and nothing above it
(engine, executors, arrays, quality, cli, demo).
"""

__all__: list[str] = []
